"""Numbers in recipes are checked when the recipe loads, before any model does: finite everywhere (free-form
keys too), within the bounds each key needs (HF checks few of them, and late), integers of a size the
libraries can hold; and every problem is blamed on the recipe line or the `--set` it came from."""

from __future__ import annotations

import pytest

from llmtune.errors import LlmtuneError
from llmtune.recipe import PretrainRecipe, load_recipe
from tests.conftest import tiny_pretrain_recipe


def error_of(path, *overrides) -> str:
    with pytest.raises(LlmtuneError) as info:
        load_recipe(path, PretrainRecipe, list(overrides))
    return info.value.render()


@pytest.mark.parametrize(
    ("section", "key", "text"),
    [
        ("peft", "lora_alpha", ".inf"),
        ("data", "validation_split", ".nan"),
        ("train", "learning_rate", ".nan"),
        ("train", "weight_decay", "-.inf"),
        ("train", "max_grad_norm", ".NaN"),
        ("train", "warmup_steps", ".inf"),
    ],
)
def test_non_finite_floats_are_rejected_in_every_section(tmp_path, write_recipe, section, key, text):
    data = tiny_pretrain_recipe(tmp_path)
    if section == "peft":  # a key the method reads (with model.name_or_path: lora needs a pretrained model)
        data["model"] = {"name_or_path": str(tmp_path)}
        data["peft"] = {"method": "lora"}
    data.setdefault(section, {})[key] = "PLACEHOLDER"
    path = write_recipe(data)
    path.write_text(path.read_text().replace("PLACEHOLDER", text))
    message = error_of(path)
    assert f"{section}.{key}: expected a finite number, got {text.lower()}" in message
    assert str(path) in message and " line " in message


def test_non_finite_floats_in_free_form_keys(tmp_path, write_recipe):
    data = tiny_pretrain_recipe(tmp_path)
    data["model"]["from_config"]["initializer_range"] = float("nan")
    data["train"]["lr_scheduler_kwargs"] = {"min_lr": float("-inf"), "steps": [1, float("inf")]}
    message = error_of(write_recipe(data))
    assert "model.from_config.initializer_range: expected a finite number, got .nan" in message
    assert "train.lr_scheduler_kwargs.min_lr: expected a finite number, got -.inf" in message
    assert "train.lr_scheduler_kwargs.steps.1: expected a finite number, got .inf" in message


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", ".nan"])
def test_non_finite_numbers_given_as_text(tmp_path, write_recipe, text):
    """`--set train.learning_rate=nan` gives the string "nan", which float() reads as NaN."""
    path = write_recipe(tiny_pretrain_recipe(tmp_path))
    for override in (f"train.learning_rate={text}", f"data.validation_split={text}"):
        message = error_of(path, override)
        assert "expected a finite number" in message and f"(from --set {override})" in message
        assert str(path) not in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("seed", -1, "must be in 0 .. 4294967295"),
        ("seed", 2**32, "must be in 0 .. 4294967295"),
        ("data_seed", -5, "must be in 0 .. 4294967295"),
        ("gradient_accumulation_steps", 0, "must be at least 1"),
        ("per_device_train_batch_size", 0, "must be at least 1"),
        ("per_device_eval_batch_size", 0, "must be at least 1"),
        ("max_steps", 0, "must be a positive number of steps, or -1"),
        ("max_steps", -2, "must be a positive number of steps, or -1"),
        ("num_train_epochs", 0, "must be greater than 0"),
        ("num_train_epochs", -1.5, "must be greater than 0"),
        ("learning_rate", 0, "must be greater than 0"),
        ("learning_rate", -1e-4, "must be greater than 0"),
        ("max_grad_norm", -1, "must be 0 or more"),
        ("warmup_steps", -3, "must be 0 or more"),
        ("logging_steps", 0, "must be greater than 0"),
        ("save_steps", -1, "must be greater than 0"),
        ("eval_steps", 0, "must be greater than 0"),
        ("eval_steps", 2.5, "must be greater than 0, and a whole number above 1"),
        ("adam_beta2", 1.0, "must be in [0, 1)"),
        ("per_device_train_batch_size", 2**64, "too large; at most 2,147,483,647"),
        ("max_steps", 10**30, "too large"),
    ],
)
def test_trainer_numbers_are_bounded_at_load(tmp_path, write_recipe, key, value, expected):
    message = error_of(write_recipe(tiny_pretrain_recipe(tmp_path, train={key: value})))
    assert f"train.{key}: {expected}" in message
    assert "not a recipe problem" not in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_steps", -1), ("seed", 0), ("seed", 2**32 - 1), ("max_grad_norm", 0), ("warmup_steps", 0.1)],
)
def test_trainer_numbers_at_their_bounds_are_accepted(tmp_path, write_recipe, key, value):
    recipe = load_recipe(write_recipe(tiny_pretrain_recipe(tmp_path, train={key: value})), PretrainRecipe)
    assert recipe.train.trainer_kwargs()[key] == value


def test_section_integers_fit_unless_the_key_sets_its_own_bound(tmp_path, write_recipe):
    message = error_of(write_recipe(tiny_pretrain_recipe(tmp_path, data={"block_size": 2**64})))
    assert "data.block_size: 18446744073709551616 is too large; at most 2,147,483,647" in message
    message = error_of(write_recipe(tiny_pretrain_recipe(tmp_path, data={"seed": -1})))
    assert "data.seed: input should be greater than or equal to 0, got -1" in message
    recipe = load_recipe(
        write_recipe(tiny_pretrain_recipe(tmp_path, data={"seed": 2**32 - 1})), PretrainRecipe
    )
    assert recipe.data.seed == 2**32 - 1


def test_a_huge_integer_is_shown_short(tmp_path, write_recipe):
    path = write_recipe(tiny_pretrain_recipe(tmp_path))
    message = error_of(path, "data.block_size=" + "9" * 4000)
    assert "digits)" in message and len(message) < 400


def test_legacy_names_are_blamed_on_the_set_that_used_them(tmp_path, write_recipe):
    data = tiny_pretrain_recipe(tmp_path)
    del data["train"]["eval_strategy"]
    message = error_of(write_recipe(data), "train.evaluation_strategy=sometimes")
    assert "train.evaluation_strategy: 'sometimes' is not one of" in message
    assert "(from --set train.evaluation_strategy=sometimes)" in message


def test_file_problems_name_the_line_and_set_problems_the_set(tmp_path, write_recipe):
    path = write_recipe(tiny_pretrain_recipe(tmp_path, data={"block_size": 0}))
    lines = path.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "block_size" in text)
    assert f"data.block_size: input should be greater than 0, got 0 ({path} line {line})" in error_of(path)
    message = error_of(path, "train.seed=-1")
    assert (
        "train.seed: must be in 0 .. 4294967295 (numpy's seed range), got -1 (from --set train.seed=-1)"
        in message
    )
    assert f"({path} line {line})" in message  # the file's own problem is still the file's


def test_a_section_rule_broken_by_a_set_names_the_set(tmp_path, write_recipe):
    path = write_recipe(tiny_pretrain_recipe(tmp_path))
    message = error_of(path, "data.validation_files=[a.txt]")
    assert "give data.validation_files or data.validation_split, not both" in message
    assert "with --set data.validation_files=[a.txt]" in message
