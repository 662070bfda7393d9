"""Each person's devices as the server knows them: the signed list and the mailboxes.

The server keeps the device list its owner signed (e2e/devices.py) and checks it the
way every reader does before storing it: signed by the nick's registered identity key,
naming that key as a device, newer than the list held. It cannot sign one, so it can
add no device; the devices' own clients refuse a list older than one they have seen,
so it cannot quietly hide one either (docs/security.md, "Linked devices").

What the server does with a list: a device it names may log in with its own key
(`vouches`); whispers addressed to a device go to its mailbox (`mailbox_of`), the
folded nick for the device holding the identity key and "nick/device" for a linked one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..e2e.devices import DeviceListError, device_list_from
from ..protocol import (
    Code,
    DeviceListRecord,
    ProtocolError,
    PublishDevices,
    decode_line,
    encode,
    fold_nick,
)
from .store import Store, mailbox

__all__ = ["DeviceDirectory", "DevicesRefused", "Listed"]

#: Lists kept in memory at most (each a few hundred bytes); beyond, the cache starts over.
_CACHE_MAX = 10_000


class DevicesRefused(Exception):
    """A device list or a device address the server refuses; `code` and `reason` go into
    a non-fatal error frame."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Listed:
    """A person's device list as stored: the record (what clients are sent) and the id
    of the device holding the identity key."""

    record: DeviceListRecord
    master: str

    def ids(self) -> list[str]:
        return [d.device for d in self.record.devices]

    def linked_devices(self) -> list[str]:
        """The devices other than the one holding the identity key."""
        return [d for d in self.ids() if d != self.master]


class DeviceDirectory:
    """Thread-safe: the cache is guarded by `_lock`; the store has its own. Sessions'
    reader threads call it."""

    def __init__(
        self, store: Store, *, ttl: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`ttl`: seconds a cached list is trusted (None: until this process changes it).
        A cluster node sets one: other nodes change lists too, and their news can be lost
        (a node dying between its commit and its news), so what is cached must not be
        trusted for long."""
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        # Folded nick -> (when read, its list or None for a person with none). Guarded
        # by `_lock`.
        self._cache: dict[str, tuple[float, Listed | None]] = {}
        # Bumped by every change of a list or a nick (`publish`, `forget`), so that a read
        # of the store that a change overtook is not cached. Guarded by `_lock`.
        self._generation = 0

    def listed(self, nick: str) -> Listed | None:
        """`nick`'s device list, or None if it has none. Raises `StoreUnavailable`."""
        key = fold_nick(nick)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and (self._ttl is None or self._clock() - cached[0] < self._ttl):
                return cached[1]
            generation = self._generation
        stored = self._store.device_list(key)
        found = None if stored is None else _parse(stored[1], self._store.registered_key(key))
        with self._lock:
            # A publish or a release meanwhile may have made what was read stale: then it
            # is not cached (the next call reads again).
            if generation == self._generation:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[key] = (self._clock(), found)
        return found

    def vouches(self, nick: str, device: str, key: bytes) -> bool:
        """True if `nick`'s list names `device` with `key`: a linked device may log in."""
        found = self.listed(nick)
        return found is not None and any(d.device == device and d.key == key for d in found.record.devices)

    def mailbox_of(self, nick: str, device: str) -> str:
        """The mailbox of `nick`'s device `device` ("" for the one holding the identity
        key). Raises `DevicesRefused` if `nick`'s list does not name it."""
        if not device:
            return mailbox(nick)
        found = self.listed(nick)
        if found is None or device not in found.ids():
            raise DevicesRefused(Code.NO_SUCH_USER, f"{nick} has no device {device}")
        return mailbox(nick) if device == found.master else mailbox(nick, device)

    def publish(self, nick: str, identity_key: bytes, record: DeviceListRecord) -> list[str]:
        """Store `record` as `nick`'s list after checking it (signed by `identity_key`,
        which it names; newer than the list held); the ids of the devices it no longer
        names, whose mailboxes the store has forgotten. Raises `DevicesRefused`, or
        `StoreUnavailable`."""
        signed = device_list_from(nick, record)
        try:
            signed.check(identity_key)
        except DeviceListError as exc:
            raise DevicesRefused(Code.INVALID, f"publish_devices: {exc}") from None
        before = self.listed(nick)
        if before is not None and record.version <= before.record.version:
            raise DevicesRefused(
                Code.INVALID,
                f"publish_devices: version {record.version} is not above the one held "
                f"({before.record.version})",
            )
        keep = {(d.device, d.key) for d in record.devices}
        removed = (
            []
            if before is None
            else [d.device for d in before.record.devices if (d.device, d.key) not in keep]
        )
        # A device whose key changed is a new device under an old id: its old mailbox goes.
        stored = self._store.set_device_list(
            nick, record.version, encode(PublishDevices(devices=record)), [d for d in removed if d]
        )
        with self._lock:
            self._cache.pop(fold_nick(nick), None)
            self._generation += 1
        if not stored:  # another publish got there first
            raise DevicesRefused(Code.INVALID, "publish_devices: a newer list was stored meanwhile")
        return removed

    def forget_all(self) -> None:
        """Drop every cached list (a cluster node that may have missed news of changes)."""
        with self._lock:
            self._cache.clear()
            self._generation += 1

    def forget(self, nick: str) -> None:
        """Drop `nick` from the cache (its registration was released or renamed)."""
        with self._lock:
            self._cache.pop(fold_nick(nick), None)
            self._generation += 1


def _parse(line: bytes, identity_key: bytes | None) -> Listed | None:
    """A stored list (checked when it was published), or None if it is unreadable or its
    nick no longer has the key that signed it."""
    try:
        event = decode_line(line.rstrip(b"\n"))
    except ProtocolError:  # written by us: unreadable only if damaged, then as none
        return None
    if not isinstance(event, PublishDevices) or identity_key is None:
        return None
    master = next((d.device for d in event.devices.devices if d.key == identity_key), None)
    return None if master is None else Listed(event.devices, master)
