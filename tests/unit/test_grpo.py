"""llmtune grpo / rloo on a tiny random Llama: a step changes the policy and logs every reward function,
completions are written with their rewards, the held-out prompts are scored before and after, and every
bad input (no reward, a reward that raises or returns the wrong thing, a prompt column missing) is a clear
exit 2."""

from __future__ import annotations

import json
import random

import pytest

REWARD_FILE = '''
def letters(prompts, completions, answer, **kwargs):
    """A reward with spread on random text: the share of letters in the completion."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    assert len(answer) == len(texts)  # the reference column reaches user functions
    return [sum(ch.isalpha() for ch in t) / max(len(t), 1) for t in texts]


def raises(prompts, completions, **kwargs):
    raise ValueError("my reward is broken")


def wrong_length(prompts, completions, **kwargs):
    return [1.0]


def fails_in_training(prompts, completions, answer, **kwargs):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    if any(t != a for t, a in zip(texts, answer)):
        raise RuntimeError("only references are allowed")
    return [1.0 for _ in texts]
'''


def prompts_file(path, n: int = 24):
    rng = random.Random(0)
    rows = [
        {"question": f"What is {a} + {b}?", "answer": str(a + b)}
        for a, b in ((rng.randint(1, 9), rng.randint(1, 9)) for _ in range(n))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def grpo_recipe(tmp_path, model_dir, rewards=None, **sections) -> dict:
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    recipe = {
        "model": {"name_or_path": str(model_dir)},
        "data": {
            "train_files": str(prompts_file(tmp_path / "q.jsonl")),
            "validation_split": 0.25,
            "template": "chatml",
            "max_prompt_length": 64,
        },
        "rewards": rewards
        or [
            {"type": "numeric_match"},
            {"type": "python", "function": "my_rewards.py:letters", "name": "letters", "weight": 0.5},
            {"type": "format", "pattern": r"\D*", "name": "no_digits"},
        ],
        "rl": {"allow_user_code": True, "completions_every": 1, "eval_batch_size": 8},
        "peft": {"method": "none"},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 2,
            "per_device_train_batch_size": 8,
            "num_generations": 4,
            "max_completion_length": 8,
            "learning_rate": 1e-3,
            "report_to": "none",
            "gradient_checkpointing": False,
            "disable_tqdm": True,
            "save_strategy": "no",
            "seed": 0,
        },
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    return recipe


def load(recipe: dict, tmp_path, algorithm: str = "grpo"):
    from llmtune.recipe import GrpoRecipe, RlooRecipe, recipe_from_mapping

    cls = GrpoRecipe if algorithm == "grpo" else RlooRecipe
    return recipe_from_mapping(recipe, cls, str(tmp_path / "recipe.yaml"), tmp_path, [])


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_a_step_changes_the_policy_and_logs_every_reward(algorithm, tmp_path, tiny_pretrained):
    from llmtune.stages import grpo

    results = grpo.run(load(grpo_recipe(tmp_path, tiny_pretrained), tmp_path, algorithm))
    run = tmp_path / "run"
    assert results["global_step"] == 2 and results["algorithm"] == algorithm
    before, after = _weights(tiny_pretrained), _weights(run)
    changed = [
        name
        for name in before
        if name in after
        and before[name].shape == after[name].shape
        and not (before[name] == after[name]).all()
    ]
    assert changed, "no weight of the policy changed"

    state = json.loads((run / "manifest.json").read_text())
    assert state["results"]["completions_logged"] == 16  # 2 steps x 8 completions, every step
    rows = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    assert {row["step"] for row in rows} == {0, 1}
    assert all(set(row["rewards"]) == {"numeric_match", "letters", "no_digits"} for row in rows)
    for row in rows:  # the total is the weighted sum
        expected = (
            row["rewards"]["numeric_match"] + 0.5 * row["rewards"]["letters"] + row["rewards"]["no_digits"]
        )
        assert row["total"] == pytest.approx(expected)
    heldout = json.loads((run / "heldout.json").read_text())
    assert heldout["before"]["prompts"] == heldout["after"]["prompts"] == 6
    assert set(heldout["after"]["rewards"]) == {"numeric_match", "letters", "no_digits"}
    assert (run / "rewards.png").stat().st_size > 0


def test_trl_logs_each_reward_function(tmp_path, tiny_pretrained, write_recipe, cli):
    """TRL's log keys carry the recipe's names (rewards/<name>/mean and std), plus the total and the length."""
    recipe = grpo_recipe(tmp_path, tiny_pretrained, train={"max_steps": 1})
    result = cli("grpo", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    log = (tmp_path / "run" / "run.log").read_text()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    text = json.dumps(metrics)
    for name in ("numeric_match", "letters", "no_digits"):
        assert f"rewards/{name}/mean" in text and f"rewards/{name}/std" in text
    assert '"reward"' in text and "completions/mean_length" in text
    assert "rewards: numeric_match (weight 1), letters (weight 0.5), no_digits (weight 1)" in log


def test_a_kl_term_with_full_training_uses_a_copy_of_the_loaded_model(
    tmp_path, tiny_pretrained, write_recipe, cli
):
    """TRL would reload the reference from config._name_or_path; llmtune hands it the starting model."""
    recipe = grpo_recipe(tmp_path, tiny_pretrained, train={"max_steps": 1, "beta": 0.1})
    result = cli("rloo", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    log = (tmp_path / "run" / "run.log").read_text()
    assert "KL to a frozen copy of the starting model (beta 0.1)" in log
    assert '"kl"' in json.dumps(json.loads((tmp_path / "run" / "metrics.json").read_text()))


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ({"type": "python", "function": "my_rewards.py:raises"}, "ValueError: my reward is broken"),
        (
            {"type": "python", "function": "my_rewards.py:wrong_length"},
            "a list of length 1 for 4 completions",
        ),
        ({"type": "python", "function": "my_rewards.py:nothing_here"}, "nothing_here"),
        ({"type": "python", "function": "missing_file.py:f"}, "missing_file.py"),
        ({"type": "exact_match", "answer_column": "solution"}, "'solution'"),
    ],
)
def test_a_broken_reward_function_is_a_clear_error_before_the_model_loads(
    reward, message, tmp_path, tiny_pretrained, write_recipe, cli
):
    result = cli(
        "grpo", "--recipe", str(write_recipe(grpo_recipe(tmp_path, tiny_pretrained, rewards=[reward])))
    )
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # before the run folder and the model


def test_a_reward_that_fails_during_training_stops_with_its_name(
    tmp_path, tiny_pretrained, write_recipe, cli
):
    rewards = [{"type": "python", "function": "my_rewards.py:fails_in_training", "name": "picky"}]
    result = cli(
        "grpo", "--recipe", str(write_recipe(grpo_recipe(tmp_path, tiny_pretrained, rewards=rewards)))
    )
    assert result.exit_code == 2, result.stderr
    assert "picky" in result.stderr and "only references are allowed" in result.stderr
    assert "Traceback" not in result.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] != "completed"


