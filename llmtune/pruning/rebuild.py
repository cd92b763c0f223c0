"""Build the pruned model from a new config and a new state dict.

Every structural change goes through here instead of editing modules in place: a model built from the
config and loaded strictly is guaranteed to have tensors of exactly the shapes its config implies, so the
saved folder reloads with `from_pretrained` without missing, unexpected or mismatched keys.
"""

from __future__ import annotations

import contextlib
import copy

import torch


def _skip_random_init():
    """Skip the random initialization of the new model's weights: every one is overwritten by the strict
    load, and initializing a billion parameters on the CPU takes minutes."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # an internal helper; without it the weights are initialized and then overwritten
        return contextlib.nullcontext()
    return no_init_weights()


def rebuild(model, config, state_dict: dict[str, torch.Tensor]):
    """A new model of `model`'s class family built from `config` and loaded from `state_dict`.

    Pass the old model (for its dtype, device, attention implementation and generation config), the new
    config (a changed copy of the old one) and the complete new state dict (as `model.state_dict()` names
    it, including `lm_head.weight` also when the embeddings are tied). Returns the new model in eval mode."""
    from transformers import AutoModelForCausalLM

    parameter = next(model.parameters())
    kwargs = {}
    attention = getattr(model.config, "_attn_implementation", None)
    if attention:
        kwargs["attn_implementation"] = attention
    with _skip_random_init():
        new = AutoModelForCausalLM.from_config(config, dtype=parameter.dtype, **kwargs)
    # strict: a key the new config does not expect, or one it expects but the dict lacks, is a bug here.
    new.load_state_dict(state_dict, strict=True)
    if getattr(new.config, "tie_word_embeddings", False):
        # Without the random init the head was never tied to the embeddings; tie it again so that it stays
        # one tensor (both were loaded with the same values above).
        new.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)
    return new.to(parameter.device).eval()
