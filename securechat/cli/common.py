"""What every `securechat` subcommand shares."""

from __future__ import annotations

import os
import resource
from pathlib import Path

from ..ports import DEFAULT_PORT

__all__ = [
    "DEFAULT_CERT_DIR",
    "DEFAULT_PORT",
    "UsageError",
    "check_port",
    "default_data_dir",
    "raise_open_files_limit",
]

DEFAULT_CERT_DIR = Path("certs")


class UsageError(Exception):
    """A problem with what the user asked for; the message says how to fix it (exit status 2)."""


def check_port(port: int, *, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise UsageError(f"port {port} is out of range 1-65535")


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "securechat"


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the new soft limit.

    Every session (and every simulated client of the benchmark) holds a socket, and the
    usual soft limit of 1024 would refuse connections long before memory runs out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the old limit; the caller reports what it got
    return soft
