"""The few primitives the protocol uses, wrapped so that every use goes through here.

Known-answer tests (RFC 7748, 8439, 5869, 8032) run against these wrappers. KDFs take
their `info` as a parameter so published vectors with other labels run on the same code.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "KEY_BYTES",
    "VERSION_LABEL",
    "DhKeyPair",
    "Random",
    "aead_decrypt",
    "aead_encrypt",
    "ed25519_public",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha256",
    "hmac_sha256",
    "lp",
    "sha256",
    "x25519",
]

#: The protocol label; every signature, KDF and AAD in the e2e layer starts with it.
VERSION_LABEL = b"securechat-e2e-v1"

#: Raw length of X25519 and Ed25519 public keys and of X25519 private keys.
KEY_BYTES = 32
#: An Ed25519 signature's length (RFC 8032).
SIG_BYTES = 64

#: Source of randomness: n -> n random bytes. Tests pass a seeded one.
Random = Callable[[int], bytes]


def lp(*fields: bytes | str | int) -> bytes:
    """Length-prefixed encoding: each field as a 4-byte big-endian length, then its bytes.

    Strings are UTF-8; integers are 8-byte big-endian unsigned. Signing and MACing this
    instead of JSON text means no two different field lists encode alike.
    """
    out = bytearray()
    for field in fields:
        if isinstance(field, str):
            data = field.encode("utf-8")
        elif isinstance(field, int):
            data = field.to_bytes(8, "big")
        else:
            data = field
        out += len(data).to_bytes(4, "big")
        out += data
    return bytes(out)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hkdf_sha256(*, salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869) extract-and-expand."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ChaCha20-Poly1305 (RFC 8439): ciphertext with the 16-byte tag appended."""
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes | None:
    """The plaintext, or None if the tag does not verify (any tampering)."""
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        return None


class DhKeyPair:
    """An X25519 key pair, kept as raw bytes so it serialises without ceremony.

    Immutable. It keeps the loaded key object too: loading a private key costs about
    as much as an exchange, and the ratchet exchanges with the same pair repeatedly.
    """

    __slots__ = ("_key", "private", "public")

    def __init__(self, private: bytes) -> None:
        if len(private) != KEY_BYTES:
            raise ValueError("an X25519 private key is 32 bytes")
        self._key = X25519PrivateKey.from_private_bytes(private)
        self.private = private
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def exchange(self, peer_public: bytes) -> bytes:
        """The X25519 shared secret with `peer_public`; raises `ValueError` as `x25519` does."""
        return _exchange(self._key, peer_public)

    @classmethod
    def generate(cls, random: Random = os.urandom) -> DhKeyPair:
        return cls(random(KEY_BYTES))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DhKeyPair) and hmac.compare_digest(self.private, other.private)

    def __hash__(self) -> int:
        return hash(self.public)

    def __repr__(self) -> str:
        return f"DhKeyPair(public={self.public.hex()[:16]}...)"  # never the private half


def x25519(private: bytes, peer_public: bytes) -> bytes:
    """The X25519 shared secret (RFC 7748).

    Raises `ValueError` for a malformed or low-order peer key (an all-zero result):
    the caller turns that into its own protocol error.
    """
    return _exchange(X25519PrivateKey.from_private_bytes(private), peer_public)


def _exchange(key: X25519PrivateKey, peer_public: bytes) -> bytes:
    if len(peer_public) != KEY_BYTES:
        raise ValueError("an X25519 public key is 32 bytes")
    return key.exchange(X25519PublicKey.from_public_bytes(peer_public))


def ed25519_public(private: bytes) -> bytes:
    return (
        Ed25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def ed25519_sign(private: bytes, message: bytes) -> bytes:
    """An Ed25519 signature (RFC 8032), 64 bytes."""
    return Ed25519PrivateKey.from_private_bytes(private).sign(message)


def ed25519_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """True only for a valid signature by `public`; malformed keys are simply invalid."""
    if len(public) != KEY_BYTES or len(signature) != SIG_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
