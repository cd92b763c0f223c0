"""The one run lifecycle (run_folder.py): protection, set-aside and restore, staging, failure, the manifest."""

from __future__ import annotations

import json

import pytest

from llmtune.errors import LlmtuneError
from llmtune.run_folder import RunFolder
from tests.unit.test_outputs import make_checkpoint


def check(path, **kwargs):
    kwargs.setdefault("command", "sft")
    kwargs.setdefault("key", "train.output_dir")
    return RunFolder.check(path, **kwargs)


def read_manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


# ------------------------------------------------------------------------------------------ check
def test_new_and_empty_folders_are_fine_and_checking_changes_nothing(tmp_path):
    assert check(tmp_path / "new").path == tmp_path / "new"
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty")


def made_by_llmtune(folder, status="completed"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"status": status}))
    return folder


def test_a_run_is_never_overwritten_silently(tmp_path):
    made_by_llmtune(tmp_path)
    (tmp_path / "model.safetensors").write_text("weights")
    with pytest.raises(LlmtuneError) as info:
        check(tmp_path)
    message = info.value.render()
    assert "train.output_dir" in message and "is not empty (manifest.json, model.safetensors)" in message
    assert "--resume" in message and "--overwrite" in message
    assert (tmp_path / "model.safetensors").read_text() == "weights"


def test_resume_needs_a_complete_checkpoint(tmp_path):
    made_by_llmtune(tmp_path)
    with pytest.raises(LlmtuneError, match="holds no complete checkpoint"):
        check(tmp_path, resume=True)
    make_checkpoint(tmp_path, 5, complete=False)
    with pytest.raises(LlmtuneError, match=r"no complete checkpoint .*checkpoint-5"):
        check(tmp_path, resume=True)
    make_checkpoint(tmp_path, 3)
    assert check(tmp_path, resume=True).resume
    with pytest.raises(LlmtuneError, match="contradict"):
        check(tmp_path, overwrite=True, resume=True)


def test_a_killed_run_without_checkpoints_is_reused(tmp_path):
    (tmp_path / "manifest.json").write_text('{"status": "running"}')  # SIGKILL: no handler could run
    check(tmp_path).release()
    make_checkpoint(tmp_path, 2)
    with pytest.raises(LlmtuneError, match="is not empty"):
        check(tmp_path)


def test_a_failed_run_without_checkpoints_is_reused(tmp_path):
    (tmp_path / "manifest.json").write_text('{"status": "failed"}')
    (tmp_path / "run.log").write_text("error")
    check(tmp_path)
    make_checkpoint(tmp_path, 2)
    with pytest.raises(LlmtuneError, match="is not empty"):
        check(tmp_path)


def test_output_folder_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LlmtuneError, match="--out: .* exists and is a file"):
        check(tmp_path / "f", key="--out", command="merge", staged=True)


# ------------------------------------------------------------------------------------------ in place
def test_a_run_writes_recipe_report_and_a_completed_manifest_last(tmp_path, write_recipe):
    from llmtune.recipe import load_recipe
    from tests.conftest import tiny_pretrain_recipe

    recipe = load_recipe(write_recipe(tiny_pretrain_recipe(tmp_path)), "pretrain")
    folder = check(recipe.train.output_dir, command="pretrain")
    with folder.open(recipe, data_report={"rows": 3}, data={"files": {"a.txt": "abc"}}) as run:
        assert read_manifest(run.dir)["status"] == "running"
        run.finish({"train_loss": 1.5})
    out = folder.path
    manifest = read_manifest(out)
    assert manifest["status"] == "completed" and manifest["results"] == {"train_loss": 1.5}
    assert manifest["command"] == "pretrain" and manifest["data"] == {"files": {"a.txt": "abc"}}
    assert {"argv", "started", "finished", "packages", "device"} <= set(manifest)
    assert json.loads((out / "data_report.json").read_text()) == {"rows": 3}
    assert "block_size: 64" in (out / "recipe.yaml").read_text()


