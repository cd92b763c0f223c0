"""`train:` keys checked against the trainer's own argument dataclass (TrainingArguments, SFTConfig, DPOConfig)
when the recipe loads, so that HF's hundred arguments are not copied into our schema: unknown keys with a
"did you mean", wrong types by the dataclass's annotations, legacy names mapped (legacy.py).

Importing those dataclasses costs seconds (transformers' trainer utilities import torch, peft and
bitsandbytes), which `--print-config` and `plan` should not pay for a table that changes only with the
installed versions. So the table (field name → its annotation, in the small JSON form of `_spec`) is read
once from the classes and kept in $LLMTUNE_HOME/cache, keyed by the versions of transformers and trl.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Literal, Union

from pydantic import TypeAdapter, ValidationError

from llmtune.errors import did_you_mean
from llmtune.home import llmtune_home
from llmtune.recipe.legacy import DROPPED_TRAIN_KEYS, RENAMED_TRAIN_KEYS


def check_train_keys(
    train: dict[str, Any], arguments_class: str, notes: list[str], problems: list[str]
) -> dict:
    """Check `train:` keys against the trainer's argument dataclass; map legacy names; coerce types."""
    fields = argument_fields(arguments_class)
    class_name = arguments_class.rpartition(".")[2]
    out: dict[str, Any] = {}
    for key, value in train.items():
        if key in DROPPED_TRAIN_KEYS:
            notes.append(
                f"train.{key} is not a transformers 5 argument; ignored ({DROPPED_TRAIN_KEYS[key]})."
            )
            continue
        if key in RENAMED_TRAIN_KEYS:
            new = RENAMED_TRAIN_KEYS[key]
            if new in train:
                problems.append(
                    f"train.{key}: legacy name of train.{new}, and both are given; keep only {new}"
                )
                continue
            if key == "warmup_ratio" and not (isinstance(value, (int, float)) and 0 <= value < 1):
                problems.append(f"train.warmup_ratio: a ratio in [0, 1) of the total steps, got {value!r}")
                continue
            extra = " (a float below 1 is a ratio of the total steps)" if key == "warmup_ratio" else ""
            notes.append(f"train.{key} is called train.{new} in transformers 5; using {new}: {value}{extra}.")
            key = new
        if key not in fields:
            problems.append(
                f"train.{key}: unknown key{did_you_mean(key, fields)} (not a {class_name} argument)"
            )
            continue
        out[key] = _coerce_train_value(key, value, fields[key], problems)
    return out


# ------------------------------------------------------------------------------------ the field table
def argument_fields(dotted: str) -> dict[str, Any]:
    """{field name: annotation spec} of the init fields of the argument dataclass `dotted`
    (e.g. "trl.SFTConfig"), from the cache when these versions were seen before."""
    cache = llmtune_home() / "cache" / "train-arguments" / f"{dotted}-{_versions()}.json"
    try:
        return json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    fields = _read_fields(dotted)
    try:  # a cache that cannot be written costs the next run seconds, nothing else
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(fields, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError:
        pass
    return fields


@functools.cache
def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for package in ("transformers", "trl"):
        try:
            versions.append(f"{package}-{version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package}-none")
    return "-".join(versions)


def _read_fields(dotted: str) -> dict[str, Any]:
    import dataclasses
    import importlib
    import typing

    module, _, name = dotted.rpartition(".")
    args_class = getattr(importlib.import_module(module), name)
    hints = typing.get_type_hints(args_class)
    return {f.name: _spec(hints.get(f.name)) for f in dataclasses.fields(args_class) if f.init}


def _spec(annotation: Any) -> Any:
    """An annotation as JSON: "int", "float", "bool", "str", "none", "dict", "any", {"list": spec},
    {"union": [specs]}, {"enum": [values]} (an Enum class, which HF fields also accept as its string),
    {"literal": [values]}."""
    import enum
    import types
    import typing

    if annotation is None:
        return "any"
    if annotation is type(None):
        return "none"
    if annotation in (int, float, bool, str):
        return annotation.__name__
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [member.value for member in annotation]}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return {"literal": list(args)}
    if origin in (Union, types.UnionType):
        return {"union": [_spec(arg) for arg in args]}
    if annotation is list or origin is list:
        return {"list": _spec(args[0]) if args else "any"}
    if annotation is dict or origin is dict:
        return "dict"
    return "any"


def _annotation(spec: Any) -> Any:
    """The annotation pydantic validates a value against, rebuilt from `_spec`'s form."""
    simple = {
        "int": int,
        "float": float,
        "bool": bool,
        "str": str,
        "none": type(None),
        "dict": dict,
        "any": Any,
    }
    if isinstance(spec, str):
        return simple.get(spec, Any)
    if "enum" in spec:
        return str
    if "literal" in spec:
        return Literal[tuple(spec["literal"])]
    if "list" in spec:
        return list[_annotation(spec["list"])]
    return Union[tuple(_annotation(member) for member in spec["union"])]  # noqa: UP007 - built at run time


def _enum_values(spec: Any) -> list | None:
    members = spec["union"] if isinstance(spec, dict) and "union" in spec else [spec]
    return next((m["enum"] for m in members if isinstance(m, dict) and "enum" in m), None)


# ------------------------------------------------------------------------------------ values
def _coerce_train_value(key: str, value: Any, spec: Any, problems: list[str]) -> Any:
    if spec == "any":
        return value
    try:
        result = TypeAdapter(_annotation(spec)).validate_python(value)
    except ValidationError:
        problems.append(f"train.{key}: expected {_describe_type(spec)}, got {value!r}")
        return value
    except Exception:  # an annotation pydantic cannot build a validator for: leave it to TrainingArguments
        return value
    allowed = _enum_values(spec)
    if allowed is not None and isinstance(value, str) and value not in allowed:
        problems.append(
            f"train.{key}: {value!r} is not one of {', '.join(map(str, allowed))}{did_you_mean(value, allowed)}"
        )
    # A string that the field reads as a number or boolean ("1e-4", "yes") is passed on converted;
    # anything else is kept as the user wrote it (an enum member stays its string).
    if isinstance(value, str) and isinstance(result, (int, float)):
        return result
    return value


def _describe_type(spec: Any) -> str:
    names = {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a string",
        "dict": "a mapping",
    }
    members = spec["union"] if isinstance(spec, dict) and "union" in spec else [spec]
    parts = []
    for member in members:
        if member == "none":
            continue
        if isinstance(member, dict):
            parts.append(
                "a list" if "list" in member else "a string" if "enum" in member else "one of the choices"
            )
        else:
            parts.append(names.get(member, "a value"))
    return " or ".join(dict.fromkeys(parts))
