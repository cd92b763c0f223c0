"""A minimal Go text/template interpreter: how Ollama fills a Modelfile TEMPLATE, so that `ollama.py` can
check a TEMPLATE against the Jinja chat template it was translated from.
"""

from __future__ import annotations

import re


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """SYSTEM/`data.system` as both Ollama and llmtune's data loader apply it: prepended when none leads."""
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return list(messages)


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
    for m in with_system(messages, system):
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
