"""NER data for a token tagger (BERT + CRF): CoNLL columns and CLUENER span JSON, as tagged sentences.

Two file shapes are read into the same `Sentence` (tokens + one tag per token):

* CoNLL columns (`read_conll`): one token per line, whitespace-separated columns, the tag in one column,
  a blank line between sentences, `-DOCSTART-` lines ignored. CoNLL-2003 as shipped here is BIO (IOB2);
  files in the older IOB1 convention are detected and converted to BIO, with a note saying so.
* CLUENER span JSON (`read_span_json`): `{"text": ..., "label": {type: {entity: [[start, end], ...]}}}`
  with `end` inclusive; one character per token, tags derived from the spans.

Every broken row is an error naming file and line, or, with `on_bad_rows: skip`, a counted skip of the
whole sentence: a tagger trained on half a sentence learns wrong transitions, so nothing is kept partially.
`read_ner_file` picks the reader for a file; `label_list` and `check_labels` give the label set and check
dev/test data against it. Turning sentences into model inputs (sub-token alignment, windows) is
llmtune/ner/encoding.py.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from llmtune.data.sources import (
    BadRows,
    brief,
    clip,
    iter_json_rows,
    read_text_file,
    report_bad_row,
    split_lines,
)
from llmtune.errors import LlmtuneError

SCHEMES = ("BIO", "BIOES")
IGNORE_INDEX = -100  # the label id that PyTorch's cross-entropy (and our CRF mask) skips

_TAG_PATTERNS = {
    "BIO": re.compile(r"O|[BI]-\S+"),
    "BIOES": re.compile(r"O|[BIES]-\S+"),
}
_TAG_FORMS = {"BIO": "O, B-TYPE or I-TYPE", "BIOES": "O, B-TYPE, I-TYPE, E-TYPE or S-TYPE"}


@dataclass
class Sentence:
    """One tagged sentence; `where` is '<file> line N' of its first line, for error messages."""

    tokens: list[str]
    tags: list[str]
    where: str


# ------------------------------------------------------------------------------------- tag schemes
def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, start, end_exclusive) of each entity in BIO, IOB1 or BIOES tags.

    Leniently, like conlleval: an I-/E- tag that does not continue an entity of its type opens a new
    one. That single rule reads IOB1 and repairs broken BIO, so conversions all go through here.
    """
    spans: list[tuple[str, int, int]] = []
    start, kind = None, ""
    for index, tag in enumerate(tags):
        prefix, _, label = tag.partition("-")
        continues = start is not None and label == kind and prefix in ("I", "E")
        if not continues:
            if start is not None:
                spans.append((kind, start, index))
            start, kind = (index, label) if prefix in ("B", "I", "E", "S") else (None, "")
        if prefix in ("E", "S") and start is not None:
            spans.append((kind, start, index + 1))
            start, kind = None, ""
    if start is not None:
        spans.append((kind, start, len(tags)))
    return spans


def tags_from_entities(spans: list[tuple[str, int, int]], length: int, scheme: str) -> list[str]:
    """Tags for `length` tokens with the given non-overlapping (type, start, end_exclusive) entities."""
    tags = ["O"] * length
    for kind, start, end in spans:
        if scheme == "BIOES" and end - start == 1:
            tags[start] = f"S-{kind}"
            continue
        tags[start] = f"B-{kind}"
        for index in range(start + 1, end):
            tags[index] = f"I-{kind}"
        if scheme == "BIOES":
            tags[end - 1] = f"E-{kind}"
    return tags


def to_scheme(tags: list[str], scheme: str) -> list[str]:
    """The same entities tagged in `scheme` ("BIO" or "BIOES"); also turns IOB1 or broken BIO into BIO."""
    _check_scheme(scheme)
    return tags_from_entities(entities(tags), len(tags), scheme)


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise LlmtuneError(f"Unknown tag scheme '{scheme}'; expected one of {', '.join(SCHEMES)}.")


