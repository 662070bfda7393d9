"""The session logic without sockets: driven by events, answering through a fake port.

A real hub, a real relay and a real (in-memory) SQLite store; only the connection is
fake, as `protocol/` is tested without one. Each session's port is also its hub member,
so what the client would read (answers through the port, room frames through the hub)
lands in one ordered list.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import pytest

from securechat.e2e.identity import Identity
from securechat.e2e.login import login_message
from securechat.protocol import (
    PROTOCOL_VERSION,
    Auth,
    Challenge,
    Code,
    Connection,
    Error,
    Event,
    FetchKeys,
    Hello,
    Keys,
    Left,
    Message,
    Ping,
    Pong,
    PrekeyCount,
    PublishKeys,
    RemoteProtocolError,
    Role,
    Say,
    Welcome,
    Whisper,
    Who,
)
from securechat.protocol.codec import decode_line
from securechat.server import ServerConfig
from securechat.server.addresses import PrefixGuards, PrefixLimits
from securechat.server.hub import Hub
from securechat.server.relay import Relay
from securechat.server.session import SessionLogic
from securechat.server.store import SqliteStore

NONCE = bytes(range(32))

E = TypeVar("E", bound=Event)


class FakeSession:
    """What io.py's `Session` is to the logic: its port and its hub member."""

    def __init__(self) -> None:
        self.received: list[Event] = []  # everything the client would read, in order
        self.writes = 0  # deliveries from the hub (each one write to the socket)
        self.closed: tuple[Event | None, str] | None = None
        self.logins = 0
        # Checks each answer the logic sends is one a server may send at that point.
        self.conn = Connection(Role.SERVER)
        self.logic: SessionLogic | None = None

    # Port
    def send(self, event: Event) -> None:
        self.conn.send(event)
        self.received.append(event)

    def close(self, final: Event | None = None, reason: str = "") -> None:
        if self.closed is None:
            self.closed = (final, reason)

    # Member (and what another login checks before displacing it)
    def deliver(self, frame: bytes) -> None:
        self.writes += 1
        self.received.extend(decode_line(line) for line in frame.splitlines())

    @property
    def away(self) -> str:
        assert self.logic is not None
        return self.logic.away

    @away.setter
    def away(self, message: str) -> None:
        assert self.logic is not None
        self.logic.away = message

    @property
    def sig_key(self) -> bytes:
        assert self.logic is not None
        return self.logic.sig_key

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.received if isinstance(e, kind)]

    def last(self) -> Event:
        return self.received[-1]


@dataclasses.dataclass
class World:
    config: ServerConfig
    store: SqliteStore
    hub: Hub
    relay: Relay
    limits: PrefixLimits
    guards: PrefixGuards

    def session(self, peer: str = "127.0.0.1:40000") -> tuple[SessionLogic, FakeSession]:
        fake = FakeSession()

        def logged_in() -> None:
            fake.logins += 1

        logic = SessionLogic(
            fake,
            fake,
            hub=self.hub,
            relay=self.relay,
            config=self.config,
            peer=peer,
            prefix=self.limits.prefix(peer.rsplit(":", 1)[0]),
            guards=self.guards,
            on_login=logged_in,
            nonce=lambda: NONCE,
        )
        fake.logic = logic
        return logic, fake


def make_world(**settings: object) -> World:
    config = ServerConfig(**settings)  # type: ignore[arg-type]
    store = SqliteStore(None)
    hub = Hub(history=config.history_lines)
    limits = PrefixLimits.from_config(config)
    return World(config, store, hub, Relay(store, hub, config=config), limits, PrefixGuards(limits))


@pytest.fixture
def world() -> World:
    return make_world()


def guest(world: World, nick: str) -> tuple[SessionLogic, FakeSession]:
    logic, fake = world.session()
    logic.handle(Hello(version=PROTOCOL_VERSION, nick=nick))
    assert isinstance(fake.received[0], Welcome), fake.received
    return logic, fake


def identity_login(world: World, identity: Identity) -> tuple[SessionLogic, FakeSession]:
    logic, fake = world.session()
    logic.handle(Hello(version=PROTOCOL_VERSION, nick=identity.user, identity=identity.sig_key))
    assert fake.received == [Challenge(nonce=NONCE)]
    proof = identity.sign(login_message(identity.user, NONCE, identity.sig_key))
    logic.handle(Auth(signature=proof))
    return logic, fake


def test_a_guest_logs_in_is_welcomed_once_and_reported_once(world: World) -> None:
    logic, fake = guest(world, "alice")
    welcome = fake.received[0]
    assert isinstance(welcome, Welcome) and welcome.nick == "alice" and welcome.users == ("alice",)
    assert fake.logins == 1 and logic.nick == "alice" and logic.sig_key == b""
    _, bob = guest(world, "bob")
    assert bob.received[0] == dataclasses.replace(welcome, nick="bob", users=("alice", "bob"))
    assert fake.closed is None and bob.closed is None


