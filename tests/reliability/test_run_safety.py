"""The data-loss scenarios on real processes: a signal at each phase of a run that replaces a completed one
(data, model, train, save, final evaluation, samples), a disk that fills up while the trained model is
saved (a real write limit on the process), and two processes on one folder. After each, the old run is
byte for byte as it was unless the new one saved its trained model whole, nothing truncated is left that
looks like a model, and the manifest says what did not finish.

Phases are reached with LLMTUNE_FAULT (llmtune/faults.py): a tiny model runs through them in
milliseconds, too fast to time a signal from outside."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.reliability.test_file_safety import siblings, snapshot
from tests.unit.test_sft import sft_recipe

pytestmark = pytest.mark.slow


def llmtune(recipe: Path, *args: str, env: dict | None = None, limit_bytes: int | None = None, **popen):
    def limit():  # a disk that fills up: writes past the limit fail (EFBIG) instead of killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen(
        [sys.executable, "-m", "llmtune", "sft", "--recipe", str(recipe), *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit if limit_bytes else None,
        **popen,
    )


def finish(process, timeout=600) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory, tiny_pretrained):
    """A completed LoRA sft run (validation data and samples, so it has every phase) and its recipe."""
    root = tmp_path_factory.mktemp("safety")
    recipe = sft_recipe(root, tiny_pretrained, peft={"method": "lora", "r": 4})
    recipe["train"].update(max_steps=3, save_strategy="no", output_dir=str(root / "run"))
    recipe["data"].update(max_samples=40)
    recipe["samples"] = {"prompts": ["Hello"], "max_new_tokens": 4}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, stderr = finish(llmtune(path, env={"LLMTUNE_HOME": str(root / "home")}))
    assert code == 0, stderr[-3000:]
    return path, root / "run"


@pytest.fixture
def old_run(completed_run, tmp_path):
    """A copy of the completed run, with a recipe that writes over it."""
    recipe, run = completed_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    raw = yaml.safe_load(recipe.read_text())
    raw["train"]["output_dir"] = str(copy)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "recipe.yaml", copy, {"LLMTUNE_HOME": str(recipe.parent / "home")}


# SIGTERM (a preempted job) at every phase; Ctrl-C (SIGINT) where it matters most: after training.
PHASE_SIGNALS = [(phase, "TERM") for phase in ("data", "model", "train", "save", "final_eval", "samples")]
PHASE_SIGNALS += [("save", "INT"), ("final_eval", "INT")]


@pytest.mark.parametrize(("phase", "signum"), PHASE_SIGNALS)
def test_a_signal_at_any_phase_of_an_overwrite_loses_neither_run(old_run, phase, signum):
    recipe, run, env = old_run
    before = snapshot(run)
    code, stderr = finish(
        llmtune(recipe, "--overwrite", env={**env, "LLMTUNE_FAULT": f"{phase}:signal:{signum}"})
    )
    assert code != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert siblings(run) == []
    if phase in ("data", "model", "train"):
        assert snapshot(run) == before  # the old run, byte for byte
        return
    # Training had finished: the trained weights are saved first (a signal during the save waits for it).
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["weights"] == "saved"
    expected = {
        "save": ["final_eval", "samples"],
        "final_eval": ["final_eval", "samples"],
        "samples": ["samples"],
    }
    assert manifest["unfinished"] == expected[phase]
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(run)).r == 4
    assert (run / "adapter_model.safetensors").stat().st_size > 0
    assert (run / "tokenizer.json").is_file()
    json.loads((run / "tokenizer.json").read_text())  # whole


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "new-folder"])
def test_a_disk_that_fills_up_during_the_final_save(old_run, tmp_path, overwrite):
    recipe, run, env = old_run
    if not overwrite:
        raw = yaml.safe_load(recipe.read_text())
        raw["train"]["output_dir"] = str(tmp_path / "fresh")
        recipe.write_text(yaml.safe_dump(raw))
        run = tmp_path / "fresh"
    before = snapshot(run)
    # The adapter and tokenizer files are the first writes over 400 kB (tokenizer.json is ~2 MB).
    code, stderr = finish(
        llmtune(recipe, *(["--overwrite"] if overwrite else []), env=env, limit_bytes=400_000)
    )
    assert code != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert "File too large" in stderr or "No space" in stderr, stderr[-3000:]
    assert siblings(run) == []
    if overwrite:
        assert snapshot(run) == before  # the completed run is back, not a failed one with a truncated file
        return
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["phase"] == "save" and "weights" not in manifest
    assert manifest["unfinished"] == ["save", "final_eval", "samples"]
    assert not list(run.rglob("*.safetensors")), "a truncated model file was left"
    assert not [p for p in ("tokenizer.json", "adapter_config.json", ".saving") if (run / p).exists()]


def test_two_runs_on_one_folder(old_run):
    recipe, run, env = old_run
    first = llmtune(recipe, "--overwrite", env={**env, "LLMTUNE_FAULT": "train:pause"})
    deadline = time.time() + 300
    while not list(run.parent.glob(f"{run.name}.paused-*")) and time.time() < deadline:
        assert first.poll() is None, first.communicate()[1][-3000:]
        time.sleep(0.1)
    [marker] = run.parent.glob(f"{run.name}.paused-*")
    second = llmtune(recipe, "--overwrite", env=env)
    code, stderr = finish(second)
    assert code == 2, stderr[-3000:]
    assert f"PID {first.pid}" in stderr and "two commands must never write one folder" in stderr
    marker.unlink()  # let the first one go on
    code, stderr = finish(first)
    assert code == 0, stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["argv"][-1] == "--overwrite"
    assert siblings(run) == []
