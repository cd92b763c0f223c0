"""llmtune pretrain and dpo against the scripts a user would write with HF/TRL alone, in paired runs.

    .venv/bin/python benchmarks/training_overhead.py pretrain [--steps 8] [--pairs 3] [--json out.json]
    .venv/bin/python benchmarks/training_overhead.py dpo [--steps 8] [--pairs 3]

pretrain: recipes/pretrain/smollm2-135m-continued-lora.yaml (SmolLM2-135M-Instruct, LoRA r16 on all
linear layers, MedicalGPT's English prose in 256-token blocks, batch 4) against
benchmarks/hand_written/pretrain_hf.py (HF Trainer); rate: tokens/s (every block is full).
dpo: recipes/dpo/smollm2-135m-dpo-en.yaml (the same model and LoRA, LLMs-from-scratch preference pairs,
batch 4, max_length 256, sigmoid loss, beta 0.1) against benchmarks/hand_written/dpo_trl.py (TRL
DPOTrainer); rate: preference pairs/s.
Both sides: the same `--steps` optimizer steps, seed 42, no evaluation and no checkpoints inside the
measured time (the Trainer's train_runtime). The sft comparison is benchmarks/sft_overhead.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from paired import REPO, Side, compare, run_json, run_llmtune, tokens_per_second, write_report

HAND = Path(__file__).resolve().parent / "hand_written"
SHARED = REPO.parent / "shared/data"
NO_EVAL = [
    "train.eval_strategy=no",
    "train.eval_on_start=false",
    "train.save_strategy=no",
    "train.report_to=none",
    "train.disable_tqdm=true",
]
JOBS = {
    "pretrain": {
        "recipe": REPO / "recipes/pretrain/smollm2-135m-continued-lora.yaml",
        "script": ["pretrain_hf.py", str(SHARED / "medicalgpt/pretrain/en_article_tail500.txt")],
        "overrides": ["data.validation_split=0"],
        "rate": ("tokens/s", tokens_per_second),
        "ours": lambda r: {
            "tokens": r["train_tokens"],
            "seconds": r["train_runtime_s"],
            "train_loss": r["train_loss"],
            "steps": r["global_step"],
        },
    },
    "dpo": {
        "recipe": REPO / "recipes/dpo/smollm2-135m-dpo-en.yaml",
        "script": ["dpo_trl.py", str(SHARED / "preference-en/instruction-data-with-preference.json")],
        "script_tail": ["240"],
        "overrides": ["data.validation_split=0"],
        "rate": ("pairs/s", lambda r: r["pairs"] / r["seconds"]),
        "ours": lambda r: {
            "pairs": r["global_step"] * 4,
            "seconds": r["train_runtime_s"],
            "train_loss": r["train_loss"],
            "steps": r["global_step"],
        },
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    job = JOBS[options.job]
    work = Path(tempfile.mkdtemp(prefix=f"llmtune-{options.job}-overhead-"))

    def hand_written(round_: int) -> dict:
        script, *inputs = job["script"]
        out = str(work / f"hand-{round_}")
        tail = [*job.get("script_tail", []), str(options.steps)]
        return run_json([sys.executable, str(HAND / script), *inputs, out, *tail], cwd=HAND)

    def llmtune(round_: int) -> dict:
        overrides = [*NO_EVAL, *job["overrides"], f"train.max_steps={options.steps}"]
        return job["ours"](run_llmtune(options.job, job["recipe"], work / f"llmtune-{round_}", overrides))

    rate_name, rate = job["rate"]
    sides = [Side("hand-written", hand_written), Side(f"llmtune {options.job}", llmtune)]
    report = compare(sides, rate=rate, rate_name=rate_name, pairs=options.pairs)
    print(f"{options.job}, {options.steps} steps:")
    print(report.text())
    write_report(options.json, {options.job: report})


if __name__ == "__main__":
    main()
