"""The rooms a client remembers being in, to join them again by itself. Pure: no I/O.

After a reconnect the client joins again the rooms it was in; after a restart too, from
where they were saved (`RoomStore`: the keystore database for an identity user, a small
`rooms.json` for a guest, both in keystore.py). Only rooms the user chose count: the
server's autojoin rooms come back by themselves, and a room the user left, or was
kicked or banned from, is forgotten.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from ..protocol import fold_room
from ..protocol.events import check_room

__all__ = ["MAX_REMEMBERED", "RememberedRooms", "RoomStore", "decode_rooms", "encode_rooms"]

#: Rooms remembered at most: more than any server lets one person be in (20 by default),
#: so a saved list that somehow grew is cut rather than sent as a flood of joins.
MAX_REMEMBERED = 100


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
