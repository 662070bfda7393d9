"""The rooms a client remembers (pure), and the `Client`'s room operations over real TLS."""

from __future__ import annotations

import base64
import json
import os
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chat import TIMEOUT
from conftest import Connect
from e2e_helpers import fetched_bundle
from hostile_server import HostileConn, HostileServer, Script
from malicious_relay import MaliciousRelay
from whisper_helpers import disk_keys, login, memory_keys, wait_published_keys

from securechat import Client, LoginRejected
from securechat.client.backoff import Backoff
from securechat.client.events import (
    KeyChanged,
    KnownKeyRenamed,
    Reconnected,
    RenameUnconfirmed,
    WhisperReceived,
)
from securechat.client.inbox import MemoryStorage
from securechat.client.keystore import RoomsFile
from securechat.client.rooms import (
    MAX_REMEMBERED,
    REJOIN_BURST,
    REJOIN_PACE,
    REJOIN_RETRIES,
    REJOIN_RETRY_AFTER,
    MemberPages,
    Refusal,
    RejoinQueue,
    RememberedRooms,
    decode_rooms,
    encode_rooms,
)
from securechat.client.session import _MAX_FOLLOWING
from securechat.client.whispers import WhisperKeys
from securechat.e2e.conversations import Conversations, Trust
from securechat.e2e.errors import IdentityChanged, NotTrusted
from securechat.e2e.identity import Identity, PublicIdentity
from securechat.e2e.login import rename_message
from securechat.e2e.primitives import ed25519_verify
from securechat.protocol import Entered, Error, Joined, Left, Message, Names, Renamed, RoomChanged, Rooms
from securechat.protocol.limits import MAX_USERS_LISTED
from securechat.protocol.rooms import Members
from securechat.server import Server


def test_remembered_rooms_keep_join_order_and_one_entry_whatever_the_case() -> None:
    rooms = RememberedRooms(["#dev", "#ops"])
    assert not rooms.add("#dev")
    assert rooms.add("#DEV")  # the latest spelling is kept, in its old place
    assert rooms.names() == ("#DEV", "#ops") and "#Dev" in rooms and len(rooms) == 2
    assert rooms.discard("#OPS") and not rooms.discard("#ops")
    assert list(rooms) == ["#DEV"]


def test_remembered_rooms_are_bounded() -> None:
    rooms = RememberedRooms(f"#r{i}" for i in range(MAX_REMEMBERED + 5))
    assert len(rooms) == MAX_REMEMBERED and "#r0" in rooms and f"#r{MAX_REMEMBERED}" not in rooms


def test_the_saved_form_round_trips_and_damage_is_a_value_error() -> None:
    assert decode_rooms(encode_rooms(["#a", "#b"])) == ["#a", "#b"]
    for damaged in (b"", b"{}", b"[1]", b'["#bad room"]', b'["lobby"]'):
        with pytest.raises(ValueError):
            decode_rooms(damaged)


def test_member_pages_join_the_frame_that_ends_them_room_by_room() -> None:
    pages = MemberPages()
    assert pages.complete(Entered(room="#a", users=("x",))) == Entered(room="#a", users=("x",))
    pages.add(Members(room="#a", of="entered", users=("a1", "a2"), away=("a2",)))
    pages.add(Members(room="#b", of="names", users=("b1",)))
    pages.add(Members(room="#A", of="entered", users=("a3",)))  # room names fold
    pages.add(Members(room="#a", of="names", users=("n1",)))
    assert len(pages) == 3
    # A `names` for #a ends only the pages of a `names`, whatever came between.
    assert pages.complete(Names(room="#a", users=("n2",))) == Names(room="#a", users=("n1", "n2"))
    whole = pages.complete(Entered(room="#a", users=("a4",), away=("a4",), topic="t"))
    assert whole == Entered(room="#a", users=("a1", "a2", "a3", "a4"), away=("a2", "a4"), topic="t")
    assert pages.complete(Entered(room="#a", users=("z",))).users == ("z",)  # used once
    pages.clear()
    assert len(pages) == 0
    assert pages.complete(Names(room="#b", users=("b2",))).users == ("b2",)  # cleared: not joined


