"""Multiple-choice scoring speed: the scorer before issue 14 (`reference`, copied below) against today's.

    .venv/bin/python benchmarks/mcq_eval_speed.py [--subjects 6] [--questions 5] [--shots 0] [--pairs 3] [--threads N]

The demo SmolLM2-135M-Instruct (float32, CPU) scores the first `--questions` MMLU dev questions of the
first `--subjects` subjects (sorted by name), `--shots` worked examples from the same dev file before
each question (never the question itself), in both modes:
- letter: the four answer letters after "Answer:" (`mcq.score: letter`, the default);
- text: the letters and each option's text (`mcq.score: text` / `both`).

Each side is called as `llmtune eval` calls it: the reference once per question (as it was), today's
scorer once per subject. Each side runs once to warm up, then A B A B ... for `--pairs` pairs; the
report gives questions/s of each side (median over its runs), the median and range of the per-pair
ratios (new / old speed), and checks that both chose the same answers and that their log-likelihoods
agree to 1e-4.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MMLU_DEV = REPO.parent / "shared/data/mcq/mmlu/dev"
LETTERS = "ABCD"


def reference(model, tokenizer, pairs, *, batch_size, add_special_tokens=True):
    """llmtune/evaluation/mcq.py `continuation_log_likelihoods` before issue 14, verbatim: one sequence
    per (context + continuation) unless every continuation of the context is one token long."""
    import torch

    encoded = []
    for context, continuation in pairs:
        context_ids = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
        whole = tokenizer(context + continuation, add_special_tokens=add_special_tokens)["input_ids"]
        if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
            continuation_ids = whole[len(context_ids) :]
        else:
            continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        encoded.append((context_ids, continuation_ids))

    single = {}
    for context_ids, continuation_ids in encoded:
        key = tuple(context_ids)
        single[key] = single.get(key, True) and len(continuation_ids) == 1
    sequences: dict[tuple, list[int]] = {}
    for context_ids, continuation_ids in encoded:
        if single[tuple(context_ids)]:
            sequences.setdefault(tuple(context_ids), context_ids)
        else:
            sequences.setdefault(tuple(context_ids + continuation_ids), context_ids + continuation_ids)
    wanted: dict[tuple, set] = {key: set() for key in sequences}
    for context_ids, continuation_ids in encoded:
        if single[tuple(context_ids)]:
            wanted[tuple(context_ids)].add((len(context_ids) - 1, continuation_ids[0]))
        else:
            first = len(context_ids)
            key = tuple(context_ids + continuation_ids)
            wanted[key].update((first + i - 1, token) for i, token in enumerate(continuation_ids))
    keys = list(sequences)
    device = next(model.parameters()).device
    found: dict[tuple, dict] = {}
    order = sorted(range(len(keys)), key=lambda i: -len(keys[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        chunk = [keys[i] for i in order[start : start + batch_size]]
        width = max(len(k) for k in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, key in enumerate(chunk):
            input_ids[row, : len(key)] = torch.tensor(key)
            attention[row, : len(key)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        for row, key in enumerate(chunk):
            pairs_here = sorted(wanted[key])
            positions = sorted({p for p, _ in pairs_here})
            table = torch.log_softmax(logits[row, positions].float(), dim=-1)
            index = {p: i for i, p in enumerate(positions)}
            found[key] = {(p, t): float(table[index[p], t]) for p, t in pairs_here}
    scores = []
    for context_ids, continuation_ids in encoded:
        if single[tuple(context_ids)]:
            scores.append(found[tuple(context_ids)][(len(context_ids) - 1, continuation_ids[0])])
            continue
        values = found[tuple(context_ids + continuation_ids)]
        first = len(context_ids)
        scores.append(sum(values[(first + i - 1, token)] for i, token in enumerate(continuation_ids)))
    return scores


def questions_by_subject(subjects: int, questions: int, shots: int) -> list[list[list[tuple[str, str]]]]:
    """Per subject, per question, its (prompt, continuation) pairs for text mode (letters then options)."""
    from llmtune.data.sources import BadRows
    from llmtune.evaluation.mcq import answer_prefix, build_prompt, read_questions

    out = []
    for path in sorted(MMLU_DEV.glob("*.csv"))[:subjects]:
        qfile = read_questions(path, "auto", "error", BadRows())
        prefix = answer_prefix(qfile.layout)
        asked = []
        for q in qfile.questions[:questions]:
            pool = [s for s in qfile.questions if s.where != q.where][:shots]
            prompt = build_prompt(qfile.layout, q, pool)
            letters = [(prompt, prefix + letter) for letter in LETTERS]
            asked.append(letters + [(prompt, prefix + option) for option in q.options])
        out.append(asked)
    return out


def run_old(model, tokenizer, subjects, mode, batch_size) -> list[list[float]]:
    return [
        reference(model, tokenizer, pairs if mode == "text" else pairs[:4], batch_size=batch_size)
        for asked in subjects
        for pairs in asked
    ]


def run_new(model, tokenizer, subjects, mode, batch_size) -> list[list[float]]:
    from llmtune.evaluation.mcq import continuation_log_likelihoods

    out = []
    for asked in subjects:
        chosen = [pairs if mode == "text" else pairs[:4] for pairs in asked]
        scores = continuation_log_likelihoods(
            model, tokenizer, [p for pairs in chosen for p in pairs], batch_size=batch_size
        )
        for pairs in chosen:
            out.append(scores[: len(pairs)])
            scores = scores[len(pairs) :]
    return out


def answers(scores: list[list[float]]) -> list[str]:
    """The predicted letter, and in text mode the predicted option, of each question."""
    picked = []
    for row in scores:
        for part in (row[:4], row[4:]):
            if part:
                picked.append(LETTERS[max(range(len(part)), key=part.__getitem__)])
    return picked


def boundary_merges(tokenizer, subjects) -> int:
    """Options whose tokens do not start with the prompt's own (scored from their own tokenisation)."""
    from llmtune.evaluation.mcq import encode_pairs

    count = 0
    for asked in subjects:
        for pairs in asked:
            for (context, continuation), (context_ids, _) in zip(
                pairs, encode_pairs(tokenizer, pairs), strict=True
            ):
                whole = tokenizer(context + continuation)["input_ids"]
                count += whole[: len(context_ids)] != context_ids
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="mcq.batch_size (its default: 8)")
    parser.add_argument("--modes", default="letter,text")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtune.hub import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = resolve_model("smollm2-135m-instruct").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    subjects = questions_by_subject(args.subjects, args.questions, args.shots)
    count = sum(len(asked) for asked in subjects)
    lengths = [len(tokenizer(pairs[0][0])["input_ids"]) for asked in subjects for pairs in asked]
    print(
        f"smollm2-135m-instruct, torch {torch.__version__}, {torch.get_num_threads()} threads; {count} MMLU "
        f"dev questions ({args.subjects} subjects x {args.questions}), {args.shots} shots, prompts "
        f"{min(lengths)}-{max(lengths)} tokens (median {statistics.median(lengths):.0f}); batch_size "
        f"{args.batch_size}; options whose tokens merge with the prompt's: {boundary_merges(tokenizer, subjects)}"
    )
    ok = True
    for mode in args.modes.split(","):
        sides = {"old": run_old, "new": run_new}
        results, seconds = {}, {"old": [], "new": []}
        for name, run in sides.items():  # warm-up, also the answers compared
            results[name] = run(model, tokenizer, subjects, mode, args.batch_size)
        for _ in range(args.pairs):
            for name, run in sides.items():
                begin = time.perf_counter()
                run(model, tokenizer, subjects, mode, args.batch_size)
                seconds[name].append(time.perf_counter() - begin)
        ratios = [old / new for old, new in zip(seconds["old"], seconds["new"], strict=True)]
        same = answers(results["old"]) == answers(results["new"])
        gap = max(
            abs(a - b)
            for old_row, new_row in zip(results["old"], results["new"], strict=True)
            for a, b in zip(old_row, new_row, strict=True)
        )
        ok = ok and same and gap < 1e-4
        print(
            f"{mode:6s}: old {count / statistics.median(seconds['old']):6.2f} q/s, "
            f"new {count / statistics.median(seconds['new']):6.2f} q/s; speed-up median "
            f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x, "
            f"{args.pairs} A/B pairs); same answers: {same}; max |log-likelihood gap| {gap:.2e}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
