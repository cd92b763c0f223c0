"""Data files from recipe entries (files, folders, globs), their content hashes, and JSON rows.

Shared by every data shape: a recipe names inputs, this module turns them into an ordered list of
existing regular files, each hashed so that caches and run manifests know exactly what was read.

Hostile file systems are expected: every path is stat'ed before it is opened (a FIFO opened for reading
would block forever, /dev/zero never ends), files are opened non-blocking and checked again on the open
descriptor, a file too large to read whole is refused before a byte is read, folder walks and `**`
globs follow links but enter each real folder once (a link back to a parent is reported, not looped
through), and a file reached twice (a link, a repeated entry) is read once.
"""

from __future__ import annotations

import codecs
import errno
import fnmatch
import glob
import hashlib
import json
import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.errors import LlmtuneError
from llmtune.recipe.yaml12 import file_kind

log = logging.getLogger("llmtune")

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")
BINARY_SNIFF_BYTES = 8000  # git's test for a binary file: a NUL byte in its first 8000 bytes


# ------------------------------------------------------------------------------------------ helpers
def split_lines(text: str) -> list[str]:
    """The lines of `text`, split on "\\n" only ("\\r\\n" too), as editors and `wc -l` count them.

    Not str.splitlines(): it also splits on U+2028, U+2029, U+0085, \\x0b, \\x0c and \\x1c-\\x1e, which
    are valid raw characters inside a JSON string, so a valid JSON-lines row would be cut in two and
    every later line number would be off.
    """
    lines = text.split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def brief(value, limit: int = 60) -> str:
    """repr(value) cut to about `limit` characters, for error messages: a cell or a JSON value can be
    megabytes long or nested thousands deep, and a message must stay one readable paragraph."""
    if isinstance(value, str | bytes) and len(value) > limit:
        value = value[: limit + 1]  # repr of the head only: never build the repr of a huge value
    elif isinstance(value, list | tuple | dict) and len(value) > 8:
        value = (list(value.items()) if isinstance(value, dict) else list(value))[:8] + ["..."]
    try:
        text = repr(value)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters (with "..."), for names shown unquoted in messages."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def max_read_bytes() -> int:
    """The largest data file read whole: half of this machine's memory. Readers hold a file's bytes and
    its decoded text at once (and the rows made from it), so a larger file cannot end well; refusing it
    up front beats an out-of-memory kill minutes later."""
    memory = physical_memory()
    return memory // 2 if memory else 1 << 40


