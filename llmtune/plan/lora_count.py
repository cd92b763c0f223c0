"""LoRA and DoRA parameters counted as PEFT would create them, without importing PEFT (which takes seconds:
it imports bitsandbytes, which compiles with torch._inductor at import).

For every layer PEFT would adapt, LoRA adds lora_A (r × in) and lora_B (out × r); DoRA adds a magnitude of
`out` values. The layers are found by PEFT's own rules (peft 0.21 `tuners_utils.check_target_module_exists`
and `_maybe_include_all_linear_layers`): `all-linear` is every nn.Linear and transformers Conv1D but the
output layer, and a listed name matches a module named exactly that or ending in `.name`. Anything those
rules do not settle returns None and the planner asks PEFT itself; tests/unit/test_plan_lora_count.py
compares the two.
"""

from __future__ import annotations

# The output and input embeddings: PEFT ties adapters on them (`_check_tied_modules`), so PEFT counts those.
_EMBEDDING_NAMES = ("embed_tokens", "lm_head")


def lora_counts(model, section) -> tuple[int, int, int] | None:
    """(trainable, total, LoRA dropout input features) of `model` with the LoRA or DoRA adapter of the
    recipe's peft `section`, counted on the unchanged model; None when PEFT must build it to tell (a
    module that is not a plain linear layer, modules_to_save, an embedding, an MoE model whose experts PEFT
    maps to fused weights, or no match at all, which PEFT reports as an error)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    from llmtune.models import count_parameters

    if section.method not in ("lora", "dora", "qlora") or section.modules_to_save:
        return None
    model_type = str(getattr(model.config, "model_type", ""))
    if "mamba" in model_type or _has_weight_conversion(model_type):
        return None
    targets = section.target_modules or "all-linear"
    if targets == "all-linear":
        output = model.get_output_embeddings()
        targets = {
            name
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear | Conv1D) and module is not output
        }
    elif any(target.rsplit(".", 1)[-1] in _EMBEDDING_NAMES for target in targets):
        return None
    suffixes = tuple(f".{target}" for target in targets)
    matched = [
        m for name, m in model.named_modules() if name and (name in targets or name.endswith(suffixes))
    ]
    if not matched:
        return None
    output = model.get_output_embeddings()
    adapter = dropout_features = 0
    for module in matched:
        if type(module) not in (torch.nn.Linear, Conv1D) or module is output:
            return None
        if isinstance(module, Conv1D):
            in_features, out_features = module.weight.shape
        else:
            in_features, out_features = module.in_features, module.out_features
        adapter += section.r * (in_features + out_features)
        if section.method == "dora":
            adapter += out_features
        if section.lora_dropout > 0:
            dropout_features += in_features
    trainable = adapter + _trainable_biases(model, matched, section.bias)
    return trainable, count_parameters(model)[1] + adapter, dropout_features


def _trainable_biases(model, layers, bias: str) -> int:
    """Base-model biases PEFT leaves trainable: `all` every parameter named *.bias, `lora_only` those of
    the adapted layers (tied parameters once)."""
    if bias == "all":
        return sum(
            p.numel() for name, p in model.named_parameters() if name == "bias" or name.endswith(".bias")
        )
    if bias == "lora_only":
        seen = {id(m.bias): m.bias.numel() for m in layers if m.bias is not None}
        return sum(seen.values())
    return 0


def _has_weight_conversion(model_type: str) -> bool:
    """Whether transformers converts this architecture's checkpoints (MoE experts fused in v5), in which
    case PEFT rewrites the targets (peft.utils.transformers_weight_conversion)."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:  # transformers 4: no conversions, none for PEFT to follow
        return False
    return get_checkpoint_conversion_mapping(model_type) is not None
