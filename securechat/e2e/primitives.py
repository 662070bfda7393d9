"""The few primitives the protocol uses, wrapped so that every use goes through here.

Known-answer tests (RFC 7748, 8439, 5869, 8032; FIPS 203 for ML-KEM-768) run against
these wrappers. KDFs take
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
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..protocol.keys import KEM_PUBLIC_BYTES

__all__ = [
    "AEAD_TAG_BYTES",
    "KEM_CIPHERTEXT_BYTES",
    "KEM_PUBLIC_BYTES",
    "KEM_SEED_BYTES",
    "KEY_BYTES",
    "VERSION_LABEL",
    "DhKeyPair",
    "KemKeyPair",
    "Random",
    "aead_decrypt",
    "aead_encrypt",
    "ed25519_public",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha256",
    "hmac_sha256",
    "kem_encapsulate",
    "lp",
    "sha256",
    "unlp",
    "x25519",
]

#: The protocol label; every signature, KDF and AAD in the e2e layer starts with it.
VERSION_LABEL = b"securechat-e2e-v1"

#: Raw length of X25519 and Ed25519 public keys and of X25519 private keys.
KEY_BYTES = 32
#: An Ed25519 signature's length (RFC 8032).
SIG_BYTES = 64
#: ChaCha20-Poly1305's tag, appended to every ciphertext (RFC 8439).
AEAD_TAG_BYTES = 16

#: ML-KEM-768 (NIST FIPS 203): the ciphertext, and the private key's seed form (d || z),
#: which is how a private key is stored; the encapsulation key's length (1,184) is the
#: wire format's, `KEM_PUBLIC_BYTES`.
KEM_CIPHERTEXT_BYTES = 1088
KEM_SEED_BYTES = 64

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


def unlp(data: bytes, count: int) -> list[bytes]:
    """The `count` fields of an `lp` encoding, as bytes; raises `ValueError` if `data` is
    not exactly that many length-prefixed fields."""
    fields: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 4 > len(data):
            raise ValueError("a truncated length")
        size = int.from_bytes(data[at : at + 4], "big")
        at += 4
        if at + size > len(data):
            raise ValueError("a truncated field")
        fields.append(data[at : at + size])
        at += size
    if len(fields) != count:
        raise ValueError(f"{len(fields)} fields, {count} expected")
    return fields


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


class KemKeyPair:
    """An ML-KEM-768 key pair (FIPS 203), kept as its 64-byte seed and its public key.

    Immutable; like `DhKeyPair` it keeps the loaded key for repeated use.
    """

    __slots__ = ("_key", "public", "seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != KEM_SEED_BYTES:
            raise ValueError("an ML-KEM-768 seed is 64 bytes")
        self._key = MLKEM768PrivateKey.from_seed_bytes(seed)
        self.seed = seed
        self.public = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, random: Random = os.urandom) -> KemKeyPair:
        return cls(random(KEM_SEED_BYTES))

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """The 32-byte shared secret. Raises `ValueError` for a ciphertext of the wrong
        length; a wrong ciphertext of the right length yields an unrelated secret (ML-KEM's
        implicit rejection), which the first message's authentication then refuses."""
        if len(ciphertext) != KEM_CIPHERTEXT_BYTES:
            raise ValueError("an ML-KEM-768 ciphertext is 1088 bytes")
        return self._key.decapsulate(ciphertext)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KemKeyPair) and hmac.compare_digest(self.seed, other.seed)

    def __hash__(self) -> int:
        return hash(self.public)

    def __repr__(self) -> str:
        return f"KemKeyPair(public={self.public.hex()[:16]}...)"  # never the seed


def kem_encapsulate(public: bytes) -> tuple[bytes, bytes]:
    """(ciphertext, shared secret) for an ML-KEM-768 encapsulation key. Randomised by the
    library's own generator (FIPS 203 gives no deterministic interface to it here).

    Raises `ValueError` for a malformed key (wrong length, or failing FIPS 203's
    modulus check).
    """
    if len(public) != KEM_PUBLIC_BYTES:
        raise ValueError("an ML-KEM-768 public key is 1184 bytes")
    shared, ciphertext = MLKEM768PublicKey.from_public_bytes(public).encapsulate()
    return ciphertext, shared
