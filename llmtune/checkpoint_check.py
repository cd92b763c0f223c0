"""Is a checkpoint safe to resume from? Checked before a resumed run touches its folder.

A resume used to find out inside `trainer.train()` that a checkpoint was truncated, that `optimizer.pt`
was damaged or that `--set peft.r` had changed the adapter's shape, after the run folder had already been
rewritten. Here every file of the checkpoint is read back cheaply (safetensors headers against the file
size, JSON parsed, torch's zip archives CRC-checked), and the recipe's model and PEFT sections are
compared with the ones the run trained with, so a resume that cannot work stops before anything changes.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import yaml

from llmtune.errors import LlmtuneError
from llmtune.outputs import CHECKPOINT_PREFIX

# What must stay the same for a checkpoint's weights and optimizer state to fit the model being built.
SHAPE_SECTIONS = ("model", "peft")


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """`checkpoint-N` folders with trainer_state.json (the Trainer writes it last), oldest first."""
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        step = child.name[len(CHECKPOINT_PREFIX) :]
        if child.is_dir() and child.name.startswith(CHECKPOINT_PREFIX) and step.isdigit():
            if (child / "trainer_state.json").is_file():
                found.append((int(step), child))
    return [path for _, path in sorted(found)]


def damage(checkpoint: Path) -> str | None:
    """'<file>: <what is wrong>' for the first damaged file of `checkpoint`, or None if it reads back."""
    if not (checkpoint / "trainer_state.json").is_file():
        return "trainer_state.json: missing (the checkpoint was not finished)"
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        problem = _file_damage(path)
        if problem:
            return f"{path.relative_to(checkpoint)}: {problem}"
    return None


def _file_damage(path: Path) -> str | None:
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            return _safetensors_damage(path)
        elif path.suffix in (".pt", ".pth", ".bin") and zipfile.is_zipfile(path):
            # torch.save writes a zip archive; testzip reads every member against its CRC.
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad:
                return f"member {bad} fails its checksum"
        elif path.suffix in (".pt", ".pth", ".bin") and path.stat().st_size and _looks_truncated_zip(path):
            return "truncated (not a complete torch archive)"
    except (OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        return f"unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def _looks_truncated_zip(path: Path) -> bool:
    """A file that starts like a zip archive (torch's format) but has no end record was cut short."""
    with path.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _safetensors_damage(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "truncated (no header)"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return "truncated (header longer than the file)"
        header = json.loads(handle.read(length))
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"truncated ({size} bytes, the header describes {expected})"
    return None


def check_resumable(checkpoint: Path, run_dir: Path | None) -> None:
    """Refuse a damaged checkpoint, naming the bad file and offering the newest older one that reads back."""
    problem = damage(checkpoint)
    if problem is None:
        return
    older = [
        c
        for c in complete_checkpoints(run_dir or checkpoint.parent)
        if checkpoint_step(c) < checkpoint_step(checkpoint) and damage(c) is None
    ]
    hint = (
        f"The previous complete checkpoint is {older[-1]}: resume from it with "
        f"--set train.resume_from_checkpoint={older[-1]} (and delete {checkpoint.name} if it is beyond repair)."
        if older
        else "No older complete checkpoint exists in that folder; start the run again (--overwrite)."
    )
    raise LlmtuneError(f"cannot resume from {checkpoint}: {problem}. Nothing was changed.", hint=hint)


def checkpoint_step(checkpoint: Path) -> int:
    tail = checkpoint.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def check_same_shape(run_dir: Path, recipe) -> None:
    """Refuse a resume whose recipe builds a different model or adapter than the run's own recipe.yaml
    (a changed `--set peft.r` cannot load the checkpoint's weights or optimizer state)."""
    saved = run_dir / "recipe.yaml"
    if recipe is None or not saved.is_file():
        return
    try:
        before = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        now = yaml.safe_load(recipe.to_yaml()) or {}
    except (OSError, yaml.YAMLError):
        return  # an unreadable recipe.yaml is not a reason to refuse; the checkpoint check still ran
    changed = []
    for section in SHAPE_SECTIONS:
        old, new = before.get(section) or {}, now.get(section) or {}
        if not isinstance(old, dict) or not isinstance(new, dict):
            continue
        if old.get("method", new.get("method")) != new.get("method", old.get("method")):
            changed.append(
                f"{section}.method: {_short(old.get('method'))} in the run, {_short(new.get('method'))} now"
            )
            continue
        # Keys present on both sides only: an older llmtune wrote every key of the section (defaults
        # included), a newer one only those the method reads; a key one side leaves out is a default.
        for key in sorted(set(old) & set(new)):
            if old.get(key) != new.get(key):
                changed.append(
                    f"{section}.{key}: {_short(old.get(key))} in the run, {_short(new.get(key))} now"
                )
    if changed:
        raise LlmtuneError(
            f"cannot resume {run_dir}: the recipe builds a different model than the one its checkpoints "
            f"hold ({'; '.join(changed[:6])}). Nothing was changed.",
            hint="Resume with the run's own settings (its recipe.yaml), or start a new run in another "
            "folder with the new ones.",
        )


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
