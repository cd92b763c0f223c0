"""`llmtune distill`: the loss against hand computations (and TRL's JSD), the intermediate-layer term, the
tokenizer check, the recipe's two data shapes, and tiny end-to-end runs on text and on conversations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import GPT2_TOKENIZER, TINY_LLAMA, VERDICT

STUDENT = {
    "architecture": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 128,
}


# ------------------------------------------------------------------------------------------ the loss
def test_divergences_are_zero_when_student_equals_teacher():
    from llmtune.distill.losses import token_divergence

    logits = torch.randn(3, 5, 11)
    for divergence in ("forward_kl", "reverse_kl", "jsd"):
        value = token_divergence(logits, logits.clone(), temperature=2.0, divergence=divergence, beta=0.3)
        assert value.shape == (3, 5)
        assert value.abs().max() < 1e-6, divergence


def test_forward_and_reverse_kl_match_a_hand_computation_at_a_temperature():
    from llmtune.distill.losses import token_divergence

    student = torch.tensor([[1.0, 2.0, 0.5]])
    teacher = torch.tensor([[0.0, 3.0, -1.0]])
    temperature = 2.0

    def softmax(values):
        exps = [math.exp(v / temperature) for v in values]
        return [e / sum(exps) for e in exps]

    p_s, p_t = softmax(student[0].tolist()), softmax(teacher[0].tolist())
    forward = sum(t * math.log(t / s) for s, t in zip(p_s, p_t, strict=True))
    reverse = sum(s * math.log(s / t) for s, t in zip(p_s, p_t, strict=True))
    got_forward = token_divergence(student, teacher, temperature=temperature, divergence="forward_kl")
    got_reverse = token_divergence(student, teacher, temperature=temperature, divergence="reverse_kl")
    assert float(got_forward[0]) == pytest.approx(forward, rel=1e-5)
    assert float(got_reverse[0]) == pytest.approx(reverse, rel=1e-5)
    assert forward != pytest.approx(reverse, rel=1e-3)  # the direction matters
    # the temperature is applied: at T=1 the same logits give another value
    at_one = token_divergence(student, teacher, temperature=1.0, divergence="forward_kl")
    assert float(at_one[0]) != pytest.approx(forward, rel=1e-3)


def test_jsd_equals_trls_generalized_jsd():
    pytest.importorskip("trl")
    from trl.experimental.gkd import GKDTrainer

    from llmtune.distill.losses import token_divergence

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 6, 17), torch.randn(2, 6, 17)
    labels = torch.randint(0, 17, (2, 6))
    labels[0, :2] = -100
    for beta in (0.1, 0.5, 0.9):
        theirs = GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta, temperature=1.5)
        mine = token_divergence(student, teacher, temperature=1.5, divergence="jsd", beta=beta)
        ours = mine[labels != -100].sum() / (labels != -100).sum()
        assert float(ours) == pytest.approx(float(theirs), rel=1e-5), beta


def test_distillation_sums_shift_mask_and_mix_with_t_squared():
    from llmtune.distill.losses import distillation_sums, mix, token_divergence

    torch.manual_seed(1)
    student, teacher = torch.randn(2, 5, 9), torch.randn(2, 5, 9)
    labels = torch.randint(0, 9, (2, 5))
    labels[1, :3] = -100  # a prompt: no loss on those targets
    sums = distillation_sums(student, teacher, labels, temperature=3.0, divergence="forward_kl", beta=0.5)
    targets, mask = labels[:, 1:], labels[:, 1:] != -100
    assert int(sums["tokens"]) == int(mask.sum()) == 6
    expected_ce = F.cross_entropy(
        student[:, :-1].reshape(-1, 9), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    assert float(sums["ce"]) == pytest.approx(float(expected_ce), rel=1e-5)
    expected_kd = token_divergence(student[:, :-1], teacher[:, :-1], temperature=3.0)[mask].sum()
    assert float(sums["kd"]) == pytest.approx(float(expected_kd), rel=1e-5)
    total = mix(sums, alpha=0.25, temperature=3.0)
    assert float(total) == pytest.approx(0.25 * 9 * float(expected_kd) + 0.75 * float(expected_ce), rel=1e-5)


def test_the_soft_target_gradient_keeps_its_scale_across_temperatures():
    """Hinton et al.: the KD gradient shrinks as 1/T^2; the T^2 factor restores it (for large T the scaled
    gradient tends to (z_s - z_t) / N for zero-mean logits)."""
    from llmtune.distill.losses import mix, token_divergence

    torch.manual_seed(2)
    teacher = torch.randn(1, 50) * 0.1
    norms = []
    for temperature in (5.0, 10.0, 20.0):
        student = (torch.randn(1, 50) * 0.1).requires_grad_(True)
        torch.manual_seed(3)
        kd = token_divergence(student, teacher, temperature=temperature).sum()
        mix({"kd": kd, "ce": torch.tensor(0.0)}, alpha=1.0, temperature=temperature).backward()
        norms.append(float(student.grad.norm()))
    assert max(norms) / min(norms) < 1.5  # without T^2 they would differ by 16x


# ------------------------------------------------------------------------------ intermediate layers
def test_layer_mapping_uniform_and_bounds():
    from llmtune.distill.hidden import layer_mapping
    from llmtune.errors import LlmtuneError

    assert layer_mapping("uniform", 2, 4) == {1: 2, 2: 4}
    assert layer_mapping({1: 3}, 2, 4) == {1: 3}
    with pytest.raises(LlmtuneError, match="student has 2 layers"):
        layer_mapping({3: 1}, 2, 4)


def test_the_hidden_state_term_trains_its_projection():
    from llmtune.distill.hidden import HiddenStateLoss

    torch.manual_seed(0)
    loss_fn = HiddenStateLoss({1: 2}, student_width=8, teacher_width=12)
    assert list(loss_fn.projections) == ["1_to_2"]
    mixing = torch.randn(8, 12)
    student_states = [torch.randn(2, 4, 8) for _ in range(2)]
    teacher_states = [torch.randn(2, 4, 12) for _ in range(2)] + [student_states[1] @ mixing]
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 3] = False
    start = loss_fn.projections["1_to_2"].weight.detach().clone()
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = loss_fn(student_states, teacher_states, mask)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0]
    assert not torch.equal(start, loss_fn.projections["1_to_2"].weight)
    # equal widths: no projection, the plain MSE summed over the counted positions
    plain = HiddenStateLoss({1: 1}, 8, 8)
    assert len(plain.projections) == 0
    value = plain(student_states, [None, student_states[1] + 1.0], mask)
    assert float(value) == pytest.approx(float(mask.sum()), rel=1e-6)


# ------------------------------------------------------------------------------------ tokenizers
def test_a_tokenizer_mismatch_names_the_first_differing_id(gpt2_tokenizer):
    from llmtune.distill.tokenizers import check_same_tokenizer
    from llmtune.errors import LlmtuneError

    check_same_tokenizer(gpt2_tokenizer, gpt2_tokenizer, student_name="s", teacher_name="t", text="Hello")
    from transformers import AutoTokenizer

    from tests.conftest import minilm_folder

    bert = AutoTokenizer.from_pretrained(minilm_folder())
    with pytest.raises(LlmtuneError, match=r"id 0 is '!' in the student's and '\[PAD\]' in the teacher's"):
        check_same_tokenizer(gpt2_tokenizer, bert, student_name="s", teacher_name="t")


# --------------------------------------------------------------------------------------- recipes
def _teacher(tmp_path: Path, tokenizer) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path / "teacher"
    torch.manual_seed(0)
    sizes = {k: v for k, v in TINY_LLAMA.items() if k != "architecture"}
    config = LlamaConfig(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, **sizes)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _text_recipe(tmp_path: Path, teacher: Path, **distill) -> dict:
    return {
        "teacher": {"name_or_path": str(teacher)},
        "model": {"from_config": dict(STUDENT), "tokenizer": str(GPT2_TOKENIZER)},
        "data": {
            "train_files": str(VERDICT),
            "txt_document": "file",
            "validation_split": 0.1,
            "split_by": "character",
            "block_size": 64,
        },
        "distill": {"alpha": 0.7, "temperature": 2.0, **distill},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 8,
            "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 4,
            "learning_rate": 3e-3,
            "logging_steps": 2,
            "eval_strategy": "steps",
            "eval_steps": 4,
            "save_strategy": "no",
            "seed": 0,
            "disable_tqdm": True,
            "report_to": "none",
        },
    }


def test_the_recipe_takes_text_or_chat_data(tmp_path, write_recipe):
    from llmtune.errors import LlmtuneError
    from llmtune.recipe import ChatDistillRecipe, DistillRecipe, load_recipe

    recipe = _text_recipe(tmp_path, tmp_path)
    text = load_recipe(write_recipe(recipe), "distill")
    assert type(text) is DistillRecipe and text.distill.data == "text"
    chat_data = {"train_files": str(VERDICT), "max_length": 128}
    chat = load_recipe(write_recipe({**recipe, "data": chat_data}), "distill")
    assert type(chat) is ChatDistillRecipe and chat.distill.data == "chat"
    # the data kind decides which keys are known
    with pytest.raises(LlmtuneError, match="block_size"):
        load_recipe(write_recipe(recipe), "distill", ["distill.data=chat"])
    with pytest.raises(LlmtuneError, match="alpha 0 with no hidden_layers"):
        load_recipe(write_recipe(recipe), "distill", ["distill.alpha=0"])
    with pytest.raises(LlmtuneError, match="temperature"):
        load_recipe(write_recipe(recipe), "distill", ["distill.temperature=0"])


def test_distill_on_text_trains_and_logs_each_term(tmp_path, write_recipe, cli, gpt2_tokenizer):
    teacher = _teacher(tmp_path, gpt2_tokenizer)
    recipe = _text_recipe(tmp_path, teacher, hidden_layers={1: 2}, hidden_weight=0.5)
    recipe["train"]["save_strategy"] = "steps"
    recipe["train"]["save_steps"] = 4
    result = cli("distill", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    train = [e for e in metrics["train"] if "ce_loss" in e]
    evals = [e for e in metrics["eval"] if "eval_ce_loss" in e]
    assert train and evals and len(evals) >= 2
    for entry in train:
        assert {"kd_loss", "hidden_loss", "loss"} <= set(entry)
    assert train[-1]["kd_loss"] < train[0]["kd_loss"]
    assert train[-1]["hidden_loss"] < train[0]["hidden_loss"]
    assert evals[-1]["eval_kd_loss"] < evals[0]["eval_kd_loss"]
    # the teacher's loss is the same at every evaluation (frozen)
    assert len({round(e["eval_teacher_loss"], 6) for e in evals}) == 1
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["inputs"]["teacher"]["path"] == str(teacher)
    assert (run / "loss.png").is_file()
    # the projection (student width 32 -> teacher 64) is trained and kept in the checkpoints, not the model
    from safetensors.torch import load_file

    projection = load_file(run / "checkpoint-8" / "distill_projections.safetensors")
    weight = projection["projections.1_to_2.weight"]
    start = torch.zeros(64, 32)
    start[:32, :32] = torch.eye(32)
    assert weight.shape == (64, 32) and not torch.allclose(weight, start)
    from transformers import AutoModelForCausalLM

    student, info = AutoModelForCausalLM.from_pretrained(run, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert student.config.num_hidden_layers == 1


@pytest.mark.parametrize("hidden", [None, {1: 2}])
def test_distill_resumes_exactly_with_its_projections(tmp_path, write_recipe, cli, gpt2_tokenizer, hidden):
    teacher = _teacher(tmp_path, gpt2_tokenizer)
    recipe = _text_recipe(tmp_path, teacher, **({"hidden_layers": hidden} if hidden else {}))
    recipe["train"].update(
        max_steps=6, save_strategy="steps", save_steps=3, eval_strategy="no", logging_steps=1
    )
    del recipe["train"]["eval_steps"]
    whole = cli("distill", "--recipe", str(write_recipe(recipe)))
    assert whole.exit_code == 0, whole.output
    uninterrupted = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]
    # the same run as if stopped after step 3: its folder with only checkpoint-3, resumed
    import shutil

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoint-6")
    recipe["train"]["output_dir"] = str(resumed_dir)
    again = cli("distill", "--recipe", str(write_recipe(recipe, "resume.yaml")), "--resume")
    assert again.exit_code == 0, again.output
    assert "Resuming from" in again.output or (resumed_dir / "checkpoint-6").is_dir()
    resumed = json.loads((resumed_dir / "metrics.json").read_text())["train"]
    last = {e["step"]: e for e in uninterrupted if "loss" in e}
    compared = 0
    for entry in resumed:
        if "loss" in entry and entry["step"] > 3:
            assert entry["loss"] == pytest.approx(last[entry["step"]]["loss"], rel=1e-5)
            if hidden:
                assert entry["hidden_loss"] == pytest.approx(last[entry["step"]]["hidden_loss"], rel=1e-5)
            compared += 1
    assert compared == 3


def test_distill_on_conversations_trains_on_answer_tokens(tmp_path, write_recipe, cli, gpt2_tokenizer):
    teacher = _teacher(tmp_path, gpt2_tokenizer)
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus one?" + " Think." * (i % 4)},
                {"role": "assistant", "content": f"{i + 1}."},
            ]
        }
        for i in range(40)
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recipe = _text_recipe(tmp_path, teacher, divergence="reverse_kl")
    recipe["data"] = {
        "train_files": str(data),
        "validation_split": 0.2,
        "max_length": 64,
        "template": "chatml",
    }
    recipe["train"].update(max_steps=6, eval_steps=3)
    result = cli("distill", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert "distill:\n  data: chat" in (run / "recipe.yaml").read_text()
    manifest = json.loads((run / "manifest.json").read_text())
    assert 0 < manifest["results"]["padding_share"] < 1
    evals = [e for e in json.loads((run / "metrics.json").read_text())["eval"] if "eval_kd_loss" in e]
    assert evals[-1]["eval_kd_loss"] < evals[0]["eval_kd_loss"]


def test_a_teacher_with_another_tokenizer_is_exit_2_before_any_model_loads(
    tmp_path, write_recipe, cli, gpt2_tokenizer
):
    from transformers import AutoTokenizer

    from tests.conftest import minilm_folder

    teacher = _teacher(tmp_path, gpt2_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (teacher / name).unlink(missing_ok=True)
    AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(teacher)
    result = cli("distill", "--recipe", str(write_recipe(_text_recipe(tmp_path, teacher))))
    assert result.exit_code == 2
    assert "different tokenizers: id 0 is '!'" in result.output
    assert not (tmp_path / "run").exists()


def test_on_policy_distillation_runs_through_trls_trainer(tmp_path, write_recipe, cli, gpt2_tokenizer):
    teacher = _teacher(tmp_path, gpt2_tokenizer)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"What is {i} plus one?"}) for i in range(16)) + "\n")
    recipe = _text_recipe(tmp_path, teacher, on_policy=True, alpha=1.0, divergence="jsd", beta=0.5)
    recipe["data"] = {"train_files": str(prompts), "template": "chatml"}
    recipe["train"] = {
        "output_dir": str(tmp_path / "run"),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "max_completion_length": 6,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "gradient_checkpointing": False,
    }
    path = write_recipe(recipe)
    from llmtune.recipe import OnPolicyDistillRecipe, load_recipe

    loaded = load_recipe(path, "distill")
    assert type(loaded) is OnPolicyDistillRecipe and loaded.distill.data == "prompts"
    result = cli("distill", "--recipe", str(path))
    assert result.exit_code == 0, result.output
    assert "on-policy, TRL DistillationTrainer, beta 0.5 (jsd)" in result.output
    run = tmp_path / "run"
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
    losses = [e["loss"] for e in json.loads((run / "metrics.json").read_text())["train"] if "loss" in e]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    # alpha < 1 has no meaning on-policy (no reference answers for a cross-entropy term)
    bad = cli("distill", "--recipe", str(path), "--set", "distill.alpha=0.5", "--overwrite")
    assert bad.exit_code == 2 and "set distill.alpha: 1" in bad.output
    planned = cli("plan", "--recipe", str(path))
    assert planned.exit_code == 2 and "on-policy distillation samples answers" in planned.output


def test_data_check_reads_chat_and_prompt_distill_recipes(tmp_path, write_recipe, cli, gpt2_tokenizer):
    teacher = _teacher(tmp_path, gpt2_tokenizer)
    chat = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": "A."}]}
        for i in range(4)
    ]
    chat.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recipe = _text_recipe(tmp_path, teacher)
    recipe["model"] = {"name_or_path": str(teacher)}
    recipe["data"] = {"train_files": str(chat), "max_length": 64, "template": "chatml"}
    result = cli("data", "check", "--recipe", str(write_recipe(recipe)), "-n", "1")
    assert result.exit_code == 0, result.output
    assert "(distill)" in result.stdout and "4 examples" in result.stdout
    recipe["distill"] = {"on_policy": True, "alpha": 1.0}
    recipe["data"] = {"train_files": str(chat), "template": "chatml"}
    result = cli("data", "check", "--recipe", str(write_recipe(recipe, "on.yaml")), "-n", "1")
    assert result.exit_code == 0, result.output
    assert "(distill, on-policy)" in result.stdout and "rewards" not in result.stdout
    text = _text_recipe(tmp_path, teacher)
    result = cli("data", "check", "--recipe", str(write_recipe(text, "text.yaml")))
    assert result.exit_code == 2 and "distils on raw text" in result.output
