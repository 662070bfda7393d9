"""The room frames of protocol version 2: wire shape, validation, and fitting one line."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securechat.protocol import (
    EVENT_TYPES,
    MAX_LINE_BYTES,
    MAX_TOPIC_CHARS,
    NEED_DATA,
    Ban,
    BanEntry,
    BanList,
    Bans,
    Code,
    Connection,
    Deop,
    Entered,
    Error,
    Event,
    Hello,
    Invite,
    Invited,
    Join,
    Kick,
    Left,
    ListRooms,
    Names,
    Op,
    Part,
    RegisterRoom,
    RemoteProtocolError,
    Rename,
    Renamed,
    Role,
    RoomChanged,
    RoomEntry,
    Rooms,
    SetMode,
    SetTopic,
    Transfer,
    Unban,
    Welcome,
    decode_line,
    encode,
    fit_rooms,
    fold_room,
    is_pattern,
)
from securechat.protocol.codec import (
    _LONGEST_WELCOME,
    cut_members,
    entered_frames,
    names_frames,
    split_members,
    welcome_users,
)
from securechat.protocol.limits import (
    MAX_BANS_LISTED,
    MAX_MASK_CHARS,
    MAX_NICK_CHARS,
    MAX_PATTERN_CHARS,
    MAX_ROOM_CHARS,
    MAX_ROOMS_LISTED,
    MAX_SHORT_TEXT_CHARS,
)
from securechat.protocol.rooms import Members

ROOM = "#dev"
LONGEST_NICK = "n" * 24

# One of every new frame (and the old ones that gained fields), with every field set.
SAMPLES: list[Event] = [
    Join(room=ROOM),
    Part(room=ROOM, reason="lunch"),
    SetTopic(room=ROOM, topic="release \u2603 friday"),
    SetTopic(room=ROOM, topic=""),
    ListRooms(pattern="#dev*"),
    ListRooms(),
    Invite(room=ROOM, nick="bob"),
    Kick(room=ROOM, nick="bob", reason="spam"),
    Ban(room=ROOM, mask="guest*"),
    Ban(room=ROOM, mask="mallory"),
    Unban(room=ROOM, mask="guest*"),
    Bans(room=ROOM),
    SetMode(room=ROOM, invite_only=True),
    RegisterRoom(room=ROOM),
    Op(room=ROOM, nick="bob"),
    Deop(room=ROOM, nick="bob"),
    Transfer(room=ROOM, nick="bob"),
    Rename(nick="alice2"),
    Rename(nick="alice2", signature=b"s" * 64),
    Entered(
        room=ROOM,
        users=("alice", "bob"),
        away=("bob",),
        topic="t",
        invite_only=True,
        registered=True,
        owner="alice",
        operators=("alice", "bob"),
    ),
    RoomChanged(room=ROOM, nick="alice", what="topic", topic="new", registered=True, owner="alice"),
    Rooms(pattern="*", rooms=(RoomEntry(room="#a", users=3, topic="x"), RoomEntry(room="#b", users=0))),
    Invited(room=ROOM, nick="bob", by="alice"),
    BanList(
        room=ROOM,
        bans=(
            BanEntry(mask="mallory", kind="key", by="alice"),
            BanEntry(mask="g?est*", kind="pattern", by="bob"),
        ),
    ),
    Renamed(old="alice", new="alice2"),
    Welcome(version=2, nick="alice", software="securechat 0.4.0"),
    Names(room=ROOM, users=("alice", "bob"), away=("bob",), owner="alice", operators=("alice",)),
    Left(room=ROOM, nick="bob", reason="spam", by="alice"),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.TYPE)
def test_round_trip(event: Event) -> None:
    frame = encode(event)
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    assert decode_line(frame[:-1]) == event
    assert EVENT_TYPES[event.TYPE] is type(event)


def test_example_lines_from_the_docs() -> None:
    # These are the example lines of docs/protocol.md, "Rooms".
    assert decode_line(b'{"type":"join","room":"#dev"}') == Join(room="#dev")
    assert decode_line(b'{"type":"set_topic","room":"#dev","topic":"release friday"}') == SetTopic(
        room="#dev", topic="release friday"
    )
    assert decode_line(b'{"type":"list","pattern":"#d*"}') == ListRooms(pattern="#d*")
    assert decode_line(b'{"type":"set_mode","room":"#dev","invite_only":true}') == SetMode(
        room="#dev", invite_only=True
    )
    assert encode(Renamed(old="alice", new="alice2")) == b'{"type":"renamed","old":"alice","new":"alice2"}\n'
    assert (
        encode(Left(room="#dev", nick="bob", reason="spam", by="alice"))
        == b'{"type":"left","room":"#dev","nick":"bob","reason":"spam","by":"alice"}\n'
    )
    assert encode(Rooms(pattern="#d*", rooms=(RoomEntry(room="#dev", users=2, topic="release friday"),))) == (
        b'{"type":"rooms","pattern":"#d*","rooms":[{"room":"#dev","users":2,"topic":"release friday"}],'
        b'"truncated":false}\n'
    )


def test_older_frames_without_the_new_fields_still_decode() -> None:
    # A version-1 server's frames lack the fields version 2 added; they take their defaults.
    assert decode_line(b'{"type":"welcome","version":1,"nick":"a"}') == Welcome(version=1, nick="a")
    assert decode_line(b'{"type":"names","users":["a"]}') == Names(users=("a",))
    assert decode_line(b'{"type":"left","nick":"a"}') == Left(nick="a")


def test_rooms_fold_case_insensitively() -> None:
    assert fold_room("#Dev") == fold_room("#DEV") == "#dev"


@pytest.mark.parametrize(
    "room", ["dev", "#", "#" + "r" * (MAX_ROOM_CHARS + 1), "#sp ace", "#caf\u00e9", "##"]
)
@pytest.mark.parametrize(
    "make",
    [
        lambda r: Join(room=r),
        lambda r: Part(room=r),
        lambda r: SetTopic(room=r, topic=""),
        lambda r: Invite(room=r, nick="bob"),
        lambda r: Kick(room=r, nick="bob"),
        lambda r: Ban(room=r, mask="bob"),
        lambda r: Unban(room=r, mask="bob"),
        lambda r: Bans(room=r),
        lambda r: SetMode(room=r, invite_only=False),
        lambda r: RegisterRoom(room=r),
        lambda r: Op(room=r, nick="bob"),
        lambda r: Deop(room=r, nick="bob"),
        lambda r: Transfer(room=r, nick="bob"),
        lambda r: Entered(room=r),
        lambda r: RoomChanged(room=r, nick="a", what="topic"),
        lambda r: RoomEntry(room=r, users=1),
        lambda r: Invited(room=r, nick="a", by="b"),
        lambda r: BanList(room=r),
    ],
)
def test_bad_room_names_are_refused_everywhere(make: object, room: str) -> None:
    assert callable(make)
    with pytest.raises(ValueError, match="room"):
        make(room)


def test_room_names_at_their_longest_pass() -> None:
    Join(room="#" + "r" * MAX_ROOM_CHARS)
    Join(room="#a.b-c_D9")


def test_topics_at_most_256_characters() -> None:
    SetTopic(room=ROOM, topic="t" * MAX_TOPIC_CHARS)
    for make in (
        lambda t: SetTopic(room=ROOM, topic=t),
        lambda t: Entered(room=ROOM, topic=t),
        lambda t: RoomChanged(room=ROOM, nick="a", what="topic", topic=t),
        lambda t: RoomEntry(room=ROOM, users=1, topic=t),
    ):
        with pytest.raises(ValueError, match="topic"):
            make("t" * (MAX_TOPIC_CHARS + 1))
        with pytest.raises(ValueError, match="topic"):
            make("bad \ud800")


def test_too_many_entries_are_refused() -> None:
    entry = RoomEntry(room="#a", users=1)
    Rooms(rooms=(entry,) * MAX_ROOMS_LISTED)
    with pytest.raises(ValueError, match="rooms"):
        Rooms(rooms=(entry,) * (MAX_ROOMS_LISTED + 1))
    ban = BanEntry(mask="bob", kind="key", by="alice")
    BanList(room=ROOM, bans=(ban,) * MAX_BANS_LISTED)
    with pytest.raises(ValueError, match="bans"):
        BanList(room=ROOM, bans=(ban,) * (MAX_BANS_LISTED + 1))


def test_nick_fields_are_nicks() -> None:
    for make in (
        lambda n: Invite(room=ROOM, nick=n),
        lambda n: Kick(room=ROOM, nick=n),
        lambda n: Op(room=ROOM, nick=n),
        lambda n: Deop(room=ROOM, nick=n),
        lambda n: Transfer(room=ROOM, nick=n),
        lambda n: Rename(nick=n),
        lambda n: Renamed(old=n, new="a"),
        lambda n: Renamed(old="a", new=n),
        lambda n: Invited(room=ROOM, nick="a", by=n),
        lambda n: RoomChanged(room=ROOM, nick=n, what="topic"),
        lambda n: Entered(room=ROOM, users=(n,)),
        lambda n: Entered(room=ROOM, away=(n,)),
        lambda n: Entered(room=ROOM, owner=n),
        lambda n: Entered(room=ROOM, operators=(n,)),
        lambda n: Names(away=(n,)),
        lambda n: Names(owner=n),
        lambda n: Names(operators=(n,)),
        lambda n: Left(nick="a", by=n),
        lambda n: BanEntry(mask="a", kind="key", by=n),
    ):
        with pytest.raises(ValueError, match="nick"):
            make("not a nick")


def test_ban_masks() -> None:
    assert is_pattern("guest*") and is_pattern("g?est") and not is_pattern("mallory")
    Ban(room=ROOM, mask="*")
    Ban(room=ROOM, mask="*" * MAX_MASK_CHARS)
    for mask in ("", "*" * (MAX_MASK_CHARS + 1), "a b*", "-dash", ".dot", "al\u0430ce", "x" * 25, "bad#*"):
        with pytest.raises(ValueError, match="mask"):
            Ban(room=ROOM, mask=mask)
        with pytest.raises(ValueError, match="mask"):
            Unban(room=ROOM, mask=mask)
    with pytest.raises(ValueError, match="kind"):
        BanEntry(mask="bob", kind="address", by="alice")
    with pytest.raises(ValueError, match="key ban"):
        BanEntry(mask="bob*", kind="key", by="alice")


def test_list_patterns() -> None:
    ListRooms(pattern="#" + "?" * (MAX_PATTERN_CHARS - 1))
    ListRooms(pattern="*dev*")
    for pattern in ("#" * 2, "a b", "#" + "?" * MAX_PATTERN_CHARS, "d#v", "[a-z]"):
        with pytest.raises(ValueError, match="pattern"):
            ListRooms(pattern=pattern)
        with pytest.raises(ValueError, match="pattern"):
            Rooms(pattern=pattern)
    # Any room can be named exactly by a pattern.
    assert MAX_PATTERN_CHARS >= MAX_ROOM_CHARS + 1


def test_other_field_checks() -> None:
    with pytest.raises(ValueError, match="what"):
        RoomChanged(room=ROOM, nick="a", what="colour")
    with pytest.raises(ValueError, match="users"):
        RoomEntry(room=ROOM, users=-1)
    with pytest.raises(ValueError, match="signature"):
        Rename(nick="a", signature=b"s" * 63)
    with pytest.raises(ValueError, match="reason"):
        Part(room=ROOM, reason="r" * 257)
    with pytest.raises(ValueError, match="reason"):
        Kick(room=ROOM, nick="bob", reason="r" * 257)
    with pytest.raises(ValueError, match="software"):
        Welcome(version=2, nick="a", software="s" * 257)


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":"join"}',
        b'{"type":"join","room":"dev"}',
        b'{"type":"set_topic","room":"#dev"}',
        b'{"type":"set_mode","room":"#dev","invite_only":1}',
        b'{"type":"set_mode","room":"#dev"}',
        b'{"type":"rename","nick":"a","signature":"AAAA"}',
        b'{"type":"rooms","rooms":[{"room":"#a"}]}',
        b'{"type":"rooms","rooms":[{"room":"#a","users":true}]}',
        b'{"type":"rooms","rooms":"#a"}',
        b'{"type":"ban_list","room":"#a","bans":[{"mask":"x","kind":"ip","by":"b"}]}',
        b'{"type":"room_changed","room":"#a","nick":"b","what":"colour"}',
        b'{"type":"left","nick":"a","by":"not a nick"}',
    ],
)
def test_bad_frames_are_invalid_not_fatal(line: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_line(line)
    assert (info.value.code, info.value.fatal) == (Code.INVALID, False)


def test_room_errors_name_the_room_in_ref() -> None:
    for code in (
        Code.NOT_IN_ROOM,
        Code.NOT_OPERATOR,
        Code.INVITE_ONLY,
        Code.BANNED,
        Code.ROOM_REGISTERED,
        Code.NOT_CREATOR,
    ):
        error = Error(code=code, reason="r", ref="#" + "r" * MAX_ROOM_CHARS)
        assert decode_line(encode(error)[:-1]) == error
    assert [Code.NOT_IN_ROOM, Code.NOT_OPERATOR, Code.INVITE_ONLY, Code.BANNED] == [
        "not-in-room",
        "not-operator",
        "invite-only",
        "banned",
    ]
    assert (Code.ROOM_REGISTERED, Code.NOT_CREATOR) == ("room-registered", "not-creator")


def _ready_pair() -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive_data(client.send(Hello(version=2, nick="alice")))
    assert isinstance(server.next_event(), Hello)
    client.receive_data(server.send(Welcome(version=2, nick="alice")))
    assert isinstance(client.next_event(), Welcome)
    return client, server


def _drain(conn: Connection) -> list[Event]:
    out: list[Event] = []
    while isinstance(event := conn.next_event(), Event):
        out.append(event)
    return out


def test_every_frame_fed_one_byte_at_a_time_with_trailing_data() -> None:
    client, server = _ready_pair()
    for event in SAMPLES:
        sender, receiver = (client, server) if Role.CLIENT in event.SENDERS else (server, client)
        # The frame, then the start of the next: the partial tail must wait.
        stream = sender.send(event) + b'{"type":"ping","tok'
        got: list[Event] = []
        for i in range(len(stream)):
            receiver.receive_data(stream[i : i + 1])
            got += _drain(receiver)
        assert got == [event]
        assert receiver.next_event() is NEED_DATA
        receiver.receive_data(b'en":"t"}\n')
        assert len(_drain(receiver)) == 1


def test_room_requests_only_after_the_welcome() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(b'{"type":"hello","version":2,"nick":"alice"}\n{"type":"join","room":"#dev"}\n')
    assert isinstance(conn.next_event(), Hello)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert (info.value.code, info.value.fatal) == (Code.HELLO_REQUIRED, True)
    _, server = _ready_pair()
    server.receive_data(b'{"type":"entered","room":"#dev"}\n')
    with pytest.raises(RemoteProtocolError, match="does not send"):
        server.next_event()


def _longest_entry(i: int) -> RoomEntry:
    # The worst case for a line: a topic of control characters, 6 bytes each in JSON.
    return RoomEntry(room=f"#{i:0{MAX_ROOM_CHARS}d}", users=10**9, topic="\x01" * MAX_TOPIC_CHARS)


def test_fit_rooms_keeps_a_full_list_inside_one_line() -> None:
    entries = [_longest_entry(i) for i in range(MAX_ROOMS_LISTED)]
    frame = fit_rooms("*", entries)
    assert frame.truncated and 0 < len(frame.rooms) < MAX_ROOMS_LISTED
    assert frame.rooms == tuple(entries[: len(frame.rooms)])
    assert len(encode(frame)) - 1 <= MAX_LINE_BYTES
    # One more would not have fitted (the count is at most 2 bytes pessimistic: a
    # comma before the first entry, and "false" for "true").
    bigger = Rooms(pattern="*", rooms=tuple(entries[: len(frame.rooms) + 1]), truncated=True)
    assert len(encode(bigger)) - 1 > MAX_LINE_BYTES - 2


def test_fit_rooms_cuts_at_the_count_and_says_so() -> None:
    small = [RoomEntry(room=f"#r{i}", users=1) for i in range(MAX_ROOMS_LISTED + 1)]
    assert fit_rooms("", small[:MAX_ROOMS_LISTED]) == Rooms(rooms=tuple(small[:MAX_ROOMS_LISTED]))
    cut = fit_rooms("", small)
    assert cut.truncated and cut.rooms == tuple(small[:MAX_ROOMS_LISTED])
    assert fit_rooms("#x*", []) == Rooms(pattern="#x*")
    frame = fit_rooms("", small, max_bytes=200)
    assert frame.truncated and len(encode(frame)) - 1 <= 200


def test_a_full_ban_list_fits_one_line() -> None:
    bans = tuple(
        BanEntry(mask="*" * MAX_MASK_CHARS, kind="pattern", by=LONGEST_NICK) for _ in range(MAX_BANS_LISTED)
    )
    assert len(encode(BanList(room="#" + "r" * MAX_ROOM_CHARS, bans=bans))) - 1 <= MAX_LINE_BYTES


def test_every_example_line_of_the_protocol_doc_decodes() -> None:
    # docs/protocol.md is the contract a client in another language is written from: its
    # example lines must be frames this code accepts, and every frame type must have one.
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
    shown: set[str] = set()
    for block in re.findall(r"```json\n(.*?)```", doc, re.S):
        for line in block.splitlines():
            if "..." in line or "base64 of" in line:  # placeholders for keys and signatures
                shown.update(re.findall(r'^\{"type":"(\w+)"', line))
                continue
            shown.add(decode_line(line.encode()).TYPE)
    assert set(EVENT_TYPES) - shown == set()


# -- member lists longer than a line (issue 14: 5,000 in one room) ------------------

BIG = 5000


def _nicks(count: int, width: int = 16) -> tuple[str, ...]:
    return tuple(f"u{i:0{width - 1}d}" for i in range(count))


def _big_entered(count: int = BIG, **fields: object) -> Entered:
    users = _nicks(count)
    return Entered(room=ROOM, users=users, away=users[::7], topic="t", owner=users[0], **fields)  # type: ignore[arg-type]


def _split(
    event: Entered | Names, max_bytes: int = MAX_LINE_BYTES
) -> tuple[tuple[Members, ...], Entered | Names]:
    """`split_members`, its pages decoded; checks it agrees with `entered_frames` and
    `names_frames`, and that every line fits."""
    pages, last = split_members(event, max_bytes=max_bytes)
    decoded = tuple(decode_line(line) for line in pages.splitlines())
    assert all(isinstance(p, Members) for p in decoded)
    frames = (
        entered_frames(event, max_bytes=max_bytes)
        if isinstance(event, Entered)
        else names_frames(event, max_bytes=max_bytes)
    )
    assert frames == [*(line + b"\n" for line in pages.splitlines()), encode(last)]
    assert all(len(frame) - 1 <= max_bytes for frame in frames)
    return decoded, last  # type: ignore[return-value]


def _joined(pages: tuple[Members, ...], last: Entered | Names) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The member list and away list the pages and the last frame carry together."""
    users = tuple(u for p in pages for u in p.users) + last.users
    away = tuple(a for p in pages for a in p.away) + last.away
    return users, away


