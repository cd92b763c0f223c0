"""The run folder: protection, layout, manifest, metrics JSON, loss plot, run log.

<output_dir>/
  recipe.yaml          the resolved recipe (defaults filled in)
  manifest.json        versions, data hashes, git commit, model, results; "status" is written
                       "completed" last, so a folder that stopped part way never looks complete
  data_report.json     what reading/cleaning/packing did (counts, skips with reasons)
  metrics.json         train/eval loss and perplexity, learning rate, tokens/s over steps
  tensorboard/         TensorBoard event files
  loss.png             train and eval loss curves
  run.log              the run's log (errors included)
  checkpoint-*/        Trainer checkpoints (for --resume)
  <model or adapter>   safetensors + config + tokenizer, loadable with from_pretrained
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")

MANIFEST = "manifest.json"
CHECKPOINT_PREFIX = "checkpoint-"


def is_main_process() -> bool:
    """Rank 0 of a multi-process run (or a single process): the only one that writes run files."""
    return os.environ.get("RANK", "0") == "0"


# ------------------------------------------------------------------------------------------ protection
def check_run_dir(output_dir: str, *, overwrite: bool, resume: bool) -> Path:
    """Refuse a run folder that holds a run, unless told how to treat it. Changes nothing on disk.

    Called before anything slow, so a conflict is reported at once; the folder is cleared (with
    --overwrite) only by `open_run_dir`, after the recipe's inputs proved loadable, so that a broken
    recipe never costs the user their previous run.
    """
    path = Path(output_dir)
    if not is_main_process():
        return path  # rank 0 protects the folder; the others write nothing of their own into it
    if path.exists() and not path.is_dir():
        raise LlmtuneError(f"train.output_dir: {path} exists and is a file, not a folder.")
    existing = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if resume:
        if overwrite:
            raise LlmtuneError("--resume and --overwrite contradict each other; pick one.")
        if latest_checkpoint(path) is None:
            raise LlmtuneError(
                f"--resume: {path} holds no complete checkpoint to resume from"
                + (f" (it has: {', '.join(existing[:6])})" if existing else "")
                + ". Run without --resume to start a new run."
            )
        return path
    if existing and not overwrite and not _failed_before_checkpoint(path):
        shown = ", ".join(existing[:6]) + (" ..." if len(existing) > 6 else "")
        raise LlmtuneError(
            f"train.output_dir {path} is not empty ({shown}); llmtune does not overwrite a run silently.",
            hint="Pass --resume to continue it from its last checkpoint, --overwrite to replace it, "
            "or set train.output_dir to a new folder (e.g. --set train.output_dir=runs/new).",
        )
    return path


def _failed_before_checkpoint(path: Path) -> bool:
    """A folder left by a run that failed before writing any checkpoint or weights holds nothing to
    protect; it is reused so that fixing a recipe and rerunning needs no --overwrite."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("status") not in ("failed", "interrupted"):
        return False
    keep = [p for p in path.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) or p.suffix == ".safetensors"]
    return not keep


def open_run_dir(path: Path, *, overwrite: bool, resume: bool) -> Path:
    """Create the run folder; with --overwrite (or a failed earlier attempt) clear it first."""
    if not is_main_process():
        path.mkdir(parents=True, exist_ok=True)
        return path
    if path.is_dir() and not resume and any(path.iterdir()):
        set_aside(path)
        if overwrite:
            log.warning(
                "--overwrite: replacing %s (its old contents come back if this run fails early)", path
            )
        else:
            log.warning("reusing %s: its previous run failed before writing a checkpoint", path)
    path.mkdir(parents=True, exist_ok=True)
    return path


# A folder being replaced (--overwrite) is renamed aside, not deleted, until the new run has something of
# its own to keep (a checkpoint, weights, or completion); a run that fails before that gets the old
# contents back unchanged. A killed process leaves the old contents in `.<name>.replaced-<pid>`.
_REPLACED: dict[Path, Path] = {}


def set_aside(path: Path) -> Path:
    aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    path.rename(aside)
    _REPLACED[path.resolve()] = aside
    return aside


def restore_replaced(path: Path) -> bool:
    """After a failure: put the replaced folder back unless the new run wrote something worth keeping."""
    aside = _REPLACED.pop(Path(path).resolve(), None)
    if aside is None or not aside.exists():
        return False
    path = Path(path)
    produced = path.is_dir() and any(
        p.name.startswith(CHECKPOINT_PREFIX) or p.suffix == ".safetensors" for p in path.iterdir()
    )
    if produced:
        shutil.rmtree(aside, ignore_errors=True)
        return False
    shutil.rmtree(path, ignore_errors=True)
    aside.rename(path)
    log.warning(
        "the previous contents of %s are restored (this run failed before writing anything to keep)", path
    )
    return True


