"""Recipes are read as YAML 1.2, from files that may be missing, empty, binary, not a mapping, not a file
at all (a FIFO, /dev/zero), or built to hurt the parser.

Every parse is bounded, because a recipe may come from anywhere (a shared folder, a pasted gist, an
override on the command line) and the reader must answer fast with a message, never hang or eat memory:

- a recipe file is at most `MAX_RECIPE_BYTES`, and only a regular file is opened (a FIFO would block
  the open, /dev/zero would never end);
- a document holds at most `MAX_VALUES` values (keys, items and scalars), counted with every alias
  (`*name`) expanded: PyYAML shares an aliased value instead of copying it, but pydantic, `to_yaml` and
  error messages walk the expanded tree, so nine nested anchors of nine aliases each (the "billion
  laughs") would cost 387 million values there;
- nesting, aliases expanded, is at most `MAX_DEPTH` levels (PyYAML's composer recurses once per level
  and would die in a RecursionError at about 300), and an alias may not refer to a value that contains
  it;
- a key appears at most once in a mapping: YAML says duplicate keys are an error, PyYAML keeps the last
  one silently, and a recipe with two `train:` sections would run with half of what its author wrote.

The pure-Python composer is used on purpose: libyaml's C composer recurses without a bound.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from llmtune.errors import LlmtuneError

MAX_RECIPE_BYTES = 1 << 20  # 1 MiB: the largest shipped recipe is under 4 KiB
MAX_VALUES = 10_000  # PyYAML composes ~20k values a second here; a real recipe holds about a hundred
MAX_DEPTH = 100  # a real recipe nests about 5 deep (from_config, lr_scheduler_kwargs)
MAX_JSON_BYTES = 64 << 20  # config.json / adapter_config.json of a model folder

# Where a key or list item was written: ("train", "learning_rate") → line 12.
Lines = dict[tuple, int]


class YamlLimitError(Exception):
    """A document that is valid YAML but not acceptable as a recipe: too big, too deep, an alias bomb, a
    duplicate key. Deliberately not a yaml.YAMLError: `--set` takes text that is not YAML as a plain
    string, which must not happen to these."""

    def __init__(self, problem: str, line: int | None = None):
        self.problem = problem
        self.line = line
        super().__init__(problem)


class _RecipeYamlLoader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `save_strategy: no` is the boolean False and `4e-4` is a string.
    Recipes follow YAML 1.2 on both: only true/false are booleans, and 4e-4 is a number.

    The composer counts values and depth as it goes, so that a huge or deep document stops at the limit
    instead of after it has been read whole (or after the recursion limit)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._composed = 0
        self._depth = 0

    def compose_node(self, parent, index):
        line = self.peek_event().start_mark.line + 1
        self._composed += 1
        if self._composed > MAX_VALUES:
            raise YamlLimitError(
                f"it holds more than {MAX_VALUES:,} values; a recipe is a few dozen settings (put long lists of "
                "prompts or files in a file and name that file)",
                line,
            )
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlLimitError(f"it is nested more than {MAX_DEPTH} levels deep", line)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_RecipeYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
_RecipeYamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


class RecipeYamlDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """Writes what both readers read back as written: a string is quoted when YAML 1.1 (PyYAML's
    safe_load, other tools) would take it for a boolean, and when YAML 1.2 (our loader) would take it for
    a number — the string "4e-4" written bare would come back a float. libyaml's emitter when present
    (ten times faster; the resolver that decides the quoting stays this Python class's)."""


RecipeYamlDumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=RecipeYamlDumper, sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------------------------ parsing
def load_yaml(text: str) -> Any:
    """`text` as YAML 1.2. Raises yaml.YAMLError for text that is not YAML, YamlLimitError for YAML that
    is too big, too deep, an alias bomb or has a duplicate key."""
    return load_yaml_with_lines(text)[0]


def load_yaml_with_lines(text: str) -> tuple[Any, Lines]:
    """`load_yaml`, and the line each key and list item was written on (for messages)."""
    loader = _RecipeYamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        try:
            lines = _check_tree(node, loader)
            return loader.construct_document(node), lines
        except (yaml.YAMLError, YamlLimitError):
            raise
        except Exception as exc:  # PyYAML's constructors fail plainly on some values: a number with
            # thousands of digits (Python's int limit), 2024-13-45, `!!timestamp x`, `!!float abc`
            first = str(exc).split(":")[0] or type(exc).__name__
            raise YamlLimitError(
                f"a value cannot be read ({shown(first, 120)}); look for a date, a !!tag or a very long "
                "number"
            ) from None
    finally:
        loader.dispose()


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_tree(root: yaml.Node, loader: _RecipeYamlLoader) -> Lines:
    """Walk the composed document once: duplicate keys, depth and size with aliases expanded, recursive
    aliases. An aliased node is walked the first time only; later visits add its measured size, so a
    bomb is measured in time proportional to the text, not to its expansion."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) → (values, height), once walked
    walking: set[int] = set()
    lines: Lines = {}
    total = [0]

    def count(values: int, line: int) -> None:
        total[0] += values
        if total[0] > MAX_VALUES:
            raise YamlLimitError(
                f"its aliases (*name) expand it to more than {MAX_VALUES:,} values (an alias bomb?)", line
            )

    def visit(node: yaml.Node, path: tuple, depth: int) -> tuple[int, int]:
        line = node.start_mark.line + 1
        if id(node) in walking:
            raise YamlLimitError("an alias (*name) refers to a value that contains it", line)
        if id(node) in measured:  # reached again through an alias
            values, height = measured[id(node)]
            if depth + height - 1 > MAX_DEPTH:
                raise YamlLimitError(f"its aliases (*name) nest it more than {MAX_DEPTH} levels deep", line)
            count(values, line)
            return values, height
        if depth > MAX_DEPTH:
            raise YamlLimitError(f"its aliases (*name) nest it more than {MAX_DEPTH} levels deep", line)
        count(1, line)
        walking.add(id(node))
        values, height = 1, 1
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines.setdefault((*path, index), item.start_mark.line + 1)
                v, h = visit(item, (*path, index), depth + 1)
                values, height = values + v, max(height, h + 1)
        elif isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                key = _key_of(key_node, loader)
                child = path
                if key is not _MERGE:
                    if key is not _UNCHECKED:
                        if key in seen:  # no line of its own: the message names both
                            raise YamlLimitError(_duplicate(path, key, seen[key], key_node))
                        seen[key] = key_node
                        child = (*path, key)
                        lines.setdefault(child, key_node.start_mark.line + 1)
                    v, h = visit(key_node, child, depth + 1)
                    values += v
                v, h = visit(value_node, child, depth + 1)
                values, height = values + v, max(height, h + 1)
        walking.discard(id(node))
        measured[id(node)] = (values, height)
        return values, height

    visit(root, (), 1)
    return lines


_MERGE = object()  # `<<: *base`: YAML 1.1's merge key, whose keys the mapping's own keys override
_UNCHECKED = object()  # a key that is itself a list or mapping (the constructor rejects those)


def _key_of(node: yaml.Node, loader: _RecipeYamlLoader) -> Any:
    if node.tag == _MERGE_TAG:
        return _MERGE
    if not isinstance(node, yaml.ScalarNode):
        return _UNCHECKED
    value = loader.construct_object(node)  # `1` and `0x1` are one key, `1` and "1" two
    try:
        hash(value)
    except TypeError:
        return _UNCHECKED
    return value


def _duplicate(path: tuple, key: Any, first: yaml.Node, second: yaml.Node) -> str:
    name = ".".join(str(p) for p in (*path, key))
    a, b = first.start_mark, second.start_mark
    where = (
        f"on lines {a.line + 1} and {b.line + 1}"
        if a.line != b.line
        else f"on line {a.line + 1}, columns {a.column + 1} and {b.column + 1}"
    )
    return (
        f"key '{shown(name)}' is given twice, {where}; keep one (YAML keeps only the last, which would "
        "silently drop the first)"
    )


def shown(value: Any, limit: int = 80) -> str:
    """`value` for a message: its repr for non-strings, cut to `limit` characters (a recipe value may be
    a megabyte long, and a message is one paragraph)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    tail = (limit - 15) // 2  # the end of a long path is its file name: keep both ends
    return f"{text[: limit - 15 - tail]}...{text[-tail:]} ({len(text):,} chars)"


def shown_repr(value: Any, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text):,} chars)"


