#!/usr/bin/env bash
# The README's export figures (issue 17): SmolLM2-135M-Instruct and the quickstart run (merged in memory),
# each exported to GGUF at f16, q8_0 and q4_0 (and Ollama q8_0 for the quickstart, its held-out questions as
# the greedy prompts: the round trip demo GGUF -> fine-tune -> GGUF), every export checked against its source.
#
#   bash benchmarks/export_figures.sh                 # ~20 min on a 2-core CPU
#   VERIFY=llama-cpp bash benchmarks/export_figures.sh   # also read each GGUF with llama.cpp (llama-cpp-python)
#
# SmolLM2 is checked on The Verdict (16 x 256 tokens), the quickstart on its 12 held-out conversations.
# Seconds and peak RSS are each export's own (export_report.json); benchmarks/export_summary.py prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
LLMTUNE=${LLMTUNE:-.venv/bin/llmtune}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/export-figures}
VERDICT=${VERDICT:-../shared/data/the-verdict/the-verdict.txt}
EXTRA=()
[[ -n "${VERIFY:-}" ]] && EXTRA=(--verify "$VERIFY")
for quant in f16 q8_0 q4_0; do
  $LLMTUNE export --model smollm2-135m-instruct --format gguf --quant $quant --check-text "$VERDICT" \
    --out $OUT/smollm2-$quant --overwrite "${EXTRA[@]}"
  $LLMTUNE export --recipe recipes/export/quickstart-ollama-q8_0.yaml --format gguf --quant $quant \
    --out $OUT/quickstart-$quant --overwrite "${EXTRA[@]}"
done
$LLMTUNE export --recipe recipes/export/quickstart-ollama-q8_0.yaml --out $OUT/quickstart-ollama-q8_0 \
  --overwrite "${EXTRA[@]}"
for fmt in bnb-8bit bnb-4bit; do
  $LLMTUNE export --model smollm2-135m-instruct --format $fmt --check-text "$VERDICT" \
    --out $OUT/smollm2-$fmt --overwrite
done
$PY benchmarks/export_summary.py $OUT
