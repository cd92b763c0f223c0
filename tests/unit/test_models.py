"""Tokenizer and model construction: from config, from a folder, dtype rules, config-key checks."""

from __future__ import annotations

import json

import pytest
import torch

from llmtune.errors import LlmtuneError
from llmtune.hub import resolve_model
from llmtune.models import count_parameters, load_causal_lm, load_tokenizer, max_positions, resolve_dtype
from llmtune.recipe import ModelSection
from tests.conftest import GPT2_TOKENIZER, TINY_LLAMA


def test_gpt2_bpe_files_give_the_full_vocabulary(gpt2_tokenizer):
    # The transformers 5 trap: GPT2TokenizerFast(vocab_file=..., merges_file=...) builds an EMPTY tokenizer.
    expected = len(json.loads((GPT2_TOKENIZER / "encoder.json").read_text()))
    assert len(gpt2_tokenizer) == expected == 50257
    assert gpt2_tokenizer("Every effort moves you")["input_ids"] == [6109, 3626, 6100, 345]  # tiktoken "gpt2"
    assert gpt2_tokenizer.eos_token == "<|endoftext|>" and gpt2_tokenizer.pad_token == "<|endoftext|>"


def test_vocab_json_and_merges_txt_folder(tmp_path):
    (tmp_path / "vocab.json").write_bytes((GPT2_TOKENIZER / "encoder.json").read_bytes())
    (tmp_path / "merges.txt").write_bytes((GPT2_TOKENIZER / "vocab.bpe").read_bytes())
    tokenizer = load_tokenizer(
        ModelSection(from_config={"architecture": "gpt2"}, tokenizer=str(tmp_path)), None
    )
    assert len(tokenizer) == 50257


def test_tokenizer_folder_that_is_not_one(tmp_path):
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(LlmtuneError, match="cannot load a tokenizer from"):
        load_tokenizer(ModelSection(from_config={"architecture": "gpt2"}, tokenizer=str(tmp_path)), None)


def test_from_config_builds_the_requested_sizes(gpt2_tokenizer):
    section = ModelSection(from_config=dict(TINY_LLAMA), tokenizer=str(GPT2_TOKENIZER))
    model = load_causal_lm(section, None, gpt2_tokenizer)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == 50257 and model.config.eos_token_id == 50256
    assert model.dtype == torch.float32 and max_positions(model) == 128


def test_from_config_gpt2_untied_head_like_the_book(gpt2_tokenizer):
    sizes = {
        "architecture": "gpt2",
        "n_positions": 32,
        "n_embd": 32,
        "n_layer": 1,
        "n_head": 2,
        "tie_word_embeddings": False,
    }
    model = load_causal_lm(
        ModelSection(from_config=sizes, tokenizer=str(GPT2_TOKENIZER)), None, gpt2_tokenizer
    )
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    _, total = count_parameters(model)
    tied = load_causal_lm(
        ModelSection(from_config={**sizes, "tie_word_embeddings": True}, tokenizer=str(GPT2_TOKENIZER)),
        None,
        gpt2_tokenizer,
    )
    assert total - count_parameters(tied)[1] == 50257 * 32  # the separate output head


def test_from_config_typo_in_a_size_is_caught(gpt2_tokenizer):
    section = ModelSection(from_config={"architecture": "gpt2", "n_layers": 2}, tokenizer=str(GPT2_TOKENIZER))
    with pytest.raises(
        LlmtuneError, match=r"model.from_config.n_layers: not a GPT2Config setting, did you mean 'n_layer'\?"
    ):
        load_causal_lm(section, None, gpt2_tokenizer)


def test_from_config_unknown_architecture(gpt2_tokenizer):
    section = ModelSection(from_config={"architecture": "lama"}, tokenizer=str(GPT2_TOKENIZER))
    with pytest.raises(LlmtuneError, match=r"unknown architecture 'lama', did you mean 'llama'\?"):
        load_causal_lm(section, None, gpt2_tokenizer)


def test_pretrained_folder_loads_with_its_tokenizer(tiny_pretrained):
    section = ModelSection(name_or_path=str(tiny_pretrained))
    resolved = resolve_model(str(tiny_pretrained))
    tokenizer = load_tokenizer(section, resolved)
    model = load_causal_lm(section, resolved, tokenizer)
    assert len(tokenizer) == 50257 and model.config.hidden_size == 64


def test_embedding_grows_to_a_larger_tokenizer(tiny_pretrained, gpt2_tokenizer):
    section = ModelSection(name_or_path=str(tiny_pretrained))
    tokenizer = load_tokenizer(section, resolve_model(str(tiny_pretrained)))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|new|>"]})
    model = load_causal_lm(section, resolve_model(str(tiny_pretrained)), tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == 50258


def test_dtype_auto_is_float32_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16
