"""Frames for rooms beyond `#lobby` (protocol version 2), and for renaming.

Every request about a room names it in `room`; a server refuses one with an `error`
whose `ref` is that room, as sent. Who may send what is the server's business (see
docs/protocol.md, "Rooms"); here each frame only checks its own fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .events import (
    FROM_CLIENT,
    FROM_SERVER,
    Event,
    Names,
    Record,
    check_nick,
    check_nicks,
    check_optional_nick,
    check_room,
    check_str,
)
from .limits import (
    MAX_BANS_LISTED,
    MAX_MASK_CHARS,
    MAX_PATTERN_CHARS,
    MAX_ROOMS_LISTED,
    MAX_TOPIC_CHARS,
)

__all__ = [
    "BAN_KINDS",
    "NAMING_A_ROOM",
    "PAGED_FRAMES",
    "ROOM_CHANGES",
    "ROOM_REQUESTS",
    "Ban",
    "BanEntry",
    "BanList",
    "Bans",
    "Deop",
    "Entered",
    "Invite",
    "Invited",
    "Join",
    "Kick",
    "ListRooms",
    "Members",
    "Op",
    "Part",
    "RegisterRoom",
    "Rename",
    "Renamed",
    "RoomChanged",
    "RoomEntry",
    "Rooms",
    "SetMode",
    "SetTopic",
    "Transfer",
    "Unban",
    "is_pattern",
]

#: What a `room_changed` says changed.
ROOM_CHANGES = frozenset({"topic", "invite_only", "registered", "owner", "operators"})
#: How a ban matches: "key" (a registered nick's identity key, whatever nick it uses
#: later) or "pattern" (a case-insensitive nick glob, for guests only).
BAN_KINDS = frozenset({"key", "pattern"})

# A list pattern: an optional '#', then room-name characters and wildcards.
_PATTERN_RE = re.compile(rf"#?[A-Za-z0-9_.\-*?]{{0,{MAX_PATTERN_CHARS - 1}}}")
_MASK_RE = re.compile(rf"[A-Za-z0-9_.\-*?]{{1,{MAX_MASK_CHARS}}}")
#: An Ed25519 signature's length.
_SIGNATURE_BYTES = 64


def is_pattern(mask: str) -> bool:
    """True when a ban mask is a nick glob (it has '*' or '?'), False for a plain nick."""
    return "*" in mask or "?" in mask


def _check_topic(value: str) -> None:
    check_str("topic", value, max_chars=MAX_TOPIC_CHARS)


def _check_pattern(value: str) -> None:
    if _PATTERN_RE.fullmatch(value) is None:
        raise ValueError(
            f"pattern: at most {MAX_PATTERN_CHARS} of '#' (first), A-Z a-z 0-9 _ - . and the wildcards * ?"
        )


def _check_mask(value: str) -> None:
    if _MASK_RE.fullmatch(value) is None:
        raise ValueError(f"mask: a nick, or 1-{MAX_MASK_CHARS} of A-Z a-z 0-9 _ - . * ?")
    if not is_pattern(value):
        check_nick("mask", value)


# -- client -> server ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _RoomRequest(Event):
    """A client's request about one room: every one names it, checked here once."""

    SENDERS = FROM_CLIENT
    room: str

    def __post_init__(self) -> None:
        check_room(self.room)


@dataclass(frozen=True, kw_only=True)
class Join(_RoomRequest):
    """Enter a room, creating it if it does not exist; answered by `entered`."""

    TYPE = "join"


@dataclass(frozen=True, kw_only=True)
class Part(_RoomRequest):
    """Leave a room; the members, the leaver included, get `left`."""

    TYPE = "part"
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_str("reason", self.reason)


@dataclass(frozen=True, kw_only=True)
class SetTopic(_RoomRequest):
    """Change a room's topic ("" clears it); the members get `room_changed`."""

    TYPE = "set_topic"
    topic: str

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_topic(self.topic)


@dataclass(frozen=True, kw_only=True)
class ListRooms(Event):
    """Ask for the rooms whose names match `pattern` (a case-insensitive glob with `*`
    and `?`; "" for all); answered by `rooms`."""

    TYPE = "list"
    SENDERS = FROM_CLIENT
    pattern: str = ""

    def __post_init__(self) -> None:
        _check_pattern(self.pattern)


@dataclass(frozen=True, kw_only=True)
class Invite(_RoomRequest):
    """Invite an online user into a room; the invitee and the inviter get `invited`."""

    TYPE = "invite"
    nick: str

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nick("nick", self.nick)


