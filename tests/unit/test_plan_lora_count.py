"""The planner counts LoRA and DoRA without importing PEFT (llmtune/plan/lora_count.py): its counts must be
PEFT's own, on models of each layer kind (Linear, GPT-2's Conv1D, biased projections, tied and untied
output), for every form of target_modules a recipe can give; anything else is left to PEFT."""

from __future__ import annotations

import re

import pytest

from llmtune.plan.lora_count import lora_counts
from llmtune.plan.shape import adapted, meta_model, peft_counts
from llmtune.recipe import ModelSection, PeftSection

SMALL = {"vocab_size": 64, "num_hidden_layers": 2}


def _configs():
    from transformers import BloomConfig, GPT2Config, LlamaConfig, Qwen2Config

    llama = {**SMALL, "hidden_size": 16, "intermediate_size": 24, "num_attention_heads": 2}
    return {
        "llama-tied": LlamaConfig(**llama, tie_word_embeddings=True),
        "llama": LlamaConfig(**llama, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**llama, num_key_value_heads=1),  # q/k/v projections with bias
        "gpt2": GPT2Config(vocab_size=64, n_layer=2, n_embd=16, n_head=2, n_positions=32),  # Conv1D
        "bloom": BloomConfig(vocab_size=64, n_layer=2, hidden_size=16, n_head=2),
    }


# Per architecture: short names, names with their parent (suffix match), one full module name.
TARGETS = {
    "llama-tied": (
        ["q_proj", "v_proj"],
        ["self_attn.o_proj", "mlp.down_proj"],
        ["model.layers.1.mlp.up_proj"],
    ),
    "llama": (["q_proj", "v_proj"], ["self_attn.o_proj", "mlp.down_proj"], ["model.layers.1.mlp.up_proj"]),
    "qwen2": (["q_proj", "k_proj", "o_proj"], ["self_attn.v_proj"], ["model.layers.0.self_attn.q_proj"]),
    "gpt2": (["c_attn"], ["attn.c_proj", "mlp.c_fc"], ["transformer.h.0.mlp.c_proj"]),
    "bloom": (
        ["query_key_value"],
        ["self_attention.dense", "dense_4h_to_h"],
        ["transformer.h.1.mlp.dense_h_to_4h"],
    ),
}
MODEL = ModelSection(name_or_path="tiny")


@pytest.fixture(scope="module")
def configs():
    return _configs()


def _cases():
    for arch, (short, suffix, full) in TARGETS.items():
        for targets in ("all-linear", None, short, suffix, full):
            for method in ("lora", "dora", "qlora"):
                yield arch, {"method": method, "r": 4, "target_modules": targets}
        for extra in (
            {"bias": "all"},
            {"bias": "lora_only"},
            {"lora_dropout": 0.0},
            {"use_rslora": True, "r": 2},
            {"bias": "lora_only", "target_modules": short},
        ):
            yield arch, {"method": "lora", "r": 4, **extra}


@pytest.mark.parametrize(("arch", "peft"), list(_cases()))
def test_counts_match_peft(configs, arch, peft):
    config = configs[arch]
    section = PeftSection(**{k: v for k, v in peft.items() if v is not None})
    model = meta_model(config, MODEL)
    counted = lora_counts(model, section)
    assert counted is not None
    assert counted == peft_counts(meta_model(config, MODEL), section)
    assert adapted(config, MODEL, section, model) == counted
    trainable, total, dropout = counted
    assert trainable > 0 and total > trainable
    assert (dropout > 0) == (section.lora_dropout > 0)


@pytest.mark.parametrize(
    ("arch", "peft"),
    [
        ("llama-tied", {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}),
        ("llama", {"target_modules": ["lm_head"]}),  # the output layer
        ("llama-tied", {"target_modules": ["embed_tokens", "q_proj"]}),  # an embedding
        ("llama", {"target_modules": ["mlp"]}),  # not a linear layer: PEFT's own error
        ("gpt2", {"target_modules": ["q_proj"]}),  # no such module: PEFT's own error
    ],
)
def test_what_peft_must_settle_goes_to_peft(configs, arch, peft):
    from llmtune.errors import LlmtuneError

    section = PeftSection(method="lora", **peft)
    model = meta_model(configs[arch], MODEL)
    assert lora_counts(model, section) is None
    try:
        expected = peft_counts(meta_model(configs[arch], MODEL), section)
    except LlmtuneError as exc:
        with pytest.raises(LlmtuneError, match=re.escape(exc.message)):
            adapted(configs[arch], MODEL, section, model)
    else:
        assert adapted(configs[arch], MODEL, section, model) == expected


def test_other_methods_leave_the_given_model_unchanged(configs):
    model = meta_model(configs["llama"], MODEL)
    names = [name for name, _ in model.named_modules()]
    for method in ("ia3", "prompt_tuning", "freeze", "none"):
        extra = {"trainable": ["lm_head"]} if method == "freeze" else {}
        section = PeftSection(method=method, **extra)
        expected = peft_counts(meta_model(configs["llama"], MODEL), section)
        assert adapted(configs["llama"], MODEL, section, model) == expected
    assert [name for name, _ in model.named_modules()] == names
    assert all(p.requires_grad for p in model.parameters())
