"""The hub: who is in the room, and fan-out of events to them.

All shared mutable server state lives here behind one lock. Delivery means handing
already-encoded bytes to each member, which never blocks, so holding the lock while
fanning out keeps one global order: every member sees the room's events in the same
sequence.

Join and leave notices are coalesced: they wait in `_presence` and go out together,
one write per member, at the next `flush_presence` (the server calls it a few times a
second) or before the next room line or member list, whichever comes first. A storm of
N logins would otherwise cost N x N separate writes; this way it costs a few writes per
member per flush, and the order users see is unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ..protocol import DEFAULT_ROOM, Joined, Left, Message, Names, Say, encode, fold_nick

__all__ = ["Hub", "Member", "NickTaken", "NoSuchRoom"]


class NickTaken(Exception):
    """Another connected user already holds this nick (compared case-insensitively)."""


class NoSuchRoom(Exception):
    """The event named a room this server does not have."""


class Member(Protocol):
    """What the hub needs from a session."""

    #: The away message the member set ("" when here).
    away: str

    def deliver(self, frame: bytes) -> None:
        """Queue one encoded frame for this member without blocking."""


class Hub:
    """The registry of joined members and the room's fan-out.

    Contract: every method is thread-safe and returns without socket I/O.
    `join`'s `on_joined` callback runs under the hub lock, before anyone else can
    see the new member, so a welcome frame it queues precedes every room event.
    """

    def __init__(
        self, *, room: str = DEFAULT_ROOM, clock: Callable[[], float] = time.time, history: int = 0
    ) -> None:
        self.room = room
        self._clock = clock
        self._lock = threading.Lock()
        self._members: dict[str, tuple[str, Member]] = {}  # folded nick -> (nick, member)
        self._history: deque[Message] = deque(maxlen=history)
        # Said but not yet written to the store (guarded by `_lock`). A line leaves only
        # once `saved` confirms the write, so a failed write (disk full) loses nothing.
        # Bounded like the history: a line pushed out of the newest `history` lines is one
        # the store would delete on the next write anyway (it keeps that many), so dropping
        # the oldest unsaved line loses nothing that would have been kept.
        self._unsaved: deque[Message] = deque(maxlen=history)
        self._unsaved_dropped = 0  # lines dropped that way since the last `saved` (same lock)
        self._presence: list[bytes] = []  # join/leave notices not yet sent
        # Members who joined while notices were pending: id(member) -> index of the first
        # notice they get (their welcome already covered the earlier ones and their own).
        self._newcomers: dict[int, int] = {}
        self._last_ts = 0.0

    def join(
        self,
        member: Member,
        nick: str,
        on_joined: Callable[[tuple[str, ...]], None],
        *,
        may_replace: Callable[[Member], bool] | None = None,
    ) -> Member | None:
        """Add `member` as `nick`, call `on_joined(users)`, then announce it to the others.

        If the nick is held and `may_replace(holder)` says so (the same user proved the
        same key again), the holder is displaced silently and returned: the caller must
        close it. Raises `NickTaken` otherwise.
        """
        key = fold_nick(nick)
        with self._lock:
            holder = self._members.get(key)
            if holder is not None and (may_replace is None or not may_replace(holder[1])):
                raise NickTaken(nick)
            self._members[key] = (nick, member)
            on_joined(self._names_locked())
            for line in self._history:  # before any live event can reach the newcomer
                member.deliver(encode(dataclasses.replace(line, history=True)))
            if holder is None:
                self._presence.append(encode(Joined(room=self.room, nick=nick)))
            else:  # the same user again: nothing to announce
                self._newcomers.pop(id(holder[1]), None)
            self._newcomers[id(member)] = len(self._presence)
        return None if holder is None else holder[1]

    def leave(self, member: Member, nick: str, reason: str = "") -> None:
        """Remove `member` if it holds `nick`, and announce it. A no-op otherwise."""
        key = fold_nick(nick)
        with self._lock:
            entry = self._members.get(key)
            if entry is None or entry[1] is not member:
                return
            del self._members[key]
            self._newcomers.pop(id(member), None)
            self._presence.append(encode(Left(room=self.room, nick=nick, reason=reason)))

    def say(self, nick: str, room: str, text: str, *, action: bool = False) -> None:
        """Broadcast a public message from `nick` to everyone in `room`, sender included.

        Raises `NoSuchRoom` for an unknown room. The sender gets its own message back
        so that its screen shows the order everyone else sees.
        """
        self.say_many(nick, [Say(room=room, text=text, action=action)])

    def say_many(self, nick: str, says: Sequence[Say]) -> None:
        """Broadcast `says` from `nick`, in order, as one write per member.

        Lines a client sent together go out together: one fan-out instead of one per
        line. Raises `NoSuchRoom`, before anything is sent, if one names an unknown room.
        """
        for say in says:
            self._check_room(say.room)
        with self._lock:
            messages = [
                Message(room=s.room, nick=nick, text=s.text, ts=self._next_ts_locked(), action=s.action)
                for s in says
            ]
            frame = b"".join(encode(m) for m in messages)
            self._flush_presence_locked()
            self._fan_out_locked(frame)
            if self._history.maxlen:
                self._history.extend(messages)
                self._unsaved_dropped += max(0, len(self._unsaved) + len(messages) - self._history.maxlen)
                self._unsaved.extend(messages)

    def has_room(self, room: str) -> bool:
        return room == self.room

    def _next_ts_locked(self) -> float:
        # Strictly increasing: clients skip history lines whose ts is not newer than the
        # last line they saw, so two lines must never share one (a float at today's
        # epoch resolves only ~0.24 us, and lines of one batch are stamped together).
        # This also covers the wall clock jumping back: new lines are stamped just after
        # the newest line (seeded from the stored history at start), never older, until
        # the clock catches up.
        self._last_ts = max(self._clock(), self._last_ts + 1e-6)
        return self._last_ts

    def names(self, room: str) -> Names:
        """The `names` event for `room`. Raises `NoSuchRoom`."""
        self._check_room(room)
        with self._lock:
            self._flush_presence_locked()  # so no notice arrives after the list it is part of
            return Names(room=room, users=self._names_locked())

    def flush_presence(self) -> None:
        """Send the pending join/leave notices (one write per member)."""
        with self._lock:
            self._flush_presence_locked()

    def load_history(self, lines: Iterable[Message]) -> None:
        """Seed the history (at start, from the store)."""
        seeded = list(lines)
        with self._lock:
            self._history.extend(seeded)
            self._last_ts = max([self._last_ts, *(line.ts for line in seeded)])

    def unsaved(self) -> list[Message]:
        """Room lines not yet written to the store, oldest first (they stay unsaved until
        `saved` is called with them)."""
        with self._lock:
            return list(self._unsaved)

    def saved(self, lines: Sequence[Message]) -> int:
        """`lines` (from `unsaved`) are in the store now: stop holding them as unsaved.

        Returns how many unsaved lines were dropped unwritten since the last call because
        the buffer was full (see `__init__`: none that the store would have kept).
        """
        written = {id(line) for line in lines}
        with self._lock:
            # The written lines are the oldest ones still held (newer ones were appended
            # after them; older ones may have been pushed out meanwhile).
            while self._unsaved and id(self._unsaved[0]) in written:
                self._unsaved.popleft()
            dropped, self._unsaved_dropped = self._unsaved_dropped, 0
        return dropped

    def member(self, nick: str) -> Member | None:
        """The member holding `nick` (case-insensitively), or None."""
        with self._lock:
            entry = self._members.get(fold_nick(nick))
        return None if entry is None else entry[1]

    def display_nick(self, nick: str) -> str | None:
        """`nick` as its holder spelled it when joining, or None if not here."""
        with self._lock:
            entry = self._members.get(fold_nick(nick))
        return None if entry is None else entry[0]

    def __len__(self) -> int:
        with self._lock:
            return len(self._members)

    def _check_room(self, room: str) -> None:
        if not self.has_room(room):
            raise NoSuchRoom(room)

    def _names_locked(self) -> tuple[str, ...]:
        # Sorted by the folded nick, which is already the key: no Python call per member
        # (this runs at every login, so it must stay cheap with thousands present).
        return tuple(nick for _, (nick, _) in sorted(self._members.items()))

    def _fan_out_locked(self, frame: bytes) -> None:
        # One encoded frame, the same bytes object queued to every recipient.
        for _, member in self._members.values():
            member.deliver(frame)

    def _flush_presence_locked(self) -> None:
        if not self._presence:
            return
        notices, self._presence = self._presence, []
        newcomers, self._newcomers = self._newcomers, {}
        blob = b"".join(notices)
        starts = [0, *itertools.accumulate(len(n) for n in notices)]  # byte offset of each notice
        for _, member in self._members.values():
            first = newcomers.get(id(member))
            if first is None:
                member.deliver(blob)
            elif starts[first] < len(blob):
                member.deliver(blob[starts[first] :])
