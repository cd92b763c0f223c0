"""recipe.peft → what trains: a PEFT adapter (LoRA, DoRA, rsLoRA, QLoRA, prompt tuning, prefix tuning,
P-tuning, IA3), freeze-tuning (named parameters of the model itself), or everything (`method: none`); and a
trained adapter folder loaded back on its base, unmerged (eval, merge).

Named `adapters` rather than `peft` so that it never shadows the `peft` package it wraps.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from llmtune.errors import LlmtuneError, did_you_mean
from llmtune.hub import ResolvedModel
from llmtune.models import (
    count_parameters,
    has_tokenizer_files,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    resolve_model_source,
)

if TYPE_CHECKING:
    from llmtune.recipe import ModelSection, PeftSection

log = logging.getLogger("llmtune")

LORA_FAMILY = ("lora", "dora", "qlora")


def build_peft_config(
    section: PeftSection, task_type: str | None = "CAUSAL_LM", tokenizer_path: str | None = None
):
    """The peft config object for `section` (None when no PEFT adapter is used). `task_type` None is a
    model of llmtune's own (the lora-ner tagger), wrapped as a plain PeftModel."""
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
    task_type: str | None = "CAUSAL_LM",
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
    _check_modules_to_save(model, getattr(config, "modules_to_save", None))
    try:
        return peft.get_peft_model(model, config)
    except (ValueError, KeyError) as exc:
        first = str(exc).strip("'\"").split("\n")[0]  # never splitlines: an empty message has no [0]
        raise LlmtuneError(
            f"peft ({section.method}): {first}",
            hint="Use `all-linear`, or names of the model's linear layers (e.g. q_proj, v_proj for Llama; "
            "c_attn for GPT-2; query_key_value for BLOOM).",
        ) from None


def _check_modules_to_save(model, names: list[str] | None) -> None:
    """PEFT wraps the modules whose names end with a modules_to_save entry and says nothing about an entry
    that matches none: the recipe would promise a trained module that stays frozen."""
    modules = [name for name, _ in model.named_modules() if name]
    for wanted in names or []:
        if not any(name == wanted or name.endswith("." + wanted) for name in modules):
            raise LlmtuneError(
                f"peft.modules_to_save: {wanted!r} is not a module of this model"
                f"{did_you_mean(wanted, {name.rsplit('.', 1)[-1] for name in modules})}",
                hint="Give the last part of a module name (e.g. lm_head, embed_tokens, classifier).",
            )


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


# ------------------------------------------------------------------------------------- trained adapters, loaded back
def _adapter_error(folder: Path, base: str, exc: Exception) -> LlmtuneError | None:
    """The user's error for an adapter that does not load onto its base: damaged weights (a truncated
    safetensors file), a config PEFT cannot read, or a base of another shape; None for anything else
    (a failure of llmtune or a library, which keeps its traceback)."""
    first = (str(exc).strip().split("\n")[0] or type(exc).__name__)[:300]
    name = type(exc).__name__
    if name in ("SafetensorError", "HeaderTooLarge", "UnpicklingError", "EOFError") or "safetensors" in first:
        return LlmtuneError(
            f"{folder}: the adapter weights cannot be read ({name}: {first}).",
            hint="The file looks damaged (a copy cut short?): copy the adapter folder again, or train again.",
        )
    if isinstance(exc, FileNotFoundError | TypeError) or name == "EntryNotFoundError":
        return LlmtuneError(
            f"{folder}: incomplete adapter folder ({name}: {first}).",
            hint="An adapter folder holds adapter_config.json and adapter_model.safetensors from the same run.",
        )
    if isinstance(exc, ValueError | RuntimeError | KeyError | OSError):
        return LlmtuneError(
            f"cannot apply the adapter in {folder} to {base}: {first}",
            hint="Is --base the model the adapter was trained on (same architecture and vocabulary)?",
        )
    return None


UNMERGEABLE_ADAPTERS = {
    "PROMPT_TUNING": "prompt tuning",
    "PREFIX_TUNING": "prefix tuning",
    "P_TUNING": "P-tuning",
    "MULTITASK_PROMPT_TUNING": "multitask prompt tuning",
    "ADAPTION_PROMPT": "adaption prompt (LLaMA-Adapter)",
}


