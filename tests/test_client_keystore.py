from __future__ import annotations

import os
from pathlib import Path

import pytest
from whisper_helpers import FAST_KDF

from securechat.client.keystore import Keystore, default_keystore_dir
from securechat.client.whispers import WhisperKeys
from securechat.e2e.errors import KeystoreError


def test_files_are_private_and_reload(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    store = Keystore.create(d, "pw", FAST_KDF)
    keys = WhisperKeys.in_keystore(store, "alice")
    assert d.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in d.iterdir())
    again = WhisperKeys.in_keystore(Keystore.open(d, "pw"), "alice")
    assert again.identity.sig_key == keys.identity.sig_key


def test_an_encrypted_store_holds_no_raw_key_bytes(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    keys = WhisperKeys.in_keystore(Keystore.create(d, "pw", FAST_KDF), "alice")
    secrets = [keys.identity.sig_private, keys.identity.dh.private, keys.identity.sig_key]
    on_disk = b"".join(p.read_bytes() for p in d.iterdir())
    import base64

    for secret in secrets:
        assert secret not in on_disk and base64.b64encode(secret) not in on_disk


def test_wrong_passphrase_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    WhisperKeys.in_keystore(Keystore.create(d, "pw", FAST_KDF), "alice")
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        Keystore.open(d, "not it")
    assert Keystore.needs_passphrase(d)


@pytest.mark.parametrize("target", ["dir", "header", "record"])
def test_files_others_can_read_are_refused(tmp_path: Path, target: str) -> None:
    d = tmp_path / "ks"
    WhisperKeys.in_keystore(Keystore.create(d, None), "alice")
    path = {"dir": d, "header": d / "keystore.json", "record": d / "identity.rec"}[target]
    path.chmod(0o755 if target == "dir" else 0o644)
    with pytest.raises(KeystoreError, match="chmod"):
        Keystore.open(d, None).load()


def test_a_tampered_record_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    WhisperKeys.in_keystore(Keystore.create(d, "pw", FAST_KDF), "alice")
    rec = d / "identity.rec"
    data = bytearray(rec.read_bytes())
    data[-1] ^= 1
    rec.write_bytes(bytes(data))
    with pytest.raises(KeystoreError, match="tampered"):
        Keystore.open(d, "pw").load()


def test_creating_over_an_existing_keystore_is_refused(tmp_path: Path) -> None:
    Keystore.create(tmp_path / "ks", None)
    with pytest.raises(KeystoreError, match="already exists"):
        Keystore.create(tmp_path / "ks", None)


def test_default_location_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_keystore_dir("chat.example.org", 7443, "Alice") == (
        tmp_path / "securechat" / "chat.example.org_7443" / "alice"
    )
    monkeypatch.delenv("XDG_DATA_HOME")
    assert str(default_keystore_dir("h", 1, "a")).startswith(os.path.expanduser("~"))


def test_deleted_records_disappear(tmp_path: Path) -> None:
    store = Keystore.create(tmp_path / "ks", None)
    store.save({"pins": b"{}"})
    store.save({"pins": None})
    assert "pins" not in store.load()
