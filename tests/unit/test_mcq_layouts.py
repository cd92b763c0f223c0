"""The multiple-choice CSV layouts, each detected from its real header (MMLU's three, CMMLU, C-Eval), the
C-Eval prompt as its own evaluator writes it, C-Eval files scored end to end through `llmtune eval --mcq`,
and a recipe layout that contradicts a file's header refused before any model loads."""

import json

import pytest
import torch

from tests.conftest import SHARED_DATA

MMLU_DEV = SHARED_DATA / "mcq" / "mmlu" / "dev"
CMMLU_DEV = SHARED_DATA / "mcq" / "cmmlu" / "dev"

# Four C-Eval questions (the val split's header, with its explanation column). The ids are digits, as in
# the real files: before C-Eval was detected, a file like this was read as headerless MMLU and failed with
# "answer '4' is not one of A-D or 0-3".
CEVAL_VAL = (
    "id,question,A,B,C,D,answer,explanation\n"
    "4,下列各项中，属于会计要素的是____。,资产,账簿,凭证,报表,A,\n"
    '5,"某企业的流动比率为2,速动比率为1,说明____。",存货较多,负债为零,现金充足,利润为正,A,1. 流动比率高于速动比率\n'
    "6,会计的基本职能是____。,预测与决策,核算与监督,分析与考核,计划与控制,B,\n"
    "7,企业的资产负债表反映的是____。,经营成果,现金流量,某一日期的财务状况,所有者权益变动,C,\n"
)
CEVAL_DEV = (
    "id,question,A,B,C,D,answer,explanation\n"
    "0,会计的对象是____。,资金运动,经济活动,财务报表,会计凭证,A,1. 会计核算和监督的内容\n"
    "1,借贷记账法的记账规则是____。,有借必有贷，借贷必相等,有增必有减,收付相等,先借后贷,A,\n"
)


def read(path, layout="auto"):
    from llmtune.data.sources import BadRows
    from llmtune.evaluation.mcq import read_questions

    return read_questions(path, layout, "error", BadRows())


# ------------------------------------------------------------------------------------------ detection
@pytest.mark.parametrize(
    "first_row, layout",
    [
        ("What is a virus?,a cell,a protein,a particle,a fungus,B", "mmlu_original"),  # hendrycks
        ("question,choice0,choice1,choice2,choice3,answer", "mmlu"),  # the HF export in shared data
        ("question,A,B,C,D,answer", "mmlu_columns"),
        (",Question,A,B,C,D,Answer", "cmmlu"),
        ("id,question,A,B,C,D,answer", "ceval"),  # C-Eval val/dev without explanations
        ("id,question,A,B,C,D,answer,explanation", "ceval"),  # C-Eval val/dev
        ("id,question,A,B,C,D", "ceval"),  # C-Eval test (no answers: refused when read)
    ],
)
def test_each_layout_is_detected_from_its_header(first_row, layout):
    from llmtune.evaluation.mcq import detect_layout

    assert detect_layout(first_row.split(",")) == layout


def test_the_shared_files_headers_are_detected():
    assert (MMLU_DEV / "anatomy_dev.csv").read_text().startswith("question,choice0,")
    assert read(MMLU_DEV / "anatomy_dev.csv").layout == "mmlu"
    assert (CMMLU_DEV / "anatomy.csv").read_text().startswith(",Question,")
    assert read(CMMLU_DEV / "anatomy.csv").layout == "cmmlu"


def test_a_ceval_file_is_read_past_its_id_and_explanation(tmp_path):
    path = tmp_path / "accountant_val.csv"
    path.write_text(CEVAL_VAL, encoding="utf-8")
    found = read(path)
    assert found.layout == "ceval" and found.subject == "accountant"  # _val stripped
    assert [q.answer for q in found.questions] == [0, 0, 1, 2]
    assert found.questions[1].question == "某企业的流动比率为2,速动比率为1,说明____。"  # a quoted comma
    assert found.questions[2].options == ["预测与决策", "核算与监督", "分析与考核", "计划与控制"]
    assert [q.where for q in found.questions] == [f"{path} line {n}" for n in (2, 3, 4, 5)]


