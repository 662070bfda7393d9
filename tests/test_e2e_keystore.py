from __future__ import annotations

import json

import pytest

from securechat.e2e.errors import KeystoreError
from securechat.e2e.keystore import KdfParams, is_protected, new_header, seal, unlock, unseal

FAST = KdfParams(n=2**10)


def test_passphrase_unlocks_the_data_key_and_records_round_trip() -> None:
    header, key = new_header("correct horse", params=FAST)
    assert key is not None and is_protected(header)
    assert unlock(header, "correct horse") == key
    blob = seal(key, "identity", b"secret key bytes")
    assert b"secret key bytes" not in blob
    assert unseal(key, "identity", blob) == b"secret key bytes"


def test_default_cost_is_the_designed_scrypt() -> None:
    assert KdfParams() == KdfParams(n=2**17, r=8, p=1)
    header, _ = new_header("x", params=KdfParams())
    assert json.loads(header)["kdf"]["n"] == 2**17


@pytest.mark.parametrize("attempt", ["wrong horse", "", None])
def test_wrong_or_missing_passphrase_fails(attempt: str | None) -> None:
    header, _ = new_header("correct horse", params=FAST)
    with pytest.raises(KeystoreError, match="passphrase"):
        unlock(header, attempt)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h: {**h, "kdf": {**h["kdf"], "r": 9}},
        lambda h: {**h, "kdf": {**h["kdf"], "salt": "AAAAAAAAAAAAAAAAAAAAAA=="}},
        lambda h: {**h, "nonce": "AAAAAAAAAAAAAAAA"},
        lambda h: {**h, "wrapped_key": h["wrapped_key"][:-4] + "AAA="},
    ],
)
def test_a_tampered_header_fails(tamper: object) -> None:
    header, _ = new_header("pw", params=FAST)
    altered = json.dumps(tamper(json.loads(header))).encode()  # type: ignore[operator]
    with pytest.raises(KeystoreError):
        unlock(altered, "pw")


def test_absurd_kdf_parameters_are_refused_before_any_work() -> None:
    header, _ = new_header("pw", params=FAST)
    h = json.loads(header)
    h["kdf"]["n"] = 2**30  # would need 1 TiB of memory
    with pytest.raises(KeystoreError, match="out-of-range"):
        unlock(json.dumps(h).encode(), "pw")


@pytest.mark.parametrize(
    "garbage",
    [b"", b"not json", b"[]", b'{"magic":"other"}', b'{"magic":"securechat-keystore","version":99}'],
)
def test_unreadable_headers_are_a_clear_error(garbage: bytes) -> None:
    with pytest.raises(KeystoreError):
        unlock(garbage, "pw")


def test_records_cannot_be_swapped_or_altered() -> None:
    _, key = new_header("pw", params=FAST)
    assert key is not None
    blob = seal(key, "pins", b"data")
    with pytest.raises(KeystoreError):
        unseal(key, "identity", blob)  # moved to another record's file
    with pytest.raises(KeystoreError):
        unseal(key, "pins", blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(KeystoreError):
        unseal(key, "pins", b"short")


def test_no_passphrase_means_an_unprotected_header() -> None:
    header, key = new_header(None)
    assert key is None and not is_protected(header)
    assert unlock(header, None) is None
