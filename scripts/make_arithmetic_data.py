"""Write the small arithmetic prompt set that the grpo/rloo recipes train on: questions with a verifiable
number as the answer, for numeric_match rewards.

    .venv/bin/python scripts/make_arithmetic_data.py

writes recipes/data/arithmetic-train.jsonl (400 rows) and recipes/data/arithmetic-heldout.jsonl (100 rows),
rows like {"question": "What is 47 + 38? Answer with just the number.", "answer": "85"}. Like llmtune-qa
beside them, the data is written for this project (generated here, seeded): rerunning the command rewrites
the same bytes.

The mix is chosen for SmolLM2-135M-Instruct, a weak model: one-digit sums it mostly gets right, two-digit
sums and differences and small products it often gets wrong, so that its accuracy is neither ~0 nor ~1 and
GRPO's groups of samples disagree (a group that all scores the same teaches nothing). No expression
appears twice, in either file or across them (the held-out set measures answers never trained on).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TEMPLATES = (
    "What is {expression}? Answer with just the number.",
    "Compute {expression}. Reply with only the number.",
    "{expression} = ? Give only the number.",
)

# kind → (share of the rows, how to draw its two operands)
KINDS = {
    "add_1d_1d": (0.10, lambda r: (r.randint(1, 9), "+", r.randint(1, 9))),
    "add_2d_1d": (0.20, lambda r: (r.randint(10, 99), "+", r.randint(1, 9))),
    "add_2d_2d": (0.25, lambda r: (r.randint(10, 99), "+", r.randint(10, 99))),
    "sub_2d_1d": (0.15, lambda r: (r.randint(10, 99), "-", r.randint(1, 9))),
    "sub_2d_2d": (0.10, lambda r: _ordered(r.randint(10, 99), r.randint(10, 99))),
    "mul_1d_1d": (0.08, lambda r: (r.randint(2, 9), "×", r.randint(2, 9))),
    "mul_1d_2d": (0.12, lambda r: (r.randint(2, 9), "×", r.randint(10, 30))),
}


def _ordered(a: int, b: int) -> tuple[int, str, int]:
    # Larger first: the answers stay non-negative, so a leading minus sign is never what is tested.
    return (max(a, b), "-", min(a, b))


def _value(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def make_rows(count: int, rng: random.Random, seen: set) -> list[dict]:
    """`count` rows in the KINDS mix, each expression new to `seen` (which they are added to)."""
    rows = []
    for kind, (share, draw) in KINDS.items():
        wanted = round(count * share) if kind != list(KINDS)[-1] else count - len(rows)
        made = tries = 0
        while made < wanted:
            a, op, b = draw(rng)
            tries += 1
            if tries > 100_000:  # e.g. 1d + 1d has only 81 expressions
                raise SystemExit(f"{kind}: not {wanted} new expressions left; ask for fewer rows")
            if (a, op, b) in seen:
                continue
            seen.add((a, op, b))
            question = rng.choice(TEMPLATES).format(expression=f"{a} {op} {b}")
            rows.append({"question": question, "answer": str(_value(a, op, b))})
            made += 1
    rng.shuffle(rows)
    return rows


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {path} ({len(rows)} rows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--train", type=int, default=400, help="Training rows.")
    parser.add_argument("--heldout", type=int, default=100, help="Held-out rows (no expression shared).")
    parser.add_argument("--out-dir", type=Path, default=REPO / "recipes" / "data")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    seen: set = set()
    heldout = make_rows(args.heldout, rng, seen)
    train = make_rows(args.train, rng, seen)
    questions = [row["question"] for row in train + heldout]
    assert len(set(questions)) == len(questions), "a question appears twice"
    write(args.out_dir / "arithmetic-train.jsonl", train)
    write(args.out_dir / "arithmetic-heldout.jsonl", heldout)


if __name__ == "__main__":
    main()
