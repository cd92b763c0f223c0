"""The Ollama Modelfile written next to an exported GGUF, with a TEMPLATE proven to match the chat template.

Ollama does not run the model's Jinja chat template: it renders the Modelfile's TEMPLATE, a Go
text/template. If the two disagree by one newline, the model sees prompts it was never trained on. So the
family of the trained template is found by rendering it (never by reading its source), the matching Go
template is written, and `check_template` renders probe conversations both ways and compares bytes.

How Ollama fills the template (ollama/ollama `server/routes.go` ChatHandler/GenerateHandler,
`server/prompt.go` chatPrompt/renderPrompt, `template/template.go` Execute/collate):
- /api/chat: the request's messages, with the Modelfile's SYSTEM prepended as a system message when the
  first message is not a system message. /api/generate: SYSTEM (or the request's system) as a system
  message, then the prompt as a user message. So SYSTEM arrives as a message, exactly like llmtune's
  `data.system` ("system prompt for rows that have none") did at training time.
- Template.Execute collates the messages: consecutive messages of the same role (tool excepted) are
  merged with "\\n\\n"; `.System` is every system message joined with "\\n\\n"; `.Messages` keeps the system
  messages in place. A template that names `.Messages` gets {System, Messages, Tools, Response: "", ...};
  one that does not is run through the legacy .Prompt/.Response path, which these templates never use.
- The prompt always ends with what the template writes after the last message: our templates (like
  Ollama's chatml/llama3-instruct/alpaca) end with the assistant header, i.e. Jinja's
  add_generation_prompt=True.

BOS: Ollama's llama.cpp runner tokenizes the prompt with add_special=true (`runner/llamarunner/runner.go`,
`Tokenize(part, i == 0, true)`), so BOS is added by the runtime when the GGUF says
tokenizer.ggml.add_bos_token, and special-token text in the prompt is parsed as tokens. A leading
`{{ bos_token }}` in the Jinja template therefore maps to nothing in the Go template;
`OllamaTemplate.adds_bos` records that the Jinja template writes one, so the exporter must write
add_bos_token=true into the GGUF (and false otherwise). `check_template` compares the Jinja rendering with
that leading BOS removed. A BOS anywhere else, and EOS text (alpaca writes it after each answer), are
written literally.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from llmtune.data.templates import ALPACA, CHATML, END_OF_TURN, LLAMA3, QWEN, end_of_turn_token
from llmtune.errors import LlmtuneError
from llmtune.export.gotemplate import GoTemplateError, render_go_template, with_system

log = logging.getLogger("llmtune")

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
# SmolLM2-Instruct's own template: ChatML that inserts its default system prompt when there is none.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SMOLLM2_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Any ChatML template with a default system prompt of its own (passed in as `llmtune_default_system`).
_CHATML_DEFAULT = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n' + llmtune_default_system + '<|im_end|>\\n' }}{% endif %}" + CHATML
)
_REFERENCES = [  # family, reference Jinja, default system prompt
    ("chatml", CHATML, None),
    ("qwen", QWEN, QWEN_SYSTEM),
    ("smollm2", SMOLLM2, SMOLLM2_SYSTEM),
    ("llama3", LLAMA3, None),
    ("alpaca", ALPACA, ALPACA_SYSTEM),
]

_SYSTEM = {"role": "system", "content": "You are a careful assistant. Answer briefly."}
_USER = {"role": "user", "content": "Hello! What is 2 + 2?"}
_ANSWER = {"role": "assistant", "content": "2 + 2 = 4.\nAnything else?"}
# Braces and quotes in content: neither engine may read message text as template syntax.
_USER2 = {"role": "user", "content": 'Quote this: "{{ .Content }}" and {% raw %}, then stop.'}
# No content starts or ends with whitespace: Llama 3's Jinja trims it and Go templates cannot (known gap).
PROBES = {
    "user": [_USER],
    "system-user": [_SYSTEM, _USER],
    "user-assistant-user": [_USER, _ANSWER, _USER2],
    "system-user-assistant-user": [_SYSTEM, _USER, _ANSWER, _USER2],
}
_BOS_MARK = "\x00llmtune-bos\x00"  # stands for bos_token while rendering: SmolLM2's BOS *is* <|im_start|>
_FIX = (
    "Pass --ollama-template FILE with a Go template for Ollama's TEMPLATE (see ollama's template/*.gotmpl), "
    "or train with a known template (data.template: chatml|qwen|llama3|alpaca)."
)


@dataclass
class OllamaTemplate:
    family: str  # "chatml", "qwen", "smollm2", "llama3", "alpaca" or "file"
    template: str  # Go template text for TEMPLATE
    stop: list[str]  # PARAMETER stop values (end-of-turn tokens, eos where the family uses it)
    default_system: str | None  # system prompt the Jinja template inserts when a conversation has none
    adds_bos: bool = False  # the Jinja template starts with bos_token: the GGUF must set add_bos_token


def _go_text(text: str) -> str:
    """`text` as literal Go template output (a quoted Go string when it could be read as an action)."""
    if "{{" in text or text.endswith("{"):
        return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"
    return text


def _chatml_go(default_system: str | None) -> str:
    if default_system is None:  # ollama's template/chatml.gotmpl, byte for byte
        return (
            "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
            "{{ end }}<|im_start|>assistant\n"
        )
    return (  # SmolLM2's `loop.first and messages[0]['role'] != 'system'`, in Go
        "{{- range $i, $_ := .Messages }}\n"
        '{{- if and (eq $i 0) (ne .Role "system") }}<|im_start|>system\n'
        f"{_go_text(default_system)}<|im_end|>\n"
        "{{ end }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n"
    )


# ollama's template/llama3-instruct.gotmpl plus llmtune's tool -> ipython role; BOS is the runtime's.
_LLAMA3_GO = (
    "{{- range .Messages }}<|start_header_id|>"
    '{{ if eq .Role "tool" }}ipython{{ else }}{{ .Role }}{{ end }}<|end_header_id|>\n\n'
    "{{ .Content }}<|eot_id|>\n{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def _alpaca_go(eos: str) -> str:
    """llmtune's ALPACA (ollama's alpaca.gotmpl has no default system and no EOS after answers)."""
    return (
        "{{- range $i, $_ := .Messages }}\n"
        '{{- if eq $i 0 }}{{ if eq .Role "system" }}{{ .Content }}{{ else }}'
        f"{ALPACA_SYSTEM}{{{{ end }}}}\n\n{{{{ end }}}}\n"
        '{{- if eq .Role "user" }}### Instruction:\n{{ .Content }}\n\n'
        '{{ else if eq .Role "tool" }}### Observation:\n{{ .Content }}\n\n'
        '{{ else if eq .Role "assistant" }}### Response:\n'
        f"{{{{ .Content }}}}{_go_text(eos)}\n\n{{{{ end }}}}\n"
        "{{- end }}### Response:\n"
    )


def _render_jinja(chat_template: str, tokenizer, messages: list[dict], **extra) -> tuple[str, bool]:
    """(the prompt the Jinja template renders with the generation prompt, less a leading BOS; whether it
    wrote that BOS). BOS is rendered as a marker so that a BOS token whose text the template also writes
    literally (SmolLM2's is <|im_start|>) is not mistaken for it."""
    bos = {"bos_token": _BOS_MARK} if tokenizer.bos_token is not None else {}
    text = tokenizer.apply_chat_template(
        messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True, **bos, **extra
    )
    adds_bos = text.startswith(_BOS_MARK)
    text = text[len(_BOS_MARK) :] if adds_bos else text
    return text.replace(_BOS_MARK, tokenizer.bos_token or ""), adds_bos


def _default_system(rendered: str, messages: list[dict]) -> str | None:
    """The system prompt a ChatML template inserted into `rendered` (a conversation without one)."""
    head, end = "<|im_start|>system\n", "<|im_end|>\n"
    first = f"<|im_start|>{messages[0]['role']}\n{messages[0]['content']}{end}"
    if rendered.startswith(head) and end + first in rendered:
        return rendered[len(head) : rendered.index(end + first)]
    return None


def _go_template_for(family: str, default_system: str | None, tokenizer) -> tuple[str, list[str]]:
    if family == "llama3":
        return _LLAMA3_GO, [END_OF_TURN["llama3"]]
    if family == "alpaca":
        eos = tokenizer.eos_token or ""
        return _alpaca_go(eos), [t for t in (eos, "### Instruction:") if t]
    return _chatml_go(default_system), [END_OF_TURN["chatml"]]


def ollama_template(
    chat_template: str | None, tokenizer, *, template_file: str | Path | None = None
) -> OllamaTemplate:
    """The Ollama TEMPLATE for `chat_template`: the family whose reference rendering equals the template's
    own on every probe conversation, or the Go template in `template_file` (`--ollama-template`)."""
    if template_file is not None:
        return _from_file(Path(template_file), chat_template, tokenizer)
    if not chat_template:
        raise LlmtuneError(
            "the model has no chat template, so there is no prompt format to write into the Ollama "
            "Modelfile.",
            hint=_FIX,
        )
    try:
        rendered = {name: _render_jinja(chat_template, tokenizer, msgs) for name, msgs in PROBES.items()}
    except Exception as exc:  # raise_exception() in the template, a missing variable, ...
        raise LlmtuneError(
            f"the model's chat template fails on a plain conversation ({type(exc).__name__}: {exc}), so "
            "llmtune cannot tell which Ollama template matches it.",
            hint=_FIX,
        ) from None
    adds_bos = {bos for _, bos in rendered.values()}
    extracted = _default_system(rendered["user"][0], PROBES["user"])
    candidates = [*_REFERENCES]
    if extracted and extracted not in (QWEN_SYSTEM, SMOLLM2_SYSTEM):
        candidates.append(("chatml", _CHATML_DEFAULT, extracted))
    for family, reference, default in candidates:
        extra = {"llmtune_default_system": default} if reference is _CHATML_DEFAULT else {}
        try:
            same = all(
                _render_jinja(reference, tokenizer, msgs, **extra)[0] == rendered[name][0]
                for name, msgs in PROBES.items()
            )
        except Exception:  # e.g. alpaca with a tokenizer that has no EOS
            same = False
        if same and len(adds_bos) == 1:
            template, stop = _go_template_for(family, default, tokenizer)
            return OllamaTemplate(family, template, stop, default, adds_bos.pop())
    shown = _real_bos(_render_jinja(chat_template, tokenizer, PROBES["system-user"]), tokenizer)
    lines = shown.split("\n")
    head = "\n".join(lines[:4]) + ("\n..." if len(lines) > 4 else "")
    llama31 = (
        " (Llama 3.1+ templates write a dated 'Cutting Knowledge Date' system block into every prompt; "
        "llmtune does not translate them)"
        if "Cutting Knowledge Date" in shown
        else ""
    )
    raise LlmtuneError(
        "the model's chat template is not one llmtune can write as an Ollama TEMPLATE: a system + user "
        f"conversation renders as {head!r}, which matches none of {', '.join(f for f, _, _ in _REFERENCES)}"
        f"{llama31}.",
        hint=_FIX,
    )


def _real_bos(rendered: tuple[str, bool], tokenizer) -> str:
    text, adds_bos = rendered
    return (tokenizer.bos_token or "") + text if adds_bos else text


def _from_file(path: Path, chat_template: str | None, tokenizer) -> OllamaTemplate:
    try:
        template = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LlmtuneError(f"--ollama-template: cannot read {path}: {exc.strerror or exc}.") from None
    if not template.strip():
        raise LlmtuneError(f"--ollama-template: {path} is empty; give a Go template for Ollama's TEMPLATE.")
    try:
        render_go_template(template, PROBES["system-user-assistant-user"])
    except GoTemplateError as exc:
        if not exc.unsupported:
            raise LlmtuneError(f"--ollama-template: {path} is not a valid Go template: {exc}.") from None
        log.warning("--ollama-template %s uses Go template features llmtune cannot check: %s", path, exc)
    eos = end_of_turn_token(tokenizer, None)
    stop = [t for t in dict.fromkeys([*END_OF_TURN.values(), eos]) if t and (t in template or t == eos)]
    try:  # whether the trained template starts with BOS, for the GGUF's add_bos_token
        adds_bos = bool(chat_template) and _render_jinja(chat_template, tokenizer, PROBES["user"])[1]
    except Exception:  # a template that only renders conversations of its own shape: the file decides
        adds_bos = False
    return OllamaTemplate("file", template, stop, None, adds_bos)


def check_template(
    tmpl: OllamaTemplate, chat_template: str, tokenizer, *, system: str | None = None
) -> list[dict]:
    """Each probe conversation rendered by the Jinja chat template (generation prompt added, leading BOS
    removed: llama.cpp adds it) and by the Go template as Ollama fills it, with `system` (the Modelfile's
    SYSTEM, the recipe's `data.system`) applied the way both apply it."""
    results = []
    for name, messages in PROBES.items():
        jinja = _render_jinja(chat_template, tokenizer, with_system(messages, system))[0]
        ollama = render_go_template(tmpl.template, messages, system=system)
        results.append({"conversation": name, "identical": jinja == ollama, "jinja": jinja, "ollama": ollama})
    return results


def _modelfile_safe(text: str, what: str) -> str:
    """Ollama's Modelfile parser ends a \"\"\" value at the next \"\"\" and drops unprintable characters."""
    if '"""' in text:
        raise LlmtuneError(f'the Ollama {what} contains """, which a Modelfile cannot quote.')
    bad = sorted({repr(c) for c in text if not (c.isprintable() or c in "\n\t")})
    if bad:
        raise LlmtuneError(f"the Ollama {what} contains {', '.join(bad)}, which a Modelfile would drop.")
    return text


def _param(value, *, quote: bool = False) -> str:
    """A one-line Modelfile value: quoted when asked or when it has spaces (a value ends at a space)."""
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if '"' in text or not text.isprintable():
        raise LlmtuneError(
            f"the Ollama Modelfile value {text!r} cannot be written (a quote or a control character)."
        )
    return f'"{text}"' if quote or not text or any(c.isspace() for c in text) else text


def modelfile_text(
    gguf_filename: str, tmpl: OllamaTemplate, *, system: str | None = None, parameters: dict | None = None
) -> str:
    if tmpl.family == "file":
        how = (
            "TEMPLATE is the Go template given with --ollama-template; "
            "it was not compared with the chat template."
        )
    else:
        how = (
            f"TEMPLATE ({tmpl.family}) renders byte-for-byte the prompt of the model's Jinja chat "
            f"template on {len(PROBES)} probe conversations (llmtune.export.ollama.check_template)."
        )
    lines = [f"# Written by `llmtune export`. {how}", f"FROM {_param('./' + gguf_filename)}"]
    lines.append(f'TEMPLATE """{_modelfile_safe(tmpl.template, "TEMPLATE")}"""')
    lines += [f"PARAMETER stop {_param(s, quote=True)}" for s in tmpl.stop]
    if system:
        lines.append(f'SYSTEM """{_modelfile_safe(system, "SYSTEM prompt")}"""')
    for key, value in (parameters or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LlmtuneError(f"Ollama PARAMETER name {key!r} is not a valid name.")
        lines += [
            f"PARAMETER {key} {_param(v)}" for v in (value if isinstance(value, (list, tuple)) else [value])
        ]
    return "\n".join(lines) + "\n"
