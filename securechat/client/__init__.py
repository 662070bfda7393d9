"""The client: `Client` for programs, and the terminal front end over it."""

from __future__ import annotations

from .session import Client, ConnectError, Disconnected, LoginRejected

__all__ = ["Client", "ConnectError", "Disconnected", "LoginRejected"]
