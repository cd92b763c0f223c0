"""The token tagger of `llmtune lora-ner`: a BERT-like encoder, a linear emission layer, and an optional CRF;
how it is built from a recipe (with its adapter), saved beside the adapter, and loaded back.

The CRF is pytorch-crf's (`torchcrf.CRF`); llmtune adds only what it lacks:
- it runs over the first sub-token of each word (gathered into a dense word sequence), so word pieces
  never get tags of their own and the transition scores are between words;
- Viterbi decoding is constrained by the tagging scheme (BIO: no I-X after O or after another type, no
  I-X first; BIOES likewise), so a prediction is always a valid tag sequence.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import torch
from torch import nn

from llmtune.errors import LlmtuneError

TAGGER_CONFIG = "tagger.json"
LABELS_FILE = "labels.json"
NEG = -10000.0


def allowed_transitions(labels: list[str], scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(start [C], transitions [C, C], end [C]) boolean masks of what the scheme allows."""

    def split(tag: str) -> tuple[str, str | None]:
        return (tag, None) if tag == "O" else (tag[0], tag[2:])

    parts = [split(t) for t in labels]
    n = len(labels)
    start = torch.ones(n, dtype=torch.bool)
    end = torch.ones(n, dtype=torch.bool)
    trans = torch.ones(n, n, dtype=torch.bool)
    inside = ("I", "E") if scheme == "BIOES" else ("I",)
    for j, (prefix_j, type_j) in enumerate(parts):
        if prefix_j in inside:
            start[j] = False  # an entity cannot start inside
        if scheme == "BIOES" and prefix_j in ("B", "I"):
            end[j] = False  # an open entity cannot end the sentence
        for i, (prefix_i, type_i) in enumerate(parts):
            opened = prefix_i in ("B", "I")  # an entity of type_i continues after i
            if prefix_j in inside:
                trans[i, j] = opened and type_i == type_j
            elif scheme == "BIOES" and opened:
                trans[i, j] = False  # B-/I- must be followed by I- or E- of the same type
    return start, trans, end


class Tagger(nn.Module):
    """encoder → dropout → linear emissions → (CRF over word starts | per-token softmax)."""

    # The loss is a mean over tokens computed here; the Trainer must not pass num_items_in_batch.
    accepts_loss_kwargs = False

    def __init__(self, encoder, labels: list[str], *, use_crf: bool, scheme: str, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.labels = list(labels)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, len(labels))
        self.crf = None
        if use_crf:
            from torchcrf import CRF

            self.crf = CRF(len(labels), batch_first=True)
            start, trans, end = allowed_transitions(self.labels, scheme)
            # float masks (0 allowed, NEG forbidden), added only while decoding
            self.register_buffer("start_penalty", (~start).float() * NEG, persistent=False)
            self.register_buffer("transition_penalty", (~trans).float() * NEG, persistent=False)
            self.register_buffer("end_penalty", (~end).float() * NEG, persistent=False)

    @property
    def config(self):  # Trainer and PEFT look for model.config
        return self.encoder.config

    def forward(
        self, input_ids, attention_mask=None, token_type_ids=None, word_starts=None, labels=None, **_
    ):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        emissions = self.classifier(self.dropout(hidden))
        if self.crf is None:
            loss = None
            if labels is not None:
                loss = nn.functional.cross_entropy(
                    emissions.view(-1, emissions.shape[-1]), labels.view(-1), ignore_index=-100
                )
            predictions = emissions.argmax(-1)
            if word_starts is not None:
                predictions = predictions.masked_fill(~word_starts.bool(), -100)
            return {"loss": loss, "logits": predictions}
        if word_starts is None:
            raise ValueError("the CRF tagger needs word_starts (first sub-token of each word)")
        word_emissions, word_mask, index = _gather_words(emissions, word_starts.bool())
        loss = None
        if labels is not None:
            word_labels = torch.gather(labels, 1, index).masked_fill(~word_mask, 0).clamp(min=0)
            loss = -self.crf(word_emissions, word_labels, mask=word_mask, reduction="token_mean")
        predictions = torch.full_like(input_ids, -100)
        for row, tags in enumerate(self.decode(word_emissions, word_mask)):
            predictions[row, index[row, : len(tags)]] = torch.tensor(tags, device=input_ids.device)
        return {"loss": loss, "logits": predictions}

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Viterbi with the scheme's forbidden transitions at -10000 (restored afterwards)."""
        crf = self.crf
        saved = (
            crf.start_transitions.data.clone(),
            crf.transitions.data.clone(),
            crf.end_transitions.data.clone(),
        )
        crf.start_transitions.data += self.start_penalty
        crf.transitions.data += self.transition_penalty
        crf.end_transitions.data += self.end_penalty
        try:
            return crf.decode(emissions, mask=mask)
        finally:
            crf.start_transitions.data, crf.transitions.data, crf.end_transitions.data = saved


