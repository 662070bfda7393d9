from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securechat.protocol import (
    BAN_KINDS,
    EVENT_TYPES,
    ROOM_CHANGES,
    Ack,
    Auth,
    Away,
    Ban,
    BanEntry,
    BanList,
    Bans,
    Bye,
    Challenge,
    Code,
    Delivery,
    Deop,
    DeviceKeys,
    DeviceListRecord,
    DeviceRecord,
    Devices,
    Entered,
    Error,
    Event,
    FetchKeys,
    Hello,
    Invite,
    Invited,
    Join,
    Joined,
    KeyIdentity,
    Keys,
    Kick,
    Left,
    Link,
    ListRooms,
    Message,
    Names,
    OneTimePrekeyRecord,
    Op,
    Part,
    Ping,
    Pong,
    PrekeyCount,
    ProtocolError,
    PublishDevices,
    PublishKeys,
    Quit,
    RegisterRoom,
    RemoteProtocolError,
    Rename,
    Renamed,
    RoomChanged,
    RoomEntry,
    Rooms,
    Say,
    SetMode,
    SetTopic,
    SignedPrekeyRecord,
    Transfer,
    Unban,
    Welcome,
    Whisper,
    WhisperStatus,
    Who,
    decode_line,
    encode,
)
from securechat.protocol.codec import entered_frames, names_frames, split_members
from securechat.protocol.devices import LINK_STEPS
from securechat.protocol.rooms import PAGED_FRAMES, Members

nicks = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,23}", fullmatch=True)
rooms = st.from_regex(r"#[A-Za-z0-9_.\-]{1,32}", fullmatch=True)
texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300)
short = st.text(st.characters(blacklist_categories=("Cs",)), max_size=64)

b32 = st.binary(min_size=32, max_size=32)
b64 = st.binary(min_size=64, max_size=64)
blobs = st.binary(min_size=1, max_size=300)
ids = st.from_regex(r"[A-Za-z0-9_\-]{1,64}", fullmatch=True)
key_ids = st.integers(1, 2**63 - 1)
identities = st.builds(KeyIdentity, sig_key=b32, dh_key=b32, dh_sig=b64)
spks = st.builds(SignedPrekeyRecord, id=key_ids, created=st.integers(0, 2**40), public=b32, signature=b64)
opks = st.builds(OneTimePrekeyRecord, id=key_ids, public=b32, signature=b64)
nick_lists = st.lists(nicks, max_size=5).map(tuple)
topics = st.text(st.characters(blacklist_categories=("Cs",)), max_size=256)
patterns = st.from_regex(r"#?[A-Za-z0-9_.\-*?]{0,63}", fullmatch=True)
globs = st.from_regex(r"[A-Za-z0-9_.\-]{0,15}[*?][A-Za-z0-9_.\-*?]{0,15}", fullmatch=True)
masks = st.one_of(nicks, globs)
devices_ids = st.from_regex(r"[a-z0-9_\-]{1,32}", fullmatch=True)
device_lists = st.builds(
    DeviceListRecord,
    version=key_ids,
    devices=st.lists(st.builds(DeviceRecord, device=devices_ids, key=b32), min_size=1, max_size=3).map(tuple),
    signature=b64,
)
room_states = {
    "topic": topics,
    "invite_only": st.booleans(),
    "registered": st.booleans(),
    "owner": st.one_of(st.just(""), nicks),
    "operators": nick_lists,
}

