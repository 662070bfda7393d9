"""The TLS chat server: listener, sessions, hub."""

from __future__ import annotations

from .config import ServerConfig
from .hub import Hub
from .listener import Server

__all__ = ["Hub", "Server", "ServerConfig"]
