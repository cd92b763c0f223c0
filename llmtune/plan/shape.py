"""The model as the planner sees it: its config read without weights, built on PyTorch's meta device, and
counted with and without the recipe's adapter."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError, first_line


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about the model, read from its config and meta-device build."""

    name: str
    source: str  # local, demo, huggingface, modelscope, from_config
    architecture: str
    parameters: int
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int  # key/value heads (fewer than attention_heads under GQA/MQA): what the KV cache holds
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    attention: str  # the kernel training will use
    linear_params: int  # every nn.Linear (lm_head included even when tied): the matmul FLOPs per token
    quantizable_params: int  # nn.Linear weights that bitsandbytes quantises (all but the output layer)
    lm_head_params: int
    largest_unit_params: int  # one block or the embedding, whichever is larger (what ZeRO-3 gathers)


def model_config(section):
    """(transformers config, name, source) of the recipe's model, reading no weights."""
    from transformers import AutoConfig

    from llmtune.hub import DEMO_MODELS, resolve_demo_model, resolve_model

    if section.from_config is not None:
        return (
            _config_from_sizes(section),
            f"{section.from_config['architecture']} from config",
            "from_config",
        )
    name = section.name_or_path
    if name in DEMO_MODELS and not Path(name).exists():
        try:
            resolved = resolve_demo_model(name, convert=False)
        except LlmtuneError as exc:
            if "not converted" not in exc.message:
                raise
            return _demo_gguf_config(name), name, "demo"
    else:
        resolved = resolve_model(
            name,
            hub=section.hub,
            revision=section.revision,
            gguf_file=section.gguf_file,
            trust_remote_code=section.trust_remote_code,
            weights=False,
        )
    folder = Path(resolved.path)
    if (folder / "adapter_config.json").is_file():
        # An earlier llmtune run: training loads its base with the adapter merged in.
        from llmtune.recipe.yaml12 import load_json_file

        adapter = load_json_file(folder / "adapter_config.json", "adapter config")
        base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
        if not isinstance(base, str) or not base:
            raise LlmtuneError(f"{folder}/adapter_config.json names no base_model_name_or_path.")
        config, _, _ = model_config(section.model_copy(update={"name_or_path": base, "gguf_file": None}))
        return config, name, resolved.source
    config_file = folder / "config.json"
    if not resolved.gguf_file and os.path.lexists(config_file):
        # Read once bounded first: transformers would block on a FIFO, read /dev/zero forever, or die of
        # a RecursionError on a deeply nested file.
        from llmtune.recipe.yaml12 import load_json_file

        load_json_file(config_file, "model config")
    kwargs = {"trust_remote_code": section.trust_remote_code}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    try:
        return AutoConfig.from_pretrained(folder, **kwargs), name, resolved.source
    except RecursionError:  # a config.json nested deeper than the JSON decoder goes
        raise LlmtuneError(
            f"cannot read the config of {name}: its config.json is nested too deeply."
        ) from None
    except (OSError, ValueError) as exc:
        raise LlmtuneError(f"cannot read the config of {name}: {first_line(exc)}") from None


def _demo_gguf_config(alias: str):
    """A demo model not yet converted: its config straight from the GGUF metadata."""
    from transformers import AutoConfig

    from llmtune.hub import DEMO_MODELS, wheel_path

    gguf = wheel_path(DEMO_MODELS[alias], alias)
    return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _config_from_sizes(section):
    """The config `model.from_config` builds, exactly as training builds it (models.config_from_section)."""
    from llmtune.models import config_from_section, load_tokenizer

    return config_from_section(section, load_tokenizer(section, None))