@dataclass(frozen=True, kw_only=True)
class Kick(_RoomRequest):
    """Remove a member from a registered room (operators); everyone gets `left` with `by`."""

    TYPE = "kick"
    nick: str
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nick("nick", self.nick)
        check_str("reason", self.reason)


@dataclass(frozen=True, kw_only=True)
class Ban(_RoomRequest):
    """Ban a nick (by its identity key when registered) or a guest nick glob (operators)."""

    TYPE = "ban"
    mask: str

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_mask(self.mask)


@dataclass(frozen=True, kw_only=True)
class Unban(_RoomRequest):
    """Lift a ban, named by the mask its `ban_list` entry shows (operators)."""

    TYPE = "unban"
    mask: str

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_mask(self.mask)


@dataclass(frozen=True, kw_only=True)
class Bans(_RoomRequest):
    """Ask for a room's bans (operators); answered by `ban_list`."""

    TYPE = "bans"


@dataclass(frozen=True, kw_only=True)
class SetMode(_RoomRequest):
    """Make a registered room invite-only, or open again (operators)."""

    TYPE = "set_mode"
    invite_only: bool


@dataclass(frozen=True, kw_only=True)
class RegisterRoom(_RoomRequest):
    """Register a room: its creator, an identity user in it, becomes its owner."""

    TYPE = "register_room"


@dataclass(frozen=True, kw_only=True)
class Op(_RoomRequest):
    """Make a registered nick an operator of a registered room (the owner only)."""

    TYPE = "op"
    nick: str

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nick("nick", self.nick)


@dataclass(frozen=True, kw_only=True)
class Deop(_RoomRequest):
    """Take a nick's operator status away (the owner only)."""

    TYPE = "deop"
    nick: str

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nick("nick", self.nick)


@dataclass(frozen=True, kw_only=True)
class Transfer(_RoomRequest):
    """Hand a registered room to a registered nick (the owner only; the old owner stays
    an operator)."""

    TYPE = "transfer"
    nick: str

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nick("nick", self.nick)


@dataclass(frozen=True, kw_only=True)
class Rename(Event):
    """Change your nick. An identity user signs the change (docs/protocol.md, "Renaming");
    a guest sends no signature."""

    TYPE = "rename"
    SENDERS = FROM_CLIENT
    nick: str
    signature: bytes = b""

    def __post_init__(self) -> None:
        check_nick("nick", self.nick)
        if self.signature and len(self.signature) != _SIGNATURE_BYTES:
            raise ValueError(f"signature: an Ed25519 signature is {_SIGNATURE_BYTES} bytes, or none")


# -- server -> client ------------------------------------------------------------


def _check_room_state(topic: str, owner: str, operators: tuple[str, ...]) -> None:
    # Which combinations make sense (no owner in an unregistered room) is the server's
    # rule, not checked here: a later version may loosen it without breaking decoders.
    _check_topic(topic)
    check_optional_nick("owner", owner)
    check_nicks("operators", operators)


@dataclass(frozen=True, kw_only=True)
class Entered(Event):
    """You are in `room` (after `join`, and after the welcome for each autojoin room);
    its history lines (`message` with `history`) follow. A member list too long for one
    line comes first in `members` pages, and this frame carries its last page."""

    TYPE = "entered"
    SENDERS = FROM_SERVER
    room: str
    #: Members, you included, sorted case-insensitively.
    users: tuple[str, ...] = ()
    #: Those of `users` who set an away message.
    away: tuple[str, ...] = ()
    topic: str = ""
    invite_only: bool = False
    registered: bool = False
    #: The owner's nick when the owner is present, else "".
    owner: str = ""
    #: The operators present.
    operators: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_room(self.room)
        check_nicks("users", self.users)
        check_nicks("away", self.away)
        _check_room_state(self.topic, self.owner, self.operators)


#: The frames whose member list may come in `members` pages first (a `members` frame's
#: `of`): the newcomer's `entered` and the answer to `who`.
PAGED_FRAMES = frozenset({Entered.TYPE, Names.TYPE})