def test_the_ceval_test_split_is_refused_with_the_split_to_use(tmp_path):
    from llmtune.errors import LlmtuneError

    path = tmp_path / "accountant_test.csv"
    path.write_text("id,question,A,B,C,D\n0,题目,甲,乙,丙,丁\n", encoding="utf-8")
    with pytest.raises(LlmtuneError, match="test split has no answers") as caught:
        read(path)
    assert f"{path} is a C-Eval file without an answer column (header 'id,question,A,B,C,D')" in str(
        caught.value
    )
    assert "Evaluate on the val split (<subject>_val.csv)" in str(caught.value)


@pytest.mark.parametrize(
    "layout, content, found",
    [
        ("cmmlu", "question,choice0,choice1,choice2,choice3,answer\nQ,a,b,c,d,1\n", "mmlu"),
        ("mmlu", CEVAL_VAL, "ceval"),
        ("mmlu_original", ",Question,A,B,C,D,Answer\n0,Q,a,b,c,d,A\n", "cmmlu"),
        ("ceval", "What is it?,a,b,c,d,B\n", "mmlu_original"),
        ("mmlu_columns", "id,question,A,B,C,D,answer\n1,Q,a,b,c,d,A\n", "ceval"),
    ],
)
def test_a_recipe_layout_that_contradicts_the_header_is_refused(layout, content, found, tmp_path):
    from llmtune.errors import LlmtuneError

    path = tmp_path / "x_val.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LlmtuneError) as caught:
        read(path, layout)
    message = str(caught.value)
    assert f"mcq.layout {layout}: {path} starts with '{content.splitlines()[0][:30]}" in message
    assert f"layout {found}." in message


def test_mmlu_and_mmlu_columns_read_alike_so_either_name_is_accepted(tmp_path):
    path = tmp_path / "anatomy_dev.csv"
    path.write_text("question,A,B,C,D,answer\nQ,a,b,c,d,C\n")
    for layout in ("auto", "mmlu", "mmlu_columns"):
        found = read(path, layout)
        assert found.layout == "mmlu_columns" and found.questions[0].answer == 2


# ------------------------------------------------------------------------------------------ prompts
def test_the_ceval_prompt_is_the_official_evaluators():
    """hkust-nlp/ceval code/evaluator_series/evaluators/llama.py: generate_few_shot_prompt + format_example."""
    from llmtune.evaluation.mcq import Question, answer_prefix, build_prompt

    q = Question("accountant", "会计的基本职能是____。", ["预测", "核算", "分析", "计划"], 1, "-")
    shot = Question("accountant", "会计的对象是____。", ["资金运动", "经济活动", "报表", "凭证"], 0, "+")
    assert build_prompt("ceval", q, [shot]) == (
        "以下是中国关于注册会计师考试的单项选择题，请选出其中的正确答案。\n\n"
        "会计的对象是____。\nA. 资金运动\nB. 经济活动\nC. 报表\nD. 凭证\n答案：A\n\n"
        "会计的基本职能是____。\nA. 预测\nB. 核算\nC. 分析\nD. 计划\n答案："
    )
    assert answer_prefix("ceval") == ""  # the continuation is "A", as after CMMLU's 答案是：
    other = Question("some_new_subject", "Q", ["a", "b", "c", "d"], 0, "-")
    assert build_prompt("ceval", other, []).startswith("以下是中国关于some new subject考试的单项选择题")


def test_every_ceval_subject_has_its_chinese_name():
    from llmtune.evaluation.mcq import CEVAL_SUBJECTS

    assert len(CEVAL_SUBJECTS) == 52
    assert CEVAL_SUBJECTS["accountant"] == "注册会计师"
    assert CEVAL_SUBJECTS["mao_zedong_thought"] == "毛泽东思想和中国特色社会主义理论体系概论"
    assert all(name and " " not in name for name in CEVAL_SUBJECTS.values())


