"""Held-out prompts answered greedily and scored by the run's reward functions, before and after RL training.

TRL's own evaluation samples `num_generations` answers per prompt at the training temperature, which says
how the sampled policy does; a user asks how the model answers, which is the greedy answer. Accuracy is the
share of prompts whose every answer-checking reward (exact_match, numeric_match) gives full marks.
"""

from __future__ import annotations

import math
import statistics

ANSWER_CHECKS = ("exact_match", "numeric_match")


def answer_prompts(model, tokenizer, rows: list[dict], *, max_new_tokens: int, batch_size: int) -> list[dict]:
    """Greedy completion of each row's prompt: {"text", "ids"} (stopped at EOS / end of turn)."""
    import torch

    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only: pad on the left
    device = next(model.parameters()).device
    config = model.generation_config
    stop = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            texts = [
                tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
                for row in batch
            ]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                generated = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                    use_cache=True,
                )
            for sequence in generated[:, inputs["input_ids"].shape[1] :].tolist():
                end = next((i for i, t in enumerate(sequence) if t in stop), None)
                ids = sequence if end is None else sequence[:end]
                out.append({"text": tokenizer.decode(ids, skip_special_tokens=True).strip(), "ids": ids})
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def score_answers(functions: list, rows: list[dict], answers: list[dict]) -> tuple[dict, list[dict]]:
    """(summary, per-row records): each reward function's mean, the weighted total, and the accuracy."""
    prompts = [row["prompt"] for row in rows]
    completions = [[{"role": "assistant", "content": a["text"]}] for a in answers]
    columns = {key: [row.get(key) for row in rows] for key in rows[0] if key not in ("prompt",)}
    per_function = {}
    for function in functions:
        per_function[function.__name__] = function(
            prompts=prompts, completions=completions, completion_ids=[a["ids"] for a in answers], **columns
        )
    records, totals, correct = [], [], []
    checks = [f.__name__ for f in functions if getattr(f, "type", "") in ANSWER_CHECKS]
    for i, (row, answer) in enumerate(zip(rows, answers, strict=True)):
        values = {name: values[i] for name, values in per_function.items()}
        total = sum(f.weight * values[f.__name__] for f in functions if _number(values[f.__name__]))
        right = all(values[name] is not None and values[name] >= 1.0 for name in checks) if checks else None
        totals.append(total)
        if right is not None:
            correct.append(right)
        records.append(
            {
                "where": row.get("where"),
                "prompt": row["prompt"][-1]["content"],
                "answer": row.get("answer"),
                "completion": answer["text"],
                "rewards": values,
                "total": total,
                "correct": right,
            }
        )
    summary = {
        "prompts": len(rows),
        "reward_mean": statistics.fmean(totals),
        "rewards": {
            name: statistics.fmean([v for v in values if _number(v)] or [math.nan])
            for name, values in per_function.items()
        },
        "completion_tokens_mean": statistics.fmean(len(a["ids"]) for a in answers),
    }
    if correct:
        summary["accuracy"] = sum(correct) / len(correct)
    return summary, records


def _number(value) -> bool:
    return value is not None and math.isfinite(value)
