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


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    """SYSTEM/`data.system` as both Ollama and llmtune's data loader apply it: prepended when none leads."""
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return list(messages)


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
        jinja = _render_jinja(chat_template, tokenizer, _with_system(messages, system))[0]
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


# --- A minimal Go text/template interpreter ----------------------------------------------------------------
# Hand-written because no package on PyPI runs Go's text/template with Go's semantics (whitespace trimming,
# variable scoping, eq/and/or, zero values), and the check is only worth something if the renderer is Go's.
# It covers exactly the subset the templates above use, and raises GoTemplateError on anything else.


class GoTemplateError(ValueError):
    """A template the checker cannot render: `unsupported` when it may be valid Go beyond the subset."""

    def __init__(self, message: str, *, unsupported: bool = False):
        super().__init__(message)
        self.unsupported = unsupported


class _Struct(dict):
    """An api.Message: a field it lacks is an error (a map, like the root, yields nil instead)."""


_WS = " \t\r\n"
_TOKEN = re.compile(
    r"""[ \t\r\n]*(?:(?P<close>(?:(?<=[ \t\r\n])-)?\}\})|(?P<str>"(?:[^"\\\n]|\\.)*")|(?P<num>-?\d+)"""
    r"""|(?P<decl>:?=)|(?P<punct>[(),|])|(?P<var>\$\w*(?:\.\w+)*)|(?P<field>(?:\.\w+)+|\.)|(?P<ident>\w+))"""
)
_ARITY = {
    "eq": (2, 99),
    "ne": (2, 2),
    "and": (1, 99),
    "or": (1, 99),
    "not": (1, 1),
    "len": (1, 1),
    "slice": (1, 3),
}
_ARITY["index"] = (1, 99)
_ESCAPE = re.compile(r'\\(u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|[ntr"\\abfv])')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _lex(src: str) -> list:
    """Text strings alternating with actions (token list, line), trim markers applied."""
    items, pos, trim_next = [], 0, False
    while True:
        start = src.find("{{", pos)
        text = src[pos : start if start >= 0 else len(src)]
        text = text.lstrip(_WS) if trim_next else text
        if start < 0:
            return [*items, text]
        i, line = start + 2, src.count("\n", 0, start) + 1
        if src[i : i + 1] == "-" and src[i + 1 : i + 2] in tuple(_WS):
            text, i = text.rstrip(_WS), i + 1
        tokens = []
        while (m := _TOKEN.match(src, i)) and m.lastgroup != "close":
            tokens.append((m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup), m.end()))
            i = m.end()
        if m is None:
            rest = src[i:].lstrip(_WS)
            raise GoTemplateError(
                f"line {line}: " + (f"unexpected {rest[:12]!r} in action" if rest else "unclosed action"),
                unsupported=rest[:2] == "/*" or rest[:1] == "`",
            )
        if not tokens:
            raise GoTemplateError(f"line {line}: missing value for command")
        items += [text, (tokens, line)]
        pos, trim_next = m.end(), m.group("close").startswith("-")


def _words(items: list, i: int, line: int, opened: str) -> list:
    """The leading words of the action at `i` that closes or continues `opened` (EOF is an error)."""
    if i >= len(items):
        raise GoTemplateError(f"line {line}: unexpected EOF: {{{{ {opened} }}}} has no {{{{ end }}}}")
    return [v for k, v, _, _ in items[i][0][:2] if k == "ident"]


