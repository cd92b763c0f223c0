"""The one run lifecycle: every command that writes a folder goes through it.

    folder = RunFolder.check(path, command="sft", key="train.output_dir", overwrite=..., resume=...,
                             inputs=[...])
    ... load and check the inputs (tokenizer, data): a bad input fails here and changes nothing ...
    with folder.open(recipe, data_report=report.to_dict(), data=report_summary) as run:
        run.phase("model"); ... run.phase("train"); ...
        run.save_weights(lambda staging: trainer.save_model(staging))   # published only when whole
        run.phase("final_eval"); ...
        return run.finish(results)

Two phases because the output check must come before anything slow (a conflict is reported at once) and
the folder must not be touched until the inputs have loaded (a broken recipe never costs the user their
previous run). What it guarantees, in one place:

- **one writer** (`check`): an exclusive lock on the folder (folder_lock.py) from the check to the end of
  the run; a second command on the same folder is refused and told the holder's PID.
- **protection** (`check`): an output folder that holds an input of the run (its data, its recipe, the
  adapter being merged), that sits inside an input folder, or that is the current folder, is refused
  even with --overwrite; so is a non-empty folder llmtune did not make (no manifest). A non-empty run
  folder is refused unless --overwrite or --resume. --resume needs a checkpoint that reads back whole and
  a recipe that builds the same model (checkpoint_check.py). A folder left by a run that failed before
  writing anything to keep is reused.
- **opening** (`open`): an old folder being replaced is renamed aside (`.<name>.replaced-<pid>`), never
  deleted; a resumed folder's own files are kept (hard links) in `.<name>.resume-backup-<pid>`; run.log
  starts; recipe.yaml, data_report.json and manifest.json (status "running") are written.
- **weights** (`Run.save_weights`): the model is saved into a staging folder inside the run and moved into
  place only once it is whole, so a full disk or a signal never leaves a truncated file that looks like a
  model; signals wait until the save is done.
- **the end** (`Run.finish`): manifest "completed" is the last write; the set-aside folder goes.
- **failure** (any exception or signal inside `open`): the manifest records the phase it stopped in and
  what did not finish, with the traceback in run.log. A run replacing an old one (--overwrite) is kept
  only if its trained weights were saved whole; otherwise the old folder comes back byte for byte, and
  the new run's checkpoints, if it wrote any, are kept beside it in `<name>.incomplete-<time>`. A resume
  that failed before writing a new checkpoint puts back every file as it was and removes what it created.

A folder is written in place (training runs: checkpoints must stay where --resume finds them) or, with
`staged=True` (eval results, merged models), built in `.<name>.partial-<pid>` beside it and renamed into
place only by `finish`, so that --out never holds half a result; a failure removes only the staging folder.

In a multi-process run only rank 0 locks, checks, writes and renames; the other ranks write nothing of
their own into it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.checkpoint_check import checkpoint_step
from llmtune.errors import LlmtuneError
from llmtune.folder_lock import FolderLock, is_locked
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

# Keys whose paths a training run writes, or resumes from in its own folder: not inputs.
_OUTPUT_KEYS = {"output_dir", "logging_dir", "resume_from_checkpoint"}
_GLOB = set("*?[")


def expand(path: str | os.PathLike) -> Path:
    """`~` expanded and made absolute, the one way every command names a folder (the Trainer expands
    `~` itself: without this a run was split across `~/x` and a literal `./~/x`)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


