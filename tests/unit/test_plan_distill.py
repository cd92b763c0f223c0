"""The planner for distill: the student planned as pretrain (text) or sft (chat) would plan it, plus the
frozen teacher (weights, a forward without gradients, its logits) and the distillation loss's fp32 logit
tensors; tiny models, the teacher's weights never loaded."""

from __future__ import annotations

import json

import pytest

from llmtune.errors import LlmtuneError
from llmtune.plan import estimate
from llmtune.plan.teacher import LOSS_FP32_TENSORS
from llmtune.recipe import PretrainRecipe, SftRecipe, load_recipe
from tests.conftest import TINY_LLAMA, tiny_pretrain_recipe

TEACHER_PARTS = ("teacher_weights", "teacher_activations", "teacher_logits", "distillation_logits")
BIG_TEACHER = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
BATCH, BLOCK = 4, 64  # tiny_pretrain_recipe's per_device_train_batch_size and data.block_size


def _saved_parameters(folder) -> int:
    """The parameters in a saved model's safetensors: what the stage would load, counted without the planner."""
    from safetensors import safe_open

    total = 0
    with safe_open(folder / "model.safetensors", "pt") as f:
        for key in f.keys():
            count = 1
            for size in f.get_slice(key).get_shape():
                count *= size
            total += count
    return total


@pytest.fixture(scope="module")
def big_teacher(tmp_path_factory, gpt2_tokenizer):
    """A config-only folder of a Llama twice as wide and deep as the tiny one (plan reads no weights)."""
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("big-teacher")
    LlamaConfig(vocab_size=len(gpt2_tokenizer), **BIG_TEACHER).save_pretrained(folder)
    return folder


@pytest.fixture
def distill_recipe(write_recipe, tmp_path, tiny_pretrained):
    """distill_recipe(teacher=folder, name=..., teacher_extra=..., model=..., data=..., distill=...) ->
    (recipe dict, its path): a from-config tiny Llama student on the-verdict in blocks, taught by `teacher`
    (default the saved tiny Llama); `model` and `data` replace their sections, `distill` is merged."""

    def make(teacher=None, name="distill.yaml", teacher_extra=None, model=None, data=None, distill=None):
        recipe = tiny_pretrain_recipe(
            tmp_path,
            teacher={"name_or_path": str(teacher or tiny_pretrained), **(teacher_extra or {})},
            distill={"alpha": 0.5, "temperature": 2.0, **(distill or {})},
        )
        recipe["model"] = model or recipe["model"]
        recipe["data"] = data or recipe["data"]
        return recipe, write_recipe(recipe, name)

    return make


def _tokens_and_vocab(plan) -> tuple[int, int]:
    return plan.training["micro_batch"] * plan.training["sequence_length"], plan.model["vocab_size"]


def _without(memory: dict, parts) -> dict:
    """`memory` without the total and `parts`: the student's parts."""
    return {k: v for k, v in memory.items() if k != "total" and k not in parts}


def _one_layer(plan, bytes_per_value: int) -> int:
    """Korthikanti's per-layer bytes of the teacher (34·s·b·h at 16 bits), with its attention scores
    (5·a·s/h) when the attention is eager."""
    t = plan.teacher
    scores = 0 if t["attention"] != "eager" else 5 * t["attention_heads"] * BLOCK / t["hidden_size"]
    return int(BLOCK * BATCH * t["hidden_size"] * (34 + scores) * bytes_per_value / 2)


