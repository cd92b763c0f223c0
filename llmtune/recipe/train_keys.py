"""`train:` keys checked against the trainer's own argument dataclass (TrainingArguments, SFTConfig, DPOConfig)
when the recipe loads, so that HF's hundred arguments are not copied into our schema: unknown keys with a
"did you mean", wrong types by the dataclass's annotations, legacy names mapped (legacy.py), numbers finite
and within the bounds in `NUMBER_RULES` (HF checks a few of them only when TrainingArguments is built, after
the model has loaded, and most never: a batch size of 0 fails deep inside a DataLoader).

Importing those dataclasses costs seconds (transformers' trainer utilities import torch, peft and
bitsandbytes), which `--print-config` and `plan` should not pay for a table that changes only with the
installed versions. So the table (field name → its annotation, in the small JSON form of `_spec`) is read
once from the classes and kept in $LLMTUNE_HOME/cache, keyed by the versions of transformers and trl.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from typing import Any, Literal, Union

from pydantic import ConfigDict, TypeAdapter, ValidationError

from llmtune.errors import did_you_mean
from llmtune.home import llmtune_home
from llmtune.recipe.base import INT_LIMIT, SEED_LIMIT
from llmtune.recipe.legacy import DROPPED_TRAIN_KEYS, RENAMED_TRAIN_KEYS
from llmtune.recipe.yaml12 import shown, shown_repr


def _whole_steps_above_one(value: float) -> bool:
    return value <= 1 or value == int(value)


# What each numeric trainer key must be, beyond its type: (the rule in words, the test). A key missing
# here is only checked to be a finite number that fits INT_LIMIT when it is an integer.
NUMBER_RULES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "learning_rate": ("greater than 0", lambda v: v > 0),
    "num_train_epochs": ("greater than 0", lambda v: v > 0),
    "max_steps": (
        "a positive number of steps, or -1 (no limit: train.num_train_epochs decides)",
        lambda v: v == -1 or v > 0,
    ),
    "per_device_train_batch_size": ("at least 1", lambda v: v >= 1),
    "per_device_eval_batch_size": ("at least 1", lambda v: v >= 1),
    "gradient_accumulation_steps": ("at least 1", lambda v: v >= 1),
    "eval_accumulation_steps": ("at least 1", lambda v: v >= 1),
    "max_grad_norm": ("0 or more (0 turns clipping off)", lambda v: v >= 0),
    "warmup_steps": ("0 or more (below 1: a ratio of the total steps)", lambda v: v >= 0),
    "logging_steps": (
        "greater than 0, and a whole number above 1 (below 1: a ratio)",
        lambda v: v > 0 and _whole_steps_above_one(v),
    ),
    "save_steps": (
        "greater than 0, and a whole number above 1 (below 1: a ratio)",
        lambda v: v > 0 and _whole_steps_above_one(v),
    ),
    "eval_steps": (
        "greater than 0, and a whole number above 1 (below 1: a ratio)",
        lambda v: v > 0 and _whole_steps_above_one(v),
    ),
    "eval_delay": ("0 or more", lambda v: v >= 0),
    "adam_beta1": ("in [0, 1)", lambda v: 0 <= v < 1),
    "adam_beta2": ("in [0, 1)", lambda v: 0 <= v < 1),
    "adam_epsilon": ("0 or more", lambda v: v >= 0),
    "label_smoothing_factor": ("in [0, 1)", lambda v: 0 <= v < 1),
    "seed": (f"in 0 .. {SEED_LIMIT} (numpy's seed range)", lambda v: 0 <= v <= SEED_LIMIT),
    "data_seed": (f"in 0 .. {SEED_LIMIT} (numpy's seed range)", lambda v: 0 <= v <= SEED_LIMIT),
    "dataloader_num_workers": ("0 or more", lambda v: v >= 0),
    "dataloader_prefetch_factor": ("at least 1", lambda v: v >= 1),
    "torch_empty_cache_steps": ("at least 1", lambda v: v >= 1),
    "save_total_limit": ("at least 1 (leave it out to keep every checkpoint)", lambda v: v >= 1),
    "dataset_num_proc": ("at least 1", lambda v: v >= 1),
    "precompute_ref_batch_size": ("at least 1", lambda v: v >= 1),
    "ref_model_sync_steps": ("at least 1", lambda v: v >= 1),
    "ddp_timeout": ("at least 1 (seconds)", lambda v: v >= 1),
}
# Keys whose rule sets their own upper bound (INT_LIMIT does not apply).
_OWN_UPPER_BOUND = {"seed", "data_seed"}


# Keys of `train:` that llmtune reads itself (see recipe/training.py TrainSection); never passed to the trainer.
LLMTUNE_TRAIN_KEYS = ("nan_patience",)


def check_train_keys(
    train: dict[str, Any], arguments_class: str, notes: list[str], problems: list[str]
) -> dict:
    """Check `train:` keys against the trainer's argument dataclass; map legacy names; coerce types;
    check numbers. Problems name each key as the user wrote it (a legacy name too, so that a `--set` of
    it is blamed on the `--set`)."""
    fields = argument_fields(arguments_class)
    class_name = arguments_class.rpartition(".")[2]
    out: dict[str, Any] = {}
    for key, value in train.items():
        key = key if isinstance(key, str) else str(key)  # `1:` or `null:` as a key: an unknown name
        written = key
        if key in LLMTUNE_TRAIN_KEYS:  # llmtune's own (TrainSection declares and validates them)
            out[key] = value
            continue
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
            if key == "warmup_ratio" and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
            ):
                problems.append(
                    f"train.warmup_ratio: a ratio in [0, 1) of the total steps, got {shown_repr(value)}"
                )
                continue
            extra = " (a float below 1 is a ratio of the total steps)" if key == "warmup_ratio" else ""
            notes.append(
                f"train.{key} is called train.{new} in transformers 5; using {new}: {shown(value)}{extra}."
            )
            key = new
        if key not in fields:
            problems.append(
                f"train.{shown(key)}: unknown key{did_you_mean(key[:200], fields)} (not a {class_name} argument)"
            )
            continue
        out[key] = _coerce_train_value(key, written, value, fields[key], problems)
    return out


# ------------------------------------------------------------------------------------ the field table
def argument_fields(dotted: str) -> dict[str, Any]:
    """{field name: annotation spec} of the init fields of the argument dataclass `dotted`
    (e.g. "trl.SFTConfig"), from the cache when these versions were seen before."""
    cache = llmtune_home() / "cache" / "train-arguments" / f"{dotted}-{_versions()}.json"
    try:
        return json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # missing, damaged or tampered with: read it again
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
@functools.lru_cache(maxsize=256)
def _adapter(spec_json: str) -> TypeAdapter:
    # allow_inf_nan=False: "nan" or "inf" given as text (`--set train.learning_rate=nan`) is not a number
    # any trainer setting means; the .nan/.inf YAML floats are caught before, in every section alike.
    return TypeAdapter(_annotation(json.loads(spec_json)), config=ConfigDict(allow_inf_nan=False))


def _coerce_train_value(key: str, written: str, value: Any, spec: Any, problems: list[str]) -> Any:
    if spec == "any":
        return value
    try:
        result = _adapter(json.dumps(spec, sort_keys=True)).validate_python(value)
    except ValidationError as exc:
        finite = any(e["type"] == "finite_number" for e in exc.errors())
        expected = "a finite number" if finite else _describe_type(spec)
        problems.append(f"train.{written}: expected {expected}, got {shown_repr(value)}")
        return value
    except Exception:  # an annotation pydantic cannot build a validator for: leave it to TrainingArguments
        return value
    allowed = _enum_values(spec)
    if allowed is not None and isinstance(value, str) and value not in allowed:
        problems.append(
            f"train.{written}: {shown_repr(value)} is not one of {', '.join(map(str, allowed))}"
            f"{did_you_mean(value, allowed)}"
        )
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        problem = _number_problem(key, result)
        if problem:
            problems.append(f"train.{written}: {problem}, got {shown_repr(value)}")
    # A string that the field reads as a number or boolean ("1e-4", "yes") is passed on converted;
    # anything else is kept as the user wrote it (an enum member stays its string).
    if isinstance(value, str) and isinstance(result, (int, float)):
        return result
    return value


def _number_problem(key: str, value: float) -> str | None:
    """What is wrong with the number `value` for trainer key `key`, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "expected a finite number"
    rule = NUMBER_RULES.get(key)
    if rule is not None and not rule[1](value):
        return f"must be {rule[0]}"
    if isinstance(value, int) and key not in _OWN_UPPER_BOUND and abs(value) > INT_LIMIT:
        return f"too large; at most {INT_LIMIT:,} (2**31 - 1)"
    return None


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
