"""The shipped prune and distill recipes on the demo SmolLM2-135M-Instruct, shortened (The Verdict as text,
so that no generated data is needed)."""

import json

from tests.conftest import REPO, VERDICT

TEXT = [
    f"data.train_files={VERDICT}",
    "data.validation_files=[]",
    "data.validation_split=0.1",
    "data.split_by=character",
    "data.txt_document=file",
    "data.block_size=128",
]


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def test_prune_then_distill_the_demo_model(tmp_path, cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pruned = tmp_path / "pruned"
    result = cli(
        "prune",
        "--recipe",
        str(REPO / "recipes" / "prune" / "smollm2-135m-depth-20.yaml"),
        *_sets(
            [
                *TEXT,
                f"prune.output_dir={pruned}",
                "prune.depth.keep_layers=26",
                "prune.calibration_blocks=4",
                "prune.eval_blocks=2",
            ]
        ),
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads((pruned / "prune_report.json").read_text())
    assert len(report["depth"]["removed"]) == 4 and report["before"]["layers"] == 30
    assert report["heldout_perplexity_after"] > report["heldout_perplexity_before"]
    model, info = AutoModelForCausalLM.from_pretrained(pruned, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model.config.num_hidden_layers == 26
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(pruned).chat_template  # SmolLM2's own template

    out = tmp_path / "distilled"
    result = cli(
        "distill",
        "--recipe",
        str(REPO / "recipes" / "distill" / "smollm2-135m-20-layers-text.yaml"),
        *_sets(
            [
                *TEXT,
                f"model.name_or_path={pruned}",
                f"train.output_dir={out}",
                "train.max_steps=2",
                "train.eval_steps=2",
                "train.logging_steps=1",
            ]
        ),
    )
    assert result.exit_code == 0, result.stderr
    results = json.loads((out / "manifest.json").read_text())["results"]
    # the 30-layer teacher predicts the held-out text better than its 26-layer pruned student
    assert results["eval_teacher_loss"] < results["eval_ce_loss_first"]
    assert results["eval_kd_loss"] > 0 and results["global_step"] == 2
