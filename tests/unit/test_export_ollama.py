"""The Ollama Modelfile's TEMPLATE must render what the trained Jinja chat template renders, byte for byte.

Real tokenizers (GPT-2 from ../shared/data with llmtune's built-in templates added, and SmolLM2-Instruct's own
from the llmtune cache), no model weights. Expected Go outputs in the renderer tests were produced by Go
1.19's text/template and by ollama's template/testdata.
"""

from __future__ import annotations

import copy
import logging
import re

import pytest

from llmtune.data.templates import CHATML, apply_template
from llmtune.errors import LlmtuneError
from llmtune.export.ollama import (
    ALPACA_SYSTEM,
    PROBES,
    QWEN_SYSTEM,
    SMOLLM2_SYSTEM,
    GoTemplateError,
    OllamaTemplate,
    check_template,
    modelfile_text,
    ollama_template,
    render_go_template,
)
from tests.conftest import REAL_HOME

SMOLLM2_FOLDER = REAL_HOME / "models" / "smollm2-135m-instruct"

# Qwen2.5-Instruct's template as published (tools branch included).
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
# Meta-Llama-3-Instruct's template as published (BOS glued to the first message).
LLAMA3_META = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' "
    "+ message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# The part of Llama 3.1's template that writes a dated system block into every prompt.
LLAMA31 = (
    "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] "
    "+ '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
# ChatML with some other default system prompt (one of the shapes in ollama's template/index.json).
CHATML_OWN_DEFAULT = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# ollama's template/chatml.gotmpl and llama3-instruct.gotmpl, and their testdata conversation.
OLLAMA_CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
OLLAMA_LLAMA3 = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
OLLAMA_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello, how are you?"},
    {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    {"role": "user", "content": "I'd like to show off how chat templating works!"},
]


@pytest.fixture(scope="module")
def _gpt2_with_template_tokens(gpt2_tokenizer):
    """A copy of the session's GPT-2 tokenizer holding every built-in template's tokens (added once)."""
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    for name in ("chatml", "llama3"):
        apply_template(tokenizer, name)
    return tokenizer


@pytest.fixture
def gpt2(_gpt2_with_template_tokens):
    """GPT-2 with no chat template (a base model); tests set one with apply_template."""
    tokenizer = _gpt2_with_template_tokens
    tokenizer.chat_template = None
    yield tokenizer
    tokenizer.chat_template = None


@pytest.fixture(scope="module")
def smollm2():
    if not (SMOLLM2_FOLDER / "tokenizer.json").exists():
        pytest.skip(f"SmolLM2-Instruct's tokenizer is not in the llmtune cache ({SMOLLM2_FOLDER})")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SMOLLM2_FOLDER)


def with_template(tokenizer, name: str) -> str:
    apply_template(tokenizer, name)
    return tokenizer.chat_template


def assert_identical(results: list[dict]) -> None:
    assert [r["conversation"] for r in results] == list(PROBES)
    for r in results:
        assert r["identical"], f"{r['conversation']}:\njinja:  {r['jinja']!r}\nollama: {r['ollama']!r}"
        assert r["jinja"] == r["ollama"]


@pytest.mark.parametrize(
    ("name", "default_system", "adds_bos"),
    [
        ("chatml", None, False),
        ("qwen", QWEN_SYSTEM, False),
        ("llama3", None, True),
        ("alpaca", ALPACA_SYSTEM, False),
    ],
)
def test_each_built_in_family_is_detected_and_its_go_template_renders_like_jinja(
    gpt2, name, default_system, adds_bos
):
    chat_template = with_template(gpt2, name)
    tmpl = ollama_template(chat_template, gpt2)
    assert tmpl.family == name
    assert (tmpl.default_system, tmpl.adds_bos) == (default_system, adds_bos)
    assert_identical(check_template(tmpl, chat_template, gpt2))
    assert_identical(check_template(tmpl, chat_template, gpt2, system="Recipe system prompt."))


