"""Hub datasets (HuggingFace, ModelScope) and local dataset folders, loaded for the data readers.

A data section names one with `hf:owner/name?split=train[:500]#500` or a `dataset:` mapping (see
llmtune/recipe/hub_dataset.py). Loading goes through `datasets`: `load_dataset` for a hub id or a dataset
repository folder, `load_from_disk` for a folder written by `save_to_disk`.

For map-style training the selected rows are written once to a JSON-lines file under
$LLMTUNE_HOME/cache/hub-datasets (keyed by the dataset's fingerprint, so a changed dataset gets a new file),
and that file is what the data readers read. So hub rows pass through exactly the format detection,
validators, column mapping, counts and reports that local files do, and a bad row is named by its line in
a file the user can open. (Handing the readers a `datasets.Dataset` instead would mean a second code path
in every reader.) A CoNLL-shaped dataset (`tokens` + a tag sequence with class names, e.g. conll2003) is
written as a CoNLL file for lora-ner. Streaming pretraining reads rows through `hub_iterable` and writes
nothing.

Where the rows come from, in order (the network is touched in one place, as for models in llmtune/hub.py):
  1. a local folder named in the recipe;
  2. the hub's own snapshot cache (`huggingface_hub` / `modelscope` `snapshot_download(...,
     local_files_only=True)`), filled by `llmtune fetch --dataset ID` on a connected machine;
  3. online: `datasets.load_dataset(id)` (HuggingFace: only the files the split needs) or a snapshot
     download (ModelScope); offline (`HF_HUB_OFFLINE=1` / `LLMTUNE_OFFLINE=1`), datasets' own cache of an
     earlier `load_dataset`, else one paragraph saying how to fetch the dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
from pathlib import Path

from llmtune.errors import LlmtuneError
from llmtune.home import llmtune_home
from llmtune.hub import offline
from llmtune.recipe.hub_dataset import HubReference

log = logging.getLogger("llmtune")

HUB_NAMES = {"hf": "HuggingFace", "modelscope": "ModelScope"}


def cache_dir() -> Path:
    return llmtune_home() / "cache" / "hub-datasets"


def is_saved_dataset(folder: Path) -> bool:
    """Whether `folder` was written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def fetch_command(ref: HubReference) -> str:
    return f"llmtune fetch --dataset {ref.canonical()}"


# ------------------------------------------------------------------------------------------ loading
def load_rows(ref: HubReference, key: str, *, streaming: bool = False):
    """The rows `ref` selects: a `datasets.Dataset` (an `IterableDataset` when `streaming`), split,
    sliced and limited; LlmtuneError naming `key` when it cannot be had."""
    if ref.is_local:
        dataset, origin = _from_folder(Path(ref.name), ref, key, streaming), "local folder"
    else:
        snapshot = _snapshot(ref, key, local_only=True)
        if snapshot is not None:
            dataset, origin = _from_folder(snapshot, ref, key, streaming), f"{_cache_name(ref)} cache"
        elif ref.hub == "hf":
            dataset, origin = _load_hf_online(ref, key, streaming), "HuggingFace"
        else:
            snapshot = _snapshot(ref, key, local_only=False)
            dataset, origin = _from_folder(snapshot, ref, key, streaming), "ModelScope"
    if ref.limit is not None:
        dataset = (
            dataset.take(ref.limit) if streaming else dataset.select(range(min(ref.limit, len(dataset))))
        )
    if not streaming and len(dataset) == 0:
        raise LlmtuneError(f"{key}: {ref.canonical()} selects no rows (split {ref.split!r}).")
    log.info(
        "%s: %s from the %s%s",
        key,
        ref.canonical(),
        origin,
        "" if streaming else f": {len(dataset):,} rows",
    )
    return dataset