def _broken_transition(tags: list[str], scheme: str) -> tuple[int, str] | None:
    """(index, reason) of the first tag that breaks strict `scheme`, or None when the sequence is valid."""
    previous = "O"
    for index, tag in enumerate([*tags, "O"]):  # the sentinel O checks that BIOES closes every entity
        prefix, label = tag[0], tag[2:]
        open_same = previous[0] in ("B", "I") and previous[2:] == label
        if scheme == "BIO" and prefix == "I" and not open_same:
            return index, (
                f"I- tag after O or another type ({tag} follows {_previous_name(previous, index)}; strict BIO opens "
                f"an entity with B-{label}, or set strict: false to repair it)"
            )
        if scheme == "BIOES":
            if prefix in ("I", "E") and not open_same:
                return index, f"broken BIOES sequence ({tag} follows {_previous_name(previous, index)})"
            if prefix in ("O", "B", "S") and previous[0] in ("B", "I"):
                closer = "the end of the sentence" if index == len(tags) else tag
                return index - 1, f"broken BIOES sequence ({previous} is not closed by E-, found {closer})"
        previous = tag
    return None


def _previous_name(previous: str, index: int) -> str:
    return "the sentence start" if index == 0 else previous


# ------------------------------------------------------------------------------------ CoNLL columns
def read_conll(
    path: Path | str,
    *,
    tag_column: int = -1,
    scheme: str = "BIO",
    strict: bool = True,
    on_bad_rows: str = "error",
    bad: BadRows,
    repairs: Counter | None = None,
    notes: list[str] | None = None,
    key: str = "data.on_bad_rows",
) -> list[Sentence]:
    """Sentences of a CoNLL-style column file whose tags are in `scheme` ("BIO" or "BIOES").

    The token is column 0 and the tag column `tag_column` (default: the last); every token line must
    have as many columns as the file's first one. With scheme BIO, a file in IOB1 (I- opens entities,
    B- only separates two adjacent ones of the same type) is converted to BIO and a line saying so is
    appended to `notes`. Under `strict`, an I-/E- tag that continues no entity is a bad row; with
    `strict=False` the sentence is re-tagged instead and the changed tags are counted in `repairs`.
    Use `to_scheme` to turn the result into the scheme the model trains on. `key` is the recipe key
    that asks for skips (data.on_bad_rows, or ner.on_bad_rows in eval), named in errors.
    """
    path = Path(path)
    _check_scheme(scheme)
    blocks = _conll_blocks(read_text_file(path))
    if not blocks:
        raise LlmtuneError(
            f"{path}: no sentences found; expected one token per line with its tag in a column, "
            "and a blank line between sentences."
        )
    first_line, first_columns = blocks[0][0]
    width = len(first_columns)
    _check_tag_column(path, first_line, width, tag_column)
    parsed = [_parse_block(block, width, tag_column, scheme) for block in blocks]
    if scheme == "BIO":
        _convert_iob1(path, parsed, notes)

    sentences: list[Sentence] = []
    for block, (tokens, tags, problem) in zip(blocks, parsed, strict=True):
        first = block[0][0]
        if problem is None and (broken := _broken_transition(tags, scheme)) is not None:
            if strict:
                problem = (first + broken[0], broken[1])
            else:
                tags = _repair(tags, scheme, repairs)
        if problem is not None:
            report_bad_row(f"{path} line {problem[0]}", problem[1], on_bad_rows, bad, key)
            continue
        sentences.append(Sentence(tokens, tags, f"{path} line {first}"))
    return sentences


# Columns are separated by spaces and tabs only: str.split() would also cut a token at a no-break space,
# U+2028, \x1c-\x1f and the like, which are characters of the token (and change the column count).
_COLUMN_SEPARATOR = re.compile(r"[ \t]+")


def _conll_blocks(text: str) -> list[list[tuple[int, list[str]]]]:
    """Sentences as lists of (line number, columns); blank and -DOCSTART- lines end a sentence."""
    blocks: list[list[tuple[int, list[str]]]] = []
    current: list[tuple[int, list[str]]] = []
    for number, line in enumerate(split_lines(text), start=1):
        columns = _COLUMN_SEPARATOR.split(line.strip(" \t"))
        if not line.strip() or columns[0] == "-DOCSTART-":
            if current:
                blocks.append(current)
            current = []
            continue
        current.append((number, columns))
    if current:
        blocks.append(current)
    return blocks


