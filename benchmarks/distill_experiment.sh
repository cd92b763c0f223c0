#!/usr/bin/env bash
# Prune, then recover with distillation versus plain training at the same budget (issue 16's experiment):
#
#   bash benchmarks/distill_experiment.sh            # everything: ~2 h on a 2-core CPU
#   ONLY="variants longer" bash benchmarks/distill_experiment.sh
#
# Steps (ONLY= picks some): prune (depth to 20 layers, width, Wanda 50%), text (plain next-token training of
# the 20-layer student vs distillation from the 30-layer teacher: same data, seed, order, steps, tokens),
# chat (the quickstart run as teacher of the text-distilled student, then both answer the held-out
# questions), variants (depth ranked by perplexity; the text distillation at other T / alpha), longer (plain and distilled at 2x the
# steps). Finally benchmarks/distill_summary.py prints the README's tables.
set -euo pipefail
cd "$(dirname "$0")/.."
LLMTUNE=${LLMTUNE:-.venv/bin/llmtune}
PY=${PY:-.venv/bin/python}
ONLY=${ONLY:-"prune text chat variants longer"}
want() { [[ " $ONLY " == *" $1 "* ]]; }

$PY scripts/make_english_text.py
if want prune; then
  for recipe in smollm2-135m-depth-20 smollm2-135m-width smollm2-135m-wanda-50; do
    $LLMTUNE prune --recipe recipes/prune/$recipe.yaml --overwrite
  done
fi
if want text; then
  $LLMTUNE pretrain --recipe recipes/pretrain/smollm2-135m-20-layers-plain.yaml --overwrite
  $LLMTUNE distill --recipe recipes/distill/smollm2-135m-20-layers-text.yaml --overwrite
fi
if want variants; then
  # depth ranked by the loss increase of each skipped layer instead of block influence (16 calibration blocks:
  # one pass per layer)
  $LLMTUNE prune --recipe recipes/prune/smollm2-135m-depth-20.yaml --overwrite --set prune.depth.method=perplexity \
    --set prune.calibration_blocks=16 --set prune.output_dir=runs/prune/smollm2-135m-depth-20-perplexity
  for setting in "0.5 1.0" "0.5 2.0"; do
    read -r alpha temperature <<< "$setting"
    $LLMTUNE distill --recipe recipes/distill/smollm2-135m-20-layers-text.yaml --overwrite \
      --set distill.alpha=$alpha --set distill.temperature=$temperature \
      --set train.output_dir=runs/distill/smollm2-135m-20-layers-text-a$alpha-t$temperature
  done
fi
if want longer; then
  $LLMTUNE pretrain --recipe recipes/pretrain/smollm2-135m-20-layers-plain.yaml --overwrite \
    --set train.max_steps=200 --set train.eval_steps=200 --set train.output_dir=runs/pretrain/smollm2-135m-20-layers-plain-200
  $LLMTUNE distill --recipe recipes/distill/smollm2-135m-20-layers-text.yaml --overwrite \
    --set train.max_steps=200 --set train.eval_steps=200 --set train.output_dir=runs/distill/smollm2-135m-20-layers-text-200
fi
if want chat; then
  [[ -f runs/quickstart/manifest.json ]] || $LLMTUNE sft --recipe recipes/quickstart.yaml
  $LLMTUNE distill --recipe recipes/distill/smollm2-quickstart-to-20-layers-chat.yaml --overwrite
  $LLMTUNE eval --recipe recipes/eval/quickstart-vs-distilled.yaml --overwrite
fi
$PY benchmarks/distill_summary.py
