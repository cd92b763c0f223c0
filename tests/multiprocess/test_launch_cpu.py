"""Real multi-process training on CPU (gloo): DDP and DeepSpeed ZeRO-2/ZeRO-3 over 2 processes on a tiny
model, each checked for world size 2 and the strategy really active, losses equal to a single process
with the same global batch, and complete saved weights / adapters; and a wrong launch failing loudly.

Each test starts real processes through the console script (about 30-60 s each; the first DeepSpeed run
compiles a small C++ op, cached in $TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_pretrain_recipe

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process runs are tested on Linux")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A recipe (global batch 4: 1 process x 4 or 2 processes x 2) and the single-process reference run."""
    root = tmp_path_factory.mktemp("launch")
    recipe = tiny_pretrain_recipe(root)
    recipe["train"].update(
        per_device_train_batch_size=4, max_steps=4, logging_steps=1, eval_on_start=False, eval_strategy="no"
    )
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run(root, "single")
    return root


def run(root: Path, name: str, *extra: str, launcher: list[str] | None = None, env: dict | None = None):
    command = launcher or [sys.executable, "-m", "llmtune"]
    command = [
        *command,
        "pretrain",
        "--recipe",
        str(root / "recipe.yaml"),
        "--set",
        f"train.output_dir={root / name}",
    ]
    full_env = {**os.environ, "LLMTUNE_HOME": str(root / "home"), **(env or {})}
    full_env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    result = subprocess.run(
        [*command, *extra], capture_output=True, text=True, env=full_env, cwd=REPO, timeout=540
    )
    return result


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in json.loads((run_dir / "metrics.json").read_text())["train"]]


def weights(run_dir: Path, name: str = "model.safetensors"):
    from safetensors.torch import load_file

    return load_file(str(run_dir / name))


@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero3"])
def test_two_processes_train_together_like_one(strategy, workdir):
    result = run(
        workdir,
        strategy,
        "--nproc",
        "2",
        "--strategy",
        strategy,
        "--set",
        "train.per_device_train_batch_size=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((workdir / strategy / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["distributed"].startswith(f"world size 2, {strategy}")
    if strategy != "ddp":
        assert "DeepSpeed ZeRO-" in manifest["distributed"]
    assert losses(workdir / strategy) == pytest.approx(losses(workdir / "single"), abs=2e-3)
    saved, reference = weights(workdir / strategy), weights(workdir / "single")
    assert saved.keys() == reference.keys()  # ZeRO-3 gathers the full model on save, not empty shards
    assert all(saved[k].shape == reference[k].shape for k in reference)
    assert max(float((saved[k] - reference[k]).abs().max()) for k in reference) < 1e-3


def test_zero3_with_lora_saves_the_complete_adapter(workdir, tiny_pretrained):
    lora = [
        "--set",
        "peft.method=lora",
        "--set",
        "peft.r=4",
        "--set",
        "peft.lora_dropout=0",
        "--set",
        "train.learning_rate=1e-2",
    ]
    lora += ["--set", "model.from_config=null", "--set", "model.tokenizer=null"]
    lora += ["--set", f"model.name_or_path={tiny_pretrained}"]
    single = run(workdir, "lora-single", *lora)
    assert single.returncode == 0, single.stderr[-3000:]
    result = run(
        workdir,
        "lora-zero3",
        "--nproc",
        "2",
        "--strategy",
        "zero3",
        "--set",
        "train.per_device_train_batch_size=2",
        *lora,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = weights(workdir / "lora-zero3", "adapter_model.safetensors")
    reference = weights(workdir / "lora-single", "adapter_model.safetensors")
    assert saved.keys() == reference.keys() and len(saved) > 0
    assert all(saved[k].numel() > 0 for k in saved)  # no empty ZeRO-3 placeholders
    assert max(float((saved[k] - reference[k]).abs().max()) for k in reference) < 1e-3


def test_a_launch_that_trains_processes_alone_fails_loudly(workdir):
    """torchrun without use_cpu on a machine without a GPU: each process would train alone and exit 0."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "llmtune"]
    result = run(workdir, "alone", "--set", "train.use_cpu=false", launcher=launcher)
    assert result.returncode != 0
    assert "asked for 2 processes training together but the trainer sees world size 1" in result.stderr
    assert json.loads((workdir / "alone" / "manifest.json").read_text())["status"] == "failed"


def test_deepspeed_switched_off_by_accelerate_use_cpu_is_caught(workdir):
    """ACCELERATE_USE_CPU=1 makes accelerate drop DeepSpeed and train plain multi-CPU, exit 0 otherwise."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "llmtune"]
    result = run(
        workdir,
        "ds-off",
        "--strategy",
        "zero2",
        "--set",
        "train.per_device_train_batch_size=2",
        launcher=launcher,
        env={"ACCELERATE_USE_CPU": "1"},
    )
    assert result.returncode != 0
    assert "strategy zero2 but DeepSpeed is not active (distributed type MULTI_CPU)" in result.stderr