def test_an_entered_for_5000_members_as_one_frame_is_refused_by_the_peer() -> None:
    # The problem: one frame with every member is longer than a line the peer accepts.
    client, _ = _ready_pair()
    client.receive_data(encode(_big_entered()))
    with pytest.raises(RemoteProtocolError) as info:
        client.next_event()
    assert (info.value.code, info.value.fatal) == (Code.TOO_LONG, True)


@pytest.mark.parametrize("kind", [Entered, Names])
def test_5000_members_come_in_pages_the_peer_accepts_and_joins(kind: type[Entered] | type[Names]) -> None:
    users = _nicks(BIG)
    event = kind(room=ROOM, users=users, away=users[::7], owner=users[0], operators=users[:3])
    _split(event)
    frames = entered_frames(event) if isinstance(event, Entered) else names_frames(event)  # type: ignore[arg-type]
    assert len(frames) > 1
    client, _ = _ready_pair()
    client.receive_data(b"".join(frames))
    got = _drain(client)
    pages, last = got[:-1], got[-1]
    assert all(isinstance(p, Members) and p.room == ROOM and p.of == event.TYPE for p in pages)
    assert isinstance(last, kind) and last.owner == users[0] and last.operators == users[:3]
    assert _joined(tuple(pages), last) == (users, users[::7])  # type: ignore[arg-type]
    # The last frame and every page but the first as full as a line allows: one member
    # more (the one before it) would not have fitted.
    for frame, before in zip([*pages[1:], last], pages, strict=True):
        assert isinstance(before, Members) and isinstance(frame, (Members, kind))
        fuller = dataclasses.replace(frame, users=(before.users[-1], *frame.users))
        assert len(encode(fuller)) - 1 > MAX_LINE_BYTES - 4


