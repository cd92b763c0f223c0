"""One generation engine for chat and serve: prompt encoding, streamed decoding, stop strings, cancellation.

It calls `model.generate` the way `eval --generate` does (evaluation/generation.py: the same chat-template
rendering, the same tokenisation, the same GenerationConfig fields, the stop ids set by set_stop_tokens, and
`decode(..., skip_special_tokens=True).strip()` of the tokens before the first stop id), so a greedy
answer here is the eval answer, token for token. What transformers' streamers do not give is written here:
- text deltas that concatenate exactly to the final (stripped) answer: whitespace at either end and a
  partial UTF-8 character are held back until the next token decides them;
- OpenAI `stop` strings, with the text that could still become one held back and the answer cut before it
  (transformers' own `stop_strings` stops generation but leaves the string in the output);
- cancellation from another thread (Ctrl-C in chat, a client that hangs up in serve), which ends
  generation at the next token through a StoppingCriteria.
One generation runs at a time (a lock): requests queue, and never share a batch whose padding or seeds
could make one answer depend on another.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger("llmtune")


@dataclass
class Sampling:
    """What one answer is generated with. None means the model's own generation_config value (as
    transformers serve and vLLM do); temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Answer:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0  # tokens of the answer; the end-of-turn token that ended it is not counted
    finish_reason: str = "length"  # "stop" (end of turn or a stop string), "length", "cancelled"
    token_ids: list[int] = field(default_factory=list)


