"""recipe.peft → what trains: a PEFT adapter (LoRA, DoRA, rsLoRA, QLoRA, prompt tuning, prefix tuning,
P-tuning, IA3), freeze-tuning (named parameters of the model itself), or everything (`method: none`).

Named `adapters` rather than `peft` so that it never shadows the `peft` package it wraps.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from llmtune.errors import LlmtuneError
from llmtune.models import count_parameters

if TYPE_CHECKING:
    from llmtune.recipe import PeftSection

log = logging.getLogger("llmtune")

LORA_FAMILY = ("lora", "dora", "qlora")


def build_peft_config(section: PeftSection, task_type: str = "CAUSAL_LM", tokenizer_path: str | None = None):
    """The peft config object for `section` (None when no PEFT adapter is used)."""
    import peft

    method = section.method
    if method in LORA_FAMILY:
        return peft.LoraConfig(
            task_type=task_type,
            r=section.r,
            lora_alpha=section.lora_alpha,
            lora_dropout=section.lora_dropout,
            target_modules=section.target_modules or "all-linear",
            modules_to_save=section.modules_to_save,
            bias=section.bias,
            use_dora=method == "dora",
            use_rslora=section.use_rslora,
        )
    if method == "prompt_tuning":
        from_text = section.prompt_tuning_init_text is not None
        return peft.PromptTuningConfig(
            task_type=task_type,
            num_virtual_tokens=section.num_virtual_tokens,
            prompt_tuning_init="TEXT" if from_text else "RANDOM",
            prompt_tuning_init_text=section.prompt_tuning_init_text,
            tokenizer_name_or_path=tokenizer_path if from_text else None,
        )
    if method == "prefix_tuning":
        return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=section.num_virtual_tokens)
    if method == "p_tuning":
        return peft.PromptEncoderConfig(
            task_type=task_type,
            num_virtual_tokens=section.num_virtual_tokens,
            encoder_hidden_size=section.encoder_hidden_size,
        )
    if method == "ia3":
        return peft.IA3Config(
            task_type=task_type,
            target_modules=section.target_modules,
            feedforward_modules=section.feedforward_modules,
            modules_to_save=section.modules_to_save,
        )
    return None


def quantization_config(section: PeftSection, model_dtype):
    """BitsAndBytesConfig for QLoRA (4-bit weights), or None for every other method."""
    if section.method != "qlora":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    from llmtune.models import resolve_dtype

    compute = model_dtype if section.compute_dtype == "auto" else resolve_dtype(section.compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=section.quant_type,
        bnb_4bit_use_double_quant=section.double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=torch.uint8,
    )


def apply_peft(
    model,
    section: PeftSection,
    *,
    gradient_checkpointing: bool = False,
    task_type: str = "CAUSAL_LM",
    tokenizer_path: str | None = None,
):
    """Make the recipe's parameters trainable: wrap `model` with an adapter, freeze it but for the named
    parts (freeze), or return it unchanged (full training)."""
    if section.method == "none":
        return model
    if section.method == "freeze":
        return _freeze_except(model, section)
    import peft

    if section.method == "qlora":
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        # With frozen embeddings no input requires grad, and checkpointed blocks would get no gradient.
        model.enable_input_require_grads()
    config = build_peft_config(section, task_type, tokenizer_path)
    try:
        return peft.get_peft_model(model, config)
    except (ValueError, KeyError) as exc:
        first = str(exc).strip("'\"").splitlines()[0]
        raise LlmtuneError(
            f"peft ({section.method}): {first}",
            hint="Use `all-linear`, or names of the model's linear layers (e.g. q_proj, v_proj for Llama; "
            "c_attn for GPT-2; query_key_value for BLOOM).",
        ) from None


def _freeze_except(model, section: PeftSection):
    """Freeze-tuning (LLaMA-Factory's `freeze`): train only parameters whose name contains one of
    `peft.trainable`, plus the last `peft.trainable_last_layers` transformer blocks. PEFT has no such
    method, and it is only a requires_grad filter."""
    patterns = list(section.trainable)
    if section.trainable_last_layers:
        layers = _block_indices(model)
        if not layers:
            raise LlmtuneError(
                "peft.trainable_last_layers: cannot find numbered transformer blocks in this model; "
                "name the parameters to train in peft.trainable instead."
            )
        patterns += [f".{i}." for i in layers[-section.trainable_last_layers :]]
    matched = 0
    for name, param in model.named_parameters():
        param.requires_grad = any(p in name for p in patterns)
        matched += param.requires_grad
    if not matched:
        raise LlmtuneError(
            f"peft.trainable {section.trainable}: no parameter name contains any of these; "
            f"names look like {next(iter(n for n, _ in model.named_parameters()))!r}."
        )
    return model


def _block_indices(model) -> list[int]:
    found = set()
    for name, _ in model.named_parameters():
        match = re.search(r"\.(?:layers|h|layer|blocks)\.(\d+)\.", name)
        if match:
            found.add(int(match.group(1)))
    return sorted(found)


def describe_trainable(model) -> str:
    trainable, total = count_parameters(model)
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"
