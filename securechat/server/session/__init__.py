"""One client's session: an I/O shell (io.py) around reader-owned protocol logic (logic.py).

`Session` (the shell) is what the server starts a reader thread for and what the hub
holds; `SessionLogic` is what it does with each frame, talking back only through the
narrow `Port` the shell implements.
"""

from __future__ import annotations

from .io import Session
from .logic import Port, SessionLogic

__all__ = ["Port", "Session", "SessionLogic"]
