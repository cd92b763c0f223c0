"""Clean interruption: SIGINT/SIGTERM (Ctrl-C, a preempted Kaggle/Colab/cluster job) during training
finishes the current step, writes a checkpoint, says how to resume and exits non-zero; a second signal
aborts at once. Outside the training loop (loading data or a model) the first signal aborts at once:
there is nothing to save yet.

HF Trainer has no such handling (Ctrl-C raises wherever it lands, SIGTERM kills the process), and a
TrainerCallback cannot see signals, hence this module: the handler only records the signal, and the
callback turns it into "save, then stop" at the next step end, where the Trainer's own state is whole.
"""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    received: int | None = None  # the first signal seen while training
    training: bool = False  # inside trainer.train(), where a step can finish and be saved
    deferring: str | None = None  # what must not be cut short (saving the trained model), if anything


STATE = _State()


class TrainingInterrupted(LlmtuneError):
    """Training stopped on a signal after saving a checkpoint (exit 128 + signal number, like a shell)."""

    interrupted = True

    def __init__(self, message: str, signum: int, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.exit_code = 128 + signum


def _handle(signum, frame) -> None:
    name = signal.Signals(signum).name
    if STATE.deferring and STATE.received is None:
        STATE.received = signum
        log.warning("received %s: %s first (send it again to abort at once)", name, STATE.deferring)
        return
    if STATE.received is not None or not STATE.training:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        raise KeyboardInterrupt(name)
    STATE.received = signum
    log.warning(
        "received %s: finishing this step and writing a checkpoint (send it again to abort at once)", name
    )


@contextmanager
def signals_handled():
    """Install the handlers for the duration of a command (main thread only, as Python requires)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    STATE.received, STATE.training = None, False
    for sig in SIGNALS:
        signal.signal(sig, _handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        STATE.received, STATE.training = None, False


@contextmanager
def signals_deferred(what: str):
    """Let `what` finish before a first signal takes effect (it is then raised as KeyboardInterrupt at the
    end of the block); a second signal aborts at once as usual."""
    if STATE.deferring:
        yield
        return
    STATE.deferring = what
    try:
        yield
    finally:
        STATE.deferring = None
    if STATE.received is not None:
        name = signal.Signals(STATE.received).name
        STATE.received = None
        raise KeyboardInterrupt(name)


class StopOnSignal(TrainerCallback):
    """Save and stop at the end of the step during which a signal arrived."""

    def on_train_begin(self, args, state, control, **kwargs):
        STATE.training = True

    def on_step_end(self, args, state, control, **kwargs):
        if STATE.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        STATE.training = False


def raise_if_interrupted(trainer, recipe, command: str) -> None:
    """After trainer.train(): if a signal stopped it, report the checkpoint and how to resume."""
    if STATE.received is None:
        return
    from llmtune.outputs import latest_checkpoint

    name = signal.Signals(STATE.received).name
    checkpoint = latest_checkpoint(Path(trainer.args.output_dir))
    where = f"{checkpoint.name} written" if checkpoint else "no checkpoint could be written"
    raise TrainingInterrupted(
        f"interrupted by {name} at step {trainer.state.global_step} of {trainer.state.max_steps}: {where} "
        f"in {trainer.args.output_dir}.",
        STATE.received,
        hint=f"Resume with: {resume_command(recipe, command)}",
    )


def resume_command(recipe, command: str, output_dir: str | None = None) -> str:
    """The command line that continues this run: the same recipe and --set overrides, plus --resume."""
    import shlex

    sets = [item for item in recipe.overrides if not item.startswith("train.resume_from_checkpoint=")]
    if output_dir is not None:
        sets = [item for item in sets if not item.startswith("train.output_dir=")]
        sets.append(f"train.output_dir={output_dir}")
    parts = ["llmtune", command, "--recipe", recipe.source]
    for item in sets:
        parts += ["--set", item]
    return shlex.join([*parts, "--resume"])
