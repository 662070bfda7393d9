"""Which whispers this user has already been shown, remembered across restarts.

A whisper is delivered again when the server did not hear our acknowledgement (it
crashed, or we did); it must be acknowledged, not shown twice. The ids live in
numbered records of at most `BUCKET` ids each ("received:N"), so remembering one more
rewrites one small record instead of all ten thousand; the oldest record is dropped
once more than `limit` ids are kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["ReceivedLog"]

_PREFIX = "received:"
_LEGACY = "received"  # one record with every id, as written before the buckets


class ReceivedLog:
    """A bounded, persisted set of "sender/message id" keys. Not thread-safe."""

    BUCKET = 250

    def __init__(self, records: Mapping[str, bytes] | None = None, *, limit: int = 10_000) -> None:
        """Load from keystore records. Raises `ValueError` for a malformed record."""
        self._limit = max(limit, self.BUCKET)
        self._buckets: dict[int, list[str]] = {}  # bucket number -> ids, oldest bucket first
        self._seen: set[str] = set()
        self._dirty: dict[str, bytes | None] = {}
        records = records or {}
        numbered = sorted(
            (_bucket_number(name), value) for name, value in records.items() if name.startswith(_PREFIX)
        )
        legacy = records.get(_LEGACY)
        if legacy is not None:
            self._dirty[_LEGACY] = None  # rewritten below as buckets
        for ids in ([_parse(legacy)] if legacy is not None else []) + [_parse(v) for _, v in numbered]:
            for key in ids:
                self._add(key)
        if legacy is not None:
            for number in self._buckets:
                self._mark(number)

    def __contains__(self, key: str) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: str) -> None:
        """Remember `key`; `take_dirty` then returns the records to save."""
        if key in self._seen:
            return
        self._mark(self._add(key))

    def take_dirty(self) -> dict[str, bytes | None]:
        """Records changed since the last call (None: delete that record)."""
        dirty, self._dirty = self._dirty, {}
        return dirty

    def _add(self, key: str) -> int:
        if not self._buckets or len(self._buckets[max(self._buckets)]) >= self.BUCKET:
            self._buckets[max(self._buckets, default=0) + 1] = []
        number = max(self._buckets)
        self._buckets[number].append(key)
        self._seen.add(key)
        while len(self._seen) > self._limit:
            oldest = min(self._buckets)
            self._seen.difference_update(self._buckets.pop(oldest))
            self._dirty[f"{_PREFIX}{oldest}"] = None
        return number

    def _mark(self, number: int) -> None:
        ids = self._buckets.get(number)
        if ids is not None:
            self._dirty[f"{_PREFIX}{number}"] = json.dumps(ids).encode()


def _bucket_number(name: str) -> int:
    number = name.removeprefix(_PREFIX)
    if not number.isdigit():
        raise ValueError(f"malformed keystore record name: {name}")
    return int(number)


def _parse(value: bytes) -> list[str]:
    try:
        ids = json.loads(value)
    except ValueError:
        ids = None
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        raise ValueError("malformed keystore record: received")
    return ids
