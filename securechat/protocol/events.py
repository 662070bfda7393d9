"""Protocol events: frozen, keyword-only dataclasses that validate themselves.

Constructing an event with an invalid field raises `ValueError`; the connection turns
that into a `RemoteProtocolError` when the event came off the wire. Each class says
which side may send it (`SENDERS`) and its wire name (`TYPE`).
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, fields
from enum import Enum
from typing import ClassVar

from .limits import (
    DEFAULT_ROOM,
    MAX_DEVICE_CHARS,
    MAX_NICK_CHARS,
    MAX_REF_CHARS,
    MAX_ROOM_CHARS,
    MAX_SHORT_TEXT_CHARS,
    MAX_TEXT_BYTES,
    MAX_USERS_LISTED,
)

__all__ = [
    "Away",
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
    "Record",
    "Role",
    "Say",
    "Welcome",
    "Who",
    "check_nick",
    "check_nicks",
    "check_optional_nick",
    "check_room",
    "check_str",
    "fold_nick",
    "fold_room",
    "is_valid_nick",
]


class Role(Enum):
    """Which end of a connection we are."""

    CLIENT = "client"
    SERVER = "server"


_NICK_RE = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.\-]{{0,{MAX_NICK_CHARS - 1}}}")
_ROOM_RE = re.compile(rf"#[A-Za-z0-9_.\-]{{1,{MAX_ROOM_CHARS}}}")
_DEVICE_RE = re.compile(rf"[a-z0-9_\-]{{1,{MAX_DEVICE_CHARS}}}")


def is_valid_nick(nick: object) -> bool:
    """True for 1-24 ASCII letters, digits, '_', '-', '.', not starting with '-' or '.'."""
    return isinstance(nick, str) and _NICK_RE.fullmatch(nick) is not None


def fold_nick(nick: str) -> str:
    """The case-insensitive identity of a nick ("Alice" and "alice" are one user)."""
    return nick.lower()


def fold_room(name: str) -> str:
    """The case-insensitive identity of a room name ("#Dev" and "#dev" are one room)."""
    return name.lower()


def check_nick(name: str, value: object) -> None:
    if not is_valid_nick(value):
        raise ValueError(
            f"{name}: a nick is 1-{MAX_NICK_CHARS} characters of A-Z a-z 0-9 _ - . "
            "and does not start with - or ."
        )


def check_optional_nick(name: str, value: str) -> None:
    """A nick, or "" for none (a room with no owner present, a `left` that was no kick)."""
    if value:
        check_nick(name, value)


def check_nicks(name: str, nicks: tuple[str, ...]) -> None:
    """A list of nicks, no longer than a user list may be."""
    if len(nicks) > MAX_USERS_LISTED:
        raise ValueError(f"{name}: too many")
    for nick in nicks:
        check_nick(name, nick)


def is_valid_device(device: object) -> bool:
    """True for a device id: 1-32 of a-z 0-9 _ - (lower case: it is part of the name of
    the device's mailbox on the server, which, like a nick, is compared folded)."""
    return isinstance(device, str) and _DEVICE_RE.fullmatch(device) is not None


def check_device(name: str, value: str) -> None:
    """A device id (`Hello.device`), or "" for none."""
    if value and not is_valid_device(value):
        raise ValueError(f"{name}: 1-{MAX_DEVICE_CHARS} of a-z 0-9 _ -")


def check_room(value: str) -> None:
    if _ROOM_RE.fullmatch(value) is None:
        raise ValueError(f"room: expected '#' and 1-{MAX_ROOM_CHARS} of A-Z a-z 0-9 _ - .")


def check_str(name: str, value: str, *, max_chars: int = MAX_SHORT_TEXT_CHARS) -> None:
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


def _to_json(value: object) -> object:
    # bytes travel as standard base64 with padding; nested records as objects.
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_to_json(item) for item in value]
    return value