def drop_replaced(path: Path) -> None:
    """The new run completed: the replaced folder goes."""
    aside = _REPLACED.pop(Path(path).resolve(), None)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest `checkpoint-N` folder that the Trainer finished writing (it has trainer_state.json)."""
    if not run_dir.is_dir():
        return None
    found = []
    for child in run_dir.iterdir():
        if (
            child.is_dir()
            and child.name.startswith(CHECKPOINT_PREFIX)
            and child.name[len(CHECKPOINT_PREFIX) :].isdigit()
        ):
            if (child / "trainer_state.json").exists():
                found.append((int(child.name[len(CHECKPOINT_PREFIX) :]), child))
            else:
                log.warning("ignoring incomplete checkpoint %s (no trainer_state.json)", child)
    return max(found)[1] if found else None


# ------------------------------------------------------------------------------------------ files
def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename), so a reader never sees half a file.
    Only rank 0 writes in a multi-process run."""
    if not is_main_process():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """A text file of the run folder, written atomically by rank 0 only."""
    if not is_main_process():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# Records for run.log only (tracebacks): never printed on the console.
file_log = logging.getLogger("llmtune.runlog")
file_log.propagate = False


def start_run_log(run_dir: Path) -> logging.Handler:
    """Send llmtune's and transformers' log records to <run>/run.log (appended on resume); rank 0 only."""
    if not is_main_process():
        return logging.NullHandler()
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("llmtune", "llmtune.runlog", "transformers"):
        logging.getLogger(name).addHandler(handler)
    return handler


def stop_run_log(handler: logging.Handler) -> None:
    for name in ("llmtune", "llmtune.runlog", "transformers"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def record_failure(run_dir: Path, manifest: dict, exc: BaseException) -> None:
    """Mark the manifest failed/interrupted and put the traceback in run.log (not on the console)."""
    if is_main_process() and restore_replaced(run_dir):
        return  # the folder is as it was before this run; the error is on the console
    interrupted = isinstance(exc, KeyboardInterrupt) or getattr(exc, "interrupted", False)
    manifest.update(status="interrupted" if interrupted else "failed", error=f"{type(exc).__name__}: {exc}")
    write_json(run_dir / MANIFEST, manifest)
    if interrupted:
        file_log.warning("run interrupted: %s", exc)
    else:
        file_log.error("run %s", manifest["status"], exc_info=(type(exc), exc, exc.__traceback__))


# ------------------------------------------------------------------------------------------ manifest
def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "llmtune",
        "torch",
        "transformers",
        "peft",
        "trl",
        "datasets",
        "accelerate",
        "tokenizers",
        "deepspeed",
        "bitsandbytes",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_commit(path: Path) -> str | None:
    """The commit of the git checkout holding `path` (with '+dirty' for local changes), if any."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def device_summary() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def new_manifest(command: str, recipe_source: str) -> dict[str, Any]:
    return {
        "command": command,
        "status": "running",
        "argv": sys.argv,
        "recipe": recipe_source,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "llmtune_git_commit": git_commit(Path(__file__).resolve().parent),
        "packages": package_versions(),
        "device": device_summary(),
    }


# ------------------------------------------------------------------------------------------ metrics
def metrics_from_log_history(history: list[dict]) -> dict[str, list[dict]]:
    """Trainer.state.log_history → {"train", "eval", "eval_train", "summary"} rows with perplexities.

    Built from the Trainer's own history (restored from checkpoints on resume), so the file always
    covers the whole run, not only the part since the last restart. With several eval sets the Trainer
    prefixes their names (eval_validation_loss, eval_train_loss); validation rows are given the plain
    names (eval_loss) so every consumer reads one key.
    """
    train, evals, eval_train, summary = [], [], [], []
    for entry in history:
        row = dict(entry)
        if "loss" in row:
            row["perplexity"] = _safe_exp(row["loss"])
            train.append(row)
        elif "eval_train_loss" in row:
            row["eval_train_perplexity"] = _safe_exp(row["eval_train_loss"])
            eval_train.append(row)
        elif "eval_loss" in row or "eval_validation_loss" in row:
            row.update(
                {
                    k.replace("eval_validation_", "eval_"): v
                    for k, v in entry.items()
                    if k.startswith("eval_validation_")
                }
            )
            row["eval_perplexity"] = _safe_exp(row["eval_loss"])
            evals.append(row)
        else:
            summary.append(row)
    return {"train": train, "eval": evals, "eval_train": eval_train, "summary": summary}


def _safe_exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return float("inf")


def plot_loss(metrics: dict[str, list[dict]], path: Path, title: str) -> None:
    """loss.png: train loss and eval loss against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if metrics["train"]:
        ax.plot(
            [r["step"] for r in metrics["train"]],
            [r["loss"] for r in metrics["train"]],
            label="train loss",
            marker=".",
        )
    if metrics.get("eval_train"):
        rows = metrics["eval_train"]
        ax.plot(
            [r["step"] for r in rows],
            [r["eval_train_loss"] for r in rows],
            label="train loss (eval mode)",
            marker="s",
        )
    if metrics["eval"]:
        ax.plot(
            [r["step"] for r in metrics["eval"]],
            [r["eval_loss"] for r in metrics["eval"]],
            label="eval loss",
            marker="o",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
