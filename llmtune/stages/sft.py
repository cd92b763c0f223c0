"""`llmtune sft`: supervised fine-tuning on conversations with TRL's SFTTrainer.

    llmtune sft --recipe recipes/quickstart.yaml
    llmtune sft --recipe recipes/sft/smollm2-135m-lora-medical.yaml --set data.packing=true

Read top to bottom: run folder checked → tokenizer + template → data (validated, masked) → (run folder
opened) model (+ adapter) → SFTTrainer → results. llmtune tokenises and masks the data itself (see
data/chat_dataset.py) and hands TRL a dataset of input_ids + labels; TRL does packing, padding-free
batching, NEFTune and the loop.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from llmtune.adapters import apply_peft, describe_trainable, quantization_config
from llmtune.data.chat_dataset import load_chat_data, tokenize_examples
from llmtune.data.templates import end_of_turn_token
from llmtune.generation import generate_samples, set_stop_tokens
from llmtune.manifest import model_entry
from llmtune.models import load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_source
from llmtune.outputs import metrics_from_log_history
from llmtune.recipe import SftRecipe
from llmtune.run_folder import RunFolder
from llmtune.training import (
    TRAINING_PHASES,
    TokenCounter,
    final_evaluation,
    quiet_datasets,
    run_training,
    save_trained,
    standard_callbacks,
    training_arguments,
    write_training_metrics,
)

log = logging.getLogger("llmtune")


def run(recipe: SftRecipe, *, overwrite: bool = False, resume: bool = False) -> dict:
    """Train as the recipe says and write the run folder; returns the results summary."""
    from transformers import set_seed
    from trl import SFTConfig

    from llmtune.sft_trainer import sft_trainer_class

    folder = RunFolder.for_training(recipe, "sft", overwrite=overwrite, resume=resume)
    train_kwargs = recipe.train.trainer_kwargs()

    # ---- inputs (before the run folder is touched, so bad input changes nothing)
    resolved = resolve_model_source(recipe.model)
    tokenizer = load_tokenizer(recipe.model, resolved)
    examples, report = load_chat_data(tokenizer, recipe.data, preference=False, describe=recipe.describe_path)
    datasets = tokenize_examples(tokenizer, examples, recipe.data, report)
    for line in report.lines():
        log.info(line)

    data = {"files": report.files, "formats": report.formats, "examples": report.examples}
    with folder.open(
        recipe, data_report=report.to_dict(), data=data, log_lines=report.lines(), phases=TRAINING_PHASES
    ) as run:
        run.phase("model")
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
        log.info(
            "model: %s (%s), %s", resolved.name, str(dtype).removeprefix("torch."), describe_trainable(model)
        )
        run.set_model(
            model_entry(
                model,
                name=resolved.name,
                source=resolved.source,
                path=str(resolved.path),
                peft=recipe.peft.method,
            )
        )

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
            run.dir,
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
            run.dir, use_tensorboard=use_tensorboard, early_stopping=recipe.early_stopping
        )
        with quiet_datasets():
            trainer = sft_trainer_class()(
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
        train_output = run_training(trainer, recipe, run)
        save_trained(trainer, run)  # the trained weights first: what follows can be interrupted

        # ---- results
        run.phase("final_eval")
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
            final = final_evaluation(trainer)
            results["eval_loss"] = final["eval_loss"]
            results["eval_perplexity"] = math.exp(final["eval_loss"])
            if evals:
                results["eval_loss_first"] = evals[0]["eval_loss"]
        if recipe.samples:
            run.phase("samples")
            samples["after"] = generate_samples(trainer.model, tokenizer, recipe.samples)
            run.write_json("samples.json", _sample_table(recipe.samples.prompts, samples))
            for prompt, before, after in zip(
                recipe.samples.prompts, samples["before"], samples["after"], strict=True
            ):
                log.info("prompt: %s\n  before: %s\n  after:  %s", prompt, before, after)
        write_training_metrics(trainer, run, title=f"sft: {Path(recipe.source).name}")
        return run.finish(results)


def _sample_table(prompts: list[str], samples: dict) -> list[dict]:
    return [
        {"prompt": p, "before": b, "after": a}
        for p, b, a in zip(prompts, samples["before"], samples["after"], strict=True)
    ]
