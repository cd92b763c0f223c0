"""Training throughput of `llmtune pretrain` vs a hand-written HF Trainer script doing the same work.

    .venv/bin/python benchmarks/pretrain_throughput.py [--steps 8] [--rounds 2]

Both train SmolLM2-135M-Instruct (the demo model) with LoRA r 16 on all linear layers, on the same
packed blocks of MedicalGPT's English prose (block 256, batch 4), for the same number of steps, with
the same TrainingArguments and no evaluation. The hand-written side is the minimal script a user would
write: tokenizer, model, PEFT, `Trainer(...).train()`. Throughput is real (non-padding) tokens per
second of training time; rounds alternate the two sides so that machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/pretrain/smollm2-135m-continued-lora.yaml"

HAND_WRITTEN = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed
    from llmtune.hub import resolve_model

    steps, out = int(sys.argv[1]), sys.argv[2]
    path = resolve_model("smollm2-135m-instruct").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = open(sys.argv[3], encoding="utf-8").read()
    docs = [p for p in text.split("\\n\\n") if p.strip()]
    ids = []
    for d in docs:
        ids += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = [ids[i:i + 256] for i in range(0, len(ids) - 255, 256)]
    set_seed(42)
    model = AutoModelForCausalLM.from_pretrained(path)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules="all-linear"))
    def collate(rows):
        x = torch.tensor([r["input_ids"] for r in rows])
        return {"input_ids": x, "labels": x.clone(), "attention_mask": torch.ones_like(x)}
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=4, learning_rate=2e-4,
                             lr_scheduler_type="cosine", warmup_steps=0.1, logging_steps=1, save_strategy="no",
                             report_to="none", use_cpu=True, seed=42, disable_tqdm=True,
                             include_num_input_tokens_seen="non_padding", dataloader_pin_memory=False)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": blocks}),
                      data_collator=collate)
    result = trainer.train()
    print(json.dumps({"tokens": trainer.state.num_input_tokens_seen, "seconds": result.metrics["train_runtime"]}))
    """
)


def run_llmtune(steps: int, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "llmtune",
        "pretrain",
        "--recipe",
        str(RECIPE),
        "--set",
        f"train.output_dir={out}",
        "--set",
        f"train.max_steps={steps}",
        "--set",
        "train.eval_strategy=no",
        "--set",
        "train.eval_on_start=false",
        "--set",
        "data.validation_split=0",
        "--set",
        "train.save_strategy=no",
        "--set",
        "train.report_to=none",
        "--set",
        "train.disable_tqdm=true",
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    results = json.loads((out / "manifest.json").read_text())["results"]
    return {"tokens": results["train_tokens"], "seconds": results["train_runtime_s"]}


def run_hand_written(steps: int, out: Path, corpus: Path) -> dict:
    script = out.parent / "hand_written.py"
    script.write_text(HAND_WRITTEN)
    done = subprocess.run(
        [sys.executable, str(script), str(steps), str(out), str(corpus)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    corpus = REPO.parent / "shared/data/medicalgpt/pretrain/en_article_tail500.txt"
    work = Path(tempfile.mkdtemp(prefix="llmtune-tput-"))
    ours, theirs = [], []
    for round_ in range(args.rounds):
        a = run_hand_written(args.steps, work / f"hand{round_}", corpus)
        b = run_llmtune(args.steps, work / f"llmtune{round_}")
        theirs.append(a["tokens"] / a["seconds"])
        ours.append(b["tokens"] / b["seconds"])
        print(
            f"round {round_ + 1}: hand-written {theirs[-1]:.1f} tok/s, llmtune {ours[-1]:.1f} tok/s "
            f"({a['tokens']} vs {b['tokens']} tokens)"
        )
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(
        f"median: hand-written {statistics.median(theirs):.1f} tok/s, llmtune {statistics.median(ours):.1f} tok/s, "
        f"ratio {ratio:.3f}"
    )


if __name__ == "__main__":
    main()