def meta_model(config, section):
    """The model of `config` on the meta device: shapes, no storage."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=section.trust_remote_code)
    except ValueError as exc:
        raise LlmtuneError(
            f"cannot build {type(config).__name__} as a causal LM: {first_line(exc)}"
        ) from None


def adapted(config, model_section, peft_section, model=None) -> tuple[int, int, int]:
    """(trainable, total, LoRA dropout input features) with the adapter applied on the meta device.

    `model` is the meta model of `config` (built when not given), counted as it is and left unchanged:
    LoRA and DoRA are counted without PEFT (lora_count.py); other adapters are applied by PEFT to a
    model of their own, since PEFT changes the model it wraps."""
    from llmtune.models import count_parameters
    from llmtune.plan.lora_count import lora_counts

    given = model is not None
    if not given:
        model = meta_model(config, model_section)
    if peft_section.method == "none":
        total = count_parameters(model)[1]
        return total, total, 0
    counted = lora_counts(model, peft_section)
    if counted is not None:
        return counted
    if given:  # PEFT changes the model it wraps: not the caller's
        model = meta_model(config, model_section)
    return peft_counts(model, peft_section)


def peft_counts(model, peft_section) -> tuple[int, int, int]:
    """(trainable, total, LoRA dropout input features) of the meta model `model` wrapped by PEFT with the
    recipe's adapter (which changes `model`)."""
    import torch

    from llmtune.adapters import apply_peft
    from llmtune.models import count_parameters

    # QLoRA adapts the same layers as LoRA (bitsandbytes' Linear4bit is an nn.Linear); a prompt-tuning
    # text init only chooses starting values.
    changes: dict[str, Any] = {"prompt_tuning_init_text": None}
    if peft_section.method == "qlora":
        changes["method"] = "lora"
    with torch.device("meta"):
        model = apply_peft(model, peft_section.model_copy(update=changes))
    dropout_features = sum(
        module.in_features
        for module in model.modules()
        if hasattr(module, "lora_dropout")
        and any(isinstance(d, torch.nn.Dropout) for d in module.lora_dropout.values())
    )
    return (*count_parameters(model), dropout_features)


def model_shape(model, config, section, name: str, source: str) -> ModelShape:
    """The sizes the memory model needs, counted on `model`, the meta model of `config` (tied weights
    once)."""
    import torch

    from llmtune.models import count_parameters

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(text.num_hidden_layers)
    output = model.get_output_embeddings()
    output_weight = output.weight if output is not None else None
    embedding = model.get_input_embeddings().weight
    linear = quantizable = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            numel = sum(p.numel() for p in module.parameters(recurse=False))
            linear += numel
            if module is not output:
                quantizable += module.weight.numel()
    blocks = next(
        (m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers), None
    )
    block = sum(p.numel() for p in blocks[0].parameters()) if blocks is not None else 0
    lm_head = output_weight.numel() if output_weight is not None else 0
    attention = section.attn_implementation or getattr(model.config, "_attn_implementation", None) or "eager"
    return ModelShape(
        name=name,
        source=source,
        architecture=type(model).__name__,
        parameters=count_parameters(model)[1],
        layers=layers,
        hidden_size=int(text.hidden_size),
        attention_heads=int(text.num_attention_heads),
        kv_heads=int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads),
        head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads),
        vocab_size=int(embedding.shape[0]),
        tied_embeddings=output_weight is not None and output_weight is embedding,
        attention=attention,
        linear_params=linear,
        quantizable_params=quantizable,
        lm_head_params=lm_head,
        largest_unit_params=max(block, embedding.numel(), lm_head),
    )


def reward_shape(shape: ModelShape) -> ModelShape:
    """`shape` as `llmtune reward` builds the model: AutoModelForSequenceClassification with num_labels=1,
    i.e. the backbone without the LM head (vocab x hidden) and a `score` Linear(hidden, 1, bias=False)."""
    untied_head = 0 if shape.tied_embeddings else shape.lm_head_params
    return dataclasses.replace(
        shape,
        architecture=shape.architecture.replace("ForCausalLM", "ForSequenceClassification"),
        parameters=shape.parameters - untied_head + shape.hidden_size,
        tied_embeddings=False,
        linear_params=shape.linear_params - shape.lm_head_params + shape.hidden_size,
        lm_head_params=0,
    )


def counted(config, model_section, peft_section, model, command: str) -> tuple[int, int, int]:
    """`adapted` for the model `command` trains: the causal LM's counts, or for reward those of its
    sequence-classification twin (no LM head; the score head, hidden x 1, trained in full). Under an
    adapter the head is in PEFT's modules_to_save (TRL's RewardTrainer asks for it), which keeps a
    trainable copy beside the original."""
    counts = adapted(config, model_section, peft_section, model)
    if command != "reward":
        return counts
    trainable, total, dropout = counts
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    untied_head = output.weight.numel() if output is not None and not tied else 0
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head = int(text.hidden_size)
    backbone = total - untied_head
    if peft_section.method == "none":
        return backbone + head, backbone + head, dropout
    copy = head if peft_section.method in ("lora", "dora", "qlora") else 0
    return trainable + head, backbone + head + copy, dropout
