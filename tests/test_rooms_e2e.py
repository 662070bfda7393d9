"""Rooms over real TLS, with hand-driven protocol clients: membership over several rooms,
per-room fan-out and history, topics, invite-only, kicks, bans (by key, surviving a
restart and a nick change; by pattern for guests), ownership, caps, and version-1 clients."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from chat import TIMEOUT
from room_peers import Peer, login, texts
from server_process import ServerProcess, free_port

from securechat.e2e.identity import Identity
from securechat.e2e.login import rename_message
from securechat.protocol import (
    NEED_DATA,
    SUPPORTED_VERSIONS,
    Ban,
    BanList,
    Bans,
    Connection,
    Entered,
    Error,
    Hello,
    Invite,
    Invited,
    Join,
    Joined,
    Kick,
    Left,
    ListRooms,
    Message,
    Op,
    Part,
    RegisterRoom,
    Rename,
    Renamed,
    Role,
    RoomChanged,
    Rooms,
    Say,
    SetMode,
    SetTopic,
    Transfer,
    Who,
)
from securechat.server import Server

#: The frames a version-1 client knows from a server.
V1_TYPES = {"welcome", "message", "names", "joined", "left", "pong", "ping", "error", "bye"}


def test_membership_fan_out_history_topic_list_and_part_over_several_rooms(
    start_server: type[Server], client_ctx: ssl.SSLContext, peers: list[Peer]
) -> None:
    server = start_server(history_lines=5)
    alice = login(peers, server, client_ctx, "alice")
    bob = login(peers, server, client_ctx, "bob")
    carol = login(peers, server, client_ctx, "carol")
    entered = alice.request(Join(room="#a"))
    assert [type(f) for f in entered] == [Entered] and entered[0].users == ("alice",)  # type: ignore[attr-defined]
    alice.request(Join(room="#b"))
    bob.request(Join(room="#A"))  # the same room, whatever the case
    carol.request(Join(room="#b"))
    alice.request(Say(room="#a", text="for a"))
    alice.request(Say(room="#b", text="for b"))
    assert texts(bob.round_trip(), "#a") == ["for a"]
    carol_saw = carol.round_trip()
    assert texts(carol_saw, "#b") == ["for b"] and texts(carol_saw, "#a") == []
    # Nobody receives a room they are not in.
    assert all(getattr(f, "room", "#a") in ("#a", "#lobby") for f in bob.round_trip())

    dave = login(peers, server, client_ctx, "dave")
    joined = dave.request(Join(room="#a"))
    assert isinstance(joined[0], Entered) and joined[0].users == ("alice", "bob", "dave")
    assert [(m.text, m.history) for m in joined[1:] if isinstance(m, Message)] == [("for a", True)]

    bob.request(SetTopic(room="#a", topic="anyone may set it here"))
    change = alice.expect(RoomChanged, room="#a")
    assert (change.nick, change.what, change.topic) == ("bob", "topic", "anyone may set it here")

    listing = carol.request(ListRooms(pattern="#?"))
    [rooms] = [f for f in listing if isinstance(f, Rooms)]
    assert [(r.room, r.users, r.topic) for r in rooms.rooms] == [
        ("#a", 3, "anyone may set it here"),
        ("#b", 2, ""),
    ]

    parted = bob.request(Part(room="#a", reason="lunch"))
    assert Left(room="#a", nick="bob", reason="lunch") in parted  # the leaver hears it too
    assert alice.expect(Left, room="#a").nick == "bob"
    # An unregistered room vanishes with its last member.
    alice.request(Part(room="#b"))
    carol.request(Part(room="#b"))
    assert carol.refused(Who(room="#b")) == Error(code="no-such-room", reason="no room #b", ref="#b")
    assert carol.refused(Say(room="#a", text="not in it")).code == "not-in-room"


def test_a_registered_room_invite_only_kick_pattern_ban_and_hand_over(
    server: Server, client_ctx: ssl.SSLContext, peers: list[Peer]
) -> None:
    alice = login(peers, server, client_ctx, "alice", identity=Identity.generate("alice"))
    bob = login(peers, server, client_ctx, "bob", identity=Identity.generate("bob"))
    guest = login(peers, server, client_ctx, "guest1")
    alice.request(Join(room="#ops"))
    assert bob.request(Join(room="#ops"))[0] == Entered(room="#ops", users=("alice", "bob"))
    assert bob.refused(RegisterRoom(room="#ops")).code == "not-creator"
    alice.request(RegisterRoom(room="#ops"))
    assert bob.expect(RoomChanged, what="registered").owner == "alice"
    error = bob.refused(SetMode(room="#ops", invite_only=True))
    assert (error.code, error.ref) == ("not-operator", "#ops")
    alice.request(SetMode(room="#ops", invite_only=True))
    assert guest.refused(Join(room="#ops")).code == "invite-only"
    invited = Invited(room="#ops", nick="guest1", by="alice")
    assert invited in alice.request(Invite(room="#ops", nick="guest1"))
    assert guest.expect(Invited) == invited
    assert isinstance(guest.request(Join(room="#ops"))[0], Entered)

    alice.request(Op(room="#ops", nick="bob"))
    assert bob.expect(RoomChanged, what="operators").operators == ("bob",)
    bob.request(Kick(room="#ops", nick="guest1", reason="out"))
    assert guest.expect(Left, room="#ops") == Left(room="#ops", nick="guest1", reason="out", by="bob")
    bob.request(Ban(room="#ops", mask="guest*"))
    banned = [f for f in bob.request(Bans(room="#ops")) if isinstance(f, BanList)]
    assert [(b.mask, b.kind, b.by) for b in banned[0].bans] == [("guest*", "pattern", "bob")]
    alice.request(Invite(room="#ops", nick="guest1"))
    assert guest.refused(Join(room="#ops")).code == "banned"  # a ban wins over an invitation

    alice.request(Transfer(room="#ops", nick="bob"))
    handed = bob.expect(RoomChanged, what="owner")
    assert (handed.owner, handed.operators) == ("bob", ("alice",))
    assert alice.refused(Transfer(room="#ops", nick="alice")).code == "not-operator"


def test_a_ban_by_key_survives_a_restart_a_rename_and_a_second_nick(
    tmp_path: Path, cert_files: dict[str, str], client_ctx: ssl.SSLContext, peers: list[Peer]
) -> None:
    port, data = free_port(), tmp_path / "data"
    address = ("127.0.0.1", port)
    bob_key = Identity.generate("bob")
    process = ServerProcess(port, data, cert_files)
    try:
        alice = login(peers, address, client_ctx, "alice", identity=Identity.generate("alice"))
        bob = login(peers, address, client_ctx, "bob", identity=bob_key)
        alice.request(Join(room="#club"))
        alice.request(RegisterRoom(room="#club"))
        alice.request(SetTopic(room="#club", topic="members only"))
        alice.request(Say(room="#club", text="kept across a restart"))
        bob.request(Join(room="#club"))
        alice.request(Ban(room="#club", mask="bob"))
        assert bob.expect(Left, room="#club") == Left(room="#club", nick="bob", reason="banned", by="alice")
        signature = bob_key.sign(rename_message("bob", "bob2", bob.nonce))
        assert Renamed(old="bob", new="bob2") in bob.request(Rename(nick="bob2", signature=signature))
        assert alice.expect(Renamed) == Renamed(old="bob", new="bob2")  # they share #lobby
        assert bob.refused(Join(room="#club")).code == "banned"
        # A signature from another session (its nonce) does not rename.
        replayed = bob_key.sign(rename_message("bob2", "bob3", b"\0" * 32))
        assert bob.refused(Rename(nick="bob3", signature=replayed)).code == "auth-failed"
    finally:
        for peer in peers:
            peer.close()
        peers.clear()
        process.stop()

    process = ServerProcess(port, data, cert_files)
    try:
        alice = login(peers, address, client_ctx, "alice", identity=alice.identity)
        entered = alice.request(Join(room="#club"))
        assert entered[0] == Entered(
            room="#club", users=("alice",), topic="members only", registered=True, owner="alice"
        )
        assert [(m.text, m.history) for m in entered[1:] if isinstance(m, Message)] == [
            ("kept across a restart", True)
        ]
        for nick in ("bob2", "bobby"):  # the renamed nick, and a second nick of the same key
            peer = login(peers, address, client_ctx, nick, identity=bob_key)
            assert peer.refused(Join(room="#club")).code == "banned"
        assert login(peers, address, client_ctx, "bob").welcome.nick == "bob"  # the old nick is free
    finally:
        for peer in peers:
            peer.close()
        peers.clear()
        process.stop()


def test_caps_per_person_and_per_server_are_refused_with_the_reason(
    start_server: type[Server], client_ctx: ssl.SSLContext, peers: list[Peer]
) -> None:
    server = start_server(max_rooms_per_user=2, max_rooms=3)
    alice = login(peers, server, client_ctx, "alice")
    bob = login(peers, server, client_ctx, "bob")
    alice.request(Join(room="#a"))
    error = alice.refused(Join(room="#b"))
    assert (error.code, error.reason, error.ref) == (
        "quota-exceeded",
        "you are in 2 rooms, the most one person may be in",
        "#b",
    )
    bob.request(Join(room="#x"))
    assert bob.refused(Part(room="#nowhere")).code == "no-such-room"
    bob.request(Part(room="#lobby"))
    error = bob.refused(Join(room="#y"))
    assert (error.code, error.reason) == ("quota-exceeded", "this server has 3 rooms, its most")


def test_a_version_1_client_lives_in_the_lobby_and_never_sees_another_rooms_frames(
    start_server: type[Server], client_ctx: ssl.SSLContext, peers: list[Peer]
) -> None:
    server = start_server(autojoin=("#lobby", "#news"))
    alice = login(peers, server, client_ctx, "alice", identity=Identity.generate("alice"))
    old = Peer(server.address, client_ctx, "oldie", version=1)
    peers.append(old)
    assert (old.welcome.version, old.welcome.room, old.welcome.users) == (1, "#lobby", ("alice", "oldie"))
    alice.request(Join(room="#dev"))
    alice.request(Say(room="#dev", text="not for oldie"))
    alice.request(Say(room="#news", text="nor this"))
    alice.request(SetTopic(room="#lobby", topic="a change v1 has no frame for"))
    alice.request(Say(room="#lobby", text="for everyone"))
    signature = alice.identity.sign(rename_message("alice", "alice2", alice.nonce))  # type: ignore[union-attr]
    alice.request(Rename(nick="alice2", signature=signature))
    seen = old.round_trip()
    assert {f.TYPE for f in seen} <= V1_TYPES
    assert {getattr(f, "room", "#lobby") for f in seen} == {"#lobby"}
    assert texts(seen, "#lobby") == ["for everyone"]
    assert [(type(f).__name__, getattr(f, "nick", "")) for f in seen if isinstance(f, (Left, Joined))][
        -2:
    ] == [
        ("Left", "alice"),
        ("Joined", "alice2"),
    ]
    assert old.refused(Join(room="#dev")).code == "unexpected"  # not in version 1


def test_older_and_newer_clients_are_told_clearly(
    start_server: type[Server], client_ctx: ssl.SSLContext
) -> None:
    server = start_server(autojoin=("#general",))
    for version, reason in (
        (1, "this server has rooms: upgrade your client (protocol version 2)"),
        (max(SUPPORTED_VERSIONS) + 1, "this server speaks protocol versions 1, 2, 3 and 4"),
    ):
        raw = socket.create_connection(server.address, timeout=TIMEOUT)
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            conn = Connection(Role.CLIENT)
            tls.sendall(conn.send(Hello(version=version, nick="someone")))
            while (event := conn.next_event()) is NEED_DATA:
                conn.receive_data(tls.recv(65536))
            assert isinstance(event, Error)
            assert (event.code, event.fatal) == ("unsupported-version", True)
            assert reason in event.reason


def test_a_guest_renames_to_any_free_unregistered_nick(
    server: Server, client_ctx: ssl.SSLContext, peers: list[Peer]
) -> None:
    login(peers, server, client_ctx, "owner", identity=Identity.generate("owner"))
    login(peers, server, client_ctx, "bob")
    guest = login(peers, server, client_ctx, "guest")
    guest.request(Join(room="#side"))
    assert guest.request(Rename(nick="GUEST")) == []  # your own nick: nothing happens
    assert guest.refused(Rename(nick="Bob")).code == "nick-taken"
    assert guest.refused(Rename(nick="owner")).code in ("nick-taken", "nick-registered")
    assert guest.request(Rename(nick="ghost")) == [Renamed(old="guest", new="ghost")]
    assert guest.request(Who(room="#side"))[0].users == ("ghost",)  # type: ignore[attr-defined]
