"""Raw text for pretraining: read → clean → split → tokenise → pack into blocks (cached).

    documents  files, folders or globs of .txt (a document per line, paragraph or file) and .jsonl/.json
    cleaning   optional unicode normalisation, whitespace collapse, exact de-duplication, length filters;
               each step reports how many documents it changed or removed
    split      validation from separate files, or a seeded share of documents, or the last share of the
               characters (the LLMs-from-scratch split)
    packing    documents tokenised in batches and joined with EOS into one stream, cut into `block_size`
               blocks (MedicalGPT / LLaMA-Factory style), optionally with a sliding `stride`

The tokenised blocks are cached under $LLMTUNE_HOME/cache/text keyed on the data content, the tokenizer,
and every option that changes the result, so a second run with the same inputs starts at once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import re
import shutil
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llmtune.data.sources import (
    BadRows,
    expand_sources,
    file_sha256,
    iter_json_lines,
    iter_json_rows,
    iter_lines,
    iter_text_chunks,
    read_text_file,
    report_bad_row,
    split_lines,
)
from llmtune.errors import LlmtuneError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from datasets import DatasetDict

    from llmtune.recipe import CleaningSection, TextDataSection

log = logging.getLogger("llmtune")

CACHE_FORMAT = 1  # bump when the cached layout or the packing rule changes
TOKENIZE_BATCH = 1000


@dataclass
class TextDataReport:
    """What happened to the data, for the console, the run folder and the manifest."""

    files: dict[str, str] = field(default_factory=dict)  # path → sha256
    documents_read: int = 0
    skipped_rows: dict[str, int] = field(default_factory=dict)  # reason → count
    skipped_examples: dict[str, str] = field(default_factory=dict)  # reason → first location
    empty_documents: int = 0
    cleaning: list[dict] = field(default_factory=list)  # {"step", "changed" | "removed"}
    split: str = ""
    documents: dict[str, int] = field(default_factory=dict)  # split → count
    tokens: dict[str, int] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)
    dropped_tail_tokens: dict[str, int] = field(default_factory=dict)
    block_size: int = 0
    stride: int = 0
    tokenize_seconds: float = 0.0
    tokens_per_second: float = 0.0
    cache_key: str = ""
    from_cache: bool = False

    def lines(self) -> list[str]:
        out = [
            f"data: {len(self.files)} file(s), {self.documents_read:,} documents read"
            + (" (tokenised blocks from cache)" if self.from_cache else "")
        ]
        if self.empty_documents:
            out.append(f"  empty documents skipped: {self.empty_documents:,}")
        out += skip_and_clean_lines(self.skipped_rows, self.skipped_examples, self.cleaning)
        out.append(f"  split: {self.split}")
        for name in self.tokens:
            dropped = self.dropped_tail_tokens.get(name, 0)
            out.append(
                f"  {name}: {self.documents.get(name, 0):,} documents, {self.tokens[name]:,} tokens → "
                f"{self.blocks.get(name, 0):,} blocks of {self.block_size}"
                + (f" (stride {self.stride})" if self.stride != self.block_size else "")
                + (f", last {dropped:,} tokens dropped (less than a block)" if dropped else "")
            )
        if not self.from_cache and self.tokens_per_second:
            out.append(f"  tokenised + packed at {self.tokens_per_second:,.0f} tokens/s")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ reading
def skip_and_clean_lines(skipped_rows: dict, skipped_examples: dict, cleaning: list[dict]) -> list[str]:
    """The report lines for bad rows skipped and for each cleaning step (map-style and streaming)."""
    out = [
        f"  bad rows skipped ({reason}): {count:,}, first at {skipped_examples.get(reason, '?')}"
        for reason, count in skipped_rows.items()
    ]
    for step in cleaning:
        verb = "changed" if "changed" in step else "removed"
        out.append(f"  clean {step['step']}: {step[verb]:,} documents {verb}")
    return out


def read_documents(
    files: list[Path], data: TextDataSection, bad: BadRows, report: TextDataReport
) -> list[str]:
    docs = [doc for path in files for doc in file_documents(path, data, bad)]
    report.documents_read = len(docs)
    kept = [d for d in docs if d.strip()]
    report.empty_documents = len(docs) - len(kept)
    return kept


def file_documents(path: Path, data: TextDataSection, bad: BadRows) -> Iterator[str]:
    """The documents of one file in order (empty ones included): a .txt file cut per `data.txt_document`,
    or the text field of each .jsonl/.json row. Also read one file at a time by the streaming path."""
    if path.suffix == ".txt":
        yield from split_txt(read_text_file(path), data.txt_document)
        return
    for where, row in iter_json_rows(path, data.on_bad_rows, bad):
        text = row_text(where, row, data, bad)
        if text is not None:
            yield text


def stream_file_documents(path: Path, data: TextDataSection, bad: BadRows) -> Iterator[str]:
    """`file_documents`, read in chunks where the format allows (for streaming, any file size): .jsonl rows
    and .txt lines or paragraphs. A .json list, and a .txt file that is one document, are read whole."""
    if path.suffix == ".jsonl":
        for where, row in iter_json_lines(path, data.on_bad_rows, bad):
            text = row_text(where, row, data, bad)
            if text is not None:
                yield text
    elif path.suffix == ".txt" and data.txt_document == "line":
        yield from (line for _, line in iter_lines(path) if line.strip())
    elif path.suffix == ".txt" and data.txt_document == "paragraph":
        yield from stream_paragraphs(iter_text_chunks(path))
    else:
        yield from file_documents(path, data, bad)


PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_NOT_SPACE = re.compile(r"\S")


def stream_paragraphs(chunks) -> Iterator[str]:
    """`split_txt(text, "paragraph")` of the text the chunks join into, without joining them: a break is
    cut off once the run of whitespace it ends in is closed by a later character (until then, more blank
    lines could still join it), so the paragraphs are exactly those of re.split on the whole text."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk
        start = 0
        while (found := PARAGRAPH_BREAK.search(buffer, start)) and _NOT_SPACE.search(buffer, found.end()):
            if buffer[start : found.start()].strip():
                yield buffer[start : found.start()]
            start = found.end()
        buffer = buffer[start:]
    yield from (paragraph for paragraph in PARAGRAPH_BREAK.split(buffer) if paragraph.strip())


