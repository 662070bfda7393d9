"""What the terminal shows besides the scrollback: the rooms you are in and who is in each
(away, owner, operators), connection state, who is ignored, the nicks you know. Pure: fed
events, asked questions; no I/O. (Unread whispers are window activity: client/windows.py.)"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import (
    Entered,
    Invited,
    Joined,
    Left,
    Message,
    Names,
    Renamed,
    RoomChanged,
    Welcome,
    fold_nick,
    fold_room,
)
from .events import Reconnected, Reconnecting, WhisperReceived

__all__ = ["ChatState", "RoomState"]


@dataclass
class RoomState:
    """One room you are in, as its last `entered`, `names` and `room_changed` said."""

    name: str
    members: dict[str, str] = field(default_factory=dict)  # folded -> as spelled
    away: set[str] = field(default_factory=set)  # folded
    topic: str = ""
    invite_only: bool = False
    registered: bool = False
    owner: str = ""  # folded; "" when absent or unregistered
    operators: set[str] = field(default_factory=set)  # folded

    def rename(self, old: str, new: str) -> None:
        key = fold_nick(old)
        if key not in self.members:
            return
        del self.members[key]
        self.members[fold_nick(new)] = new
        for group in (self.away, self.operators):
            if key in group:
                group.discard(key)
                group.add(fold_nick(new))
        if self.owner == key:
            self.owner = fold_nick(new)

    def marked(self) -> list[str]:
        """The members as /names shows them: "~" the owner, "@" an operator, "(away)"."""
        shown = []
        for key, nick in sorted(self.members.items()):
            mark = "~" if key == self.owner else "@" if key in self.operators else ""
            shown.append(f"{mark}{nick}{' (away)' if key in self.away else ''}")
        return shown


@dataclass
class ChatState:
    nick: str
    server: str
    rooms: dict[str, RoomState] = field(default_factory=dict)  # fold_room -> the room
    connection: str = "connected"
    ignored: set[str] = field(default_factory=set)  # folded nicks
    #: Nicks whispered with in this session (folded -> as spelled), for "did you mean".
    contacts: dict[str, str] = field(default_factory=dict)
    #: The server's software as its welcome named it ("" from an older server).
    software: str = ""

    def apply(self, event: object) -> None:
        """Update from one event the client produced."""
        if isinstance(event, Welcome):
            self.software = event.software
            self.nick = event.nick
            self.rooms.setdefault(fold_room(event.room), RoomState(event.room)).members = {
                fold_nick(n): n for n in event.users
            }
        elif isinstance(event, Entered):
            self.rooms[fold_room(event.room)] = RoomState(
                event.room,
                members={fold_nick(n): n for n in event.users},
                away={fold_nick(n) for n in event.away},
                topic=event.topic,
                invite_only=event.invite_only,
                registered=event.registered,
                owner=fold_nick(event.owner),
                operators={fold_nick(n) for n in event.operators},
            )
        elif isinstance(event, Names):
            room = self.room(event.room)
            if room is not None:
                room.members = {fold_nick(n): n for n in event.users}
                room.away = {fold_nick(n) for n in event.away}
                room.owner = fold_nick(event.owner)
                room.operators = {fold_nick(n) for n in event.operators}
        elif isinstance(event, RoomChanged):
            room = self.room(event.room)
            if room is not None:
                room.topic, room.invite_only, room.registered = (
                    event.topic,
                    event.invite_only,
                    event.registered,
                )
                room.owner = fold_nick(event.owner)
                room.operators = {fold_nick(n) for n in event.operators}
        elif isinstance(event, Joined):
            room = self.room(event.room)
            if room is not None:
                room.members[fold_nick(event.nick)] = event.nick
        elif isinstance(event, Left):
            self._left(event)
        elif isinstance(event, Renamed):
            for room in self.rooms.values():
                room.rename(event.old, event.new)
            if fold_nick(event.old) == fold_nick(self.nick):
                self.nick = event.new
            if self.contacts.pop(fold_nick(event.old), None) is not None:
                self.contacts[fold_nick(event.new)] = event.new
            if self.is_ignored(event.old):
                # Ignored the person, not only the nick: a rename must not end it. The old
                # nick stays ignored too, as the user typed it.
                self.ignored.add(fold_nick(event.new))
        elif isinstance(event, Reconnected):
            self.connection = "connected"
        elif isinstance(event, Reconnecting):
            self.connection = f"reconnecting (attempt {event.attempt})"
        elif isinstance(event, WhisperReceived) and not self.is_ignored(event.sender):
            self.contacts[fold_nick(event.sender)] = event.sender

    def _left(self, event: Left) -> None:
        if fold_nick(event.nick) == fold_nick(self.nick):
            self.rooms.pop(fold_room(event.room), None)  # we parted, or were kicked
            return
        room = self.room(event.room)
        if room is not None:
            key = fold_nick(event.nick)
            room.members.pop(key, None)
            room.away.discard(key)
            room.operators.discard(key)
            if room.owner == key:
                room.owner = ""

    def room(self, name: str) -> RoomState | None:
        return self.rooms.get(fold_room(name))

    def shares_room(self, nick: str) -> list[str]:
        """The rooms (as spelled) where `nick` is a member."""
        key = fold_nick(nick)
        return [room.name for room in self.rooms.values() if key in room.members]

    def known_nicks(self) -> list[str]:
        """Everyone in any of your rooms and everyone whispered with: completion and "did you mean"."""
        known = dict(self.contacts)
        for room in self.rooms.values():
            known.update(room.members)
        known.pop(fold_nick(self.nick), None)
        return sorted(known.values(), key=str.lower)

    def is_ignored(self, nick: str) -> bool:
        return fold_nick(nick) in self.ignored

    def hides(self, event: object) -> bool:
        """True for events from someone the user ignores: their lines, whispers and
        invitations (an invitation we sent is shown, whoever it names)."""
        if isinstance(event, Message):
            return self.is_ignored(event.nick)
        if isinstance(event, WhisperReceived):
            return self.is_ignored(event.sender)
        if isinstance(event, Invited):
            return self.is_ignored(event.by) and fold_nick(event.by) != fold_nick(self.nick)
        return False

    def mentions_me(self, text: str) -> bool:
        """Whether `text` names us as a word (case-insensitive): "alice:", "@alice", "hi alice"."""
        me = fold_nick(self.nick)
        words = "".join(ch if ch.isalnum() or ch in "_-." else " " for ch in text.lower()).split()
        return me in (w.strip(".-") for w in words)

    def status_line(self, room: str | None = None, window: str = "", activity: str = "") -> str:
        """The status bar: server, nick, connection, the current window (`window`, with how
        many are in `room` when it is one), the other windows' `activity`."""
        here = self.room(room) if room is not None else None
        parts = [self.server, self.nick, self.connection]
        if window or here is not None:
            parts.append(" ".join(p for p in (window, f"{len(here.members)} here" if here else "") if p))
        if activity:
            parts.append(activity)
        return f" {' | '.join(parts)} "
