"""Rooms across the nodes of a cluster, over real TLS with hand-driven clients: a room's
settings, its creator, invitations, kicks and bans are the same whichever node a member
is served by, and a node started later learns them. The engines are real (pg_fixtures.py,
redis_server.py); `nodes` is cluster_nodes.py's three nodes."""

from __future__ import annotations

import itertools
import ssl

from cluster_nodes import LEASE, all_subscribed
from conftest import StartServer
from redis_server import RedisServer
from room_peers import Peer, login

from securechat.e2e.identity import Identity
from securechat.protocol import (
    Ban,
    Entered,
    Invite,
    Invited,
    Join,
    Joined,
    Kick,
    Left,
    Message,
    Op,
    Part,
    RegisterRoom,
    RoomChanged,
    Say,
    SetMode,
    SetTopic,
)
from securechat.server import Server


def settle(by: Peer, *others: Peer) -> None:
    """Wait until the nodes of `others` have had everything `by`'s node published so far:
    `by` says a line in #lobby and each of `others` sees it. One node's batches reach
    every node in the order published (one Redis channel), so whatever its node sent
    before the line was handled by theirs before it."""
    token = f"settle {id(by)} {next(_SETTLES)}"
    by.send(Say(room="#lobby", text=token))
    for peer in (by, *others):
        peer.expect(Message, room="#lobby", text=token)


_SETTLES = itertools.count()


def enter(peer: Peer, room: str) -> Entered:
    """Join `room`; what the server answered (other frames may come first)."""
    peer.send(Join(room=room))
    return peer.expect(Entered, room=room)


def test_a_registered_rooms_settings_invitations_kicks_and_bans_hold_on_every_node(
    nodes: list[Server], client_ctx: ssl.SSLContext, peers: list[Peer]
) -> None:
    all_subscribed(nodes)
    alice = login(peers, nodes[0], client_ctx, "alice", identity=Identity.generate("alice"))
    bob = login(peers, nodes[1], client_ctx, "bob", identity=Identity.generate("bob"))
    guest = login(peers, nodes[2], client_ctx, "guest1")
    alice.request(Join(room="#ops"))
    settle(alice, bob, guest)
    entered = enter(bob, "#ops")
    assert set(entered.users) == {"alice", "bob"}
    # The room is alice's creation on every node: bob, first in it on his node, is not its creator.
    assert bob.refused(RegisterRoom(room="#ops")).code == "not-creator"

    alice.request(RegisterRoom(room="#ops"))
    # Its owner is named on bob's node, though served by another.
    assert bob.expect(RoomChanged, room="#ops", what="registered").owner == "alice"
    alice.request(SetTopic(room="#ops", topic="ops only"))
    assert bob.expect(RoomChanged, room="#ops", what="topic").topic == "ops only"
    # Only the owner and operators may, on bob's node too.
    assert bob.refused(SetTopic(room="#ops", topic="mine")).code == "not-operator"

    alice.request(SetMode(room="#ops", invite_only=True))
    bob.expect(RoomChanged, room="#ops", what="invite_only")
    settle(alice, guest)
    assert guest.refused(Join(room="#ops")).code == "invite-only"  # on a third node
    # An invitation made on one node lets the guest in on another.
    assert Invited(room="#ops", nick="guest1", by="alice") in alice.request(
        Invite(room="#ops", nick="guest1")
    )
    assert guest.expect(Invited, room="#ops").by == "alice"
    entered = enter(guest, "#ops")
    assert (entered.topic, entered.invite_only, entered.owner) == ("ops only", True, "alice")
    alice.expect(Joined, room="#ops", nick="guest1")
    settle(guest, bob)

    # An operator named on one node acts on a member served by another.
    alice.send(Op(room="#ops", nick="bob"))
    assert bob.expect(RoomChanged, room="#ops", what="operators").operators == ("bob",)
    assert alice.expect(RoomChanged, room="#ops", what="operators").operators == ("bob",)
    bob.request(Kick(room="#ops", nick="guest1", reason="out"))
    assert guest.expect(Left, room="#ops") == Left(room="#ops", nick="guest1", reason="out", by="bob")
    assert alice.expect(Left, room="#ops", nick="guest1").by == "bob"
    # The owner cannot be kicked, wherever the owner is served.
    assert bob.refused(Kick(room="#ops", nick="alice")).code == "not-operator"

    # A ban made on one node puts out, and keeps out, a member served by another.
    alice.request(Invite(room="#ops", nick="guest1"))
    guest.expect(Invited, room="#ops")
    guest.request(Join(room="#ops"))
    bob.expect(Joined, room="#ops", nick="guest1")
    alice.request(Ban(room="#ops", mask="guest*"))
    put_out = guest.expect(Left, room="#ops", nick="guest1")
    assert (put_out.by, put_out.reason) == ("alice", "banned")
    assert bob.expect(Left, room="#ops", nick="guest1").reason == "banned"
    alice.request(Invite(room="#ops", nick="guest1"))
    assert guest.refused(Join(room="#ops")).code == "banned"


