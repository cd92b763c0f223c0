"""Fault injection at the run lifecycle's phase boundaries, for the reliability tests.

The data-loss guarantees (a signal or a failure at any phase leaves the previous state intact) are tested
on real processes; a tiny model runs through its phases in milliseconds, too fast to time a signal from
outside. `LLMTUNE_FAULT=<phase>:<action>[,<phase>:<action>...]` makes a process act when it enters a
phase (see Run.phase):

    signal:TERM / signal:INT    send itself the signal (through the real handlers)
    enospc                      raise OSError(ENOSPC), as a full disk does on the next write
    pause                       write <folder>.paused-<pid> beside the folder, then wait (up to 120 s)
                                until that file is removed: another process can act meanwhile

Unset (always, outside the tests) it costs one dictionary lookup per phase.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path


def _faults() -> dict[str, str]:
    spec = os.environ.get("LLMTUNE_FAULT", "")
    pairs = (item.split(":", 1) for item in spec.split(",") if ":" in item)
    return {phase.strip(): action.strip() for phase, action in pairs}


def at_phase(phase: str, folder: Path) -> None:
    action = _faults().get(phase) if "LLMTUNE_FAULT" in os.environ else None
    if action is None:
        return
    if action.startswith("signal:"):
        os.kill(os.getpid(), getattr(signal, "SIG" + action.split(":", 1)[1]))
        time.sleep(0.5)  # let the handler run here, inside the phase
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    elif action == "pause":
        marker = folder.with_name(f"{folder.name}.paused-{os.getpid()}")
        marker.write_text(phase)
        deadline = time.monotonic() + 120
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
