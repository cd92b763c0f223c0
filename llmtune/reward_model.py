"""A causal LM turned into a scalar reward model, the padding token that makes its reward exact, and scoring
with one: what `llmtune reward` trains, `llmtune eval --reward` reports and a grpo `reward_model` reward
calls.

A reward model here is `AutoModelForSequenceClassification` with `num_labels: 1`: the LM's backbone and a
`score` Linear(hidden, 1) read at the sequence's last token. HF reads that position as the rightmost token
that is not `config.pad_token_id`; when a sequence *ends* with the padding token (a template that closes
turns with EOS, and EOS used for padding), the reward is silently read one token early. `choose_pad_token`
picks a padding token that ends no sequence of the data, and `score_sequences` reads each score at the
last attended position itself, so scoring never depends on that rule.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable
from pathlib import Path

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")


# ------------------------------------------------------------------------------------------ the model
def load_reward_model(section, resolved, tokenizer, *, quantization=None):
    """AutoModelForSequenceClassification (num_labels 1) from anything `load_causal_lm` takes: a hub id, a
    folder, a GGUF, an sft run (adapter merged). The backbone keeps its trained weights; the score head is
    new (the architecture's own initialisation)."""
    from llmtune.models import load_causal_lm

    if quantization is not None:
        return _quantized_reward_model(section, resolved, quantization)
    causal = load_causal_lm(section, resolved, tokenizer)
    return reward_model_from_causal_lm(causal)


def reward_model_from_causal_lm(causal):
    """The sequence-classification twin of `causal`, sharing its backbone (no copy of the weights).

    Built on the meta device (no random backbone allocated, which for an 8B model would be 32 GB), then the
    trained backbone put in and a fresh score head created; HF has no constructor that takes a backbone.
    """
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal.config)
    config.num_labels = 1
    config.architectures = None  # set again from the class when saved
    try:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config, dtype=causal.dtype)
    except ValueError as exc:
        raise LlmtuneError(
            f"{type(causal).__name__} has no sequence-classification form in transformers, so it cannot "
            f"be a reward model ({str(exc).splitlines()[0][:200]})."
        ) from None
    prefix = model.base_model_prefix
    if not hasattr(causal, prefix) or not isinstance(getattr(model, "score", None), torch.nn.Linear):
        raise LlmtuneError(
            f"{type(model).__name__}: no `{prefix}` backbone or `score` head where llmtune expects them; "
            "this architecture is not supported as a reward model."
        )
    setattr(model, prefix, getattr(causal, prefix))
    head = torch.nn.Linear(model.score.in_features, 1, bias=model.score.bias is not None, dtype=causal.dtype)
    std = getattr(config.get_text_config(), "initializer_range", 0.02)
    torch.nn.init.normal_(head.weight, mean=0.0, std=std)
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    model.score = head
    model.config.architectures = [type(model).__name__]
    attention = getattr(causal.config, "_attn_implementation", None)
    if attention:
        model.config._attn_implementation = attention
    return model


def _quantized_reward_model(section, resolved, quantization):
    """QLoRA: the 4-bit load must happen in from_pretrained, so the sequence-classification class loads the
    folder directly (the LM head is left out, the score head is new)."""
    from transformers import AutoModelForSequenceClassification

    from llmtune.adapters import is_adapter_folder
    from llmtune.models import resolve_dtype

    if resolved is None or resolved.gguf_file or is_adapter_folder(resolved.path):
        raise LlmtuneError(
            "peft.method qlora quantises a pretrained safetensors model; it cannot load a GGUF file, an adapter "
            "run or model.from_config. Merge or convert it first (llmtune merge / llmtune fetch)."
        )
    return AutoModelForSequenceClassification.from_pretrained(
        resolved.path,
        num_labels=1,
        dtype=resolve_dtype(section.dtype),
        attn_implementation=section.attn_implementation,
        trust_remote_code=section.trust_remote_code,
        quantization_config=quantization,
    )