def test_an_identity_is_challenged_and_a_good_proof_logs_it_in(world: World) -> None:
    alice = Identity.generate("alice")
    logic, fake = identity_login(world, alice)
    assert isinstance(fake.received[1], Welcome)
    assert len(fake.of(PrekeyCount)) == 1  # every identity login gets one
    assert logic.sig_key == alice.sig_key and fake.logins == 1 and fake.closed is None
    assert world.relay.is_registered("alice")


def test_a_bad_proof_is_refused_and_registers_nothing(world: World) -> None:
    alice = Identity.generate("alice")
    logic, fake = world.session()
    logic.handle(Hello(version=PROTOCOL_VERSION, nick="alice", identity=alice.sig_key))
    wrong = alice.sign(login_message("alice", bytes(32), alice.sig_key))  # another nonce
    logic.handle(Auth(signature=wrong))
    assert fake.closed == (
        Error(code=Code.AUTH_FAILED, reason="identity proof failed", fatal=True),
        "auth failed",
    )
    assert fake.logins == 0 and logic.nick is None and not world.relay.is_registered("alice")


def test_an_auth_without_a_claim_is_answered_not_fatal(world: World) -> None:
    logic, fake = world.session()
    logic.handle(Auth(signature=bytes(64)))
    error = fake.last()
    assert isinstance(error, Error) and error.code == Code.UNEXPECTED and not error.fatal
    assert fake.closed is None


def test_a_nick_in_use_is_refused_whatever_its_case(world: World) -> None:
    guest(world, "alice")
    logic, fake = world.session()
    logic.handle(Hello(version=PROTOCOL_VERSION, nick="ALICE"))
    assert fake.closed is not None
    final, reason = fake.closed
    assert isinstance(final, Error) and final.code == Code.NICK_TAKEN and final.fatal
    assert reason == "nick taken" and fake.logins == 0


def test_a_registered_nick_is_refused_to_a_guest_and_to_another_key(world: World) -> None:
    alice = Identity.generate("alice")
    first, _ = identity_login(world, alice)
    first.leave("quit")
    for identity in (b"", Identity.generate("alice").sig_key):
        logic, fake = world.session()
        logic.handle(Hello(version=PROTOCOL_VERSION, nick="alice", identity=identity))
        assert fake.closed is not None
        final, reason = fake.closed
        assert isinstance(final, Error) and final.code == Code.NICK_REGISTERED and final.fatal
        assert reason == "nick registered to another key"


def test_the_same_key_displaces_its_stale_session(world: World) -> None:
    alice = Identity.generate("alice")
    _, old = identity_login(world, alice)
    _, new = identity_login(world, alice)
    assert isinstance(new.received[1], Welcome) and new.closed is None
    assert old.closed is not None
    final, reason = old.closed
    assert isinstance(final, Error) and final.code == Code.REPLACED and reason == "replaced by a new login"


def test_requests_past_the_rate_are_refused_once_then_a_flooder_is_dropped() -> None:
    # A bucket that cannot refill within the test: 2 requests, then refusals.
    world = make_world(message_rate=0.001, message_burst=2, max_strikes=12)
    logic, fake = guest(world, "alice")
    fake.received.clear()
    for token in "abcdefghijkl":  # 2 allowed, then 10 strikes: the 1st and 10th answered
        logic.handle(Ping(token=token))
    answers = fake.received
    assert answers[:2] == [Pong(token="a"), Pong(token="b")]
    refusals = answers[2:]
    assert len(refusals) == 2 and all(isinstance(e, Error) and e.code == Code.RATE_LIMITED for e in refusals)
    assert all(isinstance(e, Error) and not e.fatal for e in refusals)
    assert fake.closed is None
    logic.handle(Ping(token="m"))
    logic.handle(Ping(token="n"))
    logic.handle(Ping(token="o"))  # the 13th strike in a row: more than max_strikes
    assert fake.closed == (
        Error(code=Code.RATE_LIMITED, reason="flooding: disconnected", fatal=True),
        "flooding",
    )


def test_pongs_cost_no_token() -> None:
    world = make_world(message_rate=0.001, message_burst=1, max_strikes=1)
    logic, fake = guest(world, "alice")
    for _ in range(5):
        logic.handle(Pong(token="x"))  # answers to our pings: never refused
    logic.handle(Ping(token="a"))
    assert fake.last() == Pong(token="a") and fake.closed is None


def test_room_lines_read_together_go_out_in_one_write_before_the_reply_to_what_follows(
    world: World,
) -> None:
    logic, alice = guest(world, "alice")
    _, bob = guest(world, "bob")
    world.hub.flush_presence()
    alice.received.clear()
    bob.received.clear()
    bob_writes = bob.writes
    logic.handle(Say(text="one"))
    logic.handle(Say(text="two"))
    assert alice.received == [] and bob.writes == bob_writes  # held back for the batch
    logic.handle(Ping(token="p"))  # a request: the lines before it go out first
    assert [type(e) for e in alice.received] == [Message, Message, Pong]
    assert [e.text for e in alice.of(Message)] == ["one", "two"]
    assert bob.writes == bob_writes + 1 and [e.text for e in bob.of(Message)] == ["one", "two"]


