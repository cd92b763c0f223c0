"""The one run lifecycle: every command that writes a folder goes through it.

    folder = RunFolder.check(path, command="sft", key="train.output_dir", overwrite=..., resume=...)
    ... load and check the inputs (tokenizer, data): a bad input fails here and changes nothing ...
    with folder.open(recipe, data_report=report.to_dict(), data=report_summary) as run:
        ... model, trainer, results ...
        return run.finish(results)

Two phases because the output check must come before anything slow (a conflict is reported at once) and
the folder must not be touched until the inputs have loaded (a broken recipe never costs the user their
previous run). Then, in one place:

- **protection** (`check`): a non-empty folder is refused unless --overwrite or --resume; --resume needs a
  complete checkpoint; a folder left by a run that failed before writing anything to keep is reused.
- **opening** (`open`): an old folder being replaced is renamed aside (`.<name>.replaced-<pid>`), not
  deleted; run.log starts; recipe.yaml, data_report.json and manifest.json (status "running") are written.
- **the end** (`Run.finish`): manifest "completed" is the last write; the set-aside folder goes.
- **failure** (any exception or signal inside `open`): the set-aside folder comes back unchanged if this
  run wrote nothing worth keeping (a checkpoint or weights); otherwise the manifest says failed or
  interrupted and the traceback goes to run.log, not to the console.

A folder is written in place (training runs: checkpoints must stay where --resume finds them) or, with
`staged=True` (eval results, merged models), built in `.<name>.partial-<pid>` beside it and renamed into
place only by `finish`, so that --out never holds half a result; a failure removes only the staging folder.

One writer per folder: in a multi-process run only rank 0 checks, writes and renames; the other ranks
write nothing of their own into it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.manifest import Manifest
from llmtune.outputs import (
    CHECKPOINT_PREFIX,
    MANIFEST,
    file_log,
    is_main_process,
    latest_checkpoint,
    start_run_log,
    stop_run_log,
    write_json,
    write_text,
)

log = logging.getLogger("llmtune")


@dataclass
class RunFolder:
    """An output folder that passed its check; nothing on disk has changed yet."""

    path: Path
    command: str
    key: str  # how the user named the folder, for messages: train.output_dir, eval.output_dir, --out
    overwrite: bool = False
    resume: bool = False
    staged: bool = False
    _aside: Path | None = field(default=None, repr=False)

    # ------------------------------------------------------------------------------------ phase 1
    @classmethod
    def check(
        cls,
        path: str | os.PathLike,
        *,
        command: str,
        key: str,
        overwrite: bool = False,
        resume: bool = False,
        staged: bool = False,
    ) -> RunFolder:
        """Refuse a folder that holds something, unless told how to treat it. Changes nothing on disk."""
        folder = cls(Path(path), command, key, overwrite, resume, staged)
        if is_main_process():
            folder._refuse_conflicts()
        return folder

    @classmethod
    def for_training(cls, recipe, command: str, *, overwrite: bool, resume: bool) -> RunFolder:
        """`check` for a training run: train.output_dir, and --resume also when the recipe asks for it."""
        wanted = recipe.train.trainer_kwargs().get("resume_from_checkpoint")
        resume = resume or wanted not in (None, False)
        return cls.check(
            recipe.train.output_dir,
            command=command,
            key="train.output_dir",
            overwrite=overwrite,
            resume=resume,
        )

    def _refuse_conflicts(self) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise LlmtuneError(f"{self.key}: {path} exists and is a file, not a folder.")
        existing = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        if self.resume:
            if self.overwrite:
                raise LlmtuneError("--resume and --overwrite contradict each other; pick one.")
            if latest_checkpoint(path) is None:
                raise LlmtuneError(
                    f"--resume: {path} holds no complete checkpoint to resume from"
                    + (f" (it has: {', '.join(existing[:6])})" if existing else "")
                    + ". Run without --resume to start a new run."
                )
            return
        if existing and not self.overwrite and not _failed_before_keeping_anything(path):
            shown = ", ".join(existing[:6]) + (" ..." if len(existing) > 6 else "")
            raise LlmtuneError(
                f"{self.key} {path} is not empty ({shown}); llmtune does not overwrite a folder silently.",
                hint=self._conflict_hint(),
            )

    def _conflict_hint(self) -> str:
        if self.key == "train.output_dir":
            return (
                "Pass --resume to continue it from its last checkpoint, --overwrite to replace it, "
                "or set train.output_dir to a new folder (e.g. --set train.output_dir=runs/new)."
            )
        new = "(--out DIR)" if self.key != "--out" else ""
        when = " (it is replaced only once the new result is complete)" if self.staged else ""
        return f"Pass --overwrite to replace it{when}, or give a new folder {new}".rstrip() + "."

    # ------------------------------------------------------------------------------------ phase 2
    @contextmanager
    def open(
        self,
        recipe=None,
        *,
        data_report: dict | None = None,
        data: dict | None = None,
        inputs: dict | None = None,
        log_lines: Iterable[str] = (),
    ) -> Iterator[Run]:
        """Make the folder (or its staging folder), start run.log and the manifest; on any failure inside,
        leave the previous state as it was (see the module docstring)."""
        workdir = self._prepare()
        handler = start_run_log(workdir)
        run = Run(
            folder=self,
            dir=workdir,
            manifest=Manifest.start(self.command, recipe.source if recipe is not None else None),
            _log_handler=handler,
        )
        run.manifest.inputs, run.manifest.data = inputs, data
        try:
            if recipe is not None:
                write_text(workdir / "recipe.yaml", recipe.to_yaml())
            if data_report is not None:
                write_json(workdir / "data_report.json", data_report)
            notes = [f"note: {n}" for n in getattr(recipe, "notes", ())]
            for line in [*notes, *log_lines]:
                file_log.info(line)
            run.write_manifest()
            yield run
            if not run.finished:
                raise RuntimeError(f"llmtune {self.command} returned without finishing its run folder")
        except BaseException as exc:
            run._failed(exc)
            raise
        finally:
            run._stop_log()

    def _prepare(self) -> Path:
        if not is_main_process():
            self.path.mkdir(parents=True, exist_ok=True)
            return self.path
        if self.staged:
            staging = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            return staging
        if self.path.is_dir() and not self.resume and any(self.path.iterdir()):
            self._aside = self.path.with_name(f".{self.path.name}.replaced-{os.getpid()}")
            shutil.rmtree(self._aside, ignore_errors=True)
            self.path.rename(self._aside)
            if self.overwrite:
                log.warning(
                    "--overwrite: replacing %s (its old contents come back if this run fails early)",
                    self.path,
                )
            else:
                log.warning("reusing %s: its previous run failed before writing a checkpoint", self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path


@dataclass
class Run:
    """An open run folder. `dir` is where files go now (the staging folder while a staged run is open)."""

    folder: RunFolder
    dir: Path
    manifest: Manifest
    finished: bool = False
    _log_handler: logging.Handler | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        """Where the folder is once finished (the user's output folder)."""
        return self.folder.path

    @property
    def command(self) -> str:
        return self.folder.command

    def write_manifest(self) -> None:
        write_json(self.dir / MANIFEST, self.manifest.to_dict())

    def set_model(self, entry: dict[str, Any]) -> None:
        """The manifest's `model` part (manifest.model_entry builds it)."""
        self.manifest.model = entry
        self.write_manifest()

    def write_json(self, name: str, data: Any) -> None:
        write_json(self.dir / name, data)

    def write_text(self, name: str, text: str) -> None:
        write_text(self.dir / name, text)

    def finish(self, results: dict[str, Any], *, summary: bool = True, quiet: tuple[str, ...] = ()) -> dict:
        """Mark the manifest completed (the folder's last write), then publish a staged folder or drop the
        folder an --overwrite set aside. `summary` logs the scalar results (keys containing a `quiet`
        part are left out of the line, not out of the manifest)."""
        self.manifest.completed(results)
        self.write_manifest()
        self.finished = True
        if is_main_process():
            if self.folder.staged:
                self._stop_log()
                _publish(self.dir, self.path)
            elif self.folder._aside is not None:
                shutil.rmtree(self.folder._aside, ignore_errors=True)
                self.folder._aside = None
        if summary:
            shown = {k: v for k, v in results.items() if not any(q in k for q in quiet)}
            log.info(
                "done: %s",
                ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()),
            )
        log.info("%s: %s", "run folder" if self.folder.key == "train.output_dir" else "written", self.path)
        return results

    # ------------------------------------------------------------------------------------ failure
    def _failed(self, exc: BaseException) -> None:
        if not is_main_process():
            return
        folder = self.folder
        if folder.staged:
            self._stop_log()
            shutil.rmtree(self.dir, ignore_errors=True)  # the user's folder was never touched
            return
        if folder._aside is not None and _restore_aside(folder.path, folder._aside):
            folder._aside = None
            return  # the folder is as it was before this run; the error is on the console
        folder._aside = None  # the new run wrote something to keep: the old contents go
        self.manifest.stopped(exc)
        self.write_manifest()
        if self.manifest.status == "interrupted":
            file_log.warning("run interrupted: %s", exc)
        else:
            file_log.error("run %s", self.manifest.status, exc_info=(type(exc), exc, exc.__traceback__))

    def _stop_log(self) -> None:
        if self._log_handler is not None:
            stop_run_log(self._log_handler)
            self._log_handler = None


