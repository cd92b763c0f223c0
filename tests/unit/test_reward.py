"""llmtune reward on a tiny random Llama: the reward is read at the last real token under left and right
padding, the padding token is chosen so that it is, long pairs are cut and kept (never dropped by TRL),
accuracy on a separable set rises above 0.9, and the run folder loads back with the same scores."""

from __future__ import annotations

import json
import random

import pytest
import torch

from llmtune.errors import LlmtuneError

GOOD = ["helpful", "clear", "kind", "correct", "useful", "polite"]
BAD = ["rude", "wrong", "useless", "angry", "broken", "lazy"]


def separable_pairs(path, n: int = 64, seed: int = 0):
    """MedicalGPT's older reward format; the chosen answer always has a 'good' word, the rejected a bad one."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(["cats", "tea", "rain", "books", "trees", "music", "bread", "maps"])
        rows.append(
            {
                "question": f"Tell me about {topic} {i}.",
                "response_chosen": f"A {rng.choice(GOOD)} answer about {topic}.",
                "response_rejected": f"A {rng.choice(BAD)} answer about {topic}.",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reward_recipe(tmp_path, model_dir, **sections) -> dict:
    recipe = {
        "model": {"name_or_path": str(model_dir)},
        "data": {
            "train_files": str(separable_pairs(tmp_path / "pairs.jsonl")),
            "validation_split": 0.25,
            "template": "chatml",
            "max_length": 64,
        },
        "peft": {"method": "lora", "r": 8},
        "reward": {},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 20,
            "per_device_train_batch_size": 8,
            "learning_rate": 1e-2,
            "logging_steps": 5,
            "eval_strategy": "no",
            "save_strategy": "no",
            "report_to": "none",
            "gradient_checkpointing": False,
            "disable_tqdm": True,
            "seed": 0,
        },
    }
    for name, values in sections.items():
        if name == "peft":
            recipe["peft"] = values
        else:
            recipe.setdefault(name, {}).update(values)
    return recipe


def load(recipe: dict, tmp_path):
    from llmtune.recipe import RewardRecipe, recipe_from_mapping

    return recipe_from_mapping(recipe, RewardRecipe, str(tmp_path / "recipe.yaml"), tmp_path, [])


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_pretrained):
    from transformers import AutoModelForCausalLM

    from llmtune.reward_model import reward_model_from_causal_lm

    torch.manual_seed(0)
    return reward_model_from_causal_lm(AutoModelForCausalLM.from_pretrained(tiny_pretrained)).eval()


# ------------------------------------------------------------------------------------------ the read position
@pytest.mark.parametrize("side", ["right", "left"])
def test_reward_is_read_at_the_last_real_token(side, tiny_reward_model, gpt2_tokenizer):
    """HF's own forward, batched with padding on either side (pad chosen by choose_pad_token), gives each
    sequence the reward it gets alone; score_sequences agrees."""
    from llmtune.reward_model import choose_pad_token, score_sequences

    model = tiny_reward_model
    eos = gpt2_tokenizer.eos_token_id
    sequences = [[10, 20, 30, 40, 50, eos, 7], [11, 21], [12, 22, 32, 42, 52, 62, 72, eos, 5]]
    pad, _ = choose_pad_token(gpt2_tokenizer, sequences)
    pad_id = gpt2_tokenizer.convert_tokens_to_ids(pad)
    assert pad_id not in {s[-1] for s in sequences}
    model.config.pad_token_id = None
    with torch.no_grad():
        alone = [float(model(input_ids=torch.tensor([s])).logits[0, 0]) for s in sequences]

    model.config.pad_token_id = pad_id
    longest = max(map(len, sequences))
    model.config.pad_token_id = pad_id
    ids = torch.full((len(sequences), longest), pad_id)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        cols = slice(0, len(seq)) if side == "right" else slice(longest - len(seq), longest)
        ids[row, cols], mask[row, cols] = torch.tensor(seq), 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, 0].tolist()
    model.config.pad_token_id = None
    assert batched == pytest.approx(alone, abs=1e-5)
    assert score_sequences(model, sequences, pad_token_id=pad_id, batch_size=2) == pytest.approx(
        alone, abs=1e-5
    )


def test_a_pad_token_that_ends_sequences_would_read_the_wrong_position(tiny_reward_model, gpt2_tokenizer):
    """The bug choose_pad_token prevents: with EOS as padding, a sequence ending in EOS is read one token early."""
    model = tiny_reward_model
    eos = gpt2_tokenizer.eos_token_id
    seq = [10, 20, 30, eos]
    model.config.pad_token_id = None  # alone: read at the last position
    with torch.no_grad():
        alone = float(model(input_ids=torch.tensor([seq])).logits[0, 0])
    model.config.pad_token_id = eos
    try:
        padded = torch.tensor([seq + [eos, eos], [1, 2, 3, 4, 5, 6]])
        mask = (torch.arange(6) < torch.tensor([[4], [6]])).long()
        with torch.no_grad():
            wrong = float(model(input_ids=padded, attention_mask=mask).logits[0, 0])
    finally:
        model.config.pad_token_id = None
    assert abs(wrong - alone) > 1e-4


def test_choose_pad_token_rules(gpt2_tokenizer):
    from llmtune.reward_model import choose_pad_token

    tokenizer = gpt2_tokenizer
    eos = tokenizer.eos_token_id
    assert choose_pad_token(tokenizer, [[1, 2, 3]])[0] == (tokenizer.pad_token or tokenizer.eos_token)
    with pytest.raises(LlmtuneError, match="not a token of this tokenizer"):
        choose_pad_token(tokenizer, [[1, 2]], "<no such token>")
    with pytest.raises(LlmtuneError, match="ends some sequences"):
        choose_pad_token(tokenizer, [[1, eos]], tokenizer.eos_token)
    # GPT-2 has one special token; when it ends sequences and nothing else is free, that is an error
    with pytest.raises(LlmtuneError, match="no special token"):
        choose_pad_token(tokenizer, [[1, eos]])


def test_choose_pad_token_moves_off_a_pad_that_ends_sequences(gpt2_tokenizer):
    from llmtune.data.templates import apply_template
    from llmtune.reward_model import choose_pad_token

    tokenizer = gpt2_tokenizer.__class__.from_pretrained(gpt2_tokenizer.name_or_path)
    apply_template(tokenizer, "chatml")  # adds <|im_start|>, <|im_end|>
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokenizer.pad_token = "<|im_end|>"
    pad, why = choose_pad_token(tokenizer, [[5, 6, im_end], [7, im_end]])
    assert pad != "<|im_end|>" and "ends sequences" in why
    assert tokenizer.convert_tokens_to_ids(pad) != im_end


# ------------------------------------------------------------------------------------------ long pairs
def test_long_answers_are_cut_keeping_the_prompt_and_the_end_of_turn(gpt2_tokenizer):
    from llmtune.data.reward_pairs import DROPPED_LONG, OK, PROMPT_CUT, TRUNCATED, answer_sequence
    from llmtune.data.templates import apply_template

    tokenizer = gpt2_tokenizer.__class__.from_pretrained(gpt2_tokenizer.name_or_path)
    apply_template(tokenizer, "chatml")
    prompt = [{"role": "user", "content": "Tell me a long story."}]
    answer = " ".join(f"word{i}" for i in range(200))
    full, status, length = answer_sequence(
        tokenizer, prompt, answer, where="x", max_length=4096, overlong="truncate"
    )
    assert status == OK and len(full) == length > 64
    cut, status, _ = answer_sequence(tokenizer, prompt, answer, where="x", max_length=64, overlong="truncate")
    assert status == TRUNCATED and len(cut) == 64
    prompt_ids = tokenizer(
        tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
        add_special_tokens=False,
    )["input_ids"]
    assert cut[: len(prompt_ids)] == prompt_ids  # the prompt whole
    closing = tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert cut[-len(closing) :] == closing == full[-len(closing) :]  # the end of turn put back after the cut
    assert cut[len(prompt_ids) : -len(closing)] == full[len(prompt_ids) : 64 - len(closing)]
    dropped, status, _ = answer_sequence(tokenizer, prompt, answer, where="x", max_length=64, overlong="drop")
    assert dropped is None and status == DROPPED_LONG
    long_prompt = [{"role": "user", "content": " ".join(f"q{i}" for i in range(300))}]
    cut, status, _ = answer_sequence(
        tokenizer, long_prompt, answer, where="x", max_length=64, overlong="truncate"
    )
    assert status == PROMPT_CUT and len(cut) == 64
    assert (
        cut[-len(closing) - 16 : -len(closing)] == full[len(prompt_ids) : len(prompt_ids) + 16]
    )  # a quarter kept


def test_question_response_rows_are_read_as_pairs(tmp_path):
    from llmtune.data.chat_dataset import load_examples
    from llmtune.recipe import ChatDataSection

    path = separable_pairs(tmp_path / "p.jsonl", n=5)
    examples, report = load_examples(ChatDataSection(train_files=[str(path)]), preference=True)
    assert report.formats[str(path)] == "question_preference"
    pair = examples["train"][0]
    row = json.loads(path.read_text().splitlines()[0])
    assert pair.prompt == [{"role": "user", "content": row["question"]}]
    assert (pair.chosen, pair.rejected) == (row["response_chosen"], row["response_rejected"])


# ------------------------------------------------------------------------------------------ training
def test_reward_model_learns_a_separable_set_and_loads_back(tmp_path, tiny_pretrained):
    from llmtune.reward_model import load_trained_reward_model, score_sequences
    from llmtune.stages import reward

    results = reward.run(load(reward_recipe(tmp_path, tiny_pretrained), tmp_path))
    assert results["eval_accuracy"] > 0.9
    assert results["eval_accuracy"] > results["eval_accuracy_before"]
    assert results["eval_margin"] > results["eval_margin_before"] + 1
    run = tmp_path / "run"
    saved = json.loads((run / "reward_eval.json").read_text())
    assert len(saved["after"]["scores"]) == results["eval_pairs"] == 16
    assert (run / "rewards.png").stat().st_size > 0
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]

    # base + adapter, loaded back, scores the held-out pairs as the run did
    model, tokenizer = load_trained_reward_model(run)
    from llmtune.data.chat_dataset import load_chat_data
    from llmtune.data.reward_pairs import tokenize_pairs

    recipe = load(reward_recipe(tmp_path, tiny_pretrained), tmp_path)
    examples, report = load_chat_data(tokenizer, recipe.data, preference=True)
    split = tokenize_pairs(tokenizer, examples, recipe.data, report)["validation"]
    scores = score_sequences(model, split["chosen_ids"], pad_token_id=tokenizer.pad_token_id)
    assert scores == pytest.approx([s["chosen"] for s in saved["after"]["scores"]], abs=1e-4)


def test_full_training_run_loads_with_from_pretrained(tmp_path, tiny_pretrained):
    from transformers import AutoModelForSequenceClassification

    from llmtune.stages import reward

    recipe = reward_recipe(tmp_path, tiny_pretrained, peft={"method": "none"}, train={"learning_rate": 1e-3})
    results = reward.run(load(recipe, tmp_path))
    assert results["eval_accuracy"] > 0.9
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run").eval()
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    saved = json.loads((tmp_path / "run" / "reward_eval.json").read_text())["after"]["scores"]
    from llmtune.reward_model import load_trained_reward_model

    loaded, tokenizer = load_trained_reward_model(tmp_path / "run")
    assert tokenizer.pad_token_id == model.config.pad_token_id
    assert isinstance(loaded, AutoModelForSequenceClassification._model_mapping[type(model.config)])
    assert len(saved) == 16


def test_long_pairs_are_kept_and_counted_not_dropped_by_trl(tmp_path, tiny_pretrained, write_recipe, cli):
    path = tmp_path / "long.jsonl"
    rows = [
        {
            "prompt": f"Question {i}?",
            "chosen": "yes " * (10 + 5 * i) + "good",
            "rejected": "no " * (10 + 5 * i) + "bad",
        }
        for i in range(12)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = reward_recipe(
        tmp_path, tiny_pretrained, data={"train_files": str(path), "max_length": 48}, train={"max_steps": 2}
    )
    check = cli("data", "check", "--recipe", str(write_recipe(recipe)), "-n", "0")
    assert check.exit_code == 0, check.stderr
    assert "truncated to 48" in check.stdout and "(reward)" in check.stdout
    result = cli("reward", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["examples"]["train"] + report["examples"]["validation"] == 12  # every pair kept
    assert report["truncated"]["train"] > 0


def test_reward_recipe_errors_name_the_key(tmp_path, tiny_pretrained, write_recipe, cli):
    recipe = reward_recipe(tmp_path, tiny_pretrained, train={"max_length": 128})
    result = cli("reward", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 2
    assert "train.max_length" in result.stderr and "data.max_length" in result.stderr
    assert "Traceback" not in result.stderr
    recipe = reward_recipe(tmp_path, tiny_pretrained, reward={"pad_token": "<nope>"})
    result = cli("reward", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 2 and "reward.pad_token" in result.stderr
    assert not (tmp_path / "run").exists()  # caught before the run folder or the model
