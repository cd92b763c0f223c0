"""Entity F1 of a lora-ner run on a BIO (CoNLL columns) or span-JSON (CLUENER) file, with seqeval."""

from __future__ import annotations

from pathlib import Path

from llmtune.data.ner import read_ner_file
from llmtune.data.sources import BadRows


def evaluate_ner(run: Path, files: list[Path], section) -> dict:
    """Precision/recall/F1 (micro, macro, per type) over all sentences of `files`."""
    from llmtune.ner.metrics import score_tags
    from llmtune.ner.predict import tag_sentences
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
        gold += [list(sentence.tags) for sentence in sentences]
        predicted += tag_sentences(
            tagger,
            tokenizer,
            [list(sentence.tokens) for sentence in sentences],
            config.get("max_length", 256),
            batch_size=section.batch_size,
            desc=f"ner {path.name}",
        )
    scores = score_tags(gold, predicted)
    scores["sentences"] = len(gold)
    if bad.total:
        scores["skipped"] = dict(bad.counts)
    return scores
