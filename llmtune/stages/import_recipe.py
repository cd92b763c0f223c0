"""`llmtune import-recipe`: a LLaMA-Factory training YAML → an llmtune recipe file.

    llmtune import-recipe examples/train_lora/llama3_lora_sft.yaml --out recipe.yaml
    llmtune import-recipe lf.yaml --out -            # print it instead

Read top to bottom: the LLaMA-Factory YAML (bounded, as a recipe is) → its types checked → `stage` → the
command → its dataset_info.json found (dataset_dir, else `data` in the current folder, beside the YAML or
above it: LLaMA-Factory's examples run from its repository root) → the mapping (recipe/llamafactory.py) →
the result validated with llmtune's own loader, as the command it is for → written to a new file (never
over an existing one) → the command that runs it.

A dataset that cannot be found does not stop the import: everything else converts, the train_files entry
is a `TODO-dataset-NAME` placeholder under a loud comment, and a warning says so (the recipe still loads,
and its first run stops at the missing file, naming it).
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from llmtune.errors import LlmtuneError
from llmtune.recipe import llamafactory as lf

log = logging.getLogger("llmtune")
MAX_DATASET_INFO_BYTES = 16 * 1024 * 1024


@dataclass
class Imported:
    text: str
    command: str
    warnings: list[str]
    run: str  # the command line that trains it


def run(source: str, out: str, dataset_dir: str | None = None) -> Imported:
    """Convert `source`; write it to `out` (a new file) unless `out` is "-"; return what was made."""
    source_path = Path(os.path.expanduser(source))
    to_stdout = out == "-"
    out_path = None if to_stdout else Path(os.path.abspath(os.path.expanduser(out)))
    if out_path is not None:
        _check_new_file(out_path, out)

    raw, lines = _read(source_path)

    def where(key: str) -> str:
        line = lines.get((key,)) if key else None
        return f"LLaMA-Factory recipe {source}" + (f" line {line}" if line else "")

    lf.check_types(raw, where)
    command = lf.command_for(raw, where)
    catalog, catalog_note = _catalog(raw, source_path, dataset_dir, where)

    from llmtune.recipe import RECIPES
    from llmtune.recipe.train_keys import argument_fields

    recipe_class = RECIPES[command]
    conversion = lf.convert(
        raw,
        command=command,
        catalog=catalog,
        train_fields=argument_fields(recipe_class.train_arguments),
        place=lf.relative_or_absolute(out_path.parent if out_path else None),
        find_path=lambda p: _find_path(p, source_path),
        use_modelscope=os.environ.get("USE_MODELSCOPE_HUB", "").lower() in ("1", "true"),
        where=where,
    )
    if catalog is not None and catalog_note:
        log.info("%s", catalog_note)
    elif catalog_note:
        conversion.warnings.insert(0, catalog_note)
    shown_out = out if not to_stdout else "recipe.yaml"
    run_line = f"llmtune {command} {shlex.quote(shown_out)}"
    header = [
        run_line,
        "",
        f"Imported from the LLaMA-Factory recipe {source} by `llmtune import-recipe`.",
        "Keys without an llmtune equivalent are listed at the end, each with why.",
    ]
    text = conversion.render(header)
    _validate(text, recipe_class, out_path, shown_out)
    if out_path is not None:
        from llmtune.files import write_new_file

        try:
            write_new_file(out_path, text)
        except FileExistsError:
            _refuse_existing(out)
        except OSError as exc:
            raise LlmtuneError(f"--out {out}: cannot write it: {exc.strerror or exc}.") from None
    return Imported(text=text, command=command, warnings=conversion.warnings, run=run_line)


def _check_new_file(path: Path, shown: str) -> None:
    if path.exists() or path.is_symlink():
        _refuse_existing(shown)
    if not path.parent.is_dir():
        raise LlmtuneError(f"--out {shown}: the folder {path.parent} does not exist; create it first.")


def _refuse_existing(shown: str) -> None:
    raise LlmtuneError(
        f"--out {shown} already exists; llmtune never replaces a file. Choose another name, or move the "
        "old file away first."
    )


def _read(path: Path) -> tuple[dict, dict]:
    """The LLaMA-Factory YAML as a mapping (YAML 1.2, bounded like a recipe), and each key's line."""
    from llmtune.recipe.yaml12 import load_yaml_file_with_lines

    data, lines = load_yaml_file_with_lines(
        path,
        "LLaMA-Factory recipe",
        "a mapping of keys (stage, model_name_or_path, dataset, ...), a LLaMA-Factory training recipe",
    )
    if not data:
        raise LlmtuneError(
            f"LLaMA-Factory recipe {path} is an empty mapping; a LLaMA-Factory training recipe has keys "
            "(stage, model_name_or_path, dataset, ...)."
        )
    if "model" in data and "train" in data and "stage" not in data:
        raise LlmtuneError(
            f"LLaMA-Factory recipe {path} looks like an llmtune recipe already (model:, train: sections)."
        )
    return data, lines


