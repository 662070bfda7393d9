"""A session's bounded outbound queue, and when that session needs a writer thread.

Most frames never wait in it: when nothing is queued and no writer is busy, `put`
hands the frame straight to the channel's non-blocking `send_now`, in the caller's
thread. Waking a writer thread per frame costs far more than the send itself once a
line goes to hundreds of sessions (GIL hand-offs between hundreds of threads).

A writer thread exists only while there is something the fast path cannot do: the
socket is full, frames are queued, or the session is closing. The outbox asks for one
through `start_writer` and the writer leaves after `idle_exit` seconds with nothing to
send, so thousands of quiet sessions hold one thread each (the reader), not two.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

__all__ = ["IDLE", "Idle", "Outbox", "Sink"]


class Idle:
    """The type of `IDLE`."""


#: What `take` returns when the writer has had nothing to do for a while and may go.
IDLE: Final = Idle()


class Sink(Protocol):
    """The non-blocking side of a channel (see `TlsChannel.send_now`)."""

    def send_now(self, data: bytes) -> bool: ...

    def finish_now(self) -> bool: ...

    @property
    def backlogged(self) -> bool: ...


class Outbox:
    """Frames waiting to be written to one client.

    `put` never blocks (a broadcast must not wait on a slow client). When the queued
    bytes would exceed `limit`, the outbox marks itself overflowed and refuses
    everything afterwards; the writer sees that in `take` and drops its own client.
    Frames reach the client in the order they were put.

    `start_writer()` is called (under the outbox's lock, so it must only start a
    thread) whenever work appears and no writer is running; that writer calls `take`
    until it gets None (finish the connection) or `IDLE` (just exit).
    """

    def __init__(
        self, limit: int, start_writer: Callable[[], None] | None = None, idle_exit: float = 5.0
    ) -> None:
        self._limit = limit
        self._start_writer = start_writer
        self._idle_exit = idle_exit
        self._sink: Sink | None = None
        self._frames: deque[bytes] = deque()
        self._size = 0
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._overflowed = False
        self._writer = False  # a writer thread is running (or has been asked to start)
        self._writing = False  # the writer took frames and has not finished sending them
        self._flush = False  # the sink holds a backlog only the writer can push out

    def attach(self, sink: Sink) -> None:
        """Let `put` send through `sink` directly from now on (once its channel is up)."""
        with self._cond:
            self._sink = sink

    def put(self, frame: bytes) -> bool:
        """Queue or send `frame`; False if it was refused (closed, or the limit is exceeded)."""
        with self._cond:
            return self._put_locked(frame)

    def _put_locked(self, frame: bytes) -> bool:
        if self._closed or self._overflowed:
            return False
        # The fast path keeps order: nothing is queued, the writer is not mid-send,
        # and send_now refuses while earlier ciphertext is unsent.
        direct = not self._frames and not self._writing and self._sink is not None
        if direct and self._sink is not None and self._sink.send_now(frame):
            if self._sink.backlogged:
                self._flush = True
                self._wake_writer_locked()
            return True
        if self._size + len(frame) > self._limit:
            self._overflowed = True
            self._wake_writer_locked()
            return False
        self._frames.append(frame)
        self._size += len(frame)
        self._wake_writer_locked()
        return True

    def _wake_writer_locked(self) -> None:
        self._cond.notify()
        if not self._writer and self._start_writer is not None:
            self._writer = True
            self._start_writer()

    def close(self, last: bytes | None = None) -> None:
        """Refuse new frames after `last` (if given); `take` returns what is queued, then None.

        Putting `last` and closing happen at once, so nothing another thread puts can
        follow the last frame. If everything went out and the sink could end the
        connection at once (`finish_now`), that is all; otherwise a writer is started
        (if none runs) and it finishes the connection.
        """
        with self._cond:
            if last is not None:
                self._put_locked(last)
            self._closed = True
            idle = not (self._writer or self._frames or self._flush or self._overflowed)
            if idle and self._sink is not None and self._sink.finish_now():
                return  # ended in this thread: no writer needed
            self._wake_writer_locked()

    @property
    def overflowed(self) -> bool:
        with self._cond:
            return self._overflowed

    def take(self) -> bytes | Idle | None:
        """For the writer: block until there is something to send; return the queued frames.

        The result may be b"" when only the sink's backlog needs pushing; the caller
        sends it (backlog first) before calling `take` again, and until then `put`
        queues instead of sending. Returns None once the outbox is closed and drained,
        or has overflowed (then what was queued is discarded: the client is about to
        be dropped). Returns `IDLE` after `idle_exit` seconds with nothing to do: the
        writer should exit, and a new one is started when work appears.
        """
        with self._cond:
            self._writing = False  # calling take again means the last batch was sent
            while not self._frames and not self._flush and not self._closed and not self._overflowed:
                timed_out = not self._cond.wait(self._idle_exit)
                nothing = not (self._frames or self._flush or self._closed or self._overflowed)
                if timed_out and nothing:
                    self._writer = False
                    return IDLE
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
