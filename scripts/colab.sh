#!/usr/bin/env bash
# Run an llmtune recipe in Google Colab (T4 on the free tier; L4/A100 on paid ones), from a cell:
#
#   !git clone <this repository> /content/llmtune
#   !bash /content/llmtune/scripts/colab.sh recipes/quickstart.yaml
#
# T4: fp16 mixed precision (no bf16); L4/A100: bf16. To keep run folders across sessions, mount Drive and
# pass --set train.output_dir=/content/drive/MyDrive/llmtune-runs/<name>.
PLATFORM=colab
export HF_HOME=${HF_HOME:-/content/cache/huggingface}
export LLMTUNE_HOME=${LLMTUNE_HOME:-/content/cache/llmtune}
source "$(dirname "$0")/_notebook_run.sh"
