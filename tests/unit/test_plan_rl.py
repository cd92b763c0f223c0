"""The planner for reward, grpo and rloo: the reward model's scalar head, generation's KV cache, the
reference model, and TRL's defaults the plan reads as constants (tiny config-only models, no weights)."""

from __future__ import annotations

import json

import pytest

from llmtune.plan import estimate, kv_cache_bytes
from llmtune.recipe import load_recipe
from llmtune.recipe.alignment import GrpoRecipe, RewardRecipe, RlooRecipe

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention: the cache holds 2 heads of 16, not 4
    "vocab_size": 1000,
}
LM_HEAD = 1000 * 64  # untied: LlamaConfig ties no embeddings by default


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A folder holding only the config.json of a tiny Llama: what plan reads (no weights)."""
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("tiny-gqa")
    LlamaConfig(**TINY).save_pretrained(folder)
    return folder


@pytest.fixture
def rl_recipe(write_recipe, tmp_path, tiny_folder):
    """rl_recipe(recipe_class, train=..., peft=..., data=...) -> a loaded reward, grpo or rloo recipe."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"question": f"{i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(10))
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "chosen": "good", "rejected": "bad"}) + "\n" for i in range(10)
        )
    )

    def make(recipe_class, **sections):
        if recipe_class is RewardRecipe:
            data = {"train_files": str(pairs), "max_length": 256}
            own = {"reward": {}}
        else:
            data = {"train_files": str(prompts), "max_prompt_length": 64}
            own = {"rewards": [{"type": "numeric_match"}]}
        recipe = {
            "model": {"name_or_path": str(tiny_folder)},
            "data": {**data, **sections.pop("data", {})},
            "train": {"output_dir": str(tmp_path / "run"), **sections.pop("train", {})},
            **own,
            **sections,
        }
        return load_recipe(write_recipe(recipe), recipe_class)

    return make


def _causal_parameters(tiny_folder) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_folder))
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------- reward
def test_reward_plan_has_a_score_head_and_no_vocabulary_logits(rl_recipe, tiny_folder):
    plan = estimate(rl_recipe(RewardRecipe, train={"per_device_train_batch_size": 4}))
    causal = _causal_parameters(tiny_folder)
    assert plan.command == "reward"
    assert plan.model["architecture"] == "LlamaForSequenceClassification"
    assert plan.model["parameters"] == causal - LM_HEAD + 64  # no lm_head, score = Linear(64, 1)
    assert plan.model["trainable_parameters"] == causal - LM_HEAD + 64
    assert plan.training["sequences_per_example"] == 2
    assert plan.throughput["tokens_per_step"] == 4 * 2 * 256
    # One value a token for 8 sequences (4 pairs), fp32, twice: b·s·1, not b·s·V.
    assert plan.memory["logits"] == 2 * 8 * 256 * 1 * 4
    assert plan.memory["reference_model"] == 0
    assert "score head" in plan.render()
    assert any("no vocabulary logits" in a for a in plan.assumptions)


def test_reward_score_head_trains_in_full_under_lora(rl_recipe):
    lora = estimate(rl_recipe(RewardRecipe, peft={"method": "lora", "r": 4}))
    # Every linear layer of 2 blocks: q, k, v, o, gate, up, down with r = 4 (k/v project to 2 x 16 = 32).
    adapter = 2 * 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64))
    assert lora.model["trainable_parameters"] == adapter + 64  # + the score head, in full
    assert lora.memory["reference_model"] == 0


# --------------------------------------------------------------------------------------------- grpo
def test_grpo_generation_kv_cache_follows_the_formula(rl_recipe):
    recipe = rl_recipe(
        GrpoRecipe,
        train={
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "max_completion_length": 32,
        },
    )
    plan = estimate(recipe)
    tokens = 64 + 32
    sequences = 4 * 2  # per_device_train_batch_size x steps_per_generation (= gradient_accumulation_steps)
    # 2 (key, value) x 2 layers x 2 kv heads x 16 head_dim x 2 bytes (bf16) per token.
    assert plan.memory["generation_kv_cache"] == 2 * 2 * 2 * 16 * 2 * sequences * tokens == 196_608
    assert plan.memory["generation_kv_cache"] == kv_cache_bytes(
        layers=2, kv_heads=2, head_dim=16, bytes_per_value=2, tokens=sequences * tokens
    )
    assert plan.memory["generation_logits"] == sequences * 1000 * 4
    assert plan.training["sequence_length"] == tokens
    assert plan.memory["logits"] == 2 * 4 * tokens * 1000 * 4  # the training step: b·s·V fp32 twice
    assert set(plan.phases) == {"train_step", "generation"}  # beta 0 by default: no scoring phase
    assert plan.phases["generation"]["bytes"] == 196_608 + sequences * 1000 * 4
    rendered = plan.render()
    assert "generation kv cache" in rendered and "train step" in rendered


