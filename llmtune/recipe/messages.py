"""pydantic's validation errors as llmtune's messages: one line per problem, naming `section.key`, what was
given and what is expected, with a "did you mean" for unknown keys, and where each value came from."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from llmtune.errors import did_you_mean
from llmtune.recipe.base import submodel

_EXPECTED_TYPES = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
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
        key = ".".join(str(p) for p in loc)
        kind = err["type"]
        given = err.get("input")
        if kind == "extra_forbidden":
            name = str(loc[-1])
            allowed, aliases = _fields_at(recipe_class, loc[:-1])
            where = "unknown section" if len(loc) == 1 else "unknown key"
            lines.append(f"{key}: {where}{did_you_mean(name, allowed, aliases)}")
        elif kind == "missing":
            lines.append(f"{key}: missing (required)")
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",")]
            lines.append(
                f"{key}: expected one of {expected}, got {given!r}{did_you_mean(str(given), choices)}"
            )
        elif kind in _EXPECTED_TYPES:
            lines.append(f"{key}: expected {_EXPECTED_TYPES[kind]}, got {given!r}")
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            lines.append(f"{key}: {err['msg'].lower()}, got {given!r}")
        elif kind in ("too_short", "too_long"):
            lines.append(f"{key}: {err['msg'].lower()}")
        elif kind == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg}" if key else msg)
        else:
            lines.append(f"{key}: {err['msg']}, got {given!r}" if key else err["msg"])
    return lines


def format_problems(problems: list[str], source: str, override_keys: dict[str, str]) -> str:
    def origin(line: str) -> str:
        key = line.split(":", 1)[0]
        for override_key, item in override_keys.items():
            if key == override_key or key.startswith(override_key + "."):
                return f"(from --set {item})"
        return f"({source})"

    lines = [f"{p} {origin(p)}" for p in dict.fromkeys(problems)]
    return "invalid recipe:" + ("\n  " if len(lines) > 1 else " ") + "\n  ".join(lines)
