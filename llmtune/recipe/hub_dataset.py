"""Hub datasets named in a data section: the reference a recipe writes, parsed and checked (no loading here;
`llmtune.data.hub_datasets` loads them).

Two ways to write one entry of `train_files` / `validation_files` / `test_files`:

    train_files:
      - hf:tatsu-lab/alpaca#500                        # the first 500 rows of its train split
      - hf:openai/gsm8k?subset=main&split=test[:200]
      - ms:AI-ModelScope/alpaca-gpt4-data-en?split=train&revision=master
      - dataset: tatsu-lab/alpaca                      # the same as a mapping
        hub: hf                                        # hf (default) or modelscope
        subset: null                                   # the dataset's config name (`name=` in datasets)
        split: train[:10%]                             # datasets' split syntax, slices included
        revision: null                                 # branch, tag or commit
        limit: 500                                     # at most this many rows, after the split

The string form is the canonical one: a mapping is turned into it when the recipe loads, so the run folder's
recipe.yaml and every message show one spelling. `hf:` / `ms:` (or `modelscope:`) prefixes keep a hub
dataset apart from a local path: a bare `tatsu-lab/alpaca` stays a path, as it always was, and a local
file that happens to be called `hf:...` is refused as ambiguous rather than guessed at. A `dataset:` that
is a local folder (written by `Dataset.save_to_disk`, or a dataset repository cloned from the hub) is
loaded the same way, with the same split, slice and limit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

PREFIXES = {"hf": "hf", "huggingface": "hf", "ms": "modelscope", "modelscope": "modelscope"}
MAPPING_KEYS = ("dataset", "hub", "subset", "split", "revision", "limit")
_QUERY_KEYS = {"subset": "subset", "name": "subset", "split": "split", "revision": "revision"}
# datasets' split syntax: train, train[:500], train[10%:20%], train[:50%]+test[:100] ...
_SPLIT = re.compile(r"^[\w.-]+(\[-?\d*%?:-?\d*%?\])?(\+[\w.-]+(\[-?\d*%?:-?\d*%?\])?)*$")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
EXAMPLE = "hf:tatsu-lab/alpaca?split=train[:500]#500"


class BadReference(ValueError):
    """A hub dataset reference that cannot be read."""


@dataclass(frozen=True)
class HubReference:
    """One hub dataset (or local dataset folder), as a data section names it."""

    hub: str  # "hf" or "modelscope"
    name: str  # hub id (owner/name) or an absolute local folder
    subset: str | None = None
    split: str = "train"
    revision: str | None = None
    limit: int | None = None

    @property
    def is_local(self) -> bool:
        return os.path.isabs(self.name)

    def canonical(self) -> str:
        """The string form, which parses back to this reference."""
        query = [
            (key, value) for key, value in (("subset", self.subset), ("revision", self.revision)) if value
        ]
        if self.split != "train":
            query.append(("split", self.split))
        text = f"{'ms' if self.hub == 'modelscope' else 'hf'}:{self.name}"
        if query:
            # quote only what would break the form: &, #, =, ? and spaces inside a value
            text += "?" + "&".join(f"{key}={quote(value, safe='/[]:%+.-_')}" for key, value in query)
        if self.limit is not None:
            text += f"#{self.limit}"
        return text

    def shown(self) -> str:
        return self.canonical()


def is_reference(entry: object) -> bool:
    """Whether a data entry is written as a hub dataset (a `hf:`/`ms:` string or a `dataset:` mapping)."""
    if isinstance(entry, dict):
        return "dataset" in entry
    return isinstance(entry, str) and entry.split(":", 1)[0].lower() in PREFIXES and ":" in entry


def parse_reference(entry: str) -> HubReference | None:
    """The reference an entry string names, None when it is a plain path; BadReference when it starts
    like a reference but is malformed."""
    if not is_reference(entry):
        return None
    prefix, rest = entry.split(":", 1)
    hub = PREFIXES[prefix.lower()]
    limit = None
    if "#" in rest:
        rest, _, count = rest.rpartition("#")
        if not count.isdigit() or int(count) < 1:
            raise BadReference(
                f"{entry!r}: the row limit after '#' must be a whole number of at least 1, got {count!r} "
                f"(e.g. {EXAMPLE})"
            )
        limit = int(count)
    name, _, query = rest.partition("?")
    fields: dict[str, str] = {}
    # Not parse_qsl: it reads '+' as a space, and '+' joins splits (train+validation).
    pairs = [part.partition("=") for part in query.split("&") if part] if query else []
    for key, equals, value in pairs:
        key, value = unquote(key), unquote(value)
        if not equals or not value:
            raise BadReference(f"{entry!r}: option {key!r} after '?' has no value (e.g. {EXAMPLE})")
        if key not in _QUERY_KEYS:
            raise BadReference(
                f"{entry!r}: unknown option {key!r} after '?'; the options are subset, split and revision "
                f"(e.g. {EXAMPLE})"
            )
        fields[_QUERY_KEYS[key]] = value
    if query and not fields:
        raise BadReference(f"{entry!r}: nothing readable after '?' (e.g. {EXAMPLE})")
    return make_reference(entry, hub=hub, name=name, limit=limit, **fields)


def make_reference(
    shown: object,
    *,
    hub: str,
    name: str,
    subset: str | None = None,
    split: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> HubReference:
    """A checked HubReference; BadReference naming `shown` (the entry as written) otherwise."""
    if not name:
        raise BadReference(f"{shown!r}: no dataset id (e.g. {EXAMPLE})")
    if not os.path.isabs(name) and not _HUB_ID.match(name):
        raise BadReference(
            f"{shown!r}: {name!r} is not a hub dataset id (owner/name, letters, digits, '-', '_' and '.'); "
            "a local dataset folder is written as a path (./folder or /abs/folder)"
        )
    split = split or "train"
    if not _SPLIT.match(split.replace(" ", "")):
        raise BadReference(
            f"{shown!r}: split {split!r} is not datasets' split syntax (train, train[:500], train[:10%], "
            "train[100:200]+validation)"
        )
    for label, value in (("subset", subset), ("revision", revision)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise BadReference(f"{shown!r}: {label} must be a non-empty string")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise BadReference(f"{shown!r}: limit must be a whole number of at least 1, got {limit!r}")
    return HubReference(
        hub=hub, name=name, subset=subset, split=split.replace(" ", ""), revision=revision, limit=limit
    )


def reference_from_mapping(entry: dict, resolve_path) -> HubReference:
    """The reference a `dataset:` mapping names; `resolve_path` makes a local-looking `dataset` absolute
    (against the recipe's folder)."""
    unknown = [key for key in entry if key not in MAPPING_KEYS]
    if unknown:
        raise BadReference(
            f"{dict(entry)!r}: unknown key(s) {', '.join(map(repr, unknown))}; a hub dataset entry takes "
            f"{', '.join(MAPPING_KEYS)}"
        )
    hub = str(entry.get("hub") or "hf").lower()
    if hub not in PREFIXES:
        raise BadReference(f"{dict(entry)!r}: hub {entry.get('hub')!r} is not hf or modelscope")
    name = entry.get("dataset")
    if not isinstance(name, str):
        raise BadReference(f"{dict(entry)!r}: dataset must be a hub id or a local folder, as a string")
    if looks_local(name):
        name = resolve_path(name)
    limit = entry.get("limit")
    return make_reference(
        dict(entry),
        hub=PREFIXES[hub],
        name=name,
        subset=entry.get("subset"),
        split=entry.get("split"),
        revision=entry.get("revision"),
        limit=limit,
    )


def looks_local(name: str) -> bool:
    return name.startswith(("./", "../", "/", "~")) or name in (".", "..")
