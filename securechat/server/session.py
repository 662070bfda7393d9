"""One client connection: TLS handshake, a reader thread, and a writer when needed.

The reader (the thread the listener started) runs the handshake, reads frames and
acts on them. Frames for this client go through its outbox: sent at once, without
blocking, by whichever thread puts them when the socket has room, or else queued for
a writer thread the outbox starts and that leaves again when idle (see outbox.py).

Closing is a lingering close: put a last frame (bye or error), send it and half-close
(at once if the socket takes it, else by the writer), keep reading until the peer
hangs up, and cut the connection when `linger` runs out. Cutting at once could make
the kernel reset the connection and destroy the last frame before the peer reads it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable

from ..protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Away,
    Bye,
    Challenge,
    Code,
    Connection,
    Error,
    Event,
    FetchKeys,
    Hello,
    Ping,
    Pong,
    PublishKeys,
    Quit,
    RemoteProtocolError,
    Role,
    Say,
    Welcome,
    Whisper,
    Who,
    encode,
)
from ..transport import TlsChannel
from .addresses import PrefixGuards
from .authfail import NICK_REGISTERED, PROOF_FAILED, auth_failed, registration_refused
from .backlog import Backlog
from .config import ServerConfig
from .deadlines import Deadline, Watchdog
from .hub import Hub, NickTaken, NoSuchRoom
from .outbox import Idle, Outbox
from .ratelimit import TokenBucket
from .relay import Relay, RelayError
from .store import StoreUnavailable

__all__ = ["Session"]

log = logging.getLogger(__name__)


class Session:
    """A client's session. `run` is the reader thread's body; `close` may come from anywhere."""

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
        reader thread, when this session has logged in."""
        self.peer = peer
        self.address = peer.rsplit(":", 1)[0]  # the peer's IP address, for the logs
        self.prefix = prefix
        self._guards = guards
        self._on_login = on_login
        self._login_reported = False  # `on_login` was called; reader thread only
        self.nick: str | None = None
        self.sig_key = b""  # the identity key this session proved it holds; b"" for a guest
        self.away = ""
        self._relay = relay
        self._claim: Hello | None = None  # a hello with an identity, awaiting its proof
        self._nonce = b""
        self._backlog: Backlog | None = None  # queued whispers still to hand out; reader thread only
        self._requests = (
            TokenBucket(config.message_rate, config.message_burst) if config.message_rate > 0 else None
        )
        self._strikes = 0
        self._says: list[Say] = []  # room lines read in this chunk, not yet broadcast
        self._said_bytes = 0  # their text's length
        # For keepalive: when the peer last sent a complete frame. Bytes of a line that
        # never ends do not count. Written by the reader thread, read by the watchdog's
        # sweep (`check_alive`); a stale read only delays a ping by one sweep.
        self.last_heard = time.monotonic()
        self._pinged = False
        # When the line now arriving began (None: no line is half received), for
        # `line_timeout`. Written by the reader thread, read by the sweep, like `last_heard`.
        self._partial_since: float | None = None
        self._channel = TlsChannel(sock, context, server_side=True)
        self._conn = Connection(Role.SERVER)
        self._hub = hub
        self._watchdog = watchdog
        self._config = config
        self._outbox = Outbox(config.send_queue_bytes, start_writer=self._start_writer)
        self._lock = threading.Lock()
        self._closing = False
        self._overflow_reported = False
        self._established = False  # the TLS handshake is done: frames can be sent
        self._writers: list[threading.Thread] = []  # started on demand (see Outbox)
        self._leave_reason = "connection closed"
        self._login_deadline: Deadline | None = None
        self._linger_deadline: Deadline | None = None

    # -- called from other threads -------------------------------------------------

    def deliver(self, frame: bytes) -> None:
        """Queue a frame for this client (the hub calls this). Never blocks.

        On the first overflow the connection is cut from the watchdog thread: the
        writer may be blocked in a send to this very client and cannot notice by
        itself, and the broadcaster calling us must not do socket work.
        """
        if not self._outbox.put(frame) and self._outbox.overflowed:
            with self._lock:
                first = not self._overflow_reported
                self._overflow_reported = True
            if first:
                self.close(reason=_NOT_READING)
                self._watchdog.after(0.0, self._channel.shutdown)

    def close(self, final: Event | None = None, reason: str = "") -> None:
        """Begin closing: queue `final` as the last frame, stop output, cut after `linger`.

        Thread-safe and idempotent; the first call's reason is the one announced.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
            if reason:
                self._leave_reason = reason
            established = self._established
        if not established:  # still in the TLS handshake: nothing can be said
            self._channel.shutdown()
            return
        self._outbox.close(None if final is None else encode(final))
        self._linger_deadline = self._watchdog.after(self._config.linger, self._channel.shutdown)

    # -- the reader thread ----------------------------------------------------------

    def run(self) -> None:
        """Serve the connection until it ends. Never raises."""
        try:
            if self._handshake():
                self._read_loop()
                self._finish()
        except Exception:
            log.exception("session %s failed", self.peer)
            self._channel.shutdown()
        finally:
            self._cancel_deadlines()
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
            if self._closing:
                return False
            self._established = True
        self._outbox.attach(self._channel)
        log.info("TLS session from %s (%s)", self.peer, self._channel.version())
        return True

    def _login_timed_out(self) -> None:
        self.close(Error(code=Code.TIMEOUT, reason="no hello in time", fatal=True), reason="login timeout")

    def _read_loop(self) -> None:
        while not self._closing:
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
        """Act on every complete event; False once the connection is over."""
        while not self._closing:
            try:
                event = self._conn.next_event()
            except RemoteProtocolError as exc:
                self._flush_says()
                log.info("bad frame from %s: %s", self.peer, exc.code)
                if exc.fatal:
                    self.close(Error(code=exc.code, reason=exc.reason, fatal=True), reason="protocol error")
                    return False
                self._reply(Error(code=exc.code, reason=exc.reason, fatal=False))
                continue
            if event is NEED_DATA:
                self._flush_says()
                return True
            if event is CLOSED:
                self._flush_says()
                self.close()
                return False
            assert isinstance(event, Event)
            self.last_heard = time.monotonic()  # a complete frame: the peer is alive
            self._pinged = False
            self._handle(event)
        return False

    def _handle(self, event: Event) -> None:
        if isinstance(event, _RATE_LIMITED) and not self._within_rate(event):
            return
        if isinstance(event, Say) and self._hub.has_room(event.room):
            # Lines that arrived together are broadcast together (see `_flush_says`).
            self._says.append(event)
            self._said_bytes += len(event.text)
            if len(self._says) >= _MAX_BATCH or self._said_bytes >= _MAX_BATCH_BYTES:
                self._flush_says()
            return
        self._flush_says()  # everything else keeps its place after the lines before it
        try:
            self._dispatch(event)
        except StoreUnavailable:
            self._store_unavailable(event)

    def _report_login(self) -> None:
        """Tell the server this session logged in (once): it leaves the budget of
        connections logging in. Reader thread only."""
        if not self._login_reported:
            self._login_reported = True
            self._on_login(self)

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, Hello):
            self._hello(event)
        elif isinstance(event, Auth):
            self._auth(event)
        elif isinstance(event, (Say, Who)):
            self._room(event)
        elif isinstance(event, Ping):
            self._reply(Pong(token=event.token))
        elif isinstance(event, Away):
            self.away = event.message
        elif isinstance(event, Quit):
            self.close(Bye(reason="goodbye"), reason=event.reason or "quit")
        elif isinstance(event, Pong):
            pass  # answers to our keepalive pings carry nothing to act on
        elif isinstance(event, (PublishKeys, FetchKeys, Whisper, Ack)):
            self._e2e(event)

    def _store_unavailable(self, event: Event) -> None:
        """The store failed while handling `event` (the store logged it, at a bounded rate).

        A request after login gets a non-fatal `store-unavailable`, naming the whisper it
        refuses, and the session goes on: nothing was stored, the client may send the
        same frame again later. A login (hello, auth) cannot go on without the store (it
        must know who owns a nick), so it is refused with a fatal `store-unavailable`:
        the client should reconnect later, with its usual backoff, not give up for good.
        """
        if isinstance(event, (Hello, Auth)):
            self.close(
                Error(
                    code=Code.STORE_UNAVAILABLE,
                    reason="the server cannot use its database right now; log in again later",
                    fatal=True,
                ),
                reason="store unavailable at login",
            )
            return
        self._reply(
            Error(
                code=Code.STORE_UNAVAILABLE,
                reason="the server cannot write to its database right now; nothing was stored, "
                "send it again later",
                ref=_request_ref(event),
            )
        )

    def _room(self, event: Say | Who) -> None:
        assert self.nick is not None  # the connection passes these only after the welcome
        try:
            if isinstance(event, Say):
                self._hub.say(self.nick, event.room, event.text, action=event.action)
            else:
                self._reply(self._hub.names(event.room))
        except NoSuchRoom:
            self._reply(Error(code=Code.NO_SUCH_ROOM, reason=f"no room {event.room}"))

    def _flush_says(self) -> None:
        """Broadcast the batched room lines: one fan-out (one write per member) for all."""
        if self._says:
            assert self.nick is not None  # the connection passes Say only after the welcome
            says, self._says, self._said_bytes = self._says, [], 0
            self._hub.say_many(self.nick, says)

    def _within_rate(self, event: Event) -> bool:
        """Take a token for a request (and, for a room line, one of the budget all sessions
        of this prefix share); on refusal say so, and drop a session that keeps on."""
        if self._requests is not None and not self._requests.allow():
            reason = "slow down: too many messages"
        elif isinstance(event, Say) and not self._guards.say(self.prefix):
            # 40 nicks from one network get one budget, not 40: a flood cannot wipe the
            # room's history 40 times faster than one flooder.
            reason = "slow down: too many messages from your network"
        else:
            self._strikes = 0
            return True
        self._strikes += 1
        if self._strikes > self._config.max_strikes:
            self.close(
                Error(code=Code.RATE_LIMITED, reason="flooding: disconnected", fatal=True), reason="flooding"
            )
        elif self._strikes == 1 or self._strikes % 10 == 0:  # do not answer a flood with a flood
            self._reply(Error(code=Code.RATE_LIMITED, reason=reason))
        return False

    def check_alive(self, now: float) -> None:
        """Keepalive, called periodically by the watchdog thread: ping a quiet peer, drop
        one that stays silent, and one whose line has not ended within `line_timeout`."""
        with self._lock:
            if self._closing or not self._established:
                return  # handshaking sessions have their own deadline
        partial_since = self._partial_since
        if partial_since is not None and now - partial_since > self._config.line_timeout:
            self.close(
                Error(code=Code.TIMEOUT, reason="a line took too long to arrive", fatal=True),
                reason="incomplete line",
            )
            return
        quiet = now - self.last_heard
        if quiet > self._config.ping_interval + self._config.ping_timeout:
            self.close(
                Error(code=Code.TIMEOUT, reason="no answer to ping", fatal=True), reason="ping timeout"
            )
        elif quiet > self._config.ping_interval and not self._pinged:
            self._pinged = True
            self.deliver(encode(Ping(token=f"{now:.0f}")))

    def _e2e(self, event: Event) -> None:
        assert self.nick is not None
        if not self.sig_key:
            self._reply(
                Error(code=Code.NOT_REGISTERED, reason="guests cannot whisper: log in with an identity")
            )
            return
        try:
            if isinstance(event, PublishKeys):
                # Each one-time prekey costs a signature check (200: ~40 ms of CPU), charged
                # in the request rate on top of the frame's own token (`_within_rate`).
                cost = self._relay.publish_cost(event)
                if self._requests is not None and cost > 0 and not self._requests.allow(cost):
                    raise RelayError(
                        Code.RATE_LIMITED,
                        "publishing keys too fast: each one-time prekey costs a signature check; "
                        "try again in a moment",
                    )
                self._reply(self._relay.publish(self.nick, self.sig_key, event))
            elif isinstance(event, FetchKeys):
                self._reply(self._relay.fetch(event.nick, requester=self.sig_key))
            elif isinstance(event, Whisper):
                self._reply(self._relay.whisper(self.nick, event))
            elif isinstance(event, Ack):
                self._relay.ack(self.nick, event)
                if self._backlog is not None:  # an ack makes room for more of the backlog
                    for delivery in self._backlog.acked(event.id):
                        self._reply(delivery)
                    if self._backlog.done:
                        self._backlog = None
        except RelayError as exc:
            self._reply(Error(code=exc.code, reason=exc.reason, ref=_request_ref(event)))

    def _hello(self, hello: Hello) -> None:
        # Claims without a proof back off once they keep failing, per network and nick. A
        # claim with an identity never waits: a valid proof cannot be guessed, so refusing
        # one would only let a failing neighbour lock its owner out; failed proofs are
        # logged for fail2ban and bounded by the network's connection rate.
        backoff = 0.0 if hello.identity else self._guards.login_backoff(self.prefix, hello.nick)
        if backoff > 0:
            # Refused for now, not for good, and not counted as another failure.
            log.info("login from %s refused: too many failed logins for %s", self.address, hello.nick)
            self.close(
                Error(
                    code=Code.BUSY,
                    reason=f"too many failed logins for {hello.nick} from your network; "
                    f"try again in {math.ceil(backoff)} s",
                    fatal=True,
                ),
                reason="too many failed logins",
            )
        elif not self._relay.may_claim(hello.nick, hello.identity):
            self._refuse_registered(hello.nick)
        elif hello.identity:
            self._claim = hello
            self._nonce = os.urandom(32)
            self._reply(Challenge(nonce=self._nonce))
        else:
            self._login(hello)

    def _refuse_registered(self, nick: str) -> None:
        auth_failed(self._guards, self.prefix, self.address, nick, NICK_REGISTERED)
        self.close(
            Error(code=Code.NICK_REGISTERED, reason=f"{nick} is registered to another key", fatal=True),
            reason="nick registered to another key",
        )

    def _auth(self, auth: Auth) -> None:
        claim = self._claim
        if claim is None:
            self._reply(Error(code=Code.UNEXPECTED, reason="auth without a hello that claims an identity"))
            return
        if not self._relay.proof_valid(claim.nick, self._nonce, claim.identity, auth.signature):
            auth_failed(self._guards, self.prefix, self.address, claim.nick, PROOF_FAILED)
            self.close(
                Error(code=Code.AUTH_FAILED, reason="identity proof failed", fatal=True), reason="auth failed"
            )
            return
        # A nick nobody holds yet costs one of the network's registrations: nicks are
        # free, and each one is kept for months.
        if not self._relay.is_registered(claim.nick) and not self._guards.register(self.prefix):
            closed = self._guards.registrations_closed
            registration_refused(
                self.address, claim.nick, "registrations closed" if closed else "too many from its network"
            )
            self.close(
                Error(
                    code=Code.QUOTA,
                    reason="this server accepts no new registrations"
                    if closed
                    else "too many new nicks registered from your network; try again later",
                    fatal=True,
                ),
                reason="registration refused",
            )
            return
        if not self._relay.register(claim.nick, claim.identity):
            self._refuse_registered(claim.nick)
            return
        self.sig_key = claim.identity
        self._claim = None
        if self._login(claim):
            self._reply(self._relay.prekey_count(claim.nick))
            # A page of what waited; more as acks come back (see backlog.py).
            self._backlog = self._relay.backlog(claim.nick)
            for delivery in self._backlog.start():
                self._reply(delivery)
            if self._backlog.done:
                self._backlog = None
            for failure in self._relay.failures(claim.nick):
                self._reply(failure)

    def _login(self, hello: Hello) -> bool:
        """Join the room under `hello.nick`; False (and the session closing) if it is taken."""

        def welcome(users: tuple[str, ...]) -> None:
            # Runs under the hub lock, before anyone can send us a room event. Sent
            # without `_reply`: flushing room lines here would re-enter the hub (there
            # are none yet; lines are accepted only after the welcome).
            self.nick = hello.nick
            # Counted as logged in before the welcome leaves: a client that connects again
            # from its network as soon as it is welcomed must find this one out of the
            # pre-login budget. (Takes the server's lock under the hub's: that order only.)
            self._report_login()
            self._send(
                Welcome(
                    version=PROTOCOL_VERSION,
                    nick=hello.nick,
                    room=self._hub.room,
                    users=users,
                    server=self._config.server_name,
                )
            )

        def same_user(holder: object) -> bool:
            # A login proven with the nick's own key takes over a stale session of that
            # key (a reconnect before the server noticed the old connection died).
            return bool(self.sig_key) and isinstance(holder, Session) and holder.sig_key == self.sig_key

        try:
            displaced = self._hub.join(self, hello.nick, welcome, may_replace=same_user)
        except NickTaken:
            self.close(
                Error(code=Code.NICK_TAKEN, reason=f"{hello.nick} is already in use", fatal=True),
                reason="nick taken",
            )
            return False
        if isinstance(displaced, Session):
            displaced.close(
                Error(code=Code.REPLACED, reason="you logged in from another connection", fatal=True),
                reason="replaced by a new login",
            )
        if self._login_deadline is not None:
            self._login_deadline.cancel()
        log.info("%s logged in as %s (%s)", self.peer, hello.nick, "identity" if self.sig_key else "guest")
        return True

    def _reply(self, event: Event) -> None:
        self._flush_says()  # a reply follows the echo of the lines read before it
        self._send(event)

    def _send(self, event: Event) -> None:
        self._outbox.put(self._conn.send(event))

    def _finish(self) -> None:
        self.close()
        if self.nick is not None:
            self._hub.leave(self, self.nick, self._leave_reason)
            log.info("%s (%s) left: %s", self.nick, self.peer, self._leave_reason)
        # Read and discard until the peer hangs up or the linger deadline cuts it,
        # so our last frame is not destroyed by a reset.
        try:
            while self._channel.recv():
                pass
        except (ssl.SSLError, OSError):
            pass

    def _cancel_deadlines(self) -> None:
        for deadline in (self._login_deadline, self._linger_deadline):
            if deadline is not None:
                deadline.cancel()

    # -- the writer thread ----------------------------------------------------------

    def _start_writer(self) -> None:
        """Start a writer thread (the outbox calls this, under its lock, when one is needed)."""
        writer = threading.Thread(target=self._write_loop, name=f"securechat-writer-{self.peer}", daemon=True)
        with self._lock:  # started and listed at once: `run` joins only started threads
            self._writers = [w for w in self._writers if w.is_alive()]
            writer.start()
            self._writers.append(writer)

    def _writers_so_far(self) -> list[threading.Thread]:
        with self._lock:
            return list(self._writers)

    def _write_loop(self) -> None:
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

#: A batch of room lines is broadcast once it holds this many lines or this much text
#: (bounds the hub lock's hold and the size of one write).
_MAX_BATCH = 256
_MAX_BATCH_BYTES = 64 * 1024

#: Requests that cost a token of the session's message bucket. Answers (pong, ack) do
#: not: refusing them would punish a client for keeping up.
_RATE_LIMITED = (Say, Who, Whisper, PublishKeys, Ping)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _request_ref(event: Event) -> str:
    """What a refusal of `event` names in `ref`: a whisper's id, the nick whose keys were
    asked for, or "" (the client matches answers to its requests by it)."""
    if isinstance(event, Whisper):
        return event.id
    if isinstance(event, FetchKeys):
        return event.nick
    return ""
