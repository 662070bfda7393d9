"""What the nodes of a cluster tell each other of a room beside its lines and members:
its shared state after each change, and kicks of members another node serves.

A room's shared state (`SharedState`) is everything about it that is not membership:
who made it, its settings, its invitations. The node where a change is made applies it,
then publishes the whole state in the room's order (the backplane), and every node
applies it when it comes back in that order; a node that has news of its own for the room
still on the way skips the others' (its own come later in the order, and win), so all
nodes end with the same state. Two changes made on two nodes within one round trip are
thus one wins as a whole, as with two writes of a registered room's row.

Pure: an encoding and its checks, no I/O. The hub (hub.py) makes and applies the news.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum

from ..protocol.rooms import ROOM_CHANGES
from .rooms import Ban, BanKind, Room

__all__ = ["BAN", "INVITE", "NewsKind", "RoomNews", "SharedState"]

#: A state's `what` when a ban was added: every node puts out its members it covers.
BAN = "ban"
#: A state's `what` when someone was invited: their node tells them.
INVITE = "invite"
_WHATS = frozenset(ROOM_CHANGES) | {BAN, INVITE, ""}


class NewsKind(Enum):
    """A room's new shared state, or a kick of a member served by another node."""

    STATE = "state"
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
        room.creator, room.topic, room.invite_only = self.creator, self.topic, self.invite_only
        room.owner, room.operators, room.bans = self.owner, set(self.operators), list(self.bans)
        room.invites = dict(self.invites)


@dataclass(frozen=True)
class RoomNews:
    """One piece of news of a room. For a STATE: `state`, and `what` changed (a
    `room-changed` what to announce, `BAN`, `INVITE`, or "" for nothing to announce) by
    `by`; `target` is the invitee of an INVITE. For a KICK: `by` kicked `target` with
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
