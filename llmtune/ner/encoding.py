"""NER sentences → tagger inputs: read a recipe's files, align word tags to sub-tokens, split sentences that
are too long into word windows, and pad batches.

Readers of the file formats are data/ner.py; this module is what the tagger needs on top of them.
"""

from __future__ import annotations

from collections import Counter

from llmtune.data.ner import IGNORE_INDEX, NER_SUFFIXES, Sentence, read_ner_file
from llmtune.data.sources import BadRows, expand_sources, file_sha256
from llmtune.errors import LlmtuneError


def read_sentences(
    data, files: list[str], key: str, bad: BadRows, report: dict, describe=None
) -> list[Sentence]:
    """Sentences of the files named by `key` in a lora-ner data section; fills `report` (file hashes,
    unit, repairs, notes)."""
    out: list[Sentence] = []
    for path in expand_sources(files, key, NER_SUFFIXES, describe):
        repairs: Counter = Counter()
        notes: list[str] = []
        sentences, unit = read_ner_file(
            path,
            format=data.format,
            scheme=data.scheme,
            tag_column=data.tag_column,
            strict=data.strict,
            on_bad_rows=data.on_bad_rows,
            bad=bad,
            repairs=repairs,
            notes=notes,
        )
        if unit == "word":
            report.setdefault("repairs", {}).update(repairs)
            report.setdefault("notes", []).extend(notes)
        if data.max_samples:
            sentences = sentences[: data.max_samples]
        report["files"][str(path)] = file_sha256(path)
        report["unit"] = unit
        out.extend(sentences)
    return out


def encode(
    sentences: list[Sentence], tokenizer, label_ids: dict[str, int], data, *, stride: int, counts: Counter
):
    """Sub-token features; a sentence longer than data.max_length is split into word windows (counted)."""
    budget = data.max_length - tokenizer.num_special_tokens_to_add()
    continuation = {
        label_ids[t]: label_ids.get("I-" + t[2:], label_ids[t])
        for t in label_ids
        if t.startswith(("B-", "S-"))
    }
    rows = {"input_ids": [], "attention_mask": [], "labels": [], "word_starts": []}
    has_types = "token_type_ids" in tokenizer.model_input_names
    if has_types:
        rows["token_type_ids"] = []
    for sentence in sentences:
        pieces = [len(tokenizer.tokenize(word)) or 1 for word in sentence.tokens]
        windows = split_long(pieces, budget, stride)
        if len(windows) > 1:
            counts["split sentences"] += 1
            counts["extra windows"] += len(windows) - 1
        for start, end in windows:
            words = sentence.tokens[start:end]
            encoded = tokenizer(words, is_split_into_words=True, truncation=False)
            word_ids = encoded.word_ids()
            tag_ids = [label_ids[t] for t in sentence.tags[start:end]]
            labels = align_labels(word_ids, tag_ids, data.label_all_subtokens, continuation)
            rows["input_ids"].append(encoded["input_ids"])
            rows["attention_mask"].append(encoded["attention_mask"])
            rows["labels"].append(labels)
            rows["word_starts"].append(word_starts(word_ids))
            if has_types:
                rows["token_type_ids"].append(encoded["token_type_ids"])
    from datasets import Dataset

    return Dataset.from_dict(rows)


def word_starts(word_ids: list[int | None]) -> list[int]:
    """1 at the first sub-token of each word, 0 elsewhere (special tokens, continuation pieces)."""
    return [int(w is not None and (i == 0 or word_ids[i - 1] != w)) for i, w in enumerate(word_ids)]


class TaggingCollator:
    """Pads a batch: the tokenizer pads its own inputs; labels with -100 and word_starts with 0.
    (transformers' DataCollatorForTokenClassification pads only `labels`.)"""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features):
        import torch

        width = max(len(f["input_ids"]) for f in features)
        inputs = [{k: f[k] for k in f if k not in ("labels", "word_starts")} for f in features]
        batch = self.tokenizer.pad(inputs, padding="longest", return_tensors="pt")
        batch["labels"] = torch.tensor(
            [f["labels"] + [IGNORE_INDEX] * (width - len(f["labels"])) for f in features]
        )
        batch["word_starts"] = torch.tensor(
            [f["word_starts"] + [0] * (width - len(f["word_starts"])) for f in features]
        )
        return batch


def align_labels(
    word_ids: list[int | None],
    tags_ids: list[int],
    label_all_subtokens: bool = False,
    continuation_ids: dict[int, int] | None = None,
) -> list[int]:
    """One label id per sub-token, from one tag id per word (`word_ids` as a fast tokenizer gives them).

    Special tokens get -100 (ignored by the loss). A word's first sub-token gets the word's tag; its
    other sub-tokens get -100, so each word is predicted and scored once, as in the BERT paper. With
    `label_all_subtokens` they get the word's tag too, mapped through `continuation_ids` when given
    (e.g. B-PER's id → I-PER's id), because a copied B- would read as a second entity.
    """
    labels: list[int] = []
    previous = None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE_INDEX)
        elif word != previous:
            labels.append(tags_ids[word])
        elif label_all_subtokens:
            tag = tags_ids[word]
            labels.append((continuation_ids or {}).get(tag, tag))
        else:
            labels.append(IGNORE_INDEX)
        previous = word
    return labels


def split_long(tokens_per_word_counts: list[int], max_tokens: int, stride: int) -> list[tuple[int, int]]:
    """Word windows (start, end_exclusive) that cover a sentence without truncating any word.

    `tokens_per_word_counts[i]` is the number of sub-tokens of word i; `max_tokens` is the budget for
    them (the model's maximum length minus its special tokens). A sentence that fits is one window
    (0, n). A longer one is cut greedily into windows that each fit, where each window after the first
    starts `stride` words before the previous one ended (fewer when the overlap and the next word
    would not fit in one window), so every word appears in at least one window with some context on both sides. Train on
    every window; when predicting, score each word once (e.g. from the first window that holds it at
    least stride // 2 words from its right edge). A single word longer than `max_tokens` is an error.
    """
    if max_tokens < 1 or stride < 0:
        raise LlmtuneError(f"split_long needs max_tokens >= 1 and stride >= 0 (got {max_tokens}, {stride}).")
    for index, count in enumerate(tokens_per_word_counts):
        if count > max_tokens:
            raise LlmtuneError(
                f"Word {index} has {count} sub-tokens, more than the {max_tokens} that fit in one window; "
                "raise the maximum sequence length."
            )
    total = len(tokens_per_word_counts)
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end, used = start, 0
        while end < total and used + tokens_per_word_counts[end] <= max_tokens:
            used += tokens_per_word_counts[end]
            end += 1
        windows.append((start, end))
        if end >= total:
            return windows
        start = max(end - stride, start + 1)
        # Less overlap when the overlap and the next word do not fit together: a window that ended
        # where the previous one did would add nothing.
        while sum(tokens_per_word_counts[start : end + 1]) > max_tokens:
            start += 1