def _check_tag_column(path: Path, line: int, width: int, tag_column: int) -> None:
    # A wrong tag column is a recipe mistake, not a bad row: every sentence would be skipped.
    if width < 2:
        raise LlmtuneError(
            f"{path} line {line}: one column only; a CoNLL file needs the token and a tag on each line."
        )
    if not -width <= tag_column < width or tag_column in (0, -width):
        raise LlmtuneError(
            f"{path} line {line}: tag_column {tag_column} does not name a tag column in a line of "
            f"{width} columns (column 0 is the token; -1 is the last)."
        )


def _parse_block(
    block: list[tuple[int, list[str]]], width: int, tag_column: int, scheme: str
) -> tuple[list[str], list[str], tuple[int, str] | None]:
    """(tokens, tags, problem) for one sentence; problem is (line, reason) for its first bad line."""
    for number, columns in block:
        if len(columns) != width:
            reason = f"column count differs from the file's first token line ({len(columns)} columns, expected {width})"
            return [], [], (number, reason)
        tag = columns[tag_column]
        if not _TAG_PATTERNS[scheme].fullmatch(tag):
            return [], [], (number, f"invalid {scheme} tag ({brief(tag)}; expected {_TAG_FORMS[scheme]})")
    return [c[0] for _, c in block], [c[tag_column] for _, c in block], None


def _convert_iob1(path: Path, parsed: list, notes: list[str] | None) -> None:
    """Re-tag an IOB1 file as BIO in place, leaving BIO files (even with a few broken tags) alone.

    In IOB1 an entity opens with I- and B- appears only between two adjacent entities of one type, so
    a file where I- opens entities and B- never does is IOB1. In BIO nearly every entity opens with B-;
    a file with both is BIO with mistakes, and those stay for the strict check to report.
    """
    opened = Counter()
    for _, tags, problem in parsed:
        if problem is None:
            for index, tag in enumerate(tags):
                previous = tags[index - 1] if index else "O"
                if tag != "O" and not (previous != "O" and previous[2:] == tag[2:]):
                    opened[tag[0]] += 1
    if not opened["I"] or opened["B"]:
        return
    for index, (tokens, tags, problem) in enumerate(parsed):
        if problem is None:
            parsed[index] = (tokens, to_scheme(tags, "BIO"), None)
    if notes is not None:
        notes.append(
            f"{path}: tags are IOB1 ({opened['I']} entities open with I-, none with B-); converted to BIO."
        )


def _repair(tags: list[str], scheme: str, repairs: Counter | None) -> list[str]:
    fixed = to_scheme(tags, scheme)
    if repairs is not None:
        reason = (
            "I- tag opening an entity retagged B-" if scheme == "BIO" else "broken BIOES sequence retagged"
        )
        repairs[reason] += sum(a != b for a, b in zip(tags, fixed, strict=True))
    return fixed


# ------------------------------------------------------------------------------------ any NER file
NER_SUFFIXES = (".txt", ".conll", ".bio", ".tsv", ".json", ".jsonl")


def read_ner_file(
    path: Path,
    *,
    format: str = "auto",
    scheme: str = "BIO",
    tag_column: int = -1,
    strict: bool = True,
    on_bad_rows: str = "error",
    bad: BadRows,
    repairs: Counter | None = None,
    notes: list[str] | None = None,
    key: str = "data.on_bad_rows",
) -> tuple[list[Sentence], str]:
    """(sentences tagged in `scheme`, unit) of one file: span JSON (`format` span_json, or auto and a
    .json/.jsonl file; unit "char") or CoNLL columns (unit "word", read as BIO and converted)."""
    span_json = format == "span_json" or (format == "auto" and path.suffix in (".json", ".jsonl"))
    if span_json:
        return read_span_json(path, scheme=scheme, on_bad_rows=on_bad_rows, bad=bad, key=key), "char"
    sentences = read_conll(
        path,
        tag_column=tag_column,
        scheme="BIO",
        strict=strict,
        on_bad_rows=on_bad_rows,
        bad=bad,
        repairs=repairs,
        notes=notes,
        key=key,
    )
    if scheme == "BIOES":
        sentences = [Sentence(s.tokens, to_scheme(s.tags, "BIOES"), s.where) for s in sentences]
    return sentences, "word"


