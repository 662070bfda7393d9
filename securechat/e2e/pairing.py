"""Linking a new device to a person: a short-authentication-string exchange over a relay.

Two parties, whose every message the server relays and could change (docs/e2e.md,
"Linking a device"):

- the **new** device, which shows a 6-digit code;
- an **existing** device holding the identity key, where the person types that code.

1. new -> existing: `commit` = SHA-256(LP(V, "link-commit", A)), A the new device's
   ephemeral X25519 key.
2. existing -> new: B, its own ephemeral key (chosen before it knows A).
3. new -> existing: A, and `sealed`: the new device's id and Ed25519 key, encrypted
   under k (below).
4. Both derive k = HKDF(salt=32 zero bytes, ikm=X25519(a, B), info=LP(V, "link-key",
   commit, B, A)) and the code: the first 8 bytes of SHA-256(LP(V, "link-code", commit,
   B, A)) as a big-endian integer, modulo 10^6, in 6 digits.
5. The person types the new device's code on the existing one. Equal (compared in
   constant time): the existing device opens `sealed`, signs a device list naming the new
   device, answers with the identity's public keys and that list (and what else the new
   device must start from), encrypted under k, and shows a second code, computed as the
   first from LP(V, "link-confirm", commit, B, A). Not equal: a wrong code; after
   `MAX_ATTEMPTS` wrong codes the pairing is over.
6. The person types that second code on the new device, which opens the answer only if
   it is its own second code (`MAX_ATTEMPTS` tries there too).

Why the server cannot link its own device: to sit between the two it must answer each
with a key of its own, and then the two codes agree only if SHA-256 maps two different
transcripts to the same 6 digits. The commitment fixes A before B is chosen and B is
chosen before A is seen, so it cannot search for a match: one try in 10^6, and
`MAX_ATTEMPTS` tries per pairing, each needing the person to type a code. The first code
convinces the existing device; the second, which the existing device shows only once the
first was right, convinces the new one (a relay posing as the existing device could
otherwise hand it an identity and device list of its own). Each side reveals, seals and
opens once: a second answer would let a relay search for a key that fits a code already
shown, and k encrypts one message each way.
"""

from __future__ import annotations

import enum
import hmac
import os

from .errors import E2EError
from .primitives import (
    KEY_BYTES,
    VERSION_LABEL,
    DhKeyPair,
    Random,
    aead_decrypt,
    aead_encrypt,
    hkdf_sha256,
    lp,
    sha256,
    x25519,
)

__all__ = [
    "CODE_DIGITS",
    "MAX_ATTEMPTS",
    "ExistingDevice",
    "NewDevice",
    "PairingError",
    "PairingState",
    "WrongCode",
]

#: Digits of the code the new device shows.
CODE_DIGITS = 6
#: Wrong codes typed before the existing device ends the pairing.
MAX_ATTEMPTS = 3

#: AEAD nonces: k encrypts one message each way.
_NONCE_TO_EXISTING = bytes(12)
_NONCE_TO_NEW = bytes(11) + b"\x01"


class PairingError(E2EError):
    """The pairing cannot go on: a broken message, a commitment not kept, too many
    wrong codes, or an answer that does not authenticate."""


class WrongCode(PairingError):
    """The code typed is not the one both sides derived; `attempts_left` more may be
    tried (0: the pairing is over)."""

    def __init__(self, attempts_left: int) -> None:
        super().__init__(
            "wrong code" + (f": {attempts_left} more tries" if attempts_left else ": the pairing is over")
        )
        self.attempts_left = attempts_left


def _commitment(a_public: bytes) -> bytes:
    return sha256(lp(VERSION_LABEL, b"link-commit", a_public))


def _transcript(commit: bytes, b_public: bytes, a_public: bytes) -> tuple[bytes, bytes, bytes]:
    """(k's info, the first code's hash input, the second code's) for this pairing's
    public values."""
    return (
        lp(VERSION_LABEL, b"link-key", commit, b_public, a_public),
        lp(VERSION_LABEL, b"link-code", commit, b_public, a_public),
        lp(VERSION_LABEL, b"link-confirm", commit, b_public, a_public),
    )


