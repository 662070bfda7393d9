"""The session logic without sockets: driven by events, answering through a fake port.

A real hub, a real relay and a real (in-memory) SQLite store; only the connection is
fake, as `protocol/` is tested without one. Each session's port is also its hub member,
so what the client would read (answers through the port, room frames through the hub)
lands in one ordered list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TypeVar

import pytest

from securechat.e2e.identity import Identity
from securechat.e2e.login import login_message, rename_message
from securechat.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Away,
    Ban,
    BanList,
    Bans,
    Challenge,
    Code,
    Connection,
    Delivery,
    Deop,
    Entered,
    Error,
    Event,
    FetchKeys,
    Hello,
    Join,
    Keys,
    Kick,
    Left,
    Message,
    Names,
    Op,
    Ping,
    Pong,
    PrekeyCount,
    PublishKeys,
    RegisterRoom,
    RemoteProtocolError,
    Rename,
    Renamed,
    Role,
    RoomChanged,
    Say,
    SetMode,
    SetTopic,
    Transfer,
    Welcome,
    Whisper,
    WhisperStatus,
    Who,
)
from securechat.protocol.codec import decode_line
from securechat.server import ServerConfig
from securechat.server.addresses import PrefixGuards, PrefixLimits
from securechat.server.hub import Hub
from securechat.server.relay import Relay
from securechat.server.rooms import Rooms
from securechat.server.session import SessionLogic
from securechat.server.store import RenameResult, SqliteStore, StoredRoom

NONCE = bytes(range(32))

E = TypeVar("E", bound=Event)


class FakeSession:
    """What io.py's `Session` is to the logic: its port and its hub member."""

    def __init__(self) -> None:
        self.received: list[Event] = []  # everything the client would read, in order
        self.writes = 0  # deliveries from the hub (each one write to the socket)
        self.answers = 0  # the logic's own sends (each one write to the socket)
        self.closed: tuple[Event | None, str] | None = None
        self.logins = 0
        # Checks each answer the logic sends is one a server may send at that point.
        self.conn = Connection(Role.SERVER)
        self.logic: SessionLogic | None = None

    # Port
    def send(self, event: Event) -> None:
        self.answers += 1
        self.conn.send(event)
        self.received.append(event)

    def send_many(self, events: Sequence[Event]) -> None:
        self.answers += 1
        for event in events:
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

    @property
    def person_key(self) -> bytes:
        assert self.logic is not None
        return self.logic.person_key

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
    # As the server builds it: the configuration's rooms and caps, registered rooms stored.
    hub = Hub(history=config.history_lines, rooms=Rooms.from_config(config), store=store)
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


def test_lines_past_the_rate_are_refused_once_then_a_flooder_is_dropped() -> None:
    # A bucket that cannot refill within the test: 2 requests, then refusals.
    world = make_world(message_rate=0.001, message_burst=2, max_strikes=12)
    logic, fake = guest(world, "alice")
    fake.received.clear()
    for token in "abcdefghijkl":  # 2 allowed, then 10 strikes: the 1st and 10th answered
        logic.handle(Say(room="#lobby", text=token))
    logic.flush()
    answers = fake.received
    assert [(m.text) for m in fake.of(Message)] == ["a", "b"]
    refusals = answers[2:]  # the two lines went out (in one write), before the refusals
    assert len(refusals) == 2 and all(isinstance(e, Error) and e.code == Code.RATE_LIMITED for e in refusals)
    assert all(isinstance(e, Error) and not e.fatal for e in refusals)
    assert fake.closed is None
    logic.handle(Ping(token="m"))
    logic.handle(Ping(token="n"))
    logic.handle(Ping(token="o"))  # the 13th strike in a row: more than max_strikes
    assert len(fake.of(Error)) == 4  # a refused request other than a line is always answered
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
    logic.flush()  # the reader's, once a read's frames are handled: whispers wait for it
    error = fake.last()
    assert isinstance(error, Error) and error.code == Code.STORE_UNAVAILABLE
    assert not error.fatal and error.ref == "w1"  # names the whisper to send again
    assert fake.closed is None
    logic.handle(Ping(token="still here"))
    assert fake.last() == Pong(token="still here")


