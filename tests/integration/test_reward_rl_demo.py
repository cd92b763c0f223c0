"""Short real reward, grpo and rloo runs of the shipped recipes on the demo SmolLM2-135M-Instruct."""

import json

import pytest

from tests.conftest import REPO


def test_reward_recipe_on_the_demo_model(tmp_path, cli):
    out = tmp_path / "rm"
    result = cli(
        "reward",
        "--recipe",
        str(REPO / "recipes" / "reward" / "smollm2-135m-reward-en.yaml"),
        "--set",
        f"train.output_dir={out}",
        "--set",
        "train.max_steps=3",
        "--set",
        "data.max_samples=60",
        "--set",
        "train.learning_rate=1e-3",
    )
    assert result.exit_code == 0, result.stderr
    results = json.loads((out / "manifest.json").read_text())["results"]
    assert results["eval_pairs"] == 6 and results["pad_token"] == "<|im_end|>"
    assert results["eval_margin"] != results["eval_margin_before"]  # the head trained
    assert "padding token: '<|im_end|>' (the tokenizer's own)" in result.stderr
    scores = json.loads((out / "reward_eval.json").read_text())
    assert len(scores["after"]["scores"]) == 6


def test_reward_data_check_counts_cut_medical_pairs(cli):
    result = cli(
        "data",
        "check",
        "--recipe",
        str(REPO / "recipes" / "reward" / "smollm2-135m-reward-medical.yaml"),
        "-n",
        "0",
    )
    assert result.exit_code == 0, result.stderr
    train = next(line for line in result.stdout.splitlines() if line.strip().startswith("train: "))
    assert "450 examples" in train and "truncated to 384" in train  # every pair kept, cut ones counted


@pytest.mark.parametrize("command", ["grpo", "rloo"])
def test_rl_recipe_on_the_demo_model(command, tmp_path, cli):
    out = tmp_path / command
    result = cli(
        command,
        "--recipe",
        str(REPO / "recipes" / "grpo" / "smollm2-135m-arithmetic.yaml"),
        "--set",
        f"train.output_dir={out}",
        "--set",
        "train.max_steps=2",
        "--set",
        "rl.eval_max_prompts=8",
        "--set",
        "rl.completions_every=1",
        "--set",
        "train.save_strategy=no",
    )
    assert result.exit_code == 0, result.stderr
    results = json.loads((out / "manifest.json").read_text())["results"]
    assert results["global_step"] == 2 and results["algorithm"] == command
    assert 0 <= results["heldout_accuracy"] <= 1 and results["completions_logged"] == 16
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert all(set(row["rewards"]) == {"numeric_match", "number_only"} for row in rows)
