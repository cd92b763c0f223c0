"""What every training stage shares: TrainingArguments from a recipe, the standard callbacks, train() with
atomic checkpoints and exact resume, saving the trained model with its metrics and loss plot, and counting
real tokens.

Stages stay thin because HF Trainer / TRL trainers own the loop; this module only fills in the
defaults llmtune promises (tokens/s of real tokens, TensorBoard under the run folder, CPU-safe
precision) and turns argument errors into messages that name the `train.` key.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llmtune.errors import LlmtuneError, first_line
from llmtune.outputs import CHECKPOINT_PREFIX, metrics_from_log_history, plot_loss, write_json

log = logging.getLogger("llmtune")


def training_arguments(
    recipe,
    run_dir: Path,
    *,
    has_eval: bool,
    bf16_model: bool,
    arguments_class=None,
    stage_defaults: dict[str, Any] | None = None,
):
    """Build the trainer's argument dataclass from `recipe.train`, with llmtune's defaults underneath.

    Returns (arguments, use_tensorboard). The recipe always wins over a default; a default is chosen
    only where HF's own would surprise (logging every 500 steps on a 90-step run, bf16 on a CPU...).
    """
    import torch

    if arguments_class is None:
        from transformers import TrainingArguments as arguments_class

    given = recipe.train.trainer_kwargs()
    has_gpu = torch.cuda.is_available()
    defaults: dict[str, Any] = {
        "logging_steps": 10,
        "logging_first_step": True,
        "include_num_input_tokens_seen": "non_padding",
        "eval_strategy": "epoch" if has_eval else "no",
        "dataloader_pin_memory": has_gpu,
        # Without use_cpu on a GPU-less machine, a multi-process launch silently trains N independent
        # copies; with it, accelerate sets up gloo and the world size is real.
        "use_cpu": not has_gpu,
        "bf16": bf16_model,
        "report_to": ["tensorboard"],
        **(stage_defaults or {}),
    }
    from llmtune.launch import current_request, trainer_arguments

    defaults.update(trainer_arguments(current_request(recipe)))
    kwargs = {**defaults, **given, "output_dir": str(run_dir)}

    if not has_eval and kwargs.get("eval_strategy") not in ("no", None):
        if "eval_strategy" in given:
            raise LlmtuneError(
                f"train.eval_strategy is {given['eval_strategy']!r} but there is no validation data; "
                "set data.validation_split or data.validation_files, or remove train.eval_strategy."
            )
        kwargs["eval_strategy"] = "no"
    if kwargs.get("eval_on_start") and not has_eval:
        raise LlmtuneError(
            "train.eval_on_start needs validation data (data.validation_split or data.validation_files)."
        )

    early = getattr(recipe, "early_stopping", None)
    if early is not None:
        if not has_eval:
            raise LlmtuneError(
                "early_stopping needs validation data (data.validation_split or data.validation_files)."
            )
        kwargs.setdefault("metric_for_best_model", "eval_loss")
        kwargs["load_best_model_at_end"] = True
        if "save_strategy" not in given:
            kwargs["save_strategy"] = kwargs["eval_strategy"]
            if kwargs["eval_strategy"] == "steps" and "eval_steps" in kwargs:
                kwargs.setdefault("save_steps", kwargs["eval_steps"])

    report_to = kwargs.get("report_to")
    report_to = [report_to] if isinstance(report_to, str) else list(report_to or [])
    use_tensorboard = "tensorboard" in report_to or "all" in report_to
    kwargs["report_to"] = [r for r in report_to if r not in ("tensorboard", "none")] or "none"
    try:
        return arguments_class(**kwargs), use_tensorboard
    except (ValueError, TypeError) as exc:
        raise LlmtuneError(f"train: {first_line(exc)} ({recipe.source})") from None


class MetricsRecorder(TrainerCallback):
    """Rewrites <run>/metrics.json at every log from the Trainer's own history (so a resumed run's file
    covers the whole run), and measures this session's real-token throughput."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.start: tuple[float, int] | None = None
        self.tokens_per_second: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = (time.perf_counter(), state.num_input_tokens_seen)

    def on_train_end(self, args, state, control, **kwargs):
        if self.start is not None:
            seconds = time.perf_counter() - self.start[0]
            self.tokens_per_second = (state.num_input_tokens_seen - self.start[1]) / max(seconds, 1e-9)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            write_json(self.run_dir / "metrics.json", metrics_from_log_history(state.log_history))


