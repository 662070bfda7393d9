"""A person's devices: the list their identity key signs, and the rules a reader applies.

One key per device, vouched for by the identity key (docs/security.md, "Linked devices"):
the identity (master) key stays on the first device, whose device key it is; every
linked device has its own Ed25519 key (and its own X25519 identity and prekeys, bound to
it as any identity's are). The identity key signs the list of (device id, device key)
with a version that only goes up. A reader holding the pinned identity key accepts a
device key only if a valid list names it, and never a list older than one it has seen:
the server, which stores and hands out the list, can neither add a device (it cannot
sign) nor hide one without serving an older list (the version went back) or none.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import DeviceListRecord, DeviceRecord, fold_nick
from ..protocol.devices import MAX_DEVICES
from ..protocol.events import is_valid_device
from .errors import E2EError
from .identity import Identity
from .primitives import KEY_BYTES, SIG_BYTES, VERSION_LABEL, ed25519_verify, lp

__all__ = [
    "MAX_DEVICES",
    "Device",
    "DeviceList",
    "DeviceListError",
    "device_list_from",
    "device_list_message",
    "device_list_record",
    "sign_device_list",
]


class DeviceListError(E2EError):
    """A device list is not acceptable: bad signature, malformed, or older than one seen."""


@dataclass(frozen=True)
class Device:
    """One device of a person: the id its `hello` names, and its Ed25519 key."""

    device: str
    sig_key: bytes


def device_list_message(user: str, version: int, devices: tuple[Device, ...]) -> bytes:
    """LP(V, "devices", fold(user), version, count, id_1, key_1, ..., id_n, key_n): what
    the identity key signs (docs/e2e.md, "Device lists")."""
    fields: list[bytes | str | int] = [VERSION_LABEL, b"devices", fold_nick(user), version, len(devices)]
    for device in devices:
        fields += [device.device, device.sig_key]
    return lp(*fields)


@dataclass(frozen=True)
class DeviceList:
    """A signed list of a person's devices. Construct with `sign_device_list`, or from the
    wire and then `check` it: nothing here is trusted before that."""

    user: str
    version: int
    devices: tuple[Device, ...]
    signature: bytes

    def check(self, identity_key: bytes, *, at_least: int = 0) -> None:
        """Raise `DeviceListError` unless this list is well formed, signed by
        `identity_key` (the person's pinned Ed25519 key), names that key as one of its
        devices, and has a version of at least `at_least` (the highest seen)."""
        if not 1 <= self.version < 2**63:
            raise DeviceListError("device list: the version must be a positive integer")
        if not 1 <= len(self.devices) <= MAX_DEVICES:
            raise DeviceListError(f"device list: 1 to {MAX_DEVICES} devices")
        ids = [d.device for d in self.devices]
        keys = [d.sig_key for d in self.devices]
        if len(set(ids)) != len(ids) or len(set(keys)) != len(keys):
            raise DeviceListError("device list: a device id or key is listed twice")
        for device in self.devices:
            if not is_valid_device(device.device):
                raise DeviceListError("device list: a malformed device id")
            if len(device.sig_key) != KEY_BYTES:
                raise DeviceListError("device list: a device key is 32 bytes")
        if identity_key not in keys:
            raise DeviceListError("device list: the identity's own device is missing")
        if len(self.signature) != SIG_BYTES or not ed25519_verify(
            identity_key, self.signature, device_list_message(self.user, self.version, self.devices)
        ):
            raise DeviceListError(f"{self.user}'s device list is not signed by their identity key")
        # Only a list the person signed says anything about versions: checked last, so
        # that a forged one is called forged, not a rollback.
        if self.version < at_least:
            raise DeviceListError(
                f"{self.user}'s device list went back from version {at_least} to {self.version}: "
                "the server may be hiding a device"
            )

    def key_of(self, device: str) -> bytes | None:
        """The key of device `device`, None if the list does not name it."""
        return next((d.sig_key for d in self.devices if d.device == device), None)

    def vouches(self, device: str, sig_key: bytes) -> bool:
        """True if the list names `device` with key `sig_key` (check the list first)."""
        return self.key_of(device) == sig_key

    def without(self, device: str) -> tuple[Device, ...]:
        """The devices but `device`."""
        return tuple(d for d in self.devices if d.device != device)


def device_list_record(signed: DeviceList) -> DeviceListRecord:
    """The wire form of a list (`publish_devices`, `devices`, `keys`)."""
    return DeviceListRecord(
        version=signed.version,
        devices=tuple(DeviceRecord(device=d.device, key=d.sig_key) for d in signed.devices),
        signature=signed.signature,
    )


def device_list_from(user: str, record: DeviceListRecord) -> DeviceList:
    """`user`'s list as a record on the wire carries it (not checked: call `check`)."""
    return DeviceList(
        user=user,
        version=record.version,
        devices=tuple(Device(d.device, d.key) for d in record.devices),
        signature=record.signature,
    )


def sign_device_list(identity: Identity, version: int, devices: tuple[Device, ...]) -> DeviceList:
    """The list of `devices` at `version`, signed by `identity` (the person's master key).
    Raises `DeviceListError` if the result would not pass `check`."""
    signed = DeviceList(
        user=identity.user,
        version=version,
        devices=devices,
        signature=identity.sign(device_list_message(identity.user, version, devices)),
    )
    signed.check(identity.sig_key)
    return signed
