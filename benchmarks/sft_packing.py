"""SFT with and without packing on MedicalGPT's ShareGPT data, and llmtune vs a hand-written SFTTrainer.

    .venv/bin/python benchmarks/sft_packing.py [--rows 64] [--max-length 512]

All runs: the demo SmolLM2-135M-Instruct, LoRA r16 on all linear layers, one epoch over the same first
`--rows` conversations of sharegpt_zh_1K_format.first465.jsonl, loss on assistant turns, batch 4, lr 2e-4,
no gradient checkpointing, eval on the same 16 held-out conversations at the end.

- llmtune unpacked: batches padded to their longest example.
- llmtune packed: TRL best-fit-decreasing packing into rows of max_length, padding-free.
- hand-written packed: the script a user would write with TRL alone on the same conversations:
  conversational dataset, `assistant_only_loss=True` (TRL swaps in its training template for ChatML),
  `packing=True`, the same arguments.

Reported: real (non-padding) tokens/s of training time, the padding share of processed tokens, and the
final eval loss ("equal loss" check).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared/data/medicalgpt/sft/sharegpt_zh_1K_format.first465.jsonl"

RECIPE = """
model: {{name_or_path: smollm2-135m-instruct}}
data:
  train_files: {train}
  validation_files: {val}
  max_length: {max_length}
  packing: {packing}
  on_bad_rows: skip
peft: {{method: lora, r: 16, lora_alpha: 32, lora_dropout: 0.05, target_modules: all-linear}}
train:
  output_dir: {out}
  seed: 42
  num_train_epochs: 1
  per_device_train_batch_size: 4
  per_device_eval_batch_size: 4
  learning_rate: 2.0e-4
  lr_scheduler_type: cosine
  warmup_steps: 0.1
  gradient_checkpointing: false
  logging_steps: 1
  eval_strategy: "no"
  eval_on_start: false
  save_strategy: "no"
  report_to: none
  disable_tqdm: true
"""

HAND_WRITTEN = textwrap.dedent(
    """
    import json, sys
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer
    from llmtune.hub import resolve_model

    train_file, val_file, out, max_length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    def load(path):
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        return Dataset.from_list([{"messages": [{"role": roles[t["from"]], "content": t["value"]}
                                                for t in r["conversations"]]} for r in rows])
    path = resolve_model("smollm2-135m-instruct").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    set_seed(42)
    model = AutoModelForCausalLM.from_pretrained(path)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules="all-linear"))
    args = SFTConfig(output_dir=out, seed=42, num_train_epochs=1, per_device_train_batch_size=4,
                     per_device_eval_batch_size=4, learning_rate=2e-4, lr_scheduler_type="cosine",
                     warmup_steps=0.1, gradient_checkpointing=False, logging_steps=1, save_strategy="no",
                     report_to="none", disable_tqdm=True, use_cpu=True, bf16=False, max_length=max_length,
                     packing=True, assistant_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=load(train_file), eval_dataset=load(val_file),
                         processing_class=tokenizer)
    real = 0
    collate = trainer.data_collator
    def counting(examples):
        global real
        if trainer.model.training:
            real += sum(len(e["input_ids"]) for e in examples)
        return collate(examples)
    trainer.data_collator = counting
    result = trainer.train()
    loss = trainer.evaluate()["eval_loss"]
    print(json.dumps({"tokens": real, "seconds": result.metrics["train_runtime"], "eval_loss": loss}))
    """
)


def split_data(work: Path, rows: int) -> tuple[Path, Path]:
    """The first `rows` valid conversations for training and the next 16 for eval (human/gpt only)."""
    good = []
    for line in DATA.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        turns = row.get("conversations") or []
        if turns and all(t.get("value", "").strip() for t in turns) and turns[-1]["from"] == "gpt":
            good.append(line)
    train, val = work / "train.jsonl", work / "val.jsonl"
    train.write_text("\n".join(good[:rows]) + "\n", encoding="utf-8")
    val.write_text("\n".join(good[rows : rows + 16]) + "\n", encoding="utf-8")
    return train, val


def run_llmtune(work: Path, train: Path, val: Path, packing: bool, max_length: int) -> dict:
    out = work / f"llmtune-packing-{packing}"
    recipe = work / f"recipe-{packing}.yaml"
    recipe.write_text(
        RECIPE.format(train=train, val=val, out=out, packing=str(packing).lower(), max_length=max_length)
    )
    subprocess.run(
        [sys.executable, "-m", "llmtune", "sft", "--recipe", str(recipe)],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    results = json.loads((out / "manifest.json").read_text())["results"]
    return {
        "tokens": results["train_tokens"],
        "seconds": results["train_runtime_s"],
        "padding_share": results["padding_share"],
        "eval_loss": results["eval_loss"],
        "steps": results["global_step"],
    }


def run_hand_written(work: Path, train: Path, val: Path, max_length: int) -> dict:
    script = work / "hand_written.py"
    script.write_text(HAND_WRITTEN)
    done = subprocess.run(
        [sys.executable, str(script), str(train), str(val), str(work / "hand"), str(max_length)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmtune-packing-"))
    train, val = split_data(work, args.rows)
    runs = {
        "llmtune unpacked": run_llmtune(work, train, val, False, args.max_length),
        "llmtune packed": run_llmtune(work, train, val, True, args.max_length),
        "hand-written TRL packed": run_hand_written(work, train, val, args.max_length),
    }
    print("| run | real tokens | steps | padding share | real tokens/s | eval loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in runs.items():
        share = f"{r['padding_share']:.1%}" if r.get("padding_share") is not None else "0 (padding-free)"
        print(
            f"| {name} | {r['tokens']:,} | {r.get('steps', '')} | {share} | {r['tokens'] / r['seconds']:.1f} | "
            f"{r['eval_loss']:.4f} |"
        )
    packed, unpacked = runs["llmtune packed"], runs["llmtune unpacked"]
    hand = runs["hand-written TRL packed"]
    speedup = (packed["tokens"] / packed["seconds"]) / (unpacked["tokens"] / unpacked["seconds"])
    overhead = (packed["tokens"] / packed["seconds"]) / (hand["tokens"] / hand["seconds"])
    print(f"packed / unpacked real tokens/s: {speedup:.2f}×; llmtune / hand-written: {overhead:.3f}×")


if __name__ == "__main__":
    main()
