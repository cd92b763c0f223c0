"""Golden loss trajectories: one tiny seeded run per training stage, its first logged losses pinned.

The anchors do this (torchtune `tests/recipes/test_lora_finetune_single_device.py` pins the loss values
of a tiny seeded run; TRL's `tests/invariant/` checks numeric equivalences), so that a change meant to
move code around cannot move a number without failing here. Each run is a few seconds on a CPU.

The pinned values were recorded on this project's CPU build of PyTorch (see README, "Tested with").
Another BLAS or CPU may round differently in the last bits; the tolerance allows for that and nothing
more: a changed seed, data order, mask, learning-rate schedule or loss changes the second decimal.
To re-record after an intended change in numerics:

    LLMTUNE_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_golden_trajectories.py

which rewrites tests/unit/golden_trajectories.json (the change then shows in `git diff`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import tiny_pretrain_recipe
from tests.unit.test_dpo import dpo_recipe
from tests.unit.test_lora_ner import first_sentences, ner_recipe
from tests.unit.test_sft import sft_recipe

GOLDEN = Path(__file__).with_name("golden_trajectories.json")
RECORD = os.environ.get("LLMTUNE_RECORD_GOLDEN") == "1"
# Absolute tolerance on losses of order 1-10: run to run on one machine the values are equal; between
# 1 and 2 threads they moved by up to 2e-6 here.
TOLERANCE = 1e-4


def logged(run_dir: Path, key: str = "loss") -> list[float]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return [round(row[key], 6) for row in metrics["train"] if key in row]


def check(stage: str, values: dict[str, list[float] | float]) -> None:
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if RECORD:
        golden[stage] = values
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    assert stage in golden, f"no golden values for {stage}; record them with LLMTUNE_RECORD_GOLDEN=1"
    expected = golden[stage]
    assert set(values) == set(expected), (values, expected)
    for key, wanted in expected.items():
        got = values[key]
        assert got == pytest.approx(wanted, abs=TOLERANCE), f"{stage} {key}: {got} != golden {wanted}"


def test_pretrain_from_scratch(tmp_path):
    from llmtune.recipe import PretrainRecipe
    from llmtune.stages import pretrain

    recipe = tiny_pretrain_recipe(tmp_path, train={"logging_steps": 1})
    results = pretrain.run(PretrainRecipe.model_validate(recipe))
    check(
        "pretrain",
        {"losses": logged(tmp_path / "run"), "eval_loss": round(results["eval_loss"], 6)},
    )


def test_sft_lora_with_dropout(tmp_path, tiny_pretrained):
    from llmtune.recipe import SftRecipe
    from llmtune.stages import sft

    recipe = sft_recipe(
        tmp_path,
        tiny_pretrained,
        peft={"method": "lora", "r": 4, "lora_dropout": 0.1},
        train={"max_steps": 6},
    )
    recipe["train"]["eval_strategy"] = "no"
    results = sft.run(SftRecipe.model_validate(recipe))
    check("sft", {"losses": logged(tmp_path / "run"), "eval_loss": round(results["eval_loss"], 6)})


def test_dpo_sigmoid_with_lora(tmp_path, tiny_pretrained):
    from llmtune.recipe import DpoRecipe
    from llmtune.stages import dpo

    recipe = dpo_recipe(tmp_path, tiny_pretrained)
    recipe["train"].update(max_steps=6, logging_steps=1)
    results = dpo.run(DpoRecipe.model_validate(recipe))
    check(
        "dpo",
        {
            "losses": logged(tmp_path / "run"),
            "eval_rewards_margins": round(results["eval_rewards_margins"], 6),
        },
    )


def test_lora_ner_with_crf(tmp_path, tiny_english_bert):
    from llmtune.recipe import NerRecipe
    from llmtune.stages import lora_ner

    few = first_sentences(tmp_path, 8)
    recipe = ner_recipe(
        tmp_path, tiny_english_bert, few, few, peft={"method": "lora", "r": 4, "lora_alpha": 8}
    )
    recipe["train"].update(num_train_epochs=6, logging_steps=1)
    results = lora_ner.run(NerRecipe.model_validate(recipe))
    check("lora-ner", {"losses": logged(tmp_path / "run"), "eval_loss": round(results["eval_loss"], 6)})
