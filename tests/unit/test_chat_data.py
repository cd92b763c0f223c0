"""Chat data: every reader on real rows and broken rows, format detection, mixing, masks, truncation."""

import json

import pytest

from llmtune.data.chat_dataset import (
    IGNORE_INDEX,
    load_examples,
    padding_shares,
    render_with_mask,
    tokenize_examples,
)
from llmtune.data.chat_formats import Conversation, parse_row
from llmtune.data.templates import apply_template
from llmtune.errors import LlmtuneError
from llmtune.recipe import ChatDataSection
from tests.conftest import REPO, SHARED_DATA

MEDICAL = SHARED_DATA / "medicalgpt"


def section(**kwargs) -> ChatDataSection:
    return ChatDataSection(**kwargs)


@pytest.mark.parametrize(
    ("path", "preference", "fmt", "first_user_start"),
    [
        (
            MEDICAL / "sft" / "Belle_open_source_1k.alpaca.jsonl",
            False,
            "alpaca",
            "为给定的句子生成一个同义句",
        ),
        (MEDICAL / "sft" / "medical_sft_1K_format.jsonl", False, "sharegpt", "治疗阳痿吃什么药呢"),
        (
            MEDICAL / "sft" / "glaive_toolcall_zh_demo.jsonl",
            False,
            "sharegpt",
            "我需要为John Doe生成一张发票",
        ),
        (REPO / "recipes" / "data" / "llmtune-qa.jsonl", False, "messages", "What is llmtune?"),
        (SHARED_DATA / "instruction-en" / "instruction-data.json", False, "alpaca", "Evaluate the following"),
        (MEDICAL / "reward" / "dpo_zh_500.jsonl", True, "sharegpt_preference", "20个关于新鲜果汁菜单的口号"),
        (
            SHARED_DATA / "preference-en" / "instruction-data-with-preference.json",
            True,
            "alpaca_preference",
            "Evaluate the following",
        ),
    ],
)
def test_real_files_detect_their_format(path, preference, fmt, first_user_start):
    examples, report = load_examples(
        section(train_files=[str(path)], on_bad_rows="skip", max_samples=50), preference=preference
    )
    assert report.formats[str(path)] == fmt and report.detected
    first = examples["train"][0]
    messages = first.prompt if preference else first.messages
    user = next(m for m in messages if m["role"] == "user")
    assert user["content"].startswith(first_user_start)
    if not preference:
        assert messages[-1]["role"] == "assistant"


def test_sharegpt_tool_roles_map_to_assistant_and_tool():
    path = MEDICAL / "sft" / "glaive_toolcall_zh_demo.jsonl"
    examples, _ = load_examples(section(train_files=[str(path)], max_samples=1), preference=False)
    roles = [m["role"] for m in examples["train"][0].messages]
    assert roles[:4] == ["user", "assistant", "tool", "assistant"]


def test_alpaca_input_and_history_become_turns():
    row = {
        "instruction": "Translate",
        "input": "hola",
        "output": "hello",
        "system": "Be brief.",
        "history": [["hi", "hey"]],
    }
    conversation = parse_row(row, "alpaca", {}, "x line 1")
    assert conversation.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "Translate\n\nhola"},
        {"role": "assistant", "content": "hello"},
    ]


def test_columns_map_other_names(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "Q?", "answer": "A."}) + "\n")
    examples, report = load_examples(
        section(train_files=[str(path)], columns={"instruction": "question", "output": "answer"}),
        preference=False,
    )
    assert report.formats[str(path)] == "alpaca"
    assert examples["train"][0].messages[-1]["content"] == "A."


BROKEN = [
    ("not json {", "not valid JSON"),
    (
        json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}]}),
        "empty 'value'",
    ),
    (
        json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}),
        "wrong role order: user followed by user at turn 2",
    ),
    (json.dumps({"conversations": [{"from": "gpt", "value": "a"}]}), "does not start with a user turn"),
    (json.dumps({"conversations": [{"from": "robot", "value": "a"}]}), "unknown speaker 'robot'"),
    (json.dumps({"conversations": [{"from": "human", "value": "a"}]}), "does not end with an assistant turn"),
    (json.dumps({"conversations": "hello"}), "'conversations' is not a non-empty list"),
]


@pytest.mark.parametrize(("bad_line", "reason"), BROKEN)
def test_broken_row_is_an_error_naming_file_and_line(tmp_path, bad_line, reason):
    path = tmp_path / "data.jsonl"
    good = json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
    path.write_text(f"{good}\n{bad_line}\n")
    with pytest.raises(LlmtuneError) as error:
        load_examples(section(train_files=[str(path)]), preference=False)
    text = error.value.render()
    assert f"{path} line 2" in text and reason in text and "data.on_bad_rows: skip" in text


def test_broken_rows_are_skipped_and_counted_by_reason(tmp_path):
    path = tmp_path / "data.jsonl"
    good = json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
    path.write_text("\n".join([good, *(line for line, _ in BROKEN), good]) + "\n")
    examples, report = load_examples(section(train_files=[str(path)], on_bad_rows="skip"), preference=False)
    assert len(examples["train"]) == 2
    assert sum(report.skipped_rows.values()) == len(BROKEN)
    assert report.skipped_examples["wrong role order: user followed by user at turn 2"] == f"{path} line 4"
    assert any("bad rows skipped" in line for line in report.lines())


