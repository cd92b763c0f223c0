"""`llmtune sft`: supervised fine-tuning on conversations with TRL's SFTTrainer.

    llmtune sft --recipe recipes/quickstart.yaml
    llmtune sft --recipe recipes/sft/smollm2-135m-lora-medical.yaml --set data.packing=true

Read top to bottom: run folder → tokenizer + template → data (validated, masked) → model (+ adapter) →
SFTTrainer → outputs. llmtune tokenises and masks the data itself (see data/sft.py) and hands TRL a
dataset of input_ids + labels; TRL does packing, padding-free batching, NEFTune and the loop.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from llmtune.adapters import apply_peft, describe_trainable, quantization_config
from llmtune.data.sft import load_examples, tokenize_examples
from llmtune.data.templates import apply_template, end_of_turn_token
from llmtune.models import (
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    resolve_model_source,
)
from llmtune.outputs import (
    MANIFEST,
    check_run_dir,
    file_log,
    metrics_from_log_history,
    new_manifest,
    open_run_dir,
    record_failure,
    start_run_log,
    stop_run_log,
    write_json,
    write_text,
)
from llmtune.recipe import SftRecipe
from llmtune.training import (
    TokenCounter,
    finish_run,
    generate_samples,
    quiet_datasets,
    run_training,
    set_stop_tokens,
    standard_callbacks,
    training_arguments,
)

log = logging.getLogger("llmtune")


def prepare_data(recipe: SftRecipe):
    """(tokenizer, resolved model source, datasets, report): everything `data check` also needs."""
    resolved = resolve_model_source(recipe.model)
    tokenizer = load_tokenizer(recipe.model, resolved)
    template, added = apply_template(tokenizer, recipe.data.template)
    examples, report = load_examples(recipe.data, preference=False, describe=recipe.describe_path)
    report.template = template + (f" (added tokens {', '.join(added)})" if added else "")
    datasets = tokenize_examples(tokenizer, examples, recipe.data, report)
    return tokenizer, resolved, datasets, report


def run(recipe: SftRecipe, *, overwrite: bool = False, resume: bool = False) -> dict:
    """Train as the recipe says and write the run folder; returns the results summary."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    train_kwargs = recipe.train.trainer_kwargs()
    resume = resume or train_kwargs.get("resume_from_checkpoint") not in (None, False)
    run_dir = check_run_dir(recipe.train.output_dir, overwrite=overwrite, resume=resume)

    # ---- inputs (before the run folder is touched, so bad input changes nothing)
    tokenizer, resolved, datasets, report = prepare_data(recipe)
    for line in report.lines():
        log.info(line)

    open_run_dir(run_dir, overwrite=overwrite, resume=resume)
    handler = start_run_log(run_dir)
    manifest = new_manifest("sft", recipe.source)
    try:
        write_text(run_dir / "recipe.yaml", recipe.to_yaml())
        write_json(run_dir / "data_report.json", report.to_dict())
        for line in [*(f"note: {n}" for n in recipe.notes), *report.lines()]:
            file_log.info(line)
        manifest["data"] = {"files": report.files, "formats": report.formats, "examples": report.examples}
        write_json(run_dir / MANIFEST, manifest)

        # ---- model (+ adapter)
        set_seed(train_kwargs.get("seed", 42))
        dtype = resolve_dtype(recipe.model.dtype)
        model = load_causal_lm(
            recipe.model, resolved, tokenizer, quantization=quantization_config(recipe.peft, dtype)
        )
        set_stop_tokens(model, tokenizer, end_of_turn_token(tokenizer, recipe.data.template))
        samples = {}
        if recipe.samples:
            samples["before"] = generate_samples(model, tokenizer, recipe.samples)
        gradient_checkpointing = bool(
            train_kwargs.get("gradient_checkpointing", True)
        )  # TRL configs default to True
        if gradient_checkpointing:
            model.config.use_cache = False
        model = apply_peft(
            model,
            recipe.peft,
            gradient_checkpointing=gradient_checkpointing,
            tokenizer_path=str(resolved.path),
        )
        trainable, total = count_parameters(model)
        log.info(
            "model: %s (%s), %s", resolved.name, str(dtype).removeprefix("torch."), describe_trainable(model)
        )
        manifest["model"] = {
            "name": resolved.name,
            "source": resolved.source,
            "path": str(resolved.path),
            "parameters": total,
            "trainable_parameters": trainable,
            "dtype": str(dtype).removeprefix("torch."),
            "peft": recipe.peft.method,
        }

        # ---- trainer
        attention = getattr(model.config, "_attn_implementation", None) or ""
        batch = train_kwargs.get("per_device_train_batch_size", 8)
        if recipe.data.packing and "flash" not in attention and batch > 1:
            # TRL flattens a padding-free batch into one sequence; without a varlen kernel (flash
            # attention) the attention mask then spans the whole batch: cost quadratic in batch x length.
            log.warning(
                "note: data.packing with %s attention flattens each batch of %d packed rows into one "
                "sequence, so attention costs grow with the square of the whole batch (measured: packed "
                "ran at 0.75x the unpacked speed at batch 4 here). Use train.per_device_train_batch_size: 1 "
                "with gradient_accumulation_steps, or flash_attention_2 on a GPU.",
                attention or "this",
                batch,
            )
        has_eval = "validation" in datasets
        args, use_tensorboard = training_arguments(
            recipe,
            run_dir,
            has_eval=has_eval,
            bf16_model=str(dtype) == "torch.bfloat16",
            arguments_class=SFTConfig,
            stage_defaults={
                "max_length": recipe.data.max_length,
                "packing": recipe.data.packing,
                "packing_strategy": "bfd",
                "eval_on_start": has_eval,  # the eval loss before training, for the before/after report
                "dataset_num_proc": None,
            },
        )
        _, callbacks = standard_callbacks(
            run_dir, use_tensorboard=use_tensorboard, early_stopping=recipe.early_stopping
        )
        with quiet_datasets():
            trainer = SFTTrainer(
                model=model,
                args=args,
                train_dataset=datasets["train"],
                eval_dataset=datasets["validation"] if has_eval else None,
                processing_class=tokenizer,
                callbacks=callbacks,
            )
        counter = TokenCounter(trainer.data_collator).attach(trainer)
        if recipe.peft.method == "qlora" and not args.bf16:
            # SFTTrainer casts the LoRA weights of a quantised model to bf16 whatever the precision; without
            # bf16 training (a CPU, an fp32 recipe) that only loses precision and saves a bf16 adapter.
            for param in trainer.model.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
        train_output = run_training(trainer, recipe, run_dir, resume, manifest, "sft")

        # ---- outputs
        results = {
            "train_loss": train_output.training_loss,
            "global_step": trainer.state.global_step,
            "train_runtime_s": train_output.metrics.get("train_runtime"),
            # real tokens (the examples' own lengths) and the share of padding in what the model processed,
            # counted over this session's training batches
            "train_tokens": counter.real,
            "train_tokens_per_second": counter.real / max(train_output.metrics.get("train_runtime", 0), 1e-9),
            "padding_share": counter.padding_share,
        }
        if has_eval:
            evals = metrics_from_log_history(trainer.state.log_history)["eval"]
            final = trainer.evaluate()
            results["eval_loss"] = final["eval_loss"]
            results["eval_perplexity"] = math.exp(final["eval_loss"])
            if evals:
                results["eval_loss_first"] = evals[0]["eval_loss"]
        if recipe.samples:
            samples["after"] = generate_samples(trainer.model, tokenizer, recipe.samples)
            write_json(run_dir / "samples.json", _sample_table(recipe.samples.prompts, samples))
            for prompt, before, after in zip(
                recipe.samples.prompts, samples["before"], samples["after"], strict=True
            ):
                log.info("prompt: %s\n  before: %s\n  after:  %s", prompt, before, after)
        finish_run(trainer, run_dir, manifest, title=f"sft: {Path(recipe.source).name}", results=results)
        log.info(
            "done: %s",
            ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in results.items()),
        )
        log.info("run folder: %s", run_dir)
        return results
    except BaseException as exc:
        record_failure(run_dir, manifest, exc)
        raise
    finally:
        stop_run_log(handler)


def _sample_table(prompts: list[str], samples: dict) -> list[dict]:
    return [
        {"prompt": p, "before": b, "after": a}
        for p, b, a in zip(prompts, samples["before"], samples["after"], strict=True)
    ]
