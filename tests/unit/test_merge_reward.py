"""llmtune merge on a reward-model adapter (task_type SEQ_CLS): the merged folder loads with plain
AutoModelForSequenceClassification.from_pretrained and scores the pairs as the adapter does, llmtune eval
scores it the same, and the language-model tasks refuse it by name."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_eval_reward import direct_scores, train_reward_run


@pytest.fixture(scope="module")
def merged_reward(tmp_path_factory, tiny_pretrained):
    """(LoRA reward run, the pairs it learned, its merged folder made by the CLI, the CLI's output)."""
    from typer.testing import CliRunner

    from llmtune.cli import app

    root = tmp_path_factory.mktemp("merge_reward")
    run = train_reward_run(root, tiny_pretrained, "lora")
    out = root / "merged"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMTUNE_HOME", str(root / "home"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        result = CliRunner().invoke(
            app, ["merge", "--adapter", str(run), "--out", str(out)], catch_exceptions=False
        )
    assert result.exit_code == 0, result.output
    return run, root / "lora" / "pairs.jsonl", out, result.output


def test_merged_reward_model_loads_with_from_pretrained_and_scores_as_the_adapter(merged_reward):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmtune.reward_model import score_sequences

    run, pairs, out, output = merged_reward
    assert "merged reward model" in output
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert len(config["id2label"]) == 1
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert config["pad_token_id"] == tokenizer.pad_token_id is not None

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.num_labels == 1
    assert not [name for name in model.state_dict() if "lora_" in name or "modules_to_save" in name]

    where, chosen, rejected = direct_scores(run, pairs)  # the adapter model (base + LoRA + trained head)
    from llmtune.data.chat_dataset import load_chat_data
    from llmtune.data.reward_pairs import tokenize_pairs
    from llmtune.recipe import ChatDataSection

    data = ChatDataSection(train_files=[str(pairs)])
    examples, report = load_chat_data(tokenizer, data, preference=True)
    split = tokenize_pairs(tokenizer, examples, data, report)["train"]
    merged_scores = score_sequences(
        model, split["chosen_ids"] + split["rejected_ids"], pad_token_id=tokenizer.pad_token_id
    )
    assert merged_scores == pytest.approx(chosen + rejected, abs=1e-4)
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(chosen) > 0.9  # a trained head

    # HF's own pooling (rightmost non-pad token, from config.pad_token_id) on one unpadded sequence
    with torch.no_grad():
        logits = model(torch.tensor([split["chosen_ids"][0]])).logits
    assert logits.shape == (1, 1)
    assert float(logits[0, 0]) == pytest.approx(chosen[0], abs=1e-4)

    report = json.loads((out / "merge_report.json").read_text())
    assert report["task"] == "reward" and report["greedy_checked"] == 0
    assert report["prompts"] == "the first training pairs, chosen and rejected"
    assert report["saved_vs_adapter_max_abs_logit"] <= report["bound_max_abs_logit"]


def test_eval_scores_the_merged_folder_as_the_adapter(merged_reward, tmp_path, cli):
    run, pairs, out, _ = merged_reward
    rows = {}
    for model in (run, out):
        result = cli(
            "eval", "--model", str(model), "--reward", str(pairs), "--out", str(tmp_path / model.name)
        )
        assert result.exit_code == 0, result.output
        text = (tmp_path / model.name / "reward_scores.jsonl").read_text()
        rows[model] = [json.loads(line) for line in text.splitlines()]
    assert [r["chosen"] for r in rows[out]] == pytest.approx([r["chosen"] for r in rows[run]], abs=1e-4)
    assert [r["rejected"] for r in rows[out]] == pytest.approx([r["rejected"] for r in rows[run]], abs=1e-4)


def test_language_model_tasks_refuse_the_merged_reward_model(merged_reward, tmp_path, cli):
    _, _, out, _ = merged_reward
    result = cli("eval", "--model", str(out), "--generate", "Hello?", "--out", str(tmp_path / "e"))
    assert result.exit_code == 2
    assert f"{out} is a reward model" in result.output and "generate" in result.output


def test_a_full_reward_run_needs_no_merge(merged_reward, tmp_path, cli):
    _, _, out, _ = merged_reward  # a sequence-classification folder, as a peft.method none run writes
    result = cli("merge", "--adapter", str(out), "--out", str(tmp_path / "again"))
    assert result.exit_code == 2
    assert "no adapter_config.json" in result.output
