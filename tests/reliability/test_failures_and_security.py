"""A run that fails part way keeps its last good checkpoint and says why in run.log; checkpoint retention
never deletes the checkpoint being resumed from or the best one; and the security rules: remote code only
when asked (and warned), no shell, weights as safetensors, torch.load only with weights_only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_pretrain_recipe


def test_a_crash_in_evaluation_keeps_the_last_checkpoint_and_can_resume(
    tmp_path, write_recipe, cli, monkeypatch
):
    from transformers import Trainer

    recipe = tiny_pretrain_recipe(tmp_path)
    recipe["train"].update(
        max_steps=8,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=4,
        eval_on_start=False,
        logging_steps=1,
    )
    path = write_recipe(recipe)
    evaluate = Trainer.evaluate

    def full_disk(self, *args, **kwargs):
        if self.state.global_step >= 4:
            raise OSError(28, "No space left on device")
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", full_disk)
    result = cli("pretrain", "--recipe", str(path))
    assert (
        result.exit_code == 1 and "unexpected OSError" in result.stderr and "Traceback" not in result.stderr
    )
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "No space left on device" in manifest["error"]
    assert (run / "checkpoint-2" / "trainer_state.json").is_file()  # the last good checkpoint
    assert not (run / "model.safetensors").exists() and not list(run.glob("tmp-checkpoint-*"))
    log = (run / "run.log").read_text()
    assert "Traceback" in log and "No space left on device" in log  # the traceback is in the log file

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    resumed = cli("pretrain", "--recipe", str(path), "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"


def test_retention_keeps_the_resumed_and_the_best_checkpoint(tmp_path):
    from llmtune.training import prune_checkpoints

    for step in (2, 4, 6, 8, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    removed = prune_checkpoints(tmp_path, 1, {"checkpoint-2", "checkpoint-6"})
    assert sorted(removed) == ["checkpoint-4", "checkpoint-8"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-2", "checkpoint-6"]
    assert prune_checkpoints(tmp_path, None, set()) == []


def test_checkpoints_are_renamed_into_place_and_rotation_spares_the_resumed_one(tmp_path, write_recipe, cli):
    recipe = tiny_pretrain_recipe(tmp_path)
    recipe["train"].update(
        max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=1, eval_on_start=False
    )
    path = write_recipe(recipe)
    assert cli("pretrain", "--recipe", str(path)).exit_code == 0
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("*checkpoint-*")) == ["checkpoint-4"]
    resumed = cli("pretrain", "--recipe", str(path), "--resume", "--set", "train.max_steps=8")
    assert resumed.exit_code == 0, resumed.stderr
    # limit 1, resumed from checkpoint-4: checkpoint-4 stays next to the newest one
    assert sorted(p.name for p in run.glob("*checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]


def test_remote_code_runs_only_when_asked_and_is_warned(tmp_path, write_recipe, cli, tiny_pretrained):
    from tests.unit.test_sft import sft_recipe

    recipe = sft_recipe(tmp_path, tiny_pretrained)
    assert "trust_remote_code" not in json.dumps(recipe)  # default off
    recipe["model"]["trust_remote_code"] = True
    result = cli("data", "check", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    assert "model.trust_remote_code is true" in result.stderr


def test_no_shell_no_pickles_in_llmtune():
    sources = {p: p.read_text() for p in (REPO / "llmtune").rglob("*.py")}
    for path, text in sources.items():
        assert "shell=True" not in text and "os.system(" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert "pickle.load" not in text, path


def test_relaunch_passes_recipe_values_as_arguments_not_shell_text():
    from llmtune.launch import LaunchRequest, relaunch_command

    hostile = "train.output_dir=$(touch /tmp/llmtune-pwned); rm -rf ~"
    command = relaunch_command(LaunchRequest(nproc=2), ["sft", "--recipe", "r.yaml", "--set", hostile])
    assert command[-1] == hostile  # one argv element, handed to exec, never to a shell
    assert not Path("/tmp/llmtune-pwned").exists()


def _recipe_saving_every_step(stage, tmp_path, tiny_pretrained, tiny_english_bert):
    """A 2-step recipe of `stage` that writes a checkpoint at step 2 (full weights, or an adapter)."""
    from tests.unit.test_lora_ner import first_sentences, ner_recipe
    from tests.unit.test_sft import sft_recipe

    if stage == "pretrain":
        recipe = tiny_pretrain_recipe(tmp_path)
        recipe["train"]["eval_on_start"] = False
    elif stage == "sft":
        recipe = sft_recipe(tmp_path, tiny_pretrained, peft={"method": "lora", "r": 4})
    else:
        few = first_sentences(tmp_path, 4)
        recipe = ner_recipe(tmp_path, tiny_english_bert, few, few, peft={"method": "lora", "r": 4})
        recipe["train"].pop("num_train_epochs")
    recipe["train"].update(max_steps=2, save_strategy="steps", save_steps=2)
    return recipe


@pytest.mark.parametrize(
    ("stage", "weights"),
    [
        ("pretrain", "model"),
        pytest.param("sft", "adapter_model", marks=pytest.mark.slow),
        pytest.param("lora-ner", "adapter_model", marks=pytest.mark.slow),
    ],
)
def test_weights_are_written_as_safetensors(
    stage, weights, tmp_path, write_recipe, cli, tiny_pretrained, tiny_english_bert
):
    recipe = _recipe_saving_every_step(stage, tmp_path, tiny_pretrained, tiny_english_bert)
    result = cli(stage, "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "run"
    assert (run / f"{weights}.safetensors").is_file()
    assert (run / "checkpoint-2" / f"{weights}.safetensors").is_file()
    # no pickled weights anywhere (HF's optimizer/scheduler/RNG states stay .pt, loaded with weights_only)
    pickled = [p for p in run.rglob("*") if p.name.startswith(("pytorch_model", "adapter_model", "model"))]
    assert all(p.suffix in (".safetensors", ".json") for p in pickled), pickled


def test_empty_zero3_placeholders_are_not_called_a_model(tmp_path):
    """What a ZeRO-3 save without gathering writes: 0-element tensors. The run must not end 'completed'."""
    import torch
    from safetensors.torch import save_file

    from llmtune.errors import LlmtuneError
    from llmtune.training import check_saved_weights

    save_file(
        {"model.embed.weight": torch.zeros(4, 3), "model.q.weight": torch.empty(0)},
        tmp_path / "model.safetensors",
    )
    with pytest.raises(LlmtuneError, match=r"1 empty tensor\(s\) \(model.q.weight"):
        check_saved_weights(tmp_path)
    save_file({"model.q.weight": torch.ones(2, 2)}, tmp_path / "model.safetensors")
    check_saved_weights(tmp_path)  # a whole model passes