class Engine:
    """A loaded model answering one prompt at a time."""

    def __init__(self, model, tokenizer, *, name: str, kind: str = "model"):
        from llmtune.inference import stop_token_ids
        from llmtune.models import max_positions

        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.kind = kind
        self.context = max_positions(model)
        self.stop_ids = set(stop_token_ids(model))
        self.lock = threading.Lock()
        self.device = next(model.parameters()).device
        self._worker = Worker()

    # ------------------------------------------------------------------------------------ prompts
    @property
    def has_template(self) -> bool:
        return bool(self.tokenizer.chat_template)

    def render(self, messages: list[dict]) -> str:
        """The conversation through the run's chat template, ready for the assistant's turn. A model
        without a template gets the last user message as plain text (as eval --generate does)."""
        if not self.has_template:
            return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        # eval's tokenisation: the template writes its own BOS, so no special tokens are added to it.
        return self.tokenizer(self.render(messages), add_special_tokens=not self.has_template)["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def room(self, prompt_tokens: int) -> int | None:
        """New tokens the context leaves after a prompt (None: no known limit)."""
        return None if self.context is None else self.context - prompt_tokens

    # ------------------------------------------------------------------------------------ generation
    def generation_config(self, sampling: Sampling):
        from transformers import GenerationConfig

        # A field the model's generation_config sets (its saved file, not transformers' class defaults)
        # is the default; top-k is then off unless the model sets it (OpenAI has no top-k).
        saved = self.model.generation_config.to_diff_dict()
        temperature = sampling.temperature
        if temperature is None:
            do_sample = bool(saved.get("do_sample", False))
            temperature = saved.get("temperature") or 1.0
        else:
            do_sample = temperature > 0
        top_p = sampling.top_p if sampling.top_p is not None else saved.get("top_p", 1.0)
        top_k = sampling.top_k if sampling.top_k is not None else saved.get("top_k", 0)
        return GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            # 0 turns top-k off; None would be filled with transformers' default of 50
            top_k=top_k if do_sample else None,
            top_p=top_p if do_sample else None,
            repetition_penalty=1.0,
            eos_token_id=self.model.generation_config.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def stream(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        cancel: threading.Event | None = None,
        *,
        strip: bool = True,
    ) -> Iterator[str]:
        """Yield text deltas of the answer; the generator's return value (StopIteration.value, or
        `answer_of`) is the Answer. Closing the generator early cancels the generation. `strip`: the
        answer without surrounding whitespace (a chat answer, as eval gives it); False for a raw text
        completion, whose leading space is part of the continuation."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, set_seed
        from transformers.generation.streamers import BaseStreamer

        cancel = cancel or threading.Event()
        config = self.generation_config(sampling)
        answer = Answer(prompt_tokens=len(prompt_ids))
        text = Text(self.tokenizer, sampling.stop, strip)
        stop_ids = self.stop_ids
        deltas: queue.Queue = queue.Queue()  # text for the consumer; None when the answer is complete
        failure: list[BaseException] = []

        # Tokens are decoded in the generating thread itself, between its steps, so the consumer only
        # moves finished text and no second thread competes with generate for the GIL at every token.
        class Tokens(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:  # generate() hands the prompt over first
                    self.first = False
                    return
                token = int(value.reshape(-1)[0])
                if token in stop_ids:  # generate() ends here itself
                    answer.finish_reason = "stop"
                    return
                if answer.finish_reason == "stop" or cancel.is_set():
                    return  # what generate produced before it saw the cancel
                answer.token_ids.append(token)
                delta = text.add(answer.token_ids)
                if delta:
                    deltas.put(delta)
                if text.stopped:
                    answer.finish_reason = "stop"
                    cancel.set()

            def end(self):
                pass

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

        def work():
            try:
                ids = torch.tensor([prompt_ids], device=self.device)
                with torch.no_grad():
                    self.model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        generation_config=config,
                        streamer=Tokens(),
                        stopping_criteria=StoppingCriteriaList([Cancelled()]),
                    )
                if answer.finish_reason != "stop":
                    answer.finish_reason = "cancelled" if cancel.is_set() else "length"
                tail = text.finish(answer.token_ids)
                if tail:
                    deltas.put(tail)
            except BaseException as exc:  # handed to the consumer, which raises it
                failure.append(exc)
            finally:
                deltas.put(None)

        with self.lock:
            if config.do_sample:
                set_seed(
                    sampling.seed if sampling.seed is not None else int.from_bytes(_random_bytes(), "little")
                )
            finished = self._worker.submit(work)
            try:
                while (delta := deltas.get()) is not None:
                    yield delta
                if failure:
                    raise failure[0]
            finally:
                cancel.set()  # a consumer that stopped reading (Ctrl-C, a closed connection) ends generation
                while True:  # the model is free only when generate has returned, even through a Ctrl-C
                    try:
                        finished.wait()
                        break
                    except KeyboardInterrupt:
                        continue
        answer.text = text.final
        answer.completion_tokens = text.tokens_used
        return answer

    def answer_of(self, stream) -> Answer:
        """Drain a stream (or take the value it returned) and give its Answer."""
        try:
            while True:
                next(stream)
        except StopIteration as done:
            return done.value

    def complete(self, prompt_ids: list[int], sampling: Sampling, cancel=None, *, strip=True) -> Answer:
        return self.answer_of(self.stream(prompt_ids, sampling, cancel, strip=strip))


class Worker:
    """One long-lived thread runs every generation, so torch's OpenMP thread team is made once and reused,
    not once per answer (the threads of a finished team spin for a while and compete for the cores)."""

    def __init__(self):
        self.jobs: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None

    def submit(self, job) -> threading.Event:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="llmtune-generate", daemon=True)
            self.thread.start()
        done = threading.Event()
        self.jobs.put((job, done))
        return done

    def _run(self):
        while True:
            job, done = self.jobs.get()
            try:
                job()  # catches its own failures
            finally:
                done.set()


def _random_bytes() -> bytes:
    import os

    return os.urandom(4)


class Text:
    """The answer's text as tokens arrive: what may be shown so far, and where a stop string cuts it."""

    def __init__(self, tokenizer, stop: tuple[str, ...], strip: bool = True):
        self.tokenizer = tokenizer
        self.strip = strip
        self.stop = tuple(s for s in stop if s)
        self.sent = ""
        self.stopped = False
        self.final = ""
        self.tokens_used = 0

    def _decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text.lstrip() if self.strip else text

    def _end(self, text: str) -> str:
        return text.rstrip() if self.strip else text

    def add(self, ids: list[int]) -> str:
        full = self._decode(ids)
        self.tokens_used = len(ids)
        cut = self._stop_at(full)
        if cut is not None:
            self.stopped = True
            self.final = self._end(full[:cut])
            return self._delta(self.final)
        # Held back: the end that may begin a stop string, then (in a chat answer) the whitespace before
        # it, which is shown only when text follows it.
        shown = self._end(full[: len(full) - self._partial_stop(full)])
        if shown.endswith("\ufffd"):  # a character split across tokens: wait for its other bytes
            return ""
        return self._delta(shown)

    def finish(self, ids: list[int]) -> str:
        if not self.stopped:
            self.final = self._end(self._decode(ids))
            self.tokens_used = len(ids)
        return self._delta(self.final, final=True)

    def _delta(self, shown: str, final: bool = False) -> str:
        if not shown.startswith(self.sent):
            # Decoding more tokens changed text already shown (a tokenizer that cleans up spaces before
            # punctuation does this). Shown text cannot be taken back: wait for the decode to agree again.
            if final:
                log.warning("note: the streamed text and the final decode of this answer differ.")
            return ""
        delta = shown[len(self.sent) :]
        self.sent = shown
        return delta

    def _stop_at(self, text: str) -> int | None:
        found = [text.find(s) for s in self.stop]
        found = [i for i in found if i >= 0]
        return min(found) if found else None

    def _partial_stop(self, text: str) -> int:
        """Length of the longest end of `text` that begins a stop string (held back until decided)."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    longest = max(longest, n)
                    break
        return longest


def load_engine(name: str, *, dtype: str = "auto", hub: str = "auto") -> Engine:
    """The Engine for anything eval accepts, with the run's chat template and its end-of-turn stop token
    (the same loading and stop tokens as eval --generate)."""
    from llmtune.data.templates import end_of_turn_token
    from llmtune.generation import set_stop_tokens
    from llmtune.inference import load_lm
    from llmtune.recipe import ModelSection

    model, tokenizer, kind = load_lm(ModelSection(name_or_path=name, dtype=dtype, hub=hub), name)
    set_stop_tokens(model, tokenizer, end_of_turn_token(tokenizer, None))
    if not tokenizer.chat_template:
        log.warning("note: %s has no chat template; each message is given to it as plain text.", name)
    return Engine(model, tokenizer, name=name, kind=kind)
