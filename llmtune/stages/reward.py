"""`llmtune reward`: a reward model (a causal LM with a scalar head) trained on chosen/rejected pairs with TRL.

    llmtune reward --recipe recipes/reward/smollm2-135m-reward-en.yaml
    llmtune reward --recipe recipes/reward/smollm2-135m-reward-medical.yaml --set peft.method=none

The model is `AutoModelForSequenceClassification` (num_labels 1) built from anything sft takes (a hub id,
a folder, a GGUF, an sft run); under LoRA/DoRA/QLoRA the score head trains in full (PEFT's SEQ_CLS task
keeps it in modules_to_save), under freeze it is added to the trainable parts. The pairs are read by the
same readers as dpo (every preference format, plus MedicalGPT's question/response_chosen/response_rejected),
rendered with the chat template, and cut to data.max_length by llmtune (data/reward_pairs.py), never
silently dropped as TRL's RewardTrainer would. The padding token is one that ends no sequence
(reward_model.choose_pad_token), so the reward is read at the last real token.

Read top to bottom: run folder checked → tokenizer + template → pairs (validated, tokenised, cut and
counted) → padding token → (run folder opened) model + adapter → held-out pairs scored (the untrained
head) → trainer → trained, saved → held-out pairs scored again → results.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llmtune.adapters import apply_peft, describe_trainable, quantization_config
from llmtune.data.chat_dataset import load_chat_data
from llmtune.data.reward_pairs import pair_report_lines, tokenize_pairs
from llmtune.errors import LlmtuneError
from llmtune.manifest import model_entry
from llmtune.models import load_tokenizer, resolve_dtype, resolve_model_source
from llmtune.recipe import RewardRecipe
from llmtune.reward_model import choose_pad_token, load_reward_model, pair_metrics, score_sequences
from llmtune.run_folder import RunFolder
from llmtune.training import (
    TRAINING_PHASES,
    quiet_datasets,
    run_training,
    save_trained,
    standard_callbacks,
    training_arguments,
    write_training_metrics,
)

log = logging.getLogger("llmtune")


def run(recipe: RewardRecipe, *, overwrite: bool = False, resume: bool = False) -> dict:
    """Train as the recipe says and write the run folder; returns the results summary."""
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    folder = RunFolder.for_training(recipe, "reward", overwrite=overwrite, resume=resume)
    train_kwargs = recipe.train.trainer_kwargs()

    # ---- inputs: pairs tokenised and cut here, so that TRL drops nothing
    resolved = resolve_model_source(recipe.model)
    tokenizer = load_tokenizer(recipe.model, resolved)
    examples, report = load_chat_data(tokenizer, recipe.data, preference=True, describe=recipe.describe_path)
    splits = tokenize_pairs(tokenizer, examples, recipe.data, report)
    everything = [
        ids for split in splits.values() for side in ("chosen_ids", "rejected_ids") for ids in split[side]
    ]
    pad_token, why = choose_pad_token(tokenizer, everything, recipe.reward.pad_token)
    tokenizer.pad_token = pad_token
    lines = [*report.lines(), *pair_report_lines(report), f"  padding token: {pad_token!r} ({why})"]
    for line in lines:
        log.info(line)
    datasets = {name: _dataset(split) for name, split in splits.items()}

    data = {"files": report.files, "formats": report.formats, "examples": report.examples}
    with folder.open(
        recipe, data_report=report.to_dict(), data=data, log_lines=lines, phases=TRAINING_PHASES
    ) as run:
        run.phase("model")
        set_seed(train_kwargs.get("seed", 42))
        dtype = resolve_dtype(recipe.model.dtype)
        model = load_reward_model(
            recipe.model, resolved, tokenizer, quantization=quantization_config(recipe.peft, dtype)
        )
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
        gradient_checkpointing = bool(train_kwargs.get("gradient_checkpointing", True))  # TRL's default
        if gradient_checkpointing:
            model.config.use_cache = False
        peft_section = recipe.peft
        if peft_section.method == "freeze":  # the new head must learn whatever else is frozen
            peft_section = peft_section.model_copy(update={"trainable": [*peft_section.trainable, "score"]})
        model = apply_peft(
            model, peft_section, gradient_checkpointing=gradient_checkpointing, task_type="SEQ_CLS"
        )
        log.info(
            "model: %s (%s) + score head, %s",
            resolved.name,
            str(dtype).removeprefix("torch."),
            describe_trainable(model),
        )
        run.set_model(
            model_entry(
                model,
                name=resolved.name,
                source=resolved.source,
                path=str(resolved.path),
                peft=recipe.peft.method,
                task="reward",
            )
        )

        # ---- before training: the untrained head on the held-out pairs
        held_out = splits.get("validation")
        before = _score(model, held_out, tokenizer, recipe) if held_out else None
        if before:
            log.info(
                "held-out pairs before training: accuracy %.3f, mean margin %.4f",
                before["accuracy"],
                before["mean_margin"],
            )

        # ---- trainer
        has_eval = held_out is not None
        args, use_tensorboard = training_arguments(
            recipe,
            run.dir,
            has_eval=has_eval,
            bf16_model=str(dtype) == "torch.bfloat16",
            arguments_class=RewardConfig,
            stage_defaults={
                "max_length": None,  # the pairs are already within data.max_length: TRL must not filter
                "include_num_input_tokens_seen": "no",  # pairs, not a token stream; TRL logs num_tokens
            },
        )
        _, callbacks = standard_callbacks(
            run.dir, use_tensorboard=use_tensorboard, early_stopping=recipe.early_stopping
        )
        with quiet_datasets():
            trainer = RewardTrainer(
                model=model,
                args=args,
                train_dataset=datasets["train"],
                eval_dataset=datasets.get("validation"),
                processing_class=tokenizer,
                callbacks=callbacks,
            )
        for name, dataset in (("train", trainer.train_dataset), ("validation", trainer.eval_dataset)):
            if dataset is not None and len(dataset) != len(splits[name]["chosen_ids"]):
                raise LlmtuneError(  # a TRL change that filters again would otherwise go unnoticed
                    f"the reward trainer kept {len(dataset)} of the {len(splits[name]['chosen_ids'])} {name} pairs "
                    "llmtune prepared; this is a bug, please report it."
                )
        train_output = run_training(trainer, recipe, run)
        save_trained(trainer, run)

        # ---- results
        run.phase("final_eval")
        results = {
            "train_loss": train_output.training_loss,
            "global_step": trainer.state.global_step,
            "train_runtime_s": train_output.metrics.get("train_runtime"),
            "pad_token": pad_token,
        }
        if held_out:
            after = _score(trainer.model, held_out, tokenizer, recipe)
            run.write_json("reward_eval.json", {"before": before, "after": after})
            _plot_distributions(run.dir / "rewards.png", before, after)
            results.update(
                {
                    "eval_accuracy_before": before["accuracy"],
                    "eval_accuracy": after["accuracy"],
                    "eval_margin_before": before["mean_margin"],
                    "eval_margin": after["mean_margin"],
                    "eval_chosen_mean": after["chosen"]["mean"],
                    "eval_rejected_mean": after["rejected"]["mean"],
                    "eval_pairs": after["pairs"],
                }
            )
        write_training_metrics(trainer, run, title=f"reward: {Path(recipe.source).name}")
        return run.finish(results, quiet=("pad_token",))


def _dataset(split: dict):
    from datasets import Dataset

    return Dataset.from_dict({"chosen_ids": split["chosen_ids"], "rejected_ids": split["rejected_ids"]})


def _score(model, split: dict, tokenizer, recipe: RewardRecipe) -> dict:
    """Pairwise accuracy, margin and reward distributions on one split, with each pair's scores."""
    n = len(split["chosen_ids"])
    scores = score_sequences(
        model,
        split["chosen_ids"] + split["rejected_ids"],
        pad_token_id=tokenizer.pad_token_id,
        batch_size=recipe.reward.score_batch_size,
    )
    metrics = pair_metrics(scores[:n], scores[n:])
    metrics["scores"] = [
        {"where": w, "chosen": c, "rejected": r}
        for w, c, r in zip(split["where"], scores[:n], scores[n:], strict=True)
    ]
    return metrics


def _plot_distributions(path: Path, before: dict, after: dict) -> None:
    """Histograms of the chosen and rejected rewards on the held-out pairs, before and after training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, (title, result) in zip(
        axes, (("before training", before), ("after training", after)), strict=True
    ):
        chosen = [s["chosen"] for s in result["scores"]]
        rejected = [s["rejected"] for s in result["scores"]]
        axis.hist(chosen, bins=30, alpha=0.6, label="chosen")
        axis.hist(rejected, bins=30, alpha=0.6, label="rejected")
        axis.set_title(f"{title}: accuracy {result['accuracy']:.2f}")
        axis.set_xlabel("reward")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