def test_whispers_read_together_are_answered_in_one_write_and_pushed_in_one(world: World) -> None:
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    bob_logic, bob_fake = identity_login(world, bob)
    logic, fake = identity_login(world, alice)
    answers, deliveries = fake.answers, bob_fake.writes
    for n in range(5):
        logic.handle(Whisper(to="bob", id=f"w{n}", header=b"h", ciphertext=b"c"))
    logic.handle(Whisper(to="alice", id="self", header=b"h", ciphertext=b"c"))  # refused
    logic.handle(Whisper(to="nobody", id="lost", header=b"h", ciphertext=b"c"))  # refused
    assert fake.answers == answers  # held back until the read's frames are used up
    logic.flush()
    assert fake.answers == answers + 1 and bob_fake.writes == deliveries + 1
    statuses = fake.received[-7:]
    assert [s.id for s in statuses if isinstance(s, WhisperStatus) and s.status == "stored"] == [
        f"w{n}" for n in range(5)
    ]
    assert [(e.code, e.ref) for e in statuses if isinstance(e, Error)] == [
        (Code.INVALID, "self"),
        (Code.NO_SUCH_USER, "lost"),
    ]
    delivered = bob_fake.of(Delivery)
    assert [d.msg_id for d in delivered] == [f"w{n}" for n in range(5)]
    writes = fake.writes
    for d in delivered:
        bob_logic.handle(Ack(id=d.id))
    bob_logic.flush()
    assert fake.writes == writes + 1  # the five `delivered` statuses: one write
    assert [s.id for s in fake.of(WhisperStatus) if s.status == "delivered"] == [f"w{n}" for n in range(5)]


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


# -- rooms and renaming ----------------------------------------------------------------


def test_every_refused_room_request_is_answered_naming_its_room() -> None:
    world = make_world(message_rate=0.001, message_burst=2, max_strikes=50)
    logic, fake = guest(world, "alice")
    fake.received.clear()
    for room in ("#a", "#b", "#c", "#d"):  # 2 tokens, then refusals
        logic.handle(SetTopic(room=room, topic="t"))
    refusals = fake.of(Error)
    assert [(e.code, e.ref) for e in refusals] == [
        (Code.NO_SUCH_ROOM, "#a"),
        (Code.NO_SUCH_ROOM, "#b"),
        (Code.RATE_LIMITED, "#c"),
        (Code.RATE_LIMITED, "#d"),
    ]


def test_a_client_rejoins_as_many_rooms_as_it_may_be_in_at_once_without_eating_its_message_rate() -> None:
    world = make_world(message_rate=0.001, message_burst=2, max_rooms_per_user=10, max_strikes=50)
    logic, fake = guest(world, "alice")
    fake.received.clear()
    rooms = [f"#r{i}" for i in range(9)]  # with #lobby: the 10 one person may be in
    for room in rooms:
        logic.handle(Join(room=room))
    assert [e.room for e in fake.of(Entered)] == rooms and fake.of(Error) == []
    logic.handle(Ping(token="the message rate is untouched"))
    assert fake.last() == Pong(token="the message rate is untouched")
    logic.handle(Join(room="#one-too-many"))  # the join allowance's last token: the cap says no
    logic.handle(Join(room="#r0"))  # none left
    assert [(e.code, e.ref) for e in fake.of(Error)] == [
        (Code.QUOTA, "#one-too-many"),
        (Code.RATE_LIMITED, "#r0"),
    ]


def test_who_of_a_room_you_are_not_in_is_refused(world: World) -> None:
    alice, _ = guest(world, "alice")
    alice.handle(Join(room="#secret"))
    bob, fake = guest(world, "bob")
    bob.handle(Who(room="#secret"))
    error = fake.last()
    assert isinstance(error, Error) and (error.code, error.ref) == (Code.NOT_IN_ROOM, "#secret")
    assert not any(isinstance(e, Names) for e in fake.received)


def test_version_1_sessions_cannot_send_room_or_rename_frames(world: World) -> None:
    logic, fake = world.session()
    logic.handle(Hello(version=1, nick="oldie"))
    assert isinstance(fake.received[0], Welcome)
    logic.handle(Join(room="#dev"))
    logic.handle(Rename(nick="newie"))
    assert [(e.code, e.ref) for e in fake.of(Error)] == [
        (Code.UNEXPECTED, "#dev"),
        (Code.UNEXPECTED, "newie"),
    ]
    assert world.hub.member("oldie") is not None and world.hub.member("newie") is None


