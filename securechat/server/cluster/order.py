"""A room's total order across nodes, as each node tracks it (sans I/O).

Every room publish gets the room's next offset from Redis (one Lua script: backplane.py),
under the backplane's epoch, a random id Redis keeps only as long as its data: a Redis
that restarted empty has a new epoch and counts offsets from 1 again. A node hands a
room's batches to its hub strictly in offset order: `RoomOrder.offer` says, for each batch
the subscriber reads, whether to deliver it, drop it (a duplicate: read already, from the
channel or the stream), or first fill a gap from the room's stream (a batch lost from the
channel: the subscriber fell behind, or reconnected).

A room this node has no position for starts at offset 1: the node has been subscribed
since the room's first batch (at its first subscription it takes every existing room's
position as its start: `baseline`), or the epoch began again (every room counts from 1).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Offer", "RoomOrder", "Verdict"]


class Verdict(enum.Enum):
    DELIVER = "deliver"  # the next batch of the room: hand it to the hub
    DUPLICATE = "duplicate"  # delivered already: drop it
    GAP = "gap"  # batches are missing before it: read them from the stream first
    RESET = "reset"  # another epoch: Redis lost its data; start the room's count again


@dataclass(frozen=True)
class Offer:
    verdict: Verdict
    #: For GAP: the first missing offset (the batches from there up to the offered one,
    #: excluded, are to be read from the stream).
    missing_from: int = 0


class RoomOrder:
    """The (epoch, next offset) of every room one node has seen. Owned by the backplane's
    subscriber thread (nothing else touches it)."""

    def __init__(self) -> None:
        self.epoch = ""
        self._next: dict[str, int] = {}  # folded room -> the next offset to deliver

    def offer(self, epoch: str, room: str, offset: int) -> Offer:
        """What to do with `room`'s batch `offset` of `epoch` (see the module docstring)."""
        if epoch != self.epoch:
            return Offer(Verdict.RESET)
        expected = self.expected(room)
        if offset == expected:
            return Offer(Verdict.DELIVER)
        if offset < expected:
            return Offer(Verdict.DUPLICATE)
        return Offer(Verdict.GAP, missing_from=expected)

    def delivered(self, room: str, offset: int) -> None:
        """`room`'s batch `offset` was handed to the hub: the next one is expected."""
        self._next[room] = offset + 1

    def skip_to(self, room: str, offset: int) -> None:
        """Batches before `offset` cannot be had any more (trimmed from the stream):
        expect `offset` next."""
        self._next[room] = offset

    def expected(self, room: str) -> int:
        """The next offset to deliver for `room` (1 for a room not seen yet)."""
        return self._next.get(room, 1)

    def baseline(self, room: str, last: int) -> None:
        """At a node's first subscription: `room` stands at `last`, all of it history to
        this node; deliver what comes after."""
        self._next.setdefault(room, last + 1)

    def reset(self, epoch: str) -> None:
        """A new epoch: every room counts from scratch (first batch seen starts it)."""
        self.epoch = epoch
        self._next.clear()