def test_a_list_that_fits_is_one_frame_unchanged() -> None:
    event = _big_entered(100)
    assert split_members(event) == (b"", event)
    assert entered_frames(event) == [encode(event)]
    names = Names(room=ROOM, users=("a", "b"))
    assert names_frames(names) == [encode(names)]


@pytest.mark.parametrize("limit", [300, 1000, 4096])
def test_pages_fit_any_line_limit_with_the_longest_fields(limit: int) -> None:
    users = tuple(f"{i:0{MAX_NICK_CHARS}d}" for i in range(300))
    event = Entered(room="#" + "r" * MAX_ROOM_CHARS, users=users, away=users[1::2], topic="\x01" * 10)
    pages, last = _split(event, max_bytes=limit)
    assert pages and _joined(pages, last) == (users, users[1::2])
    assert last.topic == event.topic


def test_paging_refuses_what_cannot_be_paged() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        # A names frame with no member fits 100 bytes; a page of one away member does not.
        longest = (LONGEST_NICK,)
        split_members(Names(room=ROOM, users=longest, away=longest), max_bytes=100)
    with pytest.raises(ValueError, match="without members"):
        split_members(_big_entered(50), max_bytes=100)
    stray = Entered(room=ROOM, users=_nicks(300), away=("stranger",))
    with pytest.raises(ValueError, match="away"):
        split_members(stray, max_bytes=1000)