def row_text(where: str, row: dict, data: TextDataSection, bad: BadRows) -> str | None:
    """A row's `data.text_field`, or None after reporting the row as bad (an error, or counted)."""
    value = row.get(data.text_field)
    if isinstance(value, str):
        return value
    problem = "missing text field" if value is None else "text field is not a string"
    report_bad_row(
        where,
        f"{problem} '{data.text_field}' (keys: {', '.join(list(row)[:8])})",
        data.on_bad_rows,
        bad,
    )
    return None


def split_txt(text: str, unit: str) -> list[str]:
    """A .txt file as documents: one per line, per blank-line-separated paragraph, or the whole file."""
    if unit == "file":
        return [text]
    if unit == "paragraph":
        return [p for p in PARAGRAPH_BREAK.split(text) if p.strip()]
    return [line for line in split_lines(text) if line.strip()]  # "\n" only: see split_lines


# ------------------------------------------------------------------------------------------ cleaning
def clean_documents(docs: list[str], clean: CleaningSection) -> tuple[list[str], list[dict]]:
    """Apply the cleaning steps in order; return the documents and what each step did."""
    cleaner = DocumentCleaner(clean)
    kept = [cleaned for doc in docs if (cleaned := cleaner(doc)) is not None]
    return kept, cleaner.steps()