@pytest.mark.parametrize(
    ("target", "teacher_dtype", "teacher_bytes"),
    [("cpu", "auto", 4), ("gpu", "auto", 2), ("gpu", "float32", 4)],
)
def test_teacher_lines_equal_hand_computed_bytes(
    distill_recipe, tiny_pretrained, target, teacher_dtype, teacher_bytes
):
    """auto is float32 on a CPU and bf16 on a GPU, as for the student; an explicit teacher.dtype wins."""
    _, path = distill_recipe(teacher_extra={"dtype": teacher_dtype})
    plan = estimate(load_recipe(path, "distill"), target=target, device_memory_bytes=2**40)
    assert plan.command == "distill"
    params = _saved_parameters(tiny_pretrained)
    assert plan.teacher["parameters"] == params
    assert plan.teacher["weight_dtype"] == {2: "bfloat16", 4: "float32"}[teacher_bytes]
    tokens, vocab = _tokens_and_vocab(plan)
    assert plan.training["sequence_length"] == BLOCK and tokens == BATCH * BLOCK
    m = plan.memory
    assert m["teacher_weights"] == params * teacher_bytes
    assert m["teacher_logits"] == tokens * vocab * teacher_bytes
    assert m["teacher_activations"] == _one_layer(plan, teacher_bytes)  # no hidden states kept
    # forward_kl holds 6 fp32 [B·T, V] at its peak, 2 of them already in "logits" (the student's
    # cross-entropy); plus the masked logits of both: the student's in fp32 (fp32 model on CPU; on a GPU
    # accelerate returns the autocast forward's outputs in fp32) and the teacher's in its dtype.
    assert LOSS_FP32_TENSORS["forward_kl"] == 6
    assert m["distillation_logits"] == 4 * tokens * vocab * 4 + tokens * vocab * (4 + teacher_bytes)
    assert "hidden_state_loss" not in m
    assert m["total"] == sum(v for k, v in m.items() if k != "total")


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_the_teacher_adds_exactly_its_terms_to_the_student_planned_as_pretrain(
    distill_recipe, write_recipe, tmp_path, target
):
    recipe, path = distill_recipe()
    distill = estimate(load_recipe(path, "distill"), target=target, device_memory_bytes=2**40)
    plain = {k: v for k, v in recipe.items() if k not in ("teacher", "distill")}
    pretrain = estimate(
        load_recipe(write_recipe(plain, "pretrain.yaml"), PretrainRecipe),
        target=target,
        device_memory_bytes=2**40,
    )
    teacher = {k: distill.memory[k] for k in TEACHER_PARTS}
    assert all(teacher.values())
    assert distill.memory["total"] - pretrain.memory["total"] == sum(teacher.values())
    # every student part is the pretrain plan's, and the teacher's parts are all that is added
    assert _without(distill.memory, teacher) == _without(pretrain.memory, {})
    assert distill.training["gradient_checkpointing"] is False  # the distill stage's default, as pretrain's
    # the teacher's forward is in the FLOPs; text steps per epoch need tokenising, as for pretrain
    assert distill.throughput["flops_per_step"] > pretrain.throughput["flops_per_step"]
    assert distill.throughput["steps_per_epoch"] is None


def test_the_chat_variant_uses_max_length_and_plans_the_student_as_sft(
    distill_recipe, write_recipe, tmp_path, tiny_pretrained
):
    rows = tmp_path / "chat.jsonl"
    rows.write_text(
        "".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(10))
    )
    data = {"train_files": str(rows), "max_length": 96}
    recipe, _ = distill_recipe(model={"name_or_path": str(tiny_pretrained)}, data=data)
    recipe["train"]["gradient_checkpointing"] = True
    plan = estimate(load_recipe(write_recipe(recipe, "chat.yaml"), "distill"), target="cpu")
    assert plan.teacher["data"] == "chat"
    assert plan.training["sequence_length"] == 96
    tokens, vocab = _tokens_and_vocab(plan)
    assert tokens == BATCH * 96
    assert plan.memory["teacher_logits"] == BATCH * 96 * vocab * 4
    assert plan.throughput["train_rows"] == 10  # rows counted in the file, as sft counts them
    sft_recipe = {k: v for k, v in recipe.items() if k not in ("teacher", "distill")}
    sft = estimate(load_recipe(write_recipe(sft_recipe, "sft.yaml"), SftRecipe), target="cpu")
    added = {k: plan.memory[k] for k in TEACHER_PARTS}
    assert _without(plan.memory, added) == _without(sft.memory, {})
    assert plan.memory["total"] - sft.memory["total"] == sum(added.values())


def test_a_bigger_teacher_raises_the_total(distill_recipe, tiny_pretrained, big_teacher):
    small = estimate(load_recipe(distill_recipe()[1], "distill"), target="cpu")
    big = estimate(load_recipe(distill_recipe(big_teacher, "big.yaml")[1], "distill"), target="cpu")
    assert big.teacher["parameters"] > small.teacher["parameters"] == _saved_parameters(tiny_pretrained)
    assert big.memory["total"] > small.memory["total"]
    grown = big.memory["teacher_weights"] - small.memory["teacher_weights"]
    assert grown == 4 * (big.teacher["parameters"] - small.teacher["parameters"])
    assert big.model == small.model  # the same student


