"""What every recipe section shares: unknown keys are errors, numbers are finite and of a sane size, a
one-or-many list type, input and output paths, and the base of every command's recipe."""

from __future__ import annotations

import typing
from typing import Annotated, Any, ClassVar, TypeVar

import annotated_types
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
)

# Marks a string field as a path to an input on disk (resolved against the recipe file's folder). The
# value says what the path must be when it exists: "any" (a file, a folder or a glob), "file", "folder".
INPUT_PATH = "input_path"
InputPath = Annotated[str, Field(json_schema_extra={INPUT_PATH: "any"})]
InputFile = Annotated[str, Field(json_schema_extra={INPUT_PATH: "file"})]
InputFolder = Annotated[str, Field(json_schema_extra={INPUT_PATH: "folder"})]
# Marks a string field as a path llmtune writes to (relative to the current folder; `~` expanded).
OUTPUT_PATH = "output_path"
OutputPath = Annotated[str, Field(json_schema_extra={OUTPUT_PATH: True})]

# The largest integer a recipe key takes unless the key sets its own bound: sizes, counts and steps end
# up in C ints (torch, tokenizers, numpy), where a larger value overflows deep in a library.
INT_LIMIT = 2**31 - 1
# Seeds: numpy takes 0 .. 2**32 - 1 (HF's set_seed seeds numpy, random and torch with the same value).
SEED_LIMIT = 2**32 - 1

T = TypeVar("T")


def _one_as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# A list that may be written as one string: `train_files: a.jsonl` means [a.jsonl].
OneOrMany = Annotated[list[T], BeforeValidator(_one_as_list)]


class Section(BaseModel):
    # allow_inf_nan=False: `.nan` or `.inf` is never a meaningful setting, and would reach the trainer
    # (a NaN learning rate trains a model into NaNs without an error).
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)
    # Names users bring from other tools → ours; used only to suggest the right key.
    key_aliases: ClassVar[dict[str, str]] = {}

    @field_validator("*", mode="after")
    @classmethod
    def _integers_fit(cls, value: Any, info: ValidationInfo) -> Any:
        """Every integer (alone or in a list) is at most INT_LIMIT in size, unless its field declares
        its own upper bound (a seed, a port)."""
        field = cls.model_fields.get(info.field_name or "")
        if field is None or any(
            isinstance(m, (annotated_types.Le, annotated_types.Lt)) for m in field.metadata
        ):
            return value
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > INT_LIMIT:
                raise ValueError(f"{_short_int(item)} is too large; at most {INT_LIMIT:,} (2**31 - 1)")
        return value


def _short_int(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


# A seed as numpy, random and torch all take it.
Seed = Annotated[int, Field(ge=0, le=SEED_LIMIT)]


class Recipe(Section):
    """Base of every command's recipe. `train_arguments` names the dataclass `train:` is checked against."""

    train_arguments: ClassVar[str] = "transformers.TrainingArguments"
    _source: str = PrivateAttr("<recipe>")
    _notes: list[str] = PrivateAttr(default_factory=list)
    _overrides: list[str] = PrivateAttr(default_factory=list)  # the --set items it was loaded with
    _given_paths: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        """The recipe file as the user named it (for messages)."""
        return self._source

    @property
    def overrides(self) -> list[str]:
        return self._overrides

    @property
    def notes(self) -> list[str]:
        """Notes made while loading (legacy keys mapped, and so on), to print once."""
        return self._notes

    def describe_path(self, path: str) -> str:
        """A path for an error message: as the user gave it, and where it was looked for."""
        given = self._given_paths.get(path)
        if given and given != path:
            return f"'{given}' (looked for at {path})"
        return f"'{path}'"

    def to_yaml(self) -> str:
        """The recipe with its defaults filled in, as a recipe file that loads back to this recipe (the
        run folder's recipe.yaml reproduces the run)."""
        from llmtune.recipe.yaml12 import dump_yaml

        return dump_yaml(self.model_dump(mode="json"))


def submodel(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation such as `X`, `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = submodel(arg)
        if found is not None:
            return found
    return None


def _marker(field, name: str) -> Any:
    """The value of the schema marker `name` on a pydantic field (set on it, on its Annotated type, or
    on the Annotated type inside `X | None` / `list[X]`), or None."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if extra.get(name):
        return extra[name]
    for meta in field.metadata:
        meta_extra = getattr(meta, "json_schema_extra", None)
        if isinstance(meta_extra, dict) and meta_extra.get(name):
            return meta_extra[name]
    for arg in typing.get_args(field.annotation):  # list[InputPath], InputPath | None
        for candidate in (arg, *typing.get_args(arg)):
            for meta in getattr(candidate, "__metadata__", ()):
                meta_extra = getattr(meta, "json_schema_extra", None)
                if isinstance(meta_extra, dict) and meta_extra.get(name):
                    return meta_extra[name]
    return None


def is_input_path(field) -> bool:
    """Whether a pydantic field holds input paths (InputPath, InputFile, InputFolder, or a list of them)."""
    return bool(_marker(field, INPUT_PATH))


def input_path_kind(field) -> str | None:
    """ "any", "file" or "folder" for an input-path field; None for any other field."""
    kind = _marker(field, INPUT_PATH)
    return (kind if isinstance(kind, str) else "any") if kind else None


def is_output_path(field) -> bool:
    """Whether a pydantic field holds a path llmtune writes to (OutputPath)."""
    return bool(_marker(field, OUTPUT_PATH))