def _parse(items: list, i: int = 0) -> tuple[list, int]:
    """Nodes up to the next {{ end }} or {{ else }} (left at `i` for the caller) or the end."""
    nodes = []
    while i < len(items):
        if isinstance(items[i], str):
            nodes += [items[i]] if items[i] else []
            i += 1
            continue
        tokens, line = items[i]
        word = tokens[0][1] if tokens[0][0] == "ident" else None
        if word in ("end", "else"):
            return nodes, i
        if word == "if":
            branches, orelse, cond = [], [], _command(tokens[1:], line)
            while True:
                body, i = _parse(items, i + 1)
                branches.append((cond, body))
                words = _words(items, i, line, "if")
                if words == ["else", "if"]:
                    cond = _command(items[i][0][2:], line)
                    continue
                if words[:1] == ["else"] and len(items[i][0]) == 1:
                    orelse, i = _parse(items, i + 1)
                    words = _words(items, i, line, "if")
                if words[:1] != ["end"] or len(items[i][0]) > 1:
                    raise GoTemplateError(f"line {line}: expected {{{{ end }}}} for {{{{ if }}}}")
                break
            nodes.append(("if", branches, orelse))
        elif word == "range":
            rest, names = tokens[1:], []
            decl = next((k for k, t in enumerate(rest) if t[0] == "decl"), None)
            if decl is not None:
                names = [t[1] for t in rest[:decl:2]]
                shape = [t[0] for t in rest[: decl + 1]]
                if shape not in (["var", "decl"], ["var", "punct", "var", "decl"]) or rest[decl][1] != ":=":
                    raise GoTemplateError(f"line {line}: bad range declaration")
                rest = rest[decl + 1 :]
            body, i = _parse(items, i + 1)
            if _words(items, i, line, "range") != ["end"]:
                raise GoTemplateError(
                    f"line {line}: {{{{ else }}}} in range is not supported", unsupported=True
                )
            nodes.append(("range", names, _command(rest, line), body))
        elif word in ("with", "define", "template", "block", "break", "continue"):
            raise GoTemplateError(f"line {line}: {{{{ {word} }}}} is not supported", unsupported=True)
        else:
            decl = len(tokens) > 2 and tokens[0][0] == "var" and tokens[1][0] == "decl"
            target = (tokens[0][1], tokens[1][1]) if decl else None
            nodes.append(("out", target, _command(tokens[2 * decl :], line)))
        i += 1
    return nodes, i


def _command(tokens: list, line: int) -> list:
    """Operands of one command (no pipelines): literals, fields, variables, a function, (sub-commands)."""
    args, pos = [], 0
    while pos < len(tokens):
        kind, value, _, _ = tokens[pos]
        pos += 1
        if kind == "str":
            node = ("lit", _ESCAPE.sub(_unescape, value[1:-1]))
        elif kind == "num":
            node = ("lit", int(value))
        elif kind == "field":
            node = ("get", ("dot",), value.split(".")[1:] if value != "." else [])
        elif kind == "var":
            name, *chain = value.split(".")
            node = ("get", ("var", name), chain)
        elif kind == "ident" and value in ("true", "false"):
            node = ("lit", value == "true")
        elif kind == "ident" and value in _ARITY and not args:
            node = ("fn", value)
        elif kind == "ident":
            raise GoTemplateError(f"line {line}: function {value!r} is not supported", unsupported=True)
        elif value == "(":
            depth, close = 1, pos
            while depth and close < len(tokens):
                depth += {"(": 1, ")": -1}.get(tokens[close][1], 0) if tokens[close][0] == "punct" else 0
                close += 1
            if depth:
                raise GoTemplateError(f"line {line}: unclosed left paren")
            node, pos = ("cmd", _command(tokens[pos : close - 1], line)), close
            if pos < len(tokens) and tokens[pos][0] == "field" and tokens[pos][2] == tokens[pos - 1][3]:
                node, pos = ("get", node, tokens[pos][1].split(".")[1:]), pos + 1
        else:
            raise GoTemplateError(f"line {line}: unexpected {value!r}", unsupported=value == "|")
        args.append(node)
    if not args:
        raise GoTemplateError(f"line {line}: missing value for command")
    if args[0][0] != "fn" and len(args) > 1:
        raise GoTemplateError(f"line {line}: can't give argument to non-function")
    if args[0][0] == "fn" and not _ARITY[args[0][1]][0] <= len(args) - 1 <= _ARITY[args[0][1]][1]:
        raise GoTemplateError(f"line {line}: wrong number of args for {args[0][1]}: got {len(args) - 1}")
    return args


def _unescape(m: re.Match) -> str:
    code = m.group(1)
    return chr(int(code[1:], 16)) if code[0] in "ux" else _ESCAPES[code]


