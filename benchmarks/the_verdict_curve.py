"""Our GPT-2 / "The Verdict" curve next to the one LLMs-from-scratch ch.5 published.

    llmtune pretrain --recipe recipes/pretrain/gpt2-124m-the-verdict.yaml
    .venv/bin/python benchmarks/the_verdict_curve.py runs/gpt2-124m-the-verdict [--png docs/the-verdict.png]

Prints a Markdown table (step, book train/val, llmtune train/val) and draws both curves. The book's
"train loss" is measured in eval mode on 5 batches of training data (recipe: data.eval_train_blocks: 10);
its step k is after k+1 optimizer steps, ours after k.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# ../shared/data/the-verdict/REFERENCE.md (ch05.ipynb stored output): step → (train, val)
BOOK = {
    0: (9.817, 9.924),
    5: (8.066, 8.332),
    10: (6.619, 7.042),
    15: (6.046, 6.596),
    20: (5.524, 6.508),
    25: (5.369, 6.378),
    30: (4.830, 6.263),
    35: (4.586, 6.285),
    40: (3.879, 6.130),
    45: (3.530, 6.183),
    50: (2.960, 6.123),
    55: (2.832, 6.150),
    60: (2.104, 6.133),
    65: (1.691, 6.186),
    70: (1.391, 6.230),
    75: (1.059, 6.251),
    80: (0.800, 6.278),
    85: (0.569, 6.373),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args()
    metrics = json.loads((args.run / "metrics.json").read_text())
    val = {row["step"]: row["eval_loss"] for row in metrics["eval"]}
    train = {row["step"]: row["eval_train_loss"] for row in metrics["eval_train"]}
    print("| step | book train | book val | llmtune train | llmtune val |")
    print("|---:|---:|---:|---:|---:|")
    for step in sorted(set(BOOK) | set(val)):
        book = BOOK.get(step, ("", ""))
        ours = (f"{train[step]:.3f}" if step in train else "", f"{val[step]:.3f}" if step in val else "")
        print(f"| {step} | {book[0]} | {book[1]} | {ours[0]} | {ours[1]} |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        steps = sorted(BOOK)
        ax.plot(steps, [BOOK[s][0] for s in steps], "--", color="tab:blue", label="book train")
        ax.plot(steps, [BOOK[s][1] for s in steps], "--", color="tab:orange", label="book val")
        ax.plot(
            sorted(train),
            [train[s] for s in sorted(train)],
            "-o",
            ms=3,
            color="tab:blue",
            label="llmtune train",
        )
        ax.plot(
            sorted(val), [val[s] for s in sorted(val)], "-o", ms=3, color="tab:orange", label="llmtune val"
        )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy loss")
        ax.set_title("GPT-2 124M from scratch on The Verdict (LLMs-from-scratch ch.5)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png)


if __name__ == "__main__":
    main()