def _gather_words(emissions, word_starts):
    """Dense (B, W, C) emissions of the word-start positions, their mask, and their token indices.
    Rows without any word get one masked dummy position (the CRF needs mask[:, 0] on)."""
    counts = word_starts.sum(1)
    width = max(int(counts.max()), 1)
    positions = torch.arange(word_starts.shape[1], device=word_starts.device).expand_as(word_starts)
    # word-start positions first, in order; the rest pushed to the end
    keys = torch.where(word_starts, positions, positions + word_starts.shape[1])
    index = keys.argsort(dim=1)[:, :width]
    mask = torch.arange(width, device=word_starts.device)[None, :] < counts[:, None]
    mask[:, 0] = True
    gathered = torch.gather(emissions, 1, index.unsqueeze(-1).expand(-1, -1, emissions.shape[-1]))
    return gathered, mask, index


# ------------------------------------------------------------------------------------------ build, save, load
def tagger_peft(section, use_crf: bool):
    """The recipe's peft section as the tagger applies it: LoRA on the attention's query and value unless
    peft.target_modules says otherwise, and the head (and CRF) trained in full through modules_to_save,
    beside any modules the recipe adds there. Every other key (bias, use_rslora, dropout ...) is the
    recipe's, applied by the same code as every other command's adapter."""
    head = ["classifier", "crf"] if use_crf else ["classifier"]
    return section.model_copy(
        update={
            "target_modules": section.target_modules or ["query", "value"],
            "modules_to_save": [*head, *(m for m in section.modules_to_save or [] if m not in head)],
        }
    )


