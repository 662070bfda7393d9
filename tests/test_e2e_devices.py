"""Device lists: signed by the identity key, never accepted older than one seen."""

from __future__ import annotations

import dataclasses

import pytest

from securechat.e2e.devices import MAX_DEVICES, Device, DeviceList, DeviceListError, sign_device_list
from securechat.e2e.identity import Identity


def devices_of(alice: Identity, *others: Identity) -> tuple[Device, ...]:
    return (Device("laptop", alice.sig_key), *(Device(f"d{n}", o.sig_key) for n, o in enumerate(others)))


def test_a_signed_list_checks_and_names_its_devices() -> None:
    alice, phone = Identity.generate("alice"), Identity.generate("alice")
    signed = sign_device_list(alice, 2, devices_of(alice, phone))
    signed.check(alice.sig_key, at_least=2)
    assert signed.vouches("d0", phone.sig_key)
    assert not signed.vouches("d0", alice.sig_key)
    assert signed.key_of("gone") is None


def test_a_device_the_server_adds_is_refused() -> None:
    # The server keeps the list; it adds its own key to it, but cannot sign.
    alice, evil = Identity.generate("alice"), Identity.generate("alice")
    signed = sign_device_list(alice, 1, devices_of(alice))
    forged = dataclasses.replace(signed, devices=(*signed.devices, Device("evil", evil.sig_key)))
    with pytest.raises(DeviceListError, match="not signed"):
        forged.check(alice.sig_key)
    # Signed by a key of its own, it is not alice's list either.
    by_evil = sign_device_list(Identity("alice", evil.sig_private, evil.dh), 5, devices_of(evil, alice))
    with pytest.raises(DeviceListError):
        by_evil.check(alice.sig_key)


def test_an_older_list_is_refused_so_a_device_cannot_be_hidden() -> None:
    alice, phone = Identity.generate("alice"), Identity.generate("alice")
    old = sign_device_list(alice, 1, devices_of(alice))
    new = sign_device_list(alice, 2, devices_of(alice, phone))
    new.check(alice.sig_key, at_least=1)
    with pytest.raises(DeviceListError, match="went back from version 2 to 1"):
        old.check(alice.sig_key, at_least=2)


def test_the_version_and_the_names_are_bound_by_the_signature() -> None:
    alice, phone = Identity.generate("alice"), Identity.generate("alice")
    signed = sign_device_list(alice, 3, devices_of(alice, phone))
    for changed in (
        dataclasses.replace(signed, version=4),
        dataclasses.replace(signed, user="bob"),
        dataclasses.replace(signed, devices=(signed.devices[0], Device("d1", phone.sig_key))),
        dataclasses.replace(signed, signature=bytes(64)),
    ):
        with pytest.raises(DeviceListError):
            changed.check(alice.sig_key)


@pytest.mark.parametrize(
    "devices, why",
    [
        ((), "1 to"),
        (tuple(Device(f"d{n}", bytes([n]) * 32) for n in range(MAX_DEVICES + 1)), "1 to"),
        ((Device("same", b"a" * 32), Device("same", b"b" * 32)), "twice"),
        ((Device("bad id!", b"a" * 32),), "malformed"),
        ((Device("Upper", b"a" * 32),), "malformed"),
        ((Device("short", b"a" * 31),), "32 bytes"),
    ],
)
def test_malformed_lists_are_refused(devices: tuple[Device, ...], why: str) -> None:
    alice = Identity.generate("alice")
    listed = DeviceList(user="alice", version=1, devices=devices, signature=bytes(64))
    with pytest.raises(DeviceListError, match=why):
        listed.check(alice.sig_key)


def test_a_list_must_name_the_identitys_own_device() -> None:
    alice, phone = Identity.generate("alice"), Identity.generate("alice")
    with pytest.raises(DeviceListError, match="own device"):
        sign_device_list(alice, 1, (Device("phone", phone.sig_key),))
