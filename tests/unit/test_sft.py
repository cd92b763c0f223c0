"""sft end to end on a tiny random Llama (GPT-2 tokenizer + built-in chatml template), every PEFT method,
packing, and the dataset doctor."""

import json

import pytest

from tests.conftest import REPO

QA = REPO / "recipes" / "data" / "llmtune-qa.jsonl"
HELD_OUT = REPO / "recipes" / "data" / "llmtune-qa-heldout.jsonl"


def sft_recipe(tmp_path, model_dir, **sections) -> dict:
    recipe = {
        "model": {"name_or_path": str(model_dir)},
        "data": {
            "train_files": str(QA),
            "validation_files": str(HELD_OUT),
            "template": "chatml",
            "max_length": 128,
            "max_samples": 32,
        },
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 6,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 8,
            "learning_rate": 5e-3,
            "logging_steps": 1,
            "eval_strategy": "no",
            "save_strategy": "no",
            "seed": 0,
            "disable_tqdm": True,
            "report_to": "none",
            "gradient_checkpointing": False,
        },
    }
    for name, values in sections.items():
        recipe[name] = {**recipe.get(name, {}), **values}
    return recipe


def test_sft_trains_saves_template_and_reports(tmp_path, tiny_pretrained, write_recipe, cli):
    path = write_recipe(sft_recipe(tmp_path, tiny_pretrained, peft={"method": "lora", "r": 4}))
    result = cli("sft", "--recipe", str(path))
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    results = manifest["results"]
    assert manifest["status"] == "completed"
    assert results["eval_loss"] < results["eval_loss_first"]  # eval on start, and at the end
    metrics = json.loads((run / "metrics.json").read_text())
    losses = [row["loss"] for row in metrics["train"]]
    assert losses[-1] < losses[0]
    assert (run / "adapter_model.safetensors").is_file() and (run / "loss.png").is_file()
    saved = json.loads((run / "tokenizer_config.json").read_text())
    template = saved.get("chat_template") or (run / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template  # inference renders prompts as training did
    report = json.loads((run / "data_report.json").read_text())
    assert report["formats"][str(QA)] == "messages" and report["examples"]["train"] == 32
    assert "format messages (detected)" in result.stderr


@pytest.mark.slow  # two full epochs
def test_packing_trains_the_same_tokens_with_fewer_rows(tmp_path, tiny_pretrained):
    """Packed (bfd, padding-free) and unpacked runs see the same real tokens; packed needs fewer steps
    per epoch, and its first loss (same weights, different batching) is close to the unpacked one."""
    from llmtune.recipe import SftRecipe
    from llmtune.stages import sft

    results = {}
    for packing in (False, True):
        recipe = SftRecipe.model_validate(
            sft_recipe(
                tmp_path / str(packing),
                tiny_pretrained,
                data={"packing": packing},
                train={"max_steps": -1, "num_train_epochs": 1, "per_device_train_batch_size": 4},
            )
        )
        results[packing] = sft.run(recipe)
    assert results[True]["train_tokens"] == results[False]["train_tokens"]
    assert results[True]["global_step"] < results[False]["global_step"]
    metrics = {p: json.loads((tmp_path / str(p) / "run" / "metrics.json").read_text()) for p in results}
    first = {p: m["train"][0]["loss"] for p, m in metrics.items()}
    assert abs(first[True] - first[False]) < 0.5  # packed attention does not cross examples


PEFT_METHODS = {
    "lora": {"method": "lora", "r": 4},
    "dora": {"method": "dora", "r": 4},
    "rslora": {"method": "lora", "r": 4, "use_rslora": True},
    "qlora": {"method": "qlora", "r": 4},
    "prompt_tuning": {"method": "prompt_tuning", "num_virtual_tokens": 4},
    "prefix_tuning": {"method": "prefix_tuning", "num_virtual_tokens": 4},
    "p_tuning": {"method": "p_tuning", "num_virtual_tokens": 4, "encoder_hidden_size": 32},
    "ia3": {
        "method": "ia3",
        "target_modules": ["k_proj", "v_proj", "down_proj"],
        "feedforward_modules": ["down_proj"],
    },
    "freeze": {"method": "freeze", "trainable_last_layers": 1},
}


# The fast tier trains QLoRA, prompt tuning, IA3 and freeze here (LoRA trains in the golden and pretrain
# tests); LoRA itself and the variants of a family (DoRA, rsLoRA; prefix tuning, P-tuning) in the full suite.
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.slow)
        if name in ("lora", "dora", "rslora", "prefix_tuning", "p_tuning")
        else name
        for name in PEFT_METHODS
    ],
)
def test_every_peft_method_trains_only_its_parameters(name, tmp_path, tiny_pretrained, gpt2_tokenizer):
    import copy

    import torch
    from trl import SFTConfig, SFTTrainer

    from llmtune.adapters import apply_peft, describe_trainable, quantization_config
    from llmtune.data.chat_dataset import load_examples, tokenize_examples
    from llmtune.data.templates import apply_template
    from llmtune.models import load_causal_lm, resolve_model_source
    from llmtune.recipe import SftRecipe

    recipe = SftRecipe.model_validate(sft_recipe(tmp_path, tiny_pretrained, peft=PEFT_METHODS[name]))
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    apply_template(tokenizer, "chatml")
    examples, report = load_examples(recipe.data, preference=False)
    datasets = tokenize_examples(tokenizer, examples, recipe.data, report)
    torch.manual_seed(0)
    model = load_causal_lm(
        recipe.model,
        resolve_model_source(recipe.model),
        tokenizer,
        quantization=quantization_config(recipe.peft, torch.float32),
    )
    model = apply_peft(model, recipe.peft, tokenizer_path=str(tiny_pretrained))
    print(name, describe_trainable(model))
    before = {n: p.detach().clone().float() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert 0 < len(trainable) < len(before)
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        max_length=128,
        gradient_checkpointing=False,
        disable_tqdm=True,
    )
    SFTTrainer(model=model, args=args, train_dataset=datasets["train"], processing_class=tokenizer).train()
    after = {n: p.detach().float() for n, p in model.named_parameters()}
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= trainable, sorted(changed - trainable)[:3]


