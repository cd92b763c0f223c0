"""The README's prune / distill tables from the folders benchmarks/distill_experiment.sh writes.

    .venv/bin/python benchmarks/distill_summary.py

Every figure is read from a run's own prune_report.json / manifest.json / results.json; nothing is measured
here. Perplexities of the text experiment are all on the same held-out blocks (runs/data/english-news/
heldout.txt in blocks of 256 tokens), so teacher, pruned, plain and distilled compare directly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

RUNS = Path(__file__).resolve().parents[1] / "runs"
PRUNES = (
    "smollm2-135m-depth-20",
    "smollm2-135m-depth-20-perplexity",
    "smollm2-135m-width",
    "smollm2-135m-wanda-50",
)
PLAIN = RUNS / "pretrain" / "smollm2-135m-20-layers-plain"
DISTILLED = RUNS / "distill" / "smollm2-135m-20-layers-text"
CHAT = RUNS / "distill" / "smollm2-quickstart-to-20-layers-chat"
COMPARE = RUNS / "eval" / "quickstart-vs-distilled"


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def prune_table() -> None:
    print("| prune recipe | what was removed | parameters | held-out ppl before → after | seconds |")
    print("|---|---|---|---|---|")
    for name in PRUNES:
        report = _json(RUNS / "prune" / name / "prune_report.json")
        if report is None:
            print(f"| {name} | (not run) | | | |")
            continue
        removed = []
        if "depth" in report:
            removed.append(f"layers {report['depth']['removed']} ({report['depth']['method']})")
        if "width" in report:
            after = report["after"]
            removed.append(
                f"MLP {report['before']['intermediate_size']}→{after['intermediate_size']}, heads "
                f"{report['before']['attention_heads']}→{after['attention_heads']} "
                f"(kv {report['before']['kv_heads']}→{after['kv_heads']})"
            )
        if "unstructured" in report:
            sparse = report["unstructured"]
            removed.append(
                f"{sparse['method']} {sparse['target']:.0%} (measured {sparse['sparsity']['total']:.4f})"
            )
        print(
            f"| `{name}` | {'; '.join(removed)} | "
            f"{report['before']['parameters'] / 1e6:.1f}M → {report['after']['parameters'] / 1e6:.1f}M | "
            f"{report['heldout_perplexity_before']:.2f} → {report['heldout_perplexity_after']:.2f} | "
            f"{report['seconds']:.0f} |"
        )


def text_table() -> None:
    plain = (_json(PLAIN / "manifest.json") or {}).get("results")
    distilled = (_json(DISTILLED / "manifest.json") or {}).get("results")
    pruned = _json(RUNS / "prune" / "smollm2-135m-depth-20" / "prune_report.json")
    if not (plain and distilled and pruned):
        print("(text experiment incomplete)")
        return
    print(
        "| model (held-out English news, 256-token blocks) | held-out perplexity | steps | train tokens | "
        "tokens/s | wall time |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| teacher: SmolLM2-135M-Instruct, 30 layers, {pruned['before']['parameters'] / 1e6:.1f}M | "
        f"{distilled['teacher_eval_perplexity']:.2f} | | | | |"
    )
    print(
        f"| student: depth-pruned to 20 layers, {pruned['after']['parameters'] / 1e6:.1f}M, no training | "
        f"{pruned['heldout_perplexity_after']:.2f} | 0 | | | |"
    )
    for label, results in (
        ("plain next-token training", plain),
        ("distillation from the teacher", distilled),
    ):
        print(
            f"| student + {label} | {results['eval_perplexity']:.2f} | {results['global_step']} | "
            f"{results['train_tokens']:,} | {results['train_tokens_per_second']:.0f} | "
            f"{results['train_runtime_s'] / 60:.1f} min |"
        )
    pruned_loss = math.log(pruned["heldout_perplexity_after"])
    teacher_loss = math.log(distilled["teacher_eval_perplexity"])
    for label, results in (("plain", plain), ("distilled", distilled)):
        closed = (pruned_loss - math.log(results["eval_perplexity"])) / (pruned_loss - teacher_loss)
        print(
            f"\n{label}: {closed:.1%} of the pruned student's held-out loss gap to the teacher closed", end=""
        )
    print()


def variants_table() -> None:
    """The text distillation at other temperatures / alphas, and both runs at 2x the steps."""
    rows = []
    for alpha, temperature in (("1.0", "1.0"), ("0.5", "1.0"), ("0.5", "2.0")):
        folder = (
            DISTILLED
            if (alpha, temperature) == ("1.0", "1.0")
            else DISTILLED.with_name(f"{DISTILLED.name}-a{alpha}-t{temperature}")
        )
        results = (_json(folder / "manifest.json") or {}).get("results")
        if results:
            rows.append((f"distill, alpha {alpha}, T {temperature}", results))
    plain = (_json(PLAIN / "manifest.json") or {}).get("results")
    if plain:
        rows.insert(0, ("plain next-token training", plain))
    for label, folder in (("plain", PLAIN), ("distill, alpha 1.0, T 1.0", DISTILLED)):
        results = (_json(folder.with_name(folder.name + "-200") / "manifest.json") or {}).get("results")
        if results:
            rows.append((f"{label}, 200 steps", results))
    if not rows:
        return
    print("| 20-layer student trained with | steps | held-out perplexity | tokens/s | wall time |")
    print("|---|---|---|---|---|")
    for label, results in rows:
        print(
            f"| {label} | {results['global_step']} | {results['eval_perplexity']:.2f} | "
            f"{results['train_tokens_per_second']:.0f} | {results['train_runtime_s'] / 60:.1f} min |"
        )


def chat_table() -> None:
    results = (_json(CHAT / "manifest.json") or {}).get("results")
    if not results:
        print("(chat experiment incomplete)")
        return
    print("| held-out answer tokens (12 quickstart questions) | loss | perplexity |")
    print("|---|---|---|")
    rows = (
        ("teacher: quickstart run (30 layers, LoRA merged)", results["eval_teacher_loss"]),
        ("student before chat distillation (20 layers, text-distilled)", results["eval_ce_loss_first"]),
        ("student after chat distillation", results["eval_ce_loss"]),
    )
    for label, loss in rows:
        print(f"| {label} | {loss:.3f} | {math.exp(loss):.2f} |")
    print(
        f"\nchat distillation: {results['global_step']} steps, {results['train_runtime_s'] / 60:.1f} min, "
        f"{results['train_tokens_per_second']:.0f} tokens/s"
    )
    compare = _json(COMPARE / "results.json")
    if compare:
        teacher, student = (compare["results"][name]["generate"]["rows"] for name in compare["models"])
        same = sum(a["output"] == b["output"] for a, b in zip(teacher, student, strict=True))
        print(f"\ngreedy answers identical: {same}/{len(teacher)}\n")
        print("| question | teacher (quickstart) | distilled 20-layer student |")
        print("|---|---|---|")
        for a, b in zip(teacher, student, strict=True):
            print(f"| {a['prompt']} | {_cell(a['output'])} | {_cell(b['output'])} |")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:160]


if __name__ == "__main__":
    prune_table()
    print()
    text_table()
    print()
    variants_table()
    print()
    chat_table()