def test_a_version_1_peer_is_sent_the_head_of_the_list_that_fits() -> None:
    users = _nicks(BIG)
    names = Names(room=ROOM, users=users, away=users[::7])
    cut = cut_members(names)
    assert 0 < len(cut.users) < BIG and cut.users == users[: len(cut.users)]
    assert cut.away == users[: len(cut.users)][::7]
    assert len(encode(cut)) - 1 <= MAX_LINE_BYTES
    # As many as fit: one more (and its away mark) would not have.
    more = users[: len(cut.users) + 1]
    assert len(encode(dataclasses.replace(names, users=more, away=more[::7]))) - 1 > MAX_LINE_BYTES - 4
    small = Names(room=ROOM, users=users[:10])
    assert cut_members(small) is small


def test_a_welcome_carries_the_users_that_fit_whatever_its_other_fields() -> None:
    users = tuple(f"{i:0{MAX_NICK_CHARS}d}" for i in range(BIG))
    head = welcome_users(users)
    assert 0 < len(head) < BIG and head == users[: len(head)]
    welcome = Welcome(
        version=2,
        nick=LONGEST_NICK,
        room="#" + "r" * MAX_ROOM_CHARS,
        users=head,
        server="\x01" * MAX_SHORT_TEXT_CHARS,
        software="\x01" * MAX_SHORT_TEXT_CHARS,
    )
    assert len(encode(welcome)) - 1 <= MAX_LINE_BYTES
    assert welcome_users(users[:50]) == users[:50]
    assert welcome_users(users, max_bytes=10) == ()