@pytest.mark.parametrize(
    ("name", "stop"),
    [
        ("chatml", ["<|im_end|>"]),
        ("qwen", ["<|im_end|>"]),
        ("llama3", ["<|eot_id|>"]),
        ("alpaca", ["<|endoftext|>", "### Instruction:"]),  # alpaca writes EOS after each answer
    ],
)
def test_stop_tokens_per_family(gpt2, name, stop):
    assert ollama_template(with_template(gpt2, name), gpt2).stop == stop


def test_smollm2_own_template_inserts_its_default_system_and_a_given_one_replaces_it(smollm2):
    tmpl = ollama_template(smollm2.chat_template, smollm2)
    assert (tmpl.family, tmpl.default_system, tmpl.stop) == ("smollm2", SMOLLM2_SYSTEM, ["<|im_end|>"])
    # SmolLM2's BOS token is <|im_start|>, which the template writes as text: that is not a BOS to strip.
    assert smollm2.bos_token == "<|im_start|>" and tmpl.adds_bos is False
    results = {r["conversation"]: r for r in check_template(tmpl, smollm2.chat_template, smollm2)}
    assert_identical(list(results.values()))
    assert results["user"]["ollama"] == (
        f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nHello! What is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    given = results["system-user"]["ollama"]
    assert (
        given.startswith("<|im_start|>system\nYou are a careful assistant.") and SMOLLM2_SYSTEM not in given
    )


def test_the_quickstart_run_template_is_smollm2(smollm2):
    from tests.conftest import REPO

    saved = REPO / "runs" / "quickstart" / "chat_template.jinja"
    if not saved.exists():
        pytest.skip(f"no quickstart run at {saved}")
    tmpl = ollama_template(saved.read_text(encoding="utf-8"), smollm2)
    assert tmpl.family == "smollm2"
    assert_identical(check_template(tmpl, saved.read_text(encoding="utf-8"), smollm2))


def test_a_recipe_system_prompt_reaches_both_renderings_as_ollama_applies_SYSTEM(smollm2, gpt2):
    system = "You are a pirate. Say arr."
    tmpl = ollama_template(smollm2.chat_template, smollm2)
    results = {
        r["conversation"]: r for r in check_template(tmpl, smollm2.chat_template, smollm2, system=system)
    }
    assert_identical(list(results.values()))
    assert results["user"]["ollama"].startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
    assert SMOLLM2_SYSTEM not in results["user"]["ollama"]
    # A conversation that brings its own system message keeps it (Ollama prepends SYSTEM only when none leads).
    assert system not in results["system-user"]["ollama"]
    alpaca = with_template(gpt2, "alpaca")
    out = {
        r["conversation"]: r
        for r in check_template(ollama_template(alpaca, gpt2), alpaca, gpt2, system=system)
    }
    assert_identical(list(out.values()))
    assert out["user"]["ollama"].startswith(f"{system}\n\n### Instruction:\n")


def test_real_qwen25_and_llama3_templates_are_recognised(gpt2):
    apply_template(gpt2, "qwen")
    qwen = ollama_template(QWEN25, gpt2)
    assert (qwen.family, qwen.default_system) == ("qwen", QWEN_SYSTEM)
    assert_identical(check_template(qwen, QWEN25, gpt2))
    apply_template(gpt2, "llama3")
    llama = ollama_template(LLAMA3_META, gpt2)
    assert (llama.family, llama.adds_bos) == ("llama3", True)
    assert_identical(check_template(llama, LLAMA3_META, gpt2))


@pytest.mark.parametrize("default", ["You are a helpful assistant.", 'Reply in {{ JSON }}: "ok" or {'])
def test_a_chatml_template_with_its_own_default_system_carries_it(gpt2, default):
    apply_template(gpt2, "chatml")
    chat_template = CHATML_OWN_DEFAULT.replace("You are a helpful assistant.", default.replace("'", "\\'"))
    tmpl = ollama_template(chat_template, gpt2)
    assert (tmpl.family, tmpl.default_system) == ("chatml", default)
    assert_identical(check_template(tmpl, chat_template, gpt2))
    assert_identical(check_template(tmpl, chat_template, gpt2, system="Given."))


def test_bos_written_by_jinja_is_left_to_the_runtime(gpt2):
    chat_template = with_template(gpt2, "llama3")
    tmpl = ollama_template(chat_template, gpt2)
    plain = gpt2.apply_chat_template(PROBES["user"], tokenize=False, add_generation_prompt=True)
    assert plain.startswith("<|endoftext|><|start_header_id|>")  # GPT-2's BOS text
    result = check_template(tmpl, chat_template, gpt2)[0]
    assert result["identical"] and result["jinja"] == plain[len("<|endoftext|>") :]
    assert not result["ollama"].startswith("<|endoftext|>") and "bos" not in tmpl.template.lower()
    # ChatML that starts with BOS is still ChatML; the exporter learns to set add_bos_token.
    apply_template(gpt2, "chatml")
    bos_chatml = ollama_template("{{ bos_token }}" + CHATML, gpt2)
    assert (bos_chatml.family, bos_chatml.adds_bos) == ("chatml", True)
    assert_identical(check_template(bos_chatml, "{{ bos_token }}" + CHATML, gpt2))


def test_tool_messages_render_alike_for_llama3_and_alpaca(gpt2):
    conversation = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Checking."},
        {"role": "tool", "content": "sunny, 21C"},
    ]
    for name in ("llama3", "alpaca"):
        chat_template = with_template(gpt2, name)
        tmpl = ollama_template(chat_template, gpt2)
        jinja = gpt2.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        jinja = jinja.removeprefix(gpt2.bos_token) if tmpl.adds_bos else jinja
        assert render_go_template(tmpl.template, conversation) == jinja
        assert ("ipython" if name == "llama3" else "### Observation:") in jinja