def test_preference_rows_missing_field_and_identical_answers(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "p", "chosen": "good", "rejected": "bad"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "p", "chosen": "good"},
        {
            "prompt": [{"role": "user", "content": "p"}],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    examples, report = load_examples(section(train_files=[str(path)], on_bad_rows="skip"), preference=True)
    assert [(p.chosen, p.rejected) for p in examples["train"]] == [("good", "bad"), ("a", "b")]
    assert report.skipped_rows == {"chosen == rejected": 1, "missing field 'rejected'": 1}


def test_real_preference_set_has_identical_pairs_and_they_are_counted():
    path = SHARED_DATA / "preference-en" / "instruction-data-with-preference.json"
    examples, report = load_examples(section(train_files=[str(path)], on_bad_rows="skip"), preference=True)
    skipped = report.skipped_rows.get("chosen == rejected", 0)
    assert skipped > 0 and len(examples["train"]) + skipped == 1100


def test_weights_mix_files_and_split_is_seeded(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"prompt": f"a{i}", "completion": "x"}) + "\n" for i in range(10)))
    b.write_text("".join(json.dumps({"prompt": f"b{i}", "completion": "y"}) + "\n" for i in range(10)))
    data = section(train_files=[str(a), str(b)], weights=[2, 0.5], validation_split=0.2, seed=1)
    examples, report = load_examples(data, preference=False)
    assert report.rows_after_mixing == 25
    assert len(examples["train"]) == 20 and len(examples["validation"]) == 5
    again, _ = load_examples(data, preference=False)
    assert [c.messages for c in again["validation"]] == [c.messages for c in examples["validation"]]
    with pytest.raises(LlmtuneError, match="data.weights has 1 values"):
        load_examples(section(train_files=[str(a), str(b)], weights=[1]), preference=False)


@pytest.fixture
def chatml_tokenizer(gpt2_tokenizer):
    import copy

    tokenizer = copy.deepcopy(gpt2_tokenizer)
    apply_template(tokenizer, "chatml")
    return tokenizer


def test_loss_mask_covers_exactly_the_assistant_turns(chatml_tokenizer):
    conversation = Conversation(
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A one"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A two"},
        ],
        "test",
    )
    input_ids, labels, text, _ = render_with_mask(chatml_tokenizer, conversation)
    trained = [token for token in labels if token != IGNORE_INDEX]
    assert chatml_tokenizer.decode(trained) == "A one<|im_end|>\nA two<|im_end|>\n"
    # everything else, prompts and role headers included, carries no loss
    untrained = [t for t, label in zip(input_ids, labels, strict=True) if label == IGNORE_INDEX]
    assert chatml_tokenizer.decode(untrained) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
    )
    _, all_labels, _, _ = render_with_mask(chatml_tokenizer, conversation, train_on_prompt=True)
    assert all_labels == input_ids


@pytest.mark.parametrize("template", ["chatml", "qwen", "llama3", "alpaca"])
def test_every_built_in_template_masks_both_answers(gpt2_tokenizer, template):
    import copy

    tokenizer = copy.deepcopy(gpt2_tokenizer)
    apply_template(tokenizer, template)
    conversation = Conversation(
        [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "second answer"},
        ],
        "test",
    )
    _, labels, _, _ = render_with_mask(tokenizer, conversation)
    trained = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    assert "first answer" in trained and "second answer" in trained
    assert "Q1" not in trained and "Q2" not in trained


def test_unknown_template_and_base_model_without_one(gpt2_tokenizer):
    import copy

    with pytest.raises(LlmtuneError, match="did you mean 'chatml'"):
        apply_template(copy.deepcopy(gpt2_tokenizer), "chatlm")
    with pytest.raises(LlmtuneError, match="has no chat template"):
        apply_template(copy.deepcopy(gpt2_tokenizer), None)


def test_overlong_rows_are_truncated_or_dropped_and_counted(tmp_path, chatml_tokenizer):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": "short", "completion": "ok"}, {"prompt": "long " * 60, "completion": "answer " * 40}]
    rows.append({"prompt": "p", "completion": "answer " * 80})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for overlong, kept, truncated, dropped, no_answer in [("truncate", 2, 1, 0, 1), ("drop", 1, 0, 2, 0)]:
        data = section(train_files=[str(path)], max_length=50, overlong=overlong)
        examples, report = load_examples(data, preference=False)
        datasets = tokenize_examples(chatml_tokenizer, examples, data, report)
        assert len(datasets["train"]) == kept
        assert max(len(ids) for ids in datasets["train"]["input_ids"]) <= 50
        assert report.truncated["train"] == truncated
        assert report.dropped_overlong["train"] == dropped
        assert report.dropped_no_answer_tokens["train"] == no_answer


def test_padding_shares():
    shares = padding_shares([10, 10, 30, 30], batch_size=2, max_length=40, seed=0)
    assert 0 < shares["unpacked_padding_share"] < 0.5
    assert shares["packed_bins"] == 2 and shares["packed_bin_fill"] == 1.0
