#!/usr/bin/env bash
# The README's "llmtune --mcq vs lm-eval" table: SmolLM2-135M-Instruct, 0-shot, the 30 MMLU dev questions
# of ../shared/data/mcq/mmlu/dev, scored three ways (each command as the README shows it):
#   mcq       llmtune's own scorer (hendrycks' prompt)
#   llmtune   lm-eval on benchmarks/lm_eval_tasks/llmtune_prompt (llmtune's prompt, word for word)
#   lm_eval   lm-eval on benchmarks/lm_eval_tasks/lm_eval_prompt (lm-eval's own mmlu template)
# then the accuracies, the answers each pair agrees on, and the largest log-likelihood difference.
# About 2 minutes on 2 CPU cores (lm-eval indexes its ~15,000 built-in task files for a group: ~12 s a run).
#   bash benchmarks/lm_eval_vs_mcq.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LLMTUNE=${LLMTUNE:-.venv/bin/llmtune}
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-smollm2-135m-instruct}
OUT=runs/eval/lm-eval-vs-mcq
mkdir -p "$OUT"

$LLMTUNE eval --model "$MODEL" --mcq ../shared/data/mcq/mmlu/dev --out "$OUT/mcq" --overwrite
$LLMTUNE eval --model "$MODEL" --lm-eval mmlu_dev_llmtune --lm-eval-include benchmarks/lm_eval_tasks/llmtune_prompt \
    --out "$OUT/llmtune" --overwrite
$LLMTUNE eval --model "$MODEL" --lm-eval mmlu_dev_lmeval --lm-eval-include benchmarks/lm_eval_tasks/lm_eval_prompt \
    --out "$OUT/lm_eval" --overwrite

$PY - "$OUT" <<'PY'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])


def rows(run):
    """{(subject, question number): (predicted letter, [log-likelihood of " A".." D"])} of one run."""
    found = {}
    for path in sorted((out / run).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if run == "mcq":
                subject = row["subject"].removeprefix("mmlu/")
                number = int(row["where"].rsplit(" ", 1)[1]) - 2  # CSV line 2 is question 0
                scores = row["letter_log_likelihoods"]
            else:
                subject = row["task"].split("_", 3)[3]  # mmlu_dev_<prompt>_<subject>
                number = row["doc_id"]
                scores = [resp[0] for resp in row["filtered_resps"]]
            found[subject, number] = ("ABCD"[max(range(4), key=scores.__getitem__)], scores)
    return found


def accuracy(run):
    results = json.loads((out / run / "results.json").read_text())["results"]
    (found,) = results.values()
    if run == "mcq":
        return found["mcq"]["accuracy"]
    return found["lm_eval"]["tasks"][f"mmlu_dev_{'lmeval' if run == 'lm_eval' else 'llmtune'}"]["metrics"]["acc,none"]


runs = {run: rows(run) for run in ("mcq", "llmtune", "lm_eval")}
assert all(len(r) == 30 for r in runs.values()), {k: len(v) for k, v in runs.items()}
print("| scorer | accuracy (30 questions) | answers as llmtune --mcq | same order of A-D | log-likelihood vs --mcq: max (mean) abs. difference |")
print("|---|---:|---:|---:|---:|")
for run in runs:
    same = sum(runs[run][key][0] == runs["mcq"][key][0] for key in runs["mcq"])
    order = sum(
        sorted(range(4), key=runs[run][key][1].__getitem__) == sorted(range(4), key=runs["mcq"][key][1].__getitem__)
        for key in runs["mcq"]
    )
    diffs = [abs(a - b) for key in runs["mcq"] for a, b in zip(runs[run][key][1], runs["mcq"][key][1])]
    print(f"| {run} | {accuracy(run):.4f} | {same}/30 | {order}/30 | {max(diffs):.2e} ({sum(diffs) / len(diffs):.2e}) |")
letters = {run: "".join(runs[run][key][0] for key in sorted(runs["mcq"])) for run in runs}
for run, text in letters.items():
    print(f"{run:>8}: {text}")
PY