@pytest.mark.parametrize("template", [ZEPHYR, GEMMA, "{{ messages[0]['content'] }}"])
def test_an_unknown_template_is_refused_with_what_it_renders_and_the_fix(gpt2, template):
    with pytest.raises(LlmtuneError) as info:
        ollama_template(template, gpt2)
    message = str(info.value)
    assert "--ollama-template" in message and "data.template: chatml|qwen|llama3|alpaca" in message
    if template is ZEPHYR:
        assert "<|system|>" in message and "matches none of chatml, qwen, smollm2, llama3, alpaca" in message
    if template is GEMMA:
        assert "System role not supported" in message


def test_llama31_dated_system_block_is_refused_by_name(gpt2):
    apply_template(gpt2, "llama3")
    with pytest.raises(LlmtuneError, match="Cutting Knowledge Date"):
        ollama_template(LLAMA31, gpt2)


@pytest.mark.parametrize("template", [None, ""])
def test_no_chat_template_is_refused(gpt2, template):
    with pytest.raises(LlmtuneError, match="no chat template.*--ollama-template FILE"):
        ollama_template(template, gpt2)


def test_ollama_template_file_is_used_as_given(gpt2, tmp_path):
    chat_template = with_template(gpt2, "chatml")
    path = tmp_path / "my.gotmpl"
    path.write_text(OLLAMA_CHATML, encoding="utf-8")
    tmpl = ollama_template(chat_template, gpt2, template_file=path)
    assert (tmpl.family, tmpl.template, tmpl.default_system) == ("file", OLLAMA_CHATML, None)
    assert tmpl.stop == ["<|im_end|>", "<|endoftext|>"]  # the end-of-turn it writes, and EOS
    assert "was not compared" in modelfile_text("m.gguf", tmpl).splitlines()[0]
    # Without any chat template (a base model) a file is all there is.
    assert ollama_template(None, gpt2, template_file=str(path)).template == OLLAMA_CHATML


