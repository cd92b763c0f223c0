"""Tag raw text with a trained lora-ner run: words (or characters) → tags → entities with character offsets.
Used by `llmtune lora-ner predict` and by `llmtune eval --ner`."""

from __future__ import annotations

import re
from pathlib import Path

from llmtune.data.ner import entities
from llmtune.data.sources import read_text_file, split_lines
from llmtune.errors import LlmtuneError
from llmtune.ner.encoding import split_long, word_starts


def texts_to_tag(texts: list[str] | None, file: str | None) -> list[str]:
    """The texts of `lora-ner predict`: its arguments, then the non-blank lines of `--file`.

    The file is checked and read like every data file (a folder, a FIFO or a device is named as such, a
    binary or non-UTF-8 file names the byte offset) and split on "\n" only, so a text holding U+2028
    stays one text.
    """
    items = list(texts or [])
    if file:
        lines = [line for line in split_lines(read_text_file(Path(file), "--file")) if line.strip()]
        if not lines:
            raise LlmtuneError(f"--file {file} holds no text to tag (it is empty or blank).")
        items += lines
    if not items:
        raise LlmtuneError("give text to tag as arguments or with --file.")
    return items


def tag_words(tagger, tokenizer, words: list[str], max_length: int) -> list[str]:
    """Tags for one sentence of words (a too-long sentence is tagged window by window, each word once)."""
    import torch

    labels = tagger.labels if hasattr(tagger, "labels") else tagger.get_base_model().labels
    budget = max_length - tokenizer.num_special_tokens_to_add()
    pieces = [len(tokenizer.tokenize(w)) or 1 for w in words]
    tags: list[str] = []
    for start, end in split_long(pieces, budget, 0):
        encoded = tokenizer(words[start:end], is_split_into_words=True, return_tensors="pt")
        starts = torch.tensor([word_starts(encoded.word_ids())])
        with torch.no_grad():
            predictions = tagger(**encoded, word_starts=starts)["logits"][0]
        tags += [labels[int(p)] for p in predictions[starts[0].bool()]]
    return tags


def split_text(text: str, unit: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words (whitespace and punctuation) or characters of raw text, with their character offsets."""
    if unit == "char":
        chars = [(m.group(), m.start()) for m in re.finditer(r"\S", text)]
        return [c for c, _ in chars], [(s, s + 1) for _, s in chars]
    words = list(re.finditer(r"\w+(?:[-'.]\w+)*|[^\w\s]", text))
    return [m.group() for m in words], [(m.start(), m.end()) for m in words]


def predict_entities(tagger, tokenizer, config: dict, text: str) -> list[dict]:
    """The entities in `text`: [{type, text, start, end}] with end exclusive, offsets into `text`."""
    words, offsets = split_text(text, config.get("unit", "word"))
    tags = tag_words(tagger, tokenizer, words, config.get("max_length", 256)) if words else []
    return [
        {
            "type": kind,
            "text": text[offsets[s][0] : offsets[e - 1][1]],
            "start": offsets[s][0],
            "end": offsets[e - 1][1],
        }
        for kind, s, e in entities(tags)
    ]