def is_adapter_folder(path: str | Path) -> bool:
    """Whether `path` holds an adapter_config.json. Any entry of that name counts (a FIFO, a folder, a
    dangling link), so that `load_adapter_model` says what is wrong with it instead of the folder being
    taken for a full model and failing somewhere else."""
    return os.path.lexists(Path(path) / "adapter_config.json")


def read_adapter_config(folder: str | Path) -> dict:
    """The adapter_config.json of an adapter folder, or an error naming the file when it is missing,
    not a regular file, cut short, or not a PEFT config (no peft_type), with how to get a good copy."""
    from llmtune.data.sources import read_json_file

    path = Path(folder) / "adapter_config.json"
    damaged = (
        "The adapter folder looks damaged (a copy cut short?): copy it again from the run, or train again."
    )
    config = read_json_file(path, what="PEFT adapter config", hint=damaged)
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        found = type(config).__name__ + (" without peft_type" if isinstance(config, dict) else "")
        raise LlmtuneError(
            f"{path}: not a PEFT adapter config (expected a JSON object with peft_type, found a {found}).",
            hint=damaged,
        )
    return config


def run_recipe_model(folder: Path) -> ModelSection | None:
    """The model section of the recipe that trained the run in `folder` (None when there is none)."""
    from llmtune.recipe import ModelSection, load_yaml_file

    path = Path(folder) / "recipe.yaml"
    if not path.is_file():
        return None
    try:
        section = load_yaml_file(path).get("model")
        return ModelSection.model_validate(section) if isinstance(section, dict) else None
    except Exception:  # an old or edited recipe.yaml only loses the hint it would give
        return None


def load_adapter_model(
    folder: str | Path,
    *,
    base: str | None = None,
    dtype: str = "float32",
    hub: str = "auto",
    reward: bool = False,
):
    """(PeftModel in eval mode, tokenizer, notes) for an adapter folder, the adapter NOT merged.

    The base is `base`, else the adapter config's base_model_name_or_path when it exists on this machine,
    else the training recipe's model.name_or_path (a demo alias or hub id travels between machines where an
    absolute path does not). A base quantised on disk (bitsandbytes) is de-quantised to `dtype`; a QLoRA
    adapter is applied to the base in `dtype` (not 4-bit). The embedding is resized to the run's tokenizer
    (tokens added by a chat template) before the adapter, which carries the resized rows, is loaded.
    `reward`: the adapter of an `llmtune reward` run, loaded on the base as a reward model (score head).
    """
    from peft import PeftModel

    from llmtune.recipe import ModelSection

    folder = Path(folder)
    config = read_adapter_config(folder)
    notes: list[str] = []
    trained_with = run_recipe_model(folder)
    recorded = config.get("base_model_name_or_path")
    if base is None:
        if recorded and Path(recorded).exists():
            base = recorded
        elif trained_with is not None and trained_with.name_or_path:
            base = trained_with.name_or_path
        else:
            base = recorded
    if not base:
        raise LlmtuneError(
            f"{folder}/adapter_config.json names no base model; pass the base with --base NAME_OR_FOLDER."
        )
    section = (trained_with or ModelSection(name_or_path=base)).model_copy(
        update={"name_or_path": base, "dtype": dtype, "tokenizer": None}
    )
    if hub != "auto":
        section = section.model_copy(update={"hub": hub})
    resolved = resolve_model_source(section)
    tokenizer = load_tokenizer(
        section,
        resolved if not has_tokenizer_files(folder) else ResolvedModel(folder, "local", str(folder)),
    )
    if reward:
        from llmtune.reward_model import load_reward_model

        model = load_reward_model(section, resolved, tokenizer)
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    else:
        model = load_causal_lm(section, resolved, tokenizer)
    if getattr(model, "is_quantized", False):
        notes.append(f"the base {base} is quantised on disk; de-quantised to {dtype} before merging")
        model = model.dequantize().to(resolve_dtype(dtype))
    model.eval()
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder))
    except Exception as exc:
        error = _adapter_error(folder, base, exc)
        if error is None:
            raise
        raise error from None
    return peft_model.eval(), tokenizer, notes