def _code(code_input: bytes) -> str:
    value = int.from_bytes(sha256(code_input)[:8], "big") % 10**CODE_DIGITS
    return f"{value:0{CODE_DIGITS}d}"


def _key(shared: bytes, info: bytes) -> bytes:
    return hkdf_sha256(salt=bytes(32), ikm=shared, info=info, length=32)


def _aad(commit: bytes, b_public: bytes, a_public: bytes, direction: bytes) -> bytes:
    return lp(VERSION_LABEL, b"link", commit, b_public, a_public, direction)


def _shared(private: bytes, public: bytes) -> bytes:
    """X25519, a malformed or low-order key being a `PairingError` like any bad input."""
    try:
        return x25519(private, public)
    except ValueError:
        raise PairingError("the other device's key is not a usable X25519 key") from None


def _typed_matches(typed: str, code: str) -> bool:
    digits = "".join(c for c in typed if not c.isspace())
    return hmac.compare_digest(digits.encode(), code.encode())


class PairingState(enum.Enum):
    ANSWERED = "answered"  # existing: B sent; waiting for the reveal
    REVEALED = "revealed"  # both: the reveal is made; waiting for the code
    CONFIRMED = "confirmed"  # both: the right code was typed
    DONE = "done"  # both: the answer was sealed / opened; nothing more
    FAILED = "failed"  # over: a broken message or too many wrong codes


class NewDevice:
    """The new device's side. Not thread-safe: one pairing, one caller."""

    def __init__(self, random: Random = os.urandom) -> None:
        self._ephemeral = DhKeyPair.generate(random)
        self.commitment = _commitment(self._ephemeral.public)
        self.state = PairingState.ANSWERED  # until the reveal: it waits for B
        self._key = b""
        self._b_public = b""
        self._confirm = ""
        self._attempts = MAX_ATTEMPTS
        #: The code to show, set by `reveal`.
        self.code = ""

    def reveal(self, b_public: bytes, payload: bytes) -> tuple[bytes, bytes]:
        """Given the existing device's B: (A, `payload` sealed under k), to send it; sets
        `code`. Once only: raises `PairingError` for a second B (a relay could search for
        one that fits a code already shown) or a malformed one."""
        if self.state is not PairingState.ANSWERED:
            if self.state is not PairingState.DONE:  # a finished pairing stays finished
                self.state = PairingState.FAILED
            raise PairingError("a second answer: the pairing is over")
        if len(b_public) != KEY_BYTES:
            self.state = PairingState.FAILED
            raise PairingError("the other device's key is malformed")
        a_public = self._ephemeral.public
        try:
            shared = _shared(self._ephemeral.private, b_public)
        except PairingError:
            self.state = PairingState.FAILED
            raise
        info, code_input, confirm_input = _transcript(self.commitment, b_public, a_public)
        self._key, self._b_public = _key(shared, info), b_public
        self.code, self._confirm = _code(code_input), _code(confirm_input)
        self.state = PairingState.REVEALED
        aad = _aad(self.commitment, b_public, a_public, b"to-existing")
        return a_public, aead_encrypt(self._key, _NONCE_TO_EXISTING, payload, aad)

    @property
    def tries_left(self) -> int:
        """Wrong second codes still allowed before the pairing is over."""
        return self._attempts

    def confirm(self, typed: str) -> None:
        """The person typed the code the existing device showed once it accepted ours;
        raises `WrongCode` if it is not this pairing's second code (after `MAX_ATTEMPTS`
        of them the pairing is over), `PairingError` if none is expected now."""
        if self.state is not PairingState.REVEALED:
            raise PairingError("no code is expected now")
        if not _typed_matches(typed, self._confirm):
            self._attempts -= 1
            if self._attempts == 0:
                self.state = PairingState.FAILED
            raise WrongCode(self._attempts)
        self.state = PairingState.CONFIRMED

    def open_answer(self, sealed: bytes) -> bytes:
        """The existing device's answer, opened, once the second code was confirmed; raises
        `PairingError` before that, or if it does not authenticate (then the pairing is
        over)."""
        if self.state is not PairingState.CONFIRMED:
            raise PairingError("the other device's code was not confirmed")
        aad = _aad(self.commitment, self._b_public, self._ephemeral.public, b"to-new")
        opened = aead_decrypt(self._key, _NONCE_TO_NEW, sealed, aad)
        if opened is None:
            self.state = PairingState.FAILED
            raise PairingError("the answer does not authenticate")
        self.state = PairingState.DONE
        return opened