events: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        Hello,
        version=st.integers(1, 2**31),
        nick=nicks,
        client=short,
        identity=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
    ),
    st.builds(
        Welcome,
        version=st.integers(1, 9),
        nick=nicks,
        room=rooms,
        users=st.lists(nicks, max_size=5).map(tuple),
        server=short,
        software=short,
    ),
    st.builds(Say, room=rooms, text=texts),
    st.builds(
        Message, room=rooms, nick=nicks, text=texts, ts=st.floats(allow_nan=False, allow_infinity=False)
    ),
    st.builds(Who, room=rooms),
    st.builds(
        Names,
        room=rooms,
        users=nick_lists,
        away=nick_lists,
        owner=st.one_of(st.just(""), nicks),
        operators=nick_lists,
    ),
    st.builds(Joined, room=rooms, nick=nicks),
    st.builds(Left, room=rooms, nick=nicks, reason=short, by=st.one_of(st.just(""), nicks)),
    st.builds(Ping, token=short),
    st.builds(Pong, token=short),
    st.builds(Quit, reason=short),
    st.builds(Bye, reason=short),
    st.builds(
        Error,
        code=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20),
        reason=short,
        fatal=st.booleans(),
        ref=short,
    ),
    st.builds(Challenge, nonce=b32),
    st.builds(Auth, signature=b64),
    st.builds(
        PublishKeys,
        identity=identities,
        spk=spks,
        opks=st.lists(opks, max_size=3, unique_by=lambda o: o.id).map(tuple),
    ),
    st.builds(
        PrekeyCount,
        count=st.integers(0, 500),
        spk_id=st.integers(0, 2**40),
        spk_created=st.integers(0, 2**40),
    ),
    st.builds(FetchKeys, nick=nicks, ref=short),
    st.builds(
        Keys,
        nick=nicks,
        identity=identities,
        spk=spks,
        opks=st.lists(opks, max_size=1).map(tuple),
        ref=short,
        devices=st.lists(device_lists, max_size=1).map(tuple),
        device=st.one_of(st.just(""), devices_ids),
        others=st.lists(
            st.builds(DeviceKeys, device=devices_ids, identity=identities, spk=spks), max_size=2
        ).map(tuple),
    ),
    st.builds(
        Whisper, to=nicks, id=ids, header=blobs, ciphertext=blobs, device=st.one_of(st.just(""), devices_ids)
    ),
    st.builds(
        WhisperStatus,
        id=ids,
        to=nicks,
        status=st.sampled_from(["stored", "delivered"]),
        away=short,
        device=st.one_of(st.just(""), devices_ids),
    ),
    st.builds(PublishDevices, devices=device_lists),
    st.builds(Devices, nick=nicks, devices=device_lists),
    st.builds(
        Link,
        peer=nicks,
        pairing=ids,
        step=st.sampled_from(sorted(LINK_STEPS)),
        data=st.binary(max_size=100),
    ),
    st.builds(
        Delivery,
        id=ids,
        msg_id=ids,
        sender=nicks,
        header=blobs,
        ciphertext=blobs,
        ts=st.floats(allow_nan=False, allow_infinity=False),
        device=st.one_of(st.just(""), devices_ids),
    ),
    st.builds(Ack, id=ids),
    st.builds(Away, message=short),
    st.builds(Join, room=rooms),
    st.builds(Part, room=rooms, reason=short),
    st.builds(SetTopic, room=rooms, topic=topics),
    st.builds(ListRooms, pattern=patterns),
    st.builds(Invite, room=rooms, nick=nicks),
    st.builds(Kick, room=rooms, nick=nicks, reason=short),
    st.builds(Ban, room=rooms, mask=masks),
    st.builds(Unban, room=rooms, mask=masks),
    st.builds(Bans, room=rooms),
    st.builds(SetMode, room=rooms, invite_only=st.booleans()),
    st.builds(RegisterRoom, room=rooms),
    st.builds(Op, room=rooms, nick=nicks),
    st.builds(Deop, room=rooms, nick=nicks),
    st.builds(Transfer, room=rooms, nick=nicks),
    st.builds(Rename, nick=nicks, signature=st.one_of(st.just(b""), b64)),
    st.builds(Entered, room=rooms, users=nick_lists, away=nick_lists, **room_states),
    st.builds(RoomChanged, room=rooms, nick=nicks, what=st.sampled_from(sorted(ROOM_CHANGES)), **room_states),
    st.builds(
        Rooms,
        pattern=patterns,
        rooms=st.lists(
            st.builds(RoomEntry, room=rooms, users=st.integers(0, 10**6), topic=topics), max_size=4
        ).map(tuple),
        truncated=st.booleans(),
    ),
    st.builds(Invited, room=rooms, nick=nicks, by=nicks),
    st.builds(
        BanList,
        room=rooms,
        bans=st.lists(
            st.one_of(
                st.builds(BanEntry, mask=nicks, kind=st.sampled_from(sorted(BAN_KINDS)), by=nicks),
                st.builds(BanEntry, mask=globs, kind=st.just("pattern"), by=nicks),
            ),
            max_size=4,
        ).map(tuple),
    ),
    st.builds(Renamed, old=nicks, new=nicks),
)