def hub_iterable(ref: HubReference, key: str):
    """The rows of `ref` as a `datasets.IterableDataset` (for streaming pretraining): read lazily, never
    written out. datasets streams whole splits only, so a slice is applied here with skip/take; it must be
    absolute (`train[1000:5000]`), since a percentage or a negative index needs the split's length."""
    import dataclasses

    import datasets

    parts = []
    for part in ref.split.split("+"):
        name, _, bounds = part.partition("[")
        start, stop = _absolute_slice(ref, key, bounds.rstrip("]")) if bounds else (0, None)
        rows = load_rows(dataclasses.replace(ref, split=name, limit=None), key, streaming=True)
        rows = rows.skip(start) if start else rows
        parts.append(rows.take(stop - start) if stop is not None else rows)
    rows = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return rows.take(ref.limit) if ref.limit is not None else rows


def _absolute_slice(ref: HubReference, key: str, bounds: str) -> tuple[int, int | None]:
    start, _, stop = bounds.partition(":")
    if "%" in bounds or start.startswith("-") or stop.startswith("-"):
        raise LlmtuneError(
            f"{key}: {ref.canonical()}: a streamed split takes absolute row ranges such as train[1000:5000] "
            "(or a row limit, #N); a percentage or a negative index needs the split's length, which a stream "
            "does not know."
        )
    return int(start or 0), (int(stop) if stop else None)


def _cache_name(ref: HubReference) -> str:
    return "HuggingFace" if ref.hub == "hf" else "ModelScope"


def _snapshot(ref: HubReference, key: str, *, local_only: bool) -> Path | None:
    """The dataset repository's folder in the hub's snapshot cache; None when `local_only` and it is not
    there. Downloading (not local_only) is for ModelScope and `llmtune fetch --dataset`."""
    if ref.hub == "hf":
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            return Path(
                snapshot_download(
                    ref.name, repo_type="dataset", revision=ref.revision, local_files_only=local_only
                )
            )
        except LocalEntryNotFoundError:
            if local_only:
                return None
            raise _not_available(ref, key) from None
        except GatedRepoError:
            raise LlmtuneError(
                f"{key}: dataset '{ref.name}' is gated on HuggingFace: accept its terms on huggingface.co "
                "and set HF_TOKEN."
            ) from None
        except RevisionNotFoundError:
            raise LlmtuneError(
                f"{key}: dataset '{ref.name}': revision {ref.revision!r} does not exist on HuggingFace."
            ) from None
        except RepositoryNotFoundError:
            raise _not_found(ref, key) from None
    try:
        from modelscope import snapshot_download as ms_snapshot_download
    except ImportError:
        raise LlmtuneError(
            f"{key}: {ref.canonical()} is a ModelScope dataset but the modelscope package is not installed: "
            "pip install modelscope"
        ) from None
    try:
        return Path(
            ms_snapshot_download(
                repo_id=ref.name,
                repo_type="dataset",
                revision=ref.revision,
                local_files_only=local_only or offline(),
            )
        )
    except Exception as exc:  # modelscope's error classes moved between releases: sort them by name
        kind = type(exc).__name__
        if kind == "NotExistError":
            raise _not_found(ref, key) from None
        if kind in ("AuthenticationError", "PermissionDeniedError"):
            raise LlmtuneError(
                f"{key}: dataset '{ref.name}' on ModelScope needs a token: set MODELSCOPE_API_TOKEN."
            ) from None
        if local_only:
            return None
        raise _not_available(ref, key) from None