class ExistingDevice:
    """The existing device's side, from the new device's commitment on. Not thread-safe."""

    def __init__(self, commitment: bytes, random: Random = os.urandom) -> None:
        if len(commitment) != 32:
            raise PairingError("the new device's commitment is malformed")
        self._commitment = commitment
        self._ephemeral = DhKeyPair.generate(random)
        #: B, to send the new device.
        self.answer = self._ephemeral.public
        self.state = PairingState.ANSWERED
        self._attempts = MAX_ATTEMPTS
        self._a_public = b""
        self._sealed = b""
        self._key = b""
        self._code = ""
        #: The second code, to show the person once they typed the first right (for them
        #: to type on the new device); "" until then.
        self.confirmation = ""
        self._confirm = ""

    def receive_reveal(self, a_public: bytes, sealed: bytes) -> None:
        """Take A and the sealed payload; raises `PairingError` (and the pairing is over)
        if A is not what the commitment promised."""
        if self.state is not PairingState.ANSWERED:
            raise PairingError("a reveal was not expected now")
        if len(a_public) != KEY_BYTES or not hmac.compare_digest(_commitment(a_public), self._commitment):
            self.state = PairingState.FAILED
            raise PairingError("the new device's key is not the one it committed to")
        try:
            shared = _shared(self._ephemeral.private, a_public)
        except PairingError:
            self.state = PairingState.FAILED
            raise
        info, code_input, confirm_input = _transcript(self._commitment, self.answer, a_public)
        self._a_public, self._sealed = a_public, sealed
        self._key, self._code = _key(shared, info), _code(code_input)
        self._confirm = _code(confirm_input)
        self.state = PairingState.REVEALED

    def confirm(self, typed: str) -> bytes:
        """The person typed `typed`: the new device's payload if it is the code; raises
        `WrongCode` otherwise (after `MAX_ATTEMPTS` of them the pairing is over), or
        `PairingError` if the payload does not authenticate or no code is expected."""
        if self.state is not PairingState.REVEALED:
            raise PairingError("no code is expected now")
        if not _typed_matches(typed, self._code):
            self._attempts -= 1
            if self._attempts == 0:
                self.state = PairingState.FAILED
            raise WrongCode(self._attempts)
        aad = _aad(self._commitment, self.answer, self._a_public, b"to-existing")
        opened = aead_decrypt(self._key, _NONCE_TO_EXISTING, self._sealed, aad)
        if opened is None:
            self.state = PairingState.FAILED
            raise PairingError("the new device's payload does not authenticate")
        self.state = PairingState.CONFIRMED
        self.confirmation = self._confirm
        return opened

    def seal_answer(self, payload: bytes) -> bytes:
        """`payload` sealed for the new device; only after the right code was typed, and
        once (k encrypts one message each way)."""
        if self.state is not PairingState.CONFIRMED:
            raise PairingError("the code was not confirmed")
        self.state = PairingState.DONE
        aad = _aad(self._commitment, self.answer, self._a_public, b"to-new")
        return aead_encrypt(self._key, _NONCE_TO_NEW, payload, aad)
