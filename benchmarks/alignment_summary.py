"""The README's reward-model and RL table, read from the run folders that benchmarks/alignment_runs.sh wrote.

    python benchmarks/alignment_summary.py runs/alignment

Every figure comes from a run folder's manifest.json (results, wall time), reward_eval.json or heldout.json,
so the table can be checked against the files.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _minutes(manifest: dict) -> str:
    start, end = manifest.get("started"), manifest.get("finished")
    if not (start and end):
        return "?"
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return f"{seconds / 60:.1f} min"


def reward_row(name: str, folder: Path) -> str:
    manifest = _manifest(folder)
    results = manifest["results"]
    scores = json.loads((folder / "reward_eval.json").read_text())
    before, after = scores["before"], scores["after"]
    return (
        f"| {name} | pairwise accuracy **{before['accuracy']:.3f} → {after['accuracy']:.3f}** "
        f"({after['pairs']} held-out pairs), mean margin {before['mean_margin']:.3f} → {after['mean_margin']:.3f}; "
        f"chosen {after['chosen']['mean']:.2f} ± {after['chosen']['std']:.2f}, rejected "
        f"{after['rejected']['mean']:.2f} ± {after['rejected']['std']:.2f} | {results['global_step']} steps, "
        f"{_minutes(manifest)} |"
    )


def dpo_row(name: str, folder: Path) -> str:
    manifest = _manifest(folder)
    results = manifest["results"]
    return (
        f"| {name} | implicit-reward accuracy **{results.get('eval_rewards_accuracies_first', 0):.3f} → "
        f"{results['eval_rewards_accuracies']:.3f}**, margin {results.get('eval_rewards_margins_first', 0):.3f} → "
        f"{results['eval_rewards_margins']:.3f} | {results['global_step']} steps, {_minutes(manifest)} |"
    )


def rl_row(name: str, folder: Path) -> str:
    manifest = _manifest(folder)
    results = manifest["results"]
    held = json.loads((folder / "heldout.json").read_text())
    before, after = held["before"], held["after"]
    history = json.loads((folder / "metrics.json").read_text())
    rows = [r for r in history.get("train", []) if "reward" in r]
    tenth = max(1, len(rows) // 10)
    first = sum(r["reward"] for r in rows[:tenth]) / tenth if rows else float("nan")
    last = sum(r["reward"] for r in rows[-tenth:]) / tenth if rows else float("nan")
    per_function = ", ".join(
        f"{k} {before['rewards'][k]:.2f} → {v:.2f}"
        for k, v in after["rewards"].items()
        if k in before["rewards"]
    )
    return (
        f"| {name} | held-out accuracy **{before.get('accuracy', 0):.2f} → {after.get('accuracy', 0):.2f}** "
        f"({after['prompts']} questions, greedy), mean reward {before['reward_mean']:.3f} → {after['reward_mean']:.3f} "
        f"({per_function}; {before['completion_tokens_mean']:.1f} → {after['completion_tokens_mean']:.1f} tokens "
        "an answer); "
        f"training reward (mean of the first / last {tenth} steps) {first:.3f} → {last:.3f} | "
        f"{results['global_step']} steps, training {results['train_wall_s'] / 60:.1f} min, "
        f"{_minutes(manifest)} end to end |"
    )


def main(out: Path) -> None:
    print("| run | result | time (2 CPU cores) |\n|---|---|---|")
    rows = [
        (
            "reward-en",
            "reward model, English pairs (`recipes/reward/smollm2-135m-reward-en.yaml`)",
            reward_row,
        ),
        ("dpo-en", "DPO on the same pairs and held-out split", dpo_row),
        ("reward-medical", "reward model, MedicalGPT `dpo_zh_500` at 384 tokens", reward_row),
        ("grpo", "GRPO, arithmetic (`recipes/grpo/smollm2-135m-arithmetic.yaml`)", rl_row),
        ("rloo", "RLOO, the same recipe and budget", rl_row),
    ]
    for folder, label, row in rows:
        path = out / folder / "manifest.json"
        if path.exists() and json.loads(path.read_text()).get("status") == "completed":
            print(row(label, out / folder))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/alignment"))
