"""A short real sft and dpo on the demo SmolLM2-135M-Instruct (its own chat template)."""

import json

from tests.conftest import REPO


def test_quickstart_sft_on_the_demo_model(tmp_path, cli):
    out = tmp_path / "qs"
    result = cli(
        "sft",
        "--recipe",
        str(REPO / "recipes" / "quickstart.yaml"),
        "--set",
        f"train.output_dir={out}",
        "--set",
        "train.max_steps=3",
        "--set",
        "samples.max_new_tokens=8",
        "--set",
        "train.gradient_checkpointing=false",
    )
    assert result.exit_code == 0, result.stderr
    results = json.loads((out / "manifest.json").read_text())["results"]
    assert results["eval_loss"] < results["eval_loss_first"]
    samples = json.loads((out / "samples.json").read_text())
    assert samples[1]["prompt"].startswith("Which flag") and samples[0]["before"] and samples[0]["after"]
    assert "chat template: the model's own" in result.stderr


def test_dpo_on_the_demo_model(tmp_path, cli):
    out = tmp_path / "dpo"
    result = cli(
        "dpo",
        "--recipe",
        str(REPO / "recipes" / "dpo" / "smollm2-135m-dpo-en.yaml"),
        "--set",
        f"train.output_dir={out}",
        "--set",
        "train.max_steps=3",
        "--set",
        "data.max_samples=60",
        "--set",
        "train.gradient_checkpointing=false",
        "--set",
        "train.learning_rate=5e-4",
    )
    assert result.exit_code == 0, result.stderr
    results = json.loads((out / "manifest.json").read_text())["results"]
    assert results["eval_rewards_margins"] > results["eval_rewards_margins_first"]
    assert "bad rows skipped (chosen == rejected)" in result.stderr
