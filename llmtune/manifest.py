"""manifest.json: one schema for the folder every command writes (training runs, eval results, merges).

    command       pretrain | sft | dpo | lora-ner | eval | merge (and every command added later)
    status        running → completed | failed | interrupted; "completed" is the folder's last write,
                  so a folder that stopped part way never looks complete
    argv, recipe, started, finished
    llmtune_git_commit, packages, device        what produced it
    inputs        what the command read besides data: the models an eval compared, the adapter a merge
                  folded in (absent for training runs, whose recipe.yaml says it all)
    data          the data files with their sha256, and the counts the stage reports
    model         the model trained or written: name, source, path, dtype, parameters,
                  trainable_parameters, peft, loaded_in_4bit, and stage extras (a dpo algorithm, a tagger head)
    distributed   how the processes trained together (training runs)
    results       the command's figures
    phase         the phase the command was in (model, train, save, final_eval, ...) while running, or
                  when it stopped; absent once completed
    weights       "saved" once the trained model is on disk whole (a run can stop after that)
    unfinished    the phases a stopped run did not finish
    error         why it failed or stopped

Built by `Manifest.start` and written by the run lifecycle (run_folder.py) only.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGES = (
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
)


@dataclass
class Manifest:
    command: str
    recipe: str | None
    status: str = "running"
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    started: str = field(default_factory=lambda: _now())
    finished: str | None = None
    llmtune_git_commit: str | None = None
    packages: dict[str, str] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    distributed: str | None = None
    results: dict[str, Any] | None = None
    phase: str | None = None
    weights: str | None = None
    unfinished: list[str] | None = None
    error: str | None = None

    @classmethod
    def start(cls, command: str, recipe: str | None) -> Manifest:
        return cls(
            command=command,
            recipe=recipe,
            llmtune_git_commit=git_commit(Path(__file__).resolve().parent),
            packages=dict(package_versions()),
            device=device_summary(),
        )

    def completed(self, results: dict[str, Any]) -> None:
        self.status, self.finished, self.results = "completed", _now(), results

    def stopped(self, exc: BaseException) -> None:
        interrupted = isinstance(exc, KeyboardInterrupt) or getattr(exc, "interrupted", False)
        self.status = "interrupted" if interrupted else "failed"
        self.error = f"{type(exc).__name__}: {exc}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: unset optional parts are left out rather than written as null."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def model_entry(
    model, *, name: str, source: str, path: str | None, peft: str, **extra: Any
) -> dict[str, Any]:
    """The manifest's `model` part, the same keys for every command; `extra` adds stage facts."""
    from llmtune.models import count_parameters

    trainable, total = count_parameters(model)
    return {
        "name": name,
        "source": source,
        "path": path,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "parameters": total,
        "trainable_parameters": trainable,
        "peft": peft,
        "loaded_in_4bit": bool(getattr(model, "is_loaded_in_4bit", False)),
        **extra,
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@functools.cache  # constant for the life of a process
def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


@functools.cache
def git_commit(path: Path) -> str | None:
    """The commit of the git checkout holding `path` (with '+dirty' for local changes), if any; read once
    per process (two git calls)."""
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
