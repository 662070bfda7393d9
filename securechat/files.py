"""Writing files that may hold secrets: private from the start, atomic, durable."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_private", "write_private_files"]


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically replace `path` with `data`, created with `mode` (0600 by default).

    The file never exists with wider permissions, and a crash leaves either the
    old file or the new one. Raises `OSError`.
    """
    write_private_files(path.parent, {path.name: data}, mode)


def write_private_files(directory: Path, files: dict[str, bytes | None], mode: int = 0o600) -> None:
    """Replace (or, for None, delete) several files in `directory`, each atomically.

    Each file is written to a temporary name, flushed and renamed over the old one; the
    directory is flushed once at the end, so when this returns every change is on disk
    (a crash before then leaves each file old or new, never torn). Raises `OSError`.
    """
    for name, data in files.items():
        path = directory / name
        if data is None:
            path.unlink(missing_ok=True)
            continue
        tmp = path.with_name(f".{name}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask, and a stale tmp keeps its own
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
