"""What every `securechat` subcommand shares."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_CERT_DIR", "DEFAULT_PORT", "UsageError", "check_port", "default_data_dir"]

DEFAULT_PORT = 7443
DEFAULT_CERT_DIR = Path("certs")


class UsageError(Exception):
    """A problem with what the user asked for; the message says how to fix it (exit status 2)."""


def check_port(port: int, *, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise UsageError(f"port {port} is out of range 1-65535")


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "securechat"
