"""A recipe file → a validated recipe: `--set` overrides merged into the raw mapping before validation (so
every error comes from one place), relative input paths resolved and `~` expanded, `train:` keys checked,
numbers checked, problems reported together, each blamed on the recipe line or the `--set` it came from."""

from __future__ import annotations

import glob
import math
import os
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llmtune.errors import LlmtuneError, did_you_mean
from llmtune.recipe.alignment import GrpoRecipe, RewardRecipe, RlooRecipe
from llmtune.recipe.base import Recipe, input_path_kind, is_input_path, is_output_path, submodel
from llmtune.recipe.compression import DistillRecipe, PruneRecipe
from llmtune.recipe.eval import EvalRecipe, EvalSection
from llmtune.recipe.export import ExportRecipe
from llmtune.recipe.hub_dataset import BadReference, looks_local, parse_reference, reference_from_mapping
from llmtune.recipe.hub_dataset import is_reference as is_hub_reference
from llmtune.recipe.messages import describe_validation_error, format_problems, llamafactory_message
from llmtune.recipe.model import ModelSection
from llmtune.recipe.recipes import DpoRecipe, NerRecipe, PretrainRecipe, SftRecipe
from llmtune.recipe.train_keys import check_train_keys
from llmtune.recipe.training import TrainSection
from llmtune.recipe.yaml12 import (
    Lines,
    YamlLimitError,
    blocking_file,
    file_kind,
    load_yaml,
    load_yaml_file,
    load_yaml_file_with_lines,
    shown,
    shown_repr,
)

# The recipe class of each command that reads one.
RECIPES: dict[str, type[Recipe]] = {
    "pretrain": PretrainRecipe,
    "sft": SftRecipe,
    "dpo": DpoRecipe,
    "reward": RewardRecipe,
    "grpo": GrpoRecipe,
    "rloo": RlooRecipe,
    "lora-ner": NerRecipe,
    "prune": PruneRecipe,
    "distill": DistillRecipe,
    "eval": EvalRecipe,
    "export": ExportRecipe,
}


def load_recipe(
    path: str | os.PathLike, recipe_class: type[Recipe] | str, overrides: list[str] | None = None
) -> Recipe:
    """Read `path`, merge `overrides` ("section.key=value", value parsed as YAML), validate, and return
    the typed recipe (`recipe_class` may be a command name, e.g. "sft"). Every problem is raised as one
    `LlmtuneError` listing all the bad keys."""
    if isinstance(recipe_class, str):
        recipe_class = RECIPES[recipe_class]
    raw, lines = load_yaml_file_with_lines(Path(path))
    base_dir = Path(os.path.expanduser(path)).resolve().parent
    return recipe_from_mapping(raw, recipe_class, str(path), base_dir, overrides, lines=lines)


def recipe_kind(path: str | os.PathLike, allowed: tuple[str, ...] = tuple(RECIPES)) -> str:
    """The command a recipe file is written for, told by its sections (for the commands that take any
    training recipe: `data check`, `plan`); one outside `allowed` is an error saying which it is."""
    raw = load_yaml_file(path)
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    if "export" in raw:
        kind = "export"
    elif "prune" in raw:
        kind = "prune"
    elif "teacher" in raw or "distill" in raw:
        kind = "distill"
    elif "dpo" in raw:
        kind = "dpo"
    elif "reward" in raw:
        kind = "reward"
    elif "rewards" in raw or "rl" in raw:
        kind = "grpo"
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
            f"recipe {path} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} recipe (by its sections); this command takes {', '.join(allowed)} "
            "recipes."
        )
    return kind


def recipe_from_mapping(
    raw: dict[str, Any],
    recipe_class: type[Recipe],
    source: str,
    base_dir: Path,
    overrides: list[str] | None = None,
    *,
    lines: Lines | None = None,
) -> Recipe:
    """`load_recipe` for a mapping built in code (e.g. from command-line flags); paths relative to `base_dir`.
    `lines` (where each key was written, from the file) lets messages name the line."""
    flat = llamafactory_message(raw, source)
    if flat is not None:  # every key would be an "unknown section"; say what the file is instead
        raise LlmtuneError(flat)
    given: dict[str, str] = {}
    variant = getattr(recipe_class, "variant", None)
    if variant is not None:  # one command, two shapes of data section (distill: text or chat)
        recipe_class = variant(raw, list(overrides or []))
    reference_problems: list[str] = []
    _resolve_input_paths(raw, recipe_class, base_dir, given, reference_problems)
    override_keys: dict[str, str] = {}
    for item in overrides or []:
        key, value = _parse_override(item)
        override_keys[key] = item
        _check_override_path(key, recipe_class, item)
        value = _absolute_override_path(key, value, recipe_class, given, reference_problems)
        _set_dotted(raw, key, value)

    _expand_output_paths(raw, recipe_class)

    notes: list[str] = []
    # Numbers no setting can take, anywhere (free-form keys such as model.from_config and
    # train.lr_scheduler_kwargs too). A non-finite float is reported here and not again by the type
    # checks below; a huge integer only where those checks (which know the key's own bound) are silent.
    non_finite, huge = _impossible_numbers(raw)
    problems: list[str] = non_finite + reference_problems + _path_problems(raw, recipe_class, given)
    reported = {_key_of(line) for line in non_finite}
    later: list[str] = []
    _move_legacy_train_keys(raw, recipe_class, notes, later)
    if isinstance(raw.get("train"), dict):
        raw["train"] = check_train_keys(raw["train"], recipe_class.train_arguments, notes, later)
    try:
        recipe = recipe_class.model_validate(raw)
    except ValidationError as exc:
        later.extend(describe_validation_error(exc, recipe_class))
    problems += [line for line in later if _key_of(line) not in reported]
    problems += [line for line in huge if _key_of(line) not in {_key_of(other) for other in later}]
    if problems:
        raise LlmtuneError(format_problems(problems, source, override_keys, lines or {}))
    recipe._source = source
    recipe._notes = notes
    recipe._given_paths = given
    recipe._overrides = list(overrides or [])
    return recipe


