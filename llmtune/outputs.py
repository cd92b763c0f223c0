"""The files of a run folder: atomic JSON/text writes, run.log, checkpoints, metrics JSON, the loss plot.

The lifecycle that decides when they are written (protection, staging, failure) is run_folder.py; the
manifest's schema is manifest.py.

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
from pathlib import Path
from typing import Any

log = logging.getLogger("llmtune")

MANIFEST = "manifest.json"
CHECKPOINT_PREFIX = "checkpoint-"


def is_main_process() -> bool:
    """Rank 0 of a multi-process run (or a single process): the only one that writes run files."""
    return os.environ.get("RANK", "0") == "0"


# ------------------------------------------------------------------------------------------ checkpoints
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