def _catalog(raw: dict, source: Path, dataset_dir: str | None, where) -> tuple[lf.DatasetCatalog | None, str]:
    """The dataset_info.json the recipe's names are defined in, and a note on where it was found."""
    given = dataset_dir or raw.get("dataset_dir")
    if given == "ONLINE":
        return lf.DatasetCatalog(info={}, folder=Path.cwd(), online=True), ""
    if given and given.startswith("REMOTE:"):
        return (
            None,
            f"dataset_dir {given}: a dataset_info.json on the hub is not read; datasets are left as TODO",
        )
    name = given or "data"
    candidates = [Path.cwd() / name]
    if not Path(os.path.expanduser(name)).is_absolute():
        candidates += [
            folder / name for folder in [source.resolve().parent, *source.resolve().parent.parents]
        ]
    else:
        candidates = [Path(os.path.expanduser(name))]
    for folder in dict.fromkeys(candidates):
        info_file = folder / "dataset_info.json"
        if info_file.is_file():
            return lf.DatasetCatalog(info=_load_info(info_file), folder=folder.resolve()), (
                f"datasets from {info_file}"
            )
    if not raw.get("dataset"):
        return None, ""
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates[:3]))
    return None, (
        f"no dataset_info.json found (looked in {looked} and the folders above the recipe); pass "
        "--dataset-dir LLaMA-Factory/data to say where it is"
    )


def _load_info(path: Path) -> dict:
    from llmtune.recipe.yaml12 import load_json_file

    info = load_json_file(path, "dataset_info.json", MAX_DATASET_INFO_BYTES)
    if not isinstance(info, dict):
        raise LlmtuneError(f"{path} is not a mapping of dataset names (it is a {type(info).__name__}).")
    return info


def _find_path(value: str, source: Path) -> Path | None:
    """A relative path as LLaMA-Factory opens it (from its working folder, usually its repository root),
    looked for in the current folder, then beside the recipe and above it; None when it is not a local path."""
    path = Path(os.path.expanduser(value))
    if path.is_absolute():
        return path if path.exists() else None
    for folder in [Path.cwd(), source.resolve().parent, *source.resolve().parent.parents]:
        if (folder / path).exists():
            return (folder / path).resolve()
    return None


def _validate(text: str, recipe_class, out_path: Path | None, shown_out: str) -> None:
    """The imported recipe must load as its command's recipe; a problem is the user's to see (a value
    llmtune bounds more strictly than LLaMA-Factory, say), named with the key."""
    from llmtune.recipe.loading import recipe_from_mapping
    from llmtune.recipe.yaml12 import load_yaml

    base = out_path.parent if out_path else Path.cwd()
    try:
        recipe_from_mapping(load_yaml(text), recipe_class, shown_out, base)
    except LlmtuneError as exc:
        raise LlmtuneError(
            f"the imported recipe does not validate, so nothing was written: {exc.render()}",
            hint="Fix the LLaMA-Factory value named above (or import with --out - and edit the result).",
        ) from None
