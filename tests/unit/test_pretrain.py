"""`llmtune pretrain` end to end on tiny models: from scratch, LoRA/DoRA, outputs, protection, resume."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import VERDICT, tiny_pretrain_recipe


def read_json(path):
    return json.loads(path.read_text())


def lora_recipe(tmp_path, tiny_pretrained, **sections):
    recipe = tiny_pretrain_recipe(tmp_path, **sections)
    recipe["model"] = {"name_or_path": str(tiny_pretrained)}
    recipe.setdefault("peft", {"method": "lora", "r": 4, "lora_alpha": 8, "target_modules": "all-linear"})
    return recipe


def test_from_scratch_loss_falls_and_the_run_folder_is_complete(tmp_path, write_recipe, cli):
    result = cli("pretrain", "--recipe", str(write_recipe(tiny_pretrain_recipe(tmp_path))))
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "run"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "recipe.yaml",
        "manifest.json",
        "metrics.json",
        "data_report.json",
        "loss.png",
        "run.log",
    ):
        assert (run / name).exists(), name
    metrics = read_json(run / "metrics.json")
    evals = [row["eval_loss"] for row in metrics["eval"]]
    assert evals[0] > evals[-1] + 0.5  # eval_on_start: the untrained model first, then learning
    assert metrics["train"][0]["loss"] > metrics["train"][-1]["loss"]
    assert metrics["eval"][-1]["eval_perplexity"] == pytest.approx(2.718281828 ** evals[-1], rel=1e-6)
    manifest = read_json(run / "manifest.json")
    assert manifest["status"] == "completed"
    assert manifest["model"]["source"] == "from_config" and manifest["model"]["trainable_parameters"] > 0
    assert str(VERDICT) in manifest["data"]["files"] and manifest["packages"]["transformers"]
    assert manifest["results"]["train_tokens_per_second"] > 0
    assert manifest["results"]["train_tokens"] == 8 * 4 * 64  # max_steps × batch × block: no padding
    assert "data: 1 file(s), 1 documents read" in result.stderr


def test_saved_model_loads_back_with_plain_transformers(tmp_path, write_recipe, cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (
        cli(
            "pretrain", "--recipe", str(write_recipe(tiny_pretrain_recipe(tmp_path, train={"max_steps": 2})))
        ).exit_code
        == 0
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run")
    assert model.config.num_hidden_layers == 2 and len(tokenizer) == 50257


def test_lora_trains_only_the_adapter_and_loads_back(tmp_path, write_recipe, cli, tiny_pretrained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = cli("pretrain", "--recipe", str(write_recipe(lora_recipe(tmp_path, tiny_pretrained))))
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "run"
    assert (run / "adapter_model.safetensors").exists() and not (run / "model.safetensors").exists()
    manifest = read_json(run / "manifest.json")
    assert 0 < manifest["model"]["trainable_parameters"] < manifest["model"]["parameters"] / 10
    evals = [row["eval_loss"] for row in read_json(run / "metrics.json")["eval"]]
    assert evals[-1] < evals[0]
    base = AutoModelForCausalLM.from_pretrained(tiny_pretrained)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_pretrained), run)
    ids = torch.tensor([[6109, 3626, 6100, 345]])
    with torch.no_grad():
        assert not torch.allclose(
            base(ids).logits, tuned(ids).logits, atol=1e-4
        )  # the adapter changed the model


def test_dora_and_gradient_checkpointing(tmp_path, write_recipe, cli, tiny_pretrained):
    recipe = lora_recipe(
        tmp_path,
        tiny_pretrained,
        peft={"method": "dora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
        train={"max_steps": 2, "gradient_checkpointing": True},
    )
    result = cli("pretrain", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    config = read_json(tmp_path / "run" / "adapter_config.json")
    assert config["use_dora"] is True and sorted(config["target_modules"]) == ["q_proj", "v_proj"]


def test_qlora_pretraining_loads_the_base_in_4bit(tmp_path, write_recipe, cli, tiny_pretrained):
    """peft.method qlora used to train LoRA on an unquantised base here (found while planning memory)."""
    recipe = lora_recipe(tmp_path, tiny_pretrained, peft={"method": "qlora", "r": 4}, train={"max_steps": 2})
    result = cli("pretrain", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    manifest = read_json(tmp_path / "run" / "manifest.json")
    assert manifest["model"]["loaded_in_4bit"] is True and manifest["model"]["peft"] == "qlora"


def test_a_second_run_into_the_same_folder_is_refused_and_changes_nothing(tmp_path, write_recipe, cli):
    path = write_recipe(tiny_pretrain_recipe(tmp_path, train={"max_steps": 1}))
    assert cli("pretrain", "--recipe", str(path)).exit_code == 0
    run = tmp_path / "run"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    result = cli("pretrain", "--recipe", str(path))
    assert result.exit_code == 2
    assert "is not empty" in result.stderr and "Traceback" not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_overwrite_with_a_broken_recipe_keeps_the_old_run(tmp_path, write_recipe, cli):
    path = write_recipe(tiny_pretrain_recipe(tmp_path, train={"max_steps": 1}))
    assert cli("pretrain", "--recipe", str(path)).exit_code == 0
    result = cli(
        "pretrain", "--recipe", str(path), "--overwrite", "--set", f"data.train_files={tmp_path}/missing.txt"
    )
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow  # three runs; tests/reliability resumes real processes too
def test_resume_continues_from_the_checkpoint_with_the_same_losses(tmp_path, write_recipe, cli):
    train = {
        "max_steps": 6,
        "save_strategy": "steps",
        "save_steps": 3,
        "logging_steps": 1,
        "eval_strategy": "no",
        "lr_scheduler_type": "constant",  # the shortened first half must not decay its learning rate sooner
        "eval_on_start": False,
    }
    full = tiny_pretrain_recipe(tmp_path / "a", train={**train, "output_dir": str(tmp_path / "full")})
    assert cli("pretrain", "--recipe", str(write_recipe(full, "full.yaml"))).exit_code == 0
    # The same run, "interrupted" after its checkpoint at step 3, then resumed.
    part = tiny_pretrain_recipe(tmp_path / "b", train={**train, "output_dir": str(tmp_path / "part")})
    path = write_recipe(part, "part.yaml")
    assert cli("pretrain", "--recipe", str(path), "--set", "train.max_steps=3").exit_code == 0
    result = cli("pretrain", "--recipe", str(path), "--resume")
    assert result.exit_code == 0, result.stderr
    losses = lambda run: [row["loss"] for row in read_json(tmp_path / run / "metrics.json")["train"]]  # noqa: E731
    assert len(losses("part")) == 6
    assert losses("part") == pytest.approx(losses("full"), abs=1e-5)


def test_early_stopping_stops_when_eval_loss_stops_improving(tmp_path, write_recipe, cli):
    recipe = tiny_pretrain_recipe(
        tmp_path,
        train={"max_steps": 40, "learning_rate": 0.5, "eval_steps": 2, "save_strategy": "steps"},
        early_stopping={"patience": 1},
    )
    result = cli("pretrain", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    manifest = read_json(tmp_path / "run" / "manifest.json")
    assert manifest["results"]["global_step"] < 40  # a learning rate of 0.5 diverges: stopped early


def test_block_size_beyond_the_model_positions_is_explained(tmp_path, write_recipe, cli):
    recipe = tiny_pretrain_recipe(tmp_path, data={"block_size": 256})
    result = cli("pretrain", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 2
    assert "data.block_size (256) is longer than the model's 128 positions" in result.stderr


def test_bloomz_medical_recipe_runs_on_a_tiny_bloom(tmp_path, cli, gpt2_tokenizer):
    """The MedicalGPT recipe through its real code path (hub model → local folder, LoRA on all linear
    layers, gradient checkpointing, legacy warmup_ratio), with a tiny random BLOOM standing in for
    bigscience/bloomz-560m, which cannot be downloaded here."""
    from transformers import AutoModelForCausalLM, BloomConfig

    from tests.conftest import REPO

    folder = tmp_path / "tiny-bloom"
    config = BloomConfig(vocab_size=len(gpt2_tokenizer), hidden_size=64, n_layer=2, n_head=4)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    result = cli(
        "pretrain",
        "--recipe",
        str(REPO / "recipes/pretrain/bloomz-560m-medical.yaml"),
        "--set",
        f"model.name_or_path={folder}",
        "--set",
        f"train.output_dir={tmp_path / 'run'}",
        "--set",
        "data.block_size=64",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.gradient_accumulation_steps=1",
        "--set",
        "train.per_device_train_batch_size=2",
        "--set",
        "train.per_device_eval_batch_size=16",
        "--set",
        "train.report_to=none",
    )
    assert result.exit_code == 0, result.stderr
    assert "train.warmup_ratio is called train.warmup_steps in transformers 5" in result.stderr
    adapter = read_json(tmp_path / "run" / "adapter_config.json")
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and adapter["lora_dropout"] == 0.05
    assert {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]} == {
        "query_key_value",
        "dense",
        "dense_h_to_4h",
        "dense_4h_to_h",
    }  # every linear layer, not the head
    manifest = read_json(tmp_path / "run" / "manifest.json")
    assert manifest["status"] == "completed" and len(manifest["data"]["files"]) == 2
