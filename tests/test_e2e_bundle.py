from __future__ import annotations

import dataclasses
import random

import pytest
from e2e_helpers import NOW, Clock, fetched_bundle, party

from securechat.e2e.bundle import (
    CLOCK_SKEW,
    DAY,
    MAX_CLOCK_ERROR,
    SPK_KEEP_OLD,
    SPK_KEEP_RETIRED,
    SPK_MAX_AGE,
    SPK_RETIRED_MAX,
    SPK_ROTATE_AFTER,
    PrekeySecrets,
    verify_bundle,
)
from securechat.e2e.errors import BundleError

RNG = random.Random(3)


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
    oldest_accepted = NOW + SPK_MAX_AGE + MAX_CLOCK_ERROR
    verify_bundle(bundle, user="bob", now=oldest_accepted)
    with pytest.raises(BundleError, match="stale"):
        verify_bundle(bundle, user="bob", now=oldest_accepted + 1)
    newest_accepted = NOW - MAX_CLOCK_ERROR - CLOCK_SKEW
    verify_bundle(bundle, user="bob", now=newest_accepted)
    with pytest.raises(BundleError, match="future"):
        verify_bundle(bundle, user="bob", now=newest_accepted - 1)
    with pytest.raises(BundleError, match="rolled back"):
        verify_bundle(bundle, user="bob", now=NOW, min_spk_id=bundle.spk.id + 1)


@pytest.mark.parametrize("offset_days", [-365, -40, 40, 365])
def test_a_fresh_bundle_verifies_for_a_checker_whose_clock_is_up_to_a_year_off(offset_days: int) -> None:
    # The sender's clock (or the server's, checking a publication) jumped; the owner's is right.
    bundle = fetched_bundle(party("bob", 2))
    verify_bundle(bundle, user="bob", now=NOW + offset_days * DAY)


@pytest.mark.parametrize("offset_days", [-365, 365])
def test_a_bundle_from_an_owner_whose_clock_is_up_to_a_year_off_verifies(offset_days: int) -> None:
    bob = party("bob", 2, Clock(NOW + offset_days * DAY))  # made and dated by bob's wrong clock
    verify_bundle(fetched_bundle(bob), user="bob", now=NOW)


def test_forged_one_time_prekey_is_refused() -> None:
    bob, eve = party("bob", 2), party("eve", 4)
    bundle = fetched_bundle(bob)
    forged = dataclasses.replace(bundle.opks[0], public=next(iter(eve.secrets.opks.values())).public)
    with pytest.raises(BundleError, match="one-time prekey"):
        verify_bundle(dataclasses.replace(bundle, opks=(forged,)), user="bob", now=NOW)


def login(secrets: PrekeySecrets, now: float) -> None:
    """What the client does with its prekeys at each login (`WhisperKeys.publications`)."""
    if secrets.current_spk() is None or secrets.needs_rotation(now):
        secrets.rotate_spk(now, RNG.randbytes)


def kept_ids(secrets: PrekeySecrets) -> list[int]:
    return [s.id for s in secrets.spks]


def test_rotation_is_due_weekly_and_when_the_current_spk_is_dated_in_the_future() -> None:
    secrets = PrekeySecrets()
    assert secrets.needs_rotation(NOW)
    secrets.rotate_spk(NOW, RNG.randbytes)
    assert not secrets.needs_rotation(NOW + SPK_ROTATE_AFTER - 1)
    assert secrets.needs_rotation(NOW + SPK_ROTATE_AFTER)
    assert not secrets.needs_rotation(NOW - CLOCK_SKEW)  # ordinary skew: no churn
    # The clock went back: without a rotation this SPK would serve (and its private key
    # stay) until the clock caught up again, up to a year, not a week.
    assert secrets.needs_rotation(NOW - CLOCK_SKEW - 1)
    assert secrets.needs_rotation(NOW - 365 * DAY)


def test_rotation_keeps_the_previous_signed_prekey_for_a_while() -> None:
    bob = party("bob", 2)
    first = bob.secrets.current_spk()
    assert first is not None
    bob.secrets.rotate_spk(NOW + 8 * DAY)
    assert bob.secrets.spk_pair(first.id) is not None
    bob.secrets.rotate_spk(NOW + 40 * DAY)
    assert bob.secrets.spk_pair(first.id) is not None  # only one rotation ago


@pytest.mark.parametrize("jump_days", [365, -365])
def test_the_last_retired_spks_survive_any_clock_jump(jump_days: int) -> None:
    # Whispers set up against a retired SPK may still be queued on the server: no reading
    # of the clock may delete the last SPK_KEEP_RETIRED of them.
    secrets = PrekeySecrets()
    login(secrets, NOW)
    now = NOW
    for _ in range(SPK_KEEP_RETIRED):
        now += jump_days * DAY  # every login sees the clock a year further off
        login(secrets, now)
        now -= jump_days * DAY  # and then corrected again
        login(secrets, now)
    assert len(secrets.spks) > SPK_KEEP_RETIRED + 1
    newest = secrets.current_spk()
    assert newest is not None
    assert kept_ids(secrets)[-SPK_KEEP_RETIRED - 1 :] == list(
        range(newest.id - SPK_KEEP_RETIRED, newest.id + 1)
    )


def test_a_retired_spk_is_deleted_once_beyond_the_count_and_the_age() -> None:
    # Forward secrecy: a setup made against an SPK becomes unreadable, even to someone
    # who later steals the keystore, once that SPK's private half is gone.
    secrets = PrekeySecrets()
    login(secrets, NOW)
    for week in range(1, SPK_KEEP_RETIRED + 2):
        login(secrets, NOW + week * SPK_ROTATE_AFTER)
    # SPK 1 is beyond the count, but was retired (when SPK 2 was made) 28 days ago.
    assert kept_ids(secrets) == list(range(1, SPK_KEEP_RETIRED + 3))
    now = NOW + SPK_ROTATE_AFTER + SPK_KEEP_OLD
    secrets.rotate_spk(now, RNG.randbytes)
    assert kept_ids(secrets)[0] == 2  # SPK 2 too is beyond the count, but retired 23 days ago
    secrets.rotate_spk(now + SPK_KEEP_OLD, RNG.randbytes)
    assert len(secrets.spks) == SPK_KEEP_RETIRED + 1  # the floor, nothing more


def test_a_clock_running_backwards_cannot_keep_retired_spks_without_limit() -> None:
    # Each login finds the clock a week earlier: every current SPK is dated in the future
    # (so it rotates) and every retirement looks recent. The cap bounds what is kept.
    secrets = PrekeySecrets()
    for week in range(3 * SPK_RETIRED_MAX):
        login(secrets, NOW - week * SPK_ROTATE_AFTER)
    assert secrets.next_spk_id == 3 * SPK_RETIRED_MAX + 1
    assert len(secrets.spks) == SPK_RETIRED_MAX + 1
