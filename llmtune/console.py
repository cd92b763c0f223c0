"""How llmtune talks to a terminal: its log lines on stderr, and every error as one paragraph with an exit
code (2: bad input the user can fix; 1: a failure; 130: interrupted), the traceback only with --debug."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager

import typer


@contextmanager
def user_errors(debug: bool):
    """Print an LlmtuneError as one paragraph and exit 2; keep tracebacks for --debug."""
    from llmtune.errors import EXIT_USER_ERROR, LlmtuneError

    debug = debug or os.environ.get("LLMTUNE_DEBUG", "") not in ("", "0")
    configure_logging()
    silence_library_noise()
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


# Library messages that every command would show and no user can act on, each dropped by its logger or
# module and the start of its text; every other message of the same library stays.
# bitsandbytes on a CPU with avx512bf16 tries to fetch an optional kernel from the hub at import
# (bitsandbytes/backends/cpu/ops.py) and logs its failure; the CPU code runs without it.
BNB_CPU_KERNEL = (
    "bitsandbytes.backends.cpu.ops",
    "Failed to load CPU gemm_4bit_forward from kernels-community",
)
# peft (peft_model.py) and TRL read PreTrainedModel.is_gradient_checkpointing, deprecated in transformers 5.
GRADIENT_CHECKPOINTING_ALIAS = (
    r"transformers\.modeling_utils\Z",
    r"`is_gradient_checkpointing` is deprecated",
)


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message (before %-formatting) starts with `start`."""

    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def silence_library_noise() -> None:
    """Drop the library messages above (each command calls this; calling it again adds nothing)."""
    name, start = BNB_CPU_KERNEL
    logger = logging.getLogger(name)  # the same object bitsandbytes gets when it is imported later
    if not any(isinstance(f, _DropMessage) and f.start == start for f in logger.filters):
        logger.addFilter(_DropMessage(start))
    module, message = GRADIENT_CHECKPOINTING_ALIAS
    warnings.filterwarnings("ignore", message=message, category=FutureWarning, module=module)
