"""The rooms a client remembers being in, to join them again by itself, and the pace of
those joins after a login (`RejoinQueue`). Pure: no I/O, no clock (the time is passed in).

After a reconnect the client joins again the rooms it was in; after a restart too, from
where they were saved (`RoomStore`: the keystore database for an identity user, a small
`rooms.json` for a guest, both in keystore.py). Only rooms the user chose count: the
server's autojoin rooms come back by themselves, and a room the user left, or was
kicked or banned from, is forgotten.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from ..protocol import Entered, Names, fold_nick, fold_room
from ..protocol.events import check_room
from ..protocol.limits import MAX_USERS_LISTED
from ..protocol.rooms import Members

__all__ = [
    "MAX_REMEMBERED",
    "REJOIN_BURST",
    "REJOIN_PACE",
    "REJOIN_RETRIES",
    "REJOIN_RETRY_AFTER",
    "MemberPages",
    "Refusal",
    "RejoinQueue",
    "RememberedRooms",
    "RoomStore",
    "decode_rooms",
    "encode_rooms",
]

#: Rooms remembered at most: more than any server lets one person be in (20 by default),
#: so a saved list that somehow grew is cut rather than sent as a flood of joins.
MAX_REMEMBERED = 100

#: Joins sent at once after a login; the rest follow one per `REJOIN_PACE` seconds. The
#: server lets a session make as many joins at once as it may be in rooms (20 by
#: default), so a user who remembers more than that is not refused for rate.
REJOIN_BURST = 20
#: Seconds between the joins after the first `REJOIN_BURST`: the server's default rate
#: for requests (5 a second).
REJOIN_PACE = 0.2
#: A rejoin the server refused for rate is sent again this many times at most, after
#: `REJOIN_RETRY_AFTER` seconds, doubling each time (1 + 2 + 4 + 8 + 16 s). The room
#: stays remembered whatever happens, so the next login tries it again.
REJOIN_RETRIES = 5
REJOIN_RETRY_AFTER = 1.0


class RoomStore(Protocol):
    """Where the remembered rooms are kept between runs. Both calls may raise
    `KeystoreError` (a damaged file, a full disk)."""

    def load_rooms(self) -> list[str]: ...

    def save_rooms(self, rooms: Sequence[str]) -> None: ...


class RememberedRooms:
    """Room names in the order they were joined, each once whatever its case (the
    spelling of the latest join is kept). Not thread-safe: one owner at a time."""

    def __init__(self, rooms: Iterable[str] = ()) -> None:
        self._rooms: dict[str, str] = {}  # folded name -> name as joined
        for room in rooms:
            self.add(room)

    def add(self, room: str) -> bool:
        """Remember `room`; True if that changed anything."""
        key = fold_room(room)
        if self._rooms.get(key) == room:
            return False
        if key not in self._rooms and len(self._rooms) >= MAX_REMEMBERED:
            return False
        self._rooms[key] = room
        return True

    def discard(self, room: str) -> bool:
        """Forget `room`; True if it was remembered."""
        return self._rooms.pop(fold_room(room), None) is not None

    def __contains__(self, room: object) -> bool:
        return isinstance(room, str) and fold_room(room) in self._rooms

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._rooms.values()))

    def __len__(self) -> int:
        return len(self._rooms)

    def names(self) -> tuple[str, ...]:
        return tuple(self._rooms.values())


class Refusal(Enum):
    """What a rate-limited refusal of a join means to the `RejoinQueue`."""

    NOT_A_REJOIN = "not-a-rejoin"  # not a join the queue sent: the program's own
    RETRYING = "retrying"  # sent again later: nothing to tell the program
    GIVEN_UP = "given-up"  # tried `REJOIN_RETRIES` times: the program is told (still remembered)


#: Slack in comparing token counts: a refill computed from float times that should make
#: exactly one token may fall a rounding error short.
_EPSILON = 1e-9


@dataclass
class _Pending:
    room: str
    due: float  # monotonic time before which it is not sent
    tries: int  # times it was refused for rate so far


class RejoinQueue:
    """The remembered rooms still to be joined after a login, and when each may go.

    Held from `start` until `release`: the client releases it once it has read what
    came with the welcome, so that the rooms the server put us in (their `entered`) are
    not joined again. Then at most `REJOIN_BURST` joins at once, and one per
    `REJOIN_PACE` seconds (a token bucket started full at each login); a join refused
    for rate goes back in the queue with a growing delay, `REJOIN_RETRIES` times at
    most. Pure: the caller passes the monotonic time in. Not thread-safe: the client
    calls it under its own lock.
    """

    def __init__(self) -> None:
        self._waiting: list[_Pending] = []  # in the order remembered, retries at the end
        self._sent: dict[str, _Pending] = {}  # folded name -> sent, not answered yet
        self._held = False
        self._tokens = float(REJOIN_BURST)
        self._since = 0.0

    def start(self, rooms: Iterable[str], now: float) -> None:
        """A new login: join `rooms` (forgetting what the last connection left), once released."""
        self._waiting = [_Pending(room, now, 0) for room in rooms]
        self._sent = {}
        self._held = True
        self._tokens, self._since = float(REJOIN_BURST), now

    def release(self) -> None:
        """What came with the welcome is read: `due` may give rooms from now on."""
        self._held = False

    def clear(self) -> None:
        """The connection ended: nothing more to send on it."""
        self._waiting, self._sent = [], {}

    def entered(self, room: str) -> None:
        """We are in `room` (the server put us there, or answered a join): not to be joined."""
        key = fold_room(room)
        self._sent.pop(key, None)
        self._waiting = [p for p in self._waiting if fold_room(p.room) != key]

    def due(self, now: float) -> list[str]:
        """The rooms to send a join for now (and counted as sent), within the budget."""
        if self._held:
            return []
        self._tokens = min(float(REJOIN_BURST), self._tokens + (now - self._since) / REJOIN_PACE)
        self._since = now
        ready: list[str] = []
        for pending in list(self._waiting):
            if self._tokens < 1.0 - _EPSILON:
                break
            if pending.due > now:
                continue
            self._tokens -= 1.0
            self._waiting.remove(pending)
            self._sent[fold_room(pending.room)] = pending
            ready.append(pending.room)
        return ready

    def refused(self, room: str, *, for_rate: bool, now: float) -> Refusal:
        """The server refused a join of `room`. One for rate that the queue sent goes back
        in it (`RETRYING`) until it has been tried `REJOIN_RETRIES` times."""
        pending = self._sent.pop(fold_room(room), None)
        if pending is None:
            return Refusal.NOT_A_REJOIN
        if not for_rate:
            return Refusal.NOT_A_REJOIN  # banned, invite-only, ...: the program is told as usual
        if pending.tries >= REJOIN_RETRIES:
            return Refusal.GIVEN_UP
        pending.due = now + REJOIN_RETRY_AFTER * 2**pending.tries
        pending.tries += 1
        self._waiting.append(pending)
        return Refusal.RETRYING

    def next_due(self) -> float | None:
        """When `due` will next have a room to give (None: nothing waits)."""
        if self._held or not self._waiting:
            return None
        earliest = min(p.due for p in self._waiting)
        token_at = self._since + max(0.0, 1.0 - self._tokens) * REJOIN_PACE
        return max(earliest, token_at)

    def __len__(self) -> int:
        return len(self._waiting)


class MemberPages:
    """The `members` pages of the lists still coming, each joined to the `entered` or
    `names` that ends it (docs/protocol.md, "Long member lists"), so the program gets
    one whole list and shows a room once it has all of it. Pure; not thread-safe: the
    client's reader thread owns it.

    `add` and `complete` raise `ValueError` for a sequence no server may send: more
    members waiting than a list may hold (`MAX_USERS_LISTED`, across all lists, so a
    server cannot make the client hold pages without bound), or a joined list that is
    no valid frame (the same member twice, an away member not among them). The client
    takes that as the server breaking the protocol.
    """

    def __init__(self) -> None:
        # (folded room, the frame type the pages precede) -> the pages' users and away.
        self._waiting: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        self._held = 0  # users waiting, across every list

    def add(self, page: Members) -> None:
        """Keep `page` until the frame it precedes comes."""
        if self._held + len(page.users) > MAX_USERS_LISTED:
            raise ValueError(f"more than {MAX_USERS_LISTED} members in pages not yet completed")
        users, away = self._waiting.setdefault((fold_room(page.room), page.of), ([], []))
        users.extend(page.users)
        away.extend(page.away)
        self._held += len(page.users)

    def complete(self, event: Entered | Names) -> Entered | Names:
        """`event` with the members of the pages that came before it first (`event`
        itself when none did)."""
        waiting = self._waiting.pop((fold_room(event.room), event.TYPE), None)
        if waiting is None:
            return event
        self._held -= len(waiting[0])
        whole, whole_away = (*waiting[0], *event.users), (*waiting[1], *event.away)
        members = set(map(fold_nick, whole))
        if len(members) != len(whole):
            raise ValueError(f"the member list of {event.room} names someone twice")
        if not members.issuperset(map(fold_nick, whole_away)):
            raise ValueError(f"the away list of {event.room} names someone not in it")
        return dataclasses.replace(event, users=whole, away=whole_away)

    def clear(self) -> None:
        """The connection ended: its unfinished lists will not be completed."""
        self._waiting.clear()
        self._held = 0

    def __len__(self) -> int:
        """How many lists are waiting for the frame that ends them."""
        return len(self._waiting)


def encode_rooms(rooms: Iterable[str]) -> bytes:
    """The saved form: a JSON list of room names."""
    return json.dumps(list(rooms)).encode()


def decode_rooms(data: bytes) -> list[str]:
    """The room names in a saved list. Raises `ValueError` if it is not one (a damaged
    file must be said, not silently taken for "no rooms")."""
    value = json.loads(data)
    if not isinstance(value, list):
        raise ValueError("expected a list of room names")
    for room in value:
        if not isinstance(room, str):
            raise ValueError(f"{room!r} is not a room name")
        check_room(room)
    return list(RememberedRooms(value))  # duplicates and the excess dropped
