"""Linking a device: the short-code exchange, against a relay that tries to take part."""

from __future__ import annotations

import itertools

import pytest

from securechat.e2e.pairing import (
    CODE_DIGITS,
    MAX_ATTEMPTS,
    ExistingDevice,
    NewDevice,
    PairingError,
    PairingState,
    WrongCode,
)
from securechat.e2e.primitives import VERSION_LABEL, lp, sha256


def pair(payload: bytes = b"device key") -> tuple[NewDevice, ExistingDevice]:
    """Both sides up to the point where the person reads the new device's code."""
    new = NewDevice()
    existing = ExistingDevice(new.commitment)
    a_public, sealed = new.reveal(existing.answer, payload)
    existing.receive_reveal(a_public, sealed)
    return new, existing


def test_the_right_codes_link_and_both_messages_arrive() -> None:
    new, existing = pair(b"my id and key")
    assert len(new.code) == CODE_DIGITS and new.code.isdigit()
    assert existing.confirmation == ""  # shown only once the first code is right
    assert existing.confirm(new.code[:3] + " " + new.code[3:]) == b"my id and key"  # spaces allowed
    sealed = existing.seal_answer(b"the identity and the list")
    assert len(existing.confirmation) == CODE_DIGITS and existing.confirmation != new.code
    with pytest.raises(PairingError, match="not confirmed"):
        new.open_answer(sealed)  # not before the person typed the second code
    new.confirm(existing.confirmation)
    assert new.open_answer(sealed) == b"the identity and the list"
    assert (new.state, existing.state) == (PairingState.DONE, PairingState.DONE)
    with pytest.raises(PairingError):
        existing.seal_answer(b"a second message under the same key and nonce")
    with pytest.raises(PairingError):
        new.open_answer(sealed)


def test_a_relay_posing_as_the_existing_device_cannot_give_the_new_one_an_identity() -> None:
    # The relay answers the new device itself and sends it an identity and list of its
    # own; the real existing device refuses the code, so shows no second code; what the
    # person can type on the new device is a guess.
    new = NewDevice()
    relay = ExistingDevice(new.commitment)
    a_public, sealed = new.reveal(relay.answer, b"real key")
    relay.receive_reveal(a_public, sealed)
    relay.confirm(new.code)  # the relay sees the code the new device shows
    fake = relay.seal_answer(b"the relay's identity")
    wrong = (f"{n:06d}" for n in itertools.count() if f"{n:06d}" != relay.confirmation)
    for _ in range(MAX_ATTEMPTS):
        with pytest.raises(WrongCode):
            new.confirm(next(wrong))
    assert new.state is PairingState.FAILED
    with pytest.raises(PairingError):
        new.open_answer(fake)


def test_the_new_device_takes_one_answer_only() -> None:
    # A second B would let a relay search for one that fits a code already shown.
    new = NewDevice()
    first, second = ExistingDevice(new.commitment), ExistingDevice(new.commitment)
    new.reveal(first.answer, b"x")
    with pytest.raises(PairingError, match="second answer"):
        new.reveal(second.answer, b"x")
    assert new.state is PairingState.FAILED


def test_a_low_order_key_ends_the_pairing_as_a_pairing_error() -> None:
    low_order = bytes(32)  # the all-zero point: X25519 with it gives all zeros
    new = NewDevice()
    with pytest.raises(PairingError):
        new.reveal(low_order, b"x")
    existing = ExistingDevice(sha256(lp(VERSION_LABEL, b"link-commit", low_order)))
    with pytest.raises(PairingError):
        existing.receive_reveal(low_order, b"sealed")
    assert existing.state is PairingState.FAILED


def test_a_relay_in_the_middle_makes_the_codes_differ() -> None:
    # The relay answers each side with a key of its own: it pairs with both, but the code
    # the new device shows is not the one the existing device expects.
    new = NewDevice()
    relay_to_existing = NewDevice()  # the relay, posing as a new device
    existing = ExistingDevice(relay_to_existing.commitment)
    relay_to_new = ExistingDevice(new.commitment)  # and posing as the existing device
    a_public, sealed = new.reveal(relay_to_new.answer, b"real key")
    relay_to_new.receive_reveal(a_public, sealed)
    ra, rsealed = relay_to_existing.reveal(existing.answer, b"relay's key")
    existing.receive_reveal(ra, rsealed)
    assert new.code != relay_to_existing.code
    with pytest.raises(WrongCode):
        existing.confirm(new.code)  # the person types what the new device shows: refused


def test_guessed_codes_end_the_pairing_after_max_attempts() -> None:
    new, existing = pair()
    wrong = (f"{n:06d}" for n in itertools.count() if f"{n:06d}" != new.code)
    for left in range(MAX_ATTEMPTS - 1, -1, -1):
        with pytest.raises(WrongCode) as refused:
            existing.confirm(next(wrong))
        assert refused.value.attempts_left == left
    assert existing.state is PairingState.FAILED
    with pytest.raises(PairingError):
        existing.confirm(new.code)  # even the right code, now
    with pytest.raises(PairingError):
        existing.seal_answer(b"x")


def test_a_reveal_that_breaks_the_commitment_ends_the_pairing() -> None:
    new = NewDevice()
    existing = ExistingDevice(new.commitment)
    other = NewDevice()  # a relay swapping in another key after seeing B
    a_public, sealed = other.reveal(existing.answer, b"x")
    with pytest.raises(PairingError, match="committed"):
        existing.receive_reveal(a_public, sealed)
    assert existing.state is PairingState.FAILED


def test_tampered_messages_do_not_authenticate() -> None:
    new = NewDevice()
    existing = ExistingDevice(new.commitment)
    a_public, sealed = new.reveal(existing.answer, b"payload")
    existing.receive_reveal(a_public, bytes([sealed[0] ^ 1]) + sealed[1:])
    with pytest.raises(PairingError, match="authenticate"):
        existing.confirm(new.code)
    new2, existing2 = pair()
    existing2.confirm(new2.code)
    answer = existing2.seal_answer(b"list")
    new2.confirm(existing2.confirmation)
    with pytest.raises(PairingError, match="authenticate"):
        new2.open_answer(answer[:-1] + bytes([answer[-1] ^ 1]))


def test_the_answer_cannot_be_sealed_before_the_code_is_typed() -> None:
    _, existing = pair()
    with pytest.raises(PairingError, match="not confirmed"):
        existing.seal_answer(b"list")


def test_malformed_keys_are_refused() -> None:
    with pytest.raises(PairingError):
        ExistingDevice(b"short")
    with pytest.raises(PairingError):
        NewDevice().reveal(b"short", b"x")
    with pytest.raises(PairingError):
        NewDevice().open_answer(b"too early")
    with pytest.raises(PairingError):
        NewDevice().confirm("123456")
