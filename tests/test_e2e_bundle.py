from __future__ import annotations

import dataclasses

import pytest
from e2e_helpers import NOW, fetched_bundle, party

from securechat.e2e.bundle import SPK_MAX_AGE, verify_bundle
from securechat.e2e.errors import BundleError


def test_a_genuine_bundle_verifies() -> None:
    bob = party("bob", 2)
    bundle = fetched_bundle(bob)
    verify_bundle(bundle, user="bob", now=NOW)
    verify_bundle(bundle, user="BOB", now=NOW)  # nicks compare case-insensitively
    assert len(bundle.opks) == 1


def test_bundle_for_someone_else_is_refused() -> None:
    with pytest.raises(BundleError, match="asked for"):
        verify_bundle(fetched_bundle(party("mallory", 3)), user="bob", now=NOW)


def test_identity_binding_must_verify() -> None:
    bundle = fetched_bundle(party("bob", 2))
    swapped_dh = dataclasses.replace(bundle.identity, dh_key=party("eve", 4).identity.dh.public)
    with pytest.raises(BundleError, match="not bound"):
        verify_bundle(dataclasses.replace(bundle, identity=swapped_dh), user="bob", now=NOW)


def test_swapped_or_forged_signed_prekey_is_refused() -> None:
    bob, eve = party("bob", 2), party("eve", 4)
    bundle = fetched_bundle(bob)
    forged = dataclasses.replace(bundle.spk, public=eve.secrets.spks[-1].pair.public)
    with pytest.raises(BundleError, match="signed prekey has an invalid signature"):
        verify_bundle(dataclasses.replace(bundle, spk=forged), user="bob", now=NOW)
    renumbered = dataclasses.replace(bundle.spk, id=bundle.spk.id + 1)  # ids are signed too
    with pytest.raises(BundleError):
        verify_bundle(dataclasses.replace(bundle, spk=renumbered), user="bob", now=NOW)


def test_stale_future_and_rolled_back_signed_prekeys_are_refused() -> None:
    bundle = fetched_bundle(party("bob", 2))
    with pytest.raises(BundleError, match="stale"):
        verify_bundle(bundle, user="bob", now=NOW + SPK_MAX_AGE + 1)
    with pytest.raises(BundleError, match="future"):
        verify_bundle(bundle, user="bob", now=NOW - 3 * 86_400)
    with pytest.raises(BundleError, match="rolled back"):
        verify_bundle(bundle, user="bob", now=NOW, min_spk_id=bundle.spk.id + 1)


def test_forged_one_time_prekey_is_refused() -> None:
    bob, eve = party("bob", 2), party("eve", 4)
    bundle = fetched_bundle(bob)
    forged = dataclasses.replace(bundle.opks[0], public=next(iter(eve.secrets.opks.values())).public)
    with pytest.raises(BundleError, match="one-time prekey"):
        verify_bundle(dataclasses.replace(bundle, opks=(forged,)), user="bob", now=NOW)


def test_rotation_keeps_the_previous_signed_prekey_for_a_while() -> None:
    bob = party("bob", 2)
    first = bob.secrets.current_spk()
    assert first is not None
    bob.secrets.rotate_spk(NOW + 8 * 86_400)
    assert bob.secrets.spk_pair(first.id) is not None
    bob.secrets.rotate_spk(NOW + 40 * 86_400)
    assert bob.secrets.spk_pair(first.id) is None
