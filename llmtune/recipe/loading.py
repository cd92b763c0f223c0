"""A recipe file → a validated recipe: `--set` overrides merged into the raw mapping before validation (so
every error comes from one place), relative input paths resolved, `train:` keys checked, problems reported
together."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llmtune.errors import LlmtuneError, did_you_mean
from llmtune.recipe.base import Recipe, is_input_path, submodel
from llmtune.recipe.eval import EvalRecipe, EvalSection
from llmtune.recipe.messages import describe_validation_error, format_problems
from llmtune.recipe.model import ModelSection
from llmtune.recipe.recipes import DpoRecipe, NerRecipe, PretrainRecipe, SftRecipe
from llmtune.recipe.train_keys import check_train_keys
from llmtune.recipe.yaml12 import load_yaml, load_yaml_file

# The recipe class of each command that reads one.
RECIPES: dict[str, type[Recipe]] = {
    "pretrain": PretrainRecipe,
    "sft": SftRecipe,
    "dpo": DpoRecipe,
    "lora-ner": NerRecipe,
    "eval": EvalRecipe,
}


def load_recipe(
    path: str | os.PathLike, recipe_class: type[Recipe] | str, overrides: list[str] | None = None
) -> Recipe:
    """Read `path`, merge `overrides` ("section.key=value", value parsed as YAML), validate, and return
    the typed recipe (`recipe_class` may be a command name, e.g. "sft"). Every problem is raised as one
    `LlmtuneError` listing all the bad keys."""
    if isinstance(recipe_class, str):
        recipe_class = RECIPES[recipe_class]
    raw = load_yaml_file(Path(path))
    return recipe_from_mapping(raw, recipe_class, str(path), Path(path).resolve().parent, overrides)


def recipe_kind(path: str | os.PathLike, allowed: tuple[str, ...] = tuple(RECIPES)) -> str:
    """The command a recipe file is written for, told by its sections (for the commands that take any
    training recipe: `data check`, `plan`); one outside `allowed` is an error saying which it is."""
    raw = load_yaml_file(path)
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    if "dpo" in raw:
        kind = "dpo"
    elif "ner" in raw or {"test_files", "tag_column", "scheme"} & set(data):
        kind = "lora-ner"
    elif {"perplexity", "mcq", "generate", "eval"} & set(raw):
        kind = "eval"
    elif {"block_size", "txt_document", "text_field", "clean"} & set(data) or "from_config" in model:
        kind = "pretrain"
    else:
        kind = "sft"
    if allowed and kind not in allowed:
        raise LlmtuneError(
            f"recipe {path} is a {kind} recipe (by its sections); this command takes {', '.join(allowed)} "
            "recipes."
        )
    return kind


def recipe_from_mapping(
    raw: dict[str, Any],
    recipe_class: type[Recipe],
    source: str,
    base_dir: Path,
    overrides: list[str] | None = None,
) -> Recipe:
    """`load_recipe` for a mapping built in code (e.g. from command-line flags); paths relative to `base_dir`."""
    given: dict[str, str] = {}
    _resolve_input_paths(raw, recipe_class, base_dir, given)
    override_keys: dict[str, str] = {}
    for item in overrides or []:
        key, value = _parse_override(item)
        override_keys[key] = item
        _check_override_path(key, recipe_class, item)
        value = _absolute_override_path(key, value, recipe_class, given)
        _set_dotted(raw, key, value)

    notes: list[str] = []
    problems: list[str] = []
    if isinstance(raw.get("train"), dict):
        raw["train"] = check_train_keys(raw["train"], recipe_class.train_arguments, notes, problems)
    try:
        recipe = recipe_class.model_validate(raw)
    except ValidationError as exc:
        problems.extend(describe_validation_error(exc, recipe_class))
    if problems:
        raise LlmtuneError(format_problems(problems, source, override_keys))
    recipe._source = source
    recipe._notes = notes
    recipe._given_paths = given
    return recipe


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise LlmtuneError(f"--set {item!r}: expected section.key=value, e.g. --set train.learning_rate=1e-4")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise LlmtuneError(f"--set {item!r}: expected section.key=value, e.g. --set train.learning_rate=1e-4")
    try:
        value = load_yaml(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not valid YAML on its own: take it as a plain string, the schema will judge it
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _section_field(model_class: type[BaseModel], name: str):
    """The pydantic field `name` of `model_class`, or None."""
    return model_class.model_fields.get(name)


def _is_local_looking(value: str) -> bool:
    return value.startswith(("./", "../", "/", "~")) or value in (".", "..")


def _resolve_one(value: Any, base_dir: Path, given: dict[str, str]) -> Any:
    if not isinstance(value, str) or not value:
        return value
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return expanded
    resolved = os.path.normpath(str(base_dir / expanded))
    given[resolved] = value
    return resolved


def _resolve_input_paths(
    raw: dict[str, Any], recipe_class: type[BaseModel], base_dir: Path, given: dict
) -> None:
    """Make relative input paths written in the recipe file absolute, against the recipe's folder."""
    for section_name, section_value in raw.items():
        field = _section_field(recipe_class, section_name)
        section_class = submodel(field.annotation) if field else None
        if section_class is None or not isinstance(section_value, dict):
            continue
        for key, value in section_value.items():
            sub = _section_field(section_class, key)
            if sub is None:
                continue
            if is_input_path(sub):
                if isinstance(value, list):
                    section_value[key] = [_resolve_one(v, base_dir, given) for v in value]
                else:
                    section_value[key] = _resolve_one(value, base_dir, given)
        # model.name_or_path / model.tokenizer may be hub ids: a relative value is a path only when it
        # exists beside the recipe or is written like one (./x, ../x).
        if section_class is ModelSection:
            for key in ("name_or_path", "tokenizer", "gguf_file"):
                value = section_value.get(key)
                if isinstance(value, str) and value:
                    candidate = base_dir / os.path.expanduser(value)
                    if _is_local_looking(value) or candidate.exists():
                        section_value[key] = _resolve_one(value, base_dir, given)
        if section_class is EvalSection and isinstance(section_value.get("compare"), list):
            section_value["compare"] = [
                _resolve_one(v, base_dir, given)
                if isinstance(v, str)
                and (_is_local_looking(v) or (base_dir / os.path.expanduser(v)).exists())
                else v
                for v in section_value["compare"]
            ]


