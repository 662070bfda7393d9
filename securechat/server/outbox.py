"""A session's bounded outbound queue, drained by that session's writer thread."""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["Outbox"]


class Outbox:
    """Frames waiting to be written to one client.

    `put` never blocks (a broadcast must not wait on a slow client). When the queued
    bytes would exceed `limit`, the outbox marks itself overflowed and refuses
    everything afterwards; the writer sees that in `take` and drops its own client.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._frames: deque[bytes] = deque()
        self._size = 0
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._overflowed = False

    def put(self, frame: bytes) -> bool:
        """Queue `frame`; False if it was refused (closed, or the limit is exceeded)."""
        with self._cond:
            if self._closed or self._overflowed:
                return False
            if self._size + len(frame) > self._limit:
                self._overflowed = True
                self._cond.notify()
                return False
            self._frames.append(frame)
            self._size += len(frame)
            self._cond.notify()
            return True

    def close(self) -> None:
        """Refuse new frames; `take` returns what is queued, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    @property
    def overflowed(self) -> bool:
        with self._cond:
            return self._overflowed

    def take(self) -> bytes | None:
        """Block until frames are queued; return them joined into one write.

        Returns None once the outbox is closed and drained, or has overflowed
        (then what was queued is discarded: the client is about to be dropped).
        """
        with self._cond:
            while not self._frames and not self._closed and not self._overflowed:
                self._cond.wait()
            if self._overflowed or not self._frames:
                self._frames.clear()
                self._size = 0
                return None
            data = b"".join(self._frames)
            self._frames.clear()
            self._size = 0
            return data
