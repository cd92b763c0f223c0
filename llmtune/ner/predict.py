"""Tag raw text with a trained lora-ner run: words (or characters) → tags → entities with character offsets.
Used by `llmtune lora-ner predict` and by `llmtune eval --ner`."""

from __future__ import annotations

import re
from dataclasses import dataclass
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


DEFAULT_BATCH_SIZE = 32


def tag_words(tagger, tokenizer, words: list[str], max_length: int) -> list[str]:
    """Tags for one sentence of words (a too-long sentence is tagged window by window, each word once)."""
    return tag_sentences(tagger, tokenizer, [words], max_length)[0]


def tag_sentences(
    tagger,
    tokenizer,
    sentences: list[list[str]],
    max_length: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    desc: str | None = None,
) -> list[list[str]]:
    """One tag per word of each sentence, in the order given.

    The sentences are tokenised in one call; a sentence longer than `max_length` sub-tokens is cut into
    word windows (split_long, no overlap) so each word is tagged once. Windows run through the tagger
    `batch_size` at a time, shortest first so a batch pads little; a CRF tagger decodes a batch at once.
    A word with no sub-token at all (e.g. a lone zero-width space) cannot be tagged and gets "O".
    `desc` names a progress bar over the windows.
    """
    import torch
    from tqdm.auto import tqdm

    labels = tagger.labels if hasattr(tagger, "labels") else tagger.get_base_model().labels
    device = next(tagger.parameters()).device
    tags = [["O"] * len(words) for words in sentences]
    windows = sorted(_windows(tokenizer, sentences, max_length), key=lambda w: len(w.inputs["input_ids"]))
    with tqdm(total=len(windows), desc=desc, unit="window", leave=False, disable=desc is None) as bar:
        for first in range(0, len(windows), batch_size):
            batch = windows[first : first + batch_size]
            inputs = tokenizer.pad(
                [w.inputs for w in batch], padding="longest", padding_side="right", return_tensors="pt"
            )
            width = inputs["input_ids"].shape[1]
            starts = torch.tensor([w.starts + [0] * (width - len(w.starts)) for w in batch])
            with torch.no_grad():
                predicted = tagger(**inputs.to(device), word_starts=starts.to(device))["logits"].cpu()
            for window, row, row_starts in zip(batch, predicted, starts.bool(), strict=True):
                for word, label in zip(window.words, row[row_starts].tolist(), strict=True):
                    tags[window.sentence][word] = labels[label]
            bar.update(len(batch))
    return tags


@dataclass
class _Window:
    sentence: int  # index into the sentences given
    words: list[int]  # the words it tags (those with sub-tokens), in order
    inputs: dict  # input_ids, attention_mask (token_type_ids) with the special tokens
    starts: list[int]  # word_starts of inputs["input_ids"]


def _windows(tokenizer, sentences: list[list[str]], max_length: int) -> list[_Window]:
    """The tagger inputs of every sentence: one window each, or several for one too long for the model.

    A window of a long sentence is a slice of the sentence's encoding between its special tokens: with
    is_split_into_words each word is tokenised on its own, so the slice equals encoding the window's
    words alone.
    """
    budget = max_length - tokenizer.num_special_tokens_to_add()
    todo = [i for i, words in enumerate(sentences) if words]
    if not todo:
        return []
    # verbose=False: no "longer than the maximum sequence length" warning; long sentences are cut below
    encoded = tokenizer(
        [sentences[i] for i in todo], is_split_into_words=True, truncation=False, verbose=False
    )
    windows = []
    for row, sentence in enumerate(todo):
        word_ids = encoded.word_ids(row)
        positions = [p for p, w in enumerate(word_ids) if w is not None]
        if not positions:
            continue  # no word has a sub-token
        head, tail = positions[0], positions[-1] + 1  # special tokens before and after the words
        columns = {key: values[row] for key, values in encoded.items()}
        # a word's sub-tokens are contiguous and in word order; counted 1 when it has none, as split_long
        # has always been given (len(tokenizer.tokenize(word)) or 1)
        pieces = [0] * len(sentences[sentence])
        for w in word_ids[head:tail]:
            pieces[w] += 1
        offsets = [head]
        for count in pieces:
            offsets.append(offsets[-1] + count)
        for start, end in split_long([count or 1 for count in pieces], budget, 0):
            words = [w for w in range(start, end) if pieces[w]]
            if not words:
                continue
            keep = [*range(head), *range(offsets[start], offsets[end]), *range(tail, len(word_ids))]
            kept_ids = [word_ids[p] for p in keep]
            windows.append(
                _Window(
                    sentence=sentence,
                    words=words,
                    inputs={key: [values[p] for p in keep] for key, values in columns.items()},
                    starts=word_starts(kept_ids),
                )
            )
    return windows


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
