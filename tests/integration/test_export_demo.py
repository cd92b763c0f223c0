"""`llmtune export` of the demo SmolLM2-135M-Instruct to Ollama q8_0 with the shipped recipe's settings: the
GGUF reads back with the source's tokenizer, SmolLM2's own chat template becomes a Modelfile TEMPLATE that
renders identically (its default system prompt included), and q8_0 costs under 2% perplexity."""

import json

from tests.conftest import REPO


def test_smollm2_exports_to_ollama_q8_0(tmp_path, cli):
    from gguf import GGUFReader

    out = tmp_path / "smollm2"
    result = cli(
        "export",
        "--recipe",
        str(REPO / "recipes" / "export" / "quickstart-ollama-q8_0.yaml"),
        "--model",
        "smollm2-135m-instruct",
        "--out",
        str(out),
        "--set",
        "samples.prompts=['What is the capital of France?', 'List three prime numbers.']",
        "--set",
        "samples.max_new_tokens=16",
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "export_report.json").read_text())
    assert report["type"] == "q8_0" and report["tokenizer"]["differing"] == 0
    assert report["perplexity_ratio"] < 1.02 and report["top1_agreement"] > 0.9
    assert 1.8 < report["compression_vs_f16"] < 1.95  # 8.5 bits per weight, norms in float32
    assert report["ollama"]["family"] == "smollm2"
    assert all(c["identical"] for c in report["ollama"]["template_check"])
    modelfile = (out / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "You are a helpful AI assistant named SmolLM, trained by Hugging Face" in modelfile
    fields = GGUFReader(out / report["files"][0]).fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.context_length"].contents() == 8192
    assert fields["tokenizer.chat_template"].contents().startswith("{% for message in messages %}")