def test_a_version_1_session_refused_from_the_lobby_gets_a_fatal_error_not_a_welcome(world: World) -> None:
    world.hub.load_rooms([StoredRoom("#lobby", b"k" * 32, invite_only=True)])
    logic, fake = world.session()
    logic.handle(Hello(version=1, nick="oldie"))
    assert fake.of(Welcome) == [] and fake.logins == 0
    assert fake.closed is not None
    final, _ = fake.closed
    assert isinstance(final, Error) and final.fatal and final.code == Code.INVITE_ONLY
    assert "#lobby" in final.reason and world.hub.member("oldie") is None


def test_with_no_autojoin_rooms_the_welcome_lists_nobody() -> None:
    world = make_world(autojoin=())
    alice, _ = guest(world, "alice")
    alice.handle(Join(room="#lobby"))  # an ordinary room that happens to be called that
    _bob, fake = guest(world, "bob")
    [welcome] = fake.of(Welcome)
    assert welcome.users == () and fake.of(Entered) == []


def sign_rename(identity: Identity, old: str, new: str) -> Rename:
    return Rename(nick=new, signature=identity.sign(rename_message(old, new, NONCE)))


def test_a_rename_moves_the_registration_and_tells_the_room(world: World) -> None:
    alice = Identity.generate("alice")
    logic, fake = identity_login(world, alice)
    _bob, bob_fake = guest(world, "bob")
    logic.handle(sign_rename(alice, "alice", "alice2"))
    assert (
        Renamed(old="alice", new="alice2") in fake.received
        and Renamed(old="alice", new="alice2") in bob_fake.received
    )
    assert (
        world.store.registered_key("alice2") == alice.sig_key and world.store.registered_key("alice") is None
    )
    assert logic.nick == "alice2" and world.hub.member("alice") is None


def test_a_rename_is_refused_with_a_bad_signature_to_a_registered_or_taken_nick(world: World) -> None:
    alice = Identity.generate("alice")
    logic, fake = identity_login(world, alice)
    identity_login(world, Identity.generate("carol"))  # registered and online
    world.store.register("dave", b"d" * 32, 1.0)  # registered, offline
    guest(world, "erin")  # online, a guest
    logic.handle(Rename(nick="alice2", signature=b"x" * 64))
    logic.handle(sign_rename(alice, "alice", "dave"))
    logic.handle(sign_rename(alice, "alice", "erin"))
    assert [(e.code, e.ref, e.fatal) for e in fake.of(Error)] == [
        (Code.AUTH_FAILED, "alice2", False),
        (Code.NICK_REGISTERED, "dave", False),
        (Code.NICK_TAKEN, "erin", False),
    ]
    assert world.store.registered_key("alice") == alice.sig_key and logic.nick == "alice"
    world.hub.reserve("erin", "erin2")  # nothing of alice's refused renames is left reserved
    world.hub.unreserve("erin2")
    for nick in ("alice2", "erin2"):
        world.hub.reserve("alice", nick)
        world.hub.unreserve(nick)


def test_a_rename_waits_while_whispers_are_queued_for_the_old_nick(world: World) -> None:
    alice = Identity.generate("alice")
    logic, fake = identity_login(world, alice)
    world.store.enqueue("alice", "m1", "bob", b"h", b"c", 1.0)
    logic.handle(sign_rename(alice, "alice", "alice2"))
    error = fake.last()
    assert isinstance(error, Error) and (error.code, error.ref) == (Code.UNEXPECTED, "alice2")
    assert "queued whispers" in error.reason
    assert world.store.registered_key("alice") == alice.sig_key and logic.nick == "alice"
    guest(world, "alice2")  # the nick was not left reserved


def test_a_login_as_the_new_nick_while_the_store_moves_it_is_refused_not_the_rename(world: World) -> None:
    alice = Identity.generate("alice")
    logic, fake = identity_login(world, alice)
    rename_user = world.store.rename_user
    intruders: list[FakeSession] = []

    def racing(old: str, new: str, sig_key: bytes, now: float) -> RenameResult:
        # A guest logs in as `new` between the logic's checks and the store's move.
        intruder, intruder_fake = world.session("127.0.0.9:40000")
        intruder.handle(Hello(version=PROTOCOL_VERSION, nick=new))
        intruders.append(intruder_fake)
        return rename_user(old, new, sig_key, now)

    world.store.rename_user = racing  # type: ignore[method-assign]
    logic.handle(sign_rename(alice, "alice", "alice2"))
    [intruder] = intruders
    assert intruder.of(Welcome) == [] and intruder.closed is not None
    final, _ = intruder.closed
    assert isinstance(final, Error) and final.code == Code.NICK_TAKEN
    assert logic.nick == "alice2" and Renamed(old="alice", new="alice2") in fake.received
    assert world.store.registered_key("alice2") == alice.sig_key


