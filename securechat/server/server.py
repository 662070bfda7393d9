"""The server: a listening socket, one thread that only accepts, and the sessions."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from ..protocol import Bye, Code, Error, Message, encode, fold_nick
from . import heap
from .addresses import ConnectionCounts, PrefixGuards, PrefixLimits
from .cluster import ClusterUnavailable
from .config import ServerConfig
from .datadir import DB_NAME, DataDir
from .deadlines import Watchdog
from .faultlog import FaultLog
from .hub import Hub
from .relay import Relay
from .rooms import Rooms
from .session import Session
from .session.logic import REPLACED
from .store import SqliteStore, Store, StoreUnavailable

if TYPE_CHECKING:
    from .cluster.backplane import Backplane

__all__ = ["DB_NAME", "Server"]

#: Room history is written in batches this often, not once per line: a commit per public
#: line would put an fsync on every message's path. A crash loses at most this much history.
_HISTORY_FLUSH_EVERY = 0.5
#: Join/leave notices are sent in batches this often (or before the next room line).
#: Each flush costs one write per member, so with thousands present it must not be
#: much more frequent; a quarter second is not noticeable in a chat.
_PRESENCE_FLUSH_EVERY = 0.25

log = logging.getLogger(__name__)

#: What a linked device's session on this node is told when another node unlinked it.
_UNLINKED = Error(code=Code.UNLINKED, reason="this device was unlinked", fatal=True)

#: What a fenced cluster node's sessions are told: retryable (the client reconnects).
_FENCED = Error(
    code=Code.BUSY,
    reason="this server lost touch with its cluster: reconnect (another node will take you)",
    fatal=True,
)


class Server:
    """A TLS chat server.

    `start()` binds and returns at once; the listener, the watchdog and every session
    run in their own threads. `stop()` says goodbye to every client, waits for all of
    those threads to end and closes the listening socket; afterwards no thread the
    server started is alive. Usable as a context manager.

    With `config.data_dir`, the constructor opens the data directory (see datadir.py)
    and raises `DataDirRefused` if it must not be used as it is. `clock` is the wall
    clock (timestamps), `monotonic` the clock queued whispers age by.
    """

    def __init__(
        self,
        config: ServerConfig,
        context: ssl.SSLContext,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        store: Store | None = None,
    ) -> None:
        self.config = config
        self._context = context
        self._datadir: DataDir | None = None
        #: A cluster node's backplane (None: one process). Set here, started by `start`.
        self.cluster: Backplane | None = None
        if config.cluster:
            from .cluster.backplane import Backplane, BackplaneHooks

            self.cluster = Backplane(
                config.cluster,
                BackplaneHooks(
                    deliver_lines=self._deliver_lines,
                    room_news=self._room_news,
                    remote_members=self._remote_members,
                    push=self._push_here,
                    push_person=self._push_person_here,
                    fenced=self._fenced,
                    lost_nick=self._lost_nick,
                    node_gone=self._node_gone,
                    devices_changed=self._devices_changed,
                    replaced=self._replaced_here,
                    resubscribed=self._resubscribed,
                    registered=self._announce_members,
                ),
                lease=config.node_lease,
            )
        if store is not None:
            self.store: Store = store
        elif config.store:
            from .pgstore import PostgresStore

            self.store = PostgresStore(
                config.store, clock=clock, monotonic=monotonic, log_every=config.fault_log_interval
            )
        elif config.data_dir is not None:
            self._datadir = DataDir.open(
                config.data_dir,
                clock=clock,
                monotonic=monotonic,
                log_every=config.fault_log_interval,
                init=config.init_data_dir,
            )
            self.store = self._datadir.store
        else:
            self.store = SqliteStore(
                None, clock=clock, monotonic=monotonic, log_every=config.fault_log_interval
            )
        self.hub = Hub(
            clock=clock,
            history=config.history_lines,
            rooms=Rooms.from_config(config),
            store=self.store,
            max_devices=config.max_devices,
            publish_lines=None if self.cluster is None else self.cluster.publish_lines,
            publish_presence=None if self.cluster is None else self.cluster.publish_presence,
            publish_news=None if self.cluster is None else self.cluster.publish_news,
        )
        #: Set (by the watchdog thread) once the data directory or database was found
        #: deleted or replaced; from then on the store refuses every operation.
        self.store_lost = threading.Event()
        # Failed accepts (out of file descriptors), logged at a bounded rate. Used only by
        # the listener thread (FaultLog is thread-safe anyway).
        self._accept_faults = FaultLog(log, "accepting connections", config.fault_log_interval)
        # Registered rooms with their settings and bans, then the lines of every room the
        # store keeps lines for (autojoin and registered ones).
        self.hub.load_rooms(self.store.registered_rooms())
        if config.history_lines:
            for room in self.hub.persisted_rooms():
                self.hub.load_history(
                    Message(room=room, nick=nick, text=text, ts=ts)
                    for nick, text, ts in self.store.recent_history(room, config.history_lines)
                )
        self._relay = Relay(
            self.store,
            self.hub,
            clock,
            config=config,
            monotonic=monotonic,
            cluster=self.cluster,
        )
        self._watchdog = Watchdog()
        # Set by `start` (the caller's thread) before the threads that use them exist.
        self._listen: socket.socket | None = None
        self._listener: threading.Thread | None = None
        # Wakes the listener's poll for `stop`: written by `stop`, read by the listener.
        self._wake_r, self._wake_w = socket.socketpair()
        # The server's lock (a condition, for the waits on sessions). Taken under the
        # hub's lock (a login's report); never held while taking another lock.
        self._lock = threading.Condition()
        # Each live session and its reader thread; guarded by `_lock`.
        self._sessions: dict[Session, threading.Thread] = {}
        # Reader threads of ended sessions, still to be joined; guarded by `_lock`.
        self._finished: list[threading.Thread] = []
        limits = PrefixLimits.from_config(config)
        self._limits = limits
        # Open and not-yet-logged-in connections per prefix; guarded by `_lock`.
        self._counts = ConnectionCounts(limits)
        # Sessions counted as logged in by `_counts`; guarded by `_lock`.
        self._logged_in: set[Session] = set()
        # When to give freed memory back after a flood; guarded by `_lock`.
        self._trim = heap.TrimAfterDrop(config.heap_trim_after)
        # Per-prefix token buckets shared by the listener and every session (thread-safe).
        self._guards = PrefixGuards(limits)
        # Refused connections not yet logged, and when the last line about them was
        # written; used only by the listener thread.
        self._refused = 0
        self._refused_logged_at: float | None = None
        # Set once by `stop`; guarded by `_lock`. The listener's loop also reads it bare
        # (a stale False costs one more poll, which the wake-up socket ends).
        self._stopping = False

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound; useful with port 0."""
        if self._listen is None:
            raise RuntimeError("server not started")
        host, port = self._listen.getsockname()[:2]
        return host, port

    def start(self) -> None:
        """Bind, listen and start accepting (the listener and watchdog threads); call it
        once, from any thread. Raises `OSError` if the address is unusable."""
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        listen = socket.socket(family, socket.SOCK_STREAM)
        try:
            listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.config.reuse_port:
                listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listen.bind((self.config.host, self.config.port))
            listen.listen(self.config.backlog)
            listen.setblocking(False)
        except OSError:
            listen.close()
            raise
        if self.cluster is not None:
            try:
                self.cluster.start()  # raises ClusterUnavailable: no node without its Redis
                # No session before the first subscription: lines published before it
                # would be history to this node, never shown to its users.
                if not self.cluster.subscribed.wait(self.config.node_lease * 2):
                    raise ClusterUnavailable("could not subscribe to the cluster's Redis")
            except BaseException:
                listen.close()
                self.cluster.stop()
                raise
        self._listen = listen
        self._watchdog.start()
        self._listener = threading.Thread(target=self._accept_loop, name="securechat-listener", daemon=True)
        self._listener.start()
        self._watchdog.after(self._sweep_every(), self._sweep)
        self._watchdog.after(self.config.expire_interval, self._expire)
        self._watchdog.after(_HISTORY_FLUSH_EVERY, self._flush_history)
        self._watchdog.after(_PRESENCE_FLUSH_EVERY, self._flush_presence)
        if self._datadir is not None:
            self._watchdog.after(self.config.datadir_check_interval, self._check_datadir)
        log.info("listening on %s:%d (TLS)", *self.address)

    # -- a cluster node's hooks (cluster/backplane.py) ---------------------------------

    def _deliver_lines(self, room: str, segments: list[tuple[bytes, str, bool, bytes]]) -> None:
        """Room batches in the room's cluster-wide order (the subscriber thread)."""
        self.hub.deliver_lines(room, segments)

    def _room_news(self, room: str, news: bytes, origin: str, mine: bool, live: bool) -> None:
        """News of a room (roomnews.py) in its cluster-wide order (the subscriber thread)."""
        self.hub.room_news(room, news, origin, mine, live)

    def _announce_members(self) -> None:
        """Registered again after Redis lost its data (the lease thread): the others are
        told again who is in each room here."""
        self.hub.announce_members()

    def _remote_members(self, members: list[tuple[str, str, str, bytes]]) -> None:
        """Who other nodes have in which room, after each subscription (the subscriber
        thread)."""
        self.hub.remote_members(members)

    def _push_here(self, box: str, frame: bytes) -> None:
        """A frame another node sent to mailbox `box`'s session here, if it is here (the
        subscriber thread): a whisper's push, a status; the store has what it tells."""
        member = self.hub.member_of(*box.partition("/")[::2])
        if member is not None:
            member.deliver(frame)

    def _push_person_here(self, nick: str, frame: bytes) -> None:
        """A frame another node sent to every session of `nick` here (the subscriber
        thread): a device list, a pairing answer to a linking guest."""
        member = self.hub.member(nick)
        if member is not None:
            member.deliver(frame)

    def _resubscribed(self) -> None:
        """The subscription was made again (the subscriber thread): news may have been
        missed meanwhile. Cached device lists are read again when needed, and the linked
        devices here checked against them (news of an unlink may have been missed); the
        members other nodes have are read again from Redis (the backplane does it next);
        the sessions here are handed their mailboxes again (a node may have died unseen)."""
        self._relay.devices.forget_all()
        self.hub.resubscribed()
        with self._lock:
            linked = {s.box.partition("/")[0] for s in self._sessions if "/" in s.box}
        for nick in linked:
            self._watchdog.after(0, functools.partial(self._close_unlisted, nick))
        self._watchdog.after(0, self._redeliver)

    def _replaced_here(self, box: str, since: float) -> None:
        """Mailbox `box`'s session logged in on another node at `since` (the subscriber
        thread): a session of it here that logged in before is stale (its client
        reconnected elsewhere before this node noticed), and is closed as replaced."""
        with self._lock:
            # A session still logging in (0.0) is newer than any notice: it is kept.
            stale = [s for s in self._sessions if s.box == box and 0 < s.logged_in_at <= since]
        for session in stale:
            session.close(REPLACED, reason="replaced by a login on another node")

    def _devices_changed(self, nick: str) -> None:
        """`nick`'s device list changed on some node (the subscriber thread): the check
        reads the store, so it runs on the watchdog thread (`_close_unlisted`)."""
        self._relay.devices.forget(nick)
        self._watchdog.after(0, functools.partial(self._close_unlisted, nick))

    def _close_unlisted(self, nick: str) -> None:
        """Close each session here of a device `nick`'s list no longer vouches for, as the
        node where it was published did with its own (the watchdog thread)."""
        devices = self._relay.devices
        with self._lock:
            mine = [s for s in self._sessions if s.box.partition("/")[0] == nick and "/" in s.box]
        for session in mine:
            device = session.box.partition("/")[2]
            try:
                kept = devices.vouches(nick, device, session.sig_key)
            except StoreUnavailable:
                continue  # it is checked again at its next request; the store logs it
            if not kept:
                session.close(_UNLINKED, reason="unlinked")

    def _fenced(self) -> None:
        """This node lost its lease (the lease thread): every session is closed with a
        retryable error; its clients reconnect, to another node if a balancer sends them."""
        with self._lock:
            sessions = list(self._sessions)
        log.warning("cluster: fenced: closing %d sessions", len(sessions))
        for session in sessions:
            session.close(_FENCED, reason="cluster lost")

    def _lost_nick(self, nick: str) -> None:
        """Another node took folded `nick` while Redis had lost this node's claim (the
        lease thread): this node's sessions of it are closed (retryable)."""
        with self._lock:
            sessions = [s for s in self._sessions if s.nick is not None and fold_nick(s.nick) == nick]
        for session in sessions:
            session.close(_FENCED, reason="nick lost to another node")

    def _node_gone(self, node: str) -> None:
        """Another node died (the subscriber thread): `_redeliver` runs on the watchdog
        thread, which may read the store (the subscriber must not wait on it)."""
        log.info("cluster: node %s is gone: handing out again what waits for the sessions here", node)
        self.hub.drop_node(node)
        # It may have died between a device list's commit and the news of it.
        self._relay.devices.forget_all()
        self._watchdog.after(0, self._redeliver)

    def _redeliver(self) -> None:
        """Hand every identity session here the whispers waiting in its mailbox again
        (the watchdog thread). A whisper committed by a node that died before pushing it
        would otherwise wait for its recipient's next login; one handed out twice is
        recognised by the client by its id and acknowledged again."""
        with self._lock:
            sessions = [s for s in self._sessions if s.box]
        for session in sessions:
            try:
                waiting = self._relay.pending(session.box)[: self.config.queue_page]
            except StoreUnavailable:
                return  # the store logs it; the sessions' next logins drain their queues
            if waiting:
                session.deliver(b"".join(encode(d) for d in waiting))

    def _save_history(self) -> None:
        """Write the unsaved room lines; they stay unsaved in the hub unless this worked.
        (A registered room is in the store before its lines are: the hub writes its
        registration before it keeps any.) Raises `StoreUnavailable` (the store has
        logged it). The watchdog thread calls it, and `stop`'s caller at the end."""
        unsaved = self.hub.unsaved()
        if not unsaved:
            return
        lines = [(m.room, m.nick, m.text, m.ts) for m in unsaved]
        self.store.append_history(lines, keep=max(1, self.config.history_lines))
        if dropped := self.hub.saved(unsaved):
            # Lines older than the newest `history_lines`: the store would not keep them.
            log.debug("%d room lines outside the kept history were not written", dropped)

    def _flush_history(self) -> None:
        """Write room lines said since the last flush, in one transaction (then reschedules)."""
        with self._lock:
            if self._stopping:
                return
        # A failure is logged by the store at a bounded rate; the lines wait in the hub.
        with contextlib.suppress(StoreUnavailable):
            self._save_history()
        self._watchdog.after(_HISTORY_FLUSH_EVERY, self._flush_history)

    def _check_datadir(self) -> None:
        """Stop writing once the data directory or database is deleted or replaced
        (watchdog thread; reschedules until it happens)."""
        assert self._datadir is not None
        with self._lock:
            if self._stopping:
                return
        problem = self._datadir.changed()
        if problem is None:
            self._watchdog.after(self.config.datadir_check_interval, self._check_datadir)
            return
        # SQLite would go on writing to the open (possibly deleted) file and the server
        # would go on answering "stored" for whispers nobody will ever read back.
        self._datadir.store.fail(problem)
        log.critical(
            "%s while the server was running: refusing every store operation from now on "
            "(clients get store-unavailable). Stop the server, restore the directory "
            "(docs/operations.md, Backup) and start it again.",
            problem,
        )
        self.store_lost.set()

    def _flush_presence(self) -> None:
        """Send pending join/leave notices (runs in the watchdog thread, then reschedules)."""
        with self._lock:
            if self._stopping:
                return
        self.hub.flush_presence()
        self._watchdog.after(_PRESENCE_FLUSH_EVERY, self._flush_presence)

    def _sweep_every(self) -> float:
        # Often enough that a ping, a drop or a cut-off line is at most a quarter-interval late.
        config = self.config
        return max(0.05, min(config.ping_interval, config.ping_timeout, config.line_timeout) / 4)

    def _sweep(self) -> None:
        """Keepalive and line deadlines for every session, and giving memory back after a
        flood (runs in the watchdog thread, then reschedules)."""
        now = time.monotonic()
        with self._lock:
            if self._stopping:
                return
            sessions = list(self._sessions)
            trim = self._trim.due(len(sessions))
        for session in sessions:
            session.check_alive(now)
        if trim:
            self._trim_heap(len(sessions))
        self._watchdog.after(self._sweep_every(), self._sweep)

    @staticmethod
    def _trim_heap(sessions: int) -> None:
        """Give the memory a flood of sessions left free back to the system (glibc keeps
        it otherwise; measured in docs/operations.md). Watchdog thread."""
        before = heap.rss_kib()
        if heap.trim():
            after = heap.rss_kib()
            if before is not None and after is not None:
                log.info(
                    "sessions down to %d: gave %d MiB of freed memory back (resident %d -> %d MiB)",
                    sessions,
                    (before - after) // 1024,
                    before // 1024,
                    after // 1024,
                )

    def expire_queue(self) -> int:
        """Delete queued whispers older than `queue_ttl` of service time; how many went.
        Raises `StoreUnavailable`. (The watchdog runs it every `expire_interval`.)"""
        removed = self.store.expire(self.config.queue_ttl)
        if removed:
            log.info(
                "expired %d undelivered whispers older than %.0f days of service",
                removed,
                self.config.queue_ttl / 86400,
            )
        return removed

    def expire_rooms(self) -> list[str]:
        """Release the registered rooms whose owner key has not logged in for `nick_ttl`
        of service (and is not online): they become ordinary rooms, vanishing when empty.
        Raises `StoreUnavailable`. (The watchdog runs it every `expire_interval`.)"""
        released = self.hub.release_idle_rooms(
            lambda online: self.store.expire_rooms(
                self.config.nick_ttl, keep_owners=online, keep_history=self.config.autojoin
            )
        )
        if released:
            log.info(
                "released %d registered rooms whose owner did not log in for %.0f days of service: %s%s",
                len(released),
                self.config.nick_ttl / 86400,
                ", ".join(released[:10]),
                ", ..." if len(released) > 10 else "",  # a log line of bounded length
            )
        return released

    def _expire(self) -> None:
        """`expire_queue` and the expiry of unused nicks, in the watchdog thread (then
        reschedules)."""
        with self._lock:
            if self._stopping:
                return
        with contextlib.suppress(StoreUnavailable):  # logged by the store; the next run tries again
            self.expire_queue()
            self._relay.expire_nicks()
            self.expire_rooms()
        self._watchdog.after(self.config.expire_interval, self._expire)

    def _accept_loop(self) -> None:
        """The listener thread: accept until stopped.

        When accept fails for lack of descriptors, the waiting connection stays in the
        backlog and the socket stays readable: polling it again at once would spin (it
        was measured at 95% of a core and 40,000 log lines a second). So the listening
        socket is left out of the poll for `accept_pause`, doubling up to
        `accept_pause_max` while it keeps failing; sessions already running are not
        affected, and the waiting clients get in as soon as descriptors are free again.
        """
        assert self._listen is not None
        pause = 0.0  # the current pause; 0 while accepting works
        resume_at: float | None = None  # monotonic time to poll the socket again, if paused
        with selectors.DefaultSelector() as selector:
            selector.register(self._listen, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                timeout = None if resume_at is None else max(0.0, resume_at - time.monotonic())
                for key, _ in selector.select(timeout):
                    if key.fileobj is not self._listen:
                        continue
                    if self._accept_ready():
                        pause = 0.0
                    else:
                        pause = min(max(pause * 2, self.config.accept_pause), self.config.accept_pause_max)
                        selector.unregister(self._listen)
                        resume_at = time.monotonic() + pause
                if resume_at is not None and time.monotonic() >= resume_at:
                    selector.register(self._listen, selectors.EVENT_READ)
                    resume_at = None

    def _accept_ready(self) -> bool:
        """Accept every waiting connection; False if accepting failed and must pause.
        Listener thread."""
        assert self._listen is not None
        while True:
            try:
                sock, addr = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # that client gave up while waiting: take the next
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: keep serving the clients we have.
                self._accept_faults.failed(exc.strerror or str(exc))
                return False
            self._accept_faults.recovered()
            ip = addr[0]
            prefix = self._limits.prefix(ip)
            with self._lock:
                refusal = self._counts.refusal(prefix)
            if refusal is None and not self._guards.accept(prefix):
                refusal = "connecting too fast from its network"
            if refusal is not None:
                # Refused before any TLS work, the cheapest answer: a closed connection.
                sock.close()
                self._log_refusal(ip, prefix, refusal)
                continue
            try:
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset by the peer already: nothing to serve, and no reason to stop
                sock.close()
                continue
            peer = f"{addr[0]}:{addr[1]}"
            session = Session(
                sock,
                peer,
                context=self._context,
                hub=self.hub,
                relay=self._relay,
                watchdog=self._watchdog,
                config=self.config,
                prefix=prefix,
                guards=self._guards,
                on_login=self._session_logged_in,
            )
            thread = threading.Thread(
                target=self._run_session, args=(session,), name=f"securechat-session-{peer}", daemon=True
            )
            with self._lock:
                if self._stopping:
                    sock.close()
                    return True
                self._sessions[session] = thread
                self._counts.opened(prefix)
                self._trim.seen(len(self._sessions))
                self._lock.notify_all()
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had: as if out of descriptors
                with self._lock:
                    del self._sessions[session]
                    self._counts.closed(prefix, logged_in=False)
                    self._lock.notify_all()
                sock.close()
                self._accept_faults.failed(str(exc))
                return False

    def _log_refusal(self, ip: str, prefix: str, why: str) -> None:
        """Log a refused connection: the first at once, then at most one line per
        `fault_log_interval` with the count (a flood is refused thousands of times a
        second). Listener thread."""
        self._refused += 1
        now = time.monotonic()
        last = self._refused_logged_at
        if last is not None and now - last < self.config.fault_log_interval:
            return
        log.warning(
            "refusing %s (%s): %s (%d connections refused since the last such line)",
            ip,
            prefix,
            why,
            self._refused,
        )
        self._refused, self._refused_logged_at = 0, now

    def _session_logged_in(self, session: Session) -> None:
        """A session logged in (its reader thread calls this once, under the hub's lock):
        it leaves the budget of connections not logged in."""
        with self._lock:
            if session in self._sessions and session not in self._logged_in:
                self._logged_in.add(session)
                self._counts.logged_in(session.prefix)

    def _run_session(self, session: Session) -> None:
        """A session's reader thread: serve it, then forget it."""
        try:
            session.run()
        finally:
            with self._lock:
                thread = self._sessions.pop(session)
                logged_in = session in self._logged_in
                self._logged_in.discard(session)
                self._counts.closed(session.prefix, logged_in=logged_in)
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
        """Tell every client, close every session, and join every thread. Any thread but
        the server's own (it joins them); a second call does nothing.

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
        if self.cluster is not None:
            self.cluster.stop()
        self._watchdog.stop()
        self._wake_r.close()
        self._wake_w.close()
        try:
            self._save_history()
        except StoreUnavailable as exc:
            log.error("%d room lines could not be written to history: %s", len(self.hub.unsaved()), exc)
        finally:
            if self._datadir is not None:
                self._datadir.close_store()
            else:
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