def test_ollama_template_file_errors(gpt2, tmp_path, caplog):
    broken = tmp_path / "broken.gotmpl"
    broken.write_text("{{ range .Messages }}{{ .Content }}", encoding="utf-8")
    with pytest.raises(
        LlmtuneError, match="broken.gotmpl is not a valid Go template: line 1: unexpected EOF"
    ):
        ollama_template(None, gpt2, template_file=broken)
    with pytest.raises(LlmtuneError, match="cannot read"):
        ollama_template(None, gpt2, template_file=tmp_path / "missing.gotmpl")
    (tmp_path / "empty.gotmpl").write_text("\n", encoding="utf-8")
    with pytest.raises(LlmtuneError, match="is empty"):
        ollama_template(None, gpt2, template_file=tmp_path / "empty.gotmpl")
    # Valid Go beyond the checker's subset (ollama's alpaca.gotmpl uses printf) is accepted with a warning.
    fancy = tmp_path / "fancy.gotmpl"
    fancy.write_text('{{ range .Messages }}{{ printf "%s" .Content }}{{ end }}', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="llmtune"):
        assert ollama_template(None, gpt2, template_file=fancy).family == "file"
    assert "cannot check" in caplog.text and "printf" in caplog.text


def test_modelfile_text(gpt2):
    tmpl = ollama_template(with_template(gpt2, "alpaca"), gpt2)
    text = modelfile_text(
        "run-q8_0.gguf", tmpl, system="Be brief.\nVery.", parameters={"temperature": 0.7, "num_ctx": 4096}
    )
    lines = text.splitlines()
    assert lines[0].startswith("# Written by `llmtune export`.") and "byte-for-byte" in lines[0]
    assert lines[1] == "FROM ./run-q8_0.gguf"
    assert re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1) == tmpl.template
    assert 'PARAMETER stop "<|endoftext|>"\nPARAMETER stop "### Instruction:"\n' in text
    assert 'SYSTEM """Be brief.\nVery."""\n' in text
    assert text.endswith("PARAMETER temperature 0.7\nPARAMETER num_ctx 4096\n")
    assert "SYSTEM" not in modelfile_text("m.gguf", tmpl)


@pytest.mark.parametrize(
    ("template", "system"),
    [('{{ .Content }}"""', None), ("ok {{ .Messages }}", 'Say """hi"""'), ("x", "a\x00b")],
)
def test_text_a_modelfile_cannot_quote_is_refused(template, system):
    tmpl = OllamaTemplate("file", template, ["</s>"], None)
    with pytest.raises(LlmtuneError, match='"""|would drop'):
        modelfile_text("m.gguf", tmpl, system=system)
    with pytest.raises(LlmtuneError, match="cannot be written"):
        modelfile_text("m.gguf", OllamaTemplate("file", "x", ['say "x"'], None))