def build_tagger(
    encoder_path,
    labels: list[str],
    *,
    use_crf: bool,
    scheme: str,
    dropout: float,
    peft,
    trust_remote_code=False,
):
    """Encoder + head, with the recipe's adapter (peft.method none trains everything)."""
    from transformers import AutoModel

    from llmtune.adapters import apply_peft

    try:
        encoder = AutoModel.from_pretrained(encoder_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LlmtuneError(
            f"cannot load {encoder_path} as an encoder: {str(exc).strip().split(chr(10))[0]}"
        ) from None
    tagger = Tagger(encoder, labels, use_crf=use_crf, scheme=scheme, dropout=dropout)
    return apply_peft(tagger, tagger_peft(peft, use_crf), task_type=None)


def save_tagger_config(
    folder: Path, *, base: str, labels: list[str], use_crf: bool, scheme: str, extra: dict
):
    (folder / LABELS_FILE).write_text(json.dumps(labels, ensure_ascii=False, indent=1))
    config = {"base_model": base, "use_crf": use_crf, "scheme": scheme, **extra}
    (folder / TAGGER_CONFIG).write_text(json.dumps(config, indent=1))


def load_tagger(folder: Path):
    """(tagger in eval mode, tokenizer, tagger config) from a lora-ner run folder; a folder that is not
    one, or whose files are damaged, is an error naming the file."""
    import os

    from transformers import AutoModel, AutoTokenizer

    from llmtune.data.sources import read_json_file, stat_input

    folder = Path(folder)
    if not stat.S_ISDIR(stat_input(folder, "--model").st_mode):
        raise LlmtuneError(f"--model {folder} is a file; give the folder of a finished lora-ner run.")
    if not os.path.lexists(folder / TAGGER_CONFIG):
        raise LlmtuneError(
            f"--model {folder}: no {TAGGER_CONFIG}; give the folder of a finished lora-ner run."
        )
    damaged = "The run folder looks damaged or incomplete: copy it again, or train the tagger again."
    config = read_json_file(folder / TAGGER_CONFIG, what="tagger config", hint=damaged)
    if not (isinstance(config, dict) and isinstance(config.get("base_model"), str)):
        raise LlmtuneError(f"{folder / TAGGER_CONFIG}: no base_model in this tagger config.", hint=damaged)
    labels = read_json_file(folder / LABELS_FILE, what="label list", hint=damaged)
    if not (isinstance(labels, list) and labels and all(isinstance(t, str) for t in labels)):
        raise LlmtuneError(f"{folder / LABELS_FILE}: not a list of tag names.", hint=damaged)
    try:
        encoder = AutoModel.from_pretrained(config["base_model"])
    except (OSError, ValueError) as exc:
        raise LlmtuneError(
            f"{folder / TAGGER_CONFIG}: cannot load the base encoder {config['base_model']} "
            f"({str(exc).strip().split(chr(10))[0][:200]}).",
            hint="The tagger needs the encoder it was trained on, at that path (moved or deleted?).",
        ) from None
    tagger = Tagger(encoder, labels, use_crf=bool(config.get("use_crf")), scheme=config.get("scheme", "BIO"))
    try:
        if os.path.lexists(folder / "adapter_config.json"):
            from peft import PeftModel

            from llmtune.adapters import read_adapter_config

            read_adapter_config(folder)  # a damaged config is named as such
            tagger = PeftModel.from_pretrained(tagger, str(folder))
        else:
            from safetensors.torch import load_file

            weights = folder / "model.safetensors"
            stat_input(weights, "--model")
            tagger.load_state_dict(load_file(str(weights)), strict=False)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except LlmtuneError:
        raise
    except Exception as exc:  # SafetensorError, a tokenizer file cut short, a head of another size ...
        if isinstance(exc, MemoryError):
            raise
        raise LlmtuneError(
            f"--model {folder}: cannot load the trained tagger ({type(exc).__name__}: "
            f"{str(exc).strip().split(chr(10))[0][:200]}).",
            hint=damaged,
        ) from None
    return tagger.eval(), tokenizer, config


# Encoders whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids):
# of max_position_embeddings positions, pad_token_id + 1 are never used by a real token.
_OFFSET_POSITIONS = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "longformer",
    "ibert",
    "data2vec-text",
    "mpnet",
    "luke",
    "markuplm",
    "roberta-prelayernorm",
    "xmod",
    "lilt",
    "layoutlmv3",
}


def position_limit(config) -> int | None:
    """The longest input (in sub-tokens, special tokens included) the encoder's position embeddings
    cover, or None when it has no such limit (relative positions only, e.g. DeBERTa-v3)."""
    if getattr(config, "position_biased_input", True) is False:
        return None
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if config.model_type in _OFFSET_POSITIONS:
        pad = getattr(config, "pad_token_id", None)
        limit -= (pad if isinstance(pad, int) and pad >= 0 else 1) + 1
    return limit


def check_max_length(encoder, max_length: int, trust_remote_code: bool = False) -> None:
    """Stop before any weights load when data.max_length exceeds what the encoder's position embeddings
    cover: longer windows would index past the embedding table (an IndexError, or a device-side assert
    on a GPU) in the middle of training, or run on positions the model never learned. `encoder` is a
    path, or a resolved model (with .path and .name)."""
    from transformers import AutoConfig

    name = getattr(encoder, "name", None) or str(encoder)
    try:
        config = AutoConfig.from_pretrained(
            getattr(encoder, "path", encoder), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise LlmtuneError(
            f"cannot read the config of {name}: {str(exc).strip().split(chr(10))[0][:200]}"
        ) from None
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise LlmtuneError(
            f"data.max_length {max_length} is longer than {name} can take: its position "
            f"embeddings cover {limit} sub-tokens (config.max_position_embeddings "
            f"{config.max_position_embeddings}"
            + (
                f", of which {config.max_position_embeddings - limit} are reserved"
                if config.max_position_embeddings != limit
                else ""
            )
            + ").",
            hint=f"Set data.max_length to {limit} or less; longer sentences are split into windows.",
        )
