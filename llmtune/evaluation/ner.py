"""Entity F1 of a lora-ner run on a BIO (CoNLL columns) or span-JSON (CLUENER) file, with seqeval."""

from __future__ import annotations

from pathlib import Path

from llmtune.data.ner import read_ner_file
from llmtune.data.sources import BadRows


def evaluate_ner(run: Path, files: list[Path], section) -> dict:
    """Precision/recall/F1 (micro, macro, per type) over all sentences of `files`."""
    from tqdm.auto import tqdm

    from llmtune.ner.metrics import score_tags
    from llmtune.ner.predict import tag_words
    from llmtune.ner.tagger import load_tagger

    tagger, tokenizer, config = load_tagger(run)
    bad = BadRows()
    gold, predicted = [], []
    for path in files:
        sentences, _ = read_ner_file(
            path,
            format=section.format,
            scheme=config.get("scheme", "BIO"),
            tag_column=section.tag_column,
            on_bad_rows=section.on_bad_rows,
            bad=bad,
            key="ner.on_bad_rows",
        )
        if section.max_samples:
            sentences = sentences[: section.max_samples]
        for sentence in tqdm(sentences, desc=f"ner {path.name}", unit="sentence", leave=False):
            gold.append(list(sentence.tags))
            predicted.append(
                tag_words(tagger, tokenizer, list(sentence.tokens), config.get("max_length", 256))
            )
    scores = score_tags(gold, predicted)
    scores["sentences"] = len(gold)
    if bad.total:
        scores["skipped"] = dict(bad.counts)
    return scores
