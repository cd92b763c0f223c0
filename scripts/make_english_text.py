"""Write the English news text that the prune and distill recipes calibrate, train and measure on, from the
CoNLL-2003 sentences in ../shared/data/conll2003 (Reuters newswire, 1996; research use only, so it is
written beside the runs and never shipped in the repository).

    .venv/bin/python scripts/make_english_text.py

writes runs/data/english-news/train.txt (from train.txt: 14,041 sentences) and heldout.txt (the first 720
sentences of valid.txt, ~15k tokens: enough for a stable perplexity, small enough to score twice per run on a
CPU): the tokens of each sentence joined and detokenised ("do n't" -> "don't", "word ," ->
"word,"), every 12 sentences one paragraph (the copy marks no document boundaries), paragraphs separated
by a blank line (data.txt_document: paragraph). Rerunning rewrites the same bytes.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "conll2003"
SENTENCES_PER_PARAGRAPH = 12
HELDOUT_SENTENCES = 720

_RULES = [
    (re.compile(r" ([.,:;?!%)\]}])"), r"\1"),
    (re.compile(r"([(\[{$]) "), r"\1"),
    (re.compile(r" (n't|'s|'re|'ve|'m|'ll|'d)\b"), r"\1"),
    (re.compile(r'" (.*?) "'), r'"\1"'),
]


def sentences(path: Path) -> list[str]:
    out, words = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if words:
                out.append(detokenise(words))
                words = []
            continue
        token = line.split(" ")[0]
        if token != "-DOCSTART-":
            words.append(token)
    if words:
        out.append(detokenise(words))
    return out


def detokenise(words: list[str]) -> str:
    text = " ".join(words)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def paragraphs(lines: list[str]) -> str:
    chunks = [lines[i : i + SENTENCES_PER_PARAGRAPH] for i in range(0, len(lines), SENTENCES_PER_PARAGRAPH)]
    return "\n\n".join(" ".join(chunk) for chunk in chunks) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "data" / "english-news")
    parser.add_argument("--source", type=Path, default=SHARED)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, source, limit in (
        ("train.txt", "train.txt", None),
        ("heldout.txt", "valid.txt", HELDOUT_SENTENCES),
    ):
        text = paragraphs(sentences(args.source / source)[:limit])
        target = args.out / name
        if target.exists() and target.read_text(encoding="utf-8") != text:
            # Files are never replaced unless they are what this script writes (rerunning rewrites the same bytes).
            raise SystemExit(
                f"{target} exists with other content; move it away or pass --out ANOTHER_FOLDER."
            )
        target.write_text(text, encoding="utf-8")
        print(f"{args.out / name}: {len(text):,} characters")


if __name__ == "__main__":
    main()
