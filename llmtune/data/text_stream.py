"""Raw text for pretraining, streamed (`data.streaming: true`): documents are read, cleaned, tokenised and
packed into blocks while the model trains, so a corpus too large to tokenise up front trains from its first
block on.

    sources     what map-style reads (.txt per data.txt_document, the text_field of .jsonl/.json rows), in
                the order the recipe names them, .jsonl rows and .txt lines/paragraphs read in chunks (files
                of any size; text.stream_file_documents); a hub entry
                (hf:owner/name?split=...) is streamed row by row through hub_iterable, never downloaded whole
    cleaning    data.clean one document at a time (text.DocumentCleaner); de-duplication keeps a 16-byte
                digest per document and starts over with each pass over the corpus
    validation  data.validation_files, tokenised up front as map-style does, or the first
                data.validation_documents documents of the stream, held out of every pass
    packing     documents joined with EOS and cut into block_size blocks, one every `stride` tokens: the
                blocks map-style builds, in file order (not shuffled). The tokens after a pass's last block
                are dropped (and counted) and the stream starts over, so it never ends: train.max_steps is
                the run's length
    resume      every checkpoint holds stream_position.json, where the first block not yet trained starts
                (pass, document, token offset); --resume reads and cleans the documents before it again
                without tokenising them, re-tokenises that one document, and goes on from that token

Why a torch IterableDataset and not `datasets.IterableDataset`: the checkpoint needs the exact position of
every block, down to a token inside a document, and resuming needs to start mid-document. datasets' own
`state_dict` resumes a generator by running it again up to the example index, which here means tokenising
the whole consumed stream again; and accelerate shards a `datasets.IterableDataset` by its shards when the
batches are not dispatched. A plain class keeps the position logic in one readable place.

Why a saved position and not the Trainer's own skipping (`ignore_data_skip: false` re-reads and discards
the consumed batches): exact too, as the stream is deterministic, but it tokenises and collates everything
trained before the checkpoint again, which for a corpus too large to tokenise up front is hours. Here only
reading and cleaning are repeated (the document count and the de-duplication digests need them).

Several processes: accelerate gives out an IterableDataset's batches from rank 0 (`dispatch_batches`, its
default for one): rank 0 alone reads the stream, fetches world_size batches and sends each rank its own, so
no two ranks train on the same block. With `accelerator_config: {dispatch_batches: false}` every rank reads
the whole stream and keeps its share (accelerate's IterableDatasetShard). Either way an optimizer step
consumes train_batch_size × gradient_accumulation_steps × world_size blocks, which is what the checkpoint
counts, and only rank 0 writes it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import IterableDataset
from transformers import TrainerCallback

from llmtune.data.sources import BadRows, expand_sources, report_bad_row
from llmtune.data.text import (
    DocumentCleaner,
    TextDataReport,
    blocks_dataset,
    clean_documents,
    pack_into_blocks,
    read_documents,
    row_text,
    skip_and_clean_lines,
    stream_file_documents,
    tokenize_documents,
    tokenizer_fingerprint,
)
from llmtune.errors import LlmtuneError
from llmtune.outputs import write_json

if TYPE_CHECKING:
    from llmtune.recipe import TextDataSection
    from llmtune.recipe.hub_dataset import HubReference

log = logging.getLogger("llmtune")

STATE_FILE = "stream_position.json"
TOKENIZE_DOCUMENTS = 256  # documents per tokenizer call (the Rust tokenizer batches them across its threads),
TOKENIZE_CHARACTERS = 1 << 20  # or fewer when they are long (whole-file documents)


@dataclass(frozen=True)
class StreamPosition:
    """Where a block starts: in pass `passes` over the corpus (from 0), in the document numbered `document`
    (documents that survived cleaning, held-out validation documents included, from 0 in each pass), after
    `offset` of its tokens (EOS included)."""

    passes: int = 0
    document: int = 0
    offset: int = 0


@dataclass
class StreamCounts:
    """What the stream has read so far (this session), for the data report."""

    bad: BadRows
    cleaner: DocumentCleaner
    documents_read: int = 0
    empty_documents: int = 0
    held_out_documents: int = 0
    resume_skipped_documents: int = 0
    documents_tokenised: int = 0
    tokens: int = 0
    blocks: int = 0
    dropped_tail_tokens: int = 0
    passes: int = 0  # passes begun


# ------------------------------------------------------------------------------------------ sources
def stream_sources(entries: list[str], key: str, describe=None) -> list[Path | HubReference]:
    """The recipe's entries in order: local files (paths, folders, globs, expanded as map-style does) and
    hub references, which are streamed, never expanded into files."""
    from llmtune.recipe.hub_dataset import BadReference, parse_reference

    sources: list = []
    paths: list[str] = []
    for entry in entries:
        try:
            reference = parse_reference(entry)
        except BadReference as exc:
            raise LlmtuneError(f"{key}: {exc}.") from None
        if reference is None:
            paths.append(entry)
            continue
        if paths:
            sources.extend(expand_sources(paths, key, describe=describe, whole=False))
            paths = []
        sources.append(reference)
    if paths:
        sources.extend(expand_sources(paths, key, describe=describe, whole=False))
    return sources


def hub_rows(reference: HubReference, key: str):
    """The rows of a hub dataset, streamed (a datasets.IterableDataset of row dicts)."""
    from llmtune.data.hub_datasets import hub_iterable

    return hub_iterable(reference, key)


# ------------------------------------------------------------------------------------------ packing
class _Packer:
    """Documents' tokens in, blocks out: pack_into_blocks over an unbounded stream. For every token still
    waiting it knows the document it came from, so each block comes with where the block after it starts."""

    def __init__(self, block_size: int, stride: int, passes: int):
        self.size, self.stride, self.passes = block_size, stride, passes
        self.buffer = np.zeros(0, dtype=np.int32)
        # per document with tokens in the buffer: its number, the offset of its first buffered token, how many
        self.numbers: deque[int] = deque()
        self.starts: deque[int] = deque()
        self.lengths: deque[int] = deque()
        self.covered = 0  # tokens at the buffer's head already inside a block given out (stride < block_size)
        self.made = 0

    def add(self, documents: list[tuple[int, int, list[int]]]) -> Iterator[tuple[np.ndarray, StreamPosition]]:
        """Take (number, offset, tokens) documents; give out every block now complete."""
        documents = [d for d in documents if d[2]]
        if not documents:
            return
        self.buffer = np.concatenate([self.buffer, *(np.asarray(t, dtype=np.int32) for _, _, t in documents)])
        for number, offset, tokens in documents:
            self.numbers.append(number)
            self.starts.append(offset)
            self.lengths.append(len(tokens))
        if len(self.buffer) < self.size:
            return
        count = (len(self.buffer) - self.size) // self.stride + 1
        ends = np.cumsum(np.fromiter(self.lengths, dtype=np.int64, count=len(self.lengths)))
        successors = np.arange(1, count + 1, dtype=np.int64) * self.stride
        owners = np.searchsorted(ends, successors, side="right")
        for i in range(count):
            owner = int(owners[i])
            if owner < len(self.numbers):
                into = int(successors[i] - (ends[owner] - self.lengths[owner]))
                after = StreamPosition(self.passes, self.numbers[owner], self.starts[owner] + into)
            else:  # the next block starts with the next document
                after = StreamPosition(self.passes, self.numbers[-1] + 1, 0)
            yield self.buffer[i * self.stride : i * self.stride + self.size], after
        self.made += count
        self._drop(count * self.stride)
        self.covered = self.size - self.stride

    def _drop(self, tokens: int) -> None:
        self.buffer = self.buffer[tokens:]
        while tokens and self.lengths:
            if self.lengths[0] <= tokens:
                tokens -= self.lengths[0]
                self.numbers.popleft(), self.starts.popleft(), self.lengths.popleft()
            else:
                self.starts[0] += tokens
                self.lengths[0] -= tokens
                tokens = 0

    def tail(self) -> int:
        """Tokens no block covers (at the end of a pass: dropped, as map-style drops them)."""
        return len(self.buffer) - (self.covered if self.made else 0)


# ------------------------------------------------------------------------------------------ the stream
class TextStream(IterableDataset):
    """Endless blocks of `block_size` token ids ({"input_ids": array}) from the recipe's text, from `start`.

    `first_block` is the number of the first block this session gives out, counted from the run's start
    (the blocks trained before the checkpoint it resumes from)."""

    def __init__(
        self,
        data: TextDataSection,
        tokenizer,
        sources: list,
        *,
        start: StreamPosition = StreamPosition(),
        first_block: int = 0,
    ):
        self.data, self.tokenizer, self.sources = data, tokenizer, sources
        self.start, self.first_block = start, first_block
        self.counts = self.new_counts()
        self._after: deque[tuple[int, StreamPosition]] = deque()  # (block number, where its successor starts)

    def new_counts(self) -> StreamCounts:
        return StreamCounts(bad=BadRows(), cleaner=DocumentCleaner(self.data.clean))

    def __iter__(self):
        self._after.clear()
        number = self.first_block
        for block, after in self.blocks(self.start, self.counts):
            self._after.append((number, after))
            number += 1
            yield {"input_ids": block}

    # ---- what the checkpoint needs
    def forget_before(self, blocks: int) -> None:
        """Blocks before number `blocks - 1` are trained: their positions are no longer needed."""
        while self._after and self._after[0][0] < blocks - 1:
            self._after.popleft()

    def position_after(self, blocks: int) -> StreamPosition:
        """Where the stream stands once `blocks` blocks (counted from the run's start) are trained."""
        if blocks == self.first_block:
            return self.start
        self.forget_before(blocks)
        if not self._after or self._after[0][0] != blocks - 1:
            have = f"{self._after[0][0]}..{self._after[-1][0]}" if self._after else "none"
            raise RuntimeError(f"stream position of block {blocks - 1} not recorded (have {have})")
        return self._after[0][1]

    # ---- documents → blocks
    def raw_documents(self, bad: BadRows) -> Iterator[str]:
        """One pass over the sources: every document as read (empty ones included)."""
        for source in self.sources:
            if isinstance(source, Path):
                yield from stream_file_documents(source, self.data, bad)
                continue
            for index, row in enumerate(hub_rows(source, "data.train_files"), start=1):
                where = f"{source.shown()} row {index}"
                if not isinstance(row, dict):
                    report_bad_row(
                        where, f"not a row of fields ({type(row).__name__})", self.data.on_bad_rows, bad
                    )
                    continue
                text = row_text(where, row, self.data, bad)
                if text is not None:
                    yield text

    def documents(self, counts: StreamCounts) -> Iterator[tuple[int, str]]:
        """One pass: (number, document) for each document that survives cleaning, as map-style keeps them."""
        counts.cleaner.seen.clear()  # de-duplication is within a pass (else a second pass would be empty)
        number = 0
        for raw in self.raw_documents(counts.bad):
            counts.documents_read += 1
            if not raw.strip():
                counts.empty_documents += 1
                continue
            doc = counts.cleaner(raw)
            if doc is not None:
                yield number, doc
                number += 1

    def blocks(
        self, start: StreamPosition, counts: StreamCounts
    ) -> Iterator[tuple[np.ndarray, StreamPosition]]:
        """(block, where the block after it starts), endlessly: pass after pass over the corpus."""
        for passes in itertools.count(start.passes):
            at = start if passes == start.passes else StreamPosition(passes)
            yield from self._pass_blocks(at, counts)

    def _pass_blocks(self, at: StreamPosition, counts: StreamCounts):
        counts.passes += 1
        packer = _Packer(self.data.block_size, self.data.stride or self.data.block_size, at.passes)
        held_out = self.data.validation_documents
        batch: list[tuple[int, str]] = []
        characters, seen = 0, 0
        for number, doc in self.documents(counts):
            seen = number + 1
            if number < held_out:
                counts.held_out_documents += 1
                continue
            if number < at.document:
                counts.resume_skipped_documents += 1
                continue
            batch.append((number, doc))
            characters += len(doc)
            if len(batch) >= TOKENIZE_DOCUMENTS or characters >= TOKENIZE_CHARACTERS:
                yield from self._pack(packer, batch, at, counts)
                batch, characters = [], 0
        yield from self._pack(packer, batch, at, counts)
        counts.dropped_tail_tokens += packer.tail()
        if packer.made == 0 and at == StreamPosition(at.passes):  # a whole pass without one block
            if seen <= held_out:
                raise LlmtuneError(
                    f"data.train_files: {seen} document(s) after reading and cleaning, and "
                    f"data.validation_documents holds out {held_out}: nothing is left to train on; lower "
                    "data.validation_documents or add data."
                )
            raise LlmtuneError(
                f"data: the training text has {packer.tail()} tokens, too few for one block; add data or "
                "lower data.block_size."
            )

    def _pack(self, packer: _Packer, batch: list[tuple[int, str]], at: StreamPosition, counts: StreamCounts):
        if not batch:
            return
        ids = self.tokenizer([doc for _, doc in batch], add_special_tokens=False, verbose=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        documents = []
        for (number, _), tokens in zip(batch, ids, strict=True):
            if self.data.add_eos:
                tokens.append(eos)
            skip = at.offset if number == at.document else 0  # the document a resumed stream starts inside
            documents.append((number, skip, tokens[skip:]))
            counts.tokens += len(tokens) - skip
        counts.documents_tokenised += len(batch)
        for block, after in packer.add(documents):
            counts.blocks += 1
            yield block, after

    def head(self, count: int):
        """The first `count` training blocks of the stream as a datasets.Dataset (eval_train_blocks)."""
        first = itertools.islice(self.blocks(StreamPosition(), self.new_counts()), count)
        return blocks_dataset(np.stack([block for block, _ in first]))


# ------------------------------------------------------------------------------------------ checkpoints
class StreamCheckpoint(TrainerCallback):
    """Writes into every checkpoint (through training.make_checkpoints_atomic, so the file is part of the
    checkpoint whole) where the stream stands once the blocks trained so far are counted out."""

    def __init__(self, stream: TextStream, data_key: str, resumed: dict | None = None):
        self.stream, self.data_key = stream, data_key
        self.base_step, self.base_blocks = (resumed["step"], resumed["blocks"]) if resumed else (0, 0)
        self.blocks_per_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.blocks_per_step = args.train_batch_size * args.gradient_accumulation_steps * args.world_size

    def trained_blocks(self, step: int) -> int:
        return self.base_blocks + (step - self.base_step) * self.blocks_per_step

    def on_step_end(self, args, state, control, **kwargs):
        self.stream.forget_before(self.trained_blocks(state.global_step))

    def write_state(self, folder: Path, step: int) -> None:
        blocks = self.trained_blocks(step)
        state = {"step": step, "blocks": blocks, "position": asdict(self.stream.position_after(blocks))}
        write_json(folder / STATE_FILE, {**state, "data_key": self.data_key})


def stream_data_key(data: TextDataSection, sources: list, tokenizer) -> str:
    """What the stream's positions depend on: a checkpoint's position means nothing for other data."""
    options = data.model_dump(
        include={
            "txt_document",
            "text_field",
            "block_size",
            "stride",
            "add_eos",
            "clean",
            "validation_documents",
        }
    )
    source_names = [s.shown() if not isinstance(s, Path) else str(s) for s in sources]
    text = json.dumps(
        {"sources": source_names, "options": options, "tokenizer": tokenizer_fingerprint(tokenizer)}
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def read_stream_state(checkpoint: Path, data_key: str) -> dict:
    """The position a streaming run's checkpoint saved, checked against this run's data."""
    path = Path(checkpoint) / STATE_FILE
    restart = "or set train.ignore_data_skip: true to start the stream from its beginning."
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        position = StreamPosition(**state["position"])
        state = {"step": int(state["step"]), "blocks": int(state["blocks"]), "data_key": state["data_key"]}
    except FileNotFoundError:
        raise LlmtuneError(
            f"--resume: {checkpoint} holds no {STATE_FILE}, so where the stream stood is unknown (the run "
            f"that wrote it did not stream its data); resume it without data.streaming, {restart}"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LlmtuneError(f"--resume: {path} is not readable ({exc}); {restart}") from None
    if state["data_key"] != data_key:
        raise LlmtuneError(
            f"--resume: the data section or the tokenizer changed since {checkpoint} was written, so its "
            f"stream position points elsewhere now; resume with the data section it was written with, {restart}"
        )
    return {**state, "position": position}


# ------------------------------------------------------------------------------------------ report
@dataclass
class StreamReport:
    """The data report of a streaming run: what is known up front, then the counts at the end of training."""

    streaming: bool = True
    sources: list[str] = field(default_factory=list)
    file_bytes: dict[str, int] = field(
        default_factory=dict
    )  # sizes: hashing would read the whole corpus first
    block_size: int = 0
    stride: int = 0
    split: str = ""
    validation: dict[str, int] = field(default_factory=dict)  # documents, tokens, blocks
    resumed_at: dict | None = None  # the position --resume started the stream at
    # counted while training (this session), filled in when training ends
    counted: bool = False
    documents_read: int = 0
    empty_documents: int = 0
    skipped_rows: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, str] = field(default_factory=dict)
    cleaning: list[dict] = field(default_factory=list)
    passes: int = 0
    held_out_documents: int = 0
    resume_skipped_documents: int = 0
    documents_tokenised: int = 0
    tokens: int = 0
    blocks_read: int = 0
    dropped_tail_tokens: int = 0
    blocks_trained: int = 0
    tokens_trained: int = 0

    def count(self, counts: StreamCounts, blocks_trained: int) -> None:
        self.counted = True
        self.documents_read, self.empty_documents = counts.documents_read, counts.empty_documents
        self.skipped_rows, self.skipped_examples = dict(counts.bad.counts), dict(counts.bad.examples)
        self.cleaning = counts.cleaner.steps()
        self.passes, self.resume_skipped_documents = counts.passes, counts.resume_skipped_documents
        self.held_out_documents = counts.held_out_documents
        self.documents_tokenised, self.tokens, self.blocks_read = (
            counts.documents_tokenised,
            counts.tokens,
            counts.blocks,
        )
        self.dropped_tail_tokens = counts.dropped_tail_tokens
        self.blocks_trained, self.tokens_trained = blocks_trained, blocks_trained * self.block_size

    def lines(self) -> list[str]:
        hubs = sum(1 for s in self.sources if s not in self.file_bytes)
        out = [
            f"data: streaming from {len(self.file_bytes)} file(s)"
            + (f" and {hubs} hub dataset(s)" if hubs else "")
            + (", counted while training" if not self.counted else "")
            + f"; blocks of {self.block_size}"
            + (f" every {self.stride} tokens" if self.stride != self.block_size else "")
            + ", in file order"
        ]
        if self.validation:
            v = self.validation
            out.append(
                f"  split: {self.split}: {v['documents']:,} documents, {v['tokens']:,} tokens → {v['blocks']:,} blocks"
            )
        else:
            out.append(f"  split: {self.split}")
        if self.resumed_at:
            r = self.resumed_at
            out.append(
                f"  resumed at pass {r['passes'] + 1}, document {r['document']:,}, token {r['offset']:,}"
            )
        if not self.counted:
            return out
        out.append(
            f"  read this session: {self.documents_read:,} documents over {self.passes} pass(es)"
            + (f", {self.empty_documents:,} empty skipped" if self.empty_documents else "")
            + (f", {self.held_out_documents:,} held out for validation" if self.held_out_documents else "")
            + (
                f", {self.resume_skipped_documents:,} read again to reach the resume point"
                if self.resume_skipped_documents
                else ""
            )
        )
        out += skip_and_clean_lines(self.skipped_rows, self.skipped_examples, self.cleaning)
        out.append(
            f"  train: {self.documents_tokenised:,} documents, {self.tokens:,} tokens → {self.blocks_read:,} blocks "
            f"read ({self.blocks_trained:,} trained, the rest read ahead)"
            + (
                f"; {self.dropped_tail_tokens:,} tokens dropped at pass ends"
                if self.dropped_tail_tokens
                else ""
            )
        )
        return out

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ pipeline
def build_streaming_datasets(
    data: TextDataSection, tokenizer, *, describe=None, resume_from: Path | None = None, restart: bool = False
) -> tuple[dict, StreamReport, StreamCheckpoint]:
    """{"train": TextStream, "validation": Dataset (when asked for)}, the report, and the callback that keeps
    the stream's position in every checkpoint. `resume_from`: the checkpoint --resume continues, whose saved
    position the stream starts at, unless `restart` (train.ignore_data_skip) starts it from the beginning."""
    if data.add_eos and tokenizer.eos_token_id is None:
        raise LlmtuneError(
            "data.add_eos is true but the tokenizer has no EOS token; set data.add_eos: false."
        )
    sources = stream_sources(data.train_files, "data.train_files", describe=describe)
    report = StreamReport(block_size=data.block_size, stride=data.stride or data.block_size)
    report.sources = [str(s) if isinstance(s, Path) else s.shown() for s in sources]
    report.file_bytes = {str(s): s.stat().st_size for s in sources if isinstance(s, Path)}
    data_key = stream_data_key(data, sources, tokenizer)
    resumed = None
    if resume_from is not None and not restart:
        resumed = read_stream_state(resume_from, data_key)
        report.resumed_at = asdict(resumed["position"])
    stream = TextStream(
        data,
        tokenizer,
        sources,
        start=resumed["position"] if resumed else StreamPosition(),
        first_block=resumed["blocks"] if resumed else 0,
    )
    # Read up to the first block now, so that a missing text field, a bad row or too little text stops the
    # run before its folder is touched, as map-style's up-front read does.
    next(stream.blocks(StreamPosition(), stream.new_counts()))

    datasets: dict = {"train": stream}
    validation = _validation_blocks(data, tokenizer, stream, describe)
    if validation is not None:
        blocks, documents, tokens, report.split = validation
        report.validation = {"documents": documents, "tokens": tokens, "blocks": len(blocks)}
        datasets["validation"] = blocks_dataset(blocks)
    else:
        report.split = "no validation data"
    return datasets, report, StreamCheckpoint(stream, data_key, resumed)


def _validation_blocks(data: TextDataSection, tokenizer, stream: TextStream, describe):
    """(blocks, documents, tokens, description) of the validation text, or None when there is none."""
    if data.validation_files:
        files = expand_sources(data.validation_files, "data.validation_files", describe=describe)
        docs = read_documents(files, data, BadRows(), TextDataReport())
        docs, _ = clean_documents(docs, data.clean)
        if not docs:
            raise LlmtuneError(
                f"data.validation_files ({', '.join(str(p) for p in files)}): no documents after reading "
                "and cleaning (empty files, or everything removed by data.clean)."
            )
        split = f"validation from {len(files)} file(s)"
    elif data.validation_documents:
        first = itertools.islice(stream.documents(stream.new_counts()), data.validation_documents)
        docs = [doc for _, doc in first]
        split = f"the first {data.validation_documents:,} documents of the stream held out (never trained on)"
    else:
        return None
    ids = tokenize_documents(docs, tokenizer, data.add_eos, desc="Tokenising validation")
    blocks, _ = pack_into_blocks(ids, data.block_size, data.stride, keep_short=True)
    return blocks, len(docs), int(len(ids)), split
