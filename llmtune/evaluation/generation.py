"""Answers to prompts through the chat template: greedy or sampled, batched, seeded."""

from __future__ import annotations

import json
from pathlib import Path

from llmtune.data.sources import (
    BadRows,
    check_regular,
    iter_json_rows,
    read_text_file,
    split_lines,
    stat_input,
)
from llmtune.errors import LlmtuneError

PROMPT_FIELDS = ("prompt", "instruction", "question", "input")
KEY = "generate.prompts_file"


class Prompt(str):
    """A prompt that remembers where it came from (file and line), for messages about it."""

    where: str = ""

    @classmethod
    def at(cls, text: str, where: str) -> Prompt:
        prompt = cls(text)
        prompt.where = where
        return prompt


def read_prompts(section) -> list[str]:
    """`generate.prompts`, then the lines of a .txt prompts_file, or from its JSON rows the prompt field
    (prompt, instruction + input, question) or the first user turn of a chat (messages / conversations)."""
    prompts = list(section.prompts)
    if section.prompts_file:
        path = Path(section.prompts_file)
        # Checked here because the file is named directly (not through expand_sources): a folder, a FIFO
        # or a missing file is a one-line error, never a hang or a traceback.
        check_regular(path, stat_input(path, KEY), KEY)
        if path.suffix in (".jsonl", ".json"):
            for where, row in iter_json_rows(path, "error", BadRows(), key=None):
                messages = row.get("messages") or row.get("conversations")
                if isinstance(messages, list):  # a chat file: its first user turn
                    first = next(
                        (
                            m
                            for m in messages
                            if isinstance(m, dict) and m.get("role", m.get("from")) in ("user", "human")
                        ),
                        None,
                    )
                    if first is not None:
                        prompts.append(Prompt.at(str(first.get("content", first.get("value", ""))), where))
                        continue
                name = next((f for f in PROMPT_FIELDS if isinstance(row.get(f), str)), None)
                if name is None:
                    raise LlmtuneError(f"{where}: no prompt field (one of {', '.join(PROMPT_FIELDS)}).")
                text = row[name]
                if name == "instruction" and isinstance(row.get("input"), str) and row["input"].strip():
                    text += "\n\n" + row["input"]
                prompts.append(Prompt.at(text, where))
        else:
            lines = split_lines(read_text_file(path, KEY))
            prompts += [
                Prompt.at(line, f"{path} line {n}") for n, line in enumerate(lines, 1) if line.strip()
            ]
        if len(prompts) == len(section.prompts):
            raise LlmtuneError(f"{KEY}: {path} holds no prompts (it is empty or blank).")
    if not prompts:
        raise LlmtuneError("generate: no prompts; set generate.prompts or generate.prompts_file.")
    return prompts


def render(tokenizer, prompt: str, system: str | None) -> str:
    if not tokenizer.chat_template:
        return prompt  # a base model without a template: the prompt as it is (noted by the caller)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate(model, tokenizer, prompts: list[str], section) -> list[dict]:
    """One row per prompt: prompt, output, new_tokens, stopped ("end" or "length")."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, set_seed

    config = GenerationConfig(
        max_new_tokens=section.max_new_tokens,
        do_sample=section.do_sample,
        temperature=section.temperature if section.do_sample else None,
        top_k=section.top_k if section.do_sample else None,
        top_p=section.top_p if section.do_sample else None,
        repetition_penalty=section.repetition_penalty,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    stop_ids = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    set_seed(section.seed)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only: pad on the left
    device = next(model.parameters()).device
    rows = []
    try:
        for start in tqdm(
            range(0, len(prompts), section.batch_size), desc="generate", unit="batch", leave=False
        ):
            batch = prompts[start : start + section.batch_size]
            texts = [render(tokenizer, p, section.system) for p in batch]
            inputs = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=not tokenizer.chat_template
            ).to(device)
            _check_context(model, inputs, batch, start)
            with torch.no_grad():
                out = model.generate(**inputs, generation_config=config)
            for prompt, sequence in zip(batch, out[:, inputs["input_ids"].shape[1] :], strict=True):
                tokens = sequence.tolist()
                ended = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
                kept = tokens if ended is None else tokens[:ended]
                rows.append(
                    {
                        "prompt": prompt,
                        "output": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                        "new_tokens": len(kept),
                        "stopped": "end" if ended is not None else "length",
                    }
                )
    finally:
        tokenizer.padding_side = side
    return rows


def _check_context(model, inputs, batch: list[str], first: int) -> None:
    """Stop before generating from a prompt that does not fit in the model's position embeddings at all:
    a model with learned positions crashes on it (an IndexError mid-run), others produce garbage after
    quadratic time. (A prompt that fits but leaves less than max_new_tokens is generation's own
    business: it often stops at EOS long before.)"""
    from llmtune.evaluation.mcq import _context_limit

    limit = _context_limit(model)
    if not limit:
        return
    for index, length in enumerate(inputs["attention_mask"].sum(dim=1).tolist()):
        if length >= limit:
            where = getattr(batch[index], "where", "") or f"generate.prompts[{first + index}]"
            raise LlmtuneError(
                f"{where}: the prompt is {length} tokens, more than the model's context ({limit} tokens).",
                hint="Shorten the prompt.",
            )


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