def _size(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    return str(count)


def _prefix(key: str | None) -> str:
    return f"{key}: " if key else ""


def stat_input(path: Path, key: str | None = None, shown: str | None = None) -> os.stat_result:
    """stat() of an input path (links followed), or an error saying what is wrong with it: missing, a
    dangling link (and where it points), a link loop, or not reachable (permission)."""
    shown = shown or f"'{path}'"
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise LlmtuneError(
                f"{_prefix(key)}{shown} is a symbolic link to '{os.readlink(path)}', which does not exist "
                "(a dangling link); point it at the data or name the file itself."
            ) from None
        raise LlmtuneError(f"{_prefix(key)}data file {shown} does not exist.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LlmtuneError(
                f"{_prefix(key)}{shown} is a symbolic link loop (it leads back to itself); "
                "point the link at the data or name the file itself."
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise LlmtuneError(
                f"{_prefix(key)}{shown} cannot be reached (permission denied on a folder above it); "
                "fix the permissions (chmod) or copy the data somewhere readable."
            ) from None
        if exc.errno == errno.ENOTDIR:
            raise LlmtuneError(
                f"{_prefix(key)}{shown} does not exist (a part of the path before the last is a file, "
                "not a folder)."
            ) from None
        if exc.errno == errno.ENAMETOOLONG:
            raise LlmtuneError(f"{_prefix(key)}{shown[:200]}...: the path is too long.") from None
        raise LlmtuneError(f"{_prefix(key)}cannot read {shown}: {exc.strerror}.") from None


def check_regular(
    path: Path, info: os.stat_result, key: str | None = None, shown: str | None = None, *, whole: bool = True
) -> None:
    """An error unless `info` (of `path`) is a readable regular file of a size that can be read whole
    (`whole=False`: of any size, for readers that stream it)."""
    shown = shown or f"'{path}'"
    if not stat.S_ISREG(info.st_mode):
        kind = file_kind(info.st_mode)
        what = "a folder where a file is expected" if kind == "a folder" else f"{kind}, not a regular file"
        raise LlmtuneError(
            f"{_prefix(key)}{shown} is {what}; llmtune reads data from regular files "
            "(save the data to a file and name that file)."
        )
    if whole and info.st_size > max_read_bytes():
        raise LlmtuneError(
            f"{_prefix(key)}{shown} is {_size(info.st_size)}, more than half of this machine's memory "
            f"({_size(physical_memory() or 0)}); llmtune reads a data file whole, so it cannot read this "
            "one. Use a sample of it (e.g. head -n 1000000 FILE > sample) or a machine with more memory."
        )
    if not os.access(path, os.R_OK):
        raise LlmtuneError(
            f"{_prefix(key)}{shown} cannot be read (permission denied); fix its permissions (chmod +r)."
        )


def open_regular(path: Path, key: str | None = None, *, whole: bool = True):
    """`path` opened for binary reading, only when it is a regular file. Opened non-blocking and checked
    on the descriptor, so that even a path swapped for a FIFO after an earlier check cannot block.
    `whole=False`: the caller streams the file, so its size is not limited."""
    path = Path(path)
    info = stat_input(path, key)
    check_regular(path, info, key, whole=whole)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise LlmtuneError(f"{_prefix(key)}cannot open '{path}': {exc.strerror}.") from None
    try:
        check_regular(path, os.fstat(fd), key, whole=whole)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: Path, key: str | None = None) -> bytes:
    """The whole file, after the checks of `open_regular`; never more than `max_read_bytes` (a regular
    file under /proc can claim size 0 and never end)."""
    limit = max_read_bytes()
    try:
        with open_regular(path, key) as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:  # EIO, EISDIR on odd file systems ...
        raise LlmtuneError(f"{_prefix(key)}cannot read '{path}': {exc.strerror or exc}.") from None
    if len(raw) > limit:
        raise LlmtuneError(f"{_prefix(key)}'{path}' is larger than half of this machine's memory.")
    return raw


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open_regular(path) as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise LlmtuneError(f"cannot read '{path}': {exc.strerror or exc}.") from None
    return digest.hexdigest()


def read_text_file(path: Path, key: str | None = None) -> str:
    """The file as UTF-8 text (a leading BOM dropped), or an error naming the line and byte offset of
    the first bad byte; a file with a NUL byte in its first 8000 bytes is binary (git's test), not text:
    NUL-filled or UTF-16 files are otherwise "valid UTF-8"."""
    path = Path(path)
    raw = read_bytes(path, key)
    nul = raw.find(b"\x00", 0, BINARY_SNIFF_BYTES)
    if nul >= 0:
        line = raw[:nul].count(b"\n") + 1
        raise LlmtuneError(
            f"{_prefix(key)}{path} line {line}: a binary file, not text (NUL byte at offset {nul}); "
            "give a UTF-8 text file (UTF-16 text converts with iconv -f utf-16 -t utf-8)."
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LlmtuneError(
            f"{_prefix(key)}{path} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); convert the file to UTF-8 (e.g. iconv -f <encoding> -t utf-8)."
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def iter_text_chunks(path: Path, key: str | None = None, chunk_bytes: int = 1 << 20) -> Iterator[str]:
    """The file as UTF-8 text, as `read_text_file` reads it (a leading BOM dropped, a NUL byte in the first
    8000 bytes means binary, a bad byte is named by line and offset), but in chunks, never holding more
    than one: for streamed corpora larger than memory."""
    path = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    started = False
    try:
        with open_regular(path, key, whole=False) as handle:
            while True:
                raw = handle.read(chunk_bytes)
                if offset < BINARY_SNIFF_BYTES:
                    nul = raw.find(b"\x00", 0, BINARY_SNIFF_BYTES - offset)
                    if nul >= 0:
                        line = lines + raw[:nul].count(b"\n") + 1
                        raise LlmtuneError(
                            f"{_prefix(key)}{path} line {line}: a binary file, "
                            f"not text (NUL byte at offset {offset + nul}); give a UTF-8 text file (UTF-16 "
                            "text converts with iconv -f utf-16 -t utf-8)."
                        )
                pending = decoder.getstate()[0]  # the bytes of a character split by the last chunk
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as exc:
                    data = pending + raw
                    line = lines + data[: exc.start].count(b"\n") + 1
                    at = offset - len(pending) + exc.start
                    raise LlmtuneError(
                        f"{_prefix(key)}{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                        f"offset {at}); convert the file to UTF-8 (e.g. iconv -f <encoding> -t utf-8)."
                    ) from None
                if not started and text:  # the first character decoded (a BOM can span several chunks)
                    started = True
                    text = text[1:] if text.startswith("\ufeff") else text
                lines += raw.count(b"\n")
                offset += len(raw)
                if text:
                    yield text
                if not raw:
                    return
    except OSError as exc:
        raise LlmtuneError(f"{_prefix(key)}cannot read '{path}': {exc.strerror or exc}.") from None


def iter_lines(path: Path, key: str | None = None, chunk_bytes: int = 1 << 20) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file read in chunks: the lines `split_lines` gives (split on "\n"
    only, a trailing "\r" dropped), the last one included even when empty."""
    rest = ""
    number = 0
    for chunk in iter_text_chunks(path, key, chunk_bytes):
        *complete, rest = (rest + chunk).split("\n")
        for line in complete:
            number += 1
            yield number, line[:-1] if line.endswith("\r") else line
    yield number + 1, rest[:-1] if rest.endswith("\r") else rest


def iter_json_lines(
    path: Path, on_bad_rows: str, bad: BadRows, key: str | None = "data.on_bad_rows"
) -> Iterator[tuple[str, dict]]:
    """`iter_json_rows` of a .jsonl file, read a line at a time (any size)."""
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        row, problem = _parse_json(line)
        if problem is None and not isinstance(row, dict):
            problem = f"not a JSON object ({type(row).__name__})"
        if problem is not None:
            report_bad_row(where, problem, on_bad_rows, bad, key)
            continue
        yield where, row


def read_json_file(path: Path, *, what: str, hint: str):
    """A small JSON file llmtune or a library wrote (a config beside a model), parsed, or an error that
    names the file, where it breaks, and `hint` (how to get a good copy back)."""
    path = Path(path)
    text = read_text_file(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = (
            "it is empty"
            if not text.strip()
            else f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        )
        raise LlmtuneError(f"{path}: not a valid {what} ({problem}).", hint=hint) from None
    except RecursionError:
        raise LlmtuneError(f"{path}: not a valid {what} (nested too deeply).", hint=hint) from None


# ------------------------------------------------------------------------------------------ finding files
def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


class _Walk:
    """Paths under a folder that match glob segments (`**` = any number of folders), links followed.

    Each real folder is expanded once per pattern position, so the work is bounded by the number of
    folders whatever the links do; a link to a folder that is already on the path being walked is a
    loop, reported in `loops` and not entered. Like glob.glob, `*` and `**` skip names starting with
    "." unless `hidden` (a folder entry reads everything in it, as it always did).
    """

    def __init__(self, hidden: bool):
        self.hidden = hidden
        self.found: list[Path] = []
        self.loops: dict[str, str] = {}  # link → where it leads
        self.unreadable: list[str] = []

    def _visible(self, name: str, segment: str) -> bool:
        return self.hidden or not name.startswith(".") or segment.startswith(".")

    def _listdir(self, folder: Path) -> list[str]:
        try:
            return sorted(os.listdir(folder))
        except OSError:
            self.unreadable.append(str(folder))
            return []

    def run(self, root: Path, segments: list[str]) -> list[Path]:
        if not segments or segments[-1] == "**":
            segments = [*segments, "*"]  # a trailing ** means every file below (the last is never **)
        segments = [s for i, s in enumerate(segments) if not (s == "**" and i and segments[i - 1] == "**")]
        try:
            root_info = os.stat(root)
        except OSError:
            return []
        if not stat.S_ISDIR(root_info.st_mode):
            return []
        expanded: set[tuple[tuple[int, int], int]] = set()
        stack = [(root, 0, (_identity(root_info),))]
        while stack:
            folder, index, ancestors = stack.pop()
            if (ancestors[-1], index) in expanded:
                continue  # this real folder was already matched against the rest of the pattern
            expanded.add((ancestors[-1], index))
            segment, last = segments[index], index == len(segments) - 1
            pushes = []
            if segment == "**":
                pushes.append((folder, index + 1, ancestors))  # ** matching no folder
                names = [n for n in self._listdir(folder) if self._visible(n, "*")]
                next_index = index  # ** matching this folder and maybe more
            else:
                if glob.has_magic(segment):
                    names = [
                        n
                        for n in self._listdir(folder)
                        if fnmatch.fnmatchcase(n, segment) and self._visible(n, segment)
                    ]
                else:
                    names = [segment] if os.path.lexists(folder / segment) else []
                next_index = index + 1
            for name in names:
                child = folder / name
                try:
                    info = os.stat(child)
                except OSError:  # a dangling link or a link loop: a file for the checks to report
                    if last:
                        self.found.append(child)
                    continue
                if not stat.S_ISDIR(info.st_mode):
                    if last:
                        self.found.append(child)
                    continue
                if last:
                    continue  # a folder matched by the last segment: not a file
                identity = _identity(info)
                # Only ** can go round a loop forever (every other segment moves the pattern on).
                if segment == "**" and identity in ancestors:
                    self.loops.setdefault(str(child), os.path.realpath(child))
                    continue
                pushes.append((child, next_index, (*ancestors, identity)))
            stack.extend(reversed(pushes))
        self.found = sorted(set(self.found))  # the order glob.glob's sorted results had
        return self.found


def _glob_files(pattern: str) -> _Walk:
    path = Path(pattern)
    parts = list(path.parts)
    root = Path(parts.pop(0)) if path.anchor else Path()
    while parts and not glob.has_magic(parts[0]):
        root = root / parts.pop(0)
    walk = _Walk(hidden=False)
    walk.run(root, parts)
    return walk


def _folder_files(folder: Path, suffixes: tuple[str, ...]) -> _Walk:
    walk = _Walk(hidden=True)
    walk.run(folder, ["**", "*"])
    walk.found = [p for p in walk.found if p.suffix in suffixes]
    return walk


def _hub_dataset_file(entry: str, key: str, suffixes: tuple[str, ...]) -> Path | None:
    """The local file holding a hub dataset's rows when `entry` names one (`hf:...`, `ms:...`) or is a
    folder written by `save_to_disk` (whose dataset_info.json and state.json would otherwise be read as
    data); None for any other entry."""
    from llmtune.recipe.hub_dataset import BadReference, HubReference, parse_reference

    try:
        ref = parse_reference(entry)
    except BadReference as exc:
        raise LlmtuneError(f"{key}: {exc}.") from None
    if ref is None:
        from llmtune.data.hub_datasets import is_saved_dataset

        path = Path(entry)
        if not (path.is_dir() and is_saved_dataset(path)):
            return None
        ref = HubReference(hub="hf", name=str(path.resolve()))
    from llmtune.data.hub_datasets import materialise

    return materialise(ref, key, suffixes)


def expand_sources(
    entries: list[str],
    key: str,
    suffixes: tuple[str, ...] = TEXT_SUFFIXES,
    describe=None,
    *,
    whole: bool = True,
) -> list[Path]:
    """Regular files named by `entries` (paths, folders searched recursively, or glob patterns), in a
    stable order, each real file once; anything else named or found is an error saying what it is.
    `whole=False`: the files are streamed, so their size is not limited by this machine's memory."""
    describe = describe or (lambda p: f"'{p}'")
    files: list[Path] = []
    for entry in entries:
        hub_file = _hub_dataset_file(entry, key, suffixes)
        if hub_file is not None:
            files.append(hub_file)
            continue
        path = Path(entry)
        if glob.has_magic(entry) and not os.path.lexists(entry):
            walk = _glob_files(entry)
            if not walk.found:
                raise LlmtuneError(f"{key}: no file matches the pattern {describe(entry)}.")
        else:
            info = stat_input(path, key, describe(entry))
            if not stat.S_ISDIR(info.st_mode):
                check_regular(path, info, key, describe(entry), whole=whole)
                files.append(path)
                continue
            walk = _folder_files(path, suffixes)
            if not walk.found:
                raise LlmtuneError(f"{key}: folder {describe(entry)} holds no {'/'.join(suffixes)} files.")
        for link, target in walk.loops.items():
            log.warning(
                "warning: %s: %s is a link back to %s, a folder it is inside (a loop); not followed.",
                key,
                link,
                target,
            )
        if walk.unreadable:
            log.warning(
                "warning: %s: %d folder(s) could not be listed (permission denied?) and were skipped, "
                "first %s.",
                key,
                len(walk.unreadable),
                walk.unreadable[0],
            )
        files.extend(walk.found)
    kept: dict[tuple[int, int], Path] = {}
    repeated: list[tuple[Path, Path]] = []
    for file in files:
        if file.suffix not in suffixes:
            raise LlmtuneError(
                f"{key}: {file} has an unsupported extension; expected one of {', '.join(suffixes)}."
            )
        info = stat_input(file, key)
        check_regular(file, info, key, whole=whole)
        first = kept.setdefault(_identity(info), file)
        if first is not file and first != file:
            repeated.append((file, first))
    if repeated:
        # A file named twice, or reached again through a link, would be trained on twice without a word.
        file, first = repeated[0]
        log.warning(
            "note: %s: %d path(s) lead to a file already read (e.g. %s is %s); each file is read once.",
            key,
            len(repeated),
            file,
            first,
        )
    return list(kept.values())


# ------------------------------------------------------------------------------------------ rows
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


# _LENIENT: data rows are parsed with strict=False, which lets raw control characters (a tab, \x0b, \x1c
# ...) stand inside strings. RFC 8259 wants them escaped, but writers that forget are common, the
# characters are the user's text either way, and a row is not split at them (see split_lines).
# A \uD800-\uDFFF escape: json decodes a lone one into a str that cannot be encoded (tokenizers fail).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}")


def _parse_json(text: str) -> tuple[object, str | None]:
    """(value, None), or (None, the reason the text is not a usable JSON value)."""
    try:
        value = json.loads(text, strict=False)  # see _LENIENT
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:  # json.loads recurses once per [ or {
        return None, "not valid JSON (nested too deeply)"
    if _SURROGATE_ESCAPE.search(text):
        problem = _unencodable(value)
        if problem is not None:
            return None, problem
    return value, None


def _unencodable(value) -> str | None:
    """Why `value` cannot be written as UTF-8 (a lone surrogate from a \\uD800-\\uDFFF escape), or None."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "not valid text (a \\uD800-\\uDFFF escape that is not half of a surrogate pair)"
    except RecursionError:
        return "not valid JSON (nested too deeply)"
    return None


def iter_json_rows(
    path: Path, on_bad_rows: str, bad: BadRows, key: str | None = "data.on_bad_rows"
) -> Iterator[tuple[str, dict]]:
    """(location, row) for each JSON object in a .jsonl file, or a .json file holding a list of objects.

    A .json file that is really JSON lines (MedicalGPT ships some) is read as JSON lines. A line that is
    not a JSON object is an error naming file and line, or, with `on_bad_rows: skip`, counted in `bad`;
    `key` is the recipe key that asks for skips, named in the error's hint (None: there is none).
    """
    text = read_text_file(path)
    if path.suffix == ".json":
        try:
            data = json.loads(text, strict=False)  # see _LENIENT
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":
                raise LlmtuneError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg}).") from None
            data = None  # several JSON values: treat as JSON lines below
        except RecursionError:
            raise LlmtuneError(
                f"{path}: invalid JSON (nested too deeply for a data file); fix or remove the deep value."
            ) from None
        if data is not None:
            if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
                data = next(iter(data.values()))  # {"data": [...]} wrappers
            if not isinstance(data, list):
                raise LlmtuneError(f"{path}: expected a JSON list of objects, found a {type(data).__name__}.")
            for index, row in enumerate(data):
                where = f"{path} item {index}"
                problem = _unencodable(row) if _SURROGATE_ESCAPE.search(text) else None
                if not isinstance(row, dict):
                    problem = f"not a JSON object ({type(row).__name__})"
                if problem is None:
                    yield where, row
                else:
                    report_bad_row(where, problem, on_bad_rows, bad, key)
            return
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        row, problem = _parse_json(line)
        if problem is not None:
            report_bad_row(where, problem, on_bad_rows, bad, key)
            continue
        if not isinstance(row, dict):
            report_bad_row(where, f"not a JSON object ({type(row).__name__})", on_bad_rows, bad, key)
            continue
        yield where, row


def report_bad_row(
    where: str, reason: str, on_bad_rows: str, bad: BadRows, key: str | None = "data.on_bad_rows"
) -> None:
    """Stop on a bad row (naming file and line), or count it when the recipe asks for skips. `key` is
    the recipe key that asks for skips (mcq.on_bad_rows, ner.on_bad_rows ...), None where there is none."""
    if on_bad_rows == "skip":
        bad.add(reason.split(" (")[0], where)
        return
    hint = f"Fix the row, or set {key}: skip to skip and count such rows." if key else "Fix the row."
    raise LlmtuneError(f"{where}: {reason}.", hint=hint)