def test_overwrite_sets_the_old_run_aside_and_drops_it_only_when_the_new_one_finishes(tmp_path):
    made_by_llmtune(tmp_path)
    (tmp_path / "old.safetensors").write_text("old weights")
    folder = check(tmp_path, overwrite=True)
    assert (tmp_path / "old.safetensors").exists()  # the check changes nothing
    with folder.open() as run:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "run.log"]
        aside = list(tmp_path.parent.glob(f".{tmp_path.name}.replaced-*"))
        assert len(aside) == 1 and (aside[0] / "old.safetensors").read_text() == "old weights"
        run.finish({})
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.replaced-*"))
    assert not (tmp_path / "old.safetensors").exists()


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failure_before_anything_is_kept_restores_the_old_run_byte_for_byte(tmp_path, failure):
    tmp_path = tmp_path / "run"
    tmp_path.mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"old weights")
    (tmp_path / "manifest.json").write_text('{"status": "completed"}')
    folder = check(tmp_path, overwrite=True)
    with pytest.raises(type(failure)), folder.open() as run:
        run.write_json("metrics.json", {"train": []})
        raise failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "model.safetensors"]
    assert (tmp_path / "model.safetensors").read_bytes() == b"old weights"
    assert read_manifest(tmp_path) == {"status": "completed"}
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.replaced-*"))


def test_a_failure_after_a_checkpoint_keeps_both_runs(tmp_path):
    """--overwrite keeps the new run only when its trained model was saved whole; its checkpoints are
    kept beside the restored old run, marked failed with the traceback, ready for --resume."""
    out = made_by_llmtune(tmp_path / "run")
    (out / "model.safetensors").write_bytes(b"old weights")
    folder = check(out, overwrite=True)
    with pytest.raises(RuntimeError), folder.open(phases=("model", "train", "save")) as run:
        run.phase("train")
        make_checkpoint(out, 4)
        raise RuntimeError("disk full during training")
    assert (out / "model.safetensors").read_bytes() == b"old weights"
    assert read_manifest(out) == {"status": "completed"}
    [kept] = tmp_path.glob("run.incomplete-*")
    manifest = read_manifest(kept)
    assert manifest["status"] == "failed" and "disk full" in manifest["error"]
    assert manifest["phase"] == "train" and manifest["unfinished"] == ["train", "save"]
    assert "Traceback" in (kept / "run.log").read_text()
    assert (kept / "checkpoint-4").is_dir()
    assert not list(tmp_path.glob(".run.replaced-*"))


