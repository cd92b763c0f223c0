"""Integration: the real demo models (SmolLM2-135M-Instruct from its GGUF wheel, MiniLM-L6) on real data.

These use the user's $LLMTUNE_HOME, where scripts/setup.sh converted SmolLM2 once; a missing conversion
is done here (about 20 s) rather than skipped, so the suite proves the set-up path too.
"""

from __future__ import annotations

import json

import pytest
import torch

from llmtune.hub import resolve_model
from tests.conftest import REPO


@pytest.fixture(scope="module")
def smollm2():
    return resolve_model("smollm2-135m-instruct")


def test_converted_demo_matches_the_gguf_it_came_from(smollm2):
    """model.gguf_file loads the GGUF directly; the converted folder must give the same logits."""
    from transformers import AutoModelForCausalLM

    from llmtune.hub import DEMO_MODELS, wheel_path
    from llmtune.models import load_causal_lm, load_tokenizer
    from llmtune.recipe import ModelSection

    gguf = wheel_path(DEMO_MODELS["smollm2-135m-instruct"], "smollm2-135m-instruct")
    section = ModelSection(name_or_path=str(gguf.parent), gguf_file=gguf.name)
    resolved = resolve_model(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = load_tokenizer(section, resolved)
    from_gguf = load_causal_lm(section, resolved, tokenizer)
    converted = AutoModelForCausalLM.from_pretrained(smollm2.path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        assert torch.equal(from_gguf(**prompt).logits, converted(**prompt).logits)
    answer = converted.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, prompt["input_ids"].shape[1] :])
    assert (smollm2.path / "chat_template.jinja").exists() or "chat_template" in json.loads(
        (smollm2.path / "tokenizer_config.json").read_text()
    )


def test_smollm2_lora_continued_pretraining_learns_and_loads_back(tmp_path, cli, smollm2):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    result = cli(
        "pretrain",
        "--recipe",
        str(REPO / "recipes/pretrain/smollm2-135m-continued-lora.yaml"),
        "--set",
        f"train.output_dir={run}",
        "--set",
        "train.max_steps=4",
        "--set",
        "train.eval_steps=4",
        "--set",
        "data.block_size=128",
        "--set",
        "train.per_device_eval_batch_size=8",
        "--set",
        "train.save_strategy=no",
        "--set",
        "train.disable_tqdm=true",
    )
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["model"]["source"] == "demo"
    results = manifest["results"]
    assert results["eval_loss"] < results["eval_loss_first"]  # held-out loss fell in 4 steps
    base = AutoModelForCausalLM.from_pretrained(smollm2.path)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2.path), run)
    tokenizer = AutoTokenizer.from_pretrained(run)
    ids = tokenizer("The railways that could be built", return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(base(**ids).logits, tuned(**ids).logits, atol=1e-3)
    assert tokenizer.chat_template  # the run folder keeps the chat template for inference


def test_minilm_alias_is_a_loadable_bert():
    from transformers import AutoModel, AutoTokenizer

    resolved = resolve_model("minilm-l6")
    model = AutoModel.from_pretrained(resolved.path)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    assert model.config.model_type == "bert" and model.config.hidden_size == 384
    with torch.no_grad():
        out = model(**tokenizer("John lives in Berlin", return_tensors="pt")).last_hidden_state
    assert out.shape[-1] == 384
