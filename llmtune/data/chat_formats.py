"""Chat-shaped rows → one canonical form, each row validated.

One reader per shape, all producing OpenAI-style messages (`role` ∈ system, user, assistant, tool):

    alpaca              instruction, input, output [, system, history: [[user, assistant], ...]]
    sharegpt            conversations: [{from: human|gpt|system|function_call|observation, value}] [, system, tools]
    messages            messages: [{role, content}] [, tools]
    prompt_completion   prompt, completion (strings)
    preference          prompt, chosen, rejected (strings or message lists)
    alpaca_preference   instruction, input, chosen, rejected (LLMs-from-scratch ch.7)
    sharegpt_preference conversations, chosen, rejected [, system, tools] (MedicalGPT's reward data)
    question_preference question, response_chosen, response_rejected (MedicalGPT's older reward files)

Column names can be mapped in the recipe (`data.columns: {instruction: question, output: answer}`); the
format is detected from the first row of each file when the recipe does not name it, and the detection
is reported. A bad row (missing field, empty turn, wrong role order, chosen == rejected, not JSON) stops
the run naming file and line, or is skipped and counted with its reason under `on_bad_rows: skip`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.data.sources import BadRows, brief, iter_json_rows, report_bad_row
from llmtune.errors import LlmtuneError

SFT_FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion")
PREFERENCE_FORMATS = ("preference", "alpaca_preference", "sharegpt_preference", "question_preference")

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",  # the model's tool call is a turn it must learn to produce
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}
MESSAGE_ROLES = ("system", "user", "assistant", "tool")


class BadRow(ValueError):
    """A row that cannot be used; the message is the reason (counted under on_bad_rows: skip)."""


@dataclass
class Conversation:
    """One SFT example: messages ending with an assistant turn."""

    messages: list[dict[str, str]]
    where: str
    tools: str | None = None


@dataclass
class PreferencePair:
    """One preference example: a prompt (messages ending with user/tool) and two assistant answers."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    where: str
    tools: str | None = None


# ------------------------------------------------------------------------------------------ detection
def detect_format(row: dict[str, Any], columns: dict[str, str], preference: bool) -> str | None:
    """The format of `row` from its keys (after column mapping), or None when nothing fits."""
    has = {name for name in _CANONICAL if columns.get(name, name) in row}
    if preference:
        if {"conversations", "chosen", "rejected"} <= has:
            return "sharegpt_preference"
        if {"prompt", "chosen", "rejected"} <= has:
            return "preference"
        if {"instruction", "chosen", "rejected"} <= has:
            return "alpaca_preference"
        if {"question", "response_chosen", "response_rejected"} <= has:
            return "question_preference"
        return None
    if "messages" in has:
        return "messages"
    if "conversations" in has:
        return "sharegpt"
    if {"instruction", "output"} <= has:
        return "alpaca"
    if {"prompt", "completion"} <= has:
        return "prompt_completion"
    return None


_CANONICAL = (
    "instruction",
    "input",
    "output",
    "system",
    "history",
    "conversations",
    "messages",
    "prompt",
    "completion",
    "chosen",
    "rejected",
    "tools",
    "question",
    "response_chosen",
    "response_rejected",
)
_REQUIRED = {
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "alpaca_preference": ("instruction", "chosen", "rejected"),
    "sharegpt_preference": ("conversations", "chosen", "rejected"),
    "question_preference": ("question", "response_chosen", "response_rejected"),
}


