"""Build the tokenizer and the model a recipe asks for: pretrained, GGUF, or untrained from a config."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from llmtune.errors import LlmtuneError, did_you_mean, first_line
from llmtune.home import llmtune_home
from llmtune.hub import DEMO_MODELS, ResolvedModel, resolve_demo_model, resolve_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmtune.recipe import ModelSection

log = logging.getLogger("llmtune")

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def resolve_dtype(name: str) -> torch.dtype:
    """`auto` → bfloat16 on a CUDA GPU that supports it, else float32."""
    import torch

    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, _DTYPES[name])


def resolve_model_source(section: ModelSection) -> ResolvedModel | None:
    """The local folder of `model.name_or_path` (None when the model is built from a config)."""
    if section.name_or_path is None:
        return None
    if section.trust_remote_code:
        log.warning(
            "note: model.trust_remote_code is true: Python code shipped with %s will run on this machine. "
            "Use it only for a model whose code you trust (pin model.revision to a commit you reviewed).",
            section.name_or_path,
        )
    return resolve_model(
        section.name_or_path,
        hub=section.hub,
        revision=section.revision,
        gguf_file=section.gguf_file,
        trust_remote_code=section.trust_remote_code,
    )


# ------------------------------------------------------------------------------------------ tokenizer
def load_tokenizer(section: ModelSection, resolved: ResolvedModel | None) -> PreTrainedTokenizerBase:
    """The recipe's tokenizer; a missing pad token is set to EOS (padding is masked out of the loss)."""
    from transformers import AutoTokenizer

    if section.tokenizer is not None:
        folder, gguf_file = _tokenizer_folder(section)
    else:
        assert resolved is not None
        folder, gguf_file = resolved.path, resolved.gguf_file
    kwargs = {"trust_remote_code": section.trust_remote_code}
    from llmtune.adapters import is_adapter_folder, read_adapter_config

    if is_adapter_folder(folder):
        read_adapter_config(folder)  # a damaged adapter run is named as such, not as a tokenizer problem
    if gguf_file:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, **kwargs)
    elif (
        (folder / "encoder.json").exists()
        and (folder / "vocab.bpe").exists()
        and not has_tokenizer_files(folder)
    ):
        tokenizer = _load_gpt2_bpe(folder)
    elif (
        (folder / "vocab.json").exists()
        and (folder / "merges.txt").exists()
        and not has_tokenizer_files(folder)
    ):
        tokenizer = _load_bpe_pair(folder, folder / "vocab.json")
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        except (OSError, ValueError) as exc:
            raise LlmtuneError(
                f"cannot load a tokenizer from {folder}: {first_line(exc)}",
                hint="A tokenizer folder holds tokenizer.json (+ tokenizer_config.json), or vocab.json + "
                "merges.txt, or GPT-2's encoder.json + vocab.bpe.",
            ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def has_tokenizer_files(folder: Path) -> bool:
    """Whether `folder` holds a tokenizer of its own (tokenizer.json or tokenizer_config.json)."""
    return (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists()


def _tokenizer_folder(section: ModelSection) -> tuple[Path, str | None]:
    name = section.tokenizer
    assert name is not None
    path = Path(name)
    if path.is_dir():
        return path, None
    if path.is_file():
        raise LlmtuneError(
            f"model.tokenizer: {name} is a file; give the folder that holds the tokenizer files."
        )
    if name in DEMO_MODELS:
        resolved = resolve_demo_model(name)
        return resolved.path, resolved.gguf_file
    resolved = resolve_model(
        name, hub=section.hub, revision=section.revision, key="model.tokenizer", weights=False
    )
    return resolved.path, resolved.gguf_file


def _load_gpt2_bpe(folder: Path) -> PreTrainedTokenizerBase:
    """GPT-2's original file names (encoder.json = vocab.json, vocab.bpe = merges.txt)."""
    return _load_bpe_pair(folder, folder / "encoder.json", merges=folder / "vocab.bpe")


def _load_bpe_pair(folder: Path, vocab: Path, merges: Path | None = None) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer from a vocab + merges pair, loaded with `from_pretrained`.

    `GPT2TokenizerFast(vocab_file=..., merges_file=...)` silently builds an EMPTY tokenizer in
    transformers 5, so the files are copied under their standard names into a cache folder and loaded
    from there, and the vocabulary size is checked against the vocab file.
    """
    from transformers import GPT2TokenizerFast

    merges = merges or folder / "merges.txt"
    digest = hashlib.sha256(vocab.read_bytes() + merges.read_bytes()).hexdigest()[:16]
    cache = llmtune_home() / "tokenizers" / f"bpe-{digest}"
    if not (cache / "merges.txt").exists():
        staging = cache.with_name(cache.name + ".partial")
        staging.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vocab, staging / "vocab.json")
        shutil.copyfile(merges, staging / "merges.txt")
        shutil.rmtree(cache, ignore_errors=True)
        staging.rename(cache)
    tokenizer = GPT2TokenizerFast.from_pretrained(cache)
    expected = len(json.loads(vocab.read_text(encoding="utf-8")))
    if len(tokenizer) != expected:
        raise LlmtuneError(
            f"tokenizer from {vocab} has {len(tokenizer)} tokens but the vocab file lists {expected}; "
            "the vocab/merges pair looks damaged."
        )
    return tokenizer


# ---------------------------------------------------------------------------------------------- model
def load_causal_lm(
    section: ModelSection,
    resolved: ResolvedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    *,
    quantization=None,
) -> PreTrainedModel:
    """A causal LM in the recipe's dtype, with its embedding matching the tokenizer.

    `quantization` (a BitsAndBytesConfig, for QLoRA) loads the linear layers in 4 bits. A folder holding a
    PEFT adapter (an earlier llmtune run) loads its base with the adapter merged in, so that a new stage
    (DPO after SFT) starts from what that run trained.
    """
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(section.dtype)
    if quantization is not None and (resolved is None or resolved.gguf_file):
        raise LlmtuneError(
            "peft.method qlora quantises a pretrained safetensors model; it cannot load a GGUF file or "
            "model.from_config. Convert the GGUF first (llmtune fetch ...) and point model.name_or_path at it."
        )
    from llmtune.adapters import is_adapter_folder

    if resolved is not None and is_adapter_folder(resolved.path):
        return _merged_adapter_model(section, resolved, tokenizer, dtype, quantization)
    if resolved is None:
        model = _causal_lm_from_config(section, tokenizer, dtype)
    elif resolved.gguf_file:
        from llmtune.dequantize import plain_model_from_gguf

        log.info("De-quantising %s (GGUF) to %s", resolved.gguf_file, str(dtype).removeprefix("torch."))
        model = plain_model_from_gguf(
            AutoModelForCausalLM.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
        )
        model = model.to(dtype)
        _set_attention(model, section.attn_implementation)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                resolved.path,
                dtype=dtype,
                attn_implementation=section.attn_implementation,
                trust_remote_code=section.trust_remote_code,
                quantization_config=quantization,
            )
        except ValueError as exc:
            raise LlmtuneError(f"cannot load {resolved.name} as a causal LM: {first_line(exc)}") from None
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        log.info(
            "Resizing the embedding from %d to the tokenizer's %d tokens",
            model.get_input_embeddings().weight.shape[0],
            len(tokenizer),
        )
        model.resize_token_embeddings(len(tokenizer))
    return model


def _merged_adapter_model(section, resolved, tokenizer, dtype, quantization):

    from peft import PeftModel

    from llmtune.adapters import read_adapter_config

    folder = Path(resolved.path)
    adapter = read_adapter_config(folder)
    base = adapter.get("base_model_name_or_path")
    if not base:
        raise LlmtuneError(f"{folder}/adapter_config.json names no base_model_name_or_path.")
    if adapter.get("peft_type") not in ("LORA", "IA3"):
        raise LlmtuneError(
            f"{folder} holds a {adapter.get('peft_type')} adapter, which cannot be merged into its base; "
            "train on top of it is not supported. Start from the base model instead."
        )
    if quantization is not None:  # checked before any weights load
        raise LlmtuneError(
            f"peft.method qlora on top of the adapter run {folder}: merge it first and quantise the merged folder."
        )
    log.info("Loading %s with the adapter from %s merged in", base, folder)
    base_resolved = resolve_model(base, hub=section.hub, weights=True)
    base_model = load_causal_lm(section.model_copy(update={"name_or_path": base}), base_resolved, tokenizer)
    model = PeftModel.from_pretrained(base_model, str(folder)).merge_and_unload()
    return model


def _set_attention(model: PreTrainedModel, implementation: str | None) -> None:
    if implementation:
        model.set_attn_implementation(implementation)


def _causal_lm_from_config(
    section: ModelSection, tokenizer: PreTrainedTokenizerBase, dtype
) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(
        config_from_section(section, tokenizer), dtype=dtype, attn_implementation=section.attn_implementation
    )
    if section.init == "pytorch":
        reset_to_pytorch_defaults(model)
    return model


def config_from_section(section: ModelSection, tokenizer: PreTrainedTokenizerBase):
    """The config `model.from_config` describes (keys checked; vocabulary and special ids from the tokenizer)."""
    from transformers import AutoConfig

    sizes = dict(section.from_config or {})
    architecture = str(sizes.pop("architecture"))
    try:
        config_class = type(AutoConfig.for_model(architecture))
    except ValueError:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        raise LlmtuneError(
            f"model.from_config.architecture: unknown architecture {architecture!r}"
            f"{did_you_mean(architecture, CONFIG_MAPPING.keys())} (a transformers model_type, e.g. gpt2, llama, bloom)"
        ) from None
    _check_config_keys(config_class, sizes)
    sizes.setdefault("vocab_size", len(tokenizer))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token_id = getattr(tokenizer, name, None)
        if token_id is not None:
            sizes.setdefault(name, token_id)
    return config_class(**sizes)


def reset_to_pytorch_defaults(model) -> None:
    """Re-initialise every layer with PyTorch's own defaults, as a hand-written model would start.

    HF initialises embeddings and linears with N(0, 0.02) (and scales residual projections down); PyTorch's
    defaults give embeddings N(0, 1) and Kaiming-uniform linears. From scratch on a tiny corpus the two
    train very differently: LLMs-from-scratch ch.5 memorises "The Verdict" (train loss 0.57 in 90 steps)
    from PyTorch's init, while HF's stays near the unigram plateau (~5.6). Nothing in transformers offers
    this, hence by hand.
    """
    import math

    import torch
    from transformers.pytorch_utils import Conv1D

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Conv1D):
                # GPT-2's Conv1D is an nn.Linear with its weight stored transposed (in, out).
                fan_in, fan_out = module.weight.shape
                weight = torch.empty(fan_out, fan_in, dtype=module.weight.dtype)
                torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
                module.weight.copy_(weight.T)
                if module.bias is not None:
                    torch.nn.init.uniform_(module.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
            elif hasattr(module, "reset_parameters") and module is not model:
                module.reset_parameters()
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def _check_config_keys(config_class, sizes: dict) -> None:
    """Config classes accept any keyword silently; a typo (n_layers for n_layer) would be lost."""
    from transformers import PretrainedConfig

    allowed = set()
    for klass in config_class.__mro__:
        if klass is object:
            continue
        allowed |= {p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "kwargs")}
        allowed |= set(getattr(klass, "attribute_map", {}) or {})
        allowed |= set(getattr(klass, "__annotations__", {}) or {})
    allowed |= set(PretrainedConfig().to_dict())
    for key in sizes:
        if key not in allowed:
            raise LlmtuneError(
                f"model.from_config.{key}: not a {config_class.__name__} setting{did_you_mean(key, allowed)}"
            )


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors are counted once."""
    seen = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def max_positions(model) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None
