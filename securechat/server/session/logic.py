"""A session's protocol logic: what the server does with each frame one client sends.

`SessionLogic` is owned by the session's reader thread: every method is called from it
(one of them, the welcome, while that thread holds the hub's lock). It holds no locks,
opens no sockets, starts no threads and reads no clock: it talks to its connection only
through a `Port` (`send(event)`, `close(final, reason)`), which io.py's `Session`
implements and a test can fake. What crosses threads lives in the shell, behind its lock
(see io.py and docs/design.md, "Server threads").

The logic: the hello, the identity challenge and its proof, the request rate and the
strikes of a flooder, room lines batched per read, dispatch to the hub and the relay,
the queued whispers handed out a page at a time, and the answers when the store fails.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

from ...protocol import (
    DEVICES_VERSION,
    KEM_VERSION,
    NAMING_A_ROOM,
    PROTOCOL_VERSION,
    ROOM_REQUESTS,
    Ack,
    Auth,
    Away,
    Ban,
    Bans,
    Bye,
    Challenge,
    Code,
    Deop,
    Devices,
    Error,
    Event,
    FetchKeys,
    Hello,
    Invite,
    Join,
    Kick,
    Link,
    ListRooms,
    Op,
    Part,
    Ping,
    Pong,
    PublishDevices,
    PublishKeys,
    Quit,
    RegisterRoom,
    RemoteProtocolError,
    Rename,
    Say,
    SetMode,
    SetTopic,
    Transfer,
    Unban,
    Welcome,
    Whisper,
    Who,
    encode,
    fold_nick,
    fold_room,
    is_pattern,
)
from ...version import SOFTWARE
from ..addresses import PrefixGuards
from ..authfail import NICK_REGISTERED, PROOF_FAILED, auth_failed, registration_refused
from ..backlog import Backlog
from ..cluster import ClusterUnavailable
from ..config import ServerConfig
from ..devices import DevicesRefused
from ..hub import Hub, Member, NickTaken, RoomError, TooManyDevices
from ..ratelimit import TokenBucket
from ..relay import ClusterLink, Relay, RelayError
from ..store import RenameResult, StoreUnavailable, mailbox

__all__ = ["REPLACED", "Holder", "LoginState", "Port", "SessionLogic"]

log = logging.getLogger(__name__)

#: What a login is told when its node cannot reach the rest of its cluster.
_CLUSTER_BUSY = Error(
    code=Code.BUSY, reason="this server is out of touch with its cluster for a moment: try again", fatal=True
)
#: What a session is told as it is closed because its user logged in again (from the
#: same device: here, or on another node of a cluster).
REPLACED = Error(code=Code.REPLACED, reason="you logged in from another connection", fatal=True)


class LoginState(enum.Enum):
    """Where a session's login is. AWAITING_HELLO -> IN (a guest's hello),
    AWAITING_HELLO -> AWAITING_PROOF (a hello claiming an identity: a challenge is sent)
    -> IN (a good proof). A refused login closes the session in the state it was in."""

    AWAITING_HELLO = "awaiting-hello"
    AWAITING_PROOF = "awaiting-proof"  # `_served` is the claim, `_nonce` its challenge
    IN = "in"  # welcomed: `nick` is set, `on_login` was called


class Port(Protocol):
    """The logic's whole view of its connection (io.py's `Session`; a fake in tests)."""

    def send(self, event: Event) -> None:
        """Queue `event` for the client, after everything sent before it. Never blocks.

        Called by the reader thread (and, for the welcome, by it under the hub's lock)."""

    def send_many(self, events: Sequence[Event]) -> None:
        """Queue `events`, in order, after everything sent before them, in one write (one
        TLS record for all: the answers to a batch of whispers). Never blocks. Called by
        the reader thread."""

    def close(self, final: Event | None = None, reason: str = "") -> None:
        """Send `final` as the last frame and end the connection. Idempotent; the first
        call's `reason` is the one the other members are told. Callable from any thread."""


@runtime_checkable
class Holder(Protocol):
    """A logged-in session as another session's login sees it in the hub: a login proven
    with the same identity key displaces it (see `SessionLogic._login`)."""

    @property
    def person_key(self) -> bytes:
        """Its person's identity key (a linked device proves its own, vouched for by this
        one); b"" for a guest. Set before it joins the hub."""

    def close(self, final: Event | None = None, reason: str = "") -> None:
        """As `Port.close`; called by the displacing session's reader thread."""


class SessionLogic:
    """One client's protocol logic. Reader thread only; see the module docstring.

    `member` is what the hub holds for this session (the shell: it delivers other
    members' frames); `on_login` is called once, by the reader thread under the hub's
    lock, when the session has logged in, before the welcome is sent.
    """

    def __init__(
        self,
        port: Port,
        member: Member,
        *,
        hub: Hub,
        relay: Relay,
        config: ServerConfig,
        peer: str,
        prefix: str,
        guards: PrefixGuards,
        on_login: Callable[[], None],
        nonce: Callable[[], bytes] = lambda: os.urandom(32),
    ) -> None:
        """`peer` is "address:port", `prefix` the network of that address (addresses.py),
        `guards` the per-prefix limits all sessions share; `nonce` makes login challenges."""
        self._port = port
        self._member = member
        self._hub = hub
        self._relay = relay
        self._config = config
        self._peer = peer
        self._address = peer.rsplit(":", 1)[0]  # the peer's IP address, for the logs
        self._prefix = prefix
        self._guards = guards
        self._on_login = on_login
        self._make_nonce = nonce
        # Written by the reader thread only (here). Read by other threads through the
        # shell (io.py says how each read is safe).
        self.nick: str | None = None  # set in the welcome (under the hub's lock) and by a rename
        self.sig_key = b""  # the identity key this session proved; b"" for a guest
        # The person's identity key: `sig_key` itself, but for a linked device (which
        # proves its own key, vouched for by this one). What the hub knows the person by.
        self.person_key = b""
        self.away = ""  # the away message the client set ("" when here)
        # Reader thread only, from here on.
        self.state = LoginState.AWAITING_HELLO
        self._served: Hello | None = None  # the hello being served (the claim, when awaiting proof)
        self._nonce = b""  # the login challenge; kept after the login: a rename signs over it
        self._version = PROTOCOL_VERSION  # the hello's: 1 is served #lobby only
        # Where this device's keys and whispers are kept (store.py `mailbox`): the nick
        # (folded) for the device holding the identity key, "nick/device" for a linked
        # one. Set at login, and by a rename.
        self.box = ""
        # A cluster node: the device this session counts as online for its person
        # across the nodes, and its token (`ClusterLink.claim_device`); None if none.
        self._counted_device: tuple[str, int] | None = None
        self._backlog: Backlog | None = None  # queued whispers still to hand out
        self._requests = (
            TokenBucket(config.message_rate, config.message_burst) if config.message_rate > 0 else None
        )
        # Joins have their own allowance: after each welcome the client joins again every
        # room it remembers (up to max_rooms_per_user at once), which must neither be cut
        # short by the message rate nor eat it.
        self._joins = TokenBucket(_JOIN_RATE, config.max_rooms_per_user) if config.message_rate > 0 else None
        self._strikes = 0  # requests refused in a row for their rate
        self._says: list[Say] = []  # room lines read in this chunk, not yet broadcast
        self._said_bytes = 0  # their text's length
        # Whispers read in this chunk, not yet queued, and acks not yet applied: one
        # commit for each batch (`flush`). At most one of `_says`, `_whispers` and `_acks`
        # holds anything, so answers keep their order.
        self._whispers: list[Whisper] = []
        self._acks: list[Ack] = []

    # -- what the reader thread calls ------------------------------------------------

    def handle(self, event: Event) -> None:
        """Act on one complete frame from the client (the connection has checked that it
        may be sent now). Room lines and whispers are held back to go out in one batch:
        see `flush`."""
        if isinstance(event, _RATE_LIMITED) and not self._within_rate(event):
            return
        if (
            isinstance(event, Say)
            and self.state is LoginState.IN
            and self.nick is not None
            and self._hub.is_in(self.nick, event.room)
        ):
            # Lines that arrived together are broadcast together (see `flush`).
            self._flush_whispers()
            self._flush_acks()
            self._says.append(event)
            self._said_bytes += len(event.text)
            if len(self._says) >= _MAX_BATCH or self._said_bytes >= _MAX_BATCH_BYTES:
                self.flush()
            return
        if isinstance(event, Whisper) and self.state is LoginState.IN and self.sig_key:
            # Whispers that arrived together are queued in one commit (see `flush`).
            self._flush_says()
            self._flush_acks()
            self._whispers.append(event)
            if len(self._whispers) >= _MAX_WHISPER_BATCH:
                self._flush_whispers()
            return
        if isinstance(event, Ack) and self.state is LoginState.IN and self.sig_key:
            # And acks that arrived together are applied in one commit.
            self._flush_says()
            self._flush_whispers()
            self._acks.append(event)
            if len(self._acks) >= _MAX_WHISPER_BATCH:
                self._flush_acks()
            return
        self.flush()  # everything else keeps its place after the lines before it
        try:
            self._dispatch(event)
        except StoreUnavailable:
            self._store_unavailable(event)

    def refuse(self, exc: RemoteProtocolError) -> None:
        """A frame the connection refused: tell the client, and end a fatal case."""
        self.flush()
        log.info("bad frame from %s: %s", self._peer, exc.code)
        if exc.fatal:
            self._port.close(Error(code=exc.code, reason=exc.reason, fatal=True), reason="protocol error")
        else:
            self._reply(Error(code=exc.code, reason=exc.reason, fatal=False))

    def flush(self) -> None:
        """Broadcast the batched room lines (one fan-out, one write per member, for all),
        or queue the batched whispers (one commit for all). The reader calls it when a
        read's frames are used up, and at the end of input."""
        self._flush_says()
        self._flush_whispers()
        self._flush_acks()

    def _flush_acks(self) -> None:
        """Apply the acks read together, in one commit, then hand out what they made room
        for in the backlog; if the commit failed, answer each `store-unavailable`."""
        if not self._acks:
            return
        assert self.nick is not None  # batched only once logged in
        acks, self._acks = self._acks, []
        try:
            self._relay.ack_many(self.box, acks)
        except StoreUnavailable:
            for ack in acks:
                self._store_unavailable(ack)
            return
        for ack in acks:
            if self._backlog is not None:  # an ack makes room for more of the backlog
                for delivery in self._backlog.acked(ack.id):
                    self._reply(delivery)
                if self._backlog.done:
                    self._backlog = None

    def _flush_whispers(self) -> None:
        """Queue the whispers read together, in one commit, and answer each: `stored`, a
        refusal, or (the commit failed) `store-unavailable`."""
        if not self._whispers:
            return
        assert self.nick is not None  # batched only once logged in
        whispers, self._whispers = self._whispers, []
        try:
            outcomes = self._relay.whisper_many(self.box, whispers)
        except StoreUnavailable:
            for whisper in whispers:
                self._store_unavailable(whisper)
            return
        # Nothing else is batched now (see `handle`), so the answers go out at once, in
        # one write: one TLS record and one send for the batch, not one per whisper.
        self._port.send_many(
            [
                Error(code=outcome.code, reason=outcome.reason, ref=_request_ref(whisper))
                if isinstance(outcome, RelayError)
                else outcome
                for whisper, outcome in zip(whispers, outcomes, strict=True)
            ]
        )

    def _flush_says(self) -> None:
        if self._says:
            assert self.nick is not None  # the connection passes Say only after the welcome
            says, self._says, self._said_bytes = self._says, [], 0
            try:
                self._hub.say_many(self.nick, says)
            except RoomError:
                # Put out of a room (kicked, banned) since its lines were read: the
                # lines to rooms it is still in go out, and each room it is not in is
                # answered once, not once per line (a batch holds up to 256).
                by_room: dict[str, list[Say]] = {}
                for say in says:
                    by_room.setdefault(fold_room(say.room), []).append(say)
                for lines in by_room.values():
                    try:
                        self._hub.say_many(self.nick, lines)
                    except RoomError as exc:
                        self._port.send(Error(code=exc.code, reason=exc.reason, ref=lines[0].room))

    def leave(self, reason: str) -> None:
        """The connection is over: leave the hub (announced with `reason`) if logged in."""
        if self.state is LoginState.IN and self.nick is not None:
            self._hub.leave(self._member, self.nick, reason)
            if self._relay.cluster is not None:
                self._relay.cluster.release(fold_nick(self.nick))
                if self._counted_device is not None:
                    self._relay.cluster.release_device(self.person_key, *self._counted_device)
            log.info("%s (%s) left: %s", self.nick, self._peer, reason)

    # -- dispatch ---------------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, Hello):
            self._hello(event)
        elif isinstance(event, Auth):
            self._auth(event)
        elif isinstance(event, (Say, Who)):
            self._room(event)
        elif isinstance(event, ROOM_REQUESTS):
            self._room_request(event)
        elif isinstance(event, Rename):
            self._rename(event)
        elif isinstance(event, Ping):
            self._reply(Pong(token=event.token))
        elif isinstance(event, Away):
            self.away = event.message
            if self.nick:  # before login, the hub reads `away` when it joins
                self._hub.set_away(self.nick, event.message)
        elif isinstance(event, Quit):
            self._port.close(Bye(reason="goodbye"), reason=event.reason or "quit")
        elif isinstance(event, Pong):
            pass  # answers to our keepalive pings carry nothing to act on
        elif isinstance(event, (PublishKeys, FetchKeys, Whisper, Ack)):
            self._e2e(event)
        elif isinstance(event, PublishDevices):
            self._publish_devices(event)
        elif isinstance(event, Link):
            self._link(event)

    def _store_unavailable(self, event: Event) -> None:
        """The store failed while handling `event` (the store logged it, at a bounded rate).

        A request after login gets a non-fatal `store-unavailable`, naming the whisper it
        refuses, and the session goes on: nothing was stored, the client may send the
        same frame again later. A login (hello, auth) cannot go on without the store (it
        must know who owns a nick), so it is refused with a fatal `store-unavailable`:
        the client should reconnect later, with its usual backoff, not give up for good.
        """
        if isinstance(event, (Hello, Auth)):
            self._port.close(
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
                self._reply(self._hub.names(self.nick, event.room))
        except RoomError as exc:  # no such room, or not in it
            self._reply(Error(code=exc.code, reason=exc.reason, ref=event.room))

    def _within_rate(self, event: Event) -> bool:
        """Take a token for a request (a join: of the join allowance; a room line: also
        one of the budget all sessions of this prefix share); on refusal say so, naming
        the request as any refusal of it would, and drop a session that keeps on."""
        bucket = self._joins if isinstance(event, Join) else self._requests
        if bucket is not None and not bucket.allow():
            reason = (
                f"slow down: too many joins; try {event.room} again in a moment"
                if isinstance(event, Join)
                else "slow down: too many messages"
            )
        elif isinstance(event, Say) and not self._guards.say(self._prefix):
            # 40 nicks from one network get one budget, not 40: a flood cannot wipe the
            # room's history 40 times faster than one flooder.
            reason = "slow down: too many messages from your network"
        else:
            self._strikes = 0
            return True
        self._strikes += 1
        if self._strikes > self._config.max_strikes:
            self._port.close(
                Error(code=Code.RATE_LIMITED, reason="flooding: disconnected", fatal=True), reason="flooding"
            )
        elif not isinstance(event, Say) or self._strikes == 1 or self._strikes % 10 == 0:
            # Every refused request is answered (a client waits for its answer; a room
            # request unanswered would leave it thinking it got in); a flood of lines is
            # not answered with a flood of refusals.
            self._reply(Error(code=Code.RATE_LIMITED, reason=reason, ref=_request_ref(event)))
        return False

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
                self._reply(
                    self._relay.publish(
                        self.nick, self.sig_key, event, kem=self._version >= KEM_VERSION, box=self.box
                    )
                )
            elif isinstance(event, FetchKeys):
                self._reply(
                    self._relay.fetch(
                        event.nick,
                        requester=self.person_key,
                        ref=event.ref,
                        kem=self._version >= KEM_VERSION,
                        devices=self._version >= DEVICES_VERSION,
                    )
                )
            elif isinstance(event, Whisper):
                self._reply(self._relay.whisper(self.box, event))
            elif isinstance(event, Ack):
                self._relay.ack(self.box, event)
                if self._backlog is not None:  # an ack makes room for more of the backlog
                    for delivery in self._backlog.acked(event.id):
                        self._reply(delivery)
                    if self._backlog.done:
                        self._backlog = None
        except RelayError as exc:
            self._reply(Error(code=exc.code, reason=exc.reason, ref=_request_ref(event)))

    # -- linked devices (protocol version 4) ---------------------------------------------

    def _devices_request(self, event: Event) -> bool:
        """True if this session may send `event` (a version-4 frame); else answered."""
        if self._version >= DEVICES_VERSION:
            return True
        self._reply(
            Error(code=Code.UNEXPECTED, reason=f"{event.TYPE!r} is not in protocol version {self._version}")
        )
        return False

    def _publish_devices(self, event: PublishDevices) -> None:
        """Replace the person's device list (the device holding the identity key only):
        every session of the person is sent the new list; the sessions of the devices it
        no longer names are closed, and their mailboxes are gone (devices.py)."""
        assert self.nick is not None  # the connection passes these only after the welcome
        if not self._devices_request(event):
            return
        if not self.sig_key or self.sig_key != self.person_key:
            self._reply(
                Error(
                    code=Code.NOT_REGISTERED,
                    reason="only the device holding your identity key can change your devices",
                )
            )
            return
        try:
            removed = self._relay.devices.publish(self.nick, self.person_key, event.devices)
        except DevicesRefused as exc:
            self._reply(Error(code=exc.code, reason=exc.reason))
            return
        log.info("%s published device list version %d", self.nick, event.devices.version)
        for device in removed:
            session = self._hub.member_of(self.nick, device)
            if isinstance(session, Holder):
                session.close(
                    Error(code=Code.UNLINKED, reason="this device was unlinked", fatal=True),
                    reason="unlinked",
                )
        listing = encode(Devices(nick=self.nick, devices=event.devices))
        everyone = self._hub.member(self.nick)
        if everyone is not None:
            everyone.deliver(listing)
        # In a cluster, the person's sessions on other nodes too: those of removed
        # devices are closed there, the others sent the list.
        cluster = self._relay.cluster
        if cluster is not None:
            cluster.devices_changed(fold_nick(self.nick))
            cluster.push_person(fold_nick(self.nick), listing)

    def _link(self, event: Link) -> None:
        """Relay one pairing message: a new device's (commitment, reveal) to the device
        holding `peer`'s identity key, the answers to the session named `peer`. The
        server reads nothing in it; `peer` becomes the sender's nick."""
        assert self.nick is not None
        if not self._devices_request(event):
            return
        to_identity = event.step in ("commit", "reveal")
        target = self._hub.member_of(event.peer, "") if to_identity else self._hub.member(event.peer)
        relayed = encode(dataclasses.replace(event, peer=self.nick))
        if target is None and self._online_elsewhere(event.peer):
            # A cluster: the peer is on another node (the device holding the identity
            # key is its mailbox "nick"; a linking guest, every session of its nick).
            assert self._relay.cluster is not None  # `_online_elsewhere` said so
            folded = fold_nick(event.peer)
            if to_identity:
                self._relay.cluster.push(folded, relayed)
            else:
                self._relay.cluster.push_person(folded, relayed)
            return
        if target is None:
            self._reply(
                Error(
                    code=Code.NO_SUCH_USER,
                    reason=f"{event.peer} is not online"
                    + (" on the device holding their identity key" if to_identity else ""),
                    ref=event.pairing,
                )
            )
            return
        target.deliver(relayed)

    def _online_elsewhere(self, nick: str) -> bool:
        """Whether another node of a cluster serves `nick` (False for one process, and
        when the cluster cannot say)."""
        claims = self._relay.cluster
        if claims is None:
            return False
        try:
            return claims.elsewhere(fold_nick(nick))
        except ClusterUnavailable:
            return False

    # -- logging in -------------------------------------------------------------------

    def _hello(self, hello: Hello) -> None:
        # Claims without a proof back off once they keep failing, per network and nick. A
        # claim with an identity never waits: a valid proof cannot be guessed, so refusing
        # one would only let a failing neighbour lock its owner out; failed proofs are
        # logged for fail2ban and bounded by the network's connection rate.
        self._version = hello.version
        backoff = 0.0 if hello.identity else self._guards.login_backoff(self._prefix, hello.nick)
        if hello.version == 1 and not self._hub.serves_version_1():
            # A version-1 client knows #lobby only; without it here, it could do nothing.
            self._port.close(
                Error(
                    code=Code.UNSUPPORTED_VERSION,
                    reason="this server has rooms: upgrade your client (protocol version 2)",
                    fatal=True,
                ),
                reason="protocol version 1 without #lobby",
            )
        elif backoff > 0:
            # Refused for now, not for good, and not counted as another failure.
            log.info("login from %s refused: too many failed logins for %s", self._address, hello.nick)
            self._port.close(
                Error(
                    code=Code.BUSY,
                    reason=f"too many failed logins for {hello.nick} from your network; "
                    f"try again in {math.ceil(backoff)} s",
                    fatal=True,
                ),
                reason="too many failed logins",
            )
        elif (
            hello.identity
            and hello.version >= DEVICES_VERSION
            and hello.device
            and self._relay.registered_key(hello.nick) not in (None, hello.identity)
            and self._relay.devices.vouches(hello.nick, hello.device, hello.identity)
        ):
            # (The device holding the identity key is listed too, under its key: it logs
            # in as the nick's owner, below, whatever id it names.)
            # A linked device: it proves its own key, which the person's list names.
            self.state, self._served = LoginState.AWAITING_PROOF, hello
            self._nonce = self._make_nonce()
            self._reply(Challenge(nonce=self._nonce))
        elif not self._relay.may_claim(hello.nick, hello.identity):
            self._refuse_registered(hello.nick)
        elif hello.identity:
            self.state, self._served = LoginState.AWAITING_PROOF, hello
            self._nonce = self._make_nonce()
            self._reply(Challenge(nonce=self._nonce))
        else:
            self._login(hello)

    def _refuse_registered(self, nick: str) -> None:
        auth_failed(self._guards, self._prefix, self._address, nick, NICK_REGISTERED)
        self._port.close(
            Error(code=Code.NICK_REGISTERED, reason=f"{nick} is registered to another key", fatal=True),
            reason="nick registered to another key",
        )

    def _auth(self, auth: Auth) -> None:
        claim = self._served
        if self.state is not LoginState.AWAITING_PROOF or claim is None:
            self._reply(Error(code=Code.UNEXPECTED, reason="auth without a hello that claims an identity"))
            return
        if not self._relay.proof_valid(claim.nick, self._nonce, claim.identity, auth.signature):
            auth_failed(self._guards, self._prefix, self._address, claim.nick, PROOF_FAILED)
            self._port.close(
                Error(code=Code.AUTH_FAILED, reason="identity proof failed", fatal=True), reason="auth failed"
            )
            return
        if self._relay.registered_key(claim.nick) not in (None, claim.identity):
            # Proven with a key the nick is not registered to: only a linked device's
            # hello got a challenge for that (`_hello`).
            self._linked_login(claim)
            return
        # A nick nobody holds yet costs one of the network's registrations: nicks are
        # free, and each one is kept for months.
        if not self._relay.is_registered(claim.nick) and not self._guards.register(self._prefix):
            closed = self._guards.registrations_closed
            registration_refused(
                self._address, claim.nick, "registrations closed" if closed else "too many from its network"
            )
            self._port.close(
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
        self.sig_key = self.person_key = claim.identity
        self.box = mailbox(claim.nick)
        if self._login(claim):
            self._after_login(claim)

    def _linked_login(self, claim: Hello) -> None:
        """Log in a linked device whose proof was good: the person is the nick's
        registered key (checked again: the list may have changed since the hello)."""
        person = self._relay.registered_key(claim.nick)
        if (
            person is None
            or not self._relay.devices.vouches(claim.nick, claim.device, claim.identity)
            or not self._relay.register(claim.nick, person)  # the person is seen: not idle
        ):
            self._refuse_registered(claim.nick)
            return
        self.sig_key, self.person_key = claim.identity, person
        self.box = mailbox(claim.nick, claim.device)
        if self._login(claim):
            self._after_login(claim)

    def _after_login(self, claim: Hello) -> None:
        """What an identity session is sent once logged in: its prekey count, its device
        list (version 4), what waited for it, and its whispers that failed."""
        kem = self._version >= KEM_VERSION
        if not kem:
            # Its client cannot answer a post-quantum setup (nor even read one: its
            # headers are over version 2's limit); an older client's publish may not
            # come for days, so its KEM prekeys go now, and peers set up as it can.
            self._relay.drop_kem_prekeys(self.box)
        self._reply(self._relay.prekey_count(self.box, kem=kem))
        listed = self._relay.devices.listed(claim.nick) if self._version >= DEVICES_VERSION else None
        if listed is not None:
            self._reply(Devices(nick=claim.nick, devices=listed.record))
        # A page of what waited; more as acks come back (see backlog.py).
        self._backlog = self._relay.backlog(self.box)
        for delivery in self._backlog.start():
            self._reply(delivery)
        if self._backlog.done:
            self._backlog = None
        for failure in self._relay.failures(self.box):
            self._reply(failure)

    def _login(self, hello: Hello) -> bool:
        """Join the room under `hello.nick`; False (and the session closing) if it is taken."""

        def welcome(room: str, users: tuple[str, ...]) -> None:
            # Runs under the hub lock, before anyone can send us a room event. Sent
            # without `_reply`: flushing room lines here would re-enter the hub (there
            # are none yet; lines are accepted only after the welcome).
            self.nick, self._served, self.state = hello.nick, hello, LoginState.IN
            # Counted as logged in before the welcome leaves: a client that connects again
            # from its network as soon as it is welcomed must find this one out of the
            # pre-login budget. (Takes the server's lock under the hub's: that order only.)
            self._on_login()
            self._port.send(
                Welcome(
                    version=hello.version,  # the version this session is served in
                    nick=hello.nick,
                    room=room,
                    users=users,
                    server=self._config.server_name,
                    software=SOFTWARE,
                )
            )

        def same_user(holder: object) -> bool:
            # A login proven with the nick's own key takes over a stale session of that
            # key (a reconnect before the server noticed the old connection died).
            return (
                bool(self.person_key) and isinstance(holder, Holder) and holder.person_key == self.person_key
            )

        claims = self._relay.cluster
        if claims is not None:
            try:
                if not claims.claim(fold_nick(hello.nick), self.person_key):
                    self._port.close(
                        Error(code=Code.NICK_TAKEN, reason=f"{hello.nick} is already in use", fatal=True),
                        reason="nick taken on another node",
                    )
                    return False
            except ClusterUnavailable:
                self._port.close(_CLUSTER_BUSY, reason="cluster unavailable")
                return False
            if self.person_key and not self._count_device(claims, hello):
                claims.release(fold_nick(hello.nick))
                return False
        joined = False
        try:
            displaced = self._join(hello, welcome, same_user)
            joined = displaced is not False
        finally:
            if claims is not None and not joined:
                claims.release(fold_nick(hello.nick))
                if self._counted_device is not None:
                    claims.release_device(self.person_key, *self._counted_device)
                    self._counted_device = None
        if displaced is False:
            return False
        if isinstance(displaced, Holder):
            displaced.close(REPLACED, reason="replaced by a new login")
        if claims is not None and self.box:
            # A stale session of this mailbox on another node (the reconnect landed
            # elsewhere) is replaced there as it would be here.
            claims.replaced(self.box)
        log.info("%s logged in as %s (%s)", self._peer, hello.nick, "identity" if self.sig_key else "guest")
        return True

    def _count_device(self, claims: ClusterLink, hello: Hello) -> bool:
        """A cluster node: count this session's device as online for its person across
        the nodes; False (the session closing, with the reason) if the person has
        `max_devices` others online, or the cluster cannot say."""
        device = self._device(hello)
        try:
            token = claims.claim_device(self.person_key, device, self._config.max_devices)
        except ClusterUnavailable:
            self._port.close(_CLUSTER_BUSY, reason="cluster unavailable")
            return False
        if token is None:
            self._port.close(self._too_many_devices(hello), reason="too many devices")
            return False
        self._counted_device = (device, token)
        return True

    def _device(self, hello: Hello) -> str:
        """The device `hello` logs in as: "" for the one holding the identity key,
        whatever its client calls it (a client that names no device is that device too,
        so a reconnect of either replaces the other's stale session)."""
        return hello.device if self.sig_key != self.person_key else ""

    def _too_many_devices(self, hello: Hello) -> Error:
        return Error(
            code=Code.QUOTA,
            reason=f"{hello.nick} is online from {self._config.max_devices} devices already "
            "(this server's limit): log one of them out first",
            fatal=True,
        )

    def _join(
        self,
        hello: Hello,
        welcome: Callable[[str, tuple[str, ...]], None],
        same_user: Callable[[object], bool],
    ) -> Member | Literal[False] | None:
        """`Hub.join` for `_login`: the session it displaced (or None), or False if the
        login was refused (the session closing, with the reason sent)."""
        try:
            return self._hub.join(
                self._member,
                hello.nick,
                welcome,
                may_replace=same_user,
                key=self.person_key,
                version=hello.version,
                device=self._device(hello),
            )
        except TooManyDevices:
            self._port.close(self._too_many_devices(hello), reason="too many devices")
            return False
        except NickTaken:
            self._port.close(
                Error(code=Code.NICK_TAKEN, reason=f"{hello.nick} is already in use", fatal=True),
                reason="nick taken",
            )
            return False
        except RoomError as exc:
            # A version-1 session could be in `#lobby` only, and that refuses it (a ban,
            # invite-only): a welcome would put it in no room while telling it otherwise.
            log.info("%s refused as %s: %s", self._peer, hello.nick, exc.code)
            self._port.close(
                Error(code=exc.code, reason=exc.reason, fatal=True), reason="refused from #lobby"
            )
            return False

    # -- rooms and renaming ----------------------------------------------------------

    def _room_request(self, event: RoomRequest) -> None:
        """A room request: the hub answers the room's members (and the requester) itself;
        a refusal is an `error` naming the room as sent."""
        assert self.nick is not None  # the connection passes these only after the welcome
        if self._version == 1:
            self._reply(
                Error(
                    code=Code.UNEXPECTED,
                    reason=f"{event.TYPE!r} is not in protocol version 1",
                    ref=_request_ref(event),
                )
            )
            return
        nick, hub = self.nick, self._hub
        try:
            if isinstance(event, ListRooms):
                self._reply(hub.list_rooms(event.pattern))
            elif isinstance(event, Join):
                hub.enter(nick, event.room)
            elif isinstance(event, Part):
                hub.part(nick, event.room, event.reason)
            elif isinstance(event, SetTopic):
                hub.set_topic(nick, event.room, event.topic)
            elif isinstance(event, Invite):
                hub.invite(nick, event.room, event.nick, self._served_elsewhere(event.nick))
            elif isinstance(event, Kick):
                hub.kick(nick, event.room, event.nick, event.reason, self._served_elsewhere(event.nick))
            elif isinstance(event, Ban):
                # A plain nick that is registered is banned by its key (store lookup,
                # outside the hub's lock).
                key = None if is_pattern(event.mask) else self._relay.registered_key(event.mask)
                hub.ban(nick, event.room, event.mask, key)
            elif isinstance(event, Unban):
                hub.unban(nick, event.room, event.mask)
            elif isinstance(event, Bans):
                self._reply(hub.ban_list(nick, event.room))
            elif isinstance(event, SetMode):
                hub.set_invite_only(nick, event.room, event.invite_only)
            elif isinstance(event, RegisterRoom):
                hub.register_room(nick, event.room, self._charge_registration)
            else:  # op, deop, transfer: by the named nick's identity key
                key = self._relay.registered_key(event.nick)
                change = {Op: hub.op, Deop: hub.deop, Transfer: hub.transfer}[type(event)]
                change(nick, event.room, event.nick, key)
        except RoomError as exc:
            self._reply(Error(code=exc.code, reason=exc.reason, ref=_request_ref(event)))

    def _served_elsewhere(self, nick: str) -> bytes | None:
        """A cluster node: the identity key (b"" a guest) of `nick` if another node serves
        it (one Redis round trip, before the hub's lock); None if none does, if this node
        serves it (the hub then knows all it needs), or on a single server. Raises
        `RoomError` (busy) when the cluster cannot say."""
        cluster = self._relay.cluster
        if cluster is None or self._hub.member(nick) is not None:
            return None
        try:
            return cluster.holder(fold_nick(nick))
        except ClusterUnavailable:
            raise RoomError(Code.BUSY, "the cluster cannot say right now: try again") from None

    def _charge_registration(self) -> str:
        """Take one of the network's registrations for a room (a registered room is kept
        for months, as a nick is); "" or why not. Called by the hub under its lock."""
        if self._guards.register(self._prefix):
            return ""
        if self._guards.registrations_closed:
            return "this server accepts no new registrations"
        return "too many registrations from your network; try again later"

    def _rename(self, event: Rename) -> None:
        """Change this session's nick (docs/protocol.md, "Renaming"). An identity user's
        registration moves with it, signed over this session's login nonce."""
        old = self.nick
        assert old is not None  # the connection passes these only after the welcome
        new = event.nick
        if fold_nick(new) == fold_nick(old):
            return  # your own nick: nothing to do, nothing to say
        if self._version == 1:
            self._reply(Error(code=Code.UNEXPECTED, reason="'rename' is not in protocol version 1", ref=new))
            return
        if self.sig_key and not self._relay.rename_valid(
            old, new, self._nonce, self.sig_key, event.signature
        ):
            self._reply(
                Error(code=Code.AUTH_FAILED, reason="the rename's signature does not verify", ref=new)
            )
            return
        if not self._relay.may_claim(new, b""):  # (an idle registration of `new` expires here)
            self._reply(Error(code=Code.NICK_REGISTERED, reason=f"{new} is registered", ref=new))
            return
        # In a cluster, `new` is claimed across the nodes first (and given back if the
        # rename does not happen), `old` given back once it did.
        claims = self._relay.cluster
        try:
            if claims is not None and not claims.claim(fold_nick(new), self.person_key):
                self._reply(Error(code=Code.NICK_TAKEN, reason=f"{new} is already in use", ref=new))
                return
        except ClusterUnavailable:
            self._reply(Error(code=Code.BUSY, reason="the cluster cannot say right now: try again", ref=new))
            return
        renamed = False
        try:
            renamed = self._rename_held(old, new)
        finally:
            if claims is not None:
                claims.release(fold_nick(old if renamed else new))

    def _rename_held(self, old: str, new: str) -> bool:
        """`_rename` once `new` may be taken: True if this session is `new` now."""
        # `new` is held in the hub before the store moves the registration: a login as
        # `new` meanwhile is refused, rather than the store's move being left half done.
        try:
            self._hub.reserve(old, new)
        except NickTaken:
            self._reply(Error(code=Code.NICK_TAKEN, reason=f"{new} is already in use", ref=new))
            return False
        except RoomError as exc:  # a room it is in bans the new nick
            self._reply(Error(code=exc.code, reason=exc.reason, ref=new))
            return False
        try:
            result = self._relay.rename(old, new, self.sig_key) if self.sig_key else RenameResult.DONE
        except StoreUnavailable:
            self._hub.unreserve(new)
            raise
        if result is not RenameResult.DONE:
            self._hub.unreserve(new)
            self._reply(_rename_refusal(result, old, new))
            return False
        self._hub.rename(old, new)
        self.nick, self.box = new, mailbox(new)
        log.info("%s renamed to %s", old, new)
        return True

    def _reply(self, event: Event) -> None:
        self.flush()  # a reply follows the echo of the lines read before it
        self._port.send(event)


def _rename_refusal(result: RenameResult, old: str, new: str) -> Error:
    """What the renamer is told when the store refused its rename."""
    if result is RenameResult.QUEUED:
        return Error(
            code=Code.UNEXPECTED,
            reason="your queued whispers are still being delivered; try again in a moment",
            ref=new,
        )
    if result is RenameResult.LINKED:
        return Error(
            code=Code.UNEXPECTED,
            reason="you have linked devices, which know you by this nick: unlink them before renaming",
            ref=new,
        )
    if result is RenameResult.NOT_YOURS:  # released while online cannot happen; said plainly if it did
        return Error(code=Code.NOT_REGISTERED, reason=f"{old} is not registered to your key", ref=new)
    return Error(code=Code.NICK_REGISTERED, reason=f"{new} is registered", ref=new)


#: Joins one session may make per second once its allowance (`max_rooms_per_user` at
#: once: a client's rejoins after a reconnect) is used up.
_JOIN_RATE = 1.0

#: A batch of room lines is broadcast once it holds this many lines or this much text
#: (bounds the hub lock's hold and the size of one write).
_MAX_BATCH = 256
_MAX_BATCH_BYTES = 64 * 1024
#: Whispers (or acks) taken in one commit at most: a read of 64 KiB holds a few hundred.
_MAX_WHISPER_BATCH = 64

#: Requests that cost a token of the session's message bucket. Answers (pong, ack) do
#: not: refusing them would punish a client for keeping up.
_RATE_LIMITED = (Say, Who, Whisper, PublishKeys, PublishDevices, Link, Ping, Rename, *ROOM_REQUESTS)

RoomRequest = (
    Join
    | Part
    | SetTopic
    | ListRooms
    | Invite
    | Kick
    | Ban
    | Unban
    | Bans
    | SetMode
    | RegisterRoom
    | Op
    | Deop
    | Transfer
)


def _request_ref(event: Event) -> str:
    """What a refusal of `event` names in `ref`: a whisper's id, a key fetch's own ref (or,
    from a client that sent none, the nick whose keys were asked for), or "" (the client
    matches answers to its requests by it)."""
    if isinstance(event, Whisper):
        return event.id
    if isinstance(event, FetchKeys):
        return event.ref or event.nick
    if isinstance(event, Rename):
        return event.nick  # the nick asked for
    if isinstance(event, Who):
        return event.room
    if isinstance(event, ListRooms):
        return event.pattern
    if isinstance(event, NAMING_A_ROOM):
        return event.room  # the room as sent
    return ""
