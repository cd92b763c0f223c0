"""Run-folder protection, checkpoints, metrics and the manifest."""

from __future__ import annotations

import json

import pytest

from llmtune.errors import LlmtuneError
from llmtune.outputs import (
    check_run_dir,
    latest_checkpoint,
    metrics_from_log_history,
    open_run_dir,
    write_json,
)


def make_checkpoint(run, step, complete=True):
    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def test_new_and_empty_folders_are_fine(tmp_path):
    assert check_run_dir(str(tmp_path / "new"), overwrite=False, resume=False) == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # checking changes nothing
    (tmp_path / "empty").mkdir()
    check_run_dir(str(tmp_path / "empty"), overwrite=False, resume=False)


def test_a_run_is_never_overwritten_silently(tmp_path):
    (tmp_path / "model.safetensors").write_text("weights")
    with pytest.raises(LlmtuneError) as info:
        check_run_dir(str(tmp_path), overwrite=False, resume=False)
    message = info.value.render()
    assert (
        "is not empty (model.safetensors)" in message and "--resume" in message and "--overwrite" in message
    )
    assert (tmp_path / "model.safetensors").read_text() == "weights"


def test_overwrite_clears_only_when_the_run_starts(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    path = check_run_dir(str(tmp_path), overwrite=True, resume=False)
    assert (tmp_path / "old.txt").exists()
    open_run_dir(path, overwrite=True, resume=False)
    assert list(tmp_path.iterdir()) == []


def test_resume_needs_a_complete_checkpoint(tmp_path):
    with pytest.raises(LlmtuneError, match="holds no complete checkpoint"):
        check_run_dir(str(tmp_path), overwrite=False, resume=True)
    make_checkpoint(tmp_path, 5, complete=False)
    with pytest.raises(LlmtuneError, match=r"no complete checkpoint .*checkpoint-5"):
        check_run_dir(str(tmp_path), overwrite=False, resume=True)
    make_checkpoint(tmp_path, 3)
    assert check_run_dir(str(tmp_path), overwrite=False, resume=True) == tmp_path
    with pytest.raises(LlmtuneError, match="contradict"):
        check_run_dir(str(tmp_path), overwrite=True, resume=True)


def test_latest_checkpoint_skips_incomplete_ones(tmp_path):
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 100)
    make_checkpoint(tmp_path, 200, complete=False)  # interrupted while saving
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-100"


def test_a_failed_run_without_checkpoints_is_reused(tmp_path):
    write_json(tmp_path / "manifest.json", {"status": "failed"})
    (tmp_path / "run.log").write_text("error")
    check_run_dir(str(tmp_path), overwrite=False, resume=False)
    make_checkpoint(tmp_path, 2)
    with pytest.raises(LlmtuneError, match="is not empty"):
        check_run_dir(str(tmp_path), overwrite=False, resume=False)


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LlmtuneError, match="exists and is a file"):
        check_run_dir(str(tmp_path / "f"), overwrite=False, resume=False)


def test_metrics_add_perplexity_and_split_train_eval():
    history = [
        {"loss": 2.0, "step": 1},
        {"eval_loss": 1.0, "step": 1},
        {"train_runtime": 3.0, "step": 1},
    ]
    metrics = metrics_from_log_history(history)
    assert metrics["train"][0]["perplexity"] == pytest.approx(7.389056, rel=1e-6)
    assert metrics["eval"][0]["eval_perplexity"] == pytest.approx(2.718282, rel=1e-6)
    assert metrics["summary"] == [{"train_runtime": 3.0, "step": 1}]


def test_write_json_is_atomic(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert not list(tmp_path.glob("*.tmp"))
