"""`llmtune rloo`: online RL with TRL's RLOOTrainer (REINFORCE leave-one-out); the same recipes, data,
rewards and run folder as `llmtune grpo` (stages/grpo.py), which does the work."""

from __future__ import annotations

from llmtune.stages.grpo import run

__all__ = ["run"]