def _eval(node, dot, scopes):
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "dot":
        return dot
    if kind == "var":
        scope = next((s for s in reversed(scopes) if node[1] in s), None)
        if scope is None:
            raise GoTemplateError(f"undefined variable: {node[1]}")
        return scope[node[1]]
    if kind == "get":
        value = _eval(node[1], dot, scopes)
        for name in node[2]:
            if not isinstance(value, dict) or (isinstance(value, _Struct) and name not in value):
                raise GoTemplateError(f"can't evaluate field {name} in {type(value).__name__}")
            value = value.get(name)  # missingkey=zero: a map gives nil
        return value
    if node[1][0][0] != "fn":  # a "cmd" of one operand
        return _eval(node[1][0], dot, scopes)
    name, rest = node[1][0][1], node[1][1:]
    if name in ("and", "or"):  # Go 1.18+: left to right, stopping at the deciding argument
        for arg in rest:
            value = _eval(arg, dot, scopes)
            if bool(value) == (name == "or"):  # Go's truth: false, 0, nil, "", empty slice/map are false
                break
        return value
    values = [_eval(arg, dot, scopes) for arg in rest]
    first = values[0]
    if name == "not":
        return not first
    if name in ("eq", "ne"):
        for other in values[1:]:
            if type(other) is not type(first) or not isinstance(first, (str, int, bool)):
                raise GoTemplateError(f"incompatible types for comparison: {first!r} and {other!r}")
        return any(first == other for other in values[1:]) == (name == "eq")
    if name == "len" and isinstance(first, (list, str, dict)):
        return len(first)
    if name == "index":
        for key in values[1:]:
            if isinstance(first, dict):
                first = first.get(key)
            elif isinstance(first, (list, str)) and type(key) is int and 0 <= key < len(first):
                first = first[key]
            else:
                raise GoTemplateError(
                    f"error calling index: cannot index {type(first).__name__} with {key!r}"
                )
        return first
    bounds = values[1:]
    if name == "slice" and isinstance(first, (list, str)) and all(type(b) is int for b in bounds):
        if sorted(bounds) == bounds and all(0 <= b <= len(first) for b in bounds):
            return first[bounds[0] : bounds[1]] if len(bounds) == 2 else first[bounds[0] if bounds else 0 :]
    raise GoTemplateError(f"error calling {name} with {values!r}")


def _exec(nodes: list, dot, scopes: list[dict], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif node[0] == "out":
            value = _eval(("cmd", node[2]), dot, scopes)
            if node[1] is None:
                out.append(_print(value))
                continue
            name, op = node[1]
            scope = scopes[-1] if op == ":=" else next((s for s in reversed(scopes) if name in s), None)
            if scope is None:
                raise GoTemplateError(f"undefined variable: {name}")
            scope[name] = value
        elif node[0] == "if":
            body = next((b for c, b in node[1] if _eval(("cmd", c), dot, scopes)), node[2])
            _exec(body, dot, [*scopes, {}], out)
        else:
            items = _eval(("cmd", node[2]), dot, scopes)
            if not isinstance(items, (list, type(None))):
                raise GoTemplateError(f"range over {type(items).__name__} is not supported", unsupported=True)
            for index, item in enumerate(items or []):
                names = node[1]  # [], [$elem] or [$index, $elem]
                frame = {names[0]: index, names[1]: item} if len(names) == 2 else {n: item for n in names}
                _exec(node[3], item, [*scopes, frame], out)


def _print(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value)
    if value is None:
        return "<no value>"
    raise GoTemplateError(f"printing a {type(value).__name__} is not supported", unsupported=True)


def render_go_template(template: str, messages: list[dict], *, system: str | None = None) -> str:
    """The prompt Ollama builds from `template` for a chat of `messages` with the Modelfile's SYSTEM
    `system`: prepended as a system message when the first message is not one (server/routes.go), the
    messages collated as template/template.go does, and the template given {System, Messages, ...}."""
    items = _lex(template)
    nodes, end = _parse(items)
    if end < len(items):
        raise GoTemplateError(f"line {items[end][1]}: unexpected {{{{ {items[end][0][0][1]} }}}}")
    if not re.search(r"\.Messages\b", template):
        raise GoTemplateError(
            "no .Messages: Ollama would use its legacy .Prompt/.Response path", unsupported=True
        )
    msgs: list[_Struct] = []
    for m in _with_system(messages, system):
        if msgs and msgs[-1]["Role"] == m["role"] and m["role"] != "tool":
            msgs[-1]["Content"] += "\n\n" + m["content"]
        else:
            zero = {"Thinking": "", "Images": [], "ToolCalls": [], "ToolName": "", "ToolCallID": ""}
            msgs.append(_Struct(Role=m["role"], Content=m["content"], **zero))
    system_text = "\n\n".join(m["Content"] for m in msgs if m["Role"] == "system")
    data = {"System": system_text, "Messages": msgs, "Tools": None, "Response": "", "Think": False}
    data |= {"IsThinkSet": False, "ThinkLevel": ""}
    out: list[str] = []
    _exec(nodes, data, [{"$": data}], out)
    return "".join(out)
