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


def pair(payload: bytes = b"device key") -> tuple[NewDevice, ExistingDevice]:
    """Both sides up to the point where the person reads the new device's code."""
    new = NewDevice()
    existing = ExistingDevice(new.commitment)
    a_public, sealed = new.reveal(existing.answer, payload)
    existing.receive_reveal(a_public, sealed)
    return new, existing


def test_the_right_code_links_and_both_messages_arrive() -> None:
    new, existing = pair(b"my id and key")
    assert len(new.code) == CODE_DIGITS and new.code.isdigit()
    assert existing.confirm(new.code[:3] + " " + new.code[3:]) == b"my id and key"  # spaces allowed
    assert new.open_answer(existing.seal_answer(b"the identity and the list")) == b"the identity and the list"


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
