"""One `llmtune chat` conversation on an Engine: the history, the session commands, the context guard,
streamed answers that Ctrl-C stops, and /save. It is handed one typed line at a time and writes to a text
stream, so tests drive it exactly as the terminal loop (stages/chat.py) does, without a terminal.

What the model sees: the system prompt, then the turns (a user message and its answer) it still has room
for, then the new message. What /save writes: every turn as the user had it, whatever the model still sees.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from llmtune.files import write_new_file
from llmtune.serving.engine import Answer, Engine, Sampling

COMMANDS = (
    ("/system TEXT", "set the system prompt (/system alone shows it)"),
    ("/reset", "clear the conversation (the system prompt stays)"),
    ("/regen", "answer the last message again"),
    ("/save FILE", "write the conversation as one JSONL line for llmtune sft"),
    ("/exit", "end the session (or Ctrl-D)"),
)


@dataclass(frozen=True)
class ChatSettings:
    """The sampling flags of `llmtune chat` (checked by the stage before the model loads)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 512
    seed: int | None = None

    def describe(self) -> str:
        if self.temperature == 0:
            sampling = "greedy (temperature 0)"
        else:
            top_k = self.top_k or "off"
            seed = "random" if self.seed is None else f"{self.seed} (+1 per answer)"
            sampling = f"temperature {self.temperature:g}, top-p {self.top_p:g}, top-k {top_k}, seed {seed}"
        return f"{sampling}; at most {self.max_new_tokens} new tokens"


@dataclass
class Turn:
    user: str
    answer: str