def test_qlora_layers_are_4bit(tmp_path, tiny_pretrained, gpt2_tokenizer):
    import torch

    from llmtune.adapters import quantization_config
    from llmtune.models import load_causal_lm, resolve_model_source
    from llmtune.recipe import SftRecipe

    recipe = SftRecipe.model_validate(sft_recipe(tmp_path, tiny_pretrained, peft=PEFT_METHODS["qlora"]))
    model = load_causal_lm(
        recipe.model,
        resolve_model_source(recipe.model),
        gpt2_tokenizer,
        quantization=quantization_config(recipe.peft, torch.float32),
    )
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds


def test_packing_with_prompt_tuning_is_refused(tmp_path, tiny_pretrained, write_recipe, cli):
    path = write_recipe(
        sft_recipe(tmp_path, tiny_pretrained, data={"packing": True}, peft=PEFT_METHODS["prompt_tuning"])
    )
    result = cli("sft", "--recipe", str(path))
    assert result.exit_code == 2 and "data.packing with peft.method prompt_tuning" in result.stderr


def test_train_key_owned_by_data_section_is_refused(tmp_path, tiny_pretrained, write_recipe, cli):
    path = write_recipe(sft_recipe(tmp_path, tiny_pretrained, train={"max_length": 64}))
    result = cli("sft", "--recipe", str(path))
    assert result.exit_code == 2 and "train.max_length is set by the data section" in result.stderr


def test_data_check_reports_and_marks_trained_tokens(tmp_path, tiny_pretrained, write_recipe, cli):
    path = write_recipe(sft_recipe(tmp_path, tiny_pretrained))
    result = cli("data", "check", "--recipe", str(path), "--samples", "1")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "format messages (detected)" in out
    assert "tokens per example: min" in out and "p95" in out
    assert "without packing" in out and "padding-free" in out
    assert "<|im_start|>assistant\n[[llmtune is a command-line toolkit" in out
    assert "<|im_end|>\n]]" in out
    assert not (tmp_path / "run").exists()  # a check never writes a run


def test_data_check_on_a_dpo_recipe(tmp_path, tiny_pretrained, write_recipe, cli):
    from tests.conftest import SHARED_DATA

    recipe = sft_recipe(tmp_path, tiny_pretrained)
    recipe["data"] = {
        "train_files": str(SHARED_DATA / "medicalgpt" / "reward" / "dpo_zh_500.jsonl"),
        "template": "chatml",
        "max_length": 512,
        "max_samples": 20,
    }
    recipe["dpo"] = {"beta": 0.1}
    result = cli("data", "check", "--recipe", str(write_recipe(recipe)), "-n", "1")
    assert result.exit_code == 0, result.stderr
    assert "format sharegpt_preference (detected)" in result.stdout
    assert "answers longer than data.max_length 512" in result.stdout
    assert "[[chosen: " in result.stdout
