"""NER tagging speed of `llmtune eval --ner`: the old one-sentence-at-a-time tagger (`reference`, kept here
verbatim) vs the batched `tag_sentences`, on the CoNLL-2003 validation split.

    .venv/bin/python benchmarks/ner_eval_speed.py [--sentences 500] [--pairs 3] [--batch-size 32] [--threads N]

The tagger is the recipe recipes/lora-ner/minilm-conll2003.yaml's shape: the demo encoder all-MiniLM-L6-v2
(minilm-l6) + linear + CRF, max_length 128, with an UNTRAINED head (random emissions and transitions):
its tags are meaningless, but the work per sentence is a trained tagger's. Each side is warmed up once on
the first 64 sentences, then the sides alternate old, new, old, new ... for --pairs pairs; the ratio of
each pair is new sentences/s over old sentences/s. The run also counts the sentences whose tags differ
between the two sides (padding changes float rounding, which could flip a near-tie).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

CONLL_VALID = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003" / "valid.txt"
CONLL_TAGS = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]


def reference(tagger, tokenizer, words: list[str], max_length: int) -> list[str]:
    """The old llmtune.ner.predict.tag_words, verbatim: one sentence, each word tokenised twice."""
    import torch

    from llmtune.ner.encoding import split_long, word_starts

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=500, help="First N validation sentences (0: all).")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    from llmtune.data.ner import BadRows, read_ner_file
    from llmtune.hub import resolve_model
    from llmtune.ner.predict import tag_sentences
    from llmtune.ner.tagger import Tagger

    encoder_path = resolve_model("minilm-l6").path
    tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    torch.manual_seed(0)
    tagger = Tagger(
        AutoModel.from_pretrained(encoder_path), CONLL_TAGS, use_crf=args.crf, scheme="BIO"
    ).eval()
    sentences, _ = read_ner_file(CONLL_VALID, bad=BadRows())
    total = len(sentences)
    if args.sentences:
        sentences = sentences[: args.sentences]
    words = [list(s.tokens) for s in sentences]
    print(
        f"CoNLL-2003 valid: {len(words):,} of {total:,} sentences ({sum(map(len, words)):,} words); "
        f"all-MiniLM-L6-v2 + linear{' + CRF' if args.crf else ''} (untrained head), max_length "
        f"{args.max_length}, batch size {args.batch_size}, torch threads {torch.get_num_threads()}"
    )

    def old():
        return [reference(tagger, tokenizer, w, args.max_length) for w in words]

    def new():
        return tag_sentences(tagger, tokenizer, words, args.max_length, batch_size=args.batch_size)

    def timed(side):
        start = time.perf_counter()
        tags = side()
        return len(words) / (time.perf_counter() - start), tags

    warm = words[:64]
    [reference(tagger, tokenizer, w, args.max_length) for w in warm]
    tag_sentences(tagger, tokenizer, warm, args.max_length, batch_size=args.batch_size)

    rates, ratios = {"old": [], "new": []}, []
    differ = 0
    for pair in range(args.pairs):
        old_rate, old_tags = timed(old)
        new_rate, new_tags = timed(new)
        rates["old"].append(old_rate)
        rates["new"].append(new_rate)
        ratios.append(new_rate / old_rate)
        differ = max(differ, sum(a != b for a, b in zip(old_tags, new_tags, strict=True)))
        print(
            f"pair {pair + 1}: old {old_rate:,.1f} sentences/s, new {new_rate:,.1f} sentences/s, ratio {ratios[-1]:.2f}x"
        )
    print(
        f"old (one sentence at a time): median {statistics.median(rates['old']):,.1f} sentences/s; "
        f"new (batched): median {statistics.median(rates['new']):,.1f} sentences/s"
    )
    print(
        f"new/old: median {statistics.median(ratios):.2f}x, min-max {min(ratios):.2f}x-{max(ratios):.2f}x "
        f"over {args.pairs} pairs; sentences whose tags differ (most in a pair): {differ} of {len(words):,}"
    )


if __name__ == "__main__":
    main()
