"""dpo on a tiny random Llama: reward accuracy rises on the train rows; ORPO/SimPO/KTO run; DPO starts
from an sft run's adapter."""

import json

import pytest

from tests.unit.test_sft import sft_recipe


def pairs_file(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": f"Say something about {topic}.",
            "chosen": f"{topic} is nice.",
            "rejected": f"{topic} is awful!!",
        }
        for topic in ["cats", "dogs", "tea", "rain", "books", "trees", "music", "bread"]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dpo_recipe(tmp_path, model_dir, **dpo) -> dict:
    path = pairs_file(tmp_path)
    recipe = sft_recipe(tmp_path, model_dir, peft={"method": "lora", "r": 8})
    recipe["data"] = {
        "train_files": str(path),
        "validation_files": str(path),
        "template": "chatml",
        "max_length": 64,
    }
    recipe["dpo"] = {"beta": 0.5, **dpo}
    recipe["train"].update(
        max_steps=12, learning_rate=2e-2, per_device_train_batch_size=4, eval_strategy="no"
    )
    return recipe


@pytest.mark.slow  # 12 steps; the fast tier trains dpo in test_golden_trajectories
def test_dpo_raises_reward_accuracy_on_its_rows(tmp_path, tiny_pretrained, write_recipe, cli):
    result = cli("dpo", "--recipe", str(write_recipe(dpo_recipe(tmp_path, tiny_pretrained))))
    assert result.exit_code == 0, result.stderr
    results = json.loads((tmp_path / "run" / "manifest.json").read_text())["results"]
    assert results["eval_rewards_accuracies_first"] == 0.0  # policy == reference: every margin is 0
    assert results["eval_rewards_accuracies"] > 0.5
    assert results["eval_rewards_margins"] > results["eval_rewards_margins_first"]
    assert "reference: the model with its adapter disabled" in result.stderr


@pytest.mark.slow  # TRL's ORPO/CPO trainers take ~13 s each here; the fast tier trains dpo (golden test)
@pytest.mark.parametrize("algorithm", ["orpo", "simpo", "kto"])
def test_other_preference_algorithms_run(algorithm, tmp_path, tiny_pretrained):
    from llmtune.recipe import DpoRecipe
    from llmtune.stages import dpo

    recipe = dpo_recipe(tmp_path, tiny_pretrained, algorithm=algorithm)
    recipe["train"]["max_steps"] = 3
    results = dpo.run(DpoRecipe.model_validate(recipe))
    assert results["global_step"] == 3 and results["algorithm"] == algorithm
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


@pytest.mark.slow  # a second full model as reference; the fast tier trains dpo in the golden test
def test_full_dpo_uses_a_frozen_reference_and_ipo_loss(tmp_path, tiny_pretrained):
    from llmtune.recipe import DpoRecipe
    from llmtune.stages import dpo

    recipe = dpo_recipe(tmp_path, tiny_pretrained, loss_type="ipo")
    recipe["peft"] = {"method": "none"}
    recipe["train"].update(max_steps=3, learning_rate=1e-3)
    results = dpo.run(DpoRecipe.model_validate(recipe))
    assert results["eval_rewards_accuracies"] > results["eval_rewards_accuracies_first"]


@pytest.mark.slow  # an sft run, then a dpo run
def test_dpo_on_top_of_an_sft_adapter(tmp_path, tiny_pretrained, write_recipe, cli):
    sft_path = write_recipe(
        sft_recipe(tmp_path / "sft", tiny_pretrained, peft={"method": "lora", "r": 4}), "sft.yaml"
    )
    assert cli("sft", "--recipe", str(sft_path)).exit_code == 0
    recipe = dpo_recipe(tmp_path / "dpo", tiny_pretrained)
    recipe["model"] = {"name_or_path": str(tmp_path / "sft" / "run")}
    recipe["data"].pop("template")  # the sft run saved its chatml template with the tokenizer
    recipe["train"]["max_steps"] = 2
    result = cli("dpo", "--recipe", str(write_recipe(recipe, "dpo.yaml")))
    assert result.exit_code == 0, result.stderr
    assert "adapter from" in result.stderr and "merged in" in result.stderr


def test_dpo_option_in_train_section_is_pointed_to_dpo_section(tmp_path, tiny_pretrained, write_recipe, cli):
    recipe = dpo_recipe(tmp_path, tiny_pretrained)
    recipe["train"]["beta"] = 0.2
    result = cli("dpo", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 2 and "train.beta belongs in the dpo section" in result.stderr
