"""Integration: llmtune eval on the demo SmolLM2-135M-Instruct: every causal-LM task on real data, and
the letter scores checked against one unbatched forward per answer."""

from __future__ import annotations

import json
import math

import torch

from tests.conftest import SHARED_DATA, VERDICT


def test_eval_smoke_on_the_demo_model(tmp_path, cli, write_recipe):
    text = tmp_path / "verdict.txt"
    text.write_text(VERDICT.read_text()[:3000])
    recipe = {
        "model": {"name_or_path": "smollm2-135m-instruct"},
        "eval": {"output_dir": str(tmp_path / "eval")},
        "perplexity": {"files": [str(text)], "max_length": 256, "stride": 128},
        "mcq": {
            "files": [str(SHARED_DATA / "mcq" / "mmlu" / "dev"), str(SHARED_DATA / "mcq" / "cmmlu" / "dev")],
            "max_questions": 1,
        },
        "generate": {"prompts": ["What is the capital of France?"], "max_new_tokens": 12},
    }
    result = cli("eval", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]["smollm2-135m-instruct"]
    assert 5 < results["perplexity"]["perplexity"] < 100  # English prose, a real 135M model
    mcq = results["mcq"]
    assert mcq["questions"] == 12 and set(mcq["benchmarks"]) == {"mmlu", "cmmlu"}
    assert "Paris" in results["generate"]["rows"][0]["output"]

    # The scorer's letter log-likelihoods against an unbatched forward of prompt + " A" (MMLU).
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtune.data.sources import BadRows
    from llmtune.evaluation.mcq import build_prompt, read_questions
    from llmtune.hub import resolve_model

    folder = resolve_model("smollm2-135m-instruct").path
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    row = next(json.loads(line) for line in (tmp_path / "eval" / "mcq-smollm2-135m-instruct.jsonl").open())
    question = read_questions(
        SHARED_DATA / "mcq" / "mmlu" / "dev" / "anatomy_dev.csv", "auto", "error", BadRows()
    )
    prompt = build_prompt("mmlu", question.questions[0], [])
    assert row["subject"] == "mmlu/anatomy"
    for letter, score in zip("ABCD", row["letter_log_likelihoods"], strict=True):
        ids = tokenizer(prompt + " " + letter)["input_ids"]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -2], -1)
        assert math.isclose(score, float(log_probs[ids[-1]]), abs_tol=1e-4)