@dataclass
class RunFolder:
    """An output folder that passed its check and is locked by this process; its contents are unchanged."""

    path: Path
    command: str
    key: str  # how the user named the folder, for messages: train.output_dir, eval.output_dir, --out
    overwrite: bool = False
    resume: bool = False
    staged: bool = False
    checkpoint: Path | None = None  # the checkpoint a training run resumes from (checked whole)
    recipe: Any = field(default=None, repr=False)
    _aside: Path | None = field(default=None, repr=False)
    _lock: FolderLock | None = field(default=None, repr=False)
    _resume_state: dict | None = field(default=None, repr=False)

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
        inputs: Iterable[str | os.PathLike] = (),
        recipe=None,
        checkpoint: str | os.PathLike | None = None,
        unique: bool = False,
    ) -> RunFolder:
        """Lock the folder and refuse it if it is unsafe or holds something, unless told how to treat it.
        Changes nothing on disk (but the lock file beside it). `unique`: `path` is a default name; take
        the first free one of path, path-2, path-3, ..."""
        folder = cls(expand(path), command, key, overwrite, resume, staged, recipe=recipe)
        if checkpoint is not None:
            folder.checkpoint = expand(checkpoint)
        if not is_main_process():
            return folder
        if unique:
            folder.path, folder._lock = _claim_free_name(folder.path, command, key)
        folder._refuse_unsafe([expand(i) for i in inputs if i])
        if folder._lock is None:
            folder._lock = FolderLock.acquire(folder.path, command=command, key=key)
        try:
            folder._refuse_conflicts()
        except BaseException:
            folder.release()
            raise
        from llmtune import faults

        faults.at_phase("data", folder.path)  # the stage reads its data next, before opening the folder
        return folder

    @classmethod
    def for_training(cls, recipe, command: str, *, overwrite: bool, resume: bool) -> RunFolder:
        """`check` for a training run: train.output_dir against the recipe's inputs; --resume also when
        the recipe asks for it, from the checkpoint it names if it names one."""
        wanted = recipe.train.trainer_kwargs().get("resume_from_checkpoint")
        checkpoint = None
        if isinstance(wanted, str) and wanted.strip().lower() not in ("true", "latest", "false", ""):
            checkpoint = wanted
            # A named checkpoint inside the run folder continues that run in place; one elsewhere starts
            # this run's folder from it.
            resume = expand(wanted).parent == expand(recipe.train.output_dir)
        elif wanted is True or (isinstance(wanted, str) and wanted.strip().lower() in ("true", "latest")):
            resume = True
        return cls.check(
            recipe.train.output_dir,
            command=command,
            key="train.output_dir",
            overwrite=overwrite,
            resume=resume,
            inputs=recipe_inputs(recipe),
            recipe=recipe,
            checkpoint=checkpoint,
        )

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _refuse_unsafe(self, inputs: list[Path]) -> None:
        """Folders that --overwrite (or a staged publish) must never set aside, whatever the flags say."""
        out = Path(os.path.realpath(self.path))  # realpath, unlike resolve(), survives a symlink loop
        cwd = Path(os.path.realpath(Path.cwd()))
        if out == cwd or cwd.is_relative_to(out):
            raise LlmtuneError(
                f"{self.key} {self.path} is the current folder{'' if out == cwd else ' or holds it'}; a run "
                "folder is replaced as a whole, which would take the current folder with it.",
                hint=f"Name a subfolder for the output, e.g. {self.key}=runs/new.",
            )
        for given in inputs:
            if given.is_dir() and Path(os.path.realpath(given)) != out and is_locked(given):
                from llmtune.folder_lock import describe_holder

                raise LlmtuneError(
                    f"{given}, an input of this run, is still being written by {describe_holder(given)}; "
                    "reading it now would take a half-written model or run.",
                    hint="Wait for that command to finish, then run this one.",
                )
        if self.resume:
            return  # a resumed run adds to its folder and sets nothing aside (its recipe may live in it)
        for given in inputs:
            if not given.exists():
                continue  # a hub id, not a local path
            real = Path(os.path.realpath(given))
            if real == out or real.is_relative_to(out):
                raise LlmtuneError(
                    f"{self.key} {self.path} holds an input of this run ({given}); llmtune never writes an "
                    "output folder over its own inputs, even with --overwrite.",
                    hint=f"Choose an output folder outside {given if real == out else 'it'}.",
                )
            if real.is_dir() and out.is_relative_to(real):
                raise LlmtuneError(
                    f"{self.key} {self.path} is inside {given}, an input of this run; llmtune never writes "
                    "into the folders it reads.",
                    hint="Choose an output folder outside it.",
                )

    def _refuse_conflicts(self) -> None:
        path = self.path
        if path.is_symlink() and not path.exists():
            raise LlmtuneError(
                f"{self.key}: {path} is a symbolic link to {os.readlink(path)}, which does not resolve "
                "(it points nowhere, or in a loop); remove the link or name another folder."
            )
        if path.exists() and not path.is_dir():
            raise LlmtuneError(f"{self.key}: {path} exists and is {_kind(path)}, not a folder.")
        existing = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        shown = ", ".join(existing[:6]) + (" ..." if len(existing) > 6 else "")
        ours = not existing or _made_by_llmtune(path)
        if self.resume and self.overwrite:
            raise LlmtuneError("--resume and --overwrite contradict each other; pick one.")
        if existing and not ours:
            raise LlmtuneError(
                f"{self.key} {path} is not empty ({shown}) and is not a folder llmtune made (it has no "
                f"{MANIFEST}); llmtune never replaces or writes into such a folder, even with "
                "--overwrite or --resume, because the files in it may be yours.",
                hint="Choose a new or empty folder.",
            )
        made_by = _manifest_command(path) if existing else None
        if self.overwrite and made_by and made_by != self.command:
            raise LlmtuneError(
                f"{self.key} {path} holds the result of `llmtune {made_by}`; --overwrite replaces only a "
                f"folder written by `llmtune {self.command}`, so that a slip of the path never costs another "
                "command's run.",
                hint="Choose a new folder (or remove that one yourself if it is no longer wanted).",
            )
        if self.checkpoint is not None:
            self._check_named_checkpoint()
            if self.resume:
                self._check_resume_shape()
                return
        elif self.resume:
            checkpoint = latest_checkpoint(path)
            if checkpoint is None:
                raise LlmtuneError(
                    f"--resume: {path} holds no complete checkpoint to resume from"
                    + (f" (it has: {shown})" if existing else "")
                    + ". Run without --resume to start a new run."
                )
            from llmtune.checkpoint_check import check_resumable

            check_resumable(checkpoint, path)
            self.checkpoint = checkpoint
            self._check_resume_shape()
            return
        if existing and not self.overwrite and not _failed_before_keeping_anything(path):
            raise LlmtuneError(
                f"{self.key} {path} is not empty ({shown}); llmtune does not overwrite a folder silently.",
                hint=self._conflict_hint(),
            )

    def _check_named_checkpoint(self) -> None:
        from llmtune.checkpoint_check import check_resumable

        named = self.checkpoint
        if not named.is_dir():
            what = "does not exist" if not named.exists() else f"is {_kind(named)}"
            raise LlmtuneError(
                f"train.resume_from_checkpoint: {named} {what}; name a checkpoint-N folder of a run."
            )
        check_resumable(named, named.parent)

    def _check_resume_shape(self) -> None:
        from llmtune.checkpoint_check import check_same_shape

        check_same_shape(self.path, self.recipe)

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
        phases: Iterable[str] = (),
    ) -> Iterator[Run]:
        """Make the folder (or its staging folder), start run.log and the manifest; on any failure inside,
        leave the previous state as the module docstring says. `phases`: the stage's phases in order,
        for the manifest's record of what did not finish."""
        try:
            workdir = self._prepare()
        except BaseException:
            self.release()
            raise
        handler = start_run_log(workdir)
        run = Run(
            folder=self,
            dir=workdir,
            manifest=Manifest.start(self.command, recipe.source if recipe is not None else None),
            phases=list(phases),
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
            self.release()

    def _prepare(self) -> Path:
        if not is_main_process():
            self.path.mkdir(parents=True, exist_ok=True)
            return self.path
        if self.staged:
            staging = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            return staging
        if self.resume:
            self._resume_state = _snapshot_for_resume(self.path)
            return self.path
        if self.path.is_dir() and any(self.path.iterdir()):
            self._aside = self.path.with_name(f".{self.path.name}.replaced-{os.getpid()}")
            shutil.rmtree(self._aside, ignore_errors=True)
            self.path.rename(self._aside)
            if self.overwrite:
                log.warning(
                    "--overwrite: replacing %s (its old contents come back unless this run saves its "
                    "trained model whole)",
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
    phases: list[str] = field(default_factory=list)
    finished: bool = False
    weights_saved: bool = False
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

    def phase(self, name: str) -> None:
        """The stage enters phase `name` (model, train, save, final_eval, samples, ...): recorded in the
        manifest, so that a run that stops says where, and what did not finish."""
        from llmtune import faults

        self.manifest.phase = name
        if name not in self.phases:
            self.phases.append(name)
        self.write_manifest()
        faults.at_phase(name, self.path)

    def save_weights(
        self, save: Callable[[Path], None], *, check: Callable[[Path], None] | None = None
    ) -> None:
        """Save the trained model with `save(staging_dir)` (every rank calls it: ZeRO-3 gathers), check it,
        and move its files into the run folder only once all are written. Signals received meanwhile
        wait for the save to finish, so a Ctrl-C after training never costs the trained weights."""
        from llmtune.interrupt import signals_deferred

        staging = self.dir / ".saving"
        with signals_deferred("saving the trained model"):
            self.phase("save")
            if is_main_process():
                shutil.rmtree(staging, ignore_errors=True)
            save(staging)
            if is_main_process():
                if check is not None:
                    check(staging)
                for item in sorted(staging.iterdir()):
                    target = self.dir / item.name
                    if target.is_dir() and item.is_dir():
                        shutil.rmtree(target)
                    os.replace(item, target)
                staging.rmdir()
            self.weights_saved = True
            self.manifest.weights = "saved"
            later = self.phases[self.phases.index("save") + 1 :]
            self.manifest.phase = later[0] if later else None  # where a deferred signal stops it
            self.write_manifest()

    def finish(self, results: dict[str, Any], *, summary: bool = True, quiet: tuple[str, ...] = ()) -> dict:
        """Mark the manifest completed (the folder's last write), then publish a staged folder or drop the
        folder an --overwrite set aside. `summary` logs the scalar results (keys containing a `quiet`
        part are left out of the line, not out of the manifest)."""
        self.manifest.phase = None
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
            _drop_resume_backup(self.folder)
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
        shutil.rmtree(self.dir / ".saving", ignore_errors=True)  # a save cut short is never kept
        if folder.staged:
            self._stop_log()
            shutil.rmtree(self.dir, ignore_errors=True)  # the user's folder was never touched
            return
        if folder._resume_state is not None:
            if self.weights_saved:  # the resumed training finished and its model is saved: keep it
                _drop_resume_backup(folder)
            elif _undo_resume(folder):
                return  # the resumed folder is exactly as it was; the error is on the console
        self._record_failure(exc)
        if folder._aside is not None:
            aside, folder._aside = folder._aside, None
            if self.weights_saved:
                shutil.rmtree(aside, ignore_errors=True)  # the new run's trained model replaces the old one
            else:
                self._stop_log()
                _restore_aside(folder.path, aside, folder.recipe, folder.command)

    def _record_failure(self, exc: BaseException) -> None:
        """The manifest says failed or interrupted, in which phase, and what did not finish; the
        traceback goes to run.log."""
        stopped_in = self.manifest.phase
        if stopped_in in self.phases:
            self.manifest.unfinished = self.phases[self.phases.index(stopped_in) :]
        self.manifest.stopped(exc)
        self.write_manifest()
        if self.manifest.status == "interrupted":
            file_log.warning("run interrupted in phase %s: %s", stopped_in, exc)
        else:
            file_log.error("run %s", self.manifest.status, exc_info=(type(exc), exc, exc.__traceback__))

    def _stop_log(self) -> None:
        if self._log_handler is not None:
            stop_run_log(self._log_handler)
            self._log_handler = None


# ------------------------------------------------------------------------------------------ helpers
def recipe_inputs(recipe) -> list[str]:
    """Every local path a recipe reads: its own file, the schema's input-path keys (globs by the folder
    they search), local model/tokenizer folders, and path-valued trainer keys (a DeepSpeed config)."""
    from pydantic import BaseModel

    from llmtune.recipe.base import is_input_path

    found: list[str] = []
    if getattr(recipe, "source", None) and Path(recipe.source).exists():
        found.append(recipe.source)

    def add(value: Any) -> None:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item:
                cut = min((i for i, ch in enumerate(item) if ch in _GLOB), default=None)
                path = os.path.dirname(item[:cut]) if cut is not None else item
                if path and os.path.exists(os.path.expanduser(path)):
                    found.append(path)

    for name in type(recipe).model_fields:
        section = getattr(recipe, name, None)
        if not isinstance(section, BaseModel):
            continue
        fields = type(section).model_fields
        for key, value in section:
            if key in _OUTPUT_KEYS:
                continue
            if (key in fields and is_input_path(fields[key])) or key in (
                "name_or_path",
                "tokenizer",
                "gguf_file",
                "deepspeed",
                "compare",
            ):
                add(value)
        extra = getattr(section, "model_extra", None) or {}
        for key in ("deepspeed", "fsdp_config"):
            add(extra.get(key))
    return found


def _kind(path: Path) -> str:
    """What a path that is not a folder is, for messages (never 'does not exist' for a FIFO)."""
    from llmtune.recipe.yaml12 import file_kind

    try:
        return file_kind(path.stat().st_mode)
    except OSError:
        return "unreadable"


def _old_manifest(path: Path) -> dict | None:
    """The manifest.json of an existing folder, if it is one llmtune wrote (a mapping with a status)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8")[:10_000_000])
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "status" in manifest else None


def _made_by_llmtune(path: Path) -> bool:
    return _old_manifest(path) is not None


def _manifest_command(path: Path) -> str | None:
    command = (_old_manifest(path) or {}).get("command")
    return command if isinstance(command, str) else None


def _claim_free_name(path: Path, command: str, key: str) -> tuple[Path, FolderLock]:
    """The first of path, path-2, path-3... that does not exist and no other process holds, locked."""
    from llmtune.folder_lock import FolderBusy

    for n in range(1, 1000):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        if candidate.exists() or is_locked(candidate):
            continue
        try:
            lock = FolderLock.acquire(candidate, command=command, key=key)
        except FolderBusy:
            continue
        if candidate.exists():  # made between the test and the lock
            lock.release()
            continue
        return candidate, lock
    raise LlmtuneError(f"{key}: no free folder name next to {path}; name one.")


def _produced_checkpoint(path: Path) -> bool:
    return latest_checkpoint(path) is not None


def _failed_before_keeping_anything(path: Path) -> bool:
    """A folder left by a run that failed before writing any checkpoint or weights holds nothing to
    protect; it is reused so that fixing a recipe and rerunning needs no --overwrite."""
    manifest = _old_manifest(path)
    # "running" too: the check holds the folder's lock, so a run still marked running was killed (SIGKILL,
    # power loss) and its process is gone.
    if manifest is None or manifest.get("status") not in ("failed", "interrupted", "running"):
        return False
    if manifest.get("weights") == "saved":
        return False
    return not any(p.name.startswith(CHECKPOINT_PREFIX) or p.suffix == ".safetensors" for p in path.iterdir())


def _restore_aside(path: Path, aside: Path, recipe=None, command: str = "") -> None:
    """After a failure that did not save a whole model: put the old folder back. A new run that wrote a
    checkpoint keeps it beside, in `<name>.incomplete-<time>`, where --resume can continue it."""
    if not aside.exists():
        return
    kept = None
    if _produced_checkpoint(path):
        kept = path.with_name(f"{path.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(kept)
    else:
        shutil.rmtree(path, ignore_errors=True)
    aside.rename(path)
    log.warning("the previous contents of %s are restored (this run did not save its trained model)", path)
    if kept is not None:
        if recipe is not None:
            from llmtune.interrupt import resume_command

            how = resume_command(recipe, command, output_dir=str(kept))
        else:
            how = f"--resume --set train.output_dir={kept}"
        log.warning("this run's checkpoints are kept in %s; continue them with: %s", kept, how)


def _snapshot_for_resume(path: Path) -> dict:
    """What a resume must be able to put back: every file's identity, the top-level files themselves
    (hard links: llmtune replaces files atomically, so the old inode stays as it was; run.log, appended
    in place, is copied), and the newest checkpoint's step."""
    backup = path.with_name(f".{path.name}.resume-backup-{os.getpid()}")
    shutil.rmtree(backup, ignore_errors=True)
    backup.mkdir()
    for item in path.iterdir():
        if item.is_file() and not item.is_symlink():
            if item.name == "run.log":
                shutil.copy2(item, backup / item.name)
            else:
                try:
                    os.link(item, backup / item.name)
                except OSError:
                    shutil.copy2(item, backup / item.name)
    before = {str(p.relative_to(path)) for p in path.rglob("*")}
    checkpoint = latest_checkpoint(path)
    return {"backup": backup, "before": before, "checkpoint": checkpoint.name if checkpoint else None}


def _undo_resume(folder: RunFolder) -> bool:
    """After a failed resume: if it wrote no new checkpoint, put the folder back exactly (remove what it
    created, restore the top-level files) and return True; otherwise keep its progress (False)."""
    state, folder._resume_state = folder._resume_state, None
    newest = latest_checkpoint(folder.path)
    progressed = (
        newest is not None
        and newest.name != state["checkpoint"]
        and (
            state["checkpoint"] is None
            or checkpoint_step(newest) > checkpoint_step(Path(state["checkpoint"]))
        )
    )
    if progressed:
        shutil.rmtree(state["backup"], ignore_errors=True)
        return False
    path = folder.path
    for item in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
        if str(item.relative_to(path)) not in state["before"]:
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
    for saved in state["backup"].iterdir():
        os.replace(saved, path / saved.name)
    shutil.rmtree(state["backup"], ignore_errors=True)
    log.warning("%s is as it was before this resume (it failed before writing a new checkpoint)", path)
    return True


def _drop_resume_backup(folder: RunFolder) -> None:
    if folder._resume_state is not None:
        shutil.rmtree(folder._resume_state["backup"], ignore_errors=True)
        folder._resume_state = None


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
