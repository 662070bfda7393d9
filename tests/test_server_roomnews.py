"""roomnews.py: a room's shared state and kicks as the nodes of a cluster send them, and
what a node refuses to read."""

from __future__ import annotations

import pytest

from securechat.server.roomnews import BAN, NewsKind, RoomNews, SharedState, held_name, held_of
from securechat.server.rooms import Ban, BanKind, Room


def full_room() -> Room:
    room = Room(name="#Ops", creator=b"\x01" * 32, topic="t\u00e9pic", invite_only=True, owner=b"\x01" * 32)
    room.operators = {b"\x02" * 32, b"\x03" * 32}
    room.bans = [
        Ban(BanKind.KEY, b"\x04" * 32, "mallory", "alice"),
        Ban(BanKind.PATTERN, "guest*", "Guest*", "bob"),
    ]
    room.invites = {b"\x05" * 32: 1000.5, "guest9": 2000.0}
    return room


def test_a_state_with_every_field_comes_back_as_it_was_sent() -> None:
    state = SharedState.of(full_room())
    news = RoomNews(NewsKind.STATE, by="alice", what=BAN, state=state)
    assert RoomNews.decode(news.encode()) == news


def test_applying_a_state_gives_a_room_its_settings_and_invitations_not_its_members() -> None:
    source = full_room()
    other = Room(name="#ops", members={"zed": "Zed"})
    SharedState.of(source).apply(other)
    assert (other.creator, other.topic, other.invite_only, other.owner) == (
        source.creator,
        source.topic,
        source.invite_only,
        source.owner,
    )
    assert (
        other.operators == source.operators and other.bans == source.bans and other.invites == source.invites
    )
    assert other.members == {"zed": "Zed"}
    # The copy is the room's own: changing the source changes nothing there.
    source.bans.clear()
    source.invites.clear()
    assert len(other.bans) == 2 and len(other.invites) == 2


def test_a_kick_carries_who_whom_and_why() -> None:
    news = RoomNews(NewsKind.KICK, by="bob", target="guest1", reason="out")
    assert RoomNews.decode(news.encode()) == news


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"kind": "steal"}',
        b'{"kind": "state"}',  # a state without its state
        b'{"kind": "kick", "what": "everything"}',  # an unknown change
        b'{"kind": "kick", "by": 7}',
        b'{"kind": "state", "state": {"name": "#a"}}',
        b'{"kind": "state", "state": {"name": "#a", "creator": "zz", "topic": "", "invite_only": false,'
        b' "owner": "", "operators": [], "bans": [], "invites": []}}',  # not hex
        b'{"kind": "state", "state": {"name": "#a", "creator": "", "topic": "", "invite_only": "yes",'
        b' "owner": "", "operators": [], "bans": [], "invites": []}}',
        b'{"kind": "state", "state": {"name": "#a", "creator": "", "topic": "", "invite_only": false,'
        b' "owner": "", "operators": [], "bans": [["nick", "x", "x", "y"]], "invites": []}}',
        b'{"kind": "state", "state": {"name": "#a", "creator": "", "topic": "", "invite_only": false,'
        b' "owner": "", "operators": [], "bans": [], "invites": [["key", "00", "soon"]]}}',
        b'{"kind": "state", "state": {"name": "#a", "creator": "", "topic": "", "invite_only": false,'
        b' "owner": "", "operators": [], "bans": [["key"]], "invites": []}}',
    ],
)
def test_anything_else_is_refused_as_not_room_news(data: bytes) -> None:
    with pytest.raises(ValueError, match="not room news"):
        RoomNews.decode(data)


def test_an_ended_invitation_names_its_holder_a_key_or_a_guest() -> None:
    for held in (b"\x07" * 32, "guest9"):
        news = RoomNews(NewsKind.UNINVITE, target=held_name(held))
        assert held_of(RoomNews.decode(news.encode()).target) == held
    with pytest.raises(ValueError, match="not room news"):
        RoomNews.decode(b'{"kind": "uninvite", "target": "nobody"}')


def test_a_state_without_an_invitation_keeps_the_others() -> None:
    state = SharedState.of(full_room())
    assert dict(state.without("guest9").invites) == {b"\x05" * 32: 1000.5}
    assert dict(state.without(b"\x05" * 32).invites) == {"guest9": 2000.0}
