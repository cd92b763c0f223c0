"""llmtune sft against the scripts a user would write instead, on the quickstart's job, in paired runs.

    .venv/bin/python benchmarks/sft_overhead.py [--epochs 1] [--pairs 3] [--json out.json]

The job is recipes/quickstart.yaml (SmolLM2-135M-Instruct, LoRA r16 on all linear layers, the shipped
llmtune-qa set, batch 8, lr 1e-3 cosine, max_length 256, no gradient checkpointing, eval on the 12
held-out questions at every epoch end), cut to `--epochs` of its 4 so that a round takes minutes. The
llmtune side is the shipped recipe as it is (eval on start included: its before/after report), without
the before/after sample answers (they run after training, outside the measured time).

Three sides, interleaved A B C A B C after a warm-up of each:
- A `LLaMA-Factory stand-in` (benchmarks/hand_written/sft_lf_standin.py): a plain HF Trainer on rows
  tokenised with the chat template, the prompt masked, DataCollatorForSeq2Seq: what LLaMA-Factory runs;
- B `TRL SFTTrainer script` (benchmarks/hand_written/sft_trl.py): conversational prompt-completion rows;
- C `llmtune sft`.
The rate is real (non-padding) training tokens per second of the Trainer's train_runtime (evaluations
inside the loop included); the losses show the work is equal.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml
from paired import REPO, Side, compare, run_json, run_llmtune, tokens_per_second, write_report

TRAIN = REPO / "recipes/data/llmtune-qa.jsonl"
VAL = REPO / "recipes/data/llmtune-qa-heldout.jsonl"
HAND = Path(__file__).resolve().parent / "hand_written"


def llmtune_recipe(work: Path, epochs: float) -> Path:
    recipe = yaml.safe_load((REPO / "recipes/quickstart.yaml").read_text())
    recipe.pop("samples", None)
    recipe["data"]["train_files"], recipe["data"]["validation_files"] = str(TRAIN), str(VAL)
    recipe["train"].update(num_train_epochs=epochs, report_to="none", disable_tqdm=True)
    path = work / "sft.yaml"
    path.write_text("# llmtune sft\n" + yaml.safe_dump(recipe, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmtune-sft-overhead-"))
    recipe = llmtune_recipe(work, options.epochs)

    def script(name: str):
        def run(round_: int) -> dict:
            out = work / f"{name}-{round_}"
            args = [str(TRAIN), str(VAL), str(out), "256", str(options.epochs)]
            return run_json([sys.executable, str(HAND / f"{name}.py"), *args], cwd=HAND)

        return run

    def llmtune(round_: int) -> dict:
        r = run_llmtune("sft", recipe, work / f"llmtune-{round_}")
        return {
            "tokens": r["train_tokens"],
            "seconds": r["train_runtime_s"],
            "train_loss": r["train_loss"],
            "eval_loss": r.get("eval_loss"),
            "steps": r["global_step"],
        }

    sides = [
        Side("LLaMA-Factory stand-in (HF Trainer)", script("sft_lf_standin")),
        Side("TRL SFTTrainer script", script("sft_trl")),
        Side("llmtune sft", llmtune),
    ]
    report = compare(sides, rate=tokens_per_second, rate_name="real tokens/s", pairs=options.pairs)
    print(f"sft, quickstart job, {options.epochs:g} epoch(s):")
    print(report.text())
    print(report.ratio_text("llmtune sft", over="TRL SFTTrainer script"))
    write_report(options.json, {"sft": report})


if __name__ == "__main__":
    main()
