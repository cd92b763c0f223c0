"""`llmtune dpo`: preference tuning on chosen/rejected pairs with TRL.

    llmtune dpo --recipe recipes/dpo/smollm2-135m-dpo-en.yaml
    llmtune dpo --recipe recipes/dpo/smollm2-135m-dpo-en.yaml --set dpo.algorithm=orpo

`dpo.algorithm` picks the trainer: dpo (TRL DPOTrainer, any of its loss types, with a reference model —
the frozen starting model, or the adapter-disabled model under PEFT), orpo and simpo (reference-free:
TRL's experimental ORPOTrainer and CPOTrainer with loss_type simpo), kto (TRL KTOTrainer on the pairs
unpaired into desirable/undesirable answers). The model can be an earlier sft run: its adapter is
merged into the base first, and that merged model is the reference.

Read top to bottom: run folder checked → tokenizer + template → pairs (validated) → (run folder opened)
model (+ adapter) → trainer → results (reward accuracy and margins before and after).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from llmtune.adapters import apply_peft, describe_trainable, quantization_config
from llmtune.data.chat_dataset import load_chat_data
from llmtune.data.templates import end_of_turn_token
from llmtune.errors import LlmtuneError
from llmtune.generation import set_stop_tokens
from llmtune.lm_head import plain_head_for_dpo
from llmtune.manifest import model_entry
from llmtune.models import load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_source
from llmtune.recipe import DpoRecipe
from llmtune.run_folder import RunFolder
from llmtune.training import (
    TRAINING_PHASES,
    final_evaluation,
    quiet_datasets,
    run_training,
    save_trained,
    standard_callbacks,
    training_arguments,
    write_training_metrics,
)

log = logging.getLogger("llmtune")


def pairs_dataset(pairs) -> object:
    """TRL's conversational preference form: prompt messages, and one-message chosen/rejected lists."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": pair.prompt,
                "chosen": [{"role": "assistant", "content": pair.chosen}],
                "rejected": [{"role": "assistant", "content": pair.rejected}],
            }
            for pair in pairs
        ]
    )


def trainer_for(recipe: DpoRecipe):
    """(config class, trainer class, extra config kwargs) for `dpo.algorithm`."""
    section = recipe.dpo
    if section.algorithm == "dpo":
        from trl import DPOConfig, DPOTrainer

        extra = {
            "beta": section.beta,
            "loss_type": section.loss_type,
            "loss_weights": section.loss_weights,
            "label_smoothing": section.label_smoothing,
            "precompute_ref_log_probs": section.precompute_ref_log_probs,
        }
        return DPOConfig, DPOTrainer, extra
    if section.algorithm == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer, {"beta": section.beta}
    if section.algorithm == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        extra = {
            "beta": section.beta,
            "loss_type": "simpo",
            "cpo_alpha": 0.0,
            "simpo_gamma": section.simpo_gamma,
        }
        return CPOConfig, CPOTrainer, extra
    from trl import KTOConfig, KTOTrainer

    return KTOConfig, KTOTrainer, {"beta": section.beta}


