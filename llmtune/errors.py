"""The one user-facing error type, and how the CLI prints it.

Every problem a user can fix (a typo in a recipe, a missing file, a model that is not cached) is raised
as `LlmtuneError` with a one-paragraph message that names the key, file or line and says what to do.
The CLI prints it without a traceback and exits with `EXIT_USER_ERROR`; anything else is a bug or a
runtime failure and keeps its traceback behind `--debug`.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class LlmtuneError(Exception):
    """A problem in the user's input, reported as one paragraph without a traceback."""

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message.strip()
        self.hint = hint.strip() if hint else None
        super().__init__(self.render())

    def render(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


def did_you_mean(word: str, choices, aliases: dict[str, str] | None = None) -> str:
    """', did you mean 'x'?' for the closest choice, or '' when nothing is close.

    `aliases` maps names users bring from other tools (LLaMA-Factory's `lora_rank`, a plain `rank`) to
    ours, so that `rnak` still finds `r` through `rank`."""
    import difflib

    choices = list(choices)
    aliases = {k: v for k, v in (aliases or {}).items() if v in choices}
    close = difflib.get_close_matches(word, choices + list(aliases), n=1, cutoff=0.6)
    if not close:
        return ""
    return f", did you mean '{aliases.get(close[0], close[0])}'?"


def first_line(exc: BaseException) -> str:
    """An exception's first line for a one-paragraph message (its type when the message is empty: an
    empty message used to raise IndexError inside the error path)."""
    text = str(exc).strip()
    return text.split("\n", 1)[0].strip() if text else type(exc).__name__