STRATEGY_CLASSES = [
    Hello,
    Welcome,
    Say,
    Message,
    Who,
    Names,
    Joined,
    Left,
    Ping,
    Pong,
    Quit,
    Bye,
    Error,
    Challenge,
    Auth,
    PublishKeys,
    PrekeyCount,
    FetchKeys,
    Keys,
    Whisper,
    WhisperStatus,
    Delivery,
    Ack,
    Away,
    Join,
    Part,
    SetTopic,
    ListRooms,
    Invite,
    Kick,
    Ban,
    Unban,
    Bans,
    SetMode,
    RegisterRoom,
    Op,
    Deop,
    Transfer,
    Rename,
    Entered,
    RoomChanged,
    Rooms,
    Invited,
    BanList,
    Renamed,
    PublishDevices,
    Devices,
    Link,
]


def test_every_event_type_is_covered_by_the_strategy() -> None:
    assert set(EVENT_TYPES) == {
        "hello",
        "welcome",
        "say",
        "message",
        "who",
        "names",
        "joined",
        "left",
        "ping",
        "pong",
        "quit",
        "bye",
        "error",
        "challenge",
        "auth",
        "publish_keys",
        "prekey_count",
        "fetch_keys",
        "keys",
        "whisper",
        "whisper_status",
        "delivery",
        "ack",
        "away",
        "join",
        "part",
        "set_topic",
        "list",
        "invite",
        "kick",
        "ban",
        "unban",
        "bans",
        "set_mode",
        "register_room",
        "op",
        "deop",
        "transfer",
        "rename",
        "entered",
        "room_changed",
        "rooms",
        "invited",
        "ban_list",
        "renamed",
        "publish_devices",
        "devices",
        "link",
    }
    assert set(EVENT_TYPES) == {cls.TYPE for cls in STRATEGY_CLASSES}


@given(events)
def test_encode_then_decode_is_identity(event: Event) -> None:
    frame = encode(event)
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    assert decode_line(frame[:-1]) == event


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_line(data)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "text",
                "nick",
                "room",
                "version",
                "users",
                "ts",
                "x",
                "pattern",
                "mask",
                "topic",
                "rooms",
                "bans",
                "what",
                "invite_only",
                "signature",
                "by",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=5),
            st.lists(st.text(max_size=3), max_size=3),
            st.lists(
                st.dictionaries(st.sampled_from(["room", "users", "mask", "kind"]), st.text(max_size=3)),
                max_size=3,
            ),
        ),
        max_size=6,
    ),
    st.sampled_from(sorted(EVENT_TYPES)),
)
def test_arbitrary_objects_of_known_types_raise_only_protocol_errors(
    obj: dict[str, object], kind: str
) -> None:
    obj["type"] = kind
    with contextlib.suppress(ProtocolError):
        decode_line(json.dumps(obj).encode())


def test_example_frames_from_the_spec() -> None:
    assert decode_line(b'{"type":"hello","version":1,"nick":"alice"}') == Hello(version=1, nick="alice")
    assert decode_line(b'{"type":"say","room":"#lobby","text":"hi"}') == Say(text="hi")
    assert encode(Joined(nick="bob")) == b'{"type":"joined","room":"#lobby","nick":"bob"}\n'


def test_unicode_is_sent_as_utf8_not_escaped() -> None:
    assert "h\u00e9llo \u2603".encode() in encode(Say(text="h\u00e9llo \u2603"))


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert decode_line(b'{"type":"ping","token":"t","future":1}') == Ping(token="t")


