"""Events to JSON lines and back, with strict field types.

`encode` never fails for a valid event. `decode_line` raises `RemoteProtocolError`
for anything that is not a well-formed frame of a known type; it never raises
anything else, whatever the bytes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import typing
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import MISSING, fields
from itertools import accumulate, compress, repeat
from operator import add, mul
from typing import TypeVar

from .errors import Code, RemoteProtocolError
from .events import Event, Names, Record, Welcome
from .limits import (
    MAX_LINE_BYTES,
    MAX_NICK_CHARS,
    MAX_ROOM_CHARS,
    MAX_ROOMS_LISTED,
    MAX_SHORT_TEXT_CHARS,
    SUPPORTED_VERSIONS,
)
from .registry import EVENT_TYPES
from .rooms import Entered, Members, RoomEntry, Rooms

__all__ = [
    "cut_members",
    "decode_line",
    "encode",
    "entered_frames",
    "fit_rooms",
    "names_frames",
    "split_members",
    "welcome_users",
]

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(event: Event) -> bytes:
    """The frame for `event`: one JSON object in UTF-8, terminated by `\\n`."""
    return (_ENCODER.encode(event.to_dict()) + "\n").encode("utf-8")


def fit_rooms(pattern: str, rooms: Iterable[RoomEntry], *, max_bytes: int = MAX_LINE_BYTES) -> Rooms:
    """The `rooms` answer to a `list` for `pattern`, carrying `rooms` in the order given
    for as long as they fit: at most `MAX_ROOMS_LISTED` of them, in a frame of at most
    `max_bytes` bytes (newline excluded; the peer's line limit). `truncated` says some
    were left out.

    500 rooms with long topics would not fit one line; cutting here, where the encoding
    is known, keeps every answer a line the peer accepts.
    """
    # Counted with truncated=false, the longer of the two, and a comma for every entry:
    # the sum is never less than the frame's real length.
    size = len(encode(Rooms(pattern=pattern))) - 1
    taken: list[RoomEntry] = []
    truncated = False
    for entry in rooms:
        size += len(_ENCODER.encode(entry.to_dict()).encode("utf-8")) + 1
        if len(taken) == MAX_ROOMS_LISTED or size > max_bytes:
            truncated = True
            break
        taken.append(entry)
    return Rooms(pattern=pattern, rooms=tuple(taken), truncated=truncated)


_Paged = TypeVar("_Paged", Entered, Names)

# How a member list is measured without encoding it: a nick is ASCII with no character
# JSON escapes (events.is_valid_nick), so in a list it costs its length, two quotes and
# a comma. Counting a comma for every entry (one more than the list has) keeps each sum
# at least the real length, as in `fit_rooms`.
_PER_NICK = 3


def _list_bytes(nicks: tuple[str, ...]) -> int:
    return sum(map(len, nicks)) + _PER_NICK * len(nicks)  # C-level: no loop in Python


def _with_members(fields: dict[str, object], users: tuple[str, ...], away: tuple[str, ...]) -> bytes:
    """The frame `fields` (a frame's `to_dict()`, whose `users` and `away` follow one
    another) with these members, encoded exactly as `encode` would.

    The lists are joined as text, not encoded member by member: a valid nick is ASCII
    that JSON never escapes, so quoting it is all its encoding does. At 5,000 members
    this is a tenth of what encoding the lists cost, and that was most of the frame's.
    """
    keys = list(fields)
    at = keys.index("users")
    head = _ENCODER.encode({k: fields[k] for k in keys[:at]})
    rest = _ENCODER.encode({k: fields[k] for k in keys[at + 2 :]})
    return "".join(
        (
            head[:-1],
            ',"users":[',
            _quoted(users),
            '],"away":[',
            _quoted(away),
            "]",
            "}" if rest == "{}" else "," + rest[1:],
            "\n",
        )
    ).encode("utf-8")


def _quoted(nicks: tuple[str, ...]) -> str:
    return '"' + '","'.join(nicks) + '"' if nicks else ""


def _cut(event: Entered | Names, max_bytes: int) -> tuple[list[tuple[int, int]], int, frozenset[str]]:
    """Where `event`'s member list is cut: the (start, end) of each page, the start of
    what the last frame (`event` itself) keeps, and the away members as a set."""
    users, away = event.users, event.away
    base = len(encode(dataclasses.replace(event, users=(), away=()))) - 1
    if base + _list_bytes(users) + _list_bytes(away) <= max_bytes:
        return [], 0, frozenset(away)
    if base > max_bytes:
        raise ValueError(f"{event.TYPE} without members is longer than {max_bytes} bytes")
    away_set = frozenset(away)
    # Each member's cost, twice for an away member (it is listed twice), with iterators
    # of C functions only: no Python code runs per member.
    costs = map(add, map(len, users), repeat(_PER_NICK))
    if away_set:
        costs = map(mul, costs, map(add, map(away_set.__contains__, users), repeat(1)))
    prefix = list(accumulate(costs))  # prefix[i]: the cost of users[: i + 1]
    # The last frame takes the longest tail that fits it: users[tail:].
    tail = bisect_left(prefix, prefix[-1] - (max_bytes - base)) + 1
    # A page without members (as `base` is counted): one of "x" less the 3 bytes of "x".
    page = max_bytes - (len(encode(Members(room=event.room, of=event.TYPE, users=("x",)))) - 1 - 3)
    pages: list[tuple[int, int]] = []
    start, spent = 0, 0
    while start < tail:
        end = bisect_right(prefix, spent + page, start, tail)
        if end == start:
            raise ValueError(f"a member does not fit a page of {max_bytes} bytes")
        pages.append((start, end))
        start, spent = end, prefix[end - 1]
    return pages, tail, away_set


def _among(nicks: tuple[str, ...], chosen: frozenset[str]) -> tuple[str, ...]:
    """Those of `nicks` in `chosen`, in order."""
    if not chosen:
        return ()
    return tuple(compress(nicks, map(chosen.__contains__, nicks)))


def _page_frames(event: Entered | Names, max_bytes: int) -> tuple[list[bytes], int, frozenset[str]]:
    """The encoded `members` pages that go before `event`, where its own part starts,
    and its away members as a set. Raises `ValueError` as `split_members` says."""
    pages, tail, away_set = _cut(event, max_bytes)
    template = Members(room=event.room, of=event.TYPE, users=("x",)).to_dict()
    frames: list[bytes] = []
    placed = 0
    for start, end in pages:
        chunk = event.users[start:end]
        among = _among(chunk, away_set)
        placed += len(among)
        frames.append(_with_members(template, chunk, among))
    if away_set and placed + len(_among(event.users[tail:], away_set)) != len(event.away):
        raise ValueError("away: must name members of users, each once")
    return frames, tail, away_set


def split_members(event: _Paged, *, max_bytes: int = MAX_LINE_BYTES) -> tuple[bytes, _Paged]:
    """`event` (an `entered` or a `names`) as lines the peer accepts: the encoded
    `members` pages that go first (b"" when the list fits one line, the common case),
    and `event` carrying the rest of its members. Every frame is at most `max_bytes`
    bytes long (newline excluded: the peer's line limit). `event` and the pages after
    the first are as full as that allows; the first takes what remains, so as few
    frames as can carry the list are sent, and a peer that knows no pages sees as many
    members as a line holds.

    The sizes are counted from the nicks' lengths and the lists are encoded whole: no
    work per member in Python beyond a length, and `event`'s nicks (checked when it was
    made) are not checked again for the pages. `event.away` must name members of
    `event.users`, each once (as the protocol says); each frame carries those of its
    own users. Raises `ValueError` if it does not, or if `max_bytes` cannot hold a frame
    with one member.
    """
    frames, tail, away_set = _page_frames(event, max_bytes)
    if not frames and tail == 0:
        return b"", event
    rest = event.users[tail:]
    return b"".join(frames), dataclasses.replace(event, users=rest, away=_among(rest, away_set))


def _all_frames(event: Entered | Names, max_bytes: int) -> list[bytes]:
    frames, tail, away_set = _page_frames(event, max_bytes)
    rest = event.users[tail:]
    bare = dataclasses.replace(event, users=(), away=()).to_dict()  # the rest of its fields
    frames.append(_with_members(bare, rest, _among(rest, away_set)))
    return frames


def entered_frames(entered: Entered, *, max_bytes: int = MAX_LINE_BYTES) -> list[bytes]:
    """The encoded frames that carry `entered` to a version-2 peer: its `members` pages,
    then the `entered` with the rest (`split_members`), each a line of at most
    `max_bytes` bytes. At 5,000 members this costs less than `encode(entered)`."""
    return _all_frames(entered, max_bytes)


def names_frames(names: Names, *, max_bytes: int = MAX_LINE_BYTES) -> list[bytes]:
    """The encoded frames that answer `who` to a version-2 peer: `names`' `members`
    pages, then the `names` with the rest (`split_members`), each a line of at most
    `max_bytes` bytes."""
    return _all_frames(names, max_bytes)


def cut_members(event: _Paged, *, max_bytes: int = MAX_LINE_BYTES) -> _Paged:
    """`event` with the first of its members that fit one line of `max_bytes` bytes:
    what a peer that knows no `members` pages (protocol version 1) is sent instead of
    the pages. `away` keeps those of them it named."""
    base = len(encode(dataclasses.replace(event, users=(), away=()))) - 1
    if base + _list_bytes(event.users) + _list_bytes(event.away) <= max_bytes:
        return event
    users, away_set, budget = event.users, frozenset(event.away), max_bytes - base
    fitting = _fitting(users, budget)  # were nobody away
    while True:  # fewer members, fewer of them away: it ends, usually at the second round
        fewer = _fitting(users, budget - _list_bytes(_among(users[:fitting], away_set)))
        if fewer >= fitting:
            break
        fitting = fewer
    # What the away marks of the members cut took is room for a few more, one by one.
    spare = budget - _list_bytes(users[:fitting]) - _list_bytes(_among(users[:fitting], away_set))
    while fitting < len(users):
        cost = (len(users[fitting]) + _PER_NICK) * (2 if users[fitting] in away_set else 1)
        if cost > spare:
            break
        spare -= cost
        fitting += 1
    head = users[:fitting]
    return dataclasses.replace(event, users=head, away=_among(head, away_set))


#: A welcome with every field but `users` at its longest: `\u0000`, six bytes, is the
#: longest a character of a text field can encode to.
_LONGEST_WELCOME = Welcome(
    version=max(SUPPORTED_VERSIONS),
    nick="n" * MAX_NICK_CHARS,
    room="#" + "r" * MAX_ROOM_CHARS,
    server="\x00" * MAX_SHORT_TEXT_CHARS,
    software="\x00" * MAX_SHORT_TEXT_CHARS,
)


def welcome_users(users: tuple[str, ...], *, max_bytes: int = MAX_LINE_BYTES) -> tuple[str, ...]:
    """The first of `users` that a `welcome` carries within `max_bytes` bytes, whatever
    its other fields (a server name and a version string of any length they may have).

    A version-1 client shows the welcome's users; a version-2 client is sent the whole
    list in `entered` (and its pages) right after, so a cut costs it nothing.
    """
    fitting = _fitting(users, max_bytes - (len(encode(_LONGEST_WELCOME)) - 1))
    return users if fitting == len(users) else users[:fitting]


def _fitting(nicks: tuple[str, ...], budget: int) -> int:
    """How many of the first `nicks` fit `budget` bytes of a JSON list.

    Only the nicks that fit are looked at, their lengths summed in C a slice at a time
    (a welcome is cut at every login once a room outgrows a line): each slice is as many
    as surely fit, were they all of the longest, and the last few go one by one.
    """
    widest = MAX_NICK_CHARS + _PER_NICK
    taken = 0
    while budget >= widest and taken < len(nicks):
        sure = nicks[taken : taken + budget // widest]
        budget -= sum(map(len, sure)) + _PER_NICK * len(sure)
        taken += len(sure)
    while taken < len(nicks) and len(nicks[taken]) + _PER_NICK <= budget:
        budget -= len(nicks[taken]) + _PER_NICK
        taken += 1
    return taken


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def decode_line(line: bytes) -> Event:
    """Parse one line (without its newline) into an event.

    Raises `RemoteProtocolError`: fatal for bytes that are not UTF-8 JSON objects
    (the peer is not speaking this protocol), non-fatal for an unknown type or a bad
    field in an otherwise well-formed frame (the stream is still in sync).
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(Code.BAD_UTF8, "frame is not valid UTF-8", fatal=True) from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        # RecursionError: deeply nested arrays; ValueError also covers integers
        # beyond Python's digit limit.
        raise RemoteProtocolError(Code.BAD_JSON, "frame is not valid JSON", fatal=True) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(Code.BAD_FRAME, "frame is not a JSON object", fatal=True)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise RemoteProtocolError(Code.BAD_FRAME, "frame has no string 'type'", fatal=True)
    cls = _DECODABLE.get(kind)
    if cls is None:
        raise RemoteProtocolError(Code.UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}", fatal=False)
    return _build(cls, obj)


def _build(cls: type[Event], obj: dict[str, object]) -> Event:
    try:
        event = _record(cls, obj)
    except ValueError as exc:
        raise RemoteProtocolError(Code.INVALID, f"{cls.TYPE}: {exc}", fatal=False) from None
    assert isinstance(event, cls)
    return event


def _record(cls: type[Record], obj: dict[str, object]) -> Record:
    """Build `cls` from a JSON object; raises `ValueError` saying what is wrong."""
    kwargs: dict[str, object] = {}
    for name, hint, required in _schema(cls):
        if name not in obj:
            if required:
                raise ValueError(f"missing field {name!r}")
            continue
        value = _coerce(hint, obj[name])
        if value is _BAD:
            raise ValueError(f"field {name!r} has the wrong type")
        kwargs[name] = value
    return cls(**kwargs)  # the record's own validation raises ValueError


_BAD = object()


def _coerce(hint: object, value: object) -> object:
    # bool is a subclass of int in Python; JSON true is never a number here.
    if hint is str:
        return value if isinstance(value, str) else _BAD
    if hint is bool:
        return value if isinstance(value, bool) else _BAD
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                return _BAD
        return _BAD
    if hint is bytes:
        if not isinstance(value, str):
            return _BAD
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return _BAD
    if isinstance(hint, type) and issubclass(hint, Record):
        if not isinstance(value, dict):
            return _BAD
        try:
            return _record(hint, value)
        except ValueError:
            return _BAD
    if typing.get_origin(hint) is tuple:
        (item, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, list):
            return _BAD
        items = [_coerce(item, v) for v in value]
        return _BAD if any(i is _BAD for i in items) else tuple(items)
    raise TypeError(f"no decoder for field type {hint!r}")  # our bug: a new field type


#: The frame types `decode_line` knows. `members` is added here because
#: protocol/registry.py (not this change's to edit) does not list it yet: once it does,
#: this is `EVENT_TYPES` again.
_DECODABLE: dict[str, type[Event]] = {**EVENT_TYPES, Members.TYPE: Members}


_SCHEMAS: dict[type[Record], tuple[tuple[str, object, bool], ...]] = {}


def _schema(cls: type[Record]) -> tuple[tuple[str, object, bool], ...]:
    """(field name, type, required) for `cls`, worked out once per class."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        schema = tuple(
            (f.name, hints[f.name], f.default is MISSING and f.default_factory is MISSING)
            for f in fields(cls)
        )
        _SCHEMAS[cls] = schema
    return schema
