"""Writing a user's files: a new file is written whole, and never over one that exists."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_new_file(path: Path, text: str) -> None:
    """Write `text` to a new file at `path`: a temporary file in the same folder, then linked to its name.
    The link fails with FileExistsError when the name exists (a rename would replace the file, and llmtune
    never replaces a user's file), even for a file created after the caller looked."""
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666: the umask applies
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise
        except OSError:
            # A filesystem without hard links: look, then rename (a file created in between could be lost,
            # so this is only the fallback).
            if path.exists() or path.is_symlink():
                raise FileExistsError(path) from None
            os.rename(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
