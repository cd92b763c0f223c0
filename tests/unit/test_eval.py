"""llmtune eval on tiny models: perplexity with exact expected values, the MMLU/CMMLU readers, prompts and
scorer (checked against an independent computation), generation, --compare, and input errors."""

import json
import math

import pytest
import torch

from tests.conftest import SHARED_DATA, VERDICT

MMLU_DEV = SHARED_DATA / "mcq" / "mmlu" / "dev"
CMMLU_DEV = SHARED_DATA / "mcq" / "cmmlu" / "dev"


@pytest.fixture(scope="module")
def tiny(tiny_pretrained, gpt2_tokenizer):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_pretrained).eval(), gpt2_tokenizer


# ------------------------------------------------------------------------------------------ perplexity
def test_sliding_windows_score_every_token_once():
    from llmtune.evaluation.perplexity import sliding_windows

    for length, max_length, stride in [(10, 4, 2), (10, 4, 4), (3, 8, 4), (100, 16, 5)]:
        spans = sliding_windows(length, max_length, stride)
        scored = [t for _, end, start in spans for t in range(start, end)]
        assert scored == list(range(1, length))  # each token but the first, once, in order
        assert all(end - begin <= max_length for begin, end, _ in spans)


def test_perplexity_of_a_model_with_uniform_logits_is_the_vocabulary_size(tiny_pretrained, gpt2_tokenizer):
    from transformers import AutoModelForCausalLM

    from llmtune.evaluation.perplexity import token_log_likelihood

    model = AutoModelForCausalLM.from_pretrained(tiny_pretrained).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: p(token) = 1 / V whatever the context
    ids = gpt2_tokenizer(VERDICT.read_text()[:2000])["input_ids"]
    total, tokens, windows = token_log_likelihood(model, ids, max_length=64, stride=24, batch_size=3)
    assert tokens == len(ids) - 1 and windows > 10
    assert math.exp(-total / tokens) == pytest.approx(model.config.vocab_size, rel=1e-6)


def test_perplexity_matches_an_independent_token_by_token_computation(tiny):
    from llmtune.evaluation.perplexity import sliding_windows, token_log_likelihood

    model, tokenizer = tiny
    ids = tokenizer(VERDICT.read_text()[:400])["input_ids"][:50]
    total, tokens, _ = token_log_likelihood(model, ids, max_length=16, stride=6, batch_size=4)
    expected = 0.0
    for begin, end, start in sliding_windows(len(ids), 16, 6):
        for t in range(start, end):  # token t predicted from ids[begin:t], one unbatched forward each
            with torch.no_grad():
                logits = model(torch.tensor([ids[begin:t]])).logits[0, -1]
            expected += float(torch.log_softmax(logits, -1)[ids[t]])
    assert tokens == len(ids) - 1
    assert total == pytest.approx(expected, abs=1e-3)
    # One window holding the whole text is HF's own loss.
    total, tokens, _ = token_log_likelihood(model, ids, max_length=64, stride=64, batch_size=1)
    with torch.no_grad():
        loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert -total / tokens == pytest.approx(float(loss), rel=1e-5)


# ------------------------------------------------------------------------------------------ mcq
def test_reads_the_three_csv_layouts(tmp_path):
    from llmtune.data.sources import BadRows
    from llmtune.evaluation.mcq import read_questions

    mmlu = read_questions(MMLU_DEV / "anatomy_dev.csv", "auto", "error", BadRows())
    assert mmlu.layout == "mmlu" and mmlu.subject == "anatomy" and len(mmlu.questions) == 5
    assert mmlu.questions[0].options[0] and mmlu.questions[0].answer in range(4)
    cmmlu = read_questions(CMMLU_DEV / "anatomy.csv", "auto", "error", BadRows())
    assert cmmlu.layout == "cmmlu" and len(cmmlu.questions) == 5
    original = tmp_path / "virology_test.csv"
    original.write_text('What is a virus?,"A cell, sort of",A protein,A particle,A fungus,C\n')
    parsed = read_questions(original, "auto", "error", BadRows())
    assert parsed.layout == "mmlu_original" and parsed.subject == "virology"
    assert parsed.questions[0].options[0] == "A cell, sort of" and parsed.questions[0].answer == 2


