"""The server: a listening socket, one thread that only accepts, and the sessions."""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType

from ..protocol import Bye, Message
from .config import ServerConfig
from .deadlines import Watchdog
from .hub import Hub
from .relay import Relay
from .session import Session
from .store import SqliteStore, Store

__all__ = ["DB_NAME", "Server"]

#: The database file inside the data directory.
DB_NAME = "securechat.db"
#: How often undelivered whispers past their time-to-live are deleted.
_EXPIRE_EVERY = 3600.0
#: Room history is written in batches this often, not once per line: a commit per public
#: line would put an fsync on every message's path. A crash loses at most this much history.
_HISTORY_FLUSH_EVERY = 0.5
#: Join/leave notices are sent in batches this often (or before the next room line).
#: Each flush costs one write per member, so with thousands present it must not be
#: much more frequent; a quarter second is not noticeable in a chat.
_PRESENCE_FLUSH_EVERY = 0.25

log = logging.getLogger(__name__)


class Server:
    """A TLS chat server.

    `start()` binds and returns at once; the listener, the watchdog and every session
    run in their own threads. `stop()` says goodbye to every client, waits for all of
    those threads to end and closes the listening socket; afterwards no thread the
    server started is alive. Usable as a context manager.
    """

    def __init__(
        self,
        config: ServerConfig,
        context: ssl.SSLContext,
        *,
        clock: Callable[[], float] = time.time,
        store: Store | None = None,
    ) -> None:
        self.config = config
        self._context = context
        self.hub = Hub(clock=clock, history=config.history_lines)
        self.store: Store = (
            store
            if store is not None
            else SqliteStore(None if config.data_dir is None else config.data_dir / DB_NAME)
        )
        if config.history_lines:
            self.hub.load_history(
                Message(room=self.hub.room, nick=nick, text=text, ts=ts)
                for nick, text, ts in self.store.recent_history(self.hub.room, config.history_lines)
            )
        self._relay = Relay(self.store, self.hub, clock)
        self._watchdog = Watchdog()
        self._listen: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._listener: threading.Thread | None = None
        self._lock = threading.Condition()
        self._sessions: dict[Session, threading.Thread] = {}
        self._finished: list[threading.Thread] = []
        self._per_ip: Counter[str] = Counter()
        self._stopping = False

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound; useful with port 0."""
        if self._listen is None:
            raise RuntimeError("server not started")
        host, port = self._listen.getsockname()[:2]
        return host, port

    def start(self) -> None:
        """Bind, listen and start accepting. Raises `OSError` if the address is unusable."""
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        listen = socket.socket(family, socket.SOCK_STREAM)
        try:
            listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listen.bind((self.config.host, self.config.port))
            listen.listen(self.config.backlog)
            listen.setblocking(False)
        except OSError:
            listen.close()
            raise
        self._listen = listen
        self._watchdog.start()
        self._listener = threading.Thread(target=self._accept_loop, name="securechat-listener", daemon=True)
        self._listener.start()
        self._watchdog.after(self._sweep_every(), self._sweep)
        self._watchdog.after(_EXPIRE_EVERY, self._expire)
        self._watchdog.after(_HISTORY_FLUSH_EVERY, self._flush_history)
        self._watchdog.after(_PRESENCE_FLUSH_EVERY, self._flush_presence)
        log.info("listening on %s:%d (TLS)", *self.address)

    def _save_history(self) -> None:
        lines = [(m.room, m.nick, m.text, m.ts) for m in self.hub.take_unsaved()]
        self.store.append_history(lines, keep=max(1, self.config.history_lines))

    def _flush_history(self) -> None:
        """Write room lines said since the last flush, in one transaction (then reschedules)."""
        with self._lock:
            if self._stopping:
                return
        try:
            self._save_history()
        except Exception:  # a full disk must not stop the watchdog; the lines stay in memory
            log.exception("saving room history failed")
        self._watchdog.after(_HISTORY_FLUSH_EVERY, self._flush_history)

    def _flush_presence(self) -> None:
        """Send pending join/leave notices (runs in the watchdog thread, then reschedules)."""
        with self._lock:
            if self._stopping:
                return
        self.hub.flush_presence()
        self._watchdog.after(_PRESENCE_FLUSH_EVERY, self._flush_presence)

    def _sweep_every(self) -> float:
        # Often enough that a ping or a drop is at most a quarter-interval late.
        return max(0.05, min(self.config.ping_interval, self.config.ping_timeout) / 4)

    def _sweep(self) -> None:
        """Keepalive for every session (runs in the watchdog thread, then reschedules)."""
        now = time.monotonic()
        with self._lock:
            if self._stopping:
                return
            sessions = list(self._sessions)
        for session in sessions:
            session.check_alive(now)
        self._watchdog.after(self._sweep_every(), self._sweep)

    def _expire(self) -> None:
        """Delete queued whispers older than `queue_ttl` (then reschedules)."""
        with self._lock:
            if self._stopping:
                return
        try:
            removed = self.store.expire(time.time() - self.config.queue_ttl)
        except Exception:  # a full disk must not stop the watchdog
            log.exception("expiring old whispers failed")
        else:
            if removed:
                log.info(
                    "expired %d undelivered whispers older than %.0f days",
                    removed,
                    self.config.queue_ttl / 86400,
                )
        self._watchdog.after(_EXPIRE_EVERY, self._expire)

    def _accept_loop(self) -> None:
        assert self._listen is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listen, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self._listen:
                        self._accept_ready()

    def _accept_ready(self) -> None:
        assert self._listen is not None
        while True:
            try:
                sock, addr = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep serving the clients we have
                log.warning("accept failed: %s", exc)
                return
            ip = addr[0]
            with self._lock:
                full = len(self._sessions) >= self.config.max_sessions
                crowded = self._per_ip[ip] >= self.config.max_per_ip
            if full or crowded:
                # Before TLS there is no way to say why; a closed connection it is.
                log.warning("refusing %s: %s", ip, "server full" if full else "too many connections from it")
                sock.close()
                continue
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"{addr[0]}:{addr[1]}"
            session = Session(
                sock,
                peer,
                context=self._context,
                hub=self.hub,
                relay=self._relay,
                watchdog=self._watchdog,
                config=self.config,
            )
            thread = threading.Thread(
                target=self._run_session, args=(session,), name=f"securechat-session-{peer}", daemon=True
            )
            with self._lock:
                if self._stopping:
                    sock.close()
                    return
                self._sessions[session] = thread
                self._per_ip[ip] += 1
                self._lock.notify_all()
            thread.start()

    def _run_session(self, session: Session) -> None:
        try:
            session.run()
        finally:
            with self._lock:
                thread = self._sessions.pop(session)
                ip = session.peer.rsplit(":", 1)[0]
                self._per_ip[ip] -= 1
                if self._per_ip[ip] <= 0:
                    del self._per_ip[ip]
                # Keep only threads that may still be exiting, so a long-running
                # server does not accumulate one Thread object per past session.
                self._finished = [t for t in self._finished if t.is_alive()]
                self._finished.append(thread)
                self._lock.notify_all()

    def wait_sessions(self, at_most: int, timeout: float) -> bool:
        """Wait until at most `at_most` sessions remain and the ended ones' threads are joined.

        Returns False if that did not happen within `timeout` seconds.
        """
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._sessions) <= at_most, timeout):
                return False
            finished, self._finished = self._finished, []
        for thread in finished:
            thread.join()
        return True

    def wait_sessions_at_least(self, count: int, timeout: float) -> bool:
        """Wait until at least `count` connections are open; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._sessions) >= count, timeout)

    def stop(self, reason: str = "server shutting down", timeout: float = 10.0) -> None:
        """Tell every client, close every session, and join every thread.

        Raises `TimeoutError` if some session thread is still alive after `timeout`.
        """
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            sessions = list(self._sessions)
        self._wake_w.send(b"x")
        if self._listener is not None:
            self._listener.join()
        if self._listen is not None:
            self._listen.close()
        log.info("stopping: closing %d sessions", len(sessions))
        for session in sessions:
            session.close(Bye(reason=reason), reason=reason)
        ended = self.wait_sessions(0, timeout)
        self._watchdog.stop()
        self._wake_r.close()
        self._wake_w.close()
        try:
            self._save_history()
        finally:
            self.store.close()
        if not ended:
            raise TimeoutError("some sessions did not end in time")
        log.info("stopped")

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
