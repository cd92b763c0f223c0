"""What the policy wrote during RL training, with what each reward function gave it: completions.jsonl.

TRL prints sampled completions to the console (or to wandb) with `log_completions`; a run folder needs them
in a file. The reward functions are the one place that sees every prompt, completion and reward, so each is
wrapped: TRL calls them one after another on the same completions, and once the last has answered the batch
is written, every `every` steps, by the main process only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


class CompletionRecorder:
    def __init__(self, path: Path, functions: list, every: int, *, is_main_process: bool = True):
        self.path, self.functions, self.every = path, functions, every
        self.is_main_process = is_main_process
        self._batch: dict[str, list] = {}
        self._key: int | None = None
        self.written = 0

    def wrap(self, function):
        recorder = self

        class Recorded:
            __name__ = function.__name__

            def __call__(self, prompts, completions, **kwargs):
                rewards = function(prompts=prompts, completions=completions, **kwargs)
                recorder._add(function.__name__, prompts, completions, rewards, kwargs)
                return rewards

        return Recorded()

    def _add(self, name: str, prompts, completions, rewards, columns: dict) -> None:
        if self._key != id(completions):
            self._key, self._batch = id(completions), {}
        self._batch[name] = list(rewards)
        if len(self._batch) < len(self.functions):
            return
        state = columns.get("trainer_state")  # TRL passes the live TrainerState to reward functions
        step = state.global_step if state is not None else 0
        if not self.is_main_process or step % self.every:
            return
        weights = {f.__name__: f.weight for f in self.functions}
        with self.path.open("a", encoding="utf-8") as handle:
            for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
                per_function = {n: values[i] for n, values in self._batch.items()}
                total = sum(
                    weights[n] * v for n, v in per_function.items() if v is not None and math.isfinite(v)
                )
                row = {
                    "step": step,
                    "prompt": _text(prompt),
                    "completion": _text(completion),
                    "rewards": per_function,
                    "total": total,
                }
                if "answer" in columns:
                    row["answer"] = columns["answer"][i]
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.written += 1


def _text(value) -> str:
    """A prompt or completion as text: the last message's content for conversational ones."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    return str(value)
