"""$LLMTUNE_HOME: where llmtune keeps what it computes once and reuses (converted demo models, tokenised
data, tokenizer copies, the argument tables of HF's trainers). Default ~/.cache/llmtune."""

from __future__ import annotations

import os
from pathlib import Path


def llmtune_home() -> Path:
    return Path(os.environ.get("LLMTUNE_HOME") or Path.home() / ".cache" / "llmtune").expanduser()