def test_hidden_layers_keep_the_teachers_states_and_a_projection(distill_recipe, big_teacher):
    """Student width 64, teacher 128: one Linear(64 -> 128) per pair, trained in fp32 with AdamW (16 bytes
    a parameter), and the teacher's L + 1 hidden states kept through its forward."""
    path = distill_recipe(big_teacher, "hidden.yaml", distill={"hidden_layers": {1: 2, 2: 4}})[1]
    plan = estimate(load_recipe(path, "distill"), target="cpu")
    tokens = BATCH * BLOCK
    student, teacher = TINY_LLAMA["hidden_size"], BIG_TEACHER["hidden_size"]
    states = (BIG_TEACHER["num_hidden_layers"] + 1) * tokens * teacher * 4
    assert plan.memory["teacher_activations"] == _one_layer(plan, 4) + states
    pair = student * teacher * 16 + tokens * (teacher + student) * 4
    assert plan.memory["hidden_state_loss"] == 2 * pair
    uniform = distill_recipe(big_teacher, "uniform.yaml", distill={"hidden_layers": "uniform"})[1]
    assert estimate(load_recipe(uniform, "distill"), target="cpu").teacher["hidden_layer_pairs"] == 2


def test_jsd_holds_more_fp32_logits(distill_recipe):
    def plan(divergence):
        path = distill_recipe(None, f"{divergence}.yaml", distill={"divergence": divergence})[1]
        return estimate(load_recipe(path, "distill"), target="cpu")

    plans = {divergence: plan(divergence) for divergence in ("forward_kl", "reverse_kl", "jsd")}
    tokens, vocab = _tokens_and_vocab(plans["jsd"])
    assert (
        plans["forward_kl"].memory["distillation_logits"] == plans["reverse_kl"].memory["distillation_logits"]
    )
    extra = plans["jsd"].memory["distillation_logits"] - plans["forward_kl"].memory["distillation_logits"]
    assert extra == (12 - 6) * tokens * vocab * 4


def test_suggestions_offer_nothing_distill_refuses(write_recipe, tmp_path, tiny_pretrained, distill_recipe):
    """A pretrained student that fits nowhere: every change that lowers memory is listed. LoRA and QLoRA
    are; ZeRO-3 and its offload are not (each process keeps a whole teacher), though pretrain's plan of
    the same student offers them."""
    recipe, _ = distill_recipe(model={"name_or_path": str(tiny_pretrained)})
    path = write_recipe(recipe, "pretrained-student.yaml")
    plan = estimate(load_recipe(path, "distill"), device_memory_bytes=1)
    assert plan.fits is False and plan.suggestions
    offered = " ".join(" ".join(s.settings) for s in plan.suggestions)
    assert "peft.method=lora" in offered and "per_device_train_batch_size" in offered
    assert "zero3" not in offered and "qlora" in offered
    plain = {k: v for k, v in recipe.items() if k not in ("teacher", "distill")}
    pretrain = estimate(
        load_recipe(write_recipe(plain, "pretrain.yaml"), PretrainRecipe), device_memory_bytes=1
    )
    pretrain_offered = " ".join(" ".join(s.settings) for s in pretrain.suggestions)
    assert "zero3" in pretrain_offered and "qlora" in pretrain_offered
    for strategy in ("zero3", "zero3-offload", "fsdp"):
        with pytest.raises(LlmtuneError, match=f"strategy {strategy}: distill keeps a whole teacher"):
            estimate(load_recipe(path, "distill"), strategy=strategy, nproc=2)
    zero2 = estimate(load_recipe(path, "distill"), strategy="zero2", nproc=2, device_memory_bytes=2**40)
    assert zero2.memory["teacher_weights"] == plan.memory["teacher_weights"]  # never sharded


def test_plan_command_shows_and_counts_the_teacher(distill_recipe, cli):
    _, path = distill_recipe()
    shown = cli("plan", "--recipe", str(path), "--target", "cpu", "--device-memory", "8GB")
    assert shown.exit_code == 0, shown.stderr
    assert "(distill)" in shown.stdout and "fits" in shown.stdout
    for line in ("teacher weights", "teacher activations", "teacher logits", "distillation logits"):
        assert line in shown.stdout
    assert "  teacher   " in shown.stdout and "  student   " in shown.stdout
    as_json = cli("plan", "--recipe", str(path), "--target", "cpu", "--json")
    assert as_json.exit_code == 0, as_json.stderr
    plan = json.loads(as_json.stdout)
    assert plan["command"] == "distill"
    assert set(TEACHER_PARTS) <= set(plan["memory"]) and all(plan["memory"][k] > 0 for k in TEACHER_PARTS)
    assert plan["memory"]["total"] == sum(v for k, v in plan["memory"].items() if k != "total")
    assert plan["teacher"]["parameters"] * 4 == plan["memory"]["teacher_weights"]
    assert plan["teacher"]["divergence"] == "forward_kl" and plan["teacher"]["weight_dtype"] == "float32"
