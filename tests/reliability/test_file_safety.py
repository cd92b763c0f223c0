"""No command loses a user's file or run: generated file-system states for an output folder, against every
flag combination; output folders that hold (or sit inside) a run's own inputs; one writer per folder;
unique default names; resume that cannot start changes nothing; a named checkpoint is used exactly; the NaN
guard; train_loss over a whole resumed run. In-process and fast; the signal, full-disk and two-process
scenarios on real processes are in test_run_safety.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmtune.errors import LlmtuneError
from llmtune.run_folder import RunFolder
from tests.conftest import REPO, tiny_pretrain_recipe


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root` (and `root` itself), with file contents hashed: equal snapshots mean
    nothing was changed, added or removed."""
    out = {}
    if root.is_symlink() or not root.exists():
        return {".": f"link:{os.readlink(root)}" if root.is_symlink() else "absent"}
    for path in sorted([root, *root.rglob("*")]):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link:{os.readlink(path)}"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir" if path.is_dir() else "special"
    return out


def siblings(path: Path) -> list[str]:
    """What llmtune may leave beside a folder (set-aside, staging, incomplete, lock): must be nothing."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name and path.name in p.name)


# ------------------------------------------------------------------------------------------ generated states
def _state(tmp_path: Path, kind: str) -> Path:
    out = tmp_path / "out"
    if kind == "missing":
        pass
    elif kind == "empty":
        out.mkdir()
    elif kind == "file":
        out.write_text("a user's file")
    elif kind == "fifo":
        os.mkfifo(out)
    elif kind == "users-files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        (out / "model.safetensors").write_bytes(b"not llmtune's")
    elif kind == "symlink-loop":
        out.symlink_to(out)
    elif kind == "dangling-symlink":
        out.symlink_to(tmp_path / "nowhere")
    elif kind in ("completed", "failed-with-checkpoint", "failed-empty", "bad-manifest"):
        out.mkdir()
        status = "completed" if kind == "completed" else "failed"
        text = "{not json" if kind == "bad-manifest" else json.dumps({"status": status})
        (out / "manifest.json").write_text(text)
        if kind != "failed-empty":
            (out / "model.safetensors").write_bytes(b"weights")
            ckpt = out / "checkpoint-2"
            ckpt.mkdir()
            (ckpt / "trainer_state.json").write_text('{"global_step": 2}')
    return out


STATES = [
    "missing",
    "empty",
    "file",
    "fifo",
    "users-files",
    "symlink-loop",
    "dangling-symlink",
    "completed",
    "failed-with-checkpoint",
    "failed-empty",
    "bad-manifest",
]
FLAGS = [{}, {"overwrite": True}, {"resume": True}]
# (state, flags) → the check passes; everything else must be refused with a message.
ACCEPTED = {
    ("missing", 0),
    ("missing", 1),
    ("empty", 0),
    ("empty", 1),
    ("completed", 1),
    ("completed", 2),
    ("failed-with-checkpoint", 1),
    ("failed-with-checkpoint", 2),
    ("failed-empty", 0),
    ("failed-empty", 1),
}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("flags", range(len(FLAGS)), ids=["plain", "overwrite", "resume"])
def test_checking_an_output_folder_in_any_state_changes_nothing(tmp_path, state, flags):
    out = _state(tmp_path, state)
    before = snapshot(out)
    try:
        folder = RunFolder.check(out, command="sft", key="train.output_dir", **FLAGS[flags])
    except LlmtuneError as exc:
        assert (state, flags) not in ACCEPTED, exc.render()
        assert str(out) in exc.render() or "--resume and --overwrite" in exc.render()
        assert "does not exist" not in exc.render() or state in ("missing", "dangling-symlink")
    else:
        assert (state, flags) in ACCEPTED
        folder.release()
    assert snapshot(out) == before
    assert siblings(out) == []


def test_a_folder_llmtune_did_not_make_is_refused_even_with_overwrite_and_says_why(tmp_path):
    out = _state(tmp_path, "users-files")
    with pytest.raises(LlmtuneError) as info:
        RunFolder.check(out, command="sft", key="train.output_dir", overwrite=True)
    assert (
        "not a folder llmtune made" in info.value.render() and "even with --overwrite" in info.value.render()
    )


def test_a_fifo_is_named_as_a_fifo(tmp_path):
    out = _state(tmp_path, "fifo")
    with pytest.raises(LlmtuneError, match=r"is a named pipe \(FIFO\), not a folder"):
        RunFolder.check(out, command="merge", key="--out", staged=True)


# ------------------------------------------------------------------------------------------ inputs
@pytest.fixture
def data_folder(tmp_path):
    """A user's project: a data folder with the training text, the recipe beside it, notes."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    verdict = Path(tiny_pretrain_recipe(tmp_path)["data"]["train_files"])
    (project / "data" / "verdict.txt").write_text(verdict.read_text())
    (project / "notes.md").write_text("my notes")
    (project / "manifest.json").write_text('{"status": "completed"}')  # even looking like a run
    return project


