"""How llmtune talks to a terminal: its log lines on stderr, and every error as one paragraph with an exit
code (2: bad input the user can fix; 1: a failure; 130: interrupted), the traceback only with --debug."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

import typer


@contextmanager
def user_errors(debug: bool):
    """Print an LlmtuneError as one paragraph and exit 2; keep tracebacks for --debug."""
    from llmtune.errors import EXIT_USER_ERROR, LlmtuneError

    debug = debug or os.environ.get("LLMTUNE_DEBUG", "") not in ("", "0")
    configure_logging()
    try:
        yield
    except LlmtuneError as exc:
        if debug:
            raise
        typer.echo(f"llmtune: error: {exc.render()}", err=True)
        raise typer.Exit(getattr(exc, "exit_code", EXIT_USER_ERROR)) from None
    except KeyboardInterrupt:
        if debug:
            raise
        typer.echo("llmtune: interrupted.", err=True)
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if debug:
            raise
        typer.echo(
            f"llmtune: unexpected {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}\n"
            "This is a failure inside llmtune or a library, not a recipe problem. Rerun with --debug for the "
            "traceback (a run folder also has it in run.log).",
            err=True,
        )
        raise typer.Exit(1) from None
    finally:
        # A stage that failed between locking its output folder and opening it leaves the lock to here.
        from llmtune.folder_lock import release_all

        release_all()


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test runners swap it between invocations)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging() -> None:
    logger = logging.getLogger("llmtune")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    # In a multi-process run only rank 0 reports; the others speak up for warnings and errors.
    logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    logger.propagate = False