def test_room_lines_go_out_when_the_read_is_used_up(world: World) -> None:
    logic, alice = guest(world, "alice")
    alice.received.clear()
    logic.handle(Say(text="one"))
    assert alice.received == []
    logic.flush()  # what the reader calls when a read's frames are used up
    assert [e.text for e in alice.of(Message)] == ["one"]


def test_a_refused_frame_is_answered_after_the_lines_before_it(world: World) -> None:
    logic, alice = guest(world, "alice")
    alice.received.clear()
    logic.handle(Say(text="one"))
    logic.refuse(RemoteProtocolError(Code.INVALID, "bad field", fatal=False))
    assert [type(e) for e in alice.received] == [Message, Error] and alice.closed is None
    logic.refuse(RemoteProtocolError(Code.BAD_JSON, "not json", fatal=True))
    assert alice.closed == (Error(code=Code.BAD_JSON, reason="not json", fatal=True), "protocol error")


def test_an_unknown_room_is_answered_with_no_such_room(world: World) -> None:
    logic, alice = guest(world, "alice")
    logic.handle(Who(room="#nowhere"))
    error = alice.last()
    assert isinstance(error, Error) and error.code == Code.NO_SUCH_ROOM and not error.fatal


def test_leaving_announces_the_reason_to_the_others(world: World) -> None:
    logic, _ = guest(world, "alice")
    _, bob = guest(world, "bob")
    logic.leave("ping timeout")
    world.hub.flush_presence()
    assert world.hub.member("alice") is None
    assert [(e.nick, e.reason) for e in bob.of(Left)] == [("alice", "ping timeout")]


def test_the_store_failing_at_login_ends_the_session_to_be_tried_again(world: World) -> None:
    world.store.fail("disk gone")
    logic, fake = world.session()
    logic.handle(Hello(version=PROTOCOL_VERSION, nick="alice"))
    assert fake.closed is not None
    final, reason = fake.closed
    assert isinstance(final, Error) and final.code == Code.STORE_UNAVAILABLE and final.fatal
    assert reason == "store unavailable at login" and fake.logins == 0


def test_the_store_failing_after_login_refuses_that_request_only(world: World) -> None:
    logic, fake = identity_login(world, Identity.generate("alice"))
    world.store.fail("disk gone")
    logic.handle(Whisper(to="bob", id="w1", header=b"h", ciphertext=b"c"))
    error = fake.last()
    assert isinstance(error, Error) and error.code == Code.STORE_UNAVAILABLE
    assert not error.fatal and error.ref == "w1"  # names the whisper to send again
    assert fake.closed is None
    logic.handle(Ping(token="still here"))
    assert fake.last() == Pong(token="still here")


def test_guests_cannot_whisper(world: World) -> None:
    logic, fake = guest(world, "alice")
    logic.handle(Whisper(to="bob", id="w1", header=b"h", ciphertext=b"c"))
    error = fake.last()
    assert isinstance(error, Error) and error.code == Code.NOT_REGISTERED and fake.closed is None


# -- key fetches are matched to their answers by the client's ref ---------------------


def publish(logic: SessionLogic, fake: FakeSession, identity: Identity) -> None:
    from securechat.e2e.conversations import Conversations
    from securechat.protocol import KeyIdentity, OneTimePrekeyRecord, SignedPrekeyRecord

    bundle = Conversations(identity).bundle_to_publish()
    logic.handle(
        PublishKeys(
            identity=KeyIdentity(
                sig_key=bundle.identity.sig_key, dh_key=bundle.identity.dh_key, dh_sig=bundle.identity.dh_sig
            ),
            spk=SignedPrekeyRecord(
                id=bundle.spk.id,
                created=bundle.spk.created,
                public=bundle.spk.public,
                signature=bundle.spk.signature,
            ),
            opks=tuple(
                OneTimePrekeyRecord(id=o.id, public=o.public, signature=o.signature) for o in bundle.opks[:5]
            ),
        )
    )
    assert isinstance(fake.last(), PrekeyCount), fake.last()


def test_a_fetch_answer_and_a_fetch_refusal_carry_the_clients_ref(world: World) -> None:
    bob = Identity.generate("bob")
    bob_logic, bob_fake = identity_login(world, bob)
    publish(bob_logic, bob_fake, bob)
    logic, fake = identity_login(world, Identity.generate("alice"))
    logic.handle(FetchKeys(nick="bob", ref="f-1"))
    keys = fake.last()
    assert isinstance(keys, Keys) and keys.nick == "bob" and keys.ref == "f-1"
    logic.handle(FetchKeys(nick="nobody", ref="f-2"))
    error = fake.last()
    assert isinstance(error, Error) and error.code == Code.NO_SUCH_USER and error.ref == "f-2"


def test_a_fetch_without_a_ref_is_answered_by_the_nick_as_before(world: World) -> None:
    logic, fake = identity_login(world, Identity.generate("alice"))
    logic.handle(FetchKeys(nick="nobody"))
    error = fake.last()
    assert isinstance(error, Error) and error.code == Code.NO_SUCH_USER and error.ref == "nobody"