def test_member_pages_refuse_what_no_server_may_send() -> None:
    pages = MemberPages()
    pages.add(Members(room="#a", of="entered", users=("bob",)))
    with pytest.raises(ValueError, match="twice"):
        pages.complete(Entered(room="#a", users=("Bob",)))
    pages.add(Members(room="#a", of="entered", users=("carol",), away=("carol",)))
    with pytest.raises(ValueError, match="not in it"):
        pages.complete(Entered(room="#a", users=("dave",), away=("erin",)))
    # Pages never completed are bounded, across all rooms.
    pages = MemberPages()
    nicks = tuple(f"u{i}" for i in range(MAX_USERS_LISTED // 2))
    pages.add(Members(room="#a", of="entered", users=nicks))
    pages.add(Members(room="#b", of="names", users=nicks))
    with pytest.raises(ValueError, match="more than"):
        pages.add(Members(room="#c", of="entered", users=("one",)))
    pages.complete(Names(room="#b"))  # completing one frees what it held
    pages.add(Members(room="#c", of="entered", users=("one",)))


def test_rejoins_go_twenty_at_once_then_one_per_pace() -> None:
    queue = RejoinQueue()
    rooms = [f"#r{i}" for i in range(REJOIN_BURST + 3)]
    queue.start(rooms, now=100.0)
    # Held until what came with the welcome is read.
    assert queue.due(100.0) == [] and queue.next_due() is None
    queue.release()
    assert queue.due(100.0) == rooms[:REJOIN_BURST]
    assert queue.due(100.0) == [] and queue.next_due() == pytest.approx(100.0 + REJOIN_PACE)
    assert queue.due(100.0 + REJOIN_PACE * 0.9) == []
    assert queue.due(100.0 + REJOIN_PACE) == [rooms[REJOIN_BURST]]
    assert queue.due(100.0 + REJOIN_PACE * 2.5) == [rooms[REJOIN_BURST + 1]]
    assert queue.due(100.0 + REJOIN_PACE * 3) == [rooms[REJOIN_BURST + 2]]
    assert queue.next_due() is None and len(queue) == 0
    # A new login starts with a full burst again, and an entered room is not sent.
    queue.start(["#a", "#b"], now=200.0)
    queue.release()
    queue.entered("#A")
    assert queue.due(200.0) == ["#b"]


def test_a_rejoin_refused_for_rate_is_sent_again_later_a_bounded_number_of_times() -> None:
    queue = RejoinQueue()
    queue.start(["#a", "#b"], now=0.0)
    queue.release()
    assert queue.due(0.0) == ["#a", "#b"]
    assert queue.refused("#x", for_rate=True, now=0.0) is Refusal.NOT_A_REJOIN  # the program's own join
    assert queue.refused("#B", for_rate=False, now=0.0) is Refusal.NOT_A_REJOIN  # banned: told as usual
    now = 0.0
    for tries in range(REJOIN_RETRIES):
        assert queue.refused("#A", for_rate=True, now=now) is Refusal.RETRYING
        wait = REJOIN_RETRY_AFTER * 2**tries
        assert queue.next_due() == pytest.approx(now + wait)
        assert queue.due(now + wait * 0.9) == []
        now += wait
        assert queue.due(now) == ["#a"]
    assert queue.refused("#a", for_rate=True, now=now) is Refusal.GIVEN_UP
    assert len(queue) == 0
    queue.start(["#a"], now=now)
    queue.release()
    queue.due(now)
    queue.clear()  # the connection ended: a late refusal is nobody's
    assert queue.refused("#a", for_rate=True, now=now) is Refusal.NOT_A_REJOIN


# -- against a scripted server (the client's side alone) ------------------------------------

WELCOME_V2 = {"type": "welcome", "version": 2, "nick": "alice", "room": "#lobby", "users": ["alice"]}


def _entered(room: str, *users: str) -> dict[str, object]:
    return {"type": "entered", "room": room, "users": list(users) or ["alice"]}


@pytest.fixture
def scripted(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Iterator[Callable[..., Client]]:
    """`scripted(script, **client_args)`: a client (not connected) of a server running `script`."""
    made: list[tuple[Client, HostileServer]] = []

    def make(script: Script, **kwargs: object) -> Client:
        server = HostileServer(server_ctx, script)
        args: dict[str, object] = {"timeout": TIMEOUT, "backoff": Backoff(base=0.05, cap=0.2), **kwargs}
        client = Client("alice", context=client_ctx, port=server.port, **args)  # type: ignore[arg-type]
        made.append((client, server))
        return client

    yield make
    for client, server in made:
        client.close()
        server.close()
        assert not server.errors, server.errors


def _until(client: Client, kind: type) -> object:
    return client.wait_for_any(kind, TIMEOUT)


def test_the_rooms_entered_are_joined_again_after_a_reconnect(scripted: Callable[..., Client]) -> None:
    joins: list[list[str]] = [[], []]

    def script(conn: HostileConn, index: int) -> None:
        conn.read_frame()
        conn.send(WELCOME_V2)
        conn.send(_entered("#lobby"))  # the server's autojoin room: not the client's to rejoin
        if index == 0:
            frame = conn.read_frame()
            assert frame == {"type": "join", "room": "#Dev"}, frame
            conn.send(_entered("#Dev"))
            conn.send(_entered("#ops"))
            conn.send(
                {"type": "left", "room": "#ops", "nick": "alice", "reason": "", "by": "carol"}
            )  # kicked
            conn.send({"type": "message", "room": "#Dev", "nick": "bob", "text": "bye", "ts": 1.0})
            conn.read_frame()  # hangs up when the test cuts the connection
            return
        while (frame := conn.read_frame())["type"] == "join":
            joins[index].append(str(frame["room"]))
            conn.send(_entered(str(frame["room"])))

    client = scripted(script, reconnect=True)
    client.connect()
    client.join("#Dev")
    _until(client, Message)
    assert client.rooms == ("#lobby", "#Dev")  # #ops: kicked out
    with client._conn_lock:
        assert client._channel is not None
        client._channel.shutdown()  # the connection drops
    _until(client, Reconnected)
    lobby, dev = _until(client, Entered), _until(client, Entered)
    assert isinstance(lobby, Entered) and isinstance(dev, Entered) and dev.room == "#Dev"
    assert joins[1] == ["#Dev"] and client.rooms == ("#lobby", "#Dev")


def test_a_guest_joins_its_rooms_again_after_a_restart(
    scripted: Callable[..., Client], client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    seen: list[str] = []
    joined = threading.Event()

    def script(conn: HostileConn, index: int) -> None:
        conn.read_frame()
        conn.send(WELCOME_V2)
        if index == 0:
            assert conn.read_frame()["type"] == "join"
            conn.send(_entered("#dev"))
            conn.send(_entered("#ops"))
            assert conn.read_frame()["type"] == "part"
            conn.send({"type": "left", "room": "#ops", "nick": "alice", "reason": "", "by": ""})
            conn.hold()
            return
        while (frame := conn.read_frame())["type"] == "join":
            seen.append(str(frame["room"]))
        joined.set()
        conn.hold()

    store = RoomsFile(tmp_path / "127.0.0.1_1" / "alice")
    first = scripted(script, rooms_store=store)
    first.connect()
    first.join("#dev")
    _until(first, Entered)
    first.part("#ops")
    _until(first, Left)
    first.close()
    assert store.path.stat().st_mode & 0o777 == 0o600
    # A new run: only the file remains.
    second = Client(
        "alice", context=client_ctx, port=first.port, timeout=TIMEOUT, rooms_store=RoomsFile(store.directory)
    )
    try:
        second.connect()
        second.who()
        assert joined.wait(TIMEOUT) and seen == ["#dev"]
    finally:
        second.close()


def test_a_server_older_than_rooms_gets_no_joins_and_a_v1_refusal_is_explained(
    scripted: Callable[..., Client], tmp_path: Path
) -> None:
    frames: list[dict[str, object]] = []
    done = threading.Event()

    def old(conn: HostileConn, _: int) -> None:
        conn.login()  # a version-1 welcome
        while (frame := conn.read_frame())["type"] != "who":
            frames.append(frame)
        done.set()
        conn.hold()

    store = RoomsFile(tmp_path / "alice")
    store.save_rooms(["#dev"])
    client = scripted(old, rooms_store=store)
    client.connect()
    assert client.rooms == ("#lobby",)
    client.who()
    assert done.wait(TIMEOUT) and frames == []

    def refuses(conn: HostileConn, _: int) -> None:
        conn.read_frame()
        conn.send(
            {
                "type": "error",
                "code": "unsupported-version",
                "reason": "this server speaks protocol versions 1 and 2",
                "fatal": True,
            }
        )

    with pytest.raises(
        LoginRejected, match=r"older than this client, which speaks protocol 4; .*versions 1 and 2"
    ):
        scripted(refuses).connect()


# -- renaming --------------------------------------------------------------------------------


def test_an_identity_rename_is_signed_over_the_login_nonce_and_finished_on_renamed(
    scripted: Callable[..., Client], tmp_path: Path
) -> None:
    nonce = os.urandom(32)
    got: dict[str, object] = {}
    published = threading.Event()

    def script(conn: HostileConn, _: int) -> None:
        got["hello"] = conn.read_frame()
        conn.send({"type": "challenge", "nonce": base64.b64encode(nonce).decode()})
        conn.read_frame()  # auth
        conn.send(WELCOME_V2)
        while (frame := conn.read_frame())["type"] != "rename":
            pass
        got["rename"] = frame
        conn.send({"type": "renamed", "old": "alice", "new": "Alice2"})
        while (frame := conn.read_frame())["type"] != "publish_keys":
            pass
        got["publish"] = frame
        published.set()
        conn.hold()

    directory = tmp_path / "alice"
    keys = disk_keys(directory, "alice")
    client = scripted(script, keys=keys)
    client.connect()
    client.rename("ALICE")  # our own nick: nothing sent
    client.rename("Alice2")
    renamed = _until(client, Renamed)
    assert isinstance(renamed, Renamed) and renamed.new == "Alice2"
    assert published.wait(TIMEOUT)
    rename = got["rename"]
    assert isinstance(rename, dict) and rename["nick"] == "Alice2"
    signature = base64.b64decode(str(rename["signature"]))
    assert ed25519_verify(keys.identity.sig_key, signature, rename_message("alice", "alice2", nonce))
    assert client.nick == "Alice2"
    publish = got["publish"]
    assert isinstance(publish, dict)
    ident = publish["identity"]
    assert isinstance(ident, dict)
    bound = PublicIdentity(
        "alice2",
        keys.identity.sig_key,
        base64.b64decode(str(ident["dh_key"])),
        base64.b64decode(str(ident["dh_sig"])),
    )
    assert bound.binding_valid()  # bound to the new nick
    assert not directory.exists() and (tmp_path / "alice2" / "keystore.db").is_file()


def test_a_guest_renames_without_a_signature(scripted: Callable[..., Client], tmp_path: Path) -> None:
    frames: list[dict[str, object]] = []

    def script(conn: HostileConn, _: int) -> None:
        conn.read_frame()
        conn.send(WELCOME_V2)
        while (frame := conn.read_frame())["type"] == "join":  # its remembered #dev first
            pass
        frames.append(frame)
        conn.send({"type": "renamed", "old": "alice", "new": "bob"})
        conn.hold()

    store = RoomsFile(tmp_path / "alice")
    store.save_rooms(["#dev"])
    client = scripted(script, rooms_store=store)
    client.connect()
    client.rename("bob")
    _until(client, Renamed)
    assert frames[0]["type"] == "rename" and frames[0]["nick"] == "bob" and not frames[0].get("signature")
    assert client.nick == "bob" and RoomsFile(tmp_path / "bob").load_rooms() == ["#dev"]


# -- over real TLS, against the real server -------------------------------------------------


def _events_until(client: Client, kind: type, test: Callable[[Any], bool] = lambda _: True) -> Any:
    """The first event of type `kind` that passes `test` (others skipped)."""
    while True:
        item = client.wait_for_any(kind, TIMEOUT)
        if test(item):
            return item


def test_rooms_through_the_client_api_over_tls(server: Server, connect: Connect) -> None:
    alice, bob = connect("alice"), connect("bob")
    alice.join("#dev")
    entered = _events_until(alice, Entered, lambda e: e.room == "#dev")
    assert entered.users == ("alice",) and "#dev" in alice.rooms
    bob.join("#DEV")  # one room whatever the case
    _events_until(alice, Joined, lambda e: e.room.lower() == "#dev" and e.nick == "bob")
    alice.say("in dev only", "#dev")
    line = _events_until(bob, Message, lambda m: m.text == "in dev only")
    assert line.room.lower() == "#dev"
    alice.set_topic("#dev", "builds and deploys")
    changed = _events_until(bob, RoomChanged)
    assert (changed.what, changed.topic, changed.nick) == ("topic", "builds and deploys", "alice")
    alice.list_rooms("#d*")
    listed = _events_until(alice, Rooms)
    assert [(r.room.lower(), r.users) for r in listed.rooms] == [("#dev", 2)]
    alice.kick("#dev", "bob")  # nobody may kick in an unregistered room
    refused = _events_until(alice, Error, lambda e: e.ref.lower() == "#dev")
    assert refused.code == "not-operator"
    bob.part("#dev", "lunch")
    gone = _events_until(bob, Left, lambda e: e.nick == "bob")
    assert gone.room.lower() == "#dev" and all(r.lower() != "#dev" for r in bob.rooms)


def test_a_rename_keeps_the_trust_of_the_key_and_the_keystore_follows(
    server: Server, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    alice = login(server, client_ctx, "alice", disk_keys(tmp_path / "alice", "alice"))
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    try:
        bob.whisper("alice", "before")
        _events_until(alice, WhisperReceived)
        assert bob.keys is not None and alice.keys is not None
        number = alice.keys.identity.safety_number_with(bob.keys.identity.public())
        assert bob.verify("alice", number)
        alice.rename("alice2")
        assert _events_until(alice, Renamed).new == "alice2"
        seen = _events_until(bob, Renamed)  # bob shares #lobby with her
        assert (seen.old, seen.new) == ("alice", "alice2")
        # bob's client checks the claim against alice2's keys and tells him the key he
        # verified as alice is alice2's: the trust goes along, not silently.
        told = _events_until(bob, KnownKeyRenamed)
        assert (told.old, told.new, told.trust) == ("alice", "alice2", "verified")
        wait_published_keys(alice)  # the fresh bundle, bound to alice2
        bob.whisper("alice2", "after")
        got = _events_until(alice, WhisperReceived, lambda w: w.text == "after")
        assert got.sender == "bob"
        info = bob.keys.peer_info("alice2")
        assert info is not None and info.trust is Trust.VERIFIED  # verified stays verified
        assert (tmp_path / "alice2" / "keystore.db").is_file() and not (tmp_path / "alice").exists()
    finally:
        alice.close()
        bob.close()


# -- rejoining after a login: which rooms, how fast, and refusals for rate -----------------


def _frames(*frames: dict[str, object]) -> bytes:
    """Frames in one write: they reach the client in one read, with the welcome."""
    return b"".join(json.dumps(frame).encode() + b"\n" for frame in frames)


def test_a_remembered_lobby_is_joined_again_when_the_server_did_not_put_us_in_it(
    scripted: Callable[..., Client], tmp_path: Path
) -> None:
    # No autojoin rooms: the welcome names #lobby for version-1 clients, but not with us in it.
    joins: list[str] = []
    done = threading.Event()

    def script(conn: HostileConn, _: int) -> None:
        conn.read_frame()
        conn.send({**WELCOME_V2, "users": []})
        while (frame := conn.read_frame())["type"] == "join":
            joins.append(str(frame["room"]))
            conn.send(_entered(str(frame["room"])))
        done.set()
        conn.hold()

    store = RoomsFile(tmp_path / "alice")
    store.save_rooms(["#lobby", "#dev"])
    client = scripted(script, rooms_store=store)
    client.connect()
    client.who()
    assert done.wait(TIMEOUT) and joins == ["#lobby", "#dev"]


def test_rooms_the_server_put_us_in_are_not_joined_again(
    scripted: Callable[..., Client], tmp_path: Path
) -> None:
    joins: list[str] = []
    done = threading.Event()

    def script(conn: HostileConn, _: int) -> None:
        conn.read_frame()
        # Autojoin #lobby (the welcome has us in it) and #help (its `entered` says so).
        conn.send_raw(_frames(WELCOME_V2, _entered("#lobby"), _entered("#Help")))
        while (frame := conn.read_frame())["type"] == "join":
            joins.append(str(frame["room"]))
            conn.send(_entered(str(frame["room"])))
        done.set()
        conn.hold()

    store = RoomsFile(tmp_path / "alice")
    store.save_rooms(["#LOBBY", "#help", "#dev"])
    client = scripted(script, rooms_store=store)
    client.connect()
    client.who()
    assert done.wait(TIMEOUT) and joins == ["#dev"]


def test_many_remembered_rooms_are_joined_paced_and_a_join_refused_for_rate_is_tried_again(
    scripted: Callable[..., Client], tmp_path: Path
) -> None:
    rooms = [f"#r{i}" for i in range(REJOIN_BURST + 5)]
    refused_once = {"#r3", f"#r{REJOIN_BURST + 2}"}
    joins: list[str] = []
    everywhere = threading.Event()

    def script(conn: HostileConn, _: int) -> None:
        conn.read_frame()
        conn.send({**WELCOME_V2, "users": []})
        entered: set[str] = set()
        while len(entered) < len(rooms):
            frame = conn.read_frame()
            assert frame["type"] == "join", frame
            room = str(frame["room"])
            joins.append(room)
            if room in refused_once and joins.count(room) == 1:
                conn.send({"type": "error", "code": "rate-limited", "reason": "slow down", "ref": room})
                continue
            entered.add(room)
            conn.send(_entered(room))
        everywhere.set()
        conn.hold()

    store = RoomsFile(tmp_path / "alice")
    store.save_rooms(rooms)
    client = scripted(script, rooms_store=store)
    client.connect()
    assert everywhere.wait(TIMEOUT * 2)
    assert sorted(joins) == sorted(rooms + sorted(refused_once))
    assert joins[:REJOIN_BURST] == rooms[:REJOIN_BURST]  # the first ones at once, in order
    while len(client.rooms) < len(rooms):
        _until(client, Entered)
    assert set(client.rooms) == set(rooms)
    assert store.load_rooms() == rooms  # nothing forgotten on the way
    with pytest.raises(TimeoutError):  # the refusals were the client's own business
        client.wait_for_any(Error, 0)


def test_a_rename_is_recorded_until_answered_and_one_that_did_not_happen_is_said_at_the_next_start(
    server: Server, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    keys = disk_keys(tmp_path / "alice", "alice")
    alice = login(server, client_ctx, "alice", keys)
    try:
        alice.rename("bob")  # bob's: refused, and the keystore forgets the rename
        refused = _events_until(alice, Error, lambda e: e.ref == "bob")
        assert refused.code == "nick-registered" and keys.renaming() is None
        keys.begin_rename("bob")  # as if the answer never came: the process stopped
    finally:
        alice.close()
    again = Client(
        "alice",
        context=client_ctx,
        port=server.address[1],
        timeout=TIMEOUT,
        keys=disk_keys(tmp_path / "alice", "alice"),
    )
    try:
        again.connect()  # tries bob first (not ours), then logs in as alice
        said = _events_until(again, Error, lambda e: e.ref == "bob")
        assert said.reason.startswith("your rename to bob did not happen") and again.nick == "alice"
        assert again.keys is not None and again.keys.renaming() is None
    finally:
        again.close()
        bob.close()


# -- a `renamed` we did not ask for (review 2, item 2) --------------------------------------


def test_a_renamed_the_client_did_not_ask_for_changes_nothing_and_is_reported(
    scripted: Callable[..., Client], tmp_path: Path
) -> None:
    """A server that renames us unasked, or to another nick than we asked for: the client
    keeps its nick, its identity's binding and its keystore, publishes nothing, and says
    the server misbehaved."""
    after: list[str] = []
    done = threading.Event()

    def script(conn: HostileConn, _: int) -> None:
        conn.read_frame()
        conn.send({"type": "challenge", "nonce": base64.b64encode(os.urandom(32)).decode()})
        conn.read_frame()  # auth
        conn.send(WELCOME_V2)
        conn.send({"type": "renamed", "old": "alice", "new": "mallory"})  # never asked for
        while (frame := conn.read_frame())["type"] != "rename":
            after.append(str(frame["type"]))
        conn.send({"type": "renamed", "old": "alice", "new": "mallory"})  # asked for alice2
        while (frame := conn.read_frame())["type"] != "who":
            after.append(str(frame["type"]))
        done.set()
        conn.hold()

    directory = tmp_path / "alice"
    keys = disk_keys(directory, "alice")
    client = scripted(script, keys=keys)
    client.connect()
    unasked = _until(client, Error)
    assert isinstance(unasked, Error) and unasked.code == "unexpected"
    assert "renamed you to mallory" in unasked.reason and "did not ask" in unasked.reason
    client.rename("alice2")
    other = _until(client, Error)
    assert isinstance(other, Error) and "mallory" in other.reason and "alice2" in other.reason
    client.who()  # everything the client sent by now reaches the script before this
    assert done.wait(TIMEOUT)
    assert "publish_keys" not in after, after
    assert client.nick == "alice" and keys.identity.user == "alice"
    assert (directory / "keystore.db").is_file() and not (tmp_path / "mallory").exists()
    assert keys.renaming() == "alice2"  # still waiting for the answer to what we asked


def test_a_guest_renamed_unasked_keeps_its_nick_and_rooms_file(
    scripted: Callable[..., Client], tmp_path: Path
) -> None:
    def script(conn: HostileConn, _: int) -> None:
        conn.read_frame()
        conn.send(WELCOME_V2)
        conn.send({"type": "renamed", "old": "alice", "new": "mallory"})
        conn.hold()

    store = RoomsFile(tmp_path / "alice")
    store.save_rooms(["#dev"])
    client = scripted(script, rooms_store=store)
    client.connect()
    unasked = _until(client, Error)
    assert isinstance(unasked, Error) and "renamed you to mallory" in unasked.reason
    assert client.nick == "alice" and store.path.is_file() and not (tmp_path / "mallory").exists()


# -- a peer's rename is a claim, checked against the new nick's keys (review 2, item 3) ------


def test_a_server_renaming_a_verified_contact_to_someone_else_carries_nothing_and_tells_the_user(
    server: Server, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    relay = MaliciousRelay(server.address, server_ctx, client_ctx)
    port = relay.address[1]
    alice = login(port, client_ctx, "alice", memory_keys("alice"))
    bob = login(port, client_ctx, "bob", memory_keys("bob"))
    mallory = login(port, client_ctx, "mallory", memory_keys("mallory"))
    try:
        alice.whisper("bob", "hi")
        _events_until(bob, WhisperReceived)
        assert alice.keys is not None and bob.keys is not None
        assert alice.verify("bob", bob.keys.identity.safety_number_with(alice.keys.identity.public()))
        relay.legs["alice"].to_client({"type": "renamed", "old": "bob", "new": "mallory"})
        claim = _events_until(alice, Renamed)
        assert (claim.old, claim.new) == ("bob", "mallory")  # shown as the claim it is
        told = _events_until(alice, KeyChanged)
        assert (told.peer, told.renamed_from) == ("mallory", "bob")
        info = alice.keys.peer_info("mallory")
        assert info is not None and info.trust is Trust.CHANGED  # nothing carried
        with relay._wire_lock:
            before = len(relay.wire)
        with pytest.raises(IdentityChanged):
            alice.whisper("mallory", "my pin is 1234")  # nothing sent until /trust or /verify
        with relay._wire_lock:
            sent = [json.loads(d) for direction, d in relay.wire[before:] if direction == "up"]
        assert not [f for f in sent if f.get("type") == "whisper"], sent
    finally:
        for client in (alice, bob, mallory):
            client.close()
        relay.close()


def _with_contacts(nick: str, contacts: list[str]) -> WhisperKeys:
    """`nick`'s keys, with a settled pin (a session) for each of `contacts`."""
    conv = Conversations(Identity.generate(nick))
    for contact in contacts:
        theirs = Conversations(Identity.generate(contact))
        theirs.bundle_to_publish()
        conv.start_session(contact, fetched_bundle(theirs))
    return WhisperKeys(conv, MemoryStorage())


def test_a_rename_beyond_those_checked_at_once_is_told_as_unconfirmed(
    scripted: Callable[..., Client],
) -> None:
    """Review 3: with `_MAX_FOLLOWING` renames of contacts being checked, one more was only
    logged: the terminal had promised "their key will be checked" and nothing ever came.
    It is told as unconfirmed, saying how to check it."""
    contacts = [f"c{i}" for i in range(_MAX_FOLLOWING + 1)]

    def script(conn: HostileConn, _: int) -> None:
        conn.read_frame()
        conn.send({"type": "challenge", "nonce": base64.b64encode(os.urandom(32)).decode()})
        conn.read_frame()  # auth
        conn.send(WELCOME_V2)
        # Their keys are asked for and never given: the first checks stay under way.
        for contact in contacts:
            conn.send({"type": "renamed", "old": contact, "new": f"{contact}x"})
        conn.hold()

    client = scripted(script, keys=_with_contacts("alice", contacts))
    client.connect()
    told = client.wait_for_any(RenameUnconfirmed, TIMEOUT)
    assert isinstance(told, RenameUnconfirmed)
    assert (told.old, told.new) == (contacts[-1], f"{contacts[-1]}x")
    assert told.reason == f"too many renames at once; /query {contacts[-1]}x to check their key"


def test_a_rename_check_that_cannot_start_leaves_no_check_counted(client_ctx: ssl.SSLContext) -> None:
    """A check whose keys are missing ends with its nick no longer counted as under way
    (else each such end would lower `_MAX_FOLLOWING` for good)."""
    guest = Client("alice", context=client_ctx, port=1, timeout=TIMEOUT)
    guest._following.add("bob2")
    with pytest.raises(NotTrusted):
        guest._follow_rename("bob", "bob2")
    assert guest._following == set()
