"""llmtune eval --reward on tiny reward models trained here (a LoRA run and a full one): pairwise accuracy on
the separable pairs they learned, per-pair scores that match score_sequences, cuts and drops counted,
--compare of two reward models, and clear exit-2 errors for a model that is not a reward model or a task
a reward model cannot do."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_reward import load, reward_recipe


def train_reward_run(root, tiny_pretrained, name: str, **sections):
    """An `llmtune reward` run on the 64 separable pairs of tests/unit/test_reward.py, in root/name/run-<name>."""
    from llmtune.stages import reward

    folder = root / name
    folder.mkdir()
    recipe = reward_recipe(folder, tiny_pretrained, **sections)
    recipe["peft"] = sections.get("peft", recipe["peft"])  # method none takes no r
    recipe["train"]["output_dir"] = str(folder / f"run-{name}")
    with pytest.MonkeyPatch.context() as patch:  # the autouse per-test home is not set up yet at module scope
        patch.setenv("LLMTUNE_HOME", str(root / "home"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        reward.run(load(recipe, folder))
    return folder / f"run-{name}"


@pytest.fixture(scope="module")
def reward_runs(tmp_path_factory, tiny_pretrained):
    """{"lora": a LoRA reward run, "pairs": the 64 separable pairs it was trained on}; "full" (a peft.method
    none run) is trained on first use, by the slow tests only."""
    root = tmp_path_factory.mktemp("reward_runs")
    runs = {"lora": train_reward_run(root, tiny_pretrained, "lora"), "pairs": root / "lora" / "pairs.jsonl"}
    yield runs


@pytest.fixture(scope="module")
def full_run(reward_runs, tmp_path_factory, tiny_pretrained):
    root = tmp_path_factory.mktemp("reward_full")
    return train_reward_run(
        root, tiny_pretrained, "full", peft={"method": "none"}, train={"learning_rate": 1e-3}
    )


def direct_scores(run, pairs, max_length=1024):
    """Each pair's (chosen, rejected) score, computed without llmtune eval: the run's own template,
    reward_pairs.tokenize_pairs and reward_model.score_sequences."""
    from llmtune.data.chat_dataset import load_chat_data
    from llmtune.data.reward_pairs import tokenize_pairs
    from llmtune.recipe import ChatDataSection
    from llmtune.reward_model import load_trained_reward_model, score_sequences

    model, tokenizer = load_trained_reward_model(run)
    data = ChatDataSection(train_files=[str(pairs)], max_length=max_length)
    examples, report = load_chat_data(tokenizer, data, preference=True)
    split = tokenize_pairs(tokenizer, examples, data, report)["train"]
    n = len(split["chosen_ids"])
    scores = score_sequences(
        model, split["chosen_ids"] + split["rejected_ids"], pad_token_id=tokenizer.pad_token_id
    )
    return split["where"], scores[:n], scores[n:]


def test_lora_reward_run_is_scored_end_to_end(reward_runs, tmp_path, cli):
    out = tmp_path / "eval"
    result = cli(
        "eval", "--model", str(reward_runs["lora"]), "--reward", str(reward_runs["pairs"]), "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert "reward: accuracy" in result.output

    found = json.loads((out / "results.json").read_text())["results"][str(reward_runs["lora"])]["reward"]
    assert found["pairs"] == 64 and found["truncated"] == 0 and found["dropped"] == 0
    assert found["accuracy"] > 0.9
    assert found["mean_margin"] > 1
    assert found["chosen"]["mean"] > found["rejected"]["mean"]
    assert found["template"] == "the model's own"  # the run's saved chatml, as trained

    rows = [json.loads(line) for line in (out / "reward_scores.jsonl").read_text().splitlines()]
    assert len(rows) == 64
    where, chosen, rejected = direct_scores(reward_runs["lora"], reward_runs["pairs"])
    assert [r["where"] for r in rows] == where
    assert [r["chosen"] for r in rows] == pytest.approx(chosen, abs=1e-5)
    assert [r["rejected"] for r in rows] == pytest.approx(rejected, abs=1e-5)
    assert all(r["margin"] == pytest.approx(r["chosen"] - r["rejected"]) for r in rows)
    assert sum(r["correct"] for r in rows) / 64 == found["accuracy"]
    report = (out / f"report-{reward_runs['lora'].name}.md").read_text()
    assert "| reward | accuracy |" in report and "64 pairs scored" in report


@pytest.mark.slow  # trains a second (full) reward model
def test_full_reward_model_folder_is_scored(reward_runs, full_run, tmp_path):
    from llmtune.recipe import EvalRecipe, recipe_from_mapping
    from llmtune.stages import eval as stage

    raw = {
        "model": {"name_or_path": str(full_run)},
        "eval": {"output_dir": str(tmp_path / "eval")},
        "reward": {"files": [str(reward_runs["pairs"])], "batch_size": 5},
    }
    summary = stage.run(recipe_from_mapping(raw, EvalRecipe, "test", tmp_path, []))
    found = summary["results"][str(full_run)]["reward"]
    assert found["accuracy"] > 0.9
    _, chosen, rejected = direct_scores(full_run, reward_runs["pairs"])
    rows = [json.loads(line) for line in (tmp_path / "eval" / "reward_scores.jsonl").read_text().splitlines()]
    assert [r["chosen"] for r in rows] == pytest.approx(chosen, abs=1e-5)
    assert [r["rejected"] for r in rows] == pytest.approx(rejected, abs=1e-5)


def test_long_answers_are_cut_and_counted(reward_runs, tmp_path, cli):
    from llmtune.reward_model import load_trained_reward_model

    _, tokenizer = load_trained_reward_model(reward_runs["lora"])
    rows = [json.loads(line) for line in reward_runs["pairs"].read_text().splitlines()]
    rendered = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r[side]}],
            tokenize=False,
        )
        for r in rows
        for side in ("response_chosen", "response_rejected")
    ]
    shortest = min(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rendered)
    out = tmp_path / "eval"
    result = cli(
        "eval",
        "--model",
        str(reward_runs["lora"]),
        "--reward",
        str(reward_runs["pairs"]),
        "--out",
        str(out),
        "--set",
        f"reward.max_length={shortest - 1}",
    )
    assert result.exit_code == 0, result.output
    found = json.loads((out / "results.json").read_text())["results"][str(reward_runs["lora"])]["reward"]
    assert found["truncated"] == 64 and found["dropped"] == 0 and found["pairs"] == 64
    scored = [json.loads(line) for line in (out / "reward_scores.jsonl").read_text().splitlines()]
    assert all(r["truncated"] for r in scored)
    where, chosen, _ = direct_scores(reward_runs["lora"], reward_runs["pairs"], max_length=shortest - 1)
    assert [r["chosen"] for r in scored] == pytest.approx(chosen, abs=1e-5)

    result = cli(
        "eval",
        "--model",
        str(reward_runs["lora"]),
        "--reward",
        str(reward_runs["pairs"]),
        "--out",
        str(tmp_path / "none"),
        "--set",
        "reward.max_length=3",
    )
    assert result.exit_code == 2
    assert "every one of the 64 pair(s) was dropped" in result.output and "reward.max_length" in result.output


@pytest.mark.slow  # trains a second (full) reward model
def test_compare_two_reward_models(reward_runs, full_run, tmp_path, cli):
    out = tmp_path / "eval"
    result = cli(
        "eval",
        "--compare",
        str(reward_runs["lora"]),
        str(full_run),
        "--reward",
        str(reward_runs["pairs"]),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    table = json.loads((out / "compare.json").read_text())
    metrics = {(row["task"], row["metric"]) for row in table["rows"]}
    assert {("reward", "accuracy"), ("reward", "mean_margin")} <= metrics
    for label in ("run-lora", "run-full"):
        assert len((out / f"reward_scores-{label}.jsonl").read_text().splitlines()) == 64


def test_a_model_that_is_not_a_reward_model_is_refused(reward_runs, tiny_pretrained, tmp_path, cli):
    result = cli(
        "eval",
        "--model",
        str(tiny_pretrained),
        "--reward",
        str(reward_runs["pairs"]),
        "--out",
        str(tmp_path / "eval"),
    )
    assert result.exit_code == 2
    assert f"{tiny_pretrained} is not a reward model" in result.output
    assert "llmtune reward" in result.output
    assert not (tmp_path / "eval").exists()


def test_language_model_tasks_refuse_a_reward_model(reward_runs, tmp_path, cli):
    text = tmp_path / "text.txt"
    text.write_text("Some text to score. " * 20)
    for run in (reward_runs["lora"],):
        result = cli(
            "eval", "--model", str(run), "--perplexity", str(text), "--out", str(tmp_path / run.name)
        )
        assert result.exit_code == 2, result.output
        assert f"{run} is a reward model" in result.output and "reward section only" in result.output


def test_bad_rows_name_the_reward_keys(reward_runs, tmp_path, cli):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no pair here"}) + "\n")
    result = cli(
        "eval", "--model", str(reward_runs["lora"]), "--reward", str(bad), "--out", str(tmp_path / "e")
    )
    assert result.exit_code == 2
    assert "bad.jsonl" in result.output
    assert "data.format" not in result.output and "data.columns" not in result.output


def test_reward_section_is_validated(tmp_path):
    from llmtune.errors import LlmtuneError
    from llmtune.recipe import EvalRecipe, recipe_from_mapping

    recipe = recipe_from_mapping({"reward": {"files": "x.jsonl"}}, EvalRecipe, "test", tmp_path, [])
    assert recipe.tasks == ["reward"] and recipe.reward.max_length == 1024 and recipe.reward.template is None
    with pytest.raises(LlmtuneError, match="reward.max_lenght"):
        recipe_from_mapping(
            {"reward": {"files": "x.jsonl", "max_lenght": 5}}, EvalRecipe, "test", tmp_path, []
        )
    with pytest.raises(LlmtuneError, match="reward.format"):
        recipe_from_mapping(
            {"reward": {"files": "x.jsonl", "format": "alpaca"}}, EvalRecipe, "test", tmp_path, []
        )