class DocumentCleaner:
    """`data.clean` applied to one document at a time, counting what each step changed or removed.

    The steps are per document, so applying them all to one document before the next gives what applying
    each step to every document in turn gives; the one step that looks across documents, exact
    de-duplication, keeps the first copy either way. It remembers a 16-byte digest per document kept
    rather than the text, so that a stream of documents too large for memory can be de-duplicated too.
    """

    def __init__(self, clean: CleaningSection):
        self.clean = clean
        self.counts: dict[str, int] = dict.fromkeys(self._step_names(), 0)
        self.seen: set[bytes] = set()

    def _step_names(self) -> list[str]:
        clean, names = self.clean, []
        if clean.unicode_normalization:
            names.append(f"unicode {clean.unicode_normalization}")
        if clean.collapse_whitespace:
            names.append("collapse whitespace")
        if clean.min_chars or clean.max_chars:
            names.append(f"length {clean.min_chars}..{clean.max_chars or '∞'} chars")
        if clean.deduplicate:
            names.append("exact de-duplication")
        return names

    def __call__(self, doc: str) -> str | None:
        """The cleaned document, or None when a step removes it."""
        clean = self.clean
        if clean.unicode_normalization:
            new = unicodedata.normalize(clean.unicode_normalization, doc)
            self.counts[f"unicode {clean.unicode_normalization}"] += new != doc
            doc = new
        if clean.collapse_whitespace:
            new = re.sub(r"[^\S\n]+", " ", re.sub(r"\n{3,}", "\n\n", doc)).strip()
            self.counts["collapse whitespace"] += new != doc
            if not new:
                return None
            doc = new
        if clean.min_chars or clean.max_chars:
            if not clean.min_chars <= len(doc) <= (clean.max_chars or float("inf")):
                self.counts[f"length {clean.min_chars}..{clean.max_chars or '∞'} chars"] += 1
                return None
        if clean.deduplicate:
            digest = hashlib.blake2b(doc.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if digest in self.seen:
                self.counts["exact de-duplication"] += 1
                return None
            self.seen.add(digest)
        return doc

    def steps(self) -> list[dict]:
        """What each step did, in clean_documents' shape: {"step", "changed" | "removed"}."""
        return [
            {"step": name, ("changed" if name.startswith(("unicode", "collapse")) else "removed"): count}
            for name, count in self.counts.items()
        ]


# ------------------------------------------------------------------------------------------ split
def split_documents(docs: list[str], share: float, by: str, seed: int) -> tuple[list[str], list[str]]:
    """Hold out `share` for validation: whole documents at random (seeded), or the last characters."""
    if share <= 0:
        return docs, []
    if by == "character":
        total = sum(len(d) for d in docs)
        cut = int((1 - share) * total)
        train, val, seen = [], [], 0
        for doc in docs:
            if seen + len(doc) <= cut:
                train.append(doc)
            elif seen >= cut:
                val.append(doc)
            else:  # the document the cut falls in is split in two
                train.append(doc[: cut - seen])
                val.append(doc[cut - seen :])
            seen += len(doc)
        return [d for d in train if d], [d for d in val if d]
    if len(docs) < 2:
        raise LlmtuneError(
            f"data.validation_split: only {len(docs)} document(s) to split; use data.split_by: character, "
            "or give data.validation_files, or set data.txt_document: line."
        )
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = min(len(docs) - 1, max(1, round(share * len(docs))))
    held = set(order[:n_val])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


# ------------------------------------------------------------------------------------------ tokens
def tokenize_documents(docs: list[str], tokenizer, add_eos: bool, desc: str) -> np.ndarray:
    """One stream of token ids: the documents in order, each followed by EOS when `add_eos`.

    Calls the fast tokenizer on batches directly (its Rust core already uses every core); going through
    `datasets.map` would add an Arrow round trip per batch for nothing, as the result is packed anyway.
    """
    from tqdm.auto import tqdm

    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise LlmtuneError(
            "data.add_eos is true but the tokenizer has no EOS token; set data.add_eos: false."
        )
    encoded: list[list[int]] = []
    with tqdm(total=len(docs), desc=desc, unit="doc", disable=len(docs) < 2 * TOKENIZE_BATCH) as bar:
        for start in range(0, len(docs), TOKENIZE_BATCH):
            batch = docs[start : start + TOKENIZE_BATCH]
            encoded.extend(tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"])
            bar.update(len(batch))
    if add_eos:
        for ids in encoded:
            ids.append(eos)
    total = sum(len(ids) for ids in encoded)
    return np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=total)


def pack_into_blocks(
    ids: np.ndarray, block_size: int, stride: int | None = None, keep_short: bool = True
) -> tuple[np.ndarray, int]:
    """Cut a token stream into blocks of `block_size`, one starting every `stride` tokens.

    Returns (blocks [n, block_size], tokens after the last block that no block covers). With
    `keep_short`, a stream shorter than one block becomes a single shorter block, so that a small
    validation text is not lost. Hand-written because neither datasets nor TRL's `pack_dataset`
    offers a sliding stride.
    """
    stride = stride or block_size
    if len(ids) < block_size:
        if keep_short and len(ids) > 1:
            return ids[None, :].copy(), 0
        return np.zeros((0, block_size), dtype=ids.dtype), len(ids)
    if stride == block_size:  # the common case: a reshape, no copy per block
        count = len(ids) // block_size
        return ids[: count * block_size].reshape(count, block_size), len(ids) - count * block_size
    starts = np.arange(0, len(ids) - block_size + 1, stride)
    blocks = np.stack([ids[s : s + block_size] for s in starts])
    return blocks, len(ids) - (int(starts[-1]) + block_size)


# ------------------------------------------------------------------------------------------ pipeline
def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode("utf-8"))
    digest.update(f"{tokenizer.eos_token_id}|{type(tokenizer).__name__}".encode())
    return digest.hexdigest()