def test_renderer_matches_ollama_testdata():
    assert render_go_template(OLLAMA_CHATML, OLLAMA_CONVERSATION) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello, how are you?<|im_end|>\n"
        "<|im_start|>assistant\nI'm doing great. How can I help you today?<|im_end|>\n<|im_start|>user\n"
        "I'd like to show off how chat templating works!<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_go_template(OLLAMA_LLAMA3, OLLAMA_CONVERSATION) == (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello, how are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nI'm doing great. How can I help you today?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nI'd like to show off how chat templating works!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_renderer_go_semantics():
    """Outputs produced by Go 1.19's text/template with the data Ollama passes."""
    three = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    last = "{{ range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}[{{ $i }}:{{ $m.Role }}:{{ $last }}]{{ end }}"
    assert render_go_template(last, three) == "[0:user:false][1:assistant:false][2:user:true]"
    branches = (
        "{{- if .System }}S={{ .System }}{{ else if eq (len .Messages) 3 }}three{{ else }}other{{ end -}}  \n tail "
        '{{ (index .Messages 0).Role }} {{ .Missing }} {{ or (not .Messages) (ne (index .Messages 0).Role "system") }} '
        '{{ and .System "x" }}|{{ or .System "y" }}'
    )
    assert render_go_template(branches, three) == "threetail user <no value> true |y"
    variables = '{{ $x := "a" }}{{ range .Messages }}{{ $x = .Role }}{{ end }}{{ $x }}|{{ eq .System "a" "b" "" }}|{{ ne 1 2 }}|{{ "q\\"\\t\\u00e9" }}|{{-3}}'
    assert render_go_template(variables, three[:2]) == 'assistant|true|true|q"\té|-3'
    # Ollama's SYSTEM and collation: prepended when no system message leads; same-role messages merged.
    shown = "{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}"
    assert render_go_template(shown, three[:1], system="S") == "S|system=S;user=a;"
    merged = [
        {"role": "system", "content": "own"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ]
    assert render_go_template(shown, merged, system="S") == "own|system=own;user=a\n\nb;"


@pytest.mark.parametrize(
    ("template", "unsupported"),
    [
        ("{{ with .System }}{{ . }}{{ end }}{{ .Messages }}", True),
        ('{{ .System | printf "%s" }}{{ .Messages }}', True),
        ("{{ json .Messages }}", True),
        ("{{/* a comment */}}{{ .Messages }}", True),
        ("{{ range .Messages }}x{{ else }}none{{ end }}", True),
        ("{{ .Prompt }}", True),  # no .Messages: Ollama's legacy path
        ("{{ range .Messages }}{{ .Content }}", False),
        ("{{ end }}{{ .Messages }}", False),
        ("{{ if .Messages }}a{{ else }}b", False),
        ("{{ .Messages", False),
        ("{{ }}{{ .Messages }}", False),
        ("{{ range .Messages }}{{ .Nope }}{{ end }}", False),
        ('{{ if eq 1 "a" }}{{ end }}{{ .Messages }}', False),
        ("{{ index .Messages 9 }}", False),
        ("{{ $y }}{{ .Messages }}", False),
    ],
)
def test_renderer_raises_on_what_it_does_not_support_or_go_rejects(template, unsupported):
    with pytest.raises(GoTemplateError) as info:
        render_go_template(template, PROBES["user-assistant-user"])
    assert info.value.unsupported is unsupported


@pytest.mark.parametrize(
    ("broken", "wrong_probes"),
    [
        (lambda t: t.replace("<|im_end|>\n{{ end }}", "<|im_end|>{{ end }}"), set(PROBES)),  # a newline lost
        (
            lambda t: t.replace("{{ end }}<|im_start|>assistant", "{{- end }}<|im_start|>assistant"),
            set(PROBES),
        ),
        (lambda t: t.replace("Hugging Face", "Hugging Face."), {"user", "user-assistant-user"}),
        (lambda t: t.replace("<|im_start|>assistant\n", "<|im_start|>assistant"), set(PROBES)),
    ],
)
def test_check_template_catches_a_subtly_wrong_go_template(smollm2, broken, wrong_probes):
    good = ollama_template(smollm2.chat_template, smollm2)
    bad = OllamaTemplate(good.family, broken(good.template), good.stop, good.default_system)
    assert bad.template != good.template
    results = check_template(bad, smollm2.chat_template, smollm2)
    assert {r["conversation"] for r in results if not r["identical"]} == wrong_probes
    assert all(r["jinja"] != r["ollama"] for r in results if not r["identical"])


def test_check_template_catches_a_go_template_without_the_default_system(smollm2):
    """Ollama's stock chatml.gotmpl on a SmolLM2 model: right for conversations with a system message,
    wrong (no default system) for those without."""
    plain = OllamaTemplate("chatml", OLLAMA_CHATML, ["<|im_end|>"], None)
    results = {
        r["conversation"]: r["identical"] for r in check_template(plain, smollm2.chat_template, smollm2)
    }
    assert results == {
        "user": False,
        "system-user": True,
        "user-assistant-user": False,
        "system-user-assistant-user": True,
    }