# -------------------------------------------------------------------------------- CLUENER span JSON
def read_span_json(
    path: Path | str,
    *,
    scheme: str = "BIO",
    on_bad_rows: str = "error",
    bad: BadRows,
    key: str = "data.on_bad_rows",
) -> list[Sentence]:
    """Sentences of CLUENER-style JSON lines, one character per token, tagged in `scheme`.

    Each row is `{"text": str, "label": {type: {entity_text: [[start, end], ...]}}}` with `end`
    inclusive; a row without "label" is a sentence with no entities. Overlapping (nested) spans are a
    bad row: a flat tagger can hold only one of them, and choosing silently would change the data.
    """
    path = Path(path)
    _check_scheme(scheme)
    sentences: list[Sentence] = []
    for where, row in iter_json_rows(path, on_bad_rows, bad, key):
        spans, problem = _row_spans(row)
        if problem is not None:
            report_bad_row(where, problem, on_bad_rows, bad, key)
            continue
        text = row["text"]
        sentences.append(Sentence(list(text), tags_from_entities(spans, len(text), scheme), where))
    return sentences


def _row_spans(row: dict) -> tuple[list[tuple[str, int, int]], str | None]:
    """(type, start, end_exclusive) entities of one row, or the reason the row is broken."""
    text = row.get("text")
    if not isinstance(text, str):
        keys = ", ".join(list(row)[:8])
        problem = "missing text field 'text'" if text is None else "text field 'text' is not a string"
        return [], f"{problem} (keys: {keys})"
    if not text:
        return [], "empty text"
    label = row.get("label")
    if label is None:
        return [], None
    if not isinstance(label, dict):
        return [], f"'label' is not an object (found {type(label).__name__})"
    spans: list[tuple[str, int, int]] = []
    for kind, found in label.items():
        if not isinstance(found, dict):
            return (
                [],
                f"malformed label (type '{clip(kind)}' should map entity text to spans, found {brief(found)})",
            )
        for entity, pairs in found.items():
            for pair in pairs if isinstance(pairs, list) else [pairs]:
                problem = _span_problem(text, kind, entity, pair)
                if problem is not None:
                    return [], problem
                spans.append((kind, pair[0], pair[1] + 1))
    spans.sort(key=lambda span: (span[1], span[2]))
    for before, after in pairwise(spans):
        if after[1] < before[2]:
            return [], f"overlapping spans ({_describe(text, before)} and {_describe(text, after)})"
    return spans, None


def _span_problem(text: str, kind: str, entity: str, pair) -> str | None:
    if not (
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in pair)
    ):
        return f"malformed span ({clip(kind)} {brief(entity)}: expected [start, end] integers, found {brief(pair)})"
    start, end = pair
    if not 0 <= start <= end < len(text):
        return f"span out of range ({clip(kind)} {brief(entity)} [{start}, {end}] in a text of {len(text)} characters)"
    if text[start : end + 1] != entity:
        return (
            f"span text does not match the text ({clip(kind)} {brief(entity)} [{start}, {end}] covers "
            f"{brief(text[start : end + 1])}; end is inclusive)"
        )
    return None


def _describe(text: str, span: tuple[str, int, int]) -> str:
    kind, start, end = span
    return f"{clip(kind)} {brief(text[start:end])} [{start}, {end - 1}]"


# ----------------------------------------------------------------------------------- label set
def label_list(sentences: list[Sentence]) -> list[str]:
    """Every tag of every entity type seen, sorted, with "O" first (its id is 0).

    A type seen in training gets all its tags (B-/I- or B-/I-/E-/S-) even when some never occur, e.g.
    a type whose entities are all one token long: dev data may use the others, and that is no error.
    """
    used = {tag for sentence in sentences for tag in sentence.tags}
    prefixes = "BIES" if any(tag[0] in "ES" for tag in used) else "BI"
    types = {tag[2:] for tag in used if tag != "O"}
    return ["O", *sorted(f"{prefix}-{kind}" for kind in types for prefix in prefixes)]


def check_labels(sentences: list[Sentence], labels: list[str], split_name: str) -> None:
    """Stop when `split_name` (validation, test) uses a tag the training labels lack."""
    known = set(labels)
    for sentence in sentences:
        for index, tag in enumerate(sentence.tags):
            if tag not in known:
                raise LlmtuneError(
                    f"{split_name}: tag {brief(tag)} at {sentence.where}, token {index + 1} "
                    f"({brief(sentence.tokens[index])}) never occurs in the training data, so the model has "
                    "no label for it.",
                    hint=f"Add training examples of it or fix the tag; training labels: {', '.join(labels)}.",
                )