# ------------------------------------------------------------------------------------------ padding
def choose_pad_token(
    tokenizer, sequences: Iterable[list[int]], requested: str | None = None
) -> tuple[str, str]:
    """(padding token, why) such that no sequence ends with it, so HF's "rightmost non-pad token" is the
    last real token under left and right padding alike. Keeps the tokenizer's own when it qualifies, else
    takes the first special token that ends no sequence."""
    endings = {ids[-1] for ids in sequences if ids}
    vocab = tokenizer.get_vocab()
    if requested is not None:
        if requested not in vocab:
            raise LlmtuneError(
                f"reward.pad_token {requested!r} is not a token of this tokenizer; give one of its special "
                f"tokens, e.g. {', '.join(repr(t) for t in list(tokenizer.all_special_tokens)[:4])}."
            )
        if vocab[requested] in endings:
            raise LlmtuneError(
                f"reward.pad_token {requested!r} ends some sequences of the data, so their reward would be read "
                "before it; pick a token that the chat template never puts last (or leave reward.pad_token out)."
            )
        return requested, "reward.pad_token"
    own = tokenizer.pad_token
    if own is not None and vocab.get(own) not in endings:
        return own, "the tokenizer's own"
    candidates = [
        token.content if hasattr(token, "content") else str(token)
        for _, token in sorted(getattr(tokenizer, "added_tokens_decoder", {}).items())
    ] + list(tokenizer.all_special_tokens)
    for token in candidates:
        if token in vocab and vocab[token] not in endings:
            reason = (
                f"the tokenizer's {own!r} ends sequences of the data"
                if own is not None
                else "the tokenizer has none"
            )
            return token, f"{reason}, so an unused special token pads"
    raise LlmtuneError(
        "no special token of this tokenizer is free to pad reward-model batches (each ends some sequence of the "
        "data), so the reward could not be read at the last real token.",
        hint="Set reward.pad_token to a token the data never ends with.",
    )


# ------------------------------------------------------------------------------------------ scoring
def score_sequences(
    model, sequences: list[list[int]], *, pad_token_id: int, batch_size: int = 16
) -> list[float]:
    """The reward of each token sequence, read at its last token (right padding, positions from the mask),
    in batches; the model is put in eval mode for the pass and left as it was."""
    import torch

    was_training = model.training
    model.eval()
    # HF refuses batches without a config pad id, though the score is read here from the mask, not from it.
    text_config = model.config.get_text_config()
    configured, text_config.pad_token_id = text_config.pad_token_id, pad_token_id
    captured: list = []
    score = _score_head(model)
    hook = score.register_forward_hook(lambda _m, _i, out: captured.append(out))
    device = next(p for p in model.parameters()).device
    out: list[float] = []
    try:
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # less padding per batch
        values: dict[int, float] = {}
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                longest = max(len(sequences[i]) for i in index)
                ids = torch.full((len(index), longest), pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(index), longest), dtype=torch.long)
                for row, i in enumerate(index):
                    ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
                    mask[row, : len(sequences[i])] = 1
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                captured.clear()
                model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                    use_cache=False,
                )
                per_position = captured[-1].squeeze(-1).float()  # [batch, length]
                last = mask.sum(-1) - 1
                for row, i in enumerate(index):
                    values[i] = float(per_position[row, last[row]])
        out = [values[i] for i in range(len(sequences))]
    finally:
        hook.remove()
        model.train(was_training)
        text_config.pad_token_id = configured
    bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
    if bad:
        raise LlmtuneError(
            f"the reward model gave a non-finite score (NaN or inf) for {len(bad)} of {len(out)} sequences; "
            "its weights are not usable."
        )
    return out