def test_ceval_scores_the_letter_without_a_space(tiny_pretrained, gpt2_tokenizer, tmp_path):
    """A model whose only preference is the token "A" answers A to every C-Eval question: the scored
    continuation is "A" (with " A", as after MMLU's Answer:, the bias would not be seen)."""
    from transformers import AutoModelForCausalLM

    from llmtune.evaluation.mcq import evaluate_mcq
    from llmtune.recipe import McqTaskSection

    path = tmp_path / "accountant_val.csv"
    path.write_text(CEVAL_VAL, encoding="utf-8")
    model = AutoModelForCausalLM.from_pretrained(tiny_pretrained).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    bias = torch.zeros(model.config.vocab_size)
    bias[gpt2_tokenizer.convert_tokens_to_ids("A")] = 1.0
    model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)
    found = evaluate_mcq(model, gpt2_tokenizer, [read(path)], McqTaskSection(files=["x"]), {})
    assert [r["predicted"] for r in found["rows"]] == ["A"] * 4
    assert found["metrics"]["accuracy"] == pytest.approx(2 / 4)  # two of the four answers are A
    assert found["metrics"]["subjects"] == {"ceval/accountant": {"questions": 4, "accuracy": 0.5}}


# ------------------------------------------------------------------------------------------ command
def test_a_ceval_file_scores_end_to_end_with_dev_shots(tiny_pretrained_long, gpt2_tokenizer, tmp_path, cli):
    """`llmtune eval --mcq accountant_val.csv` with accountant_dev.csv as shots: every question read, each
    letter's log-likelihood that of "A".."D" after the C-Eval prompt with two worked examples."""
    from transformers import AutoModelForCausalLM

    from llmtune.evaluation.mcq import build_prompt

    val = tmp_path / "data" / "val" / "accountant_val.csv"
    dev = tmp_path / "data" / "dev" / "accountant_dev.csv"
    for path, text in ((val, CEVAL_VAL), (dev, CEVAL_DEV)):
        path.parent.mkdir(parents=True)
        path.write_text(text, encoding="utf-8")
    out = tmp_path / "eval"
    result = cli(
        "eval",
        "--model",
        str(tiny_pretrained_long),
        "--mcq",
        str(val),
        "--out",
        str(out),
        "--set",
        f"mcq.shots_files={json.dumps([str(dev)])}",
        "--set",
        "mcq.shots=2",
    )
    assert result.exit_code == 0, result.stderr
    mcq = json.loads((out / "results.json").read_text())["results"][str(tiny_pretrained_long)]["mcq"]
    assert mcq["questions"] == 4 and set(mcq["subjects"]) == {"ceval/accountant"}
    rows = [
        json.loads(line) for line in (out / f"mcq-{tiny_pretrained_long.name}.jsonl").read_text().splitlines()
    ]
    assert [r["answer"] for r in rows] == ["A", "A", "B", "C"] and {r["shots"] for r in rows} == {2}
    assert mcq["accuracy"] == sum(r["predicted"] == r["answer"] for r in rows) / 4

    model = AutoModelForCausalLM.from_pretrained(tiny_pretrained_long).eval()
    questions, shots = read(val).questions, read(dev).questions
    for q, row in zip(questions, rows, strict=True):
        prompt = build_prompt("ceval", q, shots)
        assert prompt.startswith("以下是中国关于注册会计师考试的单项选择题") and prompt.count("答案：") == 3
        ids = gpt2_tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            last = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
        by_hand = [
            float(last[gpt2_tokenizer(letter, add_special_tokens=False)["input_ids"][0]]) for letter in "ABCD"
        ]
        assert row["letter_log_likelihoods"] == pytest.approx(by_hand, abs=1e-4)


def test_contradicting_layout_and_ceval_test_split_exit_2_before_a_model_loads(tmp_path, cli, monkeypatch):
    from llmtune.stages import eval as stage

    monkeypatch.setattr(stage, "_load_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    test_split = tmp_path / "accountant_test.csv"
    test_split.write_text("id,question,A,B,C,D\n0,题目,甲,乙,丙,丁\n", encoding="utf-8")
    result = cli("eval", "--model", "m", "--mcq", str(test_split), "--out", str(tmp_path / "a"))
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert f"{test_split} is a C-Eval file without an answer column" in result.stderr
    mmlu = MMLU_DEV / "anatomy_dev.csv"
    result = cli(
        "eval", "--model", "m", "--mcq", str(mmlu), "--set", "mcq.layout=cmmlu", "--out", str(tmp_path / "b")
    )
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert f"mcq.layout cmmlu: {mmlu} starts with 'question,choice0,choice1" in result.stderr
    assert "layout mmlu." in result.stderr and result.stderr.count("llmtune: error:") == 1
