"""pydantic's validation errors as llmtune's messages: one line per problem, naming `section.key`, what was
given (cut to a readable length) and what is expected, with a "did you mean" for unknown keys, and where
each value came from: the recipe file's line, or the `--set` that gave it."""

from __future__ import annotations

import re
import shlex

from pydantic import BaseModel, ValidationError

from llmtune.errors import did_you_mean
from llmtune.recipe.base import submodel
from llmtune.recipe.yaml12 import Lines, shown, shown_repr

_EXPECTED_TYPES = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
}


def _fields_at(recipe_class: type[BaseModel], loc: tuple) -> tuple[list[str], dict[str, str]]:
    """The field names allowed at `loc` and that section's key aliases (for "did you mean")."""
    model: type[BaseModel] | None = recipe_class
    for part in loc:
        if model is None or not isinstance(part, str):
            break
        field = model.model_fields.get(part)
        if field is None:
            break
        model = submodel(field.annotation)
    if model is None:
        return [], {}
    return list(model.model_fields), getattr(model, "key_aliases", {})


def describe_validation_error(exc: ValidationError, recipe_class: type[BaseModel]) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(
            p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "json-or")))
        )
        # pydantic reports union members as extra loc parts ("list[str]", "literal['all-linear']"): drop them
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float"))))
        key = shown(".".join(str(p) for p in loc))  # a key, too, may be a megabyte long
        kind = err["type"]
        given = shown_repr(err.get("input"))
        if kind == "extra_forbidden":
            name = str(loc[-1])[:200]
            allowed, aliases = _fields_at(recipe_class, loc[:-1])
            where = "unknown section" if len(loc) == 1 else "unknown key"
            lines.append(f"{key}: {where}{did_you_mean(name, allowed, aliases)}")
        elif kind == "missing":
            lines.append(f"{key}: missing (required)")
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",")]
            lines.append(
                f"{key}: expected one of {expected}, got {given}"
                f"{did_you_mean(str(err.get('input'))[:200], choices)}"
            )
        elif kind in _EXPECTED_TYPES:
            lines.append(f"{key}: expected {_EXPECTED_TYPES[kind]}, got {given}")
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            lines.append(f"{key}: {err['msg'].lower()}, got {given}")
        elif kind in ("too_short", "too_long"):
            lines.append(f"{key}: {err['msg'].lower()}")
        elif kind == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg}" if key else msg)
        else:
            lines.append(f"{key}: {err['msg']}, got {given}" if key else err["msg"])
    return lines


_KEY = re.compile(r"([\w\-]+(?:\.[\w\-]+)*): ")


def format_problems(
    problems: list[str], source: str, override_keys: dict[str, str], lines: Lines | None = None
) -> str:
    """One message for all `problems` ("section.key: what is wrong" each), every line saying where the
    value came from: `--set` (an override of the key or of a section holding it), else the recipe file
    and the line the key was written on; a rule about a section that a `--set` changed names both."""
    lines = lines or {}

    def origin(line: str) -> str:
        match = _KEY.match(line)
        key = match.group(1) if match else None
        if key is not None:
            for override_key, item in override_keys.items():
                if key == override_key or key.startswith(override_key + "."):
                    return f"(from --set {shown(item)})"
            involved = [i for k, i in override_keys.items() if k.startswith(key + ".")]
        else:  # a rule across sections: the --set keys it names
            involved = [
                i for k, i in override_keys.items() if re.search(rf"(?<![\w.]){re.escape(k)}\b", line)
            ]
        where = source + _line_of(key, lines)
        if involved:
            return f"({where}, with --set {', --set '.join(shown(i) for i in involved)})"
        return f"({where})"

    shown_lines = [f"{p} {origin(p)}" for p in dict.fromkeys(problems)]
    return "invalid recipe:" + ("\n  " if len(shown_lines) > 1 else " ") + "\n  ".join(shown_lines)


def _line_of(key: str | None, lines: Lines) -> str:
    """' line N' for the key (or the nearest enclosing key written in the file), else ''."""
    if not key:
        return ""
    parts = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    for end in range(len(parts), 0, -1):
        if parts[:end] in lines:
            return f" line {lines[parts[:end]]}"
    return ""


def llamafactory_message(raw: object, source: str) -> str | None:
    """The error for a flat LLaMA-Factory recipe given where an llmtune recipe is expected (every key of it
    would be an "unknown section"), or None for any other recipe."""
    from llmtune.recipe.llamafactory import MARKER_KEYS, looks_like_llamafactory

    if not looks_like_llamafactory(raw):
        return None
    keys = [key for key in MARKER_KEYS if key in raw]  # type: ignore[operator]
    return (
        f"recipe {source} looks like a LLaMA-Factory recipe (top-level {', '.join(keys)}), not an llmtune "
        "one (model:, data:, peft:, train: sections). Convert it with: "
        f"llmtune import-recipe {shlex.quote(source)} --out recipe.yaml"
    )
