"""A session's bounded outbound queue, drained by that session's writer thread.

Most frames never wait in it: when nothing is queued and the writer is idle, `put`
hands the frame straight to the channel's non-blocking `send_now`, in the caller's
thread. Waking a writer thread per frame costs far more than the send itself once a
line goes to hundreds of sessions (GIL hand-offs between hundreds of threads). The
writer takes over only when the socket is full or frames are already waiting, and then
it sends everything queued in one write.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol

__all__ = ["Outbox", "Sink"]


class Sink(Protocol):
    """The non-blocking side of a channel (see `TlsChannel.send_now`)."""

    def send_now(self, data: bytes) -> bool: ...

    @property
    def backlogged(self) -> bool: ...


class Outbox:
    """Frames waiting to be written to one client.

    `put` never blocks (a broadcast must not wait on a slow client). When the queued
    bytes would exceed `limit`, the outbox marks itself overflowed and refuses
    everything afterwards; the writer sees that in `take` and drops its own client.
    Frames reach the client in the order they were put.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._sink: Sink | None = None
        self._frames: deque[bytes] = deque()
        self._size = 0
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._overflowed = False
        self._writing = False  # the writer took frames and has not finished sending them
        self._flush = False  # the sink holds a backlog only the writer can push out

    def attach(self, sink: Sink) -> None:
        """Let `put` send through `sink` directly from now on (once its channel is up)."""
        with self._cond:
            self._sink = sink

    def put(self, frame: bytes) -> bool:
        """Queue or send `frame`; False if it was refused (closed, or the limit is exceeded)."""
        with self._cond:
            if self._closed or self._overflowed:
                return False
            # The fast path keeps order: nothing is queued, the writer is not mid-send,
            # and send_now refuses while earlier ciphertext is unsent.
            direct = not self._frames and not self._writing and self._sink is not None
            if direct and self._sink is not None and self._sink.send_now(frame):
                if self._sink.backlogged:
                    self._flush = True
                    self._cond.notify()
                return True
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
        """Block until there is something to send; return the queued frames joined.

        The result may be b"" when only the sink's backlog needs pushing; the caller
        sends it (backlog first) before calling `take` again, and until then `put`
        queues instead of sending. Returns None once the outbox is closed and drained,
        or has overflowed (then what was queued is discarded: the client is about to
        be dropped).
        """
        with self._cond:
            self._writing = False  # calling take again means the last batch was sent
            while not self._frames and not self._flush and not self._closed and not self._overflowed:
                self._cond.wait()
            if self._overflowed or (not self._frames and not self._flush):
                self._frames.clear()
                self._size = 0
                return None
            data = b"".join(self._frames)
            self._frames.clear()
            self._size = 0
            self._flush = False
            self._writing = True
            return data