def test_recipe_errors(tmp_path, tiny_pretrained, write_recipe, cli):
    recipe = grpo_recipe(tmp_path, tiny_pretrained)
    recipe["rewards"] = []
    result = cli("grpo", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 2 and "no reward function" in result.stderr

    recipe = grpo_recipe(tmp_path, tiny_pretrained)
    recipe["rl"]["allow_user_code"] = False
    result = cli("grpo", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 2 and "rl.allow_user_code" in result.stderr

    path = tmp_path / "no_prompt.jsonl"
    path.write_text('{"text": "no prompt here", "answer": "1"}\n')
    recipe = grpo_recipe(tmp_path, tiny_pretrained)
    recipe["data"] = {"train_files": str(path), "template": "chatml"}
    result = cli("grpo", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 2 and "cannot tell the prompt format" in result.stderr
    assert "data.columns" in result.stderr

    recipe = grpo_recipe(tmp_path, tiny_pretrained, train={"reward_weights": [1.0, 1.0, 1.0]})
    result = cli("grpo", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 2 and "rewards[].weight" in result.stderr


def test_medicalgpt_names_are_mapped_with_a_note(tmp_path, tiny_pretrained, write_recipe, cli):
    recipe = grpo_recipe(tmp_path, tiny_pretrained, train={"max_prompt_length": 48, "train_samples": -1})
    result = cli("grpo", "--recipe", str(write_recipe(recipe)), "--print-config")
    assert result.exit_code == 2 and "keep only data.max_prompt_length" in result.stderr  # given twice
    del recipe["data"]["max_prompt_length"]
    result = cli("grpo", "--recipe", str(write_recipe(recipe)), "--print-config")
    assert result.exit_code == 0, result.stderr
    assert "max_prompt_length: 48" in result.stdout.split("train:")[0]  # under data:
    assert "max_samples: null" in result.stdout  # MedicalGPT's -1 = all rows
    assert "train.max_prompt_length (MedicalGPT / older TRL) is data.max_prompt_length" in result.stderr


def test_prompt_formats_and_extra_columns(tmp_path, gpt2_tokenizer):
    from llmtune.data.prompts import load_prompts
    from llmtune.recipe import PromptDataSection

    rows = [
        {
            "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
            "level": 1,
        },
        {
            "messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}],
            "level": 2,
        },
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = gpt2_tokenizer.__class__.from_pretrained(gpt2_tokenizer.name_or_path)
    out, report = load_prompts(tokenizer, PromptDataSection(train_files=[str(path)], template="chatml"))
    assert report.formats[str(path)] == "messages"
    assert out["train"][0]["prompt"] == [{"role": "user", "content": "2+2?"}]
    assert out["train"][0]["answer"] == "4" and out["train"][1]["level"] == 2
    assert "level" in report.columns

    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"prompt": "word " * 200}) + "\n" + json.dumps({"prompt": "short"}) + "\n")
    out, report = load_prompts(
        tokenizer, PromptDataSection(train_files=[str(path)], template="chatml", max_prompt_length=32)
    )
    assert report.dropped_long_prompt["train"] == 1 and len(out["train"]) == 1
    assert "1 dropped as longer than data.max_prompt_length 32" in "\n".join(report.lines())


def test_grpo_with_a_trained_reward_model(tmp_path, tiny_pretrained):
    """The reward of a grpo run can be a reward model trained by llmtune reward."""
    from llmtune.stages import grpo, reward
    from tests.unit.test_reward import load as load_reward
    from tests.unit.test_reward import reward_recipe

    rm_dir = tmp_path / "rm"
    rm_dir.mkdir()
    recipe = reward_recipe(rm_dir, tiny_pretrained, train={"max_steps": 2})
    reward.run(load_reward(recipe, rm_dir))
    rewards = [{"type": "reward_model", "model": str(rm_dir / "run"), "name": "rm"}]
    results = grpo.run(
        load(grpo_recipe(tmp_path, tiny_pretrained, rewards=rewards, train={"max_steps": 1}), tmp_path)
    )
    assert results["global_step"] == 1
    rows = [json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    values = [row["rewards"]["rm"] for row in rows]
    assert len(set(values)) > 1  # a real score per completion, not a constant


@pytest.mark.slow  # two runs
def test_resume_continues_from_the_checkpoint(tmp_path, tiny_pretrained, write_recipe, cli):
    recipe = grpo_recipe(
        tmp_path, tiny_pretrained, train={"max_steps": 2, "save_strategy": "steps", "save_steps": 1}
    )
    path = write_recipe(recipe)
    assert cli("grpo", "--recipe", str(path)).exit_code == 0
    result = cli("grpo", "--recipe", str(path), "--resume", "--set", "train.max_steps=3")
    assert result.exit_code == 0, result.stderr
    assert "Resuming from" in result.stderr and "checkpoint-2" in result.stderr
    results = json.loads((tmp_path / "run" / "manifest.json").read_text())["results"]
    assert results["global_step"] == 3
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()
    ]
    assert sorted(set(steps)) == [0, 1, 2]  # the resumed run appends its step to the same file
