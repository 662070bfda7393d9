"""The client's durable message store: every whisper received and sent, and what became of it.

A received whisper is committed here together with the ratchet state that decrypted it,
and only then acknowledged to the server; it is marked shown only once the user or
program has had it, so a crash in between shows it again at the next start (as a
replay) instead of losing it. A sent whisper is committed together with the ratchet step
that encrypted it, before its bytes leave the process, and is sent again after any
reconnect or restart until the server says it is stored.

This module holds the shapes (`StoredMessage`, its states) and the `Storage` contract;
`keystore.Keystore` keeps them on disk, `MemoryStorage` in memory (tests, benchmarks).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

from ..protocol import fold_nick

__all__ = ["HISTORY_SHOWN", "Direction", "MemoryStorage", "MessageState", "Storage", "StoredMessage"]

#: How many whispers /history (and the JSON `history` command) show when not told.
HISTORY_SHOWN = 20


class Direction(Enum):
    IN = "in"
    OUT = "out"


class MessageState(Enum):
    """Where a whisper is in its life. One value, not a set of flags.

    Received (`IN`): NEW (committed, not yet confirmed shown) -> SHOWN.
    Sent (`OUT`): SENDING (committed, not yet stored by the server) -> STORED ->
    DELIVERED (the recipient decrypted it) or FAILED (the recipient's client could not
    decrypt it: kept, and sent again in a new session once the recipient's keys are
    settled, which takes it back to SENDING).
    """

    NEW = "new"
    SHOWN = "shown"
    SENDING = "sending"
    STORED = "stored"
    DELIVERED = "delivered"
    FAILED = "failed"


#: The states a message may be in, by direction.
STATES: dict[Direction, frozenset[MessageState]] = {
    Direction.IN: frozenset({MessageState.NEW, MessageState.SHOWN}),
    Direction.OUT: frozenset(
        {MessageState.SENDING, MessageState.STORED, MessageState.DELIVERED, MessageState.FAILED}
    ),
}


@dataclass(frozen=True, kw_only=True)
class StoredMessage:
    """One whisper. `peer` is the other person (sender for IN, recipient for OUT);
    `msg_id` is the sender's id, unique per sender. For OUT, `header` and `ciphertext`
    are the exact bytes to send again (the ratchet has moved on: they cannot be made
    again). `reason` is the failure class of a FAILED whisper."""

    direction: Direction
    peer: str
    msg_id: str
    state: MessageState
    ts: float
    text: str
    trust: str = ""
    fingerprint: str = ""
    header: bytes = b""
    ciphertext: bytes = b""
    reason: str = ""
    #: How often the client has sent it again in a new session after a failure.
    resends: int = 0
    #: For the copy of a whisper sealed for another of our own devices (filed under
    #: "our-nick/device"): whom the whisper was for. "" otherwise.
    to: str = ""

    def __post_init__(self) -> None:
        if self.state not in STATES[self.direction]:
            raise ValueError(f"state {self.state.value} is not one of a {self.direction.value} message's")

    @property
    def key(self) -> tuple[Direction, str, str]:
        """What identifies a message: a sender's id is unique for that sender only."""
        return (self.direction, fold_nick(self.peer), self.msg_id)

    def with_state(self, state: MessageState, reason: str = "") -> StoredMessage:
        return replace(self, state=state, reason=reason)

    def body(self) -> bytes:
        """The private part, as stored (sealed by the keystore when it has a passphrase)."""
        return json.dumps(
            {
                "peer": self.peer,
                "ts": self.ts,
                "text": self.text,
                "trust": self.trust,
                "fingerprint": self.fingerprint,
                "header": base64.b64encode(self.header).decode(),
                "ciphertext": base64.b64encode(self.ciphertext).decode(),
                "resends": self.resends,
                **({"to": self.to} if self.to else {}),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_row(cls, direction: str, msg_id: str, state: str, reason: str, body: bytes) -> StoredMessage:
        """Rebuild from a stored row. Raises `ValueError` if any part is damaged."""
        try:
            obj = json.loads(body)
            if not isinstance(obj, dict):
                raise TypeError("not an object")
            return cls(
                direction=Direction(direction),
                peer=_str(obj, "peer"),
                msg_id=msg_id,
                state=MessageState(state),
                ts=float(obj["ts"]),
                text=_str(obj, "text"),
                trust=_str(obj, "trust"),
                fingerprint=_str(obj, "fingerprint"),
                header=base64.b64decode(_str(obj, "header"), validate=True),
                ciphertext=base64.b64decode(_str(obj, "ciphertext"), validate=True),
                reason=reason,
                resends=int(obj.get("resends", 0)),
                to=_str(obj, "to") if "to" in obj else "",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"damaged message record {msg_id!r}: {exc}") from None


def _str(obj: dict[str, object], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} is not a string")
    return value


class Storage(Protocol):
    """Where `WhisperKeys` keeps its records and messages. `WhisperKeys` calls it under its
    own lock; `Keystore` is thread-safe besides, `MemoryStorage` is not."""

    def load(self) -> dict[str, bytes]:
        """Every record (name -> bytes)."""

    def commit(
        self,
        records: Mapping[str, bytes | None],
        messages: Sequence[StoredMessage] = (),
        *,
        durable: bool = True,
    ) -> None:
        """Write records (None deletes one) and add or replace messages (by `key`), all or
        nothing. `durable` False may skip the flush to disk: the change survives a crash
        of this process but perhaps not a power failure (for marks that only cost a
        repeat if lost)."""

    def message(self, direction: Direction, peer: str, msg_id: str) -> StoredMessage | None:
        """The message with this key, or None."""

    def messages(
        self,
        *,
        direction: Direction | None = None,
        states: frozenset[MessageState] | None = None,
        peer: str | None = None,
        last: int | None = None,
    ) -> list[StoredMessage]:
        """Messages matching every given filter, oldest first; `last` keeps the newest N."""

    def close(self) -> None:
        """Let go of what is held (a keystore's lock); the object is not used after."""


class MemoryStorage:
    """`Storage` in memory: for tests, benchmarks, and programs that keep nothing on disk.

    Not thread-safe by itself: `WhisperKeys` calls it under its own lock.
    """

    def __init__(self, records: Mapping[str, bytes] | None = None) -> None:
        self.records: dict[str, bytes] = dict(records or {})
        self.commits = 0  # how many commits there were (tests count flushes)
        self._messages: dict[tuple[Direction, str, str], StoredMessage] = {}

    def load(self) -> dict[str, bytes]:
        return dict(self.records)

    def commit(
        self,
        records: Mapping[str, bytes | None],
        messages: Sequence[StoredMessage] = (),
        *,
        durable: bool = True,
    ) -> None:
        for name, value in records.items():
            if value is None:
                self.records.pop(name, None)
            else:
                self.records[name] = value
        for message in messages:
            self._messages[message.key] = message  # a replaced one keeps its place
        self.commits += 1

    def message(self, direction: Direction, peer: str, msg_id: str) -> StoredMessage | None:
        return self._messages.get((direction, fold_nick(peer), msg_id))

    def messages(
        self,
        *,
        direction: Direction | None = None,
        states: frozenset[MessageState] | None = None,
        peer: str | None = None,
        last: int | None = None,
    ) -> list[StoredMessage]:
        found = [
            m
            for m in self._messages.values()
            if (direction is None or m.direction is direction)
            and (states is None or m.state in states)
            and (peer is None or fold_nick(m.peer) == fold_nick(peer))
        ]
        return found if last is None else found[-last:] if last > 0 else []

    def close(self) -> None:
        """Nothing is held."""