def test_an_unregistered_rooms_topic_and_creator_hold_across_nodes_and_end_with_it(
    nodes: list[Server], client_ctx: ssl.SSLContext, peers: list[Peer]
) -> None:
    all_subscribed(nodes)
    ann = login(peers, nodes[0], client_ctx, "ann", identity=Identity.generate("ann"))
    ben = login(peers, nodes[1], client_ctx, "ben", identity=Identity.generate("ben"))
    ann.request(Join(room="#chat"))
    ann.request(SetTopic(room="#chat", topic="anything goes"))
    settle(ann, ben)
    entered = enter(ben, "#chat")
    assert entered.topic == "anything goes"
    assert ben.refused(RegisterRoom(room="#chat")).code == "not-creator"
    ben.request(SetTopic(room="#chat", topic="changed on node 1"))
    assert ann.expect(RoomChanged, room="#chat").topic == "changed on node 1"
    # Once everyone has left, on every node, the room is gone with its settings: the
    # next to enter makes a new one, of which they are the creator.
    ann.request(Join(room="#lobby"))
    ann.request(Part(room="#chat"))
    ben.expect(Left, room="#chat", nick="ann")
    ben.request(Part(room="#chat"))
    settle(ben, ann)
    entered = enter(ann, "#chat")
    assert entered.topic == ""
    ann.send(RegisterRoom(room="#chat"))
    assert ann.expect(RoomChanged, room="#chat", what="registered").owner == "ann"


def test_a_node_started_later_knows_the_rooms_settings(
    pg_dsn: str,
    redis_server: RedisServer,
    start_server: StartServer,
    client_ctx: ssl.SSLContext,
    peers: list[Peer],
) -> None:
    first = start_server(store=pg_dsn, cluster=redis_server.url, node_lease=LEASE)
    all_subscribed([first])
    ann = login(peers, first, client_ctx, "ann", identity=Identity.generate("ann"))
    ann.request(Join(room="#plain"))
    ann.send(SetTopic(room="#plain", topic="set before the node started"))
    ann.expect(RoomChanged, room="#plain", what="topic")  # back from Redis: kept there
    ann.request(Join(room="#kept"))
    ann.request(RegisterRoom(room="#kept"))
    ann.send(SetMode(room="#kept", invite_only=True))
    ann.expect(RoomChanged, room="#kept", what="invite_only")
    later = start_server(store=pg_dsn, cluster=redis_server.url, node_lease=LEASE)
    all_subscribed([later])
    guest = login(peers, later, client_ctx, "guest7")
    entered = enter(guest, "#plain")
    assert entered.topic == "set before the node started"
    assert guest.refused(Join(room="#kept")).code == "invite-only"


def test_a_newcomer_on_another_node_is_shown_the_rooms_recent_lines(
    nodes: list[Server], client_ctx: ssl.SSLContext, peers: list[Peer]
) -> None:
    all_subscribed(nodes)
    ann = login(peers, nodes[0], client_ctx, "ann")
    ben = login(peers, nodes[1], client_ctx, "ben")
    ann.request(Join(room="#talk"))
    for n in range(3):
        ann.send(Say(room="#talk", text=f"line {n}"))
    ann.expect(Message, room="#talk", text="line 2")  # back from Redis: every node has had it
    settle(ann, ben)
    ben.send(Join(room="#talk"))
    ben.expect(Entered, room="#talk")
    shown = [ben.expect(Message, room="#talk") for _ in range(3)]
    assert [(m.text, m.history) for m in shown] == [(f"line {n}", True) for n in range(3)]
    # Gone with the room: once its last member anywhere left, a new #talk has none.
    ann.request(Part(room="#talk"))
    ben.request(Part(room="#talk"))
    settle(ben, ann)
    frames = ann.request(Join(room="#talk"))
    assert [f for f in frames if isinstance(f, Message) and f.room == "#talk"] == []
