"""`llmtune chat`: talk to a model in the terminal, through the chat template it was trained with.

    llmtune chat --model runs/quickstart
    llmtune chat --model smollm2-135m-instruct --system "Answer in one sentence." --temperature 0.7 --seed 1
    printf 'What is LoRA?\\n/save talk.jsonl\\n' | llmtune chat --model runs/quickstart

Read top to bottom: flags checked (before any model loads) → the model loaded as eval loads it → banner →
one line at a time to the session (serving/chat_session.py), which answers, runs the /commands and keeps
the history. Ctrl-C while an answer streams stops that answer (the session handles it); Ctrl-C at the prompt
only prints a hint; /exit or Ctrl-D ends the session with exit code 0. The conversation goes to stdout and
log lines to stderr, so `2>/dev/null` leaves the transcript.
"""

from __future__ import annotations

import logging
import math
import sys

from llmtune.errors import LlmtuneError
from llmtune.serving.chat_session import ChatSession, ChatSettings, commands_help

log = logging.getLogger("llmtune")
PROMPT = ">>> "


def run(
    model: str,
    *,
    system: str | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 512,
    seed: int | None = None,
    dtype: str = "auto",
    hub: str = "auto",
) -> None:
    from llmtune.serving.engine import load_engine

    settings = ChatSettings(temperature, top_p, top_k, max_new_tokens, seed)
    check_flags(settings, dtype=dtype, hub=hub)
    engine = load_engine(model, dtype=dtype, hub=hub)
    session = ChatSession(engine, settings, system=system, out=sys.stdout)
    print(banner(session), flush=True)
    converse(session)


def check_flags(settings: ChatSettings, *, dtype: str, hub: str) -> None:
    """Every flag problem at once, as one paragraph, before the model loads (a load can take minutes)."""
    from llmtune.inference import model_flag_problems

    problems = []
    if not (math.isfinite(settings.temperature) and settings.temperature >= 0):
        problems.append(f"--temperature must be 0 (greedy) or more, not {settings.temperature:g}")
    if not (0 < settings.top_p <= 1):
        problems.append(f"--top-p must be above 0 and at most 1, not {settings.top_p:g}")
    if settings.top_k < 0:
        problems.append(f"--top-k must be 0 (off) or more, not {settings.top_k}")
    if settings.max_new_tokens <= 0:
        problems.append(f"--max-new-tokens must be at least 1, not {settings.max_new_tokens}")
    problems += model_flag_problems(dtype, hub)
    if problems:
        raise LlmtuneError("; ".join(problems) + ".")


def banner(session: ChatSession) -> str:
    engine = session.engine
    if engine.has_template:
        ends = ", ".join(engine.tokenizer.convert_ids_to_tokens(sorted(engine.stop_ids))) or "none"
        template = f"the model's own (an answer ends at {ends})"
    else:
        template = "none: messages are given as plain text, each on its own (the history is not seen)"
    context = f"{engine.context:,} tokens" if engine.context else "unknown"
    lines = [
        f"llmtune chat: {engine.name} ({engine.kind})",
        f"  chat template  {template}",
        f"  context        {context}",
        f"  sampling       {session.settings.describe()}",
    ]
    if session.system:
        lines.append(f"  system prompt  {session.system}")
    lines += ["Commands (Ctrl-C stops an answer):", commands_help()]
    return "\n".join(lines)


def converse(session: ChatSession) -> None:
    """Read lines until /exit or end of input. A typed line is echoed when stdin is not a terminal, so a
    piped session's stdout reads as a transcript."""
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (input() then gets line editing and history)
        except ImportError:  # Windows without pyreadline: plain input() still works
            pass
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            print(flush=True)
            return
        except KeyboardInterrupt:
            print("\n[/exit or Ctrl-D to quit]", flush=True)
            continue
        if not interactive:
            print(line, flush=True)
        try:
            if not session.handle(line):
                return
        except KeyboardInterrupt:  # outside an answer (the session stops answers itself): nothing half-done
            print("\n[interrupted]", flush=True)
