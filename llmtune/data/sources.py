"""Data files from recipe entries (files, folders, globs), their content hashes, and JSON rows.

Shared by every data shape: a recipe names inputs, this module turns them into an ordered list of
existing files, each hashed so that caches and run manifests know exactly what was read.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.errors import LlmtuneError

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")


def expand_sources(
    entries: list[str], key: str, suffixes: tuple[str, ...] = TEXT_SUFFIXES, describe=None
) -> list[Path]:
    """Files named by `entries` (paths, folders searched recursively, or glob patterns), in a stable order."""
    describe = describe or (lambda p: f"'{p}'")
    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if glob.has_magic(entry):
            matches = sorted(Path(m) for m in glob.glob(entry, recursive=True) if Path(m).is_file())
            if not matches:
                raise LlmtuneError(f"{key}: no file matches the pattern {describe(entry)}.")
            files.extend(matches)
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
            if not matches:
                raise LlmtuneError(f"{key}: folder {describe(entry)} holds no {'/'.join(suffixes)} files.")
            files.extend(matches)
        elif path.is_file():
            files.append(path)
        else:
            raise LlmtuneError(f"{key}: data file {describe(entry)} does not exist.")
    for file in files:
        if file.suffix not in suffixes:
            raise LlmtuneError(
                f"{key}: {file} has an unsupported extension; expected one of {', '.join(suffixes)}."
            )
    return list(dict.fromkeys(files))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_text_file(path: Path) -> str:
    """The file as UTF-8 text, or an error naming the line with the first bad byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LlmtuneError(
            f"{path} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "convert the file to UTF-8 (e.g. iconv -f <encoding> -t utf-8)."
        ) from None


@dataclass
class BadRows:
    """Rows left out of the data, counted by reason (never dropped silently)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def iter_json_rows(path: Path, on_bad_rows: str, bad: BadRows) -> Iterator[tuple[str, dict]]:
    """(location, row) for each JSON object in a .jsonl file, or a .json file holding a list of objects.

    A .json file that is really JSON lines (MedicalGPT ships some) is read as JSON lines. A line that is
    not a JSON object is an error naming file and line, or, with `on_bad_rows: skip`, counted in `bad`.
    """
    text = read_text_file(path)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":
                raise LlmtuneError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg}).") from None
            data = None  # several JSON values: treat as JSON lines below
        if data is not None:
            if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
                data = next(iter(data.values()))  # {"data": [...]} wrappers
            if not isinstance(data, list):
                raise LlmtuneError(f"{path}: expected a JSON list of objects, found a {type(data).__name__}.")
            for index, row in enumerate(data):
                where = f"{path} item {index}"
                if isinstance(row, dict):
                    yield where, row
                else:
                    report_bad_row(where, f"not a JSON object ({type(row).__name__})", on_bad_rows, bad)
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            report_bad_row(where, f"not valid JSON ({exc.msg})", on_bad_rows, bad)
            continue
        if not isinstance(row, dict):
            report_bad_row(where, f"not a JSON object ({type(row).__name__})", on_bad_rows, bad)
            continue
        yield where, row


def report_bad_row(where: str, reason: str, on_bad_rows: str, bad: BadRows) -> None:
    """Stop on a bad row (naming file and line), or count it when the recipe asks for skips."""
    if on_bad_rows == "skip":
        bad.add(reason.split(" (")[0], where)
        return
    raise LlmtuneError(
        f"{where}: {reason}.", hint="Fix the row, or set data.on_bad_rows: skip to skip and count such rows."
    )
