"""llmtune export on tiny random Llama, Qwen2 and GPT-2 models: every format written, read back by
transformers and compared with the source here as well (not only by the command's own check); refusals
of bad input write nothing; an export with a real defect fails its check and writes nothing."""

import json
from pathlib import Path

import pytest
import torch

VERDICT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "the-verdict" / "the-verdict.txt"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A byte-level BPE of 384 tokens trained on the-verdict, with ChatML's tokens and template: the
    export writes every token and merge, and a 50k vocabulary would make each test 10x slower."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import VERDICT as verdict

    bpe = ByteLevelBPETokenizer()
    bpe.train([str(verdict)], vocab_size=384, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


def _save_model(folder, tokenizer_folder, architecture: str, **overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    vocab = overrides.pop("vocab_size", len(tokenizer))
    torch.manual_seed(0)
    llama = {
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    config = {
        "llama": lambda: LlamaConfig(**llama, tie_word_embeddings=False, **overrides),
        "qwen2": lambda: Qwen2Config(**llama, tie_word_embeddings=True, **overrides),
        # 256 positions, not GPT-2's 1024: transformers' GGUF reader needs the context length handled
        "gpt2": lambda: GPT2Config(
            vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256, **overrides
        ),
    }[architecture]()
    model = AutoModelForCausalLM.from_config(config)
    with (
        torch.no_grad()
    ):  # random init is near zero: widen it so that rounding and mistakes show in the logits
        for name, param in model.named_parameters():
            if "norm" not in name and "ln_" not in name:
                param.normal_(0, 0.2 if param.dim() > 1 else 0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_tokenizer):
    return {
        arch: _save_model(tmp_path_factory.mktemp(f"tiny_{arch}"), tiny_tokenizer, arch)
        for arch in ("llama", "qwen2", "gpt2")
    }


def _export(cli, model, out, *args):
    return cli("export", "--model", str(model), "--out", str(out), *args)


def _report(out) -> dict:
    return json.loads((Path(out) / "export_report.json").read_text())


def _our_logits(folder, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def _gguf_logits(folder, filename, ids):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    if config.model_type == "gpt2":
        config.n_positions = config.n_ctx
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=filename, config=config, dtype=torch.float32
    )
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0]


# ------------------------------------------------------------------------------------------ GGUF
@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_gguf_export_reads_back_like_the_source(tiny_models, tmp_path, cli, architecture, quant):
    from transformers import AutoTokenizer

    from llmtune.export.check import LOGIT_BOUNDS

    out = tmp_path / "out"
    result = _export(cli, tiny_models[architecture], out, "--format", "gguf", "--quant", quant)
    assert result.exit_code == 0, result.stderr
    report = _report(out)
    gguf = out / report["files"][0]
    assert gguf.suffix == ".gguf" and gguf.stem.endswith(f"-{quant}")
    assert report["tokenizer"]["differing"] == 0 and not report["tokenizer"]["problems"]
    # our own reading: tokenizer ids and logits on a text of our own
    source_tok = AutoTokenizer.from_pretrained(tiny_models[architecture])
    reader_tok = AutoTokenizer.from_pretrained(out, gguf_file=gguf.name)
    text = (
        "I had always thought Jack Gisburn rather a cheap genius, 1234 times. <|im_start|>user\nhi<|im_end|>"
    )
    ids = source_tok(text)["input_ids"]
    assert reader_tok(text)["input_ids"] == ids
    assert reader_tok.chat_template == CHATML
    diff = float(
        (_gguf_logits(out, gguf.name, ids) - _our_logits(tiny_models[architecture], ids)).abs().max()
    )
    if quant in LOGIT_BOUNDS:
        assert diff <= LOGIT_BOUNDS[quant]
        assert report["max_abs_logit"] <= LOGIT_BOUNDS[quant]
    if quant == "f32":
        assert diff < 1e-4  # the same weights: the same function
    else:
        assert diff > 0  # rounded or quantised: not a copy of the source written as float32
    assert report["perplexity_ratio"] == pytest.approx(1.0, abs=0.05)
    assert report["greedy_identical"] + report["greedy_near_ties"] == report["greedy_checked"]
    from safetensors.torch import load_file

    weights = sum(t.numel() for t in load_file(tiny_models[architecture] / "model.safetensors").values())
    per_weight = {"f32": 4, "f16": 2, "q8_0": 34 / 32}[quant]  # bytes; q8_0: 32 weights + a scale per block
    assert report["file_bytes"] < per_weight * weights * 1.3 + 64_000  # + the tokenizer's metadata
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"
    assert not list(tmp_path.glob(".out.partial*"))


def test_low_bit_gguf_reports_answers_side_by_side(tiny_models, tmp_path, cli):
    out = tmp_path / "q4"
    result = _export(cli, tiny_models["llama"], out, "--format", "gguf", "--quant", "q4_0")
    assert result.exit_code == 0, result.stderr
    report = _report(out)
    assert report["answers_must_match"] is False
    assert all({"source", "export", "identical"} <= set(a) for a in report["answers"])
    assert report["perplexity_ratio"] > 1.0  # four bits cost something on random weights
    assert any("kept at q8_0" in n for n in report["notes"])
    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name for t in GGUFReader(out / report["files"][0]).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32"


def test_gguf_metadata_holds_what_llama_cpp_needs(tiny_models, tmp_path, cli):
    from gguf import GGUFReader

    out = tmp_path / "meta"
    assert _export(cli, tiny_models["qwen2"], out, "--format", "gguf", "--quant", "f16").exit_code == 0
    reader = GGUFReader(next(out.glob("*.gguf")))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.merges")}
    assert fields["general.architecture"] == "qwen2"
    assert fields["qwen2.context_length"] == 256 and fields["qwen2.block_count"] == 2
    assert fields["qwen2.attention.head_count_kv"] == 2 and fields["qwen2.rope.freq_base"] == 10000.0
    # transformers 5 loads a qwen2 folder's tokenizer as Qwen2Tokenizer, with Qwen2's split regex: the
    # pre-tokenizer written is the one the source tokenizer really applies
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "qwen2"
    assert fields["tokenizer.chat_template"] == CHATML
    tokens = fields["tokenizer.ggml.tokens"]
    assert tokens[fields["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    assert tokens[fields["tokenizer.ggml.bos_token_id"]] == "<|endoftext|>"
    assert fields["tokenizer.ggml.token_type"][tokens.index("<|im_start|>")] == 3  # CONTROL
    names = {t.name for t in reader.tensors}
    assert "blk.1.attn_q.bias" in names and "output.weight" not in names  # Qwen2 biases; tied head


def test_a_gguf_source_round_trips(tiny_models, tmp_path, cli):
    first = tmp_path / "first"
    assert _export(cli, tiny_models["llama"], first, "--format", "gguf", "--quant", "f32").exit_code == 0
    gguf = next(first.glob("*.gguf"))
    second = tmp_path / "second"
    result = _export(cli, gguf, second, "--format", "gguf", "--quant", "f32")
    assert result.exit_code == 0, result.stderr
    assert _report(second)["max_abs_logit"] < 1e-4


# ------------------------------------------------------------------------------------------ adapter
def test_an_adapter_run_is_merged_in_memory_and_exported(tiny_models, tmp_path, cli):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_models["llama"]
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    out = tmp_path / "out"
    result = _export(cli, adapter, out, "--format", "gguf", "--quant", "f32")
    assert result.exit_code == 0, result.stderr
    report = _report(out)
    assert report["source"]["kind"].startswith("adapter run")
    merged = model.merge_and_unload().eval()
    ids = AutoTokenizer.from_pretrained(base)("I had always thought Jack Gisburn")["input_ids"]
    with torch.no_grad():
        expected = merged(torch.tensor([ids])).logits[0]
    assert float((_gguf_logits(out, report["files"][0], ids) - expected).abs().max()) < 1e-4
    assert float((_our_logits(base, ids) - expected).abs().max()) > 0.01  # the adapter changed something


def test_an_adapter_whose_base_is_missing_is_refused(tiny_models, tmp_path, cli):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(tmp_path / "gone"), "r": 4})
    )
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    out = tmp_path / "out"
    result = _export(cli, adapter, out, "--format", "gguf")
    assert result.exit_code == 2
    assert "gone" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------------ bnb
@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("fmt", ["bnb-8bit", "bnb-4bit"])
def test_bitsandbytes_folder_loads_with_plain_from_pretrained(tiny_models, tmp_path, cli, fmt, architecture):
    from transformers import AutoModelForCausalLM

    out = tmp_path / fmt
    result = _export(cli, tiny_models[architecture], out, "--format", fmt)
    assert result.exit_code == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    assert config["quantization_config"]["load_in_4bit" if fmt == "bnb-4bit" else "load_in_8bit"] is True
    model = AutoModelForCausalLM.from_pretrained(out)
    kind = "Linear4bit" if fmt == "bnb-4bit" else "Linear8bitLt"
    quantized = [name for name, m in model.named_modules() if type(m).__name__ == kind]
    assert len(quantized) >= 2 * 4  # every attention and MLP projection of both layers
    assert not (out / ".float-source").exists()
    report = _report(out)
    # the linear layers shrink; the tiny model's embedding (most of it) stays float32 as in the source
    assert report["file_bytes"] < (tiny_models[architecture] / "model.safetensors").stat().st_size
    assert 1.0 - 0.05 < report["perplexity_ratio"] < 1.5
    assert report["tokenizer"]["differing"] == 0


# ------------------------------------------------------------------------------------------ refusals
def test_an_unsupported_architecture_is_refused_before_loading(tmp_path, tiny_tokenizer, cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer, OPTConfig

    folder = tmp_path / "opt"
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    AutoModelForCausalLM.from_config(
        OPTConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2
        )
    ).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not weights")  # refused before the weights are read
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    result = _export(cli, folder, out, "--format", "gguf")
    assert result.exit_code == 2
    assert "'opt'" in result.stderr and "llama" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "gguf", "--quant", "q4_K_M"], "q4_K_M"),
        (["--format", "bnb-4bit", "--quant", "q8_0"], "export.quant"),
        (["--format", "onnx"], "export.format"),
        (["--format", "gguf", "--ollama-template", "x.tmpl"], "ollama_template"),
    ],
)
def test_bad_flags_are_refused(tiny_models, tmp_path, cli, args, message):
    out = tmp_path / "out"
    result = _export(cli, tiny_models["llama"], out, *args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path, tiny_tokenizer, cli):
    folder = _save_model(tmp_path / "small", tiny_tokenizer, "llama", vocab_size=300)
    out = tmp_path / "out"
    result = _export(cli, folder, out, "--format", "gguf")
    assert result.exit_code == 2
    assert "384 tokens" in result.stderr and "300 rows" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_an_out_folder_with_files_is_refused_without_overwrite(tiny_models, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    result = _export(cli, tiny_models["llama"], out, "--format", "gguf")
    assert result.exit_code == 2
    assert (out / "mine.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    assert "Traceback" not in result.stderr


def test_overwrite_replaces_an_earlier_export_only_after_the_check(tiny_models, tmp_path, cli, monkeypatch):
    out = tmp_path / "out"
    assert _export(cli, tiny_models["llama"], out, "--format", "gguf", "--quant", "f16").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    _break_the_permutation(monkeypatch)
    result = _export(cli, tiny_models["llama"], out, "--format", "gguf", "--quant", "f16", "--overwrite")
    assert result.exit_code == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


# ------------------------------------------------------------------------------------------ the check
def _break_the_permutation(monkeypatch):
    """A writer that forgets llama.cpp's rotary permutation of q/k: a real bug a converter can have."""
    from llmtune.export import gguf_writer

    original = gguf_writer._tensor_data

    def unpermuted(state, hf_name, gguf_name, config, arch):
        if gguf_name.endswith("attn_q.weight"):
            return state[hf_name].detach().float().numpy()
        return original(state, hf_name, gguf_name, config, arch)

    monkeypatch.setattr(gguf_writer, "_tensor_data", unpermuted)


def test_an_export_with_a_wrong_tensor_fails_its_check_and_writes_nothing(
    tiny_models, tmp_path, cli, monkeypatch
):
    _break_the_permutation(monkeypatch)
    out = tmp_path / "out"
    result = _export(cli, tiny_models["llama"], out, "--format", "gguf", "--quant", "f32")
    assert result.exit_code == 1
    assert "logit" in result.stderr and "nothing was written" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_special_tokens_written_as_normal_text_fail_the_round_trip(tiny_models, tmp_path, cli, monkeypatch):
    """The classic GGUF tokenizer bug: <|im_start|> not marked as a control token, so a reader cuts it into
    pieces and the chat prompt is no longer what the model was trained on."""
    from llmtune.export import gguf_writer

    original = gguf_writer._token_list

    def all_normal(tokenizer, rows):
        import gguf

        tokens, types = original(tokenizer, rows)
        return tokens, [gguf.TokenType.NORMAL] * len(types)

    monkeypatch.setattr(gguf_writer, "_token_list", all_normal)
    out = tmp_path / "out"
    result = _export(cli, tiny_models["llama"], out, "--format", "gguf", "--quant", "f32")
    assert result.exit_code == 1
    assert "tokenizer differs" in result.stderr
    assert not out.exists()


def test_print_config_shows_the_resolved_recipe(tiny_models, cli):
    result = cli(
        "export", "--model", str(tiny_models["llama"]), "--format", "ollama", "--out", "x", "--print-config"
    )
    assert result.exit_code == 0
    assert "quant: q8_0" in result.stdout and "format: ollama" in result.stdout


# ------------------------------------------------------------------------------------------ Ollama
@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
def test_ollama_export_writes_a_modelfile_whose_template_renders_like_the_chat_template(
    tiny_models, tmp_path, cli, architecture
):
    out = tmp_path / "ollama"
    result = _export(
        cli,
        tiny_models[architecture],
        out,
        "--format",
        "ollama",
        "--quant",
        "q8_0",
        "--system",
        "Answer briefly.",
    )
    assert result.exit_code == 0, result.stderr
    report = _report(out)
    modelfile = (out / "Modelfile").read_text()
    gguf = report["files"][0]
    assert f"FROM ./{gguf}" in modelfile and (out / gguf).is_file()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """Answer briefly."""' in modelfile
    assert "<|im_start|>" in modelfile and "{{" in modelfile
    assert report["ollama"]["family"] == "chatml"
    checked = report["ollama"]["template_check"]
    assert checked and all(c["identical"] for c in checked)


def test_an_unknown_chat_template_is_refused_before_the_model_loads(tmp_path, tiny_tokenizer, cli):
    from transformers import AutoTokenizer

    folder = _save_model(tmp_path / "odd", tiny_tokenizer, "llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not weights")  # never read
    out = tmp_path / "out"
    result = _export(cli, folder, out, "--format", "ollama")
    assert result.exit_code == 2
    assert "--ollama-template" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_modelfile_template_that_renders_differently_fails_the_check(
    tiny_models, tmp_path, cli, monkeypatch
):
    from llmtune.export import ollama

    original = ollama.ollama_template

    def one_newline_short(*args, **kwargs):
        found = original(*args, **kwargs)
        found.template = found.template.replace("{{ .Content }}", "{{ .Content }}\n", 1)
        return found

    monkeypatch.setattr(ollama, "ollama_template", one_newline_short)
    out = tmp_path / "out"
    result = _export(cli, tiny_models["llama"], out, "--format", "ollama", "--quant", "f32")
    assert result.exit_code == 1
    assert "TEMPLATE renders" in result.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------------ llama.cpp
def test_verify_llama_cpp_without_the_package_says_how_to_install_it(tiny_models, tmp_path, cli, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else find_spec(name, *a)
    )
    out = tmp_path / "out"
    result = _export(cli, tiny_models["llama"], out, "--format", "gguf", "--verify", "llama-cpp")
    assert result.exit_code == 2
    assert "pip install llama-cpp-python" in result.stderr and not out.exists()


def test_verify_llama_cpp_reads_the_gguf_like_the_source(tiny_models, tmp_path, cli):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is an optional extra (a source build)")
    out = tmp_path / "out"
    result = _export(
        cli, tiny_models["llama"], out, "--format", "gguf", "--quant", "f32", "--verify", "llama-cpp"
    )
    assert result.exit_code == 0, result.stderr
    second = _report(out)["llama_cpp"]
    assert second["tokenizer_differing"] == 0
    # llama.cpp keeps its KV cache in f16 by default, so even an f32 file differs a little (0.014 measured)
    assert second["max_abs_top50_logprob"] < 0.1 and second["top1_agreement"] > 0.95


def test_a_system_prompt_a_modelfile_cannot_quote_is_refused_before_loading(
    tiny_models, tmp_path, cli, monkeypatch
):
    out = tmp_path / "out"
    from llmtune.stages import export as stage

    monkeypatch.setattr(stage, "load_source", lambda *a: pytest.fail("the model was loaded"))
    result = _export(cli, tiny_models["llama"], out, "--format", "ollama", "--system", 'Say """hi""".')
    assert result.exit_code == 2
    assert '"""' in result.stderr and not out.exists()


@pytest.mark.parametrize("phase", ["model", "write", "check"])
def test_a_failure_at_any_phase_leaves_the_earlier_export_intact(
    phase, tiny_models, tmp_path, cli, monkeypatch
):
    out = tmp_path / "out"
    assert _export(cli, tiny_models["llama"], out, "--format", "gguf", "--quant", "f16").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setenv("LLMTUNE_FAULT", f"{phase}:enospc")
    result = _export(cli, tiny_models["llama"], out, "--format", "gguf", "--quant", "q8_0", "--overwrite")
    assert result.exit_code != 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_logit_bound_can_be_set_and_is_enforced(tiny_models, tmp_path, cli):
    out = tmp_path / "out"
    result = _export(
        cli,
        tiny_models["qwen2"],
        out,
        "--format",
        "gguf",
        "--quant",
        "f16",
        "--set",
        "export.logit_bound=1e-9",
    )
    assert result.exit_code == 1
    assert "above the f16 bound 1e-09" in result.stderr and not out.exists()


def test_an_out_folder_inside_the_source_model_is_refused(tiny_models, tmp_path, cli):
    before = sorted(p.name for p in tiny_models["llama"].iterdir())
    result = _export(
        cli, tiny_models["llama"], tiny_models["llama"] / "gguf", "--format", "gguf", "--overwrite"
    )
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tiny_models["llama"].iterdir()) == before


def test_missing_flags_are_named(cli):
    result = cli("export", "--format", "gguf")
    assert result.exit_code == 2
    assert "needs --model, --out" in result.stderr and "Traceback" not in result.stderr