def test_a_failure_after_the_weights_are_saved_keeps_the_new_run(tmp_path):
    out = made_by_llmtune(tmp_path / "run")
    (out / "model.safetensors").write_bytes(b"old weights")
    folder = check(out, overwrite=True)
    phases = ("model", "train", "save", "final_eval", "samples")
    with pytest.raises(KeyboardInterrupt), folder.open(phases=phases) as run:
        run.save_weights(
            lambda staging: (staging.mkdir(), (staging / "model.safetensors").write_bytes(b"new"))
        )
        run.phase("final_eval")
        raise KeyboardInterrupt
    assert (out / "model.safetensors").read_bytes() == b"new"
    manifest = read_manifest(out)
    assert manifest["status"] == "interrupted" and manifest["weights"] == "saved"
    assert manifest["unfinished"] == ["final_eval", "samples"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_save_cut_short_leaves_no_file_and_brings_the_old_run_back(tmp_path):
    out = made_by_llmtune(tmp_path / "run")
    (out / "tokenizer.json").write_text('{"old": true}')

    def save(staging):
        staging.mkdir()
        (staging / "model.safetensors").write_bytes(b"complete")
        (staging / "tokenizer.json").write_text('{"trunc')
        raise OSError(28, "No space left on device")

    folder = check(out, overwrite=True)
    with pytest.raises(OSError, match="No space"), folder.open(phases=("train", "save")) as run:
        run.save_weights(save)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tokenizer.json"]
    assert (out / "tokenizer.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_interrupt_after_a_checkpoint_is_marked_interrupted(tmp_path):
    folder = check(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt), folder.open():
        make_checkpoint(folder.path, 2)
        raise KeyboardInterrupt
    assert read_manifest(folder.path)["status"] == "interrupted"


def test_a_stage_that_returns_without_finishing_is_an_error(tmp_path):
    folder = check(tmp_path / "run")
    with pytest.raises(RuntimeError, match="without finishing"), folder.open():
        pass
    assert read_manifest(folder.path)["status"] == "failed"


# ------------------------------------------------------------------------------------------ staged
def test_a_staged_folder_appears_only_when_finished_and_replaces_the_old_one_then(tmp_path):
    out = made_by_llmtune(tmp_path / "merged")
    (out / "model.safetensors").write_bytes(b"the user's model")
    with pytest.raises(LlmtuneError, match="--out .* is not empty.*replaced only once"):
        check(out, command="merge", key="--out", staged=True)
    folder = check(out, command="merge", key="--out", staged=True, overwrite=True)
    with folder.open(inputs={"adapter": "runs/x"}) as run:
        assert run.dir != out and run.dir.parent == out.parent
        run.write_json("merge_report.json", {"ok": True})
        assert (out / "model.safetensors").read_bytes() == b"the user's model"  # untouched while open
        run.finish({"ok": True}, summary=False)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "merge_report.json", "run.log"]
    manifest = read_manifest(out)
    assert manifest["status"] == "completed" and manifest["inputs"] == {"adapter": "runs/x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no staging or old folder left


def test_a_failed_staged_run_removes_only_its_staging_folder(tmp_path):
    out = made_by_llmtune(tmp_path / "results")
    (out / "results.json").write_text("{}")
    folder = check(out, command="eval", key="eval.output_dir", staged=True, overwrite=True)
    with pytest.raises(ValueError), folder.open() as run:
        run.write_text("report.md", "half")
        raise ValueError("bad model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "results.json"]


def test_a_rename_that_fails_while_publishing_puts_the_old_folder_back(tmp_path, monkeypatch):
    from pathlib import Path

    out = made_by_llmtune(tmp_path / "merged")
    (out / "model.safetensors").write_bytes(b"the user's model")
    folder = check(out, command="merge", key="--out", staged=True, overwrite=True)
    rename = Path.rename

    def staging_cannot_move(self, target):
        if ".partial-" in self.name:
            raise OSError(18, "Invalid cross-device link")
        return rename(self, target)

    with pytest.raises(OSError, match="cross-device"), folder.open() as run:
        monkeypatch.setattr(Path, "rename", staging_cannot_move)
        run.finish({}, summary=False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert (out / "model.safetensors").read_bytes() == b"the user's model"


def test_a_resume_that_saved_its_model_keeps_it_when_a_later_phase_fails(tmp_path):
    """Without save_strategy a resumed run writes no new checkpoint; once its trained model is saved, a
    failure in the final evaluation must not put the old weights back over it."""
    out = made_by_llmtune(tmp_path / "run")
    (out / "model.safetensors").write_bytes(b"old")
    make_checkpoint(out, 2)
    folder = check(out, resume=True)
    with pytest.raises(RuntimeError), folder.open(phases=("train", "save", "final_eval")) as run:
        run.save_weights(
            lambda staging: (staging.mkdir(), (staging / "model.safetensors").write_bytes(b"new"))
        )
        run.phase("final_eval")
        raise RuntimeError("evaluation failed")
    assert (out / "model.safetensors").read_bytes() == b"new"
    manifest = read_manifest(out)
    assert manifest["status"] == "failed" and manifest["unfinished"] == ["final_eval"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_resume_that_fails_before_saving_puts_the_folder_back(tmp_path):
    out = made_by_llmtune(tmp_path / "run")
    (out / "model.safetensors").write_bytes(b"old")
    make_checkpoint(out, 2)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    folder = check(out, resume=True)
    with pytest.raises(RuntimeError), folder.open(phases=("train", "save")) as run:
        run.phase("train")
        raise RuntimeError("optimizer state does not fit")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
