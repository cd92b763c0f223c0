#!/usr/bin/env bash
# Run an llmtune recipe in a Kaggle notebook (GPU T4 x2, or P100), from a cell:
#
#   !git clone <this repository> /kaggle/working/llmtune
#   !bash /kaggle/working/llmtune/scripts/kaggle.sh recipes/quickstart.yaml
#
# T4/P100: fp16 mixed precision (no bf16). Two T4s: DDP over both (STRATEGY=zero2 etc. to change).
# Model downloads go to /kaggle/tmp (large, not kept); run folders stay under /kaggle/working/llmtune/runs,
# which Kaggle keeps with the notebook's output. Extra arguments go to llmtune (e.g. --set train.max_steps=20).
PLATFORM=kaggle
export HF_HOME=${HF_HOME:-/kaggle/tmp/huggingface}
export LLMTUNE_HOME=${LLMTUNE_HOME:-/kaggle/tmp/llmtune}
source "$(dirname "$0")/_notebook_run.sh"