def standard_callbacks(
    run_dir: Path, *, use_tensorboard: bool, early_stopping=None
) -> tuple[MetricsRecorder, list]:
    """(metrics recorder, all callbacks): metrics JSON always, TensorBoard under <run>/tensorboard, early
    stopping when the recipe asks for it."""
    from llmtune.interrupt import StopOnSignal

    recorder = MetricsRecorder(run_dir)
    callbacks: list = [recorder, StopOnSignal()]
    if use_tensorboard:
        from transformers.integrations import TensorBoardCallback

        tensorboard = TensorBoardCallback()
        # Its documented override is the TENSORBOARD_LOGGING_DIR variable, which is process-wide; the
        # attribute it reads at train begin (and again for evaluations after training) is per run.
        tensorboard.logging_dir = str(run_dir / "tensorboard")
        callbacks.append(tensorboard)
    if early_stopping is not None:
        from transformers import EarlyStoppingCallback

        callbacks.append(
            EarlyStoppingCallback(
                early_stopping_patience=early_stopping.patience,
                early_stopping_threshold=early_stopping.threshold,
            )
        )
    return recorder, callbacks


STAGING_PREFIX = "tmp-checkpoint"


def make_checkpoints_atomic(
    trainer, resumed_from: str | None = None, guard: LossGuard | None = None, extra_state: tuple = ()
) -> None:
    """Write each checkpoint into `tmp-checkpoint-N`, then rename it to `checkpoint-N`, so that a run killed
    mid-save never leaves a folder that looks like a checkpoint; and keep checkpoints by llmtune's rule.

    HF writes `checkpoint-N` in place and its rotation protects only the best checkpoint; here the newest
    `save_total_limit` are kept, plus the best one and the one this session resumed from. Done by wrapping
    the Trainer's own `_save_checkpoint` (no public hook decides where a checkpoint is written). The
    `guard` and each of `extra_state` (objects with `write_state(folder, step)`, such as a stream's position)
    write their files into the staging folder, so a checkpoint has them whole or is not a checkpoint.
    """
    import transformers.trainer as trainer_module

    original = trainer._save_checkpoint

    def save(model, trial, *args, **kwargs):
        run_dir = Path(trainer._get_output_dir(trial=trial))
        limit = trainer.args.save_total_limit
        if trainer.args.should_save:
            for stale in run_dir.glob(f"{STAGING_PREFIX}-*"):  # left by a run killed while saving
                shutil.rmtree(stale, ignore_errors=True)
        prefix = trainer_module.PREFIX_CHECKPOINT_DIR
        trainer_module.PREFIX_CHECKPOINT_DIR, trainer.args.save_total_limit = STAGING_PREFIX, None
        try:
            original(model, trial, *args, **kwargs)
        finally:
            trainer_module.PREFIX_CHECKPOINT_DIR, trainer.args.save_total_limit = prefix, limit
        trainer.accelerator.wait_for_everyone()
        if not trainer.args.should_save:
            return
        step = trainer.state.global_step
        staging, final = run_dir / f"{STAGING_PREFIX}-{step}", run_dir / f"{CHECKPOINT_PREFIX}{step}"
        if guard is not None:
            guard.write_state(staging, step)
        for writer in extra_state:
            writer.write_state(staging, step)
        best_step = trainer.state.best_global_step
        if best_step:
            best = run_dir / f"{CHECKPOINT_PREFIX}{best_step}"
            if best_step == step or best.exists():
                trainer.state.best_model_checkpoint = str(best)
                trainer.state.save_to_json(str(staging / "trainer_state.json"))
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        keep = {trainer.state.best_model_checkpoint, resumed_from}
        prune_checkpoints(run_dir, limit, {Path(k).name for k in keep if k})

    trainer._save_checkpoint = save


def prune_checkpoints(run_dir: Path, limit: int | None, keep: set[str]) -> list[str]:
    """Delete the oldest complete checkpoints beyond `limit`, never one named in `keep`."""
    if not limit:
        return []
    found = sorted(
        (int(p.name.rsplit("-", 1)[1]), p)
        for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()
    )
    removable = [p for _, p in found[:-limit] if p.name not in keep] if len(found) > limit else []
    for path in removable:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in removable]


def check_launch(trainer, recipe) -> str:
    """Stop unless the trainer's processes are what the recipe/flags asked for (see launch.verify);
    returns the description of how they train together."""
    from llmtune.launch import current_request, verify

    request = current_request(recipe)
    description = verify(trainer, request)
    if request.world_size > 1 or request.strategy != "single":
        log.info("distributed: %s", description)
    return description


# The phases of a training stage, in order (the manifest of a run that stops lists those not finished).
TRAINING_PHASES = ("model", "train", "save", "final_eval", "samples")