def test_members_frame_wire_shape_and_checks() -> None:
    page = Members(room=ROOM, of="entered", users=("alice", "bob"), away=("bob",))
    line = b'{"type":"members","room":"#dev","of":"entered","users":["alice","bob"],"away":["bob"]}'
    assert encode(page) == line + b"\n" and decode_line(line) == page
    assert decode_line(b'{"type":"members","room":"#dev","of":"names","users":["a"]}') == Members(
        room=ROOM, of="names", users=("a",)
    )
    for bad in (
        {"of": "welcome"},
        {"users": ()},
        {"users": ("-bad",)},
        {"away": ("a", "b", "c")},
        {"room": "dev"},
    ):
        with pytest.raises(ValueError):
            dataclasses.replace(page, **bad)  # type: ignore[arg-type]
    client, server = _ready_pair()
    client.receive_data(server.send(page))
    assert _drain(client) == [page]
    server.receive_data(line + b"\n")
    with pytest.raises(RemoteProtocolError, match="does not send"):
        server.next_event()


@given(st.lists(st.integers(1, MAX_NICK_CHARS), max_size=60), st.integers(0, 1500))
def test_the_head_cut_for_a_welcome_is_the_longest_that_fits(lengths: list[int], spare: int) -> None:
    users = tuple(f"{i:03d}".ljust(n, "x")[:n] if n >= 3 else "abc"[:n] for i, n in enumerate(lengths))
    budget = len(encode(_LONGEST_WELCOME)) - 1 + spare
    head = welcome_users(users, max_bytes=budget)
    fits = len(encode(dataclasses.replace(_LONGEST_WELCOME, users=head))) - 1 <= budget
    assert head == users[: len(head)] and fits
    if len(head) < len(users):  # one more would not have fitted
        more = dataclasses.replace(_LONGEST_WELCOME, users=users[: len(head) + 1])
        assert len(encode(more)) - 1 > budget - 1
