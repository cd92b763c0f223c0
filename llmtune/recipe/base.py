"""What every recipe section shares: unknown keys are errors, a one-or-many list type, input paths, and
the base of every command's recipe."""

from __future__ import annotations

import typing
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr

# Marks a string field as a path to an input on disk (resolved against the recipe file's folder).
INPUT_PATH = "input_path"
InputPath = Annotated[str, Field(json_schema_extra={INPUT_PATH: True})]

T = TypeVar("T")


def _one_as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# A list that may be written as one string: `train_files: a.jsonl` means [a.jsonl].
OneOrMany = Annotated[list[T], BeforeValidator(_one_as_list)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
    # Names users bring from other tools → ours; used only to suggest the right key.
    key_aliases: ClassVar[dict[str, str]] = {}


class Recipe(Section):
    """Base of every command's recipe. `train_arguments` names the dataclass `train:` is checked against."""

    train_arguments: ClassVar[str] = "transformers.TrainingArguments"
    _source: str = PrivateAttr("<recipe>")
    _notes: list[str] = PrivateAttr(default_factory=list)
    _given_paths: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        """The recipe file as the user named it (for messages)."""
        return self._source

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
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def submodel(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation such as `X`, `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = submodel(arg)
        if found is not None:
            return found
    return None


def is_input_path(field) -> bool:
    """Whether a pydantic field holds input paths (InputPath, or a list of them)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if extra.get(INPUT_PATH):
        return True
    for meta in field.metadata:
        meta_extra = getattr(meta, "json_schema_extra", None)
        if isinstance(meta_extra, dict) and meta_extra.get(INPUT_PATH):
            return True
    for arg in typing.get_args(field.annotation):  # list[InputPath]
        for meta in getattr(arg, "__metadata__", ()):
            meta_extra = getattr(meta, "json_schema_extra", None)
            if isinstance(meta_extra, dict) and meta_extra.get(INPUT_PATH):
                return True
    return False
