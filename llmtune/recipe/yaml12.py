"""Recipes are read as YAML 1.2, from files that may be missing, empty, binary or not a mapping."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from llmtune.errors import LlmtuneError


class _RecipeYamlLoader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `save_strategy: no` is the boolean False and `4e-4` is a string.
    Recipes follow YAML 1.2 on both: only true/false are booleans, and 4e-4 is a number."""


_RecipeYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_RecipeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeYamlLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml_file(path: str | os.PathLike) -> dict[str, Any]:
    """The recipe file's top-level mapping, not yet validated; every way a file can fail to be one is a
    message naming the file (and the line, for YAML errors)."""
    path = Path(path)
    if not path.exists():
        raise LlmtuneError(f"recipe file not found: {path}", hint="Check the path given to --recipe.")
    if path.is_dir():
        raise LlmtuneError(f"--recipe {path} is a folder; give a YAML file, e.g. {path}/<name>.yaml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LlmtuneError(
            f"recipe {path} is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}); save it as UTF-8."
        ) from None
    except OSError as exc:
        raise LlmtuneError(f"cannot read recipe {path}: {exc.strerror}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LlmtuneError(f"recipe {path}{where}: invalid YAML: {problem}.") from None
    if data is None:
        raise LlmtuneError(f"recipe {path} is empty; it needs at least the model, data and train sections.")
    if not isinstance(data, dict):
        raise LlmtuneError(
            f"recipe {path} must be a YAML mapping of sections (model:, data:, train: ...), "
            f"but its top level is a {type(data).__name__}."
        )
    return data