def run_training(trainer, recipe, run, *, checkpoint_state: tuple = ()):
    """trainer.train() the llmtune way: the launch checked (and recorded in the manifest), checkpoints
    written atomically and kept by llmtune's rule, --resume from the checkpoint the run folder checked,
    a signal turned into a saved checkpoint plus an error that says how to resume, a non-finite loss
    turned into a stop, and `training_loss` over the whole run (a resumed run included). Each of
    `checkpoint_state` writes its own file into every checkpoint (see make_checkpoints_atomic)."""
    from llmtune.interrupt import raise_if_interrupted

    run.phase("train")
    run.manifest.distributed = check_launch(trainer, recipe)
    run.write_manifest()
    checkpoint = str(run.folder.checkpoint) if run.folder.checkpoint is not None else None
    if checkpoint is not None:
        log.info("Resuming from %s", checkpoint)
    guard = LossGuard(recipe, trainer, checkpoint)
    make_checkpoints_atomic(trainer, checkpoint, guard, checkpoint_state)
    output = trainer.train(resume_from_checkpoint=checkpoint)
    raise_if_interrupted(trainer, recipe, run.command)
    guard.raise_if_tripped(trainer, recipe, run)
    whole = guard.whole_run_loss(output, trainer.state.global_step)
    return output._replace(training_loss=whole, metrics={**output.metrics, "train_loss": whole})


class LossGuard(TrainerCallback):
    """Stops training when the loss (or the gradient norm) stops being a finite number, and keeps the
    sum of step losses in every checkpoint so that a resumed run reports `train_loss` over all its steps.

    HF's Trainer, with its default `logging_nan_inf_filter`, replaces a NaN step loss by the running mean
    in its logs (a run that went NaN at step 1 logs a loss of 0) and trains on; and its final
    `training_loss` averages only the steps of the current session. Both are read here from each step's
    loss as `training_step` returns it (wrapped: no callback sees the step loss). `train.nan_patience`
    non-finite steps in a row are tolerated (default 0: stop at the first); no checkpoint is written
    while the loss is non-finite, so the last checkpoint is a good one.
    """

    STATE_FILE = "llmtune_state.json"

    def __init__(self, recipe, trainer, resumed_from: str | None):
        self.patience = int(getattr(recipe.train, "nan_patience", 0) or 0)
        self.scaled_fp16 = bool(trainer.args.fp16)  # the fp16 scaler skips steps with inf gradients by design
        self.session_sum, self.bad_in_step, self.bad_steps = 0.0, False, 0
        self.tripped: tuple[int, str] | None = None
        self.prior: tuple[float, int] | None = None  # (loss sum, steps) carried in the resumed checkpoint
        self.unknown_prior = False
        if resumed_from is not None:
            try:
                state = json.loads((Path(resumed_from) / self.STATE_FILE).read_text())
                self.prior = (float(state["loss_sum"]), int(state["step"]))
            except (OSError, ValueError, KeyError, TypeError):
                self.unknown_prior = True
                log.warning(
                    "note: %s has no %s (written by an older llmtune); train_loss will cover only the "
                    "steps trained from here",
                    resumed_from,
                    self.STATE_FILE,
                )
        original = trainer.training_step

        def training_step(*args, **kwargs):
            loss = original(*args, **kwargs)
            value = float(loss)  # one sync per micro-batch, as HF's own NaN filter does
            if math.isfinite(value):
                self.session_sum += value
            else:
                self.bad_in_step = True
            return loss

        trainer.training_step = training_step
        trainer.add_callback(self)

    def on_step_end(self, args, state, control, **kwargs):
        self.bad_steps = self.bad_steps + 1 if self.bad_in_step else 0
        self.bad_in_step = False
        if self.bad_steps:
            control.should_save = False
            if self.bad_steps > self.patience and self.tripped is None:
                self.tripped = (state.global_step, "loss")
                control.should_training_stop = True
                control.should_evaluate = False
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        norm = (logs or {}).get("grad_norm")
        if isinstance(norm, (int, float)) and not math.isfinite(norm) and not self.scaled_fp16:
            if self.tripped is None and self.patience == 0:
                self.tripped = (state.global_step, "gradient norm")
                control.should_training_stop = True
                control.should_save = False
        return control

    def write_state(self, checkpoint_dir: Path, step: int) -> None:
        if self.unknown_prior:
            return  # the steps before this session are unknown: no sum is better than a wrong one
        prior = self.prior[0] if self.prior else 0.0
        write_json(checkpoint_dir / self.STATE_FILE, {"loss_sum": prior + self.session_sum, "step": step})

    def raise_if_tripped(self, trainer, recipe, run) -> None:
        if self.tripped is None:
            return
        from llmtune.outputs import latest_checkpoint

        step, what = self.tripped
        good = latest_checkpoint(run.dir)
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint was written before it"
        raise LlmtuneError(
            f"training stopped at step {step}: the {what} is no longer a finite number (NaN or inf), so the "
            f"model's weights are no longer usable; {kept}. The trained model was not saved.",
            hint="Lower train.learning_rate, check the recipe's scaling values (peft.lora_alpha, "
            "warmup), use bf16 instead of fp16, or raise train.max_grad_norm clipping; "
            "train.nan_patience: N tolerates N non-finite steps in a row (fp16 loss scaling).",
        )

    def whole_run_loss(self, output, global_step: int) -> float:
        """HF's `training_loss` for a run trained in one session; over all its steps for a resumed one."""
        if self.prior is None:
            return output.training_loss
        prior_sum, prior_steps = self.prior
        session_steps = global_step - prior_steps
        return (prior_sum + output.training_loss * session_steps) / max(global_step, 1)


