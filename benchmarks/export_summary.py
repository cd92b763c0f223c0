"""The README's export table from the export_report.json files under a folder (benchmarks/export_figures.sh).

python benchmarks/export_summary.py runs/export-figures
"""

import json
import sys
from pathlib import Path

from llmtune.export.check import ANSWERS_MUST_MATCH


def main(folder: str) -> None:
    reports = sorted(Path(folder).glob("*/export_report.json"))
    print(
        "| source | format | type | file MB | vs f16 | perplexity source → export | top-1 agree | max abs Δ logit "
        "| greedy identical (+ near ties where they must match) | llama.cpp top-1 / greedy | s | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in reports:
        r = json.loads(path.read_text())
        second = r.get("llama_cpp") or {}
        llama = (
            f"{100 * second['top1_agreement']:.1f}% / {second['greedy_identical']}/{second['greedy_checked']}"
            if second
            else "—"
        )
        # near ties excuse a divergence only where answers must match (f32/f16/bf16/q8_0)
        ties = f" (+{r['greedy_near_ties']})" if r["type"] in ANSWERS_MUST_MATCH else ""
        print(
            f"| {path.parent.name} | {r['format']} | {r['type']} | {r['file_bytes'] / 1e6:.1f} | "
            f"{r['compression_vs_f16']:.2f}x | {r['perplexity_source']:.3f} → {r['perplexity_export']:.3f} "
            f"(×{r['perplexity_ratio']:.4f}) | {100 * r['top1_agreement']:.1f}% | {r['max_abs_logit']:.3g} | "
            f"{r['greedy_identical']}/{r['greedy_checked']}{ties} | {llama} | "
            f"{r['seconds']:.0f} | {r['peak_rss_mb']} |"
        )
    for path in reports:
        r = json.loads(path.read_text())
        if path.parent.name == "quickstart-ollama-q8_0":
            print(f"\n{path.parent.name}: greedy answers, source (merged quickstart) vs export")
            for a in r["answers"]:
                mark = "=" if a["identical"] else ("~" if a["near_tie"] else "≠")
                print(f"{mark} {a['prompt']}\n    source: {a['source']!r}\n    export: {a['export']!r}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/export-figures")
