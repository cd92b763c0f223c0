"""The files of a run folder: checkpoints, metrics and atomic writes. (The lifecycle: test_run_folder.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtune.outputs import latest_checkpoint, metrics_from_log_history, write_json


def make_checkpoint(run, step, complete=True):
    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def test_latest_checkpoint_skips_incomplete_ones(tmp_path):
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 100)
    make_checkpoint(tmp_path, 200, complete=False)  # interrupted while saving
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-100"


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


def test_a_write_that_dies_half_way_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """A crash (full disk, kill) in the middle of writing: a reader sees the old JSON, never half a file."""
    target = tmp_path / "manifest.json"
    write_json(target, {"status": "running"})
    real_write_text = Path.write_text

    def dies_half_way(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        write_json(target, {"status": "completed", "results": {"loss": 1.0}})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"status": "running"}