def test_bad_mcq_rows_name_file_and_line_or_are_counted(tmp_path, cli):
    from llmtune.data.sources import BadRows
    from llmtune.errors import LlmtuneError
    from llmtune.evaluation.mcq import read_questions

    path = tmp_path / "anatomy_dev.csv"
    path.write_text("question,choice0,choice1,choice2,choice3,answer\nQ1,a,b,c,d,2\nQ2,a,b,c,d,E\nQ3,a,b\n")
    with pytest.raises(LlmtuneError, match=r"anatomy_dev.csv line 3: answer 'E' is not one of A-D or 0-3"):
        read_questions(path, "auto", "error", BadRows())
    bad = BadRows()
    assert len(read_questions(path, "auto", "skip", bad).questions) == 1
    assert bad.counts == {"answer 'E' is not one of A-D or 0-3": 1, "expected 6 columns, found 3": 1}


def test_prompts_follow_the_original_harnesses():
    from llmtune.evaluation.mcq import Question, build_prompt

    q = Question("college_medicine", "Which?", ["w", "x", "y", "z"], 1, "-")
    shot = Question("college_medicine", "Before?", ["a", "b", "c", "d"], 3, "+")
    assert build_prompt("mmlu", q, [shot]) == (
        "The following are multiple choice questions (with answers) about  college medicine.\n\n"
        "Before?\nA. a\nB. b\nC. c\nD. d\nAnswer: D\n\n"
        "Which?\nA. w\nB. x\nC. y\nD. z\nAnswer:"
    )
    q = Question("anatomy", "哪个？", ["甲", "乙", "丙", "丁"], 0, "-")
    assert build_prompt("cmmlu", q, []) == (
        "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n题目：哪个？\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是："
    )


def test_mcq_scores_match_log_likelihoods_computed_by_hand(tiny):
    """The batched scorer against one unpadded forward per (prompt + answer), for letters and texts."""
    from llmtune.data.sources import BadRows
    from llmtune.evaluation.mcq import build_prompt, continuation_log_likelihoods, read_questions

    model, tokenizer = tiny
    questions = read_questions(MMLU_DEV / "machine_learning_dev.csv", "auto", "error", BadRows()).questions[
        :3
    ]
    for q in questions:
        prompt = build_prompt("mmlu", q, [])
        pairs = [(prompt, " " + letter) for letter in "ABCD"] + [(prompt, " " + o) for o in q.options]
        scores = continuation_log_likelihoods(model, tokenizer, pairs, batch_size=3)
        prompt_ids = tokenizer(prompt)["input_ids"]
        for (_, continuation), score in zip(pairs, scores, strict=True):
            full = tokenizer(prompt + continuation)["input_ids"]
            assert full[: len(prompt_ids)] == prompt_ids  # GPT-2 BPE splits at the space
            with torch.no_grad():
                log_probs = torch.log_softmax(model(torch.tensor([full])).logits[0], -1)
            by_hand = sum(float(log_probs[i - 1, full[i]]) for i in range(len(prompt_ids), len(full)))
            assert score == pytest.approx(by_hand, abs=1e-4)


def test_mcq_accuracy_of_a_model_that_always_answers_a(tiny_pretrained, gpt2_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from llmtune.data.sources import BadRows
    from llmtune.evaluation.mcq import evaluate_mcq, read_questions
    from llmtune.recipe import McqTaskSection

    model = AutoModelForCausalLM.from_pretrained(tiny_pretrained).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0 ...
    bias = torch.zeros(model.config.vocab_size)
    bias[gpt2_tokenizer.convert_tokens_to_ids("ĠA")] = 1.0  # ... but " A"'s, which always wins
    model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)
    files = [read_questions(p, "auto", "error", BadRows()) for p in sorted(MMLU_DEV.glob("*.csv"))]
    found = evaluate_mcq(model, gpt2_tokenizer, files, McqTaskSection(files=["x"]), {})
    answers = [q.answer for f in files for q in f.questions]
    assert found["metrics"]["questions"] == 30
    assert found["metrics"]["accuracy"] == pytest.approx(answers.count(0) / 30)
    per_subject = {f"mmlu/{f.subject}": [q.answer for q in f.questions].count(0) / 5 for f in files}
    assert {s: v["accuracy"] for s, v in found["metrics"]["subjects"].items()} == pytest.approx(per_subject)
    assert found["metrics"]["macro_accuracy"] == pytest.approx(sum(per_subject.values()) / 6)
    assert {r["predicted"] for r in found["rows"]} == {"A"}


# ------------------------------------------------------------------------------------------ command
def eval_recipe(tmp_path, model, **sections):
    recipe = {"model": {"name_or_path": str(model)}, "eval": {"output_dir": str(tmp_path / "eval")}}
    recipe.update(sections)
    return recipe