def build_text_datasets(
    data: TextDataSection, tokenizer, cache_root: Path, describe=None
) -> tuple[DatasetDict, TextDataReport]:
    """Train (and validation, when asked for) blocks of token ids, and the report of how they were made."""
    from datasets import DatasetDict

    if data.streaming:  # pretrain reads it through data/text_stream.py; prune and distill need the blocks
        raise LlmtuneError(
            "data.streaming is read by llmtune pretrain only; this command tokenises its text up front. "
            "Remove data.streaming (and data.validation_documents) from the recipe."
        )
    train_files = expand_sources(data.train_files, "data.train_files", describe=describe)
    val_files = (
        expand_sources(data.validation_files, "data.validation_files", describe=describe)
        if data.validation_files
        else []
    )
    report = TextDataReport(block_size=data.block_size, stride=data.stride or data.block_size)
    report.files = {str(p): file_sha256(p) for p in [*train_files, *val_files]}
    options = data.model_dump(exclude={"train_files", "validation_files", "cache", "num_proc"})
    key_source = json.dumps(
        {
            "format": CACHE_FORMAT,
            "train": [report.files[str(p)] for p in train_files],
            "validation": [report.files[str(p)] for p in val_files],
            "options": options,
            "tokenizer": tokenizer_fingerprint(tokenizer),
        },
        sort_keys=True,
    )
    report.cache_key = hashlib.sha256(key_source.encode()).hexdigest()[:20]
    cache_dir = cache_root / "text" / report.cache_key
    if data.cache and (cache_dir / "report.json").exists():
        found = _read_cache(cache_dir)
        if found is not None:
            return found

    bad = BadRows()
    train_docs = read_documents(train_files, data, bad, report)
    train_docs, report.cleaning = clean_documents(train_docs, data.clean)
    if val_files:
        val_report = TextDataReport()
        val_docs = read_documents(val_files, data, bad, val_report)
        val_docs, _ = clean_documents(val_docs, data.clean)
        if not val_docs:  # else the run would silently go without the validation it was asked for
            raise LlmtuneError(
                f"data.validation_files ({', '.join(str(p) for p in val_files)}): no documents after reading "
                "and cleaning (empty files, or everything removed by data.clean)."
            )
        report.documents_read += val_report.documents_read
        report.empty_documents += val_report.empty_documents
        report.split = f"validation from {len(val_files)} file(s)"
    else:
        train_docs, val_docs = split_documents(train_docs, data.validation_split, data.split_by, data.seed)
        held = (
            "characters (the last share)" if data.split_by == "character" else f"documents (seed {data.seed})"
        )
        report.split = (
            f"{data.validation_split:.0%} of {held} held out"
            if data.validation_split
            else "no validation data"
        )
    report.skipped_rows = dict(bad.counts)
    report.skipped_examples = dict(bad.examples)
    if not train_docs:
        raise LlmtuneError(
            f"data.train_files ({', '.join(str(p) for p in train_files)}): no documents left to train on after "
            "reading and cleaning (empty files, or everything removed by data.clean)."
        )

    start = time.perf_counter()
    splits = {"train": train_docs} | ({"validation": val_docs} if val_docs else {})
    blocks = {}
    for name, docs in splits.items():
        ids = tokenize_documents(docs, tokenizer, data.add_eos, desc=f"Tokenising {name}")
        packed, dropped = pack_into_blocks(ids, data.block_size, data.stride, keep_short=name == "validation")
        report.documents[name], report.tokens[name] = len(docs), int(len(ids))
        report.blocks[name], report.dropped_tail_tokens[name] = len(packed), dropped
        blocks[name] = packed
    report.tokenize_seconds = time.perf_counter() - start
    report.tokens_per_second = sum(report.tokens.values()) / max(report.tokenize_seconds, 1e-9)
    if len(blocks["train"]) == 0:
        raise LlmtuneError(
            f"data: the training text has {report.tokens['train']} tokens, too few for one block; "
            "add data or lower data.block_size."
        )
    dataset = DatasetDict({name: blocks_dataset(array) for name, array in blocks.items()})
    if data.cache:
        _write_cache(dataset, report, cache_dir)
    return dataset, report


