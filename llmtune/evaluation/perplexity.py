"""Perplexity of text files with a sliding window (the HuggingFace perplexity recipe, made exact).

HF's recipe (docs: "Perplexity of fixed-length models") moves a window of `max_length` tokens by `stride`
and scores only the tokens the previous window did not, so each token is predicted once with up to
`max_length - stride` tokens of context. It then averages per-window mean losses weighted by the window's
target count, which miscounts by one per window (the first target has no logit); here per-token
log-probabilities are summed and divided by the exact number of tokens predicted (all but the first).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from llmtune.data.sources import BadRows, iter_json_rows, read_text_file
from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")


def sliding_windows(length: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, score_from): tokens [score_from, end) are predicted from context [begin, token).

    As HF's recipe: windows of `max_length` start `stride` apart, and each scores the tokens the previous
    one did not. Unlike it, a window always starts at least one token before the first token it scores:
    with stride == max_length HF's windows share no token, so each window's first token is counted but
    has no logit to score it.
    """
    if max_length < 2 or not 0 < stride <= max_length:
        raise LlmtuneError(
            f"perplexity: need max_length >= 2 and 0 < stride <= max_length ({max_length}, {stride})."
        )
    overlap = max(max_length - stride, 1)
    spans, score_from = [], 1  # token 0 of the text has no context
    while score_from < length:
        begin = max(0, score_from - overlap)
        end = min(begin + max_length, length)
        spans.append((begin, end, score_from))
        score_from = end
    return spans


def token_log_likelihood(
    model, ids: list[int], *, max_length: int, stride: int, batch_size: int
) -> tuple[float, int, int]:
    """(sum of log p(token | context), tokens predicted, windows) for one sequence of token ids."""
    import torch

    spans = [s for s in sliding_windows(len(ids), max_length, stride) if s[2] < s[1]]
    device = next(model.parameters()).device
    total, counted = 0.0, 0
    for start in range(0, len(spans), batch_size):
        chunk = spans[start : start + batch_size]
        width = max(end - begin for begin, end, _ in chunk)
        input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
        attention = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, (begin, end, _) in enumerate(chunk):
            input_ids[row, : end - begin] = torch.tensor(ids[begin:end])
            attention[row, : end - begin] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:].to(device)
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for row, (begin, end, score_from) in enumerate(chunk):
            # target position p (in the sequence) sits at column p - begin - 1 of the shifted logits
            values = picked[row, score_from - begin - 1 : end - begin - 1]
            total += float(values.double().sum())
            counted += values.numel()
    return total, counted, len(spans)


def read_documents(path: Path, text_field: str) -> list[str]:
    """A .txt file is one document; .jsonl/.json rows give one document each from `text_field`."""
    if path.suffix in (".jsonl", ".json"):
        docs = []
        for where, row in iter_json_rows(path, "error", BadRows(), key=None):  # perplexity has no skips
            value = row.get(text_field)
            if not isinstance(value, str):
                raise LlmtuneError(
                    f"{where}: no string field '{text_field}'; set perplexity.text_field to the field holding the text."
                )
            docs.append(value)
        return docs
    return [read_text_file(path)]


def evaluate_perplexity(model, tokenizer, files: list[Path], section) -> dict:
    """{"files": {path: {...}}, "nll", "perplexity", "tokens"}: per file and over all tokens."""
    from tqdm.auto import tqdm

    from llmtune.evaluation.mcq import _context_limit

    max_length, stride = section.max_length, section.stride
    limit = _context_limit(model)
    if limit and max_length > limit:
        # Windows longer than the position embeddings crash a model with learned positions (an
        # IndexError) and give meaningless scores on others: use the model's own context instead.
        log.warning(
            "note: perplexity.max_length %d is longer than the model's context (%d tokens); using windows "
            "of %d tokens.",
            max_length,
            limit,
            limit,
        )
        max_length, stride = limit, min(stride, limit)
    results, total, counted = {}, 0.0, 0
    for path in tqdm(files, desc="perplexity", unit="file", leave=False):
        docs = [d for d in read_documents(path, section.text_field) if d.strip()]
        if not docs:
            raise LlmtuneError(f"perplexity.files: {path} holds no text.")
        ids = tokenizer(section.join.join(docs))["input_ids"]
        if len(ids) < 2:
            raise LlmtuneError(f"perplexity.files: {path} is shorter than two tokens.")
        log_likelihood, tokens, windows = token_log_likelihood(
            model, ids, max_length=max_length, stride=stride, batch_size=section.batch_size
        )
        nll = -log_likelihood / tokens
        results[str(path)] = {"nll": nll, "perplexity": math.exp(nll), "tokens": tokens, "windows": windows}
        total += log_likelihood
        counted += tokens
    nll = -total / counted
    return {"files": results, "nll": nll, "perplexity": math.exp(nll), "tokens": counted}
