"""Interruption and exact resume, through the real command line: SIGTERM mid-training saves a checkpoint
atomically and exits 143 with the resume command; --resume then reproduces the uninterrupted run's losses
step for step (model, optimizer, scheduler, RNG and data position restored). Pretrain and sft (with LoRA
dropout, so the RNG state matters)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_pretrain_recipe
from tests.unit.test_sft import sft_recipe


def command(recipe: Path, stage: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "llmtune", stage, "--recipe", str(recipe), *extra]


def environment(home: Path) -> dict:
    return {**os.environ, "LLMTUNE_HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def losses(run_dir: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in json.loads((run_dir / "metrics.json").read_text())["train"]}


def interrupt_then_resume(tmp_path: Path, recipe: dict, stage: str, steps: int):
    home = tmp_path / "home"
    reference = {**recipe, "train": {**recipe["train"], "output_dir": str(tmp_path / "reference")}}
    interrupted = {**recipe, "train": {**recipe["train"], "output_dir": str(tmp_path / "interrupted")}}
    (tmp_path / "reference.yaml").write_text(yaml.safe_dump(reference))
    (tmp_path / "interrupted.yaml").write_text(yaml.safe_dump(interrupted))
    done = subprocess.run(
        command(tmp_path / "reference.yaml", stage),
        env=environment(home),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    run_dir = tmp_path / "interrupted"
    process = subprocess.Popen(
        command(tmp_path / "interrupted.yaml", stage),
        env=environment(home),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:  # wait for a few logged steps
        try:
            if len(losses(run_dir)) >= 3:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert (
        "interrupted by SIGTERM at step" in stderr
        and f"llmtune {stage} --recipe" in stderr
        and "--resume" in stderr
    )
    assert "Traceback" not in stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    checkpoints = sorted(run_dir.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and not list(run_dir.glob("tmp-checkpoint-*"))
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 3 <= stopped_at < steps

    resumed = subprocess.run(
        command(tmp_path / "interrupted.yaml", stage, "--resume"),
        env=environment(home),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"
    expected, got = losses(tmp_path / "reference"), losses(run_dir)
    assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    return stopped_at


def test_pretrain_interrupted_and_resumed_matches_the_uninterrupted_run(tmp_path):
    recipe = tiny_pretrain_recipe(tmp_path)
    recipe["train"].update(
        max_steps=40,
        logging_steps=1,
        eval_strategy="no",
        eval_on_start=False,
        save_strategy="no",
        per_device_train_batch_size=2,
    )
    interrupt_then_resume(tmp_path, recipe, "pretrain", 40)


def test_sft_interrupted_and_resumed_matches_the_uninterrupted_run(tmp_path, tiny_pretrained):
    recipe = sft_recipe(tmp_path, tiny_pretrained, peft={"method": "lora", "r": 4, "lora_dropout": 0.1})
    recipe["train"].update(max_steps=30, per_device_train_batch_size=2, save_strategy="no")
    recipe["data"]["max_samples"] = 120
    interrupt_then_resume(tmp_path, recipe, "sft", 30)
