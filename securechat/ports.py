"""The TCP port securechat uses when none is given: one constant for the server's settings,
the command line and the client (docs/protocol.md, "Transport")."""

from __future__ import annotations

__all__ = ["DEFAULT_PORT"]

DEFAULT_PORT = 7443