def test_grpo_total_is_the_larger_phase_on_top_of_the_rest(rl_recipe):
    def total_and_phases(completion, micro, steps):
        train = {
            "per_device_train_batch_size": micro,
            "steps_per_generation": steps,
            "max_completion_length": completion,
        }
        plan = estimate(rl_recipe(GrpoRecipe, train=train))
        rest = sum(
            v
            for k, v in plan.memory.items()
            if k != "total" and not any(k in p["parts"] for p in plan.phases.values())
        )
        return plan, rest

    # A small training step and a large generation batch: generation is the peak.
    plan, rest = total_and_phases(2048, 1, 64)
    assert plan.peak_phase == "generation"
    assert plan.memory["total"] == rest + plan.phases["generation"]["bytes"]
    assert (
        plan.memory["total"] < rest + plan.phases["generation"]["bytes"] + plan.phases["train_step"]["bytes"]
    )
    plan, rest = total_and_phases(32, 8, 1)
    assert plan.peak_phase == "train_step"
    assert plan.memory["total"] == rest + plan.phases["train_step"]["bytes"]


def test_grpo_grows_with_completion_length_not_num_generations(rl_recipe):
    """TRL 1.16 counts per_device_train_batch_size in completions: num_generations says how many share a
    prompt (how few prompts a step sees), not how many are sampled. The completion length adds cache."""

    def plan(**train):
        return estimate(rl_recipe(GrpoRecipe, train={"per_device_train_batch_size": 8, **train}))

    short, long = plan(max_completion_length=128), plan(max_completion_length=256)
    per_token = 2 * 2 * 2 * 16 * 2  # bytes of cache a token
    assert long.memory["generation_kv_cache"] - short.memory["generation_kv_cache"] == per_token * 8 * 128
    assert long.memory["total"] > short.memory["total"]
    four, eight = plan(num_generations=4), plan(num_generations=8)
    assert four.memory == eight.memory
    assert four.throughput["steps_per_epoch"] * 2 == eight.throughput["steps_per_epoch"]  # 10 rows x G / 8
    assert four.training["num_generations"] == 4
    refused = plan(num_generations=3)
    assert any("TRL will refuse" in a for a in refused.assumptions)


def test_grpo_reference_model_with_beta_and_full_training_only(rl_recipe, tiny_folder):
    causal = _causal_parameters(tiny_folder)
    default = estimate(rl_recipe(GrpoRecipe))
    assert default.memory["reference_model"] == 0 and default.training["beta"] == 0.0  # TRL 1.16: beta 0.0
    full = estimate(rl_recipe(GrpoRecipe, train={"beta": 0.04, "per_device_train_batch_size": 4}))
    assert full.memory["reference_model"] == 2 * causal  # a bf16 copy
    assert full.training["reference_copy"] is True
    assert full.memory["scoring_logits"] == 4 * (64 + 512) * 1000 * 4  # one fp32 copy, no gradients
    assert "reference model" in full.render()
    lora = estimate(rl_recipe(GrpoRecipe, train={"beta": 0.04}, peft={"method": "lora"}))
    assert lora.memory["reference_model"] == 0  # the adapter is switched off instead
    assert lora.memory["scoring_logits"] > 0  # but the reference still scores the completions
    assert (
        lora.throughput["flops_per_step"]
        > estimate(rl_recipe(GrpoRecipe, peft={"method": "lora"})).throughput["flops_per_step"]
    )


def test_rloo_uses_rloo_defaults(rl_recipe, tiny_folder):
    plan = estimate(rl_recipe(RlooRecipe, train={"per_device_train_batch_size": 4}))
    assert plan.command == "rloo"
    assert plan.training["num_generations"] == 2 and plan.training["beta"] == 0.05
    assert plan.memory["reference_model"] == 2 * _causal_parameters(tiny_folder)


def test_vllm_leaves_generation_out(rl_recipe):
    plan = estimate(rl_recipe(GrpoRecipe, train={"use_vllm": True}))
    assert plan.memory["generation_kv_cache"] == plan.memory["generation_logits"] == 0
    assert any("vLLM" in a and "outside this estimate" in a for a in plan.assumptions)


def test_zero3_gathers_the_policy_to_generate(rl_recipe):
    plan = estimate(rl_recipe(GrpoRecipe), strategy="zero3", nproc=4)
    params = plan.model["parameters_with_adapter"]
    assert plan.memory["generation_gathered_weights"] == round(2 * params * 3 / 4)


def test_trl_defaults_match_the_installed_trl():
    """The constants the plan reads instead of importing trl are the installed dataclasses' defaults."""
    import dataclasses

    from trl import GRPOConfig, RLOOConfig

    from llmtune.plan.memory import TRL_RL_DEFAULTS

    for command, config in (("grpo", GRPOConfig), ("rloo", RLOOConfig)):
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        for key, value in {**TRL_RL_DEFAULTS["both"], **TRL_RL_DEFAULTS[command]}.items():
            assert defaults[key] == value, (command, key)


# ---------------------------------------------------------------------------------------------- CLI
def test_plan_command_takes_grpo_and_reward_recipes(rl_recipe, cli):
    grpo = rl_recipe(GrpoRecipe, train={"beta": 0.04, "per_device_train_batch_size": 8})
    result = cli("plan", "--recipe", str(grpo.source), "--target", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "(grpo)" in result.stdout
    for words in ("generation kv cache", "reference model", "train step"):
        assert words in result.stdout
    as_json = json.loads(cli("plan", "--recipe", str(grpo.source), "--target", "cpu", "--json").stdout)
    assert as_json["memory"]["generation_kv_cache"] > 0 and as_json["memory"]["reference_model"] > 0
    assert as_json["peak_phase"] in as_json["phases"]
    reward = rl_recipe(RewardRecipe)
    result = cli("plan", "--recipe", str(reward.source), "--target", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "(reward)" in result.stdout and "score head" in result.stdout
