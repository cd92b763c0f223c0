"""One writer per folder: an exclusive lock that a command holds on its output folder for the whole run.

Two `llmtune sft` runs on one output_dir used to move each other's live folders aside; two evals started in
the same second chose the same folder. The lock is an `flock` on `.<name>.lock` beside the folder (not
inside it: the folder itself is renamed aside, staged and published while the lock is held). The kernel
drops an flock when its process dies, so a crashed or killed run never leaves a stale lock behind; the file
names the holder (PID, command, host, start time) so that the refusal can say who it is.

Written by hand because neither accelerate nor HF has a cross-process lock for an output folder
(`filelock`, which datasets uses, cannot report the holder and leaves its lock files behind).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")

# Locks this process holds, by folder: released at the end of the command (console.user_errors) if a
# stage failed between checking its folder and opening it.
HELD: dict[Path, FolderLock] = {}


def lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


class FolderBusy(LlmtuneError):
    """Another live process holds the folder's lock."""


class FolderLock:
    def __init__(self, folder: Path, fd: int | None):
        self.folder, self.fd = folder, fd

    @classmethod
    def acquire(cls, folder: Path, *, command: str, key: str) -> FolderLock:
        """Take the lock on `folder` without waiting, or raise FolderBusy naming the holder."""
        import fcntl

        folder = Path(os.path.abspath(folder))
        stale = HELD.pop(folder, None)
        if stale is not None:  # this process's previous command ended without releasing it
            stale.release()
        folder.parent.mkdir(parents=True, exist_ok=True)
        path = lock_path(folder)
        for _ in range(20):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderBusy(
                    f"{key} {folder} is in use by {describe_holder(folder)}; two commands must never write "
                    "one folder at once.",
                    hint="Wait for it to finish (or stop it), or choose another folder.",
                ) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    log.warning("note: %s does not support file locks; not locking %s", folder.parent, folder)
                    return cls(folder, None)
                raise
            # A holder that releases unlinks the file; the one locked must still be the one on disk.
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                holder = {
                    "pid": os.getpid(),
                    "command": f"llmtune {command}",
                    "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(holder).encode())
                lock = cls(folder, fd)
                HELD[folder] = lock
                return lock
            os.close(fd)
        raise LlmtuneError(f"{key} {folder}: could not take its lock {path} (it keeps being replaced).")

    def release(self) -> None:
        if self.fd is None:
            return
        HELD.pop(self.folder, None)
        try:
            os.unlink(lock_path(self.folder))  # while still holding it: see the inode check in acquire
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def release_all() -> None:
    for lock in list(HELD.values()):
        lock.release()


def is_locked(folder: Path) -> bool:
    """Whether another process holds `folder`'s lock (for choosing a free default name)."""
    import fcntl

    path = lock_path(Path(os.path.abspath(folder)))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def describe_holder(folder: Path) -> str:
    """Who holds `folder`'s lock, as the lock file says."""
    path = lock_path(Path(os.path.abspath(folder)))
    try:
        holder = json.loads(path.read_text()[:2000])
        return f"`{holder['command']}` (PID {holder['pid']} on {holder['host']}, started {holder['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another llmtune process"