def _check_override_path(key: str, recipe_class: type[BaseModel], item: str) -> None:
    """An override must name a real section (the key inside is judged later, with the others)."""
    section = key.split(".")[0]
    if section not in recipe_class.model_fields:
        raise LlmtuneError(
            f"--set {item!r}: unknown section '{section}'{did_you_mean(section, recipe_class.model_fields)} "
            f"(sections: {', '.join(recipe_class.model_fields)})"
        )


def _absolute_override_path(key: str, value: Any, recipe_class: type[BaseModel], given: dict) -> Any:
    parts = key.split(".")
    if len(parts) != 2:
        return value
    field = _section_field(recipe_class, parts[0])
    section_class = submodel(field.annotation) if field else None
    sub = _section_field(section_class, parts[1]) if section_class else None
    # Model names (and the models an eval compares) may be hub ids: a path only when it looks like one.
    is_model_path = (
        section_class is ModelSection and parts[1] in ("name_or_path", "tokenizer", "gguf_file")
    ) or (section_class is EvalSection and parts[1] == "compare")
    if sub is None or not (is_input_path(sub) or is_model_path):
        return value
    cwd = Path.cwd()

    def absolute(v: Any) -> Any:
        if not isinstance(v, str) or not v:
            return v
        if is_model_path and not (_is_local_looking(v) or (cwd / v).exists()):
            return v  # a hub id or demo alias
        return _resolve_one(v, cwd, given)

    return [absolute(v) for v in value] if isinstance(value, list) else absolute(value)
