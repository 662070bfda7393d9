"""What the nodes of a cluster tell each other of a room beside its lines and members:
its shared state after each change of its settings, an invitation used or ended, and
kicks of members another node serves.

A room's shared state (`SharedState`) is everything about it that is not membership:
who made it, its settings, its invitations. The node where a change is made applies it,
then publishes the whole state in the room's order (the backplane), and every node
applies it when it comes back in that order; a node that has news of its own for the room
still on the way skips the others' (its own come later in the order, and win), so all
nodes end with the same state. Two changes made on two nodes within one round trip are
thus one wins as a whole, as with two writes of a registered room's row; except that a
room's registration is undone only by news that says so (`RELEASED`), never by a change
made before the news of it arrived. Routine events (an invitation used, a guest gone) are
sent as what changed (`UNINVITE`), not as a whole state that could undo an operator's
change made meanwhile.

Pure: an encoding and its checks, no I/O. The hub (hub.py) makes and applies the news.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum

from ..protocol.rooms import ROOM_CHANGES
from .rooms import Ban, BanKind, Room

__all__ = ["BAN", "INVITE", "RELEASED", "NewsKind", "RoomNews", "SharedState", "held_name", "held_of"]

#: A state's `what` when a ban was added: every node puts out its members it covers.
BAN = "ban"
#: A state's `what` when someone was invited: their node tells them.
INVITE = "invite"
#: A state's `what` when the room is no longer registered (its owner was away too long).
RELEASED = "released"
_WHATS = frozenset(ROOM_CHANGES) | {BAN, INVITE, RELEASED, ""}


class NewsKind(Enum):
    """A room's new shared state, an invitation that ended (used, or its guest gone), or
    a kick of a member served by another node."""

    STATE = "state"
    UNINVITE = "uninvite"
    KICK = "kick"


@dataclass(frozen=True)
class SharedState:
    """A room's shared state (see the module docstring); `name` as its creator spelt it."""

    name: str
    creator: bytes = b""
    topic: str = ""
    invite_only: bool = False
    owner: bytes = b""
    operators: frozenset[bytes] = frozenset()
    bans: tuple[Ban, ...] = ()
    #: Invitations -> when each expires (a key, or a guest's folded nick: rooms.py).
    invites: tuple[tuple[bytes | str, float], ...] = ()

    @classmethod
    def of(cls, room: Room) -> SharedState:
        return cls(
            name=room.name,
            creator=room.creator,
            topic=room.topic,
            invite_only=room.invite_only,
            owner=room.owner,
            operators=frozenset(room.operators),
            bans=tuple(room.bans),
            invites=tuple(room.invites.items()),
        )

    def apply(self, room: Room) -> None:
        """Make `room`'s shared state this one (its members are not part of it)."""
        room.creator, room.topic, room.invites = self.creator, self.topic, dict(self.invites)
        room.invite_only, room.owner = self.invite_only, self.owner
        room.operators, room.bans = set(self.operators), list(self.bans)

    def apply_unregistered(self, room: Room) -> None:
        """`apply` to a registered `room` of a state made before its registration was
        known: its topic and invitations, not who owns and runs it."""
        room.topic, room.invites = self.topic, dict(self.invites)

    def without(self, held: bytes | str) -> SharedState:
        """This state with invitation `held` (a key, or a guest's folded nick) ended."""
        return dataclasses.replace(self, invites=tuple((h, t) for h, t in self.invites if h != held))


def held_name(held: bytes | str) -> str:
    """An invitation's holder (a key, or a guest's folded nick) as `UNINVITE` news names it."""
    return f"key:{held.hex()}" if isinstance(held, bytes) else f"guest:{held}"


def held_of(name: str) -> bytes | str:
    """`held_name`'s inverse; raises `ValueError` for anything else."""
    kind, _, value = name.partition(":")
    if kind == "key":
        return bytes.fromhex(value)
    if kind == "guest" and value:
        return value
    raise ValueError("not an invitation's holder")


@dataclass(frozen=True)
class RoomNews:
    """One piece of news of a room. For a STATE: `state`, and `what` changed (a
    `room-changed` what to announce, `BAN`, `INVITE`, `RELEASED`, or "" for nothing to
    announce) by `by`; `target` is the invitee of an INVITE. For an UNINVITE: `target`
    is the invitation's holder (`held_name`). For a KICK: `by` kicked `target` with
    `reason` (the kicking node checked that they may)."""

    kind: NewsKind
    by: str = ""
    what: str = ""
    target: str = ""
    reason: str = ""
    state: SharedState | None = field(default=None)

    def encode(self) -> bytes:
        body: dict[str, object] = {"kind": self.kind.value}
        for name in ("by", "what", "target", "reason"):
            if getattr(self, name):
                body[name] = getattr(self, name)
        if self.state is not None:
            s = self.state
            body["state"] = {
                "name": s.name,
                "creator": s.creator.hex(),
                "topic": s.topic,
                "invite_only": s.invite_only,
                "owner": s.owner.hex(),
                "operators": sorted(k.hex() for k in s.operators),
                "bans": [
                    [b.kind.value, b.value.hex() if isinstance(b.value, bytes) else b.value, b.shown, b.by]
                    for b in s.bans
                ],
                "invites": [
                    ["key", held.hex(), expires] if isinstance(held, bytes) else ["guest", held, expires]
                    for held, expires in s.invites
                ],
            }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> RoomNews:
        """Raises `ValueError` for anything that is not news this module made."""
        try:
            body = json.loads(data)
            kind = NewsKind(body["kind"])
            news = cls(
                kind=kind,
                by=_text(body.get("by", "")),
                what=_text(body.get("what", "")),
                target=_text(body.get("target", "")),
                reason=_text(body.get("reason", "")),
                state=None if "state" not in body else _state(body["state"]),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # JSON's and hex's too
            raise ValueError(f"not room news: {type(exc).__name__}") from None
        if news.what not in _WHATS or (kind is NewsKind.STATE) != (news.state is not None):
            raise ValueError("not room news: a state without its state, or an unknown change")
        if kind is NewsKind.UNINVITE:
            try:
                held_of(news.target)
            except ValueError:
                raise ValueError("not room news: an invitation without its holder") from None
        return news


def _state(raw: object) -> SharedState:
    if not isinstance(raw, dict):
        raise TypeError("a state")
    bans = []
    for row in _list(raw["bans"]):
        kind, value, shown, by = _list(row)
        ban_kind = BanKind(kind)
        held: bytes | str = bytes.fromhex(_text(value)) if ban_kind is BanKind.KEY else _text(value)
        bans.append(Ban(ban_kind, held, _text(shown), _text(by)))
    invites: list[tuple[bytes | str, float]] = []
    for row in _list(raw["invites"]):
        kind, held_text, expires = _list(row)
        if not isinstance(expires, (int, float)) or kind not in ("key", "guest"):
            raise TypeError("an invitation")
        invites.append(
            (bytes.fromhex(_text(held_text)) if kind == "key" else _text(held_text), float(expires))
        )
    invite_only = raw["invite_only"]
    if not isinstance(invite_only, bool):
        raise TypeError("invite_only")
    return SharedState(
        name=_text(raw["name"]),
        creator=bytes.fromhex(_text(raw["creator"])),
        topic=_text(raw["topic"]),
        invite_only=invite_only,
        owner=bytes.fromhex(_text(raw["owner"])),
        operators=frozenset(bytes.fromhex(_text(k)) for k in _list(raw["operators"])),
        bans=tuple(bans),
        invites=tuple(invites),
    )


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise TypeError("a list")
    return value