class ChatSession:
    """The conversation and its commands. `handle(line)` returns False when the session should end."""

    def __init__(self, engine: Engine, settings: ChatSettings, *, system: str | None = None, out: TextIO):
        self.engine = engine
        self.settings = settings
        self.system = system or None
        self.out = out
        self.turns: list[Turn] = []
        self.first_seen = 0  # turns before this index were dropped from the prompt to fit the context
        self.generations = 0  # answers generated so far: the n-th is sampled with seed + n

    # ------------------------------------------------------------------------------------ lines
    def handle(self, line: str) -> bool:
        text = line.strip()
        if not text:
            return True
        if not text.startswith("/"):
            self.reply(text)
            return True
        command, _, argument = text.partition(" ")
        argument = argument.strip()
        if command == "/exit":
            return False
        if command == "/system":
            self.set_system(argument)
        elif command == "/reset":
            self.reset()
        elif command == "/regen":
            self.regenerate()
        elif command == "/save":
            self.save(argument)
        else:
            self.say(f"[unknown command {command}; the commands are:]")
            self.say(commands_help())
        return True

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # ------------------------------------------------------------------------------------ commands
    def set_system(self, text: str) -> None:
        if not text:
            self.say(f"[system prompt: {self.system}]" if self.system else "[no system prompt]")
            return
        self.system = text
        # The template puts the system message first, so the model reads it with the whole history.
        self.say("[system prompt set; it applies from the next answer on, and the conversation is kept]")

    def reset(self) -> None:
        self.turns.clear()
        self.first_seen = 0
        kept = "; the system prompt is kept" if self.system else ""
        self.say(f"[conversation cleared{kept}]")

    def regenerate(self) -> None:
        if not self.turns:
            self.say("[nothing to regenerate yet: send a message first]")
            return
        last = self.turns.pop()
        if not self.reply(last.user):
            self.turns.append(last)  # the context refused it (a longer /system since): keep the old answer
            self.say("[the previous answer is kept]")

    def save(self, argument: str) -> None:
        if not argument:
            self.say("[usage: /save FILE]")
            return
        path = Path(argument).expanduser()
        messages = self.saved_messages()
        if not any(m["role"] == "assistant" for m in messages):
            self.say("[nothing to save yet: no answered message]")
            return
        if path.exists() or path.is_symlink():
            self.say(f"[not saved: {path} exists, and llmtune never replaces a file; give another name]")
            return
        if not path.parent.is_dir():
            self.say(f"[not saved: the folder {path.parent} does not exist]")
            return
        line = json.dumps({"messages": messages}, ensure_ascii=False) + "\n"
        try:
            write_new_file(path, line)
        except FileExistsError:
            self.say(f"[not saved: {path} exists, and llmtune never replaces a file; give another name]")
            return
        except OSError as exc:
            self.say(f"[not saved: {exc.strerror or exc} ({path})]")
            return
        empty = sum(1 for turn in self.turns if not turn.answer)
        note = f"; left out {empty} turn(s) with an empty answer, which sft refuses" if empty else ""
        turns = sum(1 for m in messages if m["role"] == "assistant")
        self.say(f"[saved {turns} turn(s) to {path} (one JSONL line in the messages format sft reads){note}]")

    def saved_messages(self) -> list[dict]:
        """Every turn as the user had it (an empty answer left out: sft refuses an empty turn)."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for turn in self.turns:
            if turn.answer:
                messages += [
                    {"role": "user", "content": turn.user},
                    {"role": "assistant", "content": turn.answer},
                ]
        return messages

    # ------------------------------------------------------------------------------------ answers
    def reply(self, text: str) -> bool:
        """Answer a user message and keep the turn; False when the message did not fit (not kept)."""
        fitted = self.fit(text)
        if fitted is None:
            return False
        prompt_ids, max_new_tokens = fitted
        seed = None if self.settings.seed is None else self.settings.seed + self.generations
        self.generations += 1
        sampling = Sampling(
            max_new_tokens=max_new_tokens,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            top_k=self.settings.top_k,  # 0: off (the engine passes 0, not None)
            seed=seed,
        )
        answer = self.stream(prompt_ids, sampling)
        self.turns.append(Turn(text, answer.text))
        if answer.finish_reason == "cancelled":
            self.out.write(" [stopped]\n")
        else:
            self.out.write("\n")
        if answer.finish_reason == "length":
            limit = (
                "--max-new-tokens" if max_new_tokens == self.settings.max_new_tokens else "the context's room"
            )
            self.out.write(f"[cut at {answer.completion_tokens} tokens: {limit}]\n")
        elif answer.finish_reason == "stop" and not answer.text:
            self.out.write("[empty answer: the model ended its turn at once]\n")
        self.out.flush()
        return True

    def messages(self, text: str) -> list[dict]:
        """What the model is given: system prompt, the turns it still sees, the new message."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for turn in self.turns[self.first_seen :]:
            messages += [
                {"role": "user", "content": turn.user},
                {"role": "assistant", "content": turn.answer},
            ]
        return messages + [{"role": "user", "content": text}]

    def fit(self, text: str) -> tuple[list[int], int] | None:
        """(prompt ids, max new tokens) that fit the model's context, dropping the oldest turns from the
        prompt when needed; None (and why) when the message leaves no room for an answer at all."""
        context = self.engine.context
        wanted = self.settings.max_new_tokens
        prompt_ids = self.engine.encode_chat(self.messages(text))
        if context is None:
            return prompt_ids, wanted
        dropped_before = self.first_seen
        # Without a template the prompt is the new message alone: dropping history would not shorten it.
        while (
            self.engine.has_template
            and len(prompt_ids) + wanted > context
            and self.first_seen < len(self.turns)
        ):
            self.first_seen += 1
            prompt_ids = self.engine.encode_chat(self.messages(text))
        room = context - len(prompt_ids)
        if room <= 0:
            self.first_seen = dropped_before  # nothing was sent, so the model still sees what it saw
            alone = len(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"])
            around = " with the system prompt and" if self.system else " with"
            self.say(
                f"[not sent: your message is {alone} tokens, {len(prompt_ids)}{around} the chat template, and "
                f"the model's context is {context} tokens, which leaves no room for an answer; shorten it]"
            )
            return None
        if self.first_seen > dropped_before:
            self.say(
                f"[history truncated: dropped the {self.first_seen} oldest turn(s) to fit the model's "
                f"context of {context} tokens]"
            )
        if room < wanted:
            self.say(
                f"[the answer can be at most {room} tokens: the prompt takes {len(prompt_ids)} of the "
                f"model's {context}]"
            )
        return prompt_ids, min(room, wanted)

    def stream(self, prompt_ids: list[int], sampling: Sampling) -> Answer:
        """Generate in a worker thread and print each delta here, in the main thread, where Python delivers
        Ctrl-C. While an answer streams, SIGINT only sets the engine's cancel event (`_ctrl_c_cancels`): a
        KeyboardInterrupt raised at an arbitrary point of the main thread could land inside the queue's
        lock and leave it broken, which once ended a session with exit 1 instead of " [stopped]". The worker
        drains the engine's generator to its end, so the engine's own thread is joined and its lock released
        by the engine itself. What the worker produced after the interrupt (at most a token or two) is
        printed too, so the answer kept is the text shown."""
        cancel = threading.Event()
        deltas: queue.Queue = queue.Queue()
        outcome: list = []  # the Answer, or the exception the engine raised

        def work() -> None:
            try:
                stream = self.engine.stream(prompt_ids, sampling, cancel)
                while True:
                    try:
                        deltas.put(next(stream))
                    except StopIteration as done:
                        outcome.append(done.value)
                        return
            except BaseException as exc:  # re-raised in the main thread
                outcome.append(exc)
            finally:
                deltas.put(None)

        worker = threading.Thread(target=work, name="llmtune-chat-answer", daemon=True)
        with _ctrl_c_cancels(cancel):
            try:
                worker.start()
                while (delta := deltas.get()) is not None:
                    self.out.write(delta)
                    self.out.flush()
            except KeyboardInterrupt:  # only off the main thread, where no handler could be installed
                cancel.set()
            finally:
                _join_through_interrupts(worker, cancel)
            while not deltas.empty():  # the worker has ended: whatever it produced is here
                self.out.write(deltas.get() or "")
            self.out.flush()
        if not outcome:  # interrupted before the worker began
            return Answer(prompt_tokens=len(prompt_ids), finish_reason="cancelled")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]


@contextlib.contextmanager
def _ctrl_c_cancels(cancel: threading.Event):
    """For the duration of one answer, SIGINT sets `cancel` instead of raising KeyboardInterrupt. Python runs
    a signal handler between bytecodes of the main thread only, so this is installed there alone; elsewhere
    the caller falls back to catching KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: cancel.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _join_through_interrupts(worker: threading.Thread, cancel: threading.Event) -> None:
    """Wait for the worker; a second Ctrl-C while it finishes its last token cancels again, never abandons it
    (an abandoned worker would still hold the engine's lock)."""
    while worker.ident is not None:
        try:
            worker.join()
            return
        except KeyboardInterrupt:
            cancel.set()


def commands_help() -> str:
    width = max(len(name) for name, _ in COMMANDS)
    return "\n".join(f"  {name:<{width}}  {what}" for name, what in COMMANDS)
