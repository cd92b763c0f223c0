"""`llmtune pretrain`: continued pretraining (full, LoRA or DoRA) or training from scratch.

    llmtune pretrain --recipe recipes/pretrain/smollm2-135m-continued-lora.yaml
    llmtune pretrain --recipe recipes/pretrain/gpt2-124m-the-verdict.yaml --set train.num_train_epochs=1
    llmtune pretrain --recipe recipes/pretrain/smollm2-135m-streaming.yaml

Read top to bottom: run folder checked → tokenizer → data → (run folder opened) model (+ adapter) →
Trainer → results. With `data.streaming: true` the data is a stream read while training
(data/text_stream.py): its report's counts are written when training ends, and each checkpoint keeps the
stream's position for --resume.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from llmtune.adapters import apply_peft, describe_trainable, quantization_config
from llmtune.data.text import build_text_datasets, collate_blocks
from llmtune.errors import LlmtuneError
from llmtune.home import llmtune_home
from llmtune.manifest import model_entry
from llmtune.models import load_causal_lm, load_tokenizer, max_positions, resolve_dtype, resolve_model_source
from llmtune.outputs import metrics_from_log_history
from llmtune.recipe import PretrainRecipe
from llmtune.run_folder import RunFolder
from llmtune.training import (
    TRAINING_PHASES,
    final_evaluation,
    run_training,
    save_trained,
    standard_callbacks,
    training_arguments,
    write_training_metrics,
)

log = logging.getLogger("llmtune")


def run(recipe: PretrainRecipe, *, overwrite: bool = False, resume: bool = False) -> dict:
    """Train as the recipe says and write the run folder; returns the results summary."""
    import torch
    from transformers import Trainer, set_seed

    folder = RunFolder.for_training(recipe, "pretrain", overwrite=overwrite, resume=resume)
    train_kwargs = recipe.train.trainer_kwargs()

    # ---- inputs: tokenizer and data (before the run folder is touched, so bad input changes nothing)
    resolved = resolve_model_source(recipe.model)
    tokenizer = load_tokenizer(recipe.model, resolved)
    streaming = recipe.data.streaming
    if streaming:
        from llmtune.data.text_stream import build_streaming_datasets

        datasets, report, stream_state = build_streaming_datasets(
            recipe.data,
            tokenizer,
            describe=recipe.describe_path,
            resume_from=folder.checkpoint,
            restart=bool(train_kwargs.get("ignore_data_skip")),
        )
        data = {"streaming": True, "sources": report.sources, "file_bytes": report.file_bytes}
    else:
        datasets, report = build_text_datasets(
            recipe.data, tokenizer, llmtune_home() / "cache", describe=recipe.describe_path
        )
        data = {"files": report.files, "cache_key": report.cache_key, "tokens": report.tokens}
    for line in report.lines():
        log.info(line)

    with folder.open(
        recipe, data_report=report.to_dict(), data=data, log_lines=report.lines(), phases=TRAINING_PHASES
    ) as run:
        run.phase("model")
        # ---- model (+ adapter)
        set_seed(train_kwargs.get("seed", 42))  # from-config weights and LoRA init depend on it
        quantization = quantization_config(recipe.peft, resolve_dtype(recipe.model.dtype))
        model = load_causal_lm(recipe.model, resolved, tokenizer, quantization=quantization)
        positions = max_positions(model)
        if positions is not None and recipe.data.block_size > positions:
            raise LlmtuneError(
                f"data.block_size ({recipe.data.block_size}) is longer than the model's {positions} positions; "
                f"lower data.block_size to at most {positions}."
            )
        gradient_checkpointing = bool(train_kwargs.get("gradient_checkpointing"))
        if gradient_checkpointing:
            model.config.use_cache = False
        model = apply_peft(model, recipe.peft, gradient_checkpointing=gradient_checkpointing)
        name = resolved.name if resolved else f"{recipe.model.from_config['architecture']} from config"
        log.info(
            "model: %s (%s), %s", name, str(model.dtype).removeprefix("torch."), describe_trainable(model)
        )
        run.set_model(
            model_entry(
                model,
                name=name,
                source=resolved.source if resolved else "from_config",
                path=str(resolved.path) if resolved else None,
                peft=recipe.peft.method,
            )
        )

        # ---- trainer
        has_eval = "validation" in datasets
        eval_dataset = datasets["validation"] if has_eval else None
        stage_defaults = {}
        if has_eval and recipe.data.eval_train_blocks:
            if streaming:
                train_blocks = datasets["train"].head(recipe.data.eval_train_blocks)
            else:
                train_blocks = datasets["train"].select(
                    range(min(recipe.data.eval_train_blocks, len(datasets["train"])))
                )
            eval_dataset = {"validation": eval_dataset, "train": train_blocks}
            stage_defaults["metric_for_best_model"] = "eval_validation_loss"
        if streaming and has_eval:
            stage_defaults["eval_strategy"] = "steps"  # a stream's epoch never ends
        args, use_tensorboard = training_arguments(
            recipe,
            run.dir,
            has_eval=has_eval,
            bf16_model=resolve_dtype(recipe.model.dtype) == torch.bfloat16,
            stage_defaults=stage_defaults,
        )
        recorder, callbacks = standard_callbacks(
            run.dir, use_tensorboard=use_tensorboard, early_stopping=recipe.early_stopping
        )
        if streaming:
            # The stream starts where the checkpoint says (or, with train.ignore_data_skip, at the beginning);
            # the Trainer must not also skip the batches trained before it.
            args.ignore_data_skip = True
            callbacks.append(stream_state)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=datasets["train"],
            eval_dataset=eval_dataset,
            data_collator=collate_blocks,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        train_output = run_training(
            trainer, recipe, run, checkpoint_state=(stream_state,) if streaming else ()
        )
        if streaming:  # the counts a stream can give only once it has been read
            report.count(datasets["train"].counts, stream_state.trained_blocks(trainer.state.global_step))
            for line in report.lines():
                log.info(line)
            run.write_json("data_report.json", report.to_dict())
        save_trained(trainer, run)  # the trained weights first: what follows can be interrupted

        # ---- results
        run.phase("final_eval")
        results = {
            "train_loss": train_output.training_loss,
            "global_step": trainer.state.global_step,
            "train_runtime_s": train_output.metrics.get("train_runtime"),
            "train_tokens": trainer.state.num_input_tokens_seen,
            # real (non-padding) tokens this session over its wall time, evaluations included
            "train_tokens_per_second": recorder.tokens_per_second,
        }
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        if losses:
            results["first_logged_loss"], results["last_logged_loss"] = losses[0], losses[-1]
        if has_eval:
            evals = metrics_from_log_history(trainer.state.log_history)["eval"]
            final = final_evaluation(trainer)
            results["eval_loss"] = final.get("eval_loss", final.get("eval_validation_loss"))
            results["eval_perplexity"] = math.exp(results["eval_loss"])
            if "eval_train_loss" in final:
                results["eval_train_loss"] = final["eval_train_loss"]
            if evals:
                results["eval_loss_first"] = evals[0]["eval_loss"]
                results["eval_perplexity_first"] = math.exp(evals[0]["eval_loss"])
        write_training_metrics(trainer, run, title=f"pretrain: {Path(recipe.source).name}")
        return run.finish(results)
