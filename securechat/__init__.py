"""securechat: a multi-user chat over TLS with end-to-end encrypted whispers."""

from __future__ import annotations

from .client import Client, ConnectError, Disconnected, LoginRejected
from .version import VERSION as __version__

__all__ = ["Client", "ConnectError", "Disconnected", "LoginRejected", "__version__"]
