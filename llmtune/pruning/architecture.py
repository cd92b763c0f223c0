"""Where the pruned parts live in each supported model family, and how big they are.

Two layouts are supported: the Llama family (llama, mistral, qwen2; SmolLM2 is llama), whose decoder
layers are `model.model.layers[i]` with `self_attn.{q,k,v,o}_proj` and `mlp.{gate,up,down}_proj`, and
GPT-2, whose blocks are `model.transformer.h[i]` with Conv1D maps (weights stored [in, out]).
"""

from __future__ import annotations

import torch
from transformers.pytorch_utils import Conv1D

from llmtune.errors import LlmtuneError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2")

# model_type -> the layout its modules follow.
_FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2"}

# State-dict prefix of the decoder layers (the layer index and the module path follow it).
_LAYER_PREFIX = {"llama": "model.layers.", "gpt2": "transformer.h."}


def family(config) -> str:
    """The layout of a model: "llama" or "gpt2". Pass a transformers config (`model.config`)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _FAMILIES:
        raise LlmtuneError(
            f"Pruning does not support model_type '{model_type}': it knows where the layers, MLP channels "
            f"and attention heads are only for {', '.join(SUPPORTED_MODEL_TYPES)} (SmolLM2 is llama).",
            hint="Prune a model of one of those types, or use a supported base model of a similar size.",
        )
    return _FAMILIES[model_type]


def layer_prefix(model) -> str:
    """The state-dict key prefix of the decoder layers, e.g. "model.layers." (index and module follow)."""
    return _LAYER_PREFIX[family(model.config)]


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM (`AutoModelForCausalLM`), in order."""
    kind = family(model.config)
    try:
        return model.model.layers if kind == "llama" else model.transformer.h
    except AttributeError:
        where = "model.model.layers" if kind == "llama" else "model.transformer.h"
        raise LlmtuneError(
            f"The {model.config.model_type} model ({type(model).__name__}) has no {where}: pruning expects "
            "the plain causal-LM class that AutoModelForCausalLM loads.",
            hint="Prune the full model before wrapping it (LoRA adapters merged, no PEFT or DDP wrapper).",
        ) from None


def mlp_down(layer) -> torch.nn.Module:
    """The map whose input is a layer's MLP channels (llama: mlp.down_proj; gpt2: mlp.c_proj)."""
    return layer.mlp.down_proj if hasattr(layer.mlp, "down_proj") else layer.mlp.c_proj


def attention_out(layer) -> torch.nn.Module:
    """The map whose input is the concatenated attention heads (llama: self_attn.o_proj; gpt2: attn.c_proj)."""
    return layer.self_attn.o_proj if hasattr(layer, "self_attn") else layer.attn.c_proj


def is_conv1d(module) -> bool:
    """Whether a module is GPT-2's Conv1D, whose weight is stored [in, out] (nn.Linear: [out, in])."""
    return isinstance(module, Conv1D)


def layer_linears(model) -> dict[str, torch.nn.Module]:
    """Every nn.Linear and Conv1D inside the decoder layers, keyed by its name in `model.named_modules()`
    (embeddings, the LM head and the norms are outside and left out)."""
    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers) + "."
    return {
        name: module
        for name, module in model.named_modules()
        if name.startswith(prefix) and isinstance(module, (torch.nn.Linear, Conv1D))
    }


def sizes(config) -> dict:
    """The prunable sizes of a config: layers, intermediate_size, attention_heads, kv_heads, head_dim,
    hidden_size (GPT-2 has no grouped-query attention, so its kv_heads equals attention_heads)."""
    if family(config) == "gpt2":
        hidden, heads = config.n_embd, config.n_head
        return {
            "layers": config.n_layer,
            "intermediate_size": config.n_inner if config.n_inner is not None else 4 * hidden,
            "attention_heads": heads,
            "kv_heads": heads,
            "head_dim": hidden // heads,
            "hidden_size": hidden,
        }
    heads = config.num_attention_heads
    return {
        "layers": config.num_hidden_layers,
        "intermediate_size": config.intermediate_size,
        "attention_heads": heads,
        "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        # Qwen2 configs have no head_dim field; the models then derive it as hidden / heads.
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
        "hidden_size": config.hidden_size,
    }


def count_parameters(model) -> int:
    """Parameters of a model, each tensor once (tied embeddings count once)."""
    # model.parameters() yields a Parameter shared by two modules (a tied LM head) only once.
    return sum(parameter.numel() for parameter in model.parameters())