def _score_head(model):
    """The score Linear of a (possibly PEFT-wrapped) sequence-classification model: PEFT's
    modules_to_save wrapper forwards to its active copy, and a hook on the wrapper sees the output."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "score":
            return module
    raise LlmtuneError(f"{type(model).__name__} has no score head; is it a reward model?")


def pair_metrics(chosen: list[float], rejected: list[float]) -> dict:
    """Pairwise accuracy (chosen scored strictly higher), mean margin, and the distribution of each side."""

    def distribution(values: list[float]) -> dict:
        ordered = sorted(values)
        quantile = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
        return {
            "mean": statistics.fmean(values),
            "std": statistics.pstdev(values),
            "min": ordered[0],
            "p25": quantile(0.25),
            "median": statistics.median(values),
            "p75": quantile(0.75),
            "max": ordered[-1],
        }

    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "pairs": len(margins),
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "mean_margin": statistics.fmean(margins),
        "chosen": distribution(chosen),
        "rejected": distribution(rejected),
    }


# ------------------------------------------------------------------------------------------ a trained one
def is_reward_folder(path: str | Path) -> bool:
    """Whether `path` holds a reward model: a sequence-classification config, or an adapter trained by
    `llmtune reward` (task_type SEQ_CLS)."""
    from llmtune.adapters import is_adapter_folder, read_adapter_config
    from llmtune.data.sources import read_json_file

    folder = Path(path)
    if is_adapter_folder(folder):
        return read_adapter_config(folder).get("task_type") == "SEQ_CLS"
    config = folder / "config.json"
    if not config.is_file():
        return False
    saved = read_json_file(config, what="model config", hint="Save the model again (save_pretrained).")
    architectures = saved.get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def load_trained_reward_model(path: str | Path, *, dtype: str = "float32"):
    """(model in eval mode, tokenizer) of an `llmtune reward` run (base + adapter) or a merged folder."""
    from llmtune.adapters import is_adapter_folder, load_adapter_model
    from llmtune.models import load_tokenizer, resolve_dtype
    from llmtune.recipe import ModelSection

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LlmtuneError(
            f"reward model {path}: no such folder (give an llmtune reward run or a merged one)."
        )
    if not is_reward_folder(folder):
        raise LlmtuneError(
            f"{folder} is not a reward model (no sequence-classification config, nor an adapter trained by "
            "llmtune reward).",
            hint="Train one with `llmtune reward --recipe recipes/reward/...`.",
        )
    if is_adapter_folder(folder):
        model, tokenizer, _ = load_adapter_model(folder, dtype=dtype, reward=True)
    else:
        from transformers import AutoModelForSequenceClassification

        from llmtune.hub import ResolvedModel

        section = ModelSection(name_or_path=str(folder), dtype=dtype)
        tokenizer = load_tokenizer(section, ResolvedModel(folder, "local", str(folder)))
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=resolve_dtype(dtype))
    if tokenizer.pad_token is None:
        raise LlmtuneError(f"{folder}: the tokenizer has no padding token; was it saved by llmtune reward?")
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def load_reward_scorer(path: str | Path, *, max_length: int | None = None, batch_size: int = 16):
    """A callable `scorer(prompts: list[list[dict]], completions: list[str]) -> list[float]` for a trained
    reward model: each prompt + completion rendered with the model's chat template (as in training) and
    scored at its last token."""
    from llmtune.data.reward_pairs import answer_sequence

    model, tokenizer = load_trained_reward_model(path)
    limit = max_length or getattr(model.config, "max_position_embeddings", None) or 2048

    def scorer(prompts: list[list[dict]], completions: list[str]) -> list[float]:
        sequences = []
        for prompt, completion in zip(prompts, completions, strict=True):
            ids, _, _ = answer_sequence(
                tokenizer,
                prompt,
                completion or " ",
                where="(completion)",
                max_length=limit,
                overlong="truncate",
            )
            if ids is None:  # the prompt alone fills the model's context: nothing of the answer can be scored
                raise LlmtuneError(f"reward model {path}: a prompt is longer than its {limit}-token context.")
            sequences.append(ids)
        return score_sequences(model, sequences, pad_token_id=tokenizer.pad_token_id, batch_size=batch_size)

    scorer.model, scorer.tokenizer = model, tokenizer
    return scorer