def test_a_rename_takes_the_renamers_queued_whispers_with_it(world: World) -> None:
    dave, erin = Identity.generate("dave"), Identity.generate("erin")
    erin_logic, erin_fake = identity_login(world, erin)
    erin_logic.leave("gone")  # registered, offline
    logic, fake = identity_login(world, dave)
    logic.handle(Whisper(to="erin", id="w1", header=b"h", ciphertext=b"c"))
    logic.handle(sign_rename(dave, "dave", "dave2"))
    assert logic.nick == "dave2"
    _impostor, impostor_fake = guest(world, "dave")  # the old nick is free: a guest takes it
    erin_logic, erin_fake = identity_login(world, erin)
    [delivery] = erin_fake.of(Delivery)
    assert delivery.sender == "dave2"
    erin_logic.handle(Ack(id=delivery.id))
    erin_logic.flush()  # the reader's, once a read's frames are handled: acks wait for it
    assert fake.last() == WhisperStatus(id="w1", to="erin", status="delivered")
    assert impostor_fake.of(WhisperStatus) == []


def test_a_guests_rename_needs_a_free_unregistered_nick(world: World) -> None:
    world.store.register("dave", b"d" * 32, 1.0)
    logic, fake = guest(world, "bob")
    logic.handle(Rename(nick="dave"))
    logic.handle(Rename(nick="BOB"))  # its own nick: nothing at all
    logic.handle(Rename(nick="bobby"))
    assert [(e.code, e.ref) for e in fake.of(Error)] == [(Code.NICK_REGISTERED, "dave")]
    assert fake.of(Renamed) == [Renamed(old="bob", new="bobby")] and logic.nick == "bobby"


def registered_room(world: World, owner: Identity, room: str = "#dev") -> tuple[SessionLogic, FakeSession]:
    logic, fake = identity_login(world, owner)
    logic.handle(Join(room=room))
    logic.handle(RegisterRoom(room=room))
    assert fake.of(RoomChanged)[-1].registered
    return logic, fake


def test_a_ban_of_a_registered_nick_is_by_its_key_and_survives_its_rename(world: World) -> None:
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    owner, owner_fake = registered_room(world, alice)
    bob_logic, bob_fake = identity_login(world, bob)
    bob_logic.handle(Join(room="#dev"))
    owner.handle(Ban(room="#dev", mask="bob"))
    assert bob_fake.of(Left)[-1] == Left(room="#dev", nick="bob", reason="banned", by="alice")
    owner.handle(Bans(room="#dev"))
    [ban_list] = owner_fake.of(BanList)
    assert [(b.mask, b.kind) for b in ban_list.bans] == [("bob", "key")]
    bob_logic.handle(sign_rename(bob, "bob", "robert"))
    bob_logic.handle(Join(room="#dev"))
    error = bob_fake.last()
    assert isinstance(error, Error) and (error.code, error.ref) == (Code.BANNED, "#dev")


def test_op_deop_transfer_of_an_unregistered_nick_and_a_ban_of_the_owner_say_what_the_doc_says(
    world: World,
) -> None:
    alice = Identity.generate("alice")
    owner, fake = registered_room(world, alice)
    for request in (
        Op(room="#dev", nick="guest"),
        Deop(room="#dev", nick="guest"),
        Transfer(room="#dev", nick="guest"),
    ):
        owner.handle(request)
    owner.handle(Ban(room="#dev", mask="alice"))
    assert [(e.code, e.ref) for e in fake.of(Error)] == [
        (Code.NO_SUCH_USER, "#dev"),
        (Code.NO_SUCH_USER, "#dev"),
        (Code.NO_SUCH_USER, "#dev"),
        (Code.NOT_OPERATOR, "#dev"),
    ]


