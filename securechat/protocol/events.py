"""Protocol events: frozen, keyword-only dataclasses that validate themselves.

Constructing an event with an invalid field raises `ValueError`; the connection turns
that into a `RemoteProtocolError` when the event came off the wire. Each class says
which side may send it (`SENDERS`) and its wire name (`TYPE`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from enum import Enum
from typing import ClassVar

from .limits import (
    DEFAULT_ROOM,
    MAX_NICK_CHARS,
    MAX_ROOM_CHARS,
    MAX_SHORT_TEXT_CHARS,
    MAX_TEXT_BYTES,
    MAX_USERS_LISTED,
)

__all__ = [
    "EVENT_TYPES",
    "Bye",
    "Error",
    "Event",
    "Hello",
    "Joined",
    "Left",
    "Message",
    "Names",
    "Ping",
    "Pong",
    "Quit",
    "Role",
    "Say",
    "Welcome",
    "Who",
    "fold_nick",
    "is_valid_nick",
]


class Role(Enum):
    """Which end of a connection we are."""

    CLIENT = "client"
    SERVER = "server"


_NICK_RE = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.\-]{{0,{MAX_NICK_CHARS - 1}}}")
_ROOM_RE = re.compile(rf"#[A-Za-z0-9_.\-]{{1,{MAX_ROOM_CHARS}}}")


def is_valid_nick(nick: object) -> bool:
    """True for 1-24 ASCII letters, digits, '_', '-', '.', not starting with '-' or '.'."""
    return isinstance(nick, str) and _NICK_RE.fullmatch(nick) is not None


def fold_nick(nick: str) -> str:
    """The case-insensitive identity of a nick ("Alice" and "alice" are one user)."""
    return nick.lower()


def _check_nick(name: str, value: object) -> None:
    if not is_valid_nick(value):
        raise ValueError(
            f"{name}: a nick is 1-{MAX_NICK_CHARS} characters of A-Z a-z 0-9 _ - . "
            "and does not start with - or ."
        )


def _check_room(value: str) -> None:
    if _ROOM_RE.fullmatch(value) is None:
        raise ValueError(f"room: expected '#' and 1-{MAX_ROOM_CHARS} of A-Z a-z 0-9 _ - .")


def _check_str(name: str, value: str, *, max_chars: int = MAX_SHORT_TEXT_CHARS) -> None:
    if len(value) > max_chars:
        raise ValueError(f"{name}: longer than {max_chars} characters")
    _check_encodable(name, value)


def _check_encodable(name: str, value: str) -> int:
    # A JSON string may carry a lone surrogate ("\ud800"); it cannot become UTF-8,
    # so it would crash whoever re-encodes it. Reject it at the door.
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{name}: not valid Unicode text") from None


def _check_text(value: str) -> None:
    if not value:
        raise ValueError("text: empty")
    if _check_encodable("text", value) > MAX_TEXT_BYTES:
        raise ValueError(f"text: longer than {MAX_TEXT_BYTES} bytes")


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base class. Subclasses set `TYPE` and `SENDERS` and validate in `__post_init__`."""

    TYPE: ClassVar[str] = ""
    SENDERS: ClassVar[frozenset[Role]] = frozenset()

    def to_dict(self) -> dict[str, object]:
        """The JSON object for this event, `type` first."""
        out: dict[str, object] = {"type": self.TYPE}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


_BOTH = frozenset({Role.CLIENT, Role.SERVER})
_FROM_CLIENT = frozenset({Role.CLIENT})
_FROM_SERVER = frozenset({Role.SERVER})


@dataclass(frozen=True, kw_only=True)
class Hello(Event):
    """First frame from a client: protocol version and the nick it wants."""

    TYPE = "hello"
    SENDERS = _FROM_CLIENT
    version: int
    nick: str
    client: str = ""

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("version: must be a positive integer")
        _check_nick("nick", self.nick)
        _check_str("client", self.client)


@dataclass(frozen=True, kw_only=True)
class Welcome(Event):
    """The server's answer to an accepted hello; after it both sides are ready."""

    TYPE = "welcome"
    SENDERS = _FROM_SERVER
    version: int
    nick: str
    room: str = DEFAULT_ROOM
    users: tuple[str, ...] = ()
    server: str = ""

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("version: must be a positive integer")
        _check_nick("nick", self.nick)
        _check_room(self.room)
        _check_users(self.users)
        _check_str("server", self.server)