def run(recipe: DpoRecipe, *, overwrite: bool = False, resume: bool = False) -> dict:
    """Train as the recipe says and write the run folder; returns the results summary."""
    import dataclasses

    from transformers import set_seed

    folder = RunFolder.for_training(recipe, "dpo", overwrite=overwrite, resume=resume)
    train_kwargs = recipe.train.trainer_kwargs()
    config_class, trainer_class, extra = trainer_for(recipe)
    accepted = {f.name for f in dataclasses.fields(config_class)}
    unsupported = sorted(set(train_kwargs) - accepted)
    if unsupported:
        raise LlmtuneError(
            f"train.{unsupported[0]} is not an option of {config_class.__name__} (dpo.algorithm: "
            f"{recipe.dpo.algorithm}); remove it or pick another algorithm."
        )

    # ---- inputs
    resolved = resolve_model_source(recipe.model)
    tokenizer = load_tokenizer(recipe.model, resolved)
    examples, report = load_chat_data(tokenizer, recipe.data, preference=True, describe=recipe.describe_path)
    for line in report.lines():
        log.info(line)
    datasets = {name: pairs_dataset(pairs) for name, pairs in examples.items()}
    if recipe.dpo.algorithm == "kto":
        from trl.data_utils import unpair_preference_dataset

        datasets = {name: unpair_preference_dataset(ds) for name, ds in datasets.items()}

    data = {"files": report.files, "formats": report.formats, "examples": report.examples}
    with folder.open(
        recipe, data_report=report.to_dict(), data=data, log_lines=report.lines(), phases=TRAINING_PHASES
    ) as run:
        run.phase("model")
        # ---- model (+ adapter) and reference
        set_seed(train_kwargs.get("seed", 42))
        dtype = resolve_dtype(recipe.model.dtype)
        model = load_causal_lm(
            recipe.model, resolved, tokenizer, quantization=quantization_config(recipe.peft, dtype)
        )
        set_stop_tokens(model, tokenizer, end_of_turn_token(tokenizer, recipe.data.template))
        uses_reference = recipe.dpo.algorithm in ("dpo", "kto")
        # Full training needs a frozen copy as the reference; under PEFT, TRL disables the adapter instead.
        ref_model = None
        if uses_reference and not recipe.peft.is_peft and not recipe.dpo.precompute_ref_log_probs:
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        gradient_checkpointing = bool(
            train_kwargs.get("gradient_checkpointing", True)
        )  # TRL configs default to True
        if gradient_checkpointing:
            model.config.use_cache = False
        model = apply_peft(model, recipe.peft, gradient_checkpointing=gradient_checkpointing)
        log.info(
            "model: %s (%s), %s; %s",
            resolved.name,
            str(dtype).removeprefix("torch."),
            describe_trainable(model),
            _reference_note(recipe, ref_model),
        )
        run.set_model(
            model_entry(
                model,
                name=resolved.name,
                source=resolved.source,
                path=str(resolved.path),
                peft=recipe.peft.method,
                algorithm=recipe.dpo.algorithm,
            )
        )

        # ---- trainer
        has_eval = "validation" in datasets
        args, use_tensorboard = training_arguments(
            recipe,
            run.dir,
            has_eval=has_eval,
            bf16_model=str(dtype) == "torch.bfloat16",
            arguments_class=config_class,
            stage_defaults={
                **extra,
                "max_length": recipe.data.max_length,
                "eval_on_start": has_eval,  # reward accuracy before training, for the before/after report
                "include_num_input_tokens_seen": "no",  # pairs are not a token stream; TRL logs its own counts
            },
        )
        _, callbacks = standard_callbacks(
            run.dir, use_tensorboard=use_tensorboard, early_stopping=recipe.early_stopping
        )
        trainer_kwargs = {"ref_model": ref_model} if uses_reference else {}
        with quiet_datasets():
            trainer = trainer_class(
                model=model,
                args=args,
                train_dataset=datasets["train"],
                eval_dataset=datasets.get("validation"),
                processing_class=tokenizer,
                callbacks=callbacks,
                **trainer_kwargs,
            )
        plain_head_for_dpo(trainer)  # TRL's fused LM head is slower on a CPU (llmtune/lm_head.py)
        train_output = run_training(trainer, recipe, run)
        save_trained(trainer, run)  # the trained weights first: what follows can be interrupted

        # ---- results
        run.phase("final_eval")
        results = {
            "algorithm": recipe.dpo.algorithm,
            "train_loss": train_output.training_loss,
            "global_step": trainer.state.global_step,
            "train_runtime_s": train_output.metrics.get("train_runtime"),
        }
        if has_eval:
            evals = [e for e in trainer.state.log_history if "eval_loss" in e]
            final = final_evaluation(trainer)
            for key in ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"):
                if key in final:
                    results[key.replace("/", "_")] = final[key]
                if evals and key in evals[0]:
                    results[key.replace("/", "_") + "_first"] = evals[0][key]
        write_training_metrics(trainer, run, title=f"dpo: {Path(recipe.source).name}")
        return run.finish(results)


def _reference_note(recipe: DpoRecipe, ref_model) -> str:
    if recipe.dpo.algorithm in ("orpo", "simpo"):
        return f"{recipe.dpo.algorithm} is reference-free"
    if ref_model is not None:
        return "reference: a frozen copy of the starting model"
    if recipe.dpo.precompute_ref_log_probs:
        return "reference log-probs precomputed once"
    return "reference: the model with its adapter disabled"