def blocks_dataset(blocks: np.ndarray):
    """A datasets.Dataset with one fixed-length `input_ids` row per block, built from Arrow directly."""
    import pyarrow as pa
    from datasets import Dataset

    column = pa.FixedSizeListArray.from_arrays(pa.array(blocks.ravel()), blocks.shape[1])
    return Dataset(pa.table({"input_ids": column}))


def _read_cache(cache_dir: Path):
    """(blocks, report) from a cache entry, or None after removing an entry that is damaged.

    The cache is llmtune's own derived data, so a damaged entry (a disk that filled up, a copy cut short,
    a hand edit) is rebuilt with a warning rather than stopping the run. An Arrow file cut at a record
    batch boundary loads without complaint but with fewer rows, so the rows are checked against the
    block counts the report recorded when the entry was written.
    """
    from datasets import load_from_disk

    try:
        cached = json.loads(read_text_file(cache_dir / "report.json"))  # checked: never a FIFO
        cached.update(from_cache=True)
        report = TextDataReport(**cached)
        dataset = load_from_disk(str(cache_dir / "blocks"))
        rows = {name: dataset[name].num_rows for name in dataset}
        if rows != report.blocks:
            raise ValueError(f"{rows} blocks on disk, the report says {report.blocks}")
        return dataset, report
    except Exception as exc:  # any failure to read derived data means: derive it again
        reason = str(exc).strip().split("\n")[0][:200] or type(exc).__name__
        log.warning(
            "warning: the tokenised-text cache %s is damaged (%s); removing it and tokenising again.",
            cache_dir,
            reason,
        )
        _remove(cache_dir)
        return None


def _remove(path: Path) -> None:
    """Remove a cache entry, whatever it became (a folder, or a file or link in its place)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _write_cache(dataset: DatasetDict, report: TextDataReport, cache_dir: Path) -> None:
    """Write a cache entry through a staging folder of this process's own, renamed into place whole, so
    that a reader never sees half an entry and two runs tokenising the same data do not write into one
    folder. The cache only saves time: a failure to write it (disk full, read-only home) is a warning."""
    import os

    staging = cache_dir.with_name(f"{cache_dir.name}.partial-{os.getpid()}")
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar

    disable_progress_bar()  # a "Saving the dataset" bar per split is noise before the data report
    try:
        _remove(staging)
        staging.mkdir(parents=True)
        dataset.save_to_disk(str(staging / "blocks"))
        (staging / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
        _remove(cache_dir)
        staging.rename(cache_dir)
    except OSError as exc:
        if not (cache_dir / "report.json").is_file():  # else another run just wrote the same entry
            log.warning(
                "warning: could not write the tokenised-text cache %s (%s); continuing without it.",
                cache_dir,
                exc.strerror or exc,
            )
    finally:
        enable_progress_bar()
        _remove(staging)


def collate_blocks(features: list[dict]) -> dict:
    """Stack equal-length blocks; labels are the inputs (the model shifts them).

    Not `DataCollatorForLanguageModeling`: it sets labels to -100 wherever input == pad_token_id, and
    with pad = EOS (GPT-2, SmolLM2) that would silently drop every document boundary from the loss.
    """
    import torch

    input_ids = torch.tensor(np.stack([np.asarray(f["input_ids"]) for f in features]), dtype=torch.long)
    return {"input_ids": input_ids, "labels": input_ids.clone(), "attention_mask": torch.ones_like(input_ids)}