@pytest.mark.parametrize(
    "where",
    ["data-folder", "recipe-folder", "inside-data-folder", "current-folder", "above-current", "dot"],
)
def test_an_output_folder_holding_the_runs_inputs_is_refused_even_with_overwrite(
    tmp_path, data_folder, cli, monkeypatch, where
):
    recipe = tiny_pretrain_recipe(tmp_path)
    recipe["data"]["train_files"] = str(data_folder / "data" / "*.txt")
    output = {
        "data-folder": data_folder / "data",
        "recipe-folder": data_folder,
        "inside-data-folder": data_folder / "data" / "runs",
        "current-folder": tmp_path / "cwd",
        "above-current": tmp_path,
        "dot": ".",
    }[where]
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "manifest.json").write_text('{"status": "completed"}')
    monkeypatch.chdir(tmp_path / "cwd")
    recipe["train"]["output_dir"] = str(output)
    (data_folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    before = snapshot(tmp_path)
    result = cli("pretrain", "--recipe", str(data_folder / "recipe.yaml"), "--overwrite")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert any(
        words in result.output
        for words in ("holds an input of this run", "is inside", "is the current folder")
    ), result.output
    assert snapshot(tmp_path) == before


def test_merge_out_equal_to_or_inside_the_adapter_is_refused(tmp_path, cli):
    adapter = tmp_path / "runs" / "sft"
    adapter.mkdir(parents=True)
    (adapter / "manifest.json").write_text('{"status": "completed"}')
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    before = snapshot(tmp_path)
    for out in (adapter, adapter / "merged", tmp_path / "runs"):
        result = cli("merge", "--adapter", str(adapter), "--out", str(out), "--overwrite")
        assert result.exit_code == 2, result.output
        assert "input of this run" in result.output, result.output
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------ one writer
HOLD = (
    "import sys, time; from pathlib import Path; from llmtune.folder_lock import FolderLock; "
    "FolderLock.acquire(Path(sys.argv[1]), command='sft', key='train.output_dir'); "
    "print('locked', flush=True); time.sleep(60)"
)


@pytest.fixture
def held(tmp_path):
    """hold(folder) -> the PID of another process that holds the folder's lock."""
    processes = []

    def hold(folder: Path) -> int:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        processes.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process.pid

    yield hold
    for process in processes:
        process.kill()
        process.wait()


def test_a_folder_in_use_by_another_process_is_refused_naming_it(tmp_path, held, cli, write_recipe):
    out = tmp_path / "run"
    pid = held(out)
    recipe = write_recipe(tiny_pretrain_recipe(tmp_path))
    result = cli("pretrain", "--recipe", str(recipe), "--overwrite")
    assert result.exit_code == 2, result.output
    assert f"PID {pid}" in result.output and "llmtune sft" in result.output, result.output
    assert not out.exists()


def test_the_lock_goes_with_its_process(tmp_path, held):
    import signal

    out = tmp_path / "run"
    pid = held(out)
    with pytest.raises(LlmtuneError, match=f"PID {pid}"):
        RunFolder.check(out, command="sft", key="train.output_dir")
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    RunFolder.check(out, command="sft", key="train.output_dir").release()  # no stale lock
    assert siblings(out) == []


def test_an_input_still_being_written_by_another_command_is_refused(tmp_path, held, cli):
    adapter = tmp_path / "runs" / "sft"
    adapter.mkdir(parents=True)
    (adapter / "manifest.json").write_text('{"command": "sft", "status": "running"}')
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    pid = held(adapter)  # an sft run still training into it
    result = cli("merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged"))
    assert result.exit_code == 2, result.output
    assert "still being written" in result.output and f"PID {pid}" in result.output
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize(
    ("made_by", "command", "refused"),
    [("sft", "merge", True), ("merge", "merge", False), ("pretrain", "sft", True), (None, "sft", False)],
)
def test_overwrite_replaces_only_a_folder_of_the_same_command(tmp_path, made_by, command, refused):
    out = tmp_path / "run"
    out.mkdir()
    manifest = {"status": "completed", **({"command": made_by} if made_by else {})}
    (out / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(out)
    key = "--out" if command == "merge" else "train.output_dir"
    if refused:
        with pytest.raises(LlmtuneError, match=f"holds the result of `llmtune {made_by}`"):
            RunFolder.check(out, command=command, key=key, overwrite=True, staged=command == "merge")
    else:
        RunFolder.check(out, command=command, key=key, overwrite=True, staged=command == "merge").release()
    assert snapshot(out) == before


def test_default_names_are_unique_even_in_the_same_second(tmp_path, held):
    base = tmp_path / "eval-20261201-120000"
    held(base)  # another eval chose the same timestamp and is running
    (tmp_path / "eval-20261201-120000-2").mkdir()  # and an older one finished
    first = RunFolder.check(base, command="eval", key="eval.output_dir", staged=True, unique=True)
    second = RunFolder.check(base, command="eval", key="eval.output_dir", staged=True, unique=True)
    assert first.path.name == "eval-20261201-120000-3"
    assert second.path.name == "eval-20261201-120000-4"
    first.release()
    second.release()


# ------------------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_pretrained):
    """A completed LoRA pretrain run with checkpoints at steps 2 and 4, logged every step."""
    from llmtune import recipe as recipes
    from llmtune.stages import pretrain

    root = tmp_path_factory.mktemp("trained")
    raw = tiny_pretrain_recipe(
        root,
        peft={"method": "lora", "r": 4, "lora_alpha": 8},
        train={
            "max_steps": 4,
            "logging_steps": 1,
            "save_strategy": "steps",
            "save_steps": 2,
            "eval_strategy": "no",
            "eval_on_start": False,
        },
    )
    raw["model"] = {"name_or_path": str(tiny_pretrained)}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    pretrain.run(recipes.load_recipe(path, "pretrain"))
    return path, root / "run"


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the trained run (and its recipe pointing at the copy), to break as a test likes."""
    import shutil

    recipe, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    raw = yaml.safe_load(recipe.read_text())
    raw["train"]["output_dir"] = str(copy)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "recipe.yaml", copy


def _damage(run: Path, how: str) -> str:
    checkpoint = run / "checkpoint-4"
    if how == "truncated-weights":
        target = checkpoint / "adapter_model.safetensors"
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        return "adapter_model.safetensors"
    if how == "bad-optimizer":
        target = checkpoint / "optimizer.pt"
        data = bytearray(target.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(64)
        target.write_bytes(bytes(data))
        return "optimizer.pt"
    if how == "bad-trainer-state":
        (checkpoint / "trainer_state.json").write_text('{"global_step": 4, "log_hist')
        return "trainer_state.json"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated-weights", "bad-optimizer", "bad-trainer-state"])
def test_a_resume_from_a_damaged_checkpoint_changes_nothing_and_offers_the_previous_one(run_copy, cli, how):
    recipe, run = run_copy
    bad_file = _damage(run, how)
    before = snapshot(run)
    result = cli("pretrain", "--recipe", str(recipe), "--resume", "--set", "train.max_steps=6")
    assert result.exit_code == 2, result.output
    assert bad_file in result.output and "checkpoint-4" in result.output, result.output
    assert f"{run}/checkpoint-2" in result.output and "Nothing was changed" in result.output
    assert snapshot(run) == before
    assert siblings(run) == []


@pytest.mark.parametrize("change", ["peft.r=8", "peft.method=dora", "model.dtype=bfloat16"])
def test_a_resume_with_a_different_model_shape_is_refused(run_copy, cli, change):
    recipe, run = run_copy
    before = snapshot(run)
    result = cli("pretrain", "--recipe", str(recipe), "--resume", "--set", change)
    assert result.exit_code == 2, result.output
    assert change.split("=")[0] in result.output and "in the run" in result.output, result.output
    assert snapshot(run) == before


def test_a_resume_that_fails_inside_training_puts_every_file_back(run_copy, cli, monkeypatch):
    recipe, run = run_copy
    before = snapshot(run)
    monkeypatch.setenv("LLMTUNE_FAULT", "train:enospc")
    result = cli("pretrain", "--recipe", str(recipe), "--resume", "--set", "train.max_steps=6")
    assert result.exit_code == 1 and "No space left" in result.output, result.output
    assert snapshot(run) == before
    assert siblings(run) == []


def test_train_loss_covers_the_whole_resumed_run_and_a_named_checkpoint_is_used_exactly(run_copy, cli):
    recipe, run = run_copy
    result = cli(
        "pretrain",
        "--recipe",
        str(recipe),
        "--set",
        f"train.resume_from_checkpoint={run}/checkpoint-2",
        "--set",
        "train.max_steps=6",
    )
    assert result.exit_code == 0, result.output
    assert f"Resuming from {run}/checkpoint-2" in result.output
    manifest = json.loads((run / "manifest.json").read_text())
    rows = json.loads((run / "metrics.json").read_text())["train"]
    steps = [row["step"] for row in rows]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 3 and 4 retrained from checkpoint-2, not from checkpoint-4
    losses = [row["loss"] for row in rows]
    assert manifest["results"]["train_loss"] == pytest.approx(sum(losses) / 6, rel=1e-4)


def test_the_resume_command_repeats_the_overrides():
    from llmtune import recipe as recipes
    from llmtune.interrupt import resume_command

    recipe = recipes.load_recipe(
        REPO / "recipes" / "quickstart.yaml",
        "sft",
        ["train.learning_rate=1e-4", "data.max_samples=50"],
    )
    line = resume_command(recipe, "sft")
    assert line.endswith("--set train.learning_rate=1e-4 --set data.max_samples=50 --resume")
    assert "--recipe" in line and "quickstart.yaml" in line


# ------------------------------------------------------------------------------------------ NaN guard
def test_a_loss_that_stops_being_finite_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path, cli, write_recipe
):
    recipe = tiny_pretrain_recipe(
        tmp_path,
        train={
            "learning_rate": 1e30,
            "max_steps": 8,
            "logging_steps": 1,
            "save_strategy": "steps",
            "save_steps": 1,
            "eval_strategy": "no",
            "eval_on_start": False,
            "lr_scheduler_type": "constant",
        },
    )
    result = cli("pretrain", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 2, result.output
    assert "is no longer a finite number" in result.output and "last good checkpoint" in result.output
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "weights" not in manifest
    assert not list(run.glob("*.safetensors"))  # the NaN model is never saved as the result
    import safetensors.torch
    import torch

    for checkpoint in run.glob("checkpoint-*"):
        for tensor in safetensors.torch.load_file(checkpoint / "model.safetensors").values():
            assert torch.isfinite(tensor).all(), checkpoint


# ------------------------------------------------------------------------------------------ flag values
@pytest.mark.parametrize(
    "args",
    [
        ("merge", "--adapter", "runs/x", "--out", "runs/y", "--tolerance", "inf"),
        ("merge", "--adapter", "runs/x", "--out", "runs/y", "--tolerance", "nan"),
        ("merge", "--adapter", "runs/x", "--out", "runs/y", "--tolerance", "0"),
        ("plan", "--recipe", str(REPO / "recipes" / "quickstart.yaml"), "--nproc", "0"),
        ("plan", "--recipe", str(REPO / "recipes" / "quickstart.yaml"), "--nproc", "-2"),
        ("data", "check", "--recipe", str(REPO / "recipes" / "quickstart.yaml"), "--samples", "-1"),
        ("data", "check", "--recipe", str(REPO / "recipes" / "quickstart.yaml"), "--color", "sometimes"),
    ],
    ids=lambda args: " ".join(args[-2:]),
)
def test_numeric_and_choice_flags_are_checked(cli, args, tmp_path, monkeypatch):
    """--tolerance inf would have let any merge pass; --nproc 0 fell back to the recipe silently."""
    monkeypatch.chdir(tmp_path)
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert args[-2] in result.output and "Traceback" not in result.output