def _move_legacy_train_keys(
    raw: dict[str, Any], recipe_class: type[Recipe], notes: list, later: list
) -> None:
    """Keys that older tools put among the trainer's arguments and llmtune keeps in another section
    (MedicalGPT's `max_prompt_length` for GRPO is `data.max_prompt_length`): moved there with a note, or
    reported when both places are given."""
    train = raw.get("train")
    if not isinstance(train, dict):
        return
    for old, new in getattr(recipe_class, "moved_train_keys", {}).items():
        if old not in train:
            continue
        section, _, key = new.partition(".")
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            continue
        if key in target:
            later.append(f"train.{old}: also given as {new}; keep only {new}")
            train.pop(old)
            continue
        value = train.pop(old)
        if old == "train_samples" and value == -1:  # MedicalGPT's "all rows"
            notes.append(f"train.{old}: -1 (MedicalGPT's 'all rows') is llmtune's default; dropped")
            continue
        target[key] = value
        notes.append(f"train.{old} (MedicalGPT / older TRL) is {new} in llmtune; used as {new}")


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise LlmtuneError(
            f"--set {shown_repr(item)}: expected section.key=value, e.g. --set train.learning_rate=1e-4"
        )
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise LlmtuneError(
            f"--set {shown_repr(item)}: expected section.key=value, e.g. --set train.learning_rate=1e-4"
        )
    try:
        value = load_yaml(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not valid YAML on its own: take it as a plain string, the schema will judge it
    except YamlLimitError as exc:  # valid YAML, but too big, too deep, an alias bomb, a duplicate key
        raise LlmtuneError(f"--set {shown(item)}: {exc.problem}.") from None
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


def _resolve_input(value: Any, base_dir: Path, given: dict[str, str], where: str, problems: list[str]) -> Any:
    """One input entry made ready for validation: a relative path made absolute against `base_dir`; a hub
    dataset (`hf:...`, `ms:...`, or a `dataset:` mapping) checked and written in its canonical string form,
    a local dataset folder in it made absolute. A problem is added to `problems` as "key: message"."""
    if not is_hub_reference(value):
        return _resolve_one(value, base_dir, given)
    try:
        if isinstance(value, dict):
            ref = reference_from_mapping(value, lambda path: _resolve_one(path, base_dir, given))
        else:
            prefix, rest = value.split(":", 1)
            name = rest.split("?", 1)[0].split("#", 1)[0]
            if looks_local(name):  # hf:./saved-folder
                value = f"{prefix}:{_resolve_one(name, base_dir, given)}{rest[len(name) :]}"
            elif os.path.lexists(base_dir / value):
                problems.append(
                    f"{where}: {value!r} names a hub dataset, and a local file of that name exists too; "
                    f"write './{value}' for the file, or move it"
                )
                return value
            ref = parse_reference(value)
    except BadReference as exc:
        problems.append(f"{where}: {exc}")
        return value if isinstance(value, str) else ""
    return ref.canonical()


def _resolve_input_paths(
    raw: dict[str, Any], recipe_class: type[BaseModel], base_dir: Path, given: dict, problems: list[str]
) -> None:
    """Make relative input paths written in the recipe file absolute, against the recipe's folder, and
    hub dataset entries canonical (problems with them are added to `problems`)."""
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
                where = f"{section_name}.{key}"
                if isinstance(value, list):
                    section_value[key] = [
                        _resolve_input(v, base_dir, given, f"{where}.{i}", problems)
                        for i, v in enumerate(value)
                    ]
                elif isinstance(value, dict) and is_hub_reference(value):  # one mapping: a list of one
                    section_value[key] = [_resolve_input(value, base_dir, given, where, problems)]
                else:
                    section_value[key] = _resolve_input(value, base_dir, given, where, problems)
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


def _absolute_override_path(
    key: str, value: Any, recipe_class: type[BaseModel], given: dict, problems: list[str]
) -> Any:
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

    def absolute(v: Any, where: str = key) -> Any:
        if is_input_path(sub) and is_hub_reference(v):
            return _resolve_input(v, cwd, given, where, problems)
        if not isinstance(v, str) or not v:
            return v
        if is_model_path and not (_is_local_looking(v) or (cwd / v).exists()):
            return v  # a hub id or demo alias
        return _resolve_one(v, cwd, given)

    if isinstance(value, list):
        return [absolute(v, f"{key}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict) and is_input_path(sub) and is_hub_reference(value):
        return [absolute(value)]
    return absolute(value)


# ------------------------------------------------------------------------------------------ checks
# Trainer keys that hold a path (HF expands `~` in output_dir only, and that after llmtune has made the
# run folder: a run would be split between `./~/x` and `$HOME/x`).
TRAIN_PATH_KEYS = ("resume_from_checkpoint", "deepspeed", "fsdp_config", "accelerator_config")
# What a local model path must be: "model" = a folder, or a .gguf file.
_MODEL_PATH_KINDS = {"name_or_path": "model", "tokenizer": "folder", "gguf_file": "file"}


def _sections(raw: dict[str, Any], recipe_class: type[BaseModel]):
    """(section name, its class, its mapping) for every section of `raw` that is a mapping."""
    for section_name, section_value in raw.items():
        field = _section_field(recipe_class, section_name)
        section_class = submodel(field.annotation) if field else None
        if section_class is not None and isinstance(section_value, dict):
            yield section_name, section_class, section_value


def _expand_output_paths(raw: dict[str, Any], recipe_class: type[BaseModel]) -> None:
    """`~` in the paths llmtune writes to, from the file or a --set alike, so that everything after
    loading (and the trainer) sees one folder."""
    for _, section_class, section in _sections(raw, recipe_class):
        for key, value in section.items():
            field = _section_field(section_class, key)
            is_path = (field is not None and is_output_path(field)) or (
                section_class is TrainSection and key in TRAIN_PATH_KEYS
            )
            if is_path and isinstance(value, str):
                section[key] = os.path.expanduser(value)


# No setting anywhere takes an integer beyond int64 (a C long in torch, numpy and the tokenizers);
# declared keys have tighter bounds (base.INT_LIMIT, train_keys.NUMBER_RULES).
_INT64 = 2**63 - 1


def _key_of(problem: str) -> str:
    return problem.split(":", 1)[0]


def _impossible_numbers(raw: Any) -> tuple[list[str], list[str]]:
    """("key: problem" for every NaN or infinite float, the same for every integer beyond int64) in
    `raw`, walked without recursion."""
    found: list[str] = []
    huge: list[str] = []
    stack: list[tuple[str, Any]] = [("", raw)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            found.append(f"{shown(key)}: expected a finite number, got {_yaml_float(value)}")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT64:
            digits = len(str(abs(value)))
            huge.append(
                f"{shown(key)}: a {digits}-digit integer is too large for any setting (at most 2**63 - 1)"
            )
        elif isinstance(value, dict):
            stack.extend((f"{key}.{k}" if key else str(k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{key}.{i}", v) for i, v in reversed(list(enumerate(value))))
    return found, huge


def _yaml_float(value: float) -> str:
    """A non-finite float as YAML writes it."""
    return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")


def _path_problems(raw: dict[str, Any], recipe_class: type[BaseModel], given: dict[str, str]) -> list[str]:
    """Input paths that exist but are the wrong kind of thing: a FIFO or a device (which a reader would
    block on or never finish), a file where a folder is needed or the reverse, a path through a file.
    A path that does not exist is left to the code that reads it (it may be a glob, or reported with
    the other missing inputs)."""
    problems = []
    for section_name, section_class, section in _sections(raw, recipe_class):
        for key, value in section.items():
            field = _section_field(section_class, key)
            if field is None:
                continue
            kind = input_path_kind(field)
            if kind is None and section_class is ModelSection:
                kind = _MODEL_PATH_KINDS.get(key)
            elif kind is None and section_class is EvalSection and key == "compare":
                kind = "any"
            if kind is None:
                continue
            for item in value if isinstance(value, list) else [value]:
                # Local paths are absolute by now; a relative model name is a hub id or a demo alias.
                if not isinstance(item, str) or not os.path.isabs(item):
                    continue
                problem = _path_kind_problem(item, kind)
                if problem:
                    shown_path = given.get(item, item)
                    where = f"'{shown(shown_path)}'" + (
                        f" (looked for at {item})" if shown_path != item else ""
                    )
                    problems.append(f"{section_name}.{key}: {where} {problem}")
    return problems


def _path_kind_problem(path: str, kind: str) -> str | None:
    if glob.has_magic(path):
        return None  # a pattern: the reader expands it
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        blocker = blocking_file(Path(path))
        return f"cannot exist: {blocker} is a file, not a folder" if blocker else "cannot exist"
    except ValueError:
        return "cannot be a path: it contains a NUL byte"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if stat.S_ISDIR(mode):
        return "is a folder; give a file" if kind == "file" else None
    if stat.S_ISREG(mode):
        if kind == "folder":
            return "is a file; give a folder"
        if kind == "model" and not path.endswith(".gguf"):
            return "is a file, not a model folder; give the folder that holds config.json (or a .gguf file)"
        return None
    return f"is not a regular file: it is {file_kind(mode)}; give a file or a folder"