def _produced_something(path: Path) -> bool:
    """A checkpoint or weights: what a failed run leaves that is worth more than the folder it replaced."""
    return path.is_dir() and any(
        p.name.startswith(CHECKPOINT_PREFIX) or p.suffix == ".safetensors" for p in path.iterdir()
    )


def _failed_before_keeping_anything(path: Path) -> bool:
    """A folder left by a run that failed before writing any checkpoint or weights holds nothing to
    protect; it is reused so that fixing a recipe and rerunning needs no --overwrite."""
    import json

    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("status") in ("failed", "interrupted") and not _produced_something(path)


def _restore_aside(path: Path, aside: Path) -> bool:
    """After a failure: put the set-aside folder back unless the new run wrote something worth keeping
    (then the old contents go, as --overwrite asked)."""
    if not aside.exists():
        return False
    if _produced_something(path):
        shutil.rmtree(aside, ignore_errors=True)
        return False
    shutil.rmtree(path, ignore_errors=True)
    aside.rename(path)
    log.warning(
        "the previous contents of %s are restored (this run failed before writing anything to keep)", path
    )
    return True


def _publish(staging: Path, target: Path) -> None:
    """Rename the finished staging folder to `target`; an old `target` is removed only after the rename."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)  # the user's folder goes back before the failure is reported
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
