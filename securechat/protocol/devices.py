"""Frames for a person's devices: their signed list, and the pairing that links one.

The server stores and hands out device lists, and relays pairing messages, but what
they mean is the e2e layer's (docs/e2e.md, "Device lists" and "Linking a device"): a
list is signed by the person's identity key, and pairing data is opaque to the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .events import FROM_CLIENT, FROM_SERVER, Event, Record, check_device, check_nick

__all__ = [
    "LINK_STEPS",
    "MAX_DEVICES",
    "MAX_LINK_DATA_BYTES",
    "DeviceListRecord",
    "DeviceRecord",
    "Devices",
    "Link",
    "PublishDevices",
]

#: The most devices a list may name: every device's bundle must fit one `keys` frame
#: (each is at most ~4.5 KiB of JSON with its KEM prekeys).
MAX_DEVICES = 8
#: A pairing message is a key, a commitment or a short sealed payload.
MAX_LINK_DATA_BYTES = 4096
#: The steps of a pairing (e2e/pairing.py): the new device's commitment, the existing
#: device's answer, the new device's reveal, the existing device's result, and an abort
#: either side may send.
LINK_STEPS = frozenset({"commit", "answer", "reveal", "result", "abort"})

_PAIRING_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")


@dataclass(frozen=True, kw_only=True)
class DeviceRecord(Record):
    """One device: the id its `hello` names and its Ed25519 key."""

    device: str
    key: bytes

    def __post_init__(self) -> None:
        if not self.device:
            raise ValueError("device: empty")
        check_device("device", self.device)
        if len(self.key) != 32:
            raise ValueError("key: an Ed25519 public key is 32 bytes")


@dataclass(frozen=True, kw_only=True)
class DeviceListRecord(Record):
    """A person's devices as their identity key signed them, at `version`."""

    version: int
    devices: tuple[DeviceRecord, ...]
    signature: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.version < 2**63:
            raise ValueError("version: a positive 63-bit integer")
        if not 1 <= len(self.devices) <= MAX_DEVICES:
            raise ValueError(f"devices: 1 to {MAX_DEVICES}")
        if len(self.signature) != 64:
            raise ValueError("signature: an Ed25519 signature is 64 bytes")


@dataclass(frozen=True, kw_only=True)
class PublishDevices(Event):
    """Replace your device list (only the device holding the identity key can sign one);
    its version must be above the one the server holds. The devices it no longer names
    are logged out and their keys and queued whispers deleted."""

    TYPE = "publish_devices"
    SENDERS = FROM_CLIENT
    devices: DeviceListRecord


@dataclass(frozen=True, kw_only=True)
class Devices(Event):
    """`nick`'s device list as the server holds it: sent to each of your sessions when
    it changes, and after your login if you have one."""

    TYPE = "devices"
    SENDERS = FROM_SERVER
    nick: str
    devices: DeviceListRecord

    def __post_init__(self) -> None:
        check_nick("nick", self.nick)


@dataclass(frozen=True, kw_only=True)
class Link(Event):
    """One pairing message, relayed. From a client, `peer` is whom it is for (the
    person whose device is being linked, or the new device's session nick); from the
    server, who sent it. `pairing` is the new device's id for this pairing, echoed by
    both sides; `data` is opaque to the server."""

    TYPE = "link"
    SENDERS = FROM_CLIENT | FROM_SERVER
    peer: str
    pairing: str
    step: str
    data: bytes = b""

    def __post_init__(self) -> None:
        check_nick("peer", self.peer)
        if _PAIRING_RE.fullmatch(self.pairing) is None:
            raise ValueError("pairing: 1-64 of A-Z a-z 0-9 _ -")
        if self.step not in LINK_STEPS:
            raise ValueError(f"step: one of {sorted(LINK_STEPS)}")
        if len(self.data) > MAX_LINK_DATA_BYTES:
            raise ValueError(f"data: at most {MAX_LINK_DATA_BYTES} bytes")