@pytest.mark.parametrize(
    ("line", "code", "fatal"),
    [
        (b"\xff\xfe", Code.BAD_UTF8, True),
        (b"not json", Code.BAD_JSON, True),
        (b'{"type":"say","text":NaN}', Code.BAD_JSON, True),
        (b"[" * 100_000 + b"]" * 100_000, Code.BAD_JSON, True),
        (b'{"type":"say","text":' + b"9" * 5000 + b"}", Code.BAD_JSON, True),
        (b"[1,2]", Code.BAD_FRAME, True),
        (b'{"text":"hi"}', Code.BAD_FRAME, True),
        (b'{"type":7}', Code.BAD_FRAME, True),
        (b'{"type":"teleport"}', Code.UNKNOWN_TYPE, False),
        (b'{"type":"say"}', Code.INVALID, False),
        (b'{"type":"say","text":5}', Code.INVALID, False),
        (b'{"type":"hello","version":true,"nick":"a"}', Code.INVALID, False),
        (b'{"type":"hello","version":1,"nick":"bad nick"}', Code.INVALID, False),
        (b'{"type":"names","users":["a",1]}', Code.INVALID, False),
        (b'{"type":"message","nick":"a","text":"t","ts":1e400}', Code.INVALID, False),
        (b'{"type":"say","text":"\\ud800"}', Code.INVALID, False),
        (b'{"type":"challenge","nonce":"not base64!"}', Code.INVALID, False),
        (b'{"type":"challenge","nonce":"AAAA"}', Code.INVALID, False),
        (b'{"type":"publish_keys","identity":"x","spk":{}}', Code.INVALID, False),
        (
            b'{"type":"whisper","to":"bob","id":"a b","header":"AA==","ciphertext":"AA=="}',
            Code.INVALID,
            False,
        ),
    ],
)
def test_bad_frames(line: bytes, code: str, fatal: bool) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_line(line)
    assert (info.value.code, info.value.fatal) == (code, fatal)


# -- member lists in pages (split_members) -------------------------------------------

members_pages = st.builds(
    Members,
    room=rooms,
    of=st.sampled_from(sorted(PAGED_FRAMES)),
    users=nick_lists.filter(bool),
    away=st.just(()),
)


@given(members_pages)
def test_members_pages_round_trip(page: Members) -> None:
    assert decode_line(encode(page)[:-1]) == page


@given(
    st.sampled_from([Entered, Names]),
    rooms,
    st.lists(nicks, max_size=120, unique_by=str.lower),
    st.data(),
    st.integers(0, 1500),
)
def test_split_members_carries_every_member_in_lines_that_fit(
    kind: type[Entered] | type[Names], room: str, users: list[str], data: st.DataObject, spare: int
) -> None:
    away = tuple(data.draw(st.lists(st.sampled_from(users), unique=True)) if users else [])
    away = tuple(u for u in users if u in away)  # in the list's order, as a server sends it
    event = kind(room=room, users=tuple(users), away=away, operators=tuple(users[:2]))
    # Room for the frame without members and one page of one away member at its longest.
    limit = max(len(encode(kind(room=room, operators=tuple(users[:2])))), 2 * 27 + 140) + spare
    frames = (entered_frames if kind is Entered else names_frames)(event, max_bytes=limit)  # type: ignore[operator]
    assert all(len(frame) - 1 <= limit for frame in frames)
    decoded = [decode_line(frame[:-1]) for frame in frames]
    *pages, last = decoded
    assert all(isinstance(p, Members) and p.room == room and p.of == kind.TYPE for p in pages)
    assert isinstance(last, kind)
    assert tuple(u for p in pages for u in p.users) + last.users == event.users  # type: ignore[attr-defined]
    assert tuple(a for p in pages for a in p.away) + last.away == event.away  # type: ignore[attr-defined]
    assert dataclasses.replace(last, users=(), away=()) == dataclasses.replace(event, users=(), away=())
    pages_bytes, tail = split_members(event, max_bytes=limit)
    assert pages_bytes == b"".join(frames[:-1]) and encode(tail) == frames[-1]
