"""One client connection's I/O shell: TLS, the outbox, writers, deadlines, the linger.

`Session` is the only part of a session other threads touch. Its threads:

- the **reader** (the thread the listener started: `run`) runs the handshake, reads
  frames, feeds them to the session's `SessionLogic` (logic.py, reader-owned, no locks)
  and, at the end, lingers;
- a **writer**, started by the outbox only when the socket is full, frames are queued or
  the session is closing with bytes left; it leaves again when idle (see outbox.py);
- the **watchdog** calls `check_alive` (the keepalive sweep) and the deadlines
  (`_login_timed_out`, the linger cut, the cut of a client that stopped reading);
- **other sessions' readers** (and the watchdog's presence flush) call `deliver`, via
  the hub and the relay, and `close` (a login that displaces this one); the server's
  `stop` calls `close` from the thread that stops it.

Frames for this client go through its outbox: sent at once, without blocking, by
whichever thread puts them when the socket has room, or else queued for a writer.

Closing is a lingering close: put a last frame (bye or error), send it and half-close
(at once if the socket takes it, else by the writer), keep reading until the peer
hangs up, and cut the connection when `linger` runs out. Cutting at once could make
the kernel reset the connection and destroy the last frame before the peer reads it.
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence

from ...protocol import (
    CLOSED,
    NEED_DATA,
    Code,
    Connection,
    Error,
    Event,
    Ping,
    RemoteProtocolError,
    Role,
    encode,
)
from ...transport import TlsChannel
from ..addresses import PrefixGuards
from ..config import ServerConfig
from ..deadlines import Deadline, Watchdog
from ..hub import Hub
from ..outbox import Idle, Outbox
from ..relay import Relay
from .logic import SessionLogic

__all__ = ["Session"]

log = logging.getLogger(__name__)


class _Phase(enum.Enum):
    """Where the connection is. Transitions (all under `Session._lock`):

    HANDSHAKE -> OPEN      the TLS handshake completed and nobody closed meanwhile
    HANDSHAKE -> CLOSING   `close` during the handshake: the socket is shut at once
    OPEN      -> CLOSING   `close`: the last frame is queued, the linger deadline set
    any       -> ENDED     the reader thread is done (`run`'s end); `close` is a no-op
    """

    HANDSHAKE = "handshake"  # TLS not up yet: nothing can be sent
    OPEN = "open"  # frames flow both ways
    CLOSING = "closing"  # no more output after the last frame; reading until the peer goes
    ENDED = "ended"  # the reader thread has finished; the channel is closed


class Session:
    """A client's session: `run` is the reader thread's body; `deliver`, `close` and
    `check_alive` may come from other threads (each says which)."""

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        *,
        context: ssl.SSLContext,
        hub: Hub,
        relay: Relay,
        watchdog: Watchdog,
        config: ServerConfig,
        prefix: str,
        guards: PrefixGuards,
        on_login: Callable[[Session], None],
    ) -> None:
        """`prefix` is the network the peer's address belongs to (addresses.py); `guards`
        the per-prefix limits all sessions share; `on_login` is called once, from the
        reader thread under the hub's lock, when this session has logged in."""
        self.peer = peer
        self.prefix = prefix
        self._on_login = on_login
        self._channel = TlsChannel(sock, context, server_side=True)
        self._conn = Connection(Role.SERVER)  # owned by the reader thread
        self._watchdog = watchdog
        self._config = config
        self._outbox = Outbox(config.send_queue_bytes, start_writer=self._start_writer)
        # The hub's `Staging.flush`: send what `stage` queued, in one TLS write, without
        # blocking (or leave it to the writer); called by whichever thread makes the
        # flushes a fan-out owed, without the hub's lock. The outbox's own method, not a
        # wrapper: it runs once per recipient per pass.
        self.flush: Callable[[], None] = self._outbox.flush
        # Guards the fields below it. A leaf lock except that the outbox's condition is
        # held around it (`_start_writer`); never held while calling out (hub, outbox,
        # watchdog, channel).
        self._lock = threading.Lock()
        self._phase = _Phase.HANDSHAKE  # guarded by `_lock` (the reader's loops also read it bare)
        self._overflow_reported = False  # guarded by `_lock`
        self._writers: list[threading.Thread] = []  # guarded by `_lock`; started on demand
        self._leave_reason = "connection closed"  # guarded by `_lock`; set by the first `close`
        self._login_deadline: Deadline | None = None  # owned by the reader thread
        # The reader thread's id, set once as `run` begins (None before). `_start_writer`
        # compares it with the calling thread's: only the reader itself can match.
        self._reader_id: int | None = None
        # Set by `_start_writer` when the reader asked for a writer while closing: the
        # reader runs the writer's loop itself in `_finish`. Reader thread only.
        self._writer_inline = False
        self._linger_deadline: Deadline | None = None  # guarded by `_lock`
        # For keepalive: when the peer last sent a complete frame (bytes of a line that
        # never ends do not count), and when the line now arriving began (None: no line
        # is half received; for `line_timeout`). Owned by the reader thread (the only
        # writer); the watchdog's sweep reads them: a float read is atomic, and a stale
        # one only delays a ping or a cut by one sweep.
        self.last_heard = time.monotonic()
        self._partial_since: float | None = None
        # The `last_heard` a keepalive ping was sent for: owned by the watchdog thread.
        # A frame since then moves `last_heard`, which re-arms the ping.
        self._pinged_for: float | None = None
        #: When (wall clock) it logged in; 0.0 before. Written once by the reader thread
        #: (`_logged_in`), read by a cluster's subscriber thread as one float read: a
        #: stale 0.0 only lets a replacement notice close it (`Server._replaced_here`).
        self.logged_in_at = 0.0
        self._logic = SessionLogic(
            self,
            self,
            hub=hub,
            relay=relay,
            config=config,
            peer=peer,
            prefix=prefix,
            guards=guards,
            on_login=self._logged_in,
        )

    # -- read by other threads -----------------------------------------------------
    # `nick`, `sig_key`, `person_key` and `away` are written only by the reader thread (in the logic)
    # and read elsewhere as one reference read, which is atomic: `sig_key` is set before
    # the session joins the hub, and other logins read it under the hub's lock, which
    # orders the two; `nick` (set at the welcome and by a rename) is read by the writer
    # for a log line; `away` by other sessions' whispers to this one, which report
    # whatever value they read. Nothing decides on a stale read of any of them. All
    # three are read-only here: no other thread may write them.

    @property
    def nick(self) -> str | None:
        """The nick once logged in (set in the welcome), else None."""
        return self._logic.nick

    @property
    def sig_key(self) -> bytes:
        """The identity key this session proved; b"" for a guest."""
        return self._logic.sig_key

    @property
    def box(self) -> str:
        """The mailbox this session reads (store.py `mailbox`); "" for a guest. Written by
        the reader (login, rename), read elsewhere as one reference read (a stale one
        reads the old nick's mailbox, whose whispers follow the rename anyway)."""
        return self._logic.box

    @property
    def person_key(self) -> bytes:
        """Its person's identity key (see `SessionLogic.person_key`); b"" for a guest."""
        return self._logic.person_key

    @property
    def away(self) -> str:
        """The away message the client set ("" when here)."""
        return self._logic.away

    @property
    def address(self) -> str:
        """The peer's IP address, for the logs."""
        return self.peer.rsplit(":", 1)[0]

    # -- called from other threads -------------------------------------------------

    def deliver(self, frame: bytes) -> None:
        """Queue a frame for this client. Never blocks. Called by any thread: other
        sessions' readers (through the hub and the relay), the watchdog (presence
        flushes, keepalive pings).

        On the first overflow the connection is cut from the watchdog thread: the
        writer may be blocked in a send to this very client and cannot notice by
        itself, and the broadcaster calling us must not do socket work.
        """
        if not self._outbox.put(frame):
            self._refused()

    def stage(self, frame: bytes) -> bool:
        """Queue a frame without sending it yet (the hub's fan-out, under its lock);
        True if the caller must call `flush` once it has released its lock (see
        `Outbox.stage`). Never blocks; an overflow is handled as in `deliver`."""
        staged = self._outbox.stage(frame)
        if staged is None:
            self._refused()
            return False
        return staged

    def _refused(self) -> None:
        """The outbox refused a frame: if it overflowed, cut the connection (once)."""
        if not self._outbox.overflowed:
            return  # closing: nothing more goes out anyway
        with self._lock:
            first = not self._overflow_reported
            self._overflow_reported = True
        if first:
            self.close(reason=_NOT_READING)
            self._watchdog.after(0.0, self._channel.shutdown)

    def close(self, final: Event | None = None, reason: str = "") -> None:
        """Begin closing: queue `final` as the last frame, stop output, cut after `linger`.

        Thread-safe and idempotent; the first call's reason is the one announced. Called
        by the reader (the logic's port), the watchdog (deadlines, keepalive), a writer
        whose send failed, another session's reader (a login displacing this one) and
        the thread running `Server.stop`.
        """
        with self._lock:
            if self._phase not in (_Phase.HANDSHAKE, _Phase.OPEN):
                return
            established = self._phase is _Phase.OPEN
            self._phase = _Phase.CLOSING
            if reason:
                self._leave_reason = reason
        if not established:  # still in the TLS handshake: nothing can be said
            self._channel.shutdown()
            return
        self._outbox.close(None if final is None else encode(final))
        linger = self._watchdog.after(self._config.linger, self._channel.shutdown)
        with self._lock:
            if self._phase is _Phase.ENDED:  # the reader finished meanwhile: nothing to cut
                linger.cancel()
            else:
                self._linger_deadline = linger

    def check_alive(self, now: float) -> None:
        """Keepalive, called periodically by the watchdog thread (the server's sweep):
        ping a quiet peer, drop one that stays silent, and one whose line has not ended
        within `line_timeout`."""
        with self._lock:
            if self._phase is not _Phase.OPEN:
                return  # handshaking sessions have their own deadline
        partial_since = self._partial_since
        if partial_since is not None and now - partial_since > self._config.line_timeout:
            self.close(
                Error(code=Code.TIMEOUT, reason="a line took too long to arrive", fatal=True),
                reason="incomplete line",
            )
            return
        heard = self.last_heard
        quiet = now - heard
        if quiet > self._config.ping_interval + self._config.ping_timeout:
            self.close(
                Error(code=Code.TIMEOUT, reason="no answer to ping", fatal=True), reason="ping timeout"
            )
        elif quiet > self._config.ping_interval and self._pinged_for != heard:
            self._pinged_for = heard
            self.deliver(encode(Ping(token=f"{now:.0f}")))

    def _login_timed_out(self) -> None:
        """The handshake and hello took longer than `handshake_timeout`: the watchdog
        thread calls this (a deadline the reader cancels once logged in)."""
        self.close(Error(code=Code.TIMEOUT, reason="no hello in time", fatal=True), reason="login timeout")

    # -- the port the logic talks through (reader thread) ----------------------------

    def send(self, event: Event) -> None:
        """Queue `event` for the client (`Port.send`). Reader thread only: it goes through
        the reader-owned protocol connection, which checks it may be sent now."""
        self._outbox.put(self._conn.send(event))

    def send_many(self, events: Sequence[Event]) -> None:
        """Queue `events` for the client in one write (`Port.send_many`). Reader thread
        only, as `send`."""
        self._outbox.put(b"".join([self._conn.send(event) for event in events]))

    def _logged_in(self) -> None:
        """The logic's `on_login`: reader thread, under the hub's lock (so it only cancels
        a deadline and reports to the server, whose lock is taken under the hub's)."""
        if self._login_deadline is not None:
            self._login_deadline.cancel()
        self.logged_in_at = time.time()
        self._on_login(self)

    # -- the reader thread ----------------------------------------------------------

    def run(self) -> None:
        """Serve the connection until it ends (the reader thread's body). Never raises."""
        self._reader_id = threading.get_ident()
        try:
            if self._handshake():
                self._read_loop()
                self._finish()
        except Exception:
            log.exception("session %s failed", self.peer)
            self._channel.shutdown()
        finally:
            with self._lock:
                self._phase = _Phase.ENDED
                linger, self._linger_deadline = self._linger_deadline, None
            for deadline in (self._login_deadline, linger):
                if deadline is not None:
                    deadline.cancel()
            for writer in self._writers_so_far():
                writer.join()
            self._channel.close()

    def _handshake(self) -> bool:
        self._login_deadline = self._watchdog.after(self._config.handshake_timeout, self._login_timed_out)
        try:
            self._channel.handshake()
        except (ssl.SSLError, OSError) as exc:
            # Plaintext clients, scanners, wrong-CA clients: routine, not alarming.
            log.info("TLS handshake with %s failed: %s", self.peer, _describe(exc))
            return False
        with self._lock:
            if self._phase is not _Phase.HANDSHAKE:
                return False
            self._phase = _Phase.OPEN
        self._outbox.attach(self._channel)
        log.info("TLS session from %s (%s)", self.peer, self._channel.version())
        return True

    def _read_loop(self) -> None:
        # `_phase` read without the lock: a stale OPEN lets one more read or event through,
        # which the closed outbox then refuses to answer.
        while self._phase is _Phase.OPEN:
            try:
                data = self._channel.recv()
            except (ssl.SSLError, OSError) as exc:
                log.info("connection from %s broke: %s", self.peer, _describe(exc))
                data = b""
            if data.endswith(b"\n"):
                self._partial_since = None
            elif data and (self._partial_since is None or b"\n" in data):
                self._partial_since = time.monotonic()  # a new line began in this chunk
            self._conn.receive_data(data)
            # The line buffer has its own copy: holding this one through the next blocking
            # read would keep up to a read's worth per idle connection (a parked half line).
            del data
            if not self._process_events():
                return

    def _process_events(self) -> bool:
        """Hand every complete event to the logic; False once the connection is over."""
        while self._phase is _Phase.OPEN:
            try:
                event = self._conn.next_event()
            except RemoteProtocolError as exc:
                self._logic.refuse(exc)
                if exc.fatal:
                    return False
                continue
            if event is NEED_DATA:
                self._logic.flush()
                return True
            if event is CLOSED:
                self._logic.flush()
                self.close()
                return False
            assert isinstance(event, Event)
            self.last_heard = time.monotonic()  # a complete frame: the peer is alive
            self._logic.handle(event)
        return False

    def _finish(self) -> None:
        self.close()
        with self._lock:
            reason = self._leave_reason
        self._logic.leave(reason)
        if self._writer_inline:
            # Blocks at most until the linger deadline shuts the socket down.
            self._write_loop()
        # Read and discard until the peer hangs up or the linger deadline cuts it,
        # so our last frame is not destroyed by a reset.
        try:
            while self._channel.recv():
                pass
        except (ssl.SSLError, OSError):
            pass

    # -- the writer thread ----------------------------------------------------------

    def _start_writer(self) -> None:
        """Start a writer thread (the outbox calls this, under its condition's lock, from
        whichever thread put or closed, when one is needed).

        When the reader itself closed the session (usually: the peer hung up, so the
        close_notify cannot go without blocking, or fails at once), no thread is started:
        the reader, which has nothing left to do but linger, runs the writer's loop in
        `_finish`. A thread per ended session cost ~200 us of CPU in a connect storm.
        """
        with self._lock:  # started and listed at once: `run` joins only started threads
            if self._phase is _Phase.ENDED:
                # The reader has joined its writers and is closing the socket: a frame
                # another thread hands over now (a room line, a device list) has nowhere
                # to go, and a writer started for it would outlive the session.
                return
            if self._phase is not _Phase.OPEN and self._reader_id == threading.get_ident():
                self._writer_inline = True  # the reader is closing: `_finish` writes
                return
            writer = threading.Thread(
                target=self._write_loop, name=f"securechat-writer-{self.peer}", daemon=True
            )
            self._writers = [w for w in self._writers if w.is_alive()]
            writer.start()
            self._writers.append(writer)

    def _writers_so_far(self) -> list[threading.Thread]:
        with self._lock:
            return list(self._writers)

    def _write_loop(self) -> None:
        """The writer's body (a writer thread's, or the finishing reader's: `_finish`): send
        what the outbox hands out, then finish or leave."""
        broke: BaseException | None = None
        try:
            while (data := self._outbox.take()) is not None:
                if isinstance(data, Idle):
                    return  # nothing to send for a while; the outbox starts another when needed
                self._channel.send(data)
        except (ssl.SSLError, OSError) as exc:
            broke = exc
        if self._outbox.overflowed:
            log.warning("dropping %s (%s): it stopped reading", self.nick or "?", self.peer)
            self.close(reason=_NOT_READING)
            self._channel.shutdown()
        elif broke is not None:
            log.info("sending to %s failed: %s", self.peer, _describe(broke))
            self.close(reason="connection broke")
            self._channel.shutdown()
        else:
            self._channel.finish_sending()


_NOT_READING = "not reading (send queue full)"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__
