"""The TLS chat server: the server (listener, sweeps), sessions, hub."""

from __future__ import annotations

from .config import ServerConfig
from .hub import Hub
from .server import Server

__all__ = ["Hub", "Server", "ServerConfig"]
