"""A session's bounded outbound queue, and when that session needs a writer thread.

Most frames never wait in it: when nothing is queued and no writer is busy, `put`
hands the frame straight to the channel's non-blocking `send_now`, in the caller's
thread. Waking a writer thread per frame costs far more than the send itself once a
line goes to hundreds of sessions (GIL hand-offs between hundreds of threads).

A writer thread exists only while there is something the fast path cannot do: the
socket is full, frames are queued, or the session is closing. The outbox asks for one
through `start_writer` and the writer leaves after `idle_exit` seconds with nothing to
send, so thousands of quiet sessions hold one thread each (the reader), not two.

A broadcast coalesces per recipient: the hub `stage`s a line for each member while it
holds its lock and `flush`es after, so what other senders staged for a member meanwhile
leaves in the same TLS write (one `SSLObject.write` and one `send` for all of it).

Where the outbox is, is one `OutboxState` value (see its docstring for the transitions).
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

__all__ = ["IDLE", "Idle", "Outbox", "OutboxState", "Sink"]


class Idle:
    """The type of `IDLE`."""


#: What `take` returns when the writer has had nothing to do for a while and may go.
IDLE: Final = Idle()

#: Queued in place of a frame when the fast path left ciphertext in the sink's backlog:
#: only the writer can push it out (`take` hands out b"", the writer sends the backlog),
#: and frames put meanwhile queue behind it, so order is kept.
_PUSH_BACKLOG: Final = b""


class OutboxState(enum.Enum):
    """Where an outbox is. Transitions (all under the outbox's lock):

    IDLE -> WAITING        work appears (a frame queued, or a backlog the fast path left)
                           and `start_writer` is called; or a thread calls `take`
    WAITING -> WRITING     `take` hands a batch to the writer
    WRITING -> WAITING     the writer calls `take` again: the batch was sent
    WAITING -> IDLE        `take` waited `idle_exit` with nothing to do and returns `IDLE`:
                           the writer leaves
    IDLE -> FINISHED       `close` with nothing queued, and the sink ended the connection
                           at once (`finish_now`): no writer needed
    IDLE, WAITING, WRITING -> CLOSING
                           `close` otherwise (a writer is started if none runs)
    CLOSING -> FINISHED    `take` has handed out everything and returns None
    IDLE, WAITING, WRITING -> OVERFLOWED
                           a put (or `close`'s last frame, put before the state becomes
                           CLOSING) would exceed the limit (a writer is started if none
                           runs); final, like FINISHED. A CLOSING outbox refuses puts, so
                           it never overflows.
    """

    IDLE = "idle"  # open; no writer thread: `put` sends directly when nothing is queued
    WAITING = "waiting"  # open; a writer runs (or is starting) and waits in `take` for work
    WRITING = "writing"  # open; the writer took a batch and is sending it: `put` queues
    CLOSING = "closing"  # refuses new frames; `take` hands out what is queued, then None
    FINISHED = "finished"  # closed and drained; the connection was ended
    OVERFLOWED = "overflowed"  # over the limit: refuses everything; `take` returns None


#: The states in which `put` accepts frames.
_OPEN: Final = frozenset({OutboxState.IDLE, OutboxState.WAITING, OutboxState.WRITING})


class Sink(Protocol):
    """The non-blocking side of a channel (see `TlsChannel.send_nowait`)."""

    def send_nowait(self, data: bytes) -> bool | None:
        """None: refused, nothing done (another send under way, a backlog, a broken
        session); True: all of it went; False: part of it waits in the sink's backlog
        (only a blocking send, the writer's, can push it)."""

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

    Threads: `put`, `stage` and `flush` from any thread (the session's reader, other
    sessions' readers fanning out, the watchdog); `close` from whichever thread closes the session;
    `take` from the writer only; `attach` from the reader once TLS is up.
    """

    def __init__(
        self, limit: int, start_writer: Callable[[], None] | None = None, idle_exit: float = 5.0
    ) -> None:
        self._limit = limit
        self._start_writer = start_writer
        self._idle_exit = idle_exit
        # `_lock` is `_cond`'s lock: the fast paths (`put`, `stage`, `flush`) take it bare,
        # which is cheaper than entering the condition; the writer waits on `_cond`.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._sink: Sink | None = None  # guarded by `_lock`
        # Guarded by `_lock`: the frames staged or queued (with `_PUSH_BACKLOG` markers),
        # their size.
        self._frames: deque[bytes] = deque()
        self._size = 0
        self._state = OutboxState.IDLE  # guarded by `_lock`

    @property
    def state(self) -> OutboxState:
        with self._cond:
            return self._state

    def attach(self, sink: Sink) -> None:
        """Let `put` send through `sink` directly from now on (once its channel is up)."""
        with self._cond:
            self._sink = sink

    def put(self, frame: bytes) -> bool:
        """Queue or send `frame`; False if it was refused (closed, or the limit is exceeded)."""
        with self._lock:
            staged = self._stage_locked(frame)
            if staged:
                self._flush_locked()
            return staged is not None and self._state is not OutboxState.OVERFLOWED

    def stage(self, frame: bytes) -> bool | None:
        """Queue `frame` without sending it yet: None if refused (as `put`), else whether
        the caller must call `flush` (soon, after releasing its own locks).

        This is how a broadcast coalesces: the hub stages a line for every member under
        its lock and flushes afterwards, so lines staged meanwhile by other senders go out
        in the same TLS write. True is returned only to the first stager after the outbox
        was last emptied; while it is owed a flush (or a writer has the frames), later
        frames just join the queue. A caller that got True must call `flush`: nothing
        else sends what it staged until the next `put` or writer.
        """
        # `_stage_locked` inlined but for an overflow: this runs for every recipient of
        # every room line, and a call per recipient was a measurable share of the fan-out.
        with self._lock:
            state = self._state
            frames = self._frames
            if state is OutboxState.IDLE or state is OutboxState.WAITING:
                if not frames:
                    frames.append(frame)
                    self._size += len(frame)
                    return True
            elif state is not OutboxState.WRITING:
                return None  # closing or finished
            size = self._size + len(frame)
            if size > self._limit:
                return self._stage_locked(frame)  # refused: overflowed
            frames.append(frame)
            self._size = size
            return False

    def flush(self) -> None:
        """Send what is staged in one write, without blocking, if the outbox may (no
        writer is mid-send, no backlog to push); else leave it to the writer, woken."""
        # `_flush_locked` inlined, for the reason given in `stage`.
        with self._lock:
            frames = self._frames
            state = self._state
            if not frames or (state is not OutboxState.IDLE and state is not OutboxState.WAITING):
                return  # nothing staged, or the writer sends it (mid-send, or closing)
            sink = self._sink
            if sink is None or frames[0] is _PUSH_BACKLOG:
                self._wake_writer_locked()  # no channel yet, or only the writer can push
                return
            sent = sink.send_nowait(frames[0] if len(frames) == 1 else b"".join(frames))
            if sent is None:
                self._refused_locked()
                return
            frames.clear()
            self._size = 0
            if not sent:
                frames.append(_PUSH_BACKLOG)
                self._wake_writer_locked()

    def _stage_locked(self, frame: bytes) -> bool | None:
        # States compared by identity: a set lookup hashes the enum in Python, which
        # showed in the fan-out's profile (this runs per recipient per line).
        state = self._state
        if state is not OutboxState.IDLE and state is not OutboxState.WAITING:
            if state is not OutboxState.WRITING:
                return None  # closing or finished
        elif not self._frames:
            # Owed a direct send: nothing is queued (not even a backlog to push) and no
            # writer is mid-send. Not held to the limit, as a frame sent at once never was.
            self._frames.append(frame)
            self._size += len(frame)
            return True
        # Behind others: whoever staged first, or the writer, sends it.
        if self._size + len(frame) > self._limit:
            self._wake_writer_locked()
            self._state = OutboxState.OVERFLOWED
            return None
        self._frames.append(frame)
        self._size += len(frame)
        return False

    def _flush_locked(self) -> None:
        frames = self._frames
        state = self._state
        if not frames or (state is not OutboxState.IDLE and state is not OutboxState.WAITING):
            return  # nothing staged, or the writer sends it (mid-send, or closing)
        sink = self._sink
        if sink is None or frames[0] is _PUSH_BACKLOG:
            self._wake_writer_locked()  # no channel yet, or only the writer can push
            return
        # One TLS write for everything staged, whoever staged it; the sink refuses while
        # earlier ciphertext is unsent, so order is kept.
        sent = sink.send_nowait(frames[0] if len(frames) == 1 else b"".join(frames))
        if sent is None:
            self._refused_locked()
            return
        frames.clear()
        self._size = 0
        if not sent:  # the kernel took part of it: the writer pushes the rest
            frames.append(_PUSH_BACKLOG)
            self._wake_writer_locked()

    def _refused_locked(self) -> None:
        """The sink could not take what is staged now: the writer sends it."""
        self._wake_writer_locked()
        if self._size > self._limit:  # it cannot go now, and it is too much to queue
            self._state = OutboxState.OVERFLOWED

    def _wake_writer_locked(self) -> None:
        self._cond.notify()
        if self._state is OutboxState.IDLE and self._start_writer is not None:
            self._state = OutboxState.WAITING
            self._start_writer()

    def close(self, last: bytes | None = None) -> None:
        """Refuse new frames after `last` (if given); `take` returns what is queued, then None.

        Putting `last` and closing happen at once, so nothing another thread puts can
        follow the last frame. If everything went out and the sink could end the
        connection at once (`finish_now`), that is all; otherwise a writer is started
        (if none runs) and it finishes the connection. Idempotent.
        """
        with self._cond:
            if self._state not in _OPEN:
                return
            if last is not None:
                if self._stage_locked(last):
                    self._flush_locked()
                if self._state is OutboxState.OVERFLOWED:
                    return  # the put woke the writer, which drops the client
            idle = self._state is OutboxState.IDLE and not self._frames
            if idle and self._sink is not None and self._sink.finish_now():
                self._state = OutboxState.FINISHED  # ended in this thread: no writer needed
                return
            self._wake_writer_locked()
            self._state = OutboxState.CLOSING

    @property
    def overflowed(self) -> bool:
        with self._cond:
            return self._state is OutboxState.OVERFLOWED

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
            if self._state in (OutboxState.IDLE, OutboxState.WRITING):
                self._state = OutboxState.WAITING  # calling take again: the last batch was sent
            while not self._frames and self._state is OutboxState.WAITING:
                timed_out = not self._cond.wait(self._idle_exit)
                if timed_out and not self._frames and self._state is OutboxState.WAITING:
                    self._state = OutboxState.IDLE
                    return IDLE
            if self._state is OutboxState.OVERFLOWED or not self._frames:
                self._frames.clear()
                self._size = 0
                if self._state is not OutboxState.OVERFLOWED:
                    self._state = OutboxState.FINISHED
                return None
            data = b"".join(self._frames)
            self._frames.clear()
            self._size = 0
            if self._state is OutboxState.WAITING:
                self._state = OutboxState.WRITING
            return data
