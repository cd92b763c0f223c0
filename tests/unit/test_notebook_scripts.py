"""scripts/kaggle.sh and colab.sh choose precision and strategy from the GPUs they find (a fake
nvidia-smi stands in for the hardware; DRY_RUN=1 prints the llmtune command instead of running it)."""

import os
import subprocess

import pytest

from tests.conftest import REPO

T4 = "GPU 0: Tesla T4 (UUID: GPU-1)"


def dry_run(tmp_path, script, gpus: list[str], cap: str, *args):
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    smi = fake / "nvidia-smi"
    listing = "\\n".join(gpus)
    smi.write_text(
        f'#!/usr/bin/env bash\nif [ "$1" = "-L" ]; then printf "{listing}\\n"; else echo "{cap}"; fi\n'
    )
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "DRY_RUN": "1"}
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / script), "recipes/quickstart.yaml", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_kaggle_two_t4s_run_ddp_in_fp16(tmp_path):
    command = dry_run(tmp_path, "kaggle.sh", [T4, T4.replace("0", "1")], "7.5", "--set", "train.max_steps=5")
    assert command.startswith("llmtune sft --recipe recipes/quickstart.yaml")
    assert "--set train.bf16=false --set train.fp16=true" in command
    assert "--nproc 2 --strategy ddp" in command and command.endswith("--set train.max_steps=5")


@pytest.mark.parametrize("cap, fp16", [("7.5", True), ("8.0", False)])
def test_colab_one_gpu_precision_follows_the_gpu(tmp_path, cap, fp16):
    command = dry_run(tmp_path, "colab.sh", [T4], cap)
    assert ("train.fp16=true" in command) == fp16
    assert "--nproc" not in command


def test_multinode_template_needs_its_variables():
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "multinode.sh"), "sft", "recipes/quickstart.yaml"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "NNODES"},
    )
    assert result.returncode != 0 and "NNODES" in result.stderr