# ------------------------------------------------------------------------------------------ reading
def read_rows(
    path: Path,
    *,
    fmt: str,
    columns: dict[str, str],
    preference: bool,
    on_bad_rows: str,
    bad: BadRows,
    default_system: str | None = None,
) -> tuple[str, list]:
    """(format used, examples) of one file. `fmt: auto` detects the format from the first row."""
    examples: list = []
    used = fmt
    for where, row in iter_json_rows(path, on_bad_rows, bad):
        if used == "auto":
            used = detect_format(row, columns, preference)
            if used is None:
                wanted = PREFERENCE_FORMATS if preference else SFT_FORMATS
                raise LlmtuneError(
                    f"{where}: cannot tell the data format from the keys {brief(sorted(row), 200)}; expected one of "
                    f"{', '.join(wanted)} (see their keys in the README), or map your column names with "
                    "data.columns, e.g. {instruction: question, output: answer}."
                )
        try:
            example = parse_row(row, used, columns, where, default_system)
        except BadRow as exc:
            report_bad_row(where, str(exc), on_bad_rows, bad)
            continue
        except RecursionError:  # a value nested ~1000 deep (json.loads' limit) re-serialised as tools
            report_bad_row(where, "a value nested too deeply", on_bad_rows, bad)
            continue
        examples.append(example)
    if used == "auto":
        used = "empty"
    return used, examples


def parse_row(row: dict, fmt: str, columns: dict[str, str], where: str, default_system: str | None = None):
    """One row → Conversation or PreferencePair; raises BadRow with the reason."""

    def get(name: str, required: bool = False):
        key = columns.get(name, name)
        value = row.get(key)
        if required and value is None:
            raise BadRow(f"missing field '{key}'" + (f" (data.columns.{name})" if key != name else ""))
        return value

    for name in _REQUIRED[fmt]:
        get(name, required=True)
    tools = get("tools")
    if tools is not None and not isinstance(tools, str):
        tools = json.dumps(tools, ensure_ascii=False)
    system = get("system")
    if system is not None and not isinstance(system, str):
        raise BadRow("field 'system' is not a string")
    system = system or default_system

    if fmt == "alpaca" or fmt == "alpaca_preference":
        messages = _alpaca_prompt(get("instruction"), get("input"), get("history"), system)
        if fmt == "alpaca":
            messages.append({"role": "assistant", "content": _text(get("output"), "output")})
            return Conversation(_checked(messages, final="assistant"), where, tools)
        return _pair(messages, get("chosen"), get("rejected"), where, tools)
    if fmt in ("sharegpt", "sharegpt_preference"):
        messages = _sharegpt_messages(get("conversations"), system)
        if fmt == "sharegpt":
            return Conversation(_checked(messages, final="assistant"), where, tools)
        return _pair(messages, get("chosen"), get("rejected"), where, tools)
    if fmt == "messages":
        messages = _openai_messages(get("messages"), system)
        return Conversation(_checked(messages, final="assistant"), where, tools)
    if fmt == "prompt_completion":
        messages = _prompt_messages(get("prompt"), system)
        messages.append({"role": "assistant", "content": _text(get("completion"), "completion")})
        return Conversation(_checked(messages, final="assistant"), where, tools)
    if fmt == "question_preference":
        prompt = _prompt_messages(_text(get("question"), "question"), system)
        return _pair(prompt, get("response_chosen"), get("response_rejected"), where, tools)
    if fmt == "preference":
        return _pair(_prompt_messages(get("prompt"), system), get("chosen"), get("rejected"), where, tools)
    raise LlmtuneError(f"data.format: unknown format {fmt!r}")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"field '{name}' is not a string ({type(value).__name__})")
    if not value.strip():
        raise BadRow(f"empty '{name}'")
    return value


def _alpaca_prompt(instruction, input_text, history, system) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    if history:
        if not isinstance(history, list):
            raise BadRow("field 'history' is not a list of [user, assistant] pairs")
        for turn in history:
            if not (isinstance(turn, list | tuple) and len(turn) == 2):
                raise BadRow("field 'history' is not a list of [user, assistant] pairs")
            messages.append({"role": "user", "content": _text(turn[0], "history")})
            messages.append({"role": "assistant", "content": _text(turn[1], "history")})
    instruction = _text(instruction, "instruction")
    if input_text is not None and not isinstance(input_text, str):
        raise BadRow("field 'input' is not a string")
    content = f"{instruction}\n\n{input_text}" if input_text and input_text.strip() else instruction
    messages.append({"role": "user", "content": content})
    return messages


