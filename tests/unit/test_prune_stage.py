"""`llmtune prune` end to end on tiny random models: the recipe, the report, the output folder (loads with no
warning, tokenizer and chat template beside it), exactly the ranked layers removed, and the exit-2 errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.conftest import VERDICT


def _recipe(tmp_path, model, **prune) -> dict:
    return {
        "model": {"name_or_path": str(model)},
        "data": {
            "train_files": str(VERDICT),
            "txt_document": "file",
            "validation_split": 0.2,
            "split_by": "character",
            "block_size": 32,
        },
        "prune": {"output_dir": str(tmp_path / "pruned"), "calibration_blocks": 8, "eval_blocks": 4, **prune},
    }


@pytest.fixture(scope="module")
def four_layer_llama(tmp_path_factory, gpt2_tokenizer):
    """A tiny random Llama with 4 layers and grouped-query attention (4 heads, 2 kv), a chat template."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path_factory.mktemp("llama4")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(gpt2_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=gpt2_tokenizer.eos_token_id,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.max_new_tokens = 7
    model.save_pretrained(folder)
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(folder)
    return folder


def test_depth_pruning_removes_exactly_the_ranked_layers(tmp_path, write_recipe, cli, four_layer_llama):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = cli(
        "prune", "--recipe", str(write_recipe(_recipe(tmp_path, four_layer_llama, depth={"keep_layers": 2})))
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "pruned"
    report = json.loads((out / "prune_report.json").read_text())
    scores = report["depth"]["scores"]
    assert len(scores) == 4
    lowest = sorted(range(4), key=lambda i: (scores[i], -i))[:2]
    assert report["depth"]["removed"] == sorted(lowest)
    kept = report["depth"]["kept"]
    assert kept == [i for i in range(4) if i not in lowest]
    # the kept layers' weights, in order, are the original layers' weights
    original = load_file(four_layer_llama / "model.safetensors")
    pruned = load_file(out / "model.safetensors")
    for new, old in enumerate(kept):
        for part in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(pruned[f"model.layers.{new}.{part}"], original[f"model.layers.{old}.{part}"])
    assert not any(k.startswith("model.layers.2.") for k in pruned)
    # a normal HF folder: loads with no missing/unexpected keys, config matches, tokenizer + template + generation config
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model.config.num_hidden_layers == 2
    assert len(getattr(model.config, "layer_types", None) or [0, 0]) == 2
    assert AutoTokenizer.from_pretrained(out).chat_template.startswith("{% for m in messages %}")
    assert model.generation_config.max_new_tokens == 7
    assert report["after"]["parameters"] < report["before"]["parameters"]
    assert report["after"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert report["heldout_perplexity_before"] > 1 and report["heldout_perplexity_after"] > 1
    assert report["reload_max_abs_logit_difference"] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["command"] == "prune"


def test_perplexity_ranking_and_a_named_list(tmp_path, write_recipe, cli, four_layer_llama):
    recipe = _recipe(tmp_path, four_layer_llama, depth={"method": "perplexity", "remove_layers": [3, 1]})
    result = cli("prune", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "pruned" / "prune_report.json").read_text())
    assert report["depth"]["removed"] == [1, 3] and report["depth"]["kept"] == [0, 2]
    assert report["depth"]["method"] == "perplexity" and len(report["depth"]["scores"]) == 4


def test_width_pruning_respects_grouped_query_attention(tmp_path, write_recipe, cli, four_layer_llama):
    from transformers import AutoModelForCausalLM

    recipe = _recipe(
        tmp_path, four_layer_llama, width={"intermediate_size": 96, "attention_heads": 2, "kv_heads": 1}
    )
    result = cli("prune", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.output
    out = tmp_path / "pruned"
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    config = model.config
    assert (config.intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (96, 2, 1)
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (2 * config.head_dim, 64)
    assert layer.self_attn.k_proj.weight.shape == (1 * config.head_dim, 64)
    assert layer.mlp.down_proj.weight.shape == (64, 96)
    report = json.loads((out / "prune_report.json").read_text())
    # the two kept query heads of every layer come from one kv group (heads 0-1 or 2-3)
    for kept in report["width"]["heads_kept"]:
        assert kept in ([0, 1], [2, 3])


def test_wanda_reaches_the_target_sparsity(tmp_path, write_recipe, cli, four_layer_llama):
    recipe = _recipe(tmp_path, four_layer_llama, unstructured={"method": "wanda", "sparsity": 0.5})
    result = cli("prune", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "pruned" / "prune_report.json").read_text())
    measured = report["unstructured"]["sparsity"]
    assert measured["total"] == pytest.approx(0.5, abs=0.01)
    assert len(measured) == 1 + 4 * 7  # q k v o gate up down per layer, and the total
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "pruned" / "model.safetensors")
    down = weights["model.layers.0.mlp.down_proj.weight"]
    assert float((down == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert float((weights["model.embed_tokens.weight"] == 0).float().mean()) < 0.01  # embeddings untouched


def test_bad_targets_and_architectures_are_exit_2_and_write_nothing(
    tmp_path, write_recipe, cli, four_layer_llama, gpt2_tokenizer
):
    cases = [
        (_recipe(tmp_path, four_layer_llama, depth={"keep_layers": 9}), "only 4 layers"),
        (_recipe(tmp_path, four_layer_llama, depth={"remove_layers": [7]}), "do not exist"),
        (_recipe(tmp_path, four_layer_llama, width={"attention_heads": 3}), "attention_heads"),
        (_recipe(tmp_path, four_layer_llama), "nothing to do"),
        (_recipe(tmp_path, four_layer_llama, depth={"keep_layers": 2, "remove_layers": [1]}), "exactly one"),
    ]
    for recipe, message in cases:
        result = cli("prune", "--recipe", str(write_recipe(recipe)))
        assert result.exit_code == 2, (message, result.output)
        assert message in result.output, result.output
        assert "Loading weights" not in result.output  # caught from config.json, before the model loads
        assert not (tmp_path / "pruned").exists()
    # an architecture prune does not know: refused from its config, before the weights load
    from transformers import AutoModelForCausalLM, BloomConfig

    bloom = tmp_path / "bloom"
    AutoModelForCausalLM.from_config(
        BloomConfig(vocab_size=len(gpt2_tokenizer), hidden_size=32, n_layer=2, n_head=2)
    ).save_pretrained(bloom)
    gpt2_tokenizer.save_pretrained(bloom)
    result = cli("prune", "--recipe", str(write_recipe(_recipe(tmp_path, bloom, depth={"keep_layers": 1}))))
    assert result.exit_code == 2
    assert "bloom" in result.output and "llama" in result.output
    assert not (tmp_path / "pruned").exists()


def test_gpt2_depth_and_mlp(tmp_path, write_recipe, cli, gpt2_tokenizer):
    from transformers import AutoModelForCausalLM, GPT2Config

    folder = tmp_path / "gpt2"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(
        GPT2Config(vocab_size=len(gpt2_tokenizer), n_embd=32, n_layer=3, n_head=2, n_positions=64)
    ).save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    recipe = _recipe(tmp_path, folder, depth={"keep_layers": 2}, width={"intermediate_size": 64})
    result = cli("prune", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.output
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model.config.n_layer == 2 and model.config.n_inner == 64
    assert model.transformer.h[0].mlp.c_fc.weight.shape == (32, 64)
    heads = _recipe(tmp_path, folder, width={"attention_heads": 1})
    result = cli("prune", "--recipe", str(write_recipe(heads)), "--overwrite")
    assert result.exit_code == 2 and "GPT-2" in result.output


def test_print_config_and_an_existing_output_is_kept(tmp_path, write_recipe, cli, four_layer_llama):
    recipe = write_recipe(_recipe(tmp_path, four_layer_llama, depth={"keep_layers": 3}))
    shown = cli("prune", "--recipe", str(recipe), "--print-config")
    assert shown.exit_code == 0 and "keep_layers: 3" in shown.output
    assert not (tmp_path / "pruned").exists()
    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned" / "mine.txt").write_text("user file")
    result = cli("prune", "--recipe", str(recipe), "--overwrite")
    assert result.exit_code == 2
    assert (tmp_path / "pruned" / "mine.txt").read_text() == "user file"


@pytest.mark.parametrize("phase", ["model", "score", "prune", "evaluate", "save", "check"])
def test_a_failure_at_any_phase_leaves_the_earlier_output_intact(
    phase, tmp_path, write_recipe, cli, four_layer_llama, monkeypatch
):
    recipe = write_recipe(_recipe(tmp_path, four_layer_llama, depth={"keep_layers": 3}))
    assert cli("prune", "--recipe", str(recipe)).exit_code == 0
    out = tmp_path / "pruned"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setenv("LLMTUNE_FAULT", f"{phase}:enospc")
    changed = write_recipe(_recipe(tmp_path, four_layer_llama, depth={"keep_layers": 2}), "again.yaml")
    result = cli("prune", "--recipe", str(changed), "--overwrite")
    assert result.exit_code != 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("pruned")) == ["pruned"]
