"""recipe.peft → a PEFT adapter on the model (LoRA, DoRA, rsLoRA), or nothing for full training.

Named `adapters` rather than `peft` so that it never shadows the `peft` package it wraps.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from llmtune.errors import LlmtuneError
from llmtune.models import count_parameters

if TYPE_CHECKING:
    from llmtune.recipe import PeftSection

log = logging.getLogger("llmtune")


def build_peft_config(section: PeftSection, task_type: str = "CAUSAL_LM"):
    """The peft config object for `section` (None when `method: none`)."""
    if section.method == "none":
        return None
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=section.r,
        lora_alpha=section.lora_alpha,
        lora_dropout=section.lora_dropout,
        target_modules=section.target_modules,
        modules_to_save=section.modules_to_save,
        bias=section.bias,
        use_dora=section.method == "dora",
        use_rslora=section.use_rslora,
    )


def apply_peft(
    model, section: PeftSection, *, gradient_checkpointing: bool = False, task_type: str = "CAUSAL_LM"
):
    """Wrap `model` with the recipe's adapter; return it unchanged for full training."""
    config = build_peft_config(section, task_type)
    if config is None:
        return model
    from peft import get_peft_model

    if gradient_checkpointing:
        # With frozen embeddings no input requires grad, and checkpointed blocks would get no gradient.
        model.enable_input_require_grads()
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise LlmtuneError(
            f"peft.target_modules: {first}",
            hint="Use `all-linear`, or names of the model's linear layers (e.g. q_proj, v_proj for Llama; "
            "c_attn for GPT-2; query_key_value for BLOOM).",
        ) from None


def describe_trainable(model) -> str:
    trainable, total = count_parameters(model)
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"