@dataclass(frozen=True, kw_only=True)
class Record:
    """A structured value on the wire: a frame, or an object nested inside one."""

    def to_dict(self) -> dict[str, object]:
        """The JSON object for this record."""
        return {f.name: _to_json(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class Event(Record):
    """Base class of frames. Subclasses set `TYPE` and `SENDERS` and validate in `__post_init__`."""

    TYPE: ClassVar[str] = ""
    SENDERS: ClassVar[frozenset[Role]] = frozenset()

    def to_dict(self) -> dict[str, object]:
        """The JSON object for this event, `type` first."""
        return {"type": self.TYPE, **super().to_dict()}


BOTH = frozenset({Role.CLIENT, Role.SERVER})
FROM_CLIENT = frozenset({Role.CLIENT})
FROM_SERVER = frozenset({Role.SERVER})


@dataclass(frozen=True, kw_only=True)
class Hello(Event):
    """First frame from a client: protocol version and the nick it wants."""

    TYPE = "hello"
    SENDERS = FROM_CLIENT
    version: int
    nick: str
    client: str = ""
    #: The user's Ed25519 identity key; empty for a guest, who may chat in public
    #: under a nick nobody has registered, but cannot whisper.
    identity: bytes = b""
    #: Which of the identity's devices (keystores) this is, "" if the client names none
    #: (a guest, an older client): a login of the same device replaces that device's
    #: stale session; another device of the same identity is logged in beside it.
    device: str = ""

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("version: must be a positive integer")
        check_nick("nick", self.nick)
        check_str("client", self.client)
        check_device("device", self.device)
        if self.identity and len(self.identity) != 32:
            raise ValueError("identity: an Ed25519 public key is 32 bytes")


@dataclass(frozen=True, kw_only=True)
class Welcome(Event):
    """The server's answer to an accepted hello; after it both sides are ready."""

    TYPE = "welcome"
    SENDERS = FROM_SERVER
    version: int
    nick: str
    #: The first autojoin room and its users (what a version-1 client shows); a
    #: version-2 client gets an `entered` for every autojoin room after this.
    room: str = DEFAULT_ROOM
    users: tuple[str, ...] = ()
    server: str = ""
    #: The server's version string ("securechat 0.4.0"), so a mismatch is easy to see.
    software: str = ""

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("version: must be a positive integer")
        check_nick("nick", self.nick)
        check_room(self.room)
        check_nicks("users", self.users)
        check_str("server", self.server)
        check_str("software", self.software)


@dataclass(frozen=True, kw_only=True)
class Say(Event):
    """A client's public message to a room."""

    TYPE = "say"
    SENDERS = FROM_CLIENT
    room: str = DEFAULT_ROOM
    text: str
    #: An action ("/me waves"): shown as "* alice waves".
    action: bool = False

    def __post_init__(self) -> None:
        check_room(self.room)
        _check_text(self.text)


@dataclass(frozen=True, kw_only=True)
class Message(Event):
    """A public message as the server relays it: who said it and when (Unix seconds)."""

    TYPE = "message"
    SENDERS = FROM_SERVER
    room: str = DEFAULT_ROOM
    nick: str
    text: str
    ts: float
    #: True for lines replayed to a user who just joined, from before they were here.
    history: bool = False
    #: An action ("/me waves"), as sent.
    action: bool = False

    def __post_init__(self) -> None:
        check_room(self.room)
        check_nick("nick", self.nick)
        _check_text(self.text)
        if not math.isfinite(self.ts):
            raise ValueError("ts: must be a finite number")


@dataclass(frozen=True, kw_only=True)
class Who(Event):
    """A client asks who is in a room."""

    TYPE = "who"
    SENDERS = FROM_CLIENT
    room: str = DEFAULT_ROOM

    def __post_init__(self) -> None:
        check_room(self.room)


@dataclass(frozen=True, kw_only=True)
class Names(Event):
    """The server's answer to `who`: the nicks in the room, sorted case-insensitively."""

    TYPE = "names"
    SENDERS = FROM_SERVER
    room: str = DEFAULT_ROOM
    users: tuple[str, ...] = ()
    #: Those of `users` who set an away message.
    away: tuple[str, ...] = ()
    #: The owner's nick when the owner is present, else "" (and always "" for an
    #: unregistered room, which has none).
    owner: str = ""
    #: The operators present.
    operators: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_room(self.room)
        check_nicks("users", self.users)
        check_nicks("away", self.away)
        check_optional_nick("owner", self.owner)
        check_nicks("operators", self.operators)


@dataclass(frozen=True, kw_only=True)
class Joined(Event):
    """Someone entered the room."""

    TYPE = "joined"
    SENDERS = FROM_SERVER
    room: str = DEFAULT_ROOM
    nick: str

    def __post_init__(self) -> None:
        check_room(self.room)
        check_nick("nick", self.nick)


@dataclass(frozen=True, kw_only=True)
class Left(Event):
    """Someone left the room (part, quit, disconnect, kick, or dropped by the server).

    A member who parts or is kicked gets this too, naming themselves.
    """

    TYPE = "left"
    SENDERS = FROM_SERVER
    room: str = DEFAULT_ROOM
    nick: str
    reason: str = ""
    #: Who kicked them, when they were kicked ("" otherwise); `reason` is the kick's.
    by: str = ""

    def __post_init__(self) -> None:
        check_room(self.room)
        check_nick("nick", self.nick)
        check_str("reason", self.reason)
        check_optional_nick("by", self.by)


@dataclass(frozen=True, kw_only=True)
class Ping(Event):
    """Liveness probe; the other side answers with a `pong` carrying the same token."""

    TYPE = "ping"
    SENDERS = BOTH
    token: str = ""

    def __post_init__(self) -> None:
        check_str("token", self.token, max_chars=64)


@dataclass(frozen=True, kw_only=True)
class Pong(Event):
    """Answer to `ping`."""

    TYPE = "pong"
    SENDERS = BOTH
    token: str = ""

    def __post_init__(self) -> None:
        check_str("token", self.token, max_chars=64)


@dataclass(frozen=True, kw_only=True)
class Quit(Event):
    """A client leaves; the server answers `bye` and closes."""

    TYPE = "quit"
    SENDERS = FROM_CLIENT
    reason: str = ""

    def __post_init__(self) -> None:
        check_str("reason", self.reason)


@dataclass(frozen=True, kw_only=True)
class Away(Event):
    """Set (or, with an empty message, clear) your away message; whisperers are told it."""

    TYPE = "away"
    SENDERS = FROM_CLIENT
    message: str = ""

    def __post_init__(self) -> None:
        check_str("message", self.message)


@dataclass(frozen=True, kw_only=True)
class Bye(Event):
    """The server's last frame on a connection it is about to close cleanly."""

    TYPE = "bye"
    SENDERS = FROM_SERVER
    reason: str = ""

    def __post_init__(self) -> None:
        check_str("reason", self.reason)


@dataclass(frozen=True, kw_only=True)
class Error(Event):
    """Something the client sent was refused. When `fatal`, the server closes next."""

    TYPE = "error"
    SENDERS = FROM_SERVER
    code: str
    reason: str = ""
    fatal: bool = False
    #: What this refuses, when the request named something: a whisper's `id`, a
    #: `fetch_keys`' `ref` (or, without one, its nick), the room of a room request;
    #: "" otherwise.
    ref: str = ""

    def __post_init__(self) -> None:
        if not self.code:
            raise ValueError("code: empty")
        check_str("code", self.code, max_chars=64)
        check_str("reason", self.reason)
        check_str("ref", self.ref, max_chars=MAX_REF_CHARS)
