"""Tokens, FLOPs and optimizer steps of a run, from the recipe and the model's shape."""

from __future__ import annotations

import math
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.plan.memory import Run, Setup
from llmtune.plan.shape import ModelShape


def throughput_summary(recipe, train: dict, shape: ModelShape, setup: Setup, run: Run) -> dict[str, Any]:
    examples_per_step = setup.micro_batch * setup.accumulation * setup.nproc
    tokens = examples_per_step * run.sequences_per_example * run.seq_len
    # Training FLOPs per token (Kaplan et al. 2020): forward 2N + attention 2·L·s·h, backward twice that;
    # frozen weights skip their weight-gradient matmul, a recomputed block runs its forward twice.
    n, attention = shape.linear_params, 2 * shape.layers * run.seq_len * shape.hidden_size
    per_token = 4 * n + 2 * min(setup.trainable_params, n) + 3 * attention
    if setup.gradient_checkpointing:
        per_token += 2 * n + attention
    if run.reference_forward:
        per_token += 2 * n + attention
    if run.teacher is not None:  # distill: the teacher's forward, no backward
        t = run.teacher.shape
        per_token += 2 * t.linear_params + 2 * t.layers * run.seq_len * t.hidden_size
    gen = run.generation
    if gen is not None:
        # Sampling: a forward per token (the KV cache spares recomputing the prefix), once per generation
        # batch, which num_iterations updates reuse.
        per_token += (2 * n + attention) / gen.num_iterations
    rows, why = _train_rows(recipe, run)
    steps = None
    if rows is not None:
        # grpo/rloo: each prompt is sampled num_generations times, and each batch used num_iterations times.
        examples = rows * (gen.num_generations if gen else 1)
        batches = math.ceil(examples / (setup.micro_batch * setup.nproc))
        steps = max(1, math.ceil(batches / setup.accumulation)) * (gen.num_iterations if gen else 1)
    max_steps = int(train.get("max_steps", -1))
    epochs = float(train.get("num_train_epochs", 3.0))
    total_steps = max_steps if max_steps > 0 else (math.ceil(steps * epochs) if steps else None)
    return {
        "examples_per_step": examples_per_step,
        "tokens_per_step": tokens,
        "train_rows": rows,
        "steps_per_epoch": steps,
        "total_steps": total_steps,
        "epochs": epochs if max_steps <= 0 else None,
        "flops_per_step": float(per_token * tokens),
        "note": why,
    }


def _train_rows(recipe, run: Run) -> tuple[int | None, str]:
    """Training rows from a cheap read of chat files (no tokenising), or None and why not."""
    if run.command == "pretrain" or (run.teacher is not None and run.teacher.data == "text"):
        return None, "steps per epoch need the tokenised text (blocks of data.block_size tokens)"
    data = recipe.data
    if getattr(data, "packing", False):
        return None, "steps per epoch with packing depend on token lengths"
    from llmtune.data.sources import BadRows, expand_sources, iter_json_rows
    from llmtune.recipe.hub_dataset import is_reference

    if any(is_reference(entry) for entry in data.train_files):
        # plan reads configs only: loading a hub dataset could mean a download
        return None, "hub datasets are not counted by plan (llmtune data check counts them)"
    try:
        files = expand_sources(data.train_files, "data.train_files", (".jsonl", ".json"))
    except LlmtuneError as exc:
        return None, exc.message
    if sum(f.stat().st_size for f in files) > 256 << 20:
        return None, "train files over 256 MB are not counted"
    rows = 0.0
    for index, path in enumerate(files):
        try:
            count = sum(1 for _ in iter_json_rows(path, "skip", BadRows()))
        except LlmtuneError as exc:
            return None, exc.message
        if data.max_samples is not None:
            count = min(count, data.max_samples)
        weights = getattr(data, "weights", None)  # grpo/rloo prompts have no mixing weights
        rows += count * (weights[index] if weights and index < len(weights) else 1.0)
    if not data.validation_files and data.validation_split > 0:
        rows -= max(1, round(rows * data.validation_split))
    if run.command == "dpo" and recipe.dpo.algorithm == "kto":
        rows *= 2  # each pair becomes a good and a bad example
    return int(rows), "rows counted in the files (rows the chat format rejects are not known yet)"