def test_a_registration_and_settings_are_stored_before_the_answer_or_refused_whole(world: World) -> None:
    alice = Identity.generate("alice")
    logic, fake = registered_room(world, alice)
    logic.handle(SetTopic(room="#dev", topic="stored first"))
    [stored] = world.store.registered_rooms()  # no history flush needed
    assert (stored.name, stored.owner_key, stored.topic) == ("#dev", alice.sig_key, "stored first")
    world.store.fail("disk gone")
    told = len(fake.of(RoomChanged))
    logic.handle(SetMode(room="#dev", invite_only=True))
    error = fake.last()
    assert isinstance(error, Error) and (error.code, error.ref) == (Code.STORE_UNAVAILABLE, "#dev")
    assert len(fake.of(RoomChanged)) == told and fake.closed is None
    logic.handle(Join(room="#dev"))  # entered again: the room as it was
    assert fake.of(Entered)[-1].invite_only is False


def test_a_registration_the_store_refuses_leaves_the_room_unregistered(world: World) -> None:
    alice = Identity.generate("alice")
    logic, fake = identity_login(world, alice)
    logic.handle(Join(room="#dev"))
    world.store.fail("disk gone")
    logic.handle(RegisterRoom(room="#dev"))
    error = fake.last()
    assert isinstance(error, Error) and (error.code, error.ref) == (Code.STORE_UNAVAILABLE, "#dev")
    assert fake.of(RoomChanged) == [] and world.hub.list_rooms("#dev").rooms != ()
    logic.handle(Join(room="#dev"))
    assert fake.of(Entered)[-1].registered is False


def test_lines_said_then_kicked_in_one_read_are_refused_once_per_room(world: World) -> None:
    alice = Identity.generate("alice")
    owner, owner_fake = registered_room(world, alice)
    logic, fake = guest(world, "mallory")
    logic.handle(Join(room="#dev"))
    for i in range(10):  # read together: held for one batch
        logic.handle(Say(room="#dev", text=f"spam {i}"))
    logic.handle(Say(room="#lobby", text="still here"))
    owner.handle(Kick(room="#dev", nick="mallory", reason="spam"))
    logic.flush()
    assert [(e.code, e.ref) for e in fake.of(Error)] == [(Code.NOT_IN_ROOM, "#dev")]
    assert [m.text for m in owner_fake.of(Message)] == ["still here"]


def test_a_guest_renaming_into_a_ban_of_its_room_is_refused_naming_the_room(world: World) -> None:
    owner, _ = registered_room(world, Identity.generate("alice"))
    logic, fake = guest(world, "ok")
    logic.handle(Join(room="#dev"))
    owner.handle(Ban(room="#dev", mask="spam*"))
    logic.handle(Rename(nick="spammer"))
    [error] = fake.of(Error)
    assert (error.code, error.ref, error.reason) == (
        Code.BANNED,
        "spammer",
        "cannot change nick while banned in #dev",
    )
    assert logic.nick == "ok" and fake.of(Renamed) == [] and world.hub.is_in("ok", "#dev")


def test_registering_a_room_costs_one_of_the_networks_registrations() -> None:
    world = make_world(registrations_per_hour=1.0, registration_burst=1.0)
    alice = Identity.generate("alice")
    world.store.register("alice", alice.sig_key, 1.0)  # her nick costs nothing now
    logic, fake = identity_login(world, alice)
    for room in ("#a", "#b"):
        logic.handle(Join(room=room))
        logic.handle(RegisterRoom(room=room))
    [error] = fake.of(Error)
    assert (error.code, error.ref) == (Code.QUOTA, "#b")
    assert error.reason == "too many registrations from your network; try again later"
    assert [r.name for r in world.store.registered_rooms()] == ["#a"]


def test_away_set_and_cleared_is_what_later_logins_and_names_are_told(world: World) -> None:
    alice, alice_fake = guest(world, "alice")
    alice.handle(Away(message="lunch"))
    alice.flush()
    _, bob_fake = guest(world, "bob")
    assert bob_fake.of(Entered)[-1].away == ("alice",)
    alice.handle(Away(message=""))
    alice.flush()
    _, carol_fake = guest(world, "carol")
    assert carol_fake.of(Entered)[-1].away == ()
    alice.handle(Away(message="gone"))
    alice.handle(Who(room="#lobby"))
    alice.flush()
    assert alice_fake.of(Names)[-1].away == ("alice",)