@dataclass(frozen=True, kw_only=True)
class Members(Event):
    """One page of a member list too long for one line (at ~2,400 members of long nicks
    a list passes `MAX_LINE_BYTES`). The pages of a list come in order, each its next
    members, and the `entered` or `names` (`of`) for `room` that follows them carries
    the last page and completes the list: the members are the pages' users and then its
    own, in that order, and the same for `away`.

    Protocol version 2 only: a version-1 session is sent the part of a list that fits
    one line instead (docs/protocol.md, "Long member lists")."""

    TYPE = "members"
    SENDERS = FROM_SERVER
    room: str
    #: The frame this page precedes: one of `PAGED_FRAMES`.
    of: str
    #: This page's members, in the list's order; never empty (a page of nobody would be
    #: a line that says nothing).
    users: tuple[str, ...]
    #: Those of this page's `users` who set an away message.
    away: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_room(self.room)
        if self.of not in PAGED_FRAMES:
            raise ValueError(f"of: one of {sorted(PAGED_FRAMES)}")
        if not self.users:
            raise ValueError("users: a page lists at least one member")
        check_nicks("users", self.users)
        check_nicks("away", self.away)
        if len(self.away) > len(self.users):
            raise ValueError("away: more than the page's users")


@dataclass(frozen=True, kw_only=True)
class RoomChanged(Event):
    """A room's settings changed (`what`, by `nick`); the rest is the full new state, so a
    client replaces what it had instead of patching it."""

    TYPE = "room_changed"
    SENDERS = FROM_SERVER
    room: str
    nick: str
    #: One of `ROOM_CHANGES`.
    what: str
    topic: str = ""
    invite_only: bool = False
    registered: bool = False
    owner: str = ""
    operators: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_room(self.room)
        check_nick("nick", self.nick)
        if self.what not in ROOM_CHANGES:
            raise ValueError(f"what: one of {sorted(ROOM_CHANGES)}")
        _check_room_state(self.topic, self.owner, self.operators)


@dataclass(frozen=True, kw_only=True)
class RoomEntry(Record):
    """One room of a `rooms` answer."""

    room: str
    users: int
    topic: str = ""

    def __post_init__(self) -> None:
        check_room(self.room)
        if self.users < 0:
            raise ValueError("users: negative")
        _check_topic(self.topic)


@dataclass(frozen=True, kw_only=True)
class Rooms(Event):
    """The answer to `list`: matching rooms sorted by name; `truncated` when there were
    more than it carries (at most `MAX_ROOMS_LISTED`, and what fits one line)."""

    TYPE = "rooms"
    SENDERS = FROM_SERVER
    pattern: str = ""
    rooms: tuple[RoomEntry, ...] = ()
    truncated: bool = False

    def __post_init__(self) -> None:
        _check_pattern(self.pattern)
        if len(self.rooms) > MAX_ROOMS_LISTED:
            raise ValueError(f"rooms: at most {MAX_ROOMS_LISTED}")


@dataclass(frozen=True, kw_only=True)
class Invited(Event):
    """`by` invited `nick` into `room`: sent to both."""

    TYPE = "invited"
    SENDERS = FROM_SERVER
    room: str
    nick: str
    by: str

    def __post_init__(self) -> None:
        check_room(self.room)
        check_nick("nick", self.nick)
        check_nick("by", self.by)


@dataclass(frozen=True, kw_only=True)
class BanEntry(Record):
    """One ban of a `ban_list`: its mask as `unban` takes it, its kind, who set it."""

    mask: str
    #: One of `BAN_KINDS`; a "key" ban's mask is the nick it was set on.
    kind: str
    by: str

    def __post_init__(self) -> None:
        _check_mask(self.mask)
        if self.kind not in BAN_KINDS:
            raise ValueError(f"kind: one of {sorted(BAN_KINDS)}")
        if self.kind == "key" and is_pattern(self.mask):
            raise ValueError("mask: a key ban is shown as a nick")
        check_nick("by", self.by)


@dataclass(frozen=True, kw_only=True)
class BanList(Event):
    """The answer to `bans`."""

    TYPE = "ban_list"
    SENDERS = FROM_SERVER
    room: str
    bans: tuple[BanEntry, ...] = ()

    def __post_init__(self) -> None:
        check_room(self.room)
        if len(self.bans) > MAX_BANS_LISTED:
            raise ValueError(f"bans: at most {MAX_BANS_LISTED}")


@dataclass(frozen=True, kw_only=True)
class Renamed(Event):
    """`old` is now known as `new`: sent to the renamer and, once each, to everyone who
    shares a room with them."""

    TYPE = "renamed"
    SENDERS = FROM_SERVER
    old: str
    new: str

    def __post_init__(self) -> None:
        check_nick("old", self.old)
        check_nick("new", self.new)


#: The client's requests that name a room, in one place: the server rate-limits them and
#: names their room in a refusal's `ref`.
NAMING_A_ROOM = (
    Join,
    Part,
    SetTopic,
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
)
#: Every client request about rooms (`list` names none).
ROOM_REQUESTS = (*NAMING_A_ROOM, ListRooms)