# ------------------------------------------------------------------------------------------ files
_KINDS = (
    (stat.S_ISREG, "a file"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a path is, in words, from its stat mode: every message that says a FIFO, a device or a
    folder is not what was expected uses this one table (recipes, data files, output folders)."""
    return next((name for test, name in _KINDS if test(mode)), "not a file or folder")


def blocking_file(path: Path) -> Path | None:
    """The first folder on `path` that is really a file (`a.yaml/b.yaml`), or None."""
    for parent in reversed(path.parents):
        try:
            if not stat.S_ISDIR(os.stat(parent).st_mode):
                return parent
        except OSError:
            return None
    return None


def read_regular_file(path: Path, what: str, limit: int, file_word: str = "file") -> bytes:
    """The bytes of the regular file `path` (at most `limit`), or an LlmtuneError that names `what`
    ("recipe") and says what the path is instead. Never opens a FIFO for reading without O_NONBLOCK (the
    open would wait for a writer) and never reads past `limit` (/dev/zero has no end)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise LlmtuneError(f"{what} file not found: {path}", hint="Check the path.") from None
    except NotADirectoryError:
        blocker = blocking_file(path)
        where = f"{blocker} is a file, not a folder" if blocker else "a part of it is not a folder"
        raise LlmtuneError(f"{what} {path}: {where}.") from None
    except ValueError:  # an embedded NUL byte
        raise LlmtuneError(f"{what} {shown(str(path))}: a path cannot contain a NUL byte.") from None
    except OSError as exc:
        raise LlmtuneError(f"cannot read {what} {path}: {exc.strerror}.") from None
    _check_regular(path, what, status.st_mode, status.st_size, limit, file_word)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise LlmtuneError(f"cannot read {what} {path}: {exc.strerror}.") from None
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(handle.fileno())  # the path may have been swapped since the stat
        _check_regular(path, what, opened.st_mode, opened.st_size, limit, file_word)
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise LlmtuneError(f"cannot read {what} {path}: {exc.strerror}.") from None
    _check_regular(path, what, opened.st_mode, len(data), limit, file_word)  # it grew since the stat
    return data


def _check_regular(path: Path, what: str, mode: int, size: int, limit: int, file_word: str) -> None:
    if stat.S_ISDIR(mode):
        raise LlmtuneError(f"{what} {path} is a folder; give a {file_word}, e.g. {path}/<name>")
    if not stat.S_ISREG(mode):
        raise LlmtuneError(
            f"{what} {path} is not a regular file: it is {file_kind(mode)}; give a {file_word}.",
            hint="To use generated text, write it to a file first.",
        )
    if size > limit:
        raise LlmtuneError(
            f"{what} {path} is larger than {limit / (1 << 20):g} MiB, the most llmtune reads for one; is it "
            "the right file?"
        )


def load_yaml_file(path: str | os.PathLike) -> dict[str, Any]:
    """The recipe file's top-level mapping, not yet validated; every way a file can fail to be one is a
    message naming the file (and the line, for YAML errors)."""
    return load_yaml_file_with_lines(path)[0]


def load_yaml_file_with_lines(
    path: str | os.PathLike,
    what: str = "recipe",
    expected: str = "a YAML mapping of sections (model:, data:, train: ...)",
) -> tuple[dict[str, Any], Lines]:
    """`load_yaml_file`, and the line each key was written on. `what` names the file in messages and
    `expected` says what its top level must be (import-recipe reads LLaMA-Factory's flat YAML with it)."""
    path = Path(os.path.expanduser(path))  # `--recipe '~/r.yaml'` quoted past the shell
    raw = read_regular_file(path, what, MAX_RECIPE_BYTES, "YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LlmtuneError(
            f"{what} {path} is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}); save it as UTF-8."
        ) from None
    try:
        data, lines = load_yaml_with_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LlmtuneError(f"{what} {path}{where}: invalid YAML: {shown(problem, 200)}.") from None
    except YamlLimitError as exc:
        where = f" line {exc.line}" if exc.line else ""
        raise LlmtuneError(f"{what} {path}{where}: {exc.problem}.") from None
    if data is None:
        raise LlmtuneError(f"{what} {path} is empty; it must be {expected}.")
    if not isinstance(data, dict):
        raise LlmtuneError(f"{what} {path} must be {expected}, but its top level is a {type(data).__name__}.")
    return data, lines


def load_json_file(path: str | os.PathLike, what: str, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file a recipe points at (a model's config.json), bounded like a recipe: a regular file of
    at most `limit` bytes, and nesting too deep for the decoder is a message, not a RecursionError."""
    path = Path(path)
    raw = read_regular_file(path, what, limit, "JSON file")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise LlmtuneError(f"{what} {path} is not UTF-8 text.") from None
    except json.JSONDecodeError as exc:
        raise LlmtuneError(f"{what} {path} line {exc.lineno}: invalid JSON: {exc.msg}.") from None
    except RecursionError:
        raise LlmtuneError(f"{what} {path} is nested too deeply to be a config file.") from None
