"""TLS transport shared by the server and the client: policy and a full-duplex channel."""

from __future__ import annotations

from .channel import TlsChannel
from .policy import client_context, server_context

__all__ = ["TlsChannel", "client_context", "server_context"]