def save_trained(trainer, run) -> None:
    """Save the model/adapter and tokenizer into the run folder, whole or not at all (Run.save_weights:
    every rank takes part, ZeRO-3 gathers), with the saved weights checked."""
    run.save_weights(lambda staging: trainer.save_model(str(staging)), check=check_saved_weights)


def final_evaluation(trainer) -> dict:
    """The metrics of the final model on the eval data, as `trainer.evaluate()` returns them.

    When the loop already evaluated at its last step (eval every epoch ends there), those logged
    metrics are the final model's and are returned instead of a second pass over the same data with the
    same weights. A fresh evaluation is run when there is none, or when the Trainer put the best
    checkpoint back at the end (`load_best_model_at_end`: the final weights are not the last step's).
    """
    state = trainer.state
    if not trainer.args.load_best_model_at_end:
        logged: dict = {}
        for entry in reversed(state.log_history):
            if entry.get("step") != state.global_step:
                break
            # several eval sets are logged as one entry each at the same step; evaluate() merges them
            logged.update({k: v for k, v in entry.items() if k.startswith("eval_")})
        if any(k.endswith("_loss") for k in logged):
            return logged
    return trainer.evaluate()


def write_training_metrics(trainer, run, *, title: str) -> None:
    """metrics.json and loss.png from the Trainer's history (after the final evaluation, which it
    includes). The stage then calls run.finish."""
    if trainer.is_world_process_zero():
        metrics = metrics_from_log_history(trainer.state.log_history)
        write_json(run.dir / "metrics.json", metrics)
        plot_loss(metrics, run.dir / "loss.png", title)


def check_saved_weights(run_dir: Path) -> None:
    """Refuse to call a run complete when its saved weights are empty placeholders.

    Under ZeRO-3 (or sharded FSDP) a save without gathering writes each parameter as a 0-element tensor
    and the real values only in the sharded checkpoint; peers' users find out when the model loads with
    random weights. The safetensors headers tell without reading the data.
    """
    from safetensors import safe_open

    files = sorted(run_dir.glob("*.safetensors"))
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            empty = [name for name in handle.keys() if 0 in handle.get_slice(name).get_shape()]
        if empty:
            raise LlmtuneError(
                f"{path} holds {len(empty)} empty tensor(s) ({empty[0]}, ...): the weights were saved as "
                "ZeRO-3/FSDP shards, not gathered, so this folder is not a usable model.",
                hint="Use deepspeed_configs/zero3.json (stage3_gather_16bit_weights_on_model_save: true) or "
                "FSDP with state_dict_type FULL_STATE_DICT; the sharded state is in the last checkpoint.",
            )


@contextmanager
def quiet_datasets():
    """Hide datasets' per-step progress bars ("Truncating train dataset", ...) while a trainer prepares
    data that llmtune has already reported on."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    was_enabled = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            enable_progress_bar()


class TokenCounter:
    """Counts, over training batches, the real tokens (the examples' own lengths, before padding) and the
    tokens the model processes (the collated input_ids, padding included).

    The Trainer's own `non_padding` count compares input_ids with the pad token, which miscounts when
    pad == EOS == the chat template's end-of-turn token (SmolLM2) and in padding-free batches.
    `attach` gives the wrapped collator to the training dataloader only (evaluation batches share the
    Trainer's data_collator and must not count).
    """

    def __init__(self, collator):
        self.collator = collator
        self.real = self.processed = 0

    def __call__(self, examples):
        batch = self.collator(examples)
        self.real += sum(len(example["input_ids"]) for example in examples)
        self.processed += int(batch["input_ids"].numel())
        return batch

    def attach(self, trainer) -> TokenCounter:
        build = trainer.get_train_dataloader

        def train_dataloader(*args, **kwargs):
            shared = trainer.data_collator
            trainer.data_collator = self
            try:
                return build(*args, **kwargs)
            finally:
                trainer.data_collator = shared

        trainer.get_train_dataloader = train_dataloader
        return self

    @property
    def padding_share(self) -> float | None:
        return 1 - self.real / self.processed if self.processed else None
