"""`llmtune grpo` (and `llmtune rloo`): online RL on prompts with TRL's GRPOTrainer / RLOOTrainer.

    llmtune grpo --recipe recipes/grpo/smollm2-135m-arithmetic.yaml
    llmtune rloo --recipe recipes/grpo/smollm2-135m-arithmetic.yaml

The policy answers each prompt `num_generations` times; the recipe's reward functions (`rewards:`, each
with a weight) score every answer; GRPO normalises the rewards within each prompt's group, RLOO uses the
other answers' mean as the baseline. TRL 1.16 has no PPO: GRPO and RLOO are its successors for RL from a
reward (they need no value model). Every GRPOConfig / RLOOConfig key stays reachable under `train:` with
TRL's names (num_generations, max_completion_length, beta, loss_type, epsilon, temperature, use_vllm...).

Read top to bottom: run folder checked → tokenizer + template → prompts (validated, measured, counted) →
reward functions built and tried on real rows (before any model loads) → (run folder opened) model +
adapter → held-out prompts answered and scored (before) → trainer → trained, saved → held-out again
(after) → results, reward plot.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from pathlib import Path

from llmtune.adapters import apply_peft, describe_trainable, quantization_config
from llmtune.data.prompts import load_prompts
from llmtune.data.templates import end_of_turn_token
from llmtune.generation import set_stop_tokens
from llmtune.manifest import model_entry
from llmtune.models import load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_source
from llmtune.recipe import GrpoRecipe
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


def trainer_for(algorithm: str):
    """(config class, trainer class, TRL module) of `algorithm`."""
    if algorithm == "rloo":
        from trl import RLOOConfig, RLOOTrainer
        from trl.trainer import rloo_trainer as module

        return RLOOConfig, RLOOTrainer, module
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer import grpo_trainer as module

    return GRPOConfig, GRPOTrainer, module


def run(recipe: GrpoRecipe, *, overwrite: bool = False, resume: bool = False) -> dict:
    """Train as the recipe says and write the run folder; returns the results summary."""
    from datasets import Dataset
    from transformers import set_seed

    from llmtune.rl.completions import CompletionRecorder
    from llmtune.rl.heldout import answer_prompts, score_answers
    from llmtune.rl.rewards import build_reward_functions, check_reward_functions, weights

    algorithm = recipe.algorithm
    folder = RunFolder.for_training(recipe, algorithm, overwrite=overwrite, resume=resume)
    train_kwargs = recipe.train.trainer_kwargs()
    config_class, trainer_class, trl_module = trainer_for(algorithm)
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
    completion_limit = train_kwargs.get("max_completion_length", defaults["max_completion_length"])
    beta = train_kwargs.get("beta", defaults["beta"])

    # ---- inputs: prompts, and reward functions tried on them before any model loads
    resolved = resolve_model_source(recipe.model)
    tokenizer = load_tokenizer(recipe.model, resolved)
    rows, report = load_prompts(tokenizer, recipe.data, describe=recipe.describe_path)
    functions = build_reward_functions(
        recipe.rewards, base_dir=Path(recipe.source).resolve().parent, max_completion_length=completion_limit
    )
    check_reward_functions(functions, rows["train"] + rows.get("validation", []))
    lines = [
        *report.lines(),
        "rewards: " + ", ".join(f"{f.__name__} (weight {f.weight:g})" for f in functions),
    ]
    for line in lines:
        log.info(line)
    train_dataset = Dataset.from_list(rows["train"])
    held_out = rows.get("validation", [])[: recipe.rl.eval_max_prompts]

    data = {"files": report.files, "formats": report.formats, "examples": report.examples}
    with folder.open(
        recipe, data_report=report.to_dict(), data=data, log_lines=lines, phases=TRAINING_PHASES
    ) as run:
        run.phase("model")
        set_seed(train_kwargs.get("seed", 42))
        dtype = resolve_dtype(recipe.model.dtype)
        model = load_causal_lm(
            recipe.model, resolved, tokenizer, quantization=quantization_config(recipe.peft, dtype)
        )
        set_stop_tokens(model, tokenizer, end_of_turn_token(tokenizer, recipe.data.template))
        # Full training with a KL term needs a frozen copy of the starting model. TRL would reload it from
        # config._name_or_path, which for a GGUF, an sft run (adapter merged here) or a converted demo is
        # not this model (or not loadable): the copy made here is handed to TRL instead (see _reference).
        reference = None
        if beta != 0 and recipe.peft.method == "none":
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        gradient_checkpointing = bool(train_kwargs.get("gradient_checkpointing", True))  # TRL's default
        model = apply_peft(model, recipe.peft, gradient_checkpointing=gradient_checkpointing)
        log.info(
            "model: %s (%s), %s; %s",
            resolved.name,
            str(dtype).removeprefix("torch."),
            describe_trainable(model),
            _reference_note(beta, recipe, reference),
        )
        run.set_model(
            model_entry(
                model,
                name=resolved.name,
                source=resolved.source,
                path=str(resolved.path),
                peft=recipe.peft.method,
                algorithm=algorithm,
            )
        )

        # ---- before training: greedy answers to the held-out prompts
        before = None
        if held_out and run.folder.checkpoint is None:
            answers = answer_prompts(
                model,
                tokenizer,
                held_out,
                max_new_tokens=completion_limit,
                batch_size=recipe.rl.eval_batch_size,
            )
            before, records = score_answers(functions, held_out, answers)
            _write_jsonl(run.dir / "heldout_before.jsonl", records)
            log.info("held-out before training: %s", _describe(before))

        # ---- trainer
        args, use_tensorboard = training_arguments(
            recipe,
            run.dir,
            has_eval=False,  # held-out prompts are answered greedily by llmtune, before and after
            bf16_model=str(dtype) == "torch.bfloat16",
            arguments_class=config_class,
            stage_defaults={
                "reward_weights": weights(functions),
                "include_num_input_tokens_seen": "no",  # TRL logs its own token counts
                "logging_steps": 1,  # an RL step is expensive: every step's reward is worth a line
            },
        )
        _, callbacks = standard_callbacks(run.dir, use_tensorboard=use_tensorboard)
        recorder = CompletionRecorder(
            run.dir / "completions.jsonl",
            functions,
            recipe.rl.completions_every,
            is_main_process=args.process_index == 0,
        )
        with quiet_datasets(), _reference(trl_module, reference):
            trainer = trainer_class(
                model=model,
                reward_funcs=[recorder.wrap(f) for f in functions],
                args=args,
                train_dataset=train_dataset,
                processing_class=tokenizer,
                callbacks=callbacks,
            )
        started = time.perf_counter()
        train_output = run_training(trainer, recipe, run)
        wall = time.perf_counter() - started
        save_trained(trainer, run)

        # ---- results
        run.phase("final_eval")
        history = trainer.state.log_history
        rewards = [e["reward"] for e in history if "reward" in e]
        results = {
            "algorithm": algorithm,
            "train_loss": train_output.training_loss,
            "global_step": trainer.state.global_step,
            "train_wall_s": round(wall, 1),
            "reward_first": rewards[0] if rewards else None,
            "reward_last": rewards[-1] if rewards else None,
            "completions_logged": recorder.written,
        }
        if held_out:
            answers = answer_prompts(
                trainer.model,
                tokenizer,
                held_out,
                max_new_tokens=completion_limit,
                batch_size=recipe.rl.eval_batch_size,
            )
            after, records = score_answers(functions, held_out, answers)
            _write_jsonl(run.dir / "heldout_after.jsonl", records)
            run.write_json("heldout.json", {"before": before, "after": after})
            log.info("held-out after training: %s", _describe(after))
            results["heldout_reward"] = after["reward_mean"]
            if before is not None:
                results["heldout_reward_before"] = before["reward_mean"]
            if "accuracy" in after:
                results["heldout_accuracy"] = after["accuracy"]
                if before is not None:
                    results["heldout_accuracy_before"] = before["accuracy"]
        write_training_metrics(trainer, run, title=f"{algorithm}: {Path(recipe.source).name}")
        if trainer.is_world_process_zero():
            _plot_rewards(
                history, functions, run.dir / "rewards.png", f"{algorithm}: {Path(recipe.source).name}"
            )
        return run.finish({k: v for k, v in results.items() if v is not None})


@contextlib.contextmanager
def _reference(trl_module, reference):
    """Hand TRL our frozen copy as the reference model. GRPOTrainer / RLOOTrainer build it in their
    constructor with `create_model_from_path(config._name_or_path)` and offer no argument to pass one (TRL
    1.16); the policy is passed as an instance, so that call is the only one in the constructor."""
    if reference is None:
        yield
        return
    original = trl_module.create_model_from_path
    trl_module.create_model_from_path = lambda *args, **kwargs: reference
    try:
        yield
    finally:
        trl_module.create_model_from_path = original


def _reference_note(beta: float, recipe, reference) -> str:
    if beta == 0:
        return "no KL term (train.beta 0): no reference model"
    if reference is not None:
        return f"KL to a frozen copy of the starting model (beta {beta:g})"
    return f"KL to the model with its adapter disabled (beta {beta:g})"


def _describe(summary: dict) -> str:
    parts = [f"{summary['prompts']} prompts"]
    if "accuracy" in summary:
        parts.append(f"accuracy {summary['accuracy']:.3f}")
    parts.append(f"mean reward {summary['reward_mean']:.3f}")
    parts += [f"{name} {value:.3f}" for name, value in summary["rewards"].items()]
    parts.append(f"{summary['completion_tokens_mean']:.1f} tokens per answer")
    return ", ".join(parts)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _plot_rewards(history: list[dict], functions: list, path: Path, title: str) -> None:
    """Mean reward per step, in total and per function (the curve a user checks first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in history if "reward" in e and "step" in e]
    if not entries:
        return
    figure, axis = plt.subplots(figsize=(7, 4))
    steps = [e["step"] for e in entries]
    totals = [e["reward"] for e in entries]
    window = max(1, len(entries) // 15)  # one prompt's group per step is noisy: show the trend too
    smoothed = [
        sum(totals[max(0, i - window + 1) : i + 1]) / len(totals[max(0, i - window + 1) : i + 1])
        for i in range(len(totals))
    ]
    axis.plot(steps, totals, label="total (weighted)", color="tab:blue", alpha=0.3, linewidth=1)
    axis.plot(steps, smoothed, label=f"total, mean of {window} steps", color="tab:blue", linewidth=2.5)
    for index, function in enumerate(functions, start=1):
        key = f"rewards/{function.__name__}/mean"
        values = [(e["step"], e[key]) for e in entries if key in e]
        if values:
            xs, ys = zip(*values, strict=True)
            trend = [
                sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1])
                for i in range(len(ys))
            ]
            axis.plot(
                xs,
                trend,
                label=f"{function.__name__}, mean of {window} steps",
                color=f"C{index}",
                linewidth=1.5,
            )
    axis.set_xlabel("step")
    axis.set_ylabel("mean reward")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