def _sharegpt_messages(turns, system) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise BadRow("'conversations' is not a non-empty list")
    messages = [{"role": "system", "content": system}] if system else []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRow(f"conversations[{index}] is not an object")
        role_key = "from" if "from" in turn else "role"
        content_key = "value" if "value" in turn else "content"
        speaker = turn.get(role_key)
        if speaker not in SHAREGPT_ROLES:
            raise BadRow(
                f"conversations[{index}] has unknown speaker {brief(speaker)} "
                f"(expected {', '.join(sorted(SHAREGPT_ROLES))})"
            )
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": _text(turn.get(content_key), "value")})
    return messages


def _openai_messages(turns, system) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise BadRow("'messages' is not a non-empty list")
    messages = []
    if system and not (isinstance(turns[0], dict) and turns[0].get("role") == "system"):
        messages.append({"role": "system", "content": system})
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRow(f"messages[{index}] is not an object")
        role = turn.get("role")
        if role not in MESSAGE_ROLES:
            raise BadRow(
                f"messages[{index}] has unknown role {brief(role)} (expected {', '.join(MESSAGE_ROLES)})"
            )
        content = turn.get("content")
        if content is None and turn.get("tool_calls"):
            content = json.dumps(turn["tool_calls"], ensure_ascii=False)
        messages.append({"role": role, "content": _text(content, "content")})
    return messages


def _prompt_messages(prompt, system) -> list[dict]:
    if isinstance(prompt, list):
        return _openai_messages(prompt, system)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": _text(prompt, "prompt")})
    return messages


def _answer(value, name: str) -> str:
    """A preference answer: a string, a message list whose last message is the assistant's, or one
    assistant message ({from: gpt, value} or {role: assistant, content}: LLaMA-Factory's sharegpt pairs)."""
    if isinstance(value, dict):
        speaker = value.get("from", value.get("role"))
        if SHAREGPT_ROLES.get(speaker) != "assistant":
            raise BadRow(f"'{name}' is a message from {brief(speaker)}, not from the assistant")
        value = value.get("value", value.get("content"))
    elif isinstance(value, list):
        if not value or not isinstance(value[-1], dict) or value[-1].get("role") != "assistant":
            raise BadRow(f"'{name}' is a message list that does not end with an assistant message")
        value = value[-1].get("content")
    return _text(value, name)


def _pair(prompt: list[dict], chosen, rejected, where: str, tools) -> PreferencePair:
    prompt = _checked(prompt, final="user")
    chosen, rejected = _answer(chosen, "chosen"), _answer(rejected, "rejected")
    if chosen.strip() == rejected.strip():
        raise BadRow("chosen == rejected (the pair teaches nothing)")
    return PreferencePair(prompt, chosen, rejected, where, tools)


def _checked(messages: list[dict], *, final: str) -> list[dict]:
    """Role order: [system] user (assistant (user | tool+ assistant))* ... ending with `final`."""
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        raise BadRow(
            f"system message at position {roles.index('system', 1 if roles[0] == 'system' else 0)} (only first)"
        )
    if not body or body[0] != "user":
        raise BadRow("conversation does not start with a user turn")
    allowed_next = {"user": {"assistant"}, "assistant": {"user", "tool"}, "tool": {"tool", "assistant"}}
    for position, (previous, current) in enumerate(zip(body, body[1:], strict=False), start=2):
        if current not in allowed_next[previous]:
            raise BadRow(f"wrong role order: {previous} followed by {current} at turn {position}")
    if final == "assistant" and body[-1] != "assistant":
        raise BadRow("conversation does not end with an assistant turn (nothing to learn)")
    if final == "user" and body[-1] not in ("user", "tool"):
        raise BadRow("preference prompt ends with an assistant turn; it must end with the user's turn")
    return messages
