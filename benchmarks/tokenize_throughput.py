"""Tokenise + pack throughput of llmtune's text pipeline vs the bare fast tokenizer on the same text.

    .venv/bin/python benchmarks/tokenize_throughput.py [--repeat 20] [--tokenizer smollm2-135m-instruct]

The corpus is MedicalGPT's two pretraining files (Chinese medical textbook + English prose) repeated
`--repeat` times with a copy number in each line, so that nothing is a duplicate. "bare" is one call of the
tokenizer on all documents (what a hand-written script does before packing); "llmtune" is
`build_text_datasets` without its cache: reading, tokenising in batches, joining with EOS, packing into
blocks and building the datasets.Dataset.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medicalgpt" / "pretrain"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tokenizer", default="smollm2-135m-instruct")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from llmtune.data.text import build_text_datasets
    from llmtune.hub import resolve_model
    from llmtune.models import load_tokenizer
    from llmtune.recipe import ModelSection, TextDataSection

    resolved = resolve_model(args.tokenizer)
    tokenizer = load_tokenizer(ModelSection(name_or_path=args.tokenizer), resolved)

    work = Path(tempfile.mkdtemp(prefix="llmtune-bench-"))
    lines = []
    for copy in range(args.repeat):
        for file in sorted(SHARED.glob("*.txt")):
            lines += [
                f"{copy} {line}" for line in file.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(lines), encoding="utf-8")
    print(f"corpus: {len(lines):,} lines, {corpus.stat().st_size / 1e6:.1f} MB, tokenizer {args.tokenizer}")

    bare, ours, tokens = [], [], 0
    for _ in range(args.rounds):
        start = time.perf_counter()
        encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
        bare.append(time.perf_counter() - start)
        tokens = sum(len(ids) for ids in encoded)

        data = TextDataSection(train_files=[str(corpus)], block_size=args.block_size, cache=False)
        start = time.perf_counter()
        _, report = build_text_datasets(data, tokenizer, work / "cache")
        ours.append(time.perf_counter() - start)
    bare_rate = tokens / statistics.median(bare)
    our_rate = report.tokens["train"] / statistics.median(ours)
    print(f"bare tokenizer:          {bare_rate:>12,.0f} tokens/s  (median of {args.rounds})")
    print(
        f"llmtune read+tok+pack:   {our_rate:>12,.0f} tokens/s  ({our_rate / bare_rate:.2f}x the bare tokenizer)"
    )


if __name__ == "__main__":
    main()
