"""Errors of the end-to-end layer."""

from __future__ import annotations

__all__ = [
    "BundleError",
    "DecryptionError",
    "E2EError",
    "IdentityChanged",
    "KeystoreError",
    "MalformedPlaintext",
    "NotTrusted",
    "UnknownDevice",
]


class E2EError(Exception):
    """Base of every end-to-end error."""


class DecryptionError(E2EError):
    """A whisper could not be authenticated and decrypted.

    Deliberately opaque (like Fernet's InvalidToken): tampering, replay, a wrong key,
    a wrong session or a malformed header all look the same to the caller, so the
    error reveals nothing an attacker could probe.
    """

    def __init__(self) -> None:
        super().__init__("whisper could not be decrypted")


class MalformedPlaintext(DecryptionError):
    """A whisper authenticated, but its padding is not this protocol's: its sender's
    client is faulty (only the holder of the session's keys could have made it). Reported
    as "malformed", not as tampering; the session is left as it was, as for any failure."""


class BundleError(E2EError):
    """A key bundle from the directory is not acceptable (bad signature, stale, rolled back)."""


class IdentityChanged(E2EError):
    """A peer presented an identity key different from the one pinned for them.

    Nothing is sent to, or accepted from, that peer until the user trusts the new key.
    """

    def __init__(self, peer: str, pinned_fingerprint: str, new_fingerprint: str) -> None:
        super().__init__(f"{peer}'s safety number changed")
        self.peer = peer
        self.pinned_fingerprint = pinned_fingerprint
        self.new_fingerprint = new_fingerprint


class NotTrusted(E2EError):
    """An operation needs a peer's key we have not seen or accepted."""


class KeystoreError(E2EError):
    """The keystore cannot be opened: wrong passphrase, tampering, or a bad format."""


class UnknownDevice(E2EError):
    """A whisper from a device of `peer` that no device list we accepted names (or from
    a device of someone we have no key for yet). Nothing changed: fetch their keys (which
    carry their list), accept it, and decrypt again."""

    def __init__(self, peer: str, device: str) -> None:
        super().__init__(f"{peer}'s device {device} is not in a device list we have")
        self.peer = peer
        self.device = device