def test_eval_command_writes_results_and_generations(tmp_path, tiny_pretrained, write_recipe, cli):
    text = tmp_path / "held-out.txt"
    text.write_text(VERDICT.read_text()[:1500])
    recipe = eval_recipe(
        tmp_path,
        tiny_pretrained,
        eval={"output_dir": str(tmp_path / "eval"), "template": "chatml"},
        perplexity={"files": [str(text)], "max_length": 64, "stride": 32},
        mcq={"files": [str(MMLU_DEV / "anatomy_dev.csv")], "score": "both"},
        generate={"prompts": ["Hello", "What is 2 + 2?"], "max_new_tokens": 5, "do_sample": True, "seed": 3},
    )
    path = write_recipe(recipe)
    result = cli("eval", "--recipe", str(path))
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "eval"
    results = json.loads((out / "results.json").read_text())["results"][str(tiny_pretrained)]
    assert results["perplexity"]["tokens"] > 300 and results["perplexity"]["perplexity"] > 1
    assert set(results["mcq"]) >= {"accuracy", "accuracy_text", "accuracy_text_norm", "subjects"}
    rows = [
        json.loads(line)
        for line in (out / f"generations-{tiny_pretrained.name}.jsonl").read_text().splitlines()
    ]
    assert [r["prompt"] for r in rows] == ["Hello", "What is 2 + 2?"] and all(
        r["new_tokens"] <= 5 for r in rows
    )
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"
    assert "| mcq | accuracy |" in (out / f"report-{tiny_pretrained.name}.md").read_text()
    # Seeded sampling repeats exactly.
    again = cli("eval", "--recipe", str(path), "--overwrite")
    assert again.exit_code == 0, again.stderr
    assert (out / f"generations-{tiny_pretrained.name}.jsonl").read_text() == "".join(
        json.dumps(r, ensure_ascii=False) + "\n" for r in rows
    )


@pytest.mark.slow  # trains an adapter, then evaluates two models
def test_compare_puts_base_and_adapter_side_by_side(tmp_path, tiny_pretrained, cli):
    from tests.unit.test_merge import _train

    run = _train(tmp_path, tiny_pretrained, {"method": "lora", "r": 4})
    held_out = tmp_path / "qa.txt"
    held_out.write_text("\n".join(json.loads(line)["messages"][-1]["content"] for line in _qa_lines()[:20]))
    result = cli(
        "eval",
        "--compare",
        str(tiny_pretrained),
        str(run),
        "--perplexity",
        str(held_out),
        "--generate",
        "What is llmtune?",
        "--out",
        str(tmp_path / "cmp"),
        "--set",
        "generate.max_new_tokens=4",
    )
    assert result.exit_code == 0, result.stderr
    table = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert table["models"] == [str(tiny_pretrained), str(run)]
    row = next(r for r in table["rows"] if r["metric"] == "perplexity")
    assert row["b"] < row["a"] and row["better"] == "b"  # the adapter learned the answers' text
    assert table["generations"][0]["prompt"] == "What is llmtune?"
    assert "| perplexity | perplexity |" in (tmp_path / "cmp" / "compare.md").read_text()
    assert "B better" in result.stdout


def _qa_lines():
    from tests.unit.test_sft import QA

    return QA.read_text().splitlines()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mcq", "x.csv"], "no model to evaluate"),
        (["--model", "m"], "no task: add at least one of the sections"),
        (
            ["--model", "m", "--mcq", "missing.csv"],
            "mcq.files: data file 'missing.csv' (looked for at MISSING) does not exist",
        ),
        (["--model", "m", "--perplexity", "t.txt", "--set", "perplexity.stride=0"], "perplexity.stride"),
        (["--model", "m", "--mcq", "q.csv", "--set", "mcq.shots=2"], "set mcq.shots_files"),
    ],
)
def test_eval_input_errors(args, message, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("some text")
    (tmp_path / "q.csv").write_text("question,choice0,choice1,choice2,choice3,answer\nQ,a,b,c,d,1\n")
    result = cli("eval", *args)
    assert result.exit_code == 2, result.stdout
    assert message.replace("MISSING", str(tmp_path / "missing.csv")) in result.stderr
    assert "Traceback" not in result.stderr


def test_results_folder_is_not_overwritten(tmp_path, tiny_pretrained, cli):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("{}")
    result = cli("eval", "--model", str(tiny_pretrained), "--generate", "hi", "--out", str(out))
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert (out / "results.json").read_text() == "{}"
