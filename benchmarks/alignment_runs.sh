#!/usr/bin/env bash
# The README's reward-model and RL figures, one run after another (about 90 minutes on 2 CPU cores):
#   bash benchmarks/alignment_runs.sh [OUT]      (default OUT: runs/alignment)
# then: python benchmarks/alignment_summary.py OUT
# Each run is a shipped recipe, unchanged except for its output folder (and DPO's 600 pairs, to hold out
# the same 60 pairs as the reward model).
set -euo pipefail
OUT=${1:-runs/alignment}
mkdir -p "$OUT"
run() { local name=$1; shift; echo "== $name: $*"; "$@" --set train.output_dir="$OUT/$name" --set train.disable_tqdm=true \
          > "$OUT/$name.log" 2>&1 || { echo "$name failed: see $OUT/$name.log"; exit 1; }; }
only=${ONLY:-reward-en grpo rloo reward-medical dpo-en}   # ONLY="grpo rloo" runs a subset
for name in $only; do
  case $name in
    reward-en)      run reward-en      llmtune reward --recipe recipes/reward/smollm2-135m-reward-en.yaml ;;
    grpo)           run grpo           llmtune grpo   --recipe recipes/grpo/smollm2-135m-arithmetic.yaml ;;
    rloo)           run rloo           llmtune rloo   --recipe recipes/grpo/smollm2-135m-arithmetic.yaml ;;
    # 24 steps = 192 of the 450 training pairs (a full epoch of 384-token pairs is ~1 h here)
    reward-medical) run reward-medical llmtune reward --recipe recipes/reward/smollm2-135m-reward-medical.yaml \
                      --set train.max_steps=24 ;;
    # the same 600 pairs and held-out split as reward-en, evaluated before and after only; 30 steps (120 of
    # the 540 training pairs: DPO's policy + reference passes make a step ~2x a reward-model step)
    dpo-en)         run dpo-en         llmtune dpo    --recipe recipes/dpo/smollm2-135m-dpo-en.yaml \
                      --set data.max_samples=600 --set train.eval_strategy=epoch --set train.max_steps=30 ;;
  esac
done
echo "done: python benchmarks/alignment_summary.py $OUT"
