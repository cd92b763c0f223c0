"""The planner's CPU memory estimate (`llmtune.plan.estimate(..., target="cpu")`) against a real run.

    .venv/bin/python benchmarks/plan_vs_measured.py [--steps 3]

Each case trains a few steps with `llmtune.stages.pretrain.run` in a fresh process and measures the
growth of resident memory: the process's peak RSS (getrusage ru_maxrss) minus its RSS just before the
run starts (after torch, transformers and llmtune are imported). The planner's total for the same recipe,
fixed overhead included, is the number that growth should match. Cases:

  scratch       a ~77M-parameter Llama built from config (GPT-2 tokenizer), full training in fp32
  scratch-ckpt  the same with gradient checkpointing
  demo-lora     the demo model SmolLM2-135M with LoRA r 16 on all linear layers, micro-batch 2 (needs the
                converted demo)

demo-lora runs twice: as a user runs it, and with MALLOC_MMAP_THRESHOLD_=65536, which makes glibc return
freed tensors to the OS at once. The difference is heap fragmentation from the many mid-sized temporaries
that LoRA's extra matmuls and adds allocate: resident memory the planner does not model (the CUDA caching
allocator reuses such blocks). The peak comes with the first optimizer step, so two steps are enough.

About three minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LLMTUNE_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
VERDICT = SHARED_DATA / "the-verdict" / "the-verdict.txt"
GPT2_TOKENIZER = SHARED_DATA / "gpt2-tokenizer"

SCRATCH_MODEL = {
    "from_config": {
        "architecture": "llama",
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "max_position_embeddings": 256,
    },
    "tokenizer": str(GPT2_TOKENIZER),
}
CASES = {
    "scratch": {"model": SCRATCH_MODEL, "train": {"gradient_checkpointing": False}},
    "scratch-ckpt": {"model": SCRATCH_MODEL, "train": {"gradient_checkpointing": True}},
    "demo-lora": {
        "model": {"name_or_path": "smollm2-135m-instruct"},
        "peft": {"method": "lora", "r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
        # micro-batch 2: a 135M forward and backward takes ~30 s a step on 2 busy cores
        "train": {"gradient_checkpointing": False, "per_device_train_batch_size": 2},
    },
}


def recipe_for(case: str, out: Path, steps: int) -> dict:
    spec = CASES[case]
    recipe = {
        "model": spec["model"],
        "data": {"train_files": str(VERDICT), "txt_document": "file", "block_size": 256, "cache": False},
        "train": {
            "output_dir": str(out / "run"),
            "max_steps": steps,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-4,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            "seed": 0,
            **spec["train"],
        },
    }
    if "peft" in spec:
        recipe["peft"] = spec["peft"]
    return recipe


def rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(case: str, steps: int) -> dict:
    """Run one case in this process (call in a fresh one) and return planned and measured bytes."""
    import logging

    import torch  # noqa: F401 - imported before the baseline, as the run's own imports are
    import transformers  # noqa: F401

    from llmtune.plan import estimate
    from llmtune.recipe import PretrainRecipe, load_recipe
    from llmtune.stages import pretrain

    logging.getLogger("llmtune").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe_for(case, Path(tmp), steps)), encoding="utf-8")
        recipe = load_recipe(path, PretrainRecipe)
        plan = estimate(recipe, target="cpu")
        before = rss_now()
        results = pretrain.run(recipe)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "case": case,
        "parameters": plan.model["parameters"],
        "trainable": plan.model["trainable_parameters"],
        "micro_batch": plan.training["micro_batch"],
        "planned": plan.memory,
        "measured_growth": peak - before,
        "steps": results["global_step"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--case", choices=list(CASES), help="run one case here (used by the driver)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, args.steps)))
        return

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    runs = [(case, case, {}) for case in CASES]
    runs.append(("demo-lora/mm", "demo-lora", {"MALLOC_MMAP_THRESHOLD_": "65536"}))
    rows = []
    for label, case, extra_env in runs:
        proc = subprocess.run(
            [sys.executable, __file__, "--case", case, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            env={**env, **extra_env},
            cwd=REPO,
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            print(f"{label}: failed ({' '.join(tail)})")
            continue
        rows.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "case": label})

    mib = 2**20
    print(f"plan vs measured, CPU fp32, {args.steps} steps of 256-token blocks (MiB)")
    header = f"{'case':<13} {'batch':>5} {'params':>7} {'states':>7} {'activ':>6} {'logits':>6} {'ovhd':>5} {'planned':>8} {'measured':>9} {'ratio':>6}"
    print(header)
    for row in rows:
        m = row["planned"]
        states = m["weights"] + m["gradients"] + m["optimizer"] + m["autocast_copies"]
        ratio = row["measured_growth"] / m["total"]
        print(
            f"{row['case']:<13} {row['micro_batch']:>5} {row['parameters'] / 1e6:>6.1f}M {states / mib:>7.0f} {(m['activations'] + m['adapter_dropout']) / mib:>6.0f} "
            f"{m['logits'] / mib:>6.0f} {m['overhead'] / mib:>5.0f} {m['total'] / mib:>8.0f} "
            f"{row['measured_growth'] / mib:>9.0f} {ratio:>6.2f}"
        )
    print("ratio = measured peak-RSS growth / planned total; /mm = glibc returns freed memory at once")


if __name__ == "__main__":
    main()
