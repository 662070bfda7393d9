"""Sealing keystore records under a passphrase. Pure: bytes in, bytes out.

scrypt(n=2**17, r=8, p=1, 16-byte salt) turns the passphrase into a key-encryption key
that wraps a random data key; each record is sealed with the data key under
ChaCha20-Poly1305 with the record's name in the AAD, so records cannot be swapped
between files. The header (magic, version, KDF parameters, salt) is the AAD of the
wrapped key: altering any of it makes the passphrase fail.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import KeystoreError
from .primitives import VERSION_LABEL, Random, aead_decrypt, aead_encrypt, hkdf_sha256, hmac_sha256, lp

__all__ = ["KdfParams", "is_protected", "new_header", "peer_tag", "seal", "unlock", "unseal"]

MAGIC = "securechat-keystore"
FORMAT_VERSION = 1
_NONCE = 12


@dataclass(frozen=True)
class KdfParams:
    """scrypt cost. The defaults take about half a second and 128 MiB here, once per start."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    def check(self) -> None:
        # A tampered header must not make us allocate gigabytes or spin for minutes.
        if not (
            2**10 <= self.n <= 2**20 and self.n & (self.n - 1) == 0 and 1 <= self.r <= 16 and 1 <= self.p <= 4
        ):
            raise KeystoreError("keystore header has out-of-range KDF parameters")


def _kek(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(passphrase.encode("utf-8"))


def _header_aad(params: KdfParams, salt: bytes) -> bytes:
    return lp(MAGIC, FORMAT_VERSION, b"scrypt", params.n, params.r, params.p, salt)


def new_header(
    passphrase: str | None, *, params: KdfParams = KdfParams(), random: Random = os.urandom
) -> tuple[bytes, bytes | None]:
    """(header file contents, data key). Without a passphrase the data key is None: records
    are stored as they are (still 0600), and the header says so."""
    if not passphrase:
        return json.dumps({"magic": MAGIC, "version": FORMAT_VERSION, "protected": False}).encode(), None
    params = params or KdfParams()
    params.check()
    salt, nonce, data_key = random(16), random(_NONCE), random(32)
    wrapped = aead_encrypt(_kek(passphrase, salt, params), nonce, data_key, _header_aad(params, salt))
    header = {
        "magic": MAGIC,
        "version": FORMAT_VERSION,
        "protected": True,
        "kdf": {
            "name": "scrypt",
            "n": params.n,
            "r": params.r,
            "p": params.p,
            "salt": base64.b64encode(salt).decode(),
        },
        "nonce": base64.b64encode(nonce).decode(),
        "wrapped_key": base64.b64encode(wrapped).decode(),
    }
    return json.dumps(header).encode(), data_key


def is_protected(header: bytes) -> bool:
    """Whether the header says a passphrase is needed. Raises `KeystoreError` if malformed."""
    return bool(_parse(header).get("protected"))


def _parse(header: bytes) -> dict[str, object]:
    try:
        obj = json.loads(header)
    except ValueError:
        raise KeystoreError("keystore header is not readable") from None
    if not isinstance(obj, dict) or obj.get("magic") != MAGIC:
        raise KeystoreError("not a securechat keystore")
    if obj.get("version") != FORMAT_VERSION:
        raise KeystoreError(f"keystore format {obj.get('version')!r} is not supported")
    return obj


def unlock(header: bytes, passphrase: str | None) -> bytes | None:
    """The data key (None for an unprotected keystore).

    Raises `KeystoreError` for a missing or wrong passphrase, or an altered header.
    """
    obj = _parse(header)
    if not obj.get("protected"):
        return None
    if not passphrase:
        raise KeystoreError("this keystore is protected: a passphrase is needed")
    try:
        kdf = obj["kdf"]
        assert isinstance(kdf, dict) and kdf.get("name") == "scrypt"
        params = KdfParams(int(kdf["n"]), int(kdf["r"]), int(kdf["p"]))
        salt = base64.b64decode(str(kdf["salt"]), validate=True)
        nonce = base64.b64decode(str(obj["nonce"]), validate=True)
        wrapped = base64.b64decode(str(obj["wrapped_key"]), validate=True)
    except (KeyError, AssertionError, TypeError, ValueError, binascii.Error):
        raise KeystoreError("keystore header is malformed") from None
    params.check()
    if len(nonce) != _NONCE:
        raise KeystoreError("keystore header is malformed")
    data_key = aead_decrypt(_kek(passphrase, salt, params), nonce, wrapped, _header_aad(params, salt))
    if data_key is None:
        raise KeystoreError("wrong passphrase (or the keystore header was altered)")
    return data_key


def _record_aad(name: str) -> bytes:
    return lp(VERSION_LABEL, b"keystore-record", name)


def seal(data_key: bytes, name: str, plaintext: bytes, random: Random = os.urandom) -> bytes:
    nonce = random(_NONCE)
    return nonce + aead_encrypt(data_key, nonce, plaintext, _record_aad(name))


def unseal(data_key: bytes, name: str, blob: bytes) -> bytes:
    """Raises `KeystoreError` if the record was altered, swapped, or sealed under another key."""
    plaintext = (
        aead_decrypt(data_key, blob[:_NONCE], blob[_NONCE:], _record_aad(name))
        if len(blob) > _NONCE
        else None
    )
    if plaintext is None:
        raise KeystoreError(f"keystore record {name!r} is damaged or was tampered with")
    return plaintext


def peer_tag(data_key: bytes, folded_nick: str) -> str:
    """What messages with `folded_nick` are filed under in a protected keystore: a keyed
    hash, so the file does not list whom the user whispers with. Its key is derived from
    the data key for this one purpose (the data key itself only seals)."""
    tag_key = hkdf_sha256(salt=b"", ikm=data_key, info=lp(VERSION_LABEL, b"keystore-peer-tag"), length=32)
    return hmac_sha256(tag_key, folded_nick.encode()).hex()[:32]
