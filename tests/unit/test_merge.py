"""llmtune merge on tiny models: merged == adapter, the resized vocabulary, QLoRA, refusals, --out safety,
and a merge that loses its adapter is caught."""

import json

import pytest
import torch

from tests.unit.test_sft import sft_recipe


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_pretrained):
    """A tiny LoRA sft run with the chatml template, which adds 2 tokens to the GPT-2 tokenizer."""
    return _train(tmp_path_factory.mktemp("lora"), tiny_pretrained, {"method": "lora", "r": 4})


def _train(folder, base, peft):
    import yaml
    from typer.testing import CliRunner

    from llmtune.cli import app

    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(sft_recipe(folder, base, peft=peft)))
    result = CliRunner().invoke(app, ["sft", "--recipe", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return folder / "run"


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_merged_model_equals_the_adapter_and_keeps_the_resized_vocabulary(lora_run, tmp_path, cli):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    result = cli("merge", "--adapter", str(lora_run), "--out", str(out))
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "merge_report.json").read_text())
    assert report["merged_vs_adapter_max_abs_logit_fp32"] <= 1e-4
    assert report["greedy_identical"] == report["greedy_checked"] == 4
    assert report["prompts"] == "the first training conversations"
    assert report["adapter_effect_max_abs_logit"] > 1e-3  # the adapter did change the model

    # Independently of the command: plain from_pretrained on both sides.
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tokenizer.chat_template  # the template used in training travels along
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.get_input_embeddings().weight.shape[0] == len(tokenizer) == 50257 + 2
    base_folder = json.loads((lora_run / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_folder)
    base.resize_token_embeddings(len(tokenizer))
    adapter = PeftModel.from_pretrained(base, str(lora_run)).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is llmtune?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    assert torch.allclose(_logits(merged, ids), _logits(adapter, ids), atol=1e-4, rtol=0)
    # The added tokens' rows are the trained run's (saved in the adapter), not a fresh random init.
    saved = load_file(str(lora_run / "adapter_model.safetensors"))
    rows = next(v for k, v in saved.items() if "embed_tokens" in k)
    assert torch.equal(merged.get_input_embeddings().weight[-2:], rows[-2:])
    assert sorted(json.loads((out / "generation_config.json").read_text())["eos_token_id"]) == sorted(
        {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    )


def test_bfloat16_merge_saves_bfloat16_and_reports_the_rounding(lora_run, tmp_path, cli):
    from safetensors import safe_open

    out = tmp_path / "merged-bf16"
    result = cli("merge", "--adapter", str(lora_run), "--out", str(out), "--dtype", "bfloat16")
    assert result.exit_code == 0, result.stderr
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    report = json.loads((out / "merge_report.json").read_text())
    assert report["merged_vs_adapter_max_abs_logit_fp32"] <= 1e-4  # the merge itself is checked in fp32
    assert 0 < report["saved_vs_adapter_max_abs_logit"] < 0.5


def test_a_merge_that_loses_the_adapter_fails_and_writes_nothing(lora_run, tmp_path, cli, monkeypatch):
    from llmtune.stages import merge

    monkeypatch.setattr(merge, "_merge_in_float64", lambda model: model.unload())  # drops the LoRA
    out = tmp_path / "merged"
    result = cli("merge", "--adapter", str(lora_run), "--out", str(out))
    assert result.exit_code == 1
    assert "differ from the adapter model's" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no staging folder left behind


def test_out_is_protected_and_replaced_only_with_overwrite(lora_run, tmp_path, cli):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # a folder llmtune did not make is never replaced, not even with --overwrite
    for flags in ((), ("--overwrite",)):
        result = cli("merge", "--adapter", str(lora_run), "--out", str(out), *flags)
        assert result.exit_code == 2 and "not a folder llmtune made" in result.stderr, result.stderr
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "manifest.json").write_text('{"command": "merge", "status": "completed"}')  # an older merge
    result = cli("merge", "--adapter", str(lora_run), "--out", str(out))
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    result = cli("merge", "--adapter", str(lora_run), "--out", str(out), "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_an_untrained_adapter_is_refused(tiny_pretrained, tmp_path, cli):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_pretrained), LoraConfig(r=2))
    model.save_pretrained(tmp_path / "adapter")  # lora_B is zero: the adapter changes nothing
    result = cli("merge", "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "changes no logit" in result.stderr
    assert not (tmp_path / "out").exists()


def test_prompt_tuning_adapter_cannot_be_merged(tiny_pretrained, tmp_path, cli):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_pretrained), config).save_pretrained(
        tmp_path / "adapter"
    )
    result = cli("merge", "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "prompt tuning adapter (PROMPT_TUNING)" in result.stderr and "nothing to merge" in result.stderr


@pytest.mark.slow  # a QLoRA run, then a merge
def test_qlora_adapter_merges_into_the_dequantised_base(tmp_path, tiny_pretrained, cli):
    run = _train(tmp_path, tiny_pretrained, {"method": "qlora", "r": 4})
    out = tmp_path / "merged"
    result = cli("merge", "--adapter", str(run), "--out", str(out))
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "merge_report.json").read_text())
    assert report["method"] == "qlora" and "de-quantised" in report["notes"][0]
    assert report["saved_vs_adapter_max_abs_logit"] <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # a plain model, loadable without bitsandbytes


def test_not_an_adapter_folder(tiny_pretrained, tmp_path, cli):
    result = cli("merge", "--adapter", str(tiny_pretrained), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "no adapter_config.json" in result.stderr