def _load_hf_online(ref: HubReference, key: str, streaming: bool):
    """`datasets.load_dataset` of a hub id: online it fetches only the files the split needs; offline it
    finds an earlier load in datasets' own cache, or raises ConnectionError."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    if offline() and not datasets.config.HF_HUB_OFFLINE:
        # LLMTUNE_OFFLINE alone: datasets would still try the network. Its cache of an earlier load is
        # keyed by the hub's answer, so without the network only the snapshot cache (checked before) counts.
        raise _not_available(ref, key)
    try:
        return datasets.load_dataset(
            ref.name, name=ref.subset, split=ref.split, revision=ref.revision, streaming=streaming
        )
    except DatasetNotFoundError as exc:
        if "gated" in str(exc):
            raise LlmtuneError(f"{key}: {exc} Set HF_TOKEN after access is granted.") from None
        raise _not_found(ref, key) from None
    except ConnectionError:
        raise _not_available(ref, key) from None
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise _cannot_select(ref, key, exc) from None


def _from_folder(folder: Path, ref: HubReference, key: str, streaming: bool):
    import datasets

    if not folder.is_dir():
        raise LlmtuneError(f"{key}: {ref.canonical()}: '{folder}' is not a folder.")
    if is_saved_dataset(folder):
        if ref.subset is not None:
            raise LlmtuneError(
                f"{key}: {ref.canonical()}: a folder written by save_to_disk has no subsets; remove "
                f"subset {ref.subset!r} (save each subset to its own folder)."
            )
        try:
            saved = datasets.load_from_disk(str(folder))
        except Exception as exc:  # a damaged or foreign folder: datasets' own words are the best guide
            raise LlmtuneError(f"{key}: '{folder}' cannot be read as a saved dataset: {exc}") from None
        dataset = _select_split(saved, ref, key)
        return dataset.to_iterable_dataset() if streaming else dataset
    from datasets.data_files import EmptyDatasetError
    from datasets.exceptions import DataFilesNotFoundError

    try:
        return datasets.load_dataset(str(folder), name=ref.subset, split=ref.split, streaming=streaming)
    except (DataFilesNotFoundError, EmptyDatasetError):  # before FileNotFoundError, its base
        raise LlmtuneError(
            f"{key}: {ref.canonical()}: '{folder}' holds no data files datasets can read (parquet, arrow, "
            "csv, json, jsonl, txt)."
        ) from None
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise _cannot_select(ref, key, exc) from None


def _select_split(saved, ref: HubReference, key: str):
    """datasets' split syntax (`train[:500]`, `train[10%:]+test`) applied to what `load_from_disk` gave:
    a DatasetDict (splits by name) or one Dataset (its split name, or `train`)."""
    import datasets
    from datasets.arrow_reader import ReadInstruction

    if isinstance(saved, datasets.DatasetDict):
        splits = dict(saved)
    else:
        own = str(saved.split) if saved.split is not None else "train"
        splits = {own: saved} if own == "train" else {own: saved, "train": saved}
    try:
        instructions = ReadInstruction.from_spec(ref.split).to_absolute(
            {name: len(part) for name, part in splits.items()}
        )
    except (ValueError, KeyError, AssertionError) as exc:
        raise _cannot_select(ref, key, exc, available=list(splits)) from None
    parts = [splits[i.splitname].select(range(i.from_, i.to)) for i in instructions]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _not_found(ref: HubReference, key: str) -> LlmtuneError:
    hub = HUB_NAMES[ref.hub]
    return LlmtuneError(
        f"{key}: dataset '{ref.name}' was not found on {hub} (check the spelling; a private dataset needs "
        f"{'HF_TOKEN' if ref.hub == 'hf' else 'MODELSCOPE_API_TOKEN'})."
    )


def _not_available(ref: HubReference, key: str) -> LlmtuneError:
    hub = HUB_NAMES[ref.hub]
    why = (
        "offline mode is set (HF_HUB_OFFLINE / LLMTUNE_OFFLINE)" if offline() else f"{hub} cannot be reached"
    )
    cache = "$HF_HOME/hub (~/.cache/huggingface/hub)" if ref.hub == "hf" else "~/.cache/modelscope"
    return LlmtuneError(
        f"{key}: dataset {ref.canonical()} is not in the local {hub} cache and {why}.",
        hint=f"To get it: on a machine with internet run `{fetch_command(ref)}` and copy {cache} here; or save "
        "the rows there with datasets' `save_to_disk(FOLDER)` and name that folder instead "
        "(`dataset: ./FOLDER`).",
    )


def _cannot_select(ref: HubReference, key: str, exc: Exception, available: list[str] | None = None):
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    known = f" Splits there: {', '.join(available)}." if available else ""
    subset = f"subset {ref.subset!r}, " if ref.subset else ""
    return LlmtuneError(
        f"{key}: {ref.canonical()}: cannot select {subset}split {ref.split!r}: {detail}.{known}",
        hint="Check the subset (`?subset=` / `subset:`) and split (`?split=` / `split:`) names on the "
        "dataset's page, e.g. split=train[:500].",
    )


# ------------------------------------------------------------------------------------------ files
def materialise(ref: HubReference, key: str, suffixes: tuple[str, ...]) -> Path:
    """A local file holding the rows `ref` selects, written once and reused: JSON lines, or CoNLL columns
    for a token-tagging dataset read by lora-ner (`suffixes` says what the reader takes)."""
    dataset = load_rows(ref, key)
    conll = ".conll" in suffixes and _tag_column(dataset) is not None
    suffix = ".conll" if conll else ".jsonl"
    if suffix not in suffixes:
        raise LlmtuneError(
            f"{key}: hub datasets are read as JSON lines, which {key.split('.')[0]} does not take "
            f"({', '.join(suffixes)}); save the rows to a file of that kind and name the file."
        )
    fingerprint = getattr(dataset, "_fingerprint", None) or secrets.token_hex(8)
    digest = hashlib.sha256(f"{ref.canonical()}\n{fingerprint}\n{suffix}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^\w.-]+", "_", ref.name.strip("/")).strip("_")[-80:]
    split = re.sub(r"[^\w.-]+", "_", ref.split).strip("_")
    path = cache_dir() / ref.hub / slug / f"{split}-{digest}{suffix}"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(staging, "w", encoding="utf-8") as handle:
            if conll:
                _write_conll(dataset, handle)
            else:
                for row in dataset:
                    handle.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")
        os.replace(staging, path)  # llmtune's own cache file: same key, same content
    finally:
        staging.unlink(missing_ok=True)
    log.info("%s: %s written to %s", key, ref.canonical(), path)
    return path


def _jsonable(value):
    """JSON for what Arrow columns hold besides JSON types (dates, times, decimals); bytes and images are
    not text data, so they are refused rather than written as their repr."""
    if isinstance(value, bytes | bytearray):
        raise LlmtuneError("a hub dataset column holds bytes (images or audio?); llmtune reads text columns.")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _tag_column(dataset) -> tuple[str, str, list[str]] | None:
    """(tokens column, tags column, tag names) of a CoNLL-shaped dataset (`tokens` and a sequence of
    class labels such as `ner_tags`), or None."""
    from datasets import ClassLabel, Sequence

    features = dataset.features or {}
    if "tokens" not in features:
        return None
    for name in ("ner_tags", "tags", "labels", "ner"):
        feature = features.get(name)
        inner = getattr(feature, "feature", None) if isinstance(feature, Sequence) else None
        if inner is None and isinstance(feature, list) and feature:
            inner = feature[0]
        if isinstance(inner, ClassLabel):
            return "tokens", name, list(inner.names)
    return None


def _write_conll(dataset, handle) -> None:
    tokens_column, tags_column, names = _tag_column(dataset)
    for row in dataset:
        for token, tag in zip(row[tokens_column], row[tags_column], strict=True):
            handle.write(f"{token} {names[tag]}\n")
        handle.write("\n")


# ------------------------------------------------------------------------------------------ fetch
def fetch(ref: HubReference) -> Path:
    """Download the dataset repository into the hub's cache (for `llmtune fetch --dataset`), then load the
    selected rows once from there to prove they load offline; returns the snapshot folder."""
    if ref.is_local:
        raise LlmtuneError(f"{ref.canonical()} is a local folder: there is nothing to fetch.")
    if offline():
        raise LlmtuneError(
            f"cannot fetch {ref.canonical()}: offline mode is set (HF_HUB_OFFLINE / LLMTUNE_OFFLINE); unset it "
            "on a machine with internet."
        )
    key = "--dataset"
    folder = _snapshot(ref, key, local_only=False)
    dataset = _from_folder(folder, ref, key, streaming=False)
    log.info("%s: %s rows in split %s", ref.canonical(), f"{len(dataset):,}", ref.split)
    return folder