def _check_users(users: tuple[str, ...]) -> None:
    if len(users) > MAX_USERS_LISTED:
        raise ValueError("users: too many")
    for nick in users:
        _check_nick("users", nick)


@dataclass(frozen=True, kw_only=True)
class Say(Event):
    """A client's public message to a room."""

    TYPE = "say"
    SENDERS = _FROM_CLIENT
    room: str = DEFAULT_ROOM
    text: str

    def __post_init__(self) -> None:
        _check_room(self.room)
        _check_text(self.text)


@dataclass(frozen=True, kw_only=True)
class Message(Event):
    """A public message as the server relays it: who said it and when (Unix seconds)."""

    TYPE = "message"
    SENDERS = _FROM_SERVER
    room: str = DEFAULT_ROOM
    nick: str
    text: str
    ts: float

    def __post_init__(self) -> None:
        _check_room(self.room)
        _check_nick("nick", self.nick)
        _check_text(self.text)
        if not math.isfinite(self.ts):
            raise ValueError("ts: must be a finite number")


@dataclass(frozen=True, kw_only=True)
class Who(Event):
    """A client asks who is in a room."""

    TYPE = "who"
    SENDERS = _FROM_CLIENT
    room: str = DEFAULT_ROOM

    def __post_init__(self) -> None:
        _check_room(self.room)


@dataclass(frozen=True, kw_only=True)
class Names(Event):
    """The server's answer to `who`: the nicks in the room, sorted case-insensitively."""

    TYPE = "names"
    SENDERS = _FROM_SERVER
    room: str = DEFAULT_ROOM
    users: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_room(self.room)
        _check_users(self.users)


@dataclass(frozen=True, kw_only=True)
class Joined(Event):
    """Someone entered the room."""

    TYPE = "joined"
    SENDERS = _FROM_SERVER
    room: str = DEFAULT_ROOM
    nick: str

    def __post_init__(self) -> None:
        _check_room(self.room)
        _check_nick("nick", self.nick)


@dataclass(frozen=True, kw_only=True)
class Left(Event):
    """Someone left the room (quit, disconnect, or dropped by the server)."""

    TYPE = "left"
    SENDERS = _FROM_SERVER
    room: str = DEFAULT_ROOM
    nick: str
    reason: str = ""

    def __post_init__(self) -> None:
        _check_room(self.room)
        _check_nick("nick", self.nick)
        _check_str("reason", self.reason)


@dataclass(frozen=True, kw_only=True)
class Ping(Event):
    """Liveness probe; the other side answers with a `pong` carrying the same token."""

    TYPE = "ping"
    SENDERS = _BOTH
    token: str = ""

    def __post_init__(self) -> None:
        _check_str("token", self.token, max_chars=64)


@dataclass(frozen=True, kw_only=True)
class Pong(Event):
    """Answer to `ping`."""

    TYPE = "pong"
    SENDERS = _BOTH
    token: str = ""

    def __post_init__(self) -> None:
        _check_str("token", self.token, max_chars=64)


@dataclass(frozen=True, kw_only=True)
class Quit(Event):
    """A client leaves; the server answers `bye` and closes."""

    TYPE = "quit"
    SENDERS = _FROM_CLIENT
    reason: str = ""

    def __post_init__(self) -> None:
        _check_str("reason", self.reason)


@dataclass(frozen=True, kw_only=True)
class Bye(Event):
    """The server's last frame on a connection it is about to close cleanly."""

    TYPE = "bye"
    SENDERS = _FROM_SERVER
    reason: str = ""

    def __post_init__(self) -> None:
        _check_str("reason", self.reason)


@dataclass(frozen=True, kw_only=True)
class Error(Event):
    """Something the client sent was refused. When `fatal`, the server closes next."""

    TYPE = "error"
    SENDERS = _FROM_SERVER
    code: str
    reason: str = ""
    fatal: bool = False

    def __post_init__(self) -> None:
        if not self.code:
            raise ValueError("code: empty")
        _check_str("code", self.code, max_chars=64)
        _check_str("reason", self.reason)


#: Wire name -> class, for decoding.
EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (Hello, Welcome, Say, Message, Who, Names, Joined, Left, Ping, Pong, Quit, Bye, Error)
}
