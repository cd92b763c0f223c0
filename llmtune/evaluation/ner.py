"""Entity F1 of a lora-ner run on a BIO (CoNLL columns) or span-JSON (CLUENER) file, with seqeval."""

from __future__ import annotations

from pathlib import Path

from llmtune.data.ner import Sentence, read_conll, read_span_json, to_scheme
from llmtune.data.sources import BadRows


def evaluate_ner(run: Path, files: list[Path], section) -> dict:
    """Precision/recall/F1 (micro, macro, per type) over all sentences of `files`."""
    from tqdm.auto import tqdm

    from llmtune.stages.lora_ner import load_tagger, score_tags, tag_words

    tagger, tokenizer, config = load_tagger(run)
    scheme = config.get("scheme", "BIO")
    bad = BadRows()
    gold, predicted = [], []
    for path in files:
        span_json = section.format == "span_json" or (
            section.format == "auto" and path.suffix in (".json", ".jsonl")
        )
        if span_json:
            sentences = read_span_json(path, scheme=scheme, on_bad_rows=section.on_bad_rows, bad=bad)
        else:
            sentences = read_conll(
                path, tag_column=section.tag_column, scheme="BIO", on_bad_rows=section.on_bad_rows, bad=bad
            )
            if scheme == "BIOES":
                sentences = [Sentence(s.tokens, to_scheme(s.tags, "BIOES"), s.where) for s in sentences]
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
