from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path

import pytest
from whisper_helpers import FAST_KDF

from securechat.client.keystore import Keystore, RoomsFile, default_keystore_dir, renamed_to, server_places
from securechat.client.whispers import WhisperKeys
from securechat.e2e.conversations import Conversations
from securechat.e2e.errors import KeystoreError
from securechat.e2e.identity import Identity


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
    path = {"dir": d, "header": d / "keystore.json", "record": d / "keystore.db"}[target]
    path.chmod(0o755 if target == "dir" else 0o644)
    with pytest.raises(KeystoreError, match="chmod"):
        Keystore.open(d, None).load()


def _tamper(d: Path, sql: str) -> None:
    db = sqlite3.connect(d / "keystore.db", isolation_level=None)
    db.execute(sql)
    db.close()


def test_a_tampered_record_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    WhisperKeys.in_keystore(Keystore.create(d, "pw", FAST_KDF), "alice")
    # One bit of the sealed identity flipped, as a disk error or an attacker would.
    _tamper(
        d,
        "UPDATE records SET value = substr(value, 1, 20) || x'00' || substr(value, 22) WHERE name='identity'",
    )
    with pytest.raises(KeystoreError, match="tampered"):
        Keystore.open(d, "pw").load()


def test_records_cannot_be_swapped_between_names(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    WhisperKeys.in_keystore(Keystore.create(d, "pw", FAST_KDF), "alice")
    _tamper(
        d, "UPDATE records SET value = (SELECT value FROM records WHERE name='identity') WHERE name='prekeys'"
    )
    with pytest.raises(KeystoreError, match="prekeys"):
        Keystore.open(d, "pw").load()


def test_a_database_that_is_not_one_names_the_file(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    store = Keystore.create(d, None)
    WhisperKeys.in_keystore(store, "alice")
    store.close()
    (d / "keystore.db").write_bytes(b"this is not an SQLite database" * 200)
    with pytest.raises(KeystoreError, match=r"keystore\.db"):
        WhisperKeys.in_keystore(Keystore.open(d, None), "alice")


def test_a_keystore_that_lost_its_identity_is_not_given_a_new_one(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    WhisperKeys.in_keystore(Keystore.create(d, None), "alice")
    _tamper(d, "DELETE FROM records WHERE name='identity'")
    with pytest.raises(KeystoreError, match="lost its identity record"):
        WhisperKeys.in_keystore(Keystore.open(d, None), "alice")
    assert "identity" not in Keystore.open(d, None).load()  # and nothing was written in its place


@pytest.mark.parametrize("value", [b"[]", b'"pins"', b"{", b'{"bob": 3}', b'{"bob": {"identity": []}}'])
def test_a_damaged_record_is_a_clear_error_naming_the_file(tmp_path: Path, value: bytes) -> None:
    d = tmp_path / "ks"
    WhisperKeys.in_keystore(Keystore.create(d, None), "alice")
    Keystore.open(d, None).save({"pins": value})
    with pytest.raises(KeystoreError, match=r"keystore\.db.*pins"):
        WhisperKeys.in_keystore(Keystore.open(d, None), "alice")


def test_a_keystore_from_before_the_database_is_moved_into_it(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    keys = WhisperKeys.in_keystore(Keystore.create(d, "pw", FAST_KDF), "alice")
    old = Keystore.open(d, "pw")
    records = old.load()
    old.close()
    # Lay the records out as the file-per-record keystore did (sealed under their names).
    db = sqlite3.connect(d / "keystore.db", isolation_level=None)
    sealed = dict(db.execute("SELECT name, value FROM records").fetchall())
    db.close()
    for name in ("keystore.db", "keystore.db-wal", "keystore.db-shm"):
        (d / name).unlink(missing_ok=True)
    for name, blob in sealed.items():
        (d / (name.replace(":", "-") + ".rec")).write_bytes(blob)
        (d / (name.replace(":", "-") + ".rec")).chmod(0o600)
    (d / "received.rec").write_bytes(_seal_legacy(d, "received", b'["bob/m1", "carol/m2"]'))
    (d / "received.rec").chmod(0o600)
    again = WhisperKeys.in_keystore(Keystore.open(d, "pw"), "alice")
    assert again.identity.sig_key == keys.identity.sig_key
    assert not list(d.glob("*.rec"))
    assert set(Keystore.open(d, "pw").load()) == set(records)  # the legacy ids became messages
    assert {(m.peer, m.msg_id) for m in again.history("bob", 10) + again.history("carol", 10)} == {
        ("bob", "m1"),
        ("carol", "m2"),
    }


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


def _seal_legacy(d: Path, name: str, data: bytes) -> bytes:
    from securechat.e2e import keystore as sealing

    key = sealing.unlock((d / "keystore.json").read_bytes(), "pw")
    assert key is not None
    return sealing.seal(key, name, data)


def test_messages_are_sealed_and_filed_under_a_tag_not_the_nick(tmp_path: Path) -> None:
    from securechat.client.inbox import Direction, MessageState, StoredMessage

    d = tmp_path / "ks"
    store = Keystore.create(d, "pw", FAST_KDF)
    message = StoredMessage(
        direction=Direction.IN, peer="Bob", msg_id="m1", state=MessageState.NEW, ts=1.0, text="canary-7731"
    )
    store.commit({}, [message])
    store.close()
    on_disk = b"".join(p.read_bytes() for p in d.iterdir())
    assert b"canary-7731" not in on_disk and b"bob" not in on_disk.lower()
    again = Keystore.open(d, "pw")
    assert again.message(Direction.IN, "BOB", "m1") == message  # nicks fold
    again.commit({}, [message.with_state(MessageState.SHOWN)])
    assert [m.state for m in again.messages(peer="bob")] == [MessageState.SHOWN]
    with pytest.raises(ValueError, match="bad record name"):
        again.commit({"Not A Name": b""})  # our misuse, not damage


def test_a_keystore_with_all_pins_in_one_record_is_rewritten_one_record_per_pin(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    alice = WhisperKeys.in_keystore(Keystore.create(d, None), "alice")
    bob = Conversations(Identity.generate("bob"))
    bob_pin = {
        "identity": {
            "user": "bob",
            "sig_key": base64.b64encode(bob.identity.sig_key).decode(),
            "dh_key": base64.b64encode(bob.identity.public().dh_key).decode(),
            "dh_sig": base64.b64encode(bob.identity.public().dh_sig).decode(),
        },
        "trust": "verified",
        "pending": None,
        "was_verified": True,
        "max_spk_id": 3,
    }
    del alice
    Keystore.open(d, None).save({"pins": json.dumps({"bob": bob_pin}).encode()})  # as older versions wrote
    alice = WhisperKeys.in_keystore(Keystore.open(d, None), "alice")
    info = alice.peer_info("bob")
    assert info is not None and info.trust.value == "verified"
    assert info.identity.key == bob.identity.public().key
    records = Keystore.open(d, None).load()
    assert "pins" not in records and json.loads(records["pin:" + b"bob".hex()]) == {
        **bob_pin,
        "max_kpk_id": 0,
    }  # a field version 2 added


# -- remembered rooms ------------------------------------------------------------------------


def test_remembered_rooms_are_kept_sealed_in_the_keystore(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    store = Keystore.create(d, "pw", FAST_KDF)
    WhisperKeys.in_keystore(store, "alice")
    assert store.load_rooms() == []
    store.save_rooms(["#dev", "#Secret-Plans"])
    store.close()
    again = Keystore.open(d, "pw")
    assert again.load_rooms() == ["#dev", "#Secret-Plans"]
    assert b"Secret-Plans" not in b"".join(p.read_bytes() for p in d.iterdir())  # sealed
    WhisperKeys.in_keystore(again, "alice")  # a record of another layer: the identity loads


def test_a_guests_rooms_file_is_private_and_a_damaged_one_is_said(tmp_path: Path) -> None:
    rooms = RoomsFile(tmp_path / "h_1" / "guest")
    assert rooms.load_rooms() == []
    rooms.save_rooms(["#dev", "#DEV", "#ops"])  # one room whatever its case
    assert rooms.path.stat().st_mode & 0o777 == 0o600
    assert RoomsFile(tmp_path / "h_1" / "guest").load_rooms() == ["#DEV", "#ops"]
    rooms.path.write_bytes(b'{"not": "a list"}')
    with pytest.raises(KeystoreError, match="rooms"):
        rooms.load_rooms()
    rooms.path.write_bytes(b'["no-hash"]')
    with pytest.raises(KeystoreError, match="room"):
        rooms.load_rooms()


def test_a_guests_rooms_follow_a_rename(tmp_path: Path) -> None:
    rooms = RoomsFile(tmp_path / "guest")
    rooms.save_rooms(["#dev"])
    rooms.move_to(tmp_path / "guest2")
    assert not (tmp_path / "guest" / "rooms.json").exists()
    assert RoomsFile(tmp_path / "guest2").load_rooms() == ["#dev"]


# -- renaming --------------------------------------------------------------------------------


def test_a_rename_moves_the_keystore_to_the_new_nicks_place_bound_to_it(tmp_path: Path) -> None:
    d = tmp_path / "alice"
    keys = WhisperKeys.in_keystore(Keystore.create(d, None, FAST_KDF), "alice")
    sig_key = keys.identity.sig_key
    frames = keys.renamed("Alice2")
    assert not d.exists() and (tmp_path / "alice2" / "keystore.db").is_file()
    assert renamed_to(d) == "Alice2"  # a marker where it was: the old nick is not a new identity
    assert keys.identity.user == "Alice2" and keys.identity.public().binding_valid()
    assert (
        frames and frames[0].identity.sig_key == sig_key and frames[0].opks
    )  # a fresh bundle, fresh prekeys
    reopened = WhisperKeys.in_keystore(Keystore.open(tmp_path / "alice2", None), "alice2")
    assert reopened.identity.user == "Alice2" and reopened.identity.sig_key == sig_key


def test_a_rename_cut_between_the_move_and_the_rebinding_is_finished_at_the_next_start(
    tmp_path: Path,
) -> None:
    d = tmp_path / "alice"
    store = Keystore.create(d, None, FAST_KDF)
    keys = WhisperKeys.in_keystore(store, "alice")
    sig_key = keys.identity.sig_key
    store.move_to(tmp_path / "alice2")  # the crash comes right after the move
    store.close()
    again = WhisperKeys.in_keystore(Keystore.open(tmp_path / "alice2", None), "alice2")
    assert again.identity.user == "alice2" and again.identity.sig_key == sig_key
    assert again.identity.public().binding_valid()


def test_a_keystore_in_a_directory_of_the_users_choice_stays_there(tmp_path: Path) -> None:
    d = tmp_path / "my-keys"
    keys = WhisperKeys.in_keystore(Keystore.create(d, None, FAST_KDF), "alice")
    keys.renamed("alice2")
    assert (d / "keystore.db").is_file() and keys.identity.user == "alice2"
    assert WhisperKeys.in_keystore(Keystore.open(d, None), "alice2").identity.user == "alice2"


def test_a_rename_onto_an_existing_keystore_leaves_both_usable(tmp_path: Path) -> None:
    keys = WhisperKeys.in_keystore(Keystore.create(tmp_path / "alice", None, FAST_KDF), "alice")
    other = WhisperKeys.in_keystore(Keystore.create(tmp_path / "alice2", None, FAST_KDF), "alice2")
    with pytest.raises(ValueError, match="already"):  # refused before anything is sent
        keys.rename_proof("alice", "alice2", bytes(32))
    with pytest.raises(KeystoreError, match="already"):  # and if the server renamed us anyway
        keys.renamed("alice2")
    assert WhisperKeys.in_keystore(Keystore.open(tmp_path / "alice2", None), "alice2").identity.sig_key == (
        other.identity.sig_key
    )
    assert (tmp_path / "alice" / "keystore.db").is_file()


def test_the_rename_marker_follows_renames_and_steps_aside_for_a_keystore_coming_back(tmp_path: Path) -> None:
    keys = WhisperKeys.in_keystore(Keystore.create(tmp_path / "alice", None, FAST_KDF), "alice")
    assert renamed_to(tmp_path / "alice") is None
    keys.renamed("alice2")
    keys.renamed("alice3")
    assert renamed_to(tmp_path / "alice") == "alice3"  # followed to where the keys are now
    assert renamed_to(tmp_path / "alice2") == "alice3" and renamed_to(tmp_path / "alice3") is None
    keys.rename_proof("alice3", "alice", bytes(32))  # the marker is not a keystore in the way
    keys.renamed("alice")
    assert renamed_to(tmp_path / "alice") is None and Keystore.exists(tmp_path / "alice")
    assert renamed_to(tmp_path / "alice3") == "alice"
    assert renamed_to(tmp_path / "alice2") == "alice"  # followed through alice3, back home


def test_one_server_typed_two_ways_files_its_keystores_in_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    base = tmp_path / "securechat"
    for host in ("localhost", "LOCALHOST", "127.0.0.1", "::1", "[::1]", "app.localhost"):
        assert default_keystore_dir(host, 7000, "Alice") == base / "localhost_7000" / "alice"
    assert default_keystore_dir("Chat.Example.COM.", 7000, "bob") == base / "chat.example.com_7000" / "bob"
    assert default_keystore_dir("10.0.0.7", 7000, "bob") == base / "10.0.0.7_7000" / "bob"
    # A keystore filed before under the host exactly as typed is found from any spelling.
    Keystore.create(base / "127.0.0.1_7001" / "carol", None).close()
    for host in ("localhost", "127.0.0.1", "::1"):
        assert default_keystore_dir(host, 7001, "carol") == base / "127.0.0.1_7001" / "carol"
    assert server_places("localhost", 7001)[0] == base / "localhost_7001"


def test_a_server_known_by_its_key_is_one_place_under_any_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from securechat.client.keystore import remember_server

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    base = tmp_path / "securechat"
    key = "ab" * 32
    first = default_keystore_dir("chat.example.org", 7000, "alice", key)
    assert first == base / "chat.example.org_7000" / "alice"
    remember_server(key, 7000, first.parent)
    assert (base / "by-key" / f"{key}_7000").stat().st_mode & 0o777 == 0o600
    Keystore.create(first, None).close()
    # Another name, the same key: the same keystore; another key there: a stranger.
    assert default_keystore_dir("10.1.2.3", 7000, "alice", key) == first
    assert default_keystore_dir("10.1.2.3", 7000, "alice", "cd" * 32) == base / "10.1.2.3_7000" / "alice"
    # New identities of that server go to its place too, and the first place stays.
    assert default_keystore_dir("10.1.2.3", 7000, "bob", key) == base / "chat.example.org_7000" / "bob"
    remember_server(key, 7000, base / "10.1.2.3_7000")
    assert server_places("10.1.2.3", 7000, key)[0] == first.parent
    # Another port is another server, even with the same certificate.
    assert server_places("chat.example.org", 7001, key)[0] == base / "chat.example.org_7001"


def test_a_tampered_key_file_cannot_send_keystores_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from securechat.client.keystore import remember_server

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    base = tmp_path / "securechat"
    key = "ef" * 32
    (base / "by-key").mkdir(parents=True)
    for content in ("../../elsewhere", "/etc", "..", "by-key", "", "\xff"):
        (base / "by-key" / f"{key}_7000").write_text(content)
        assert server_places("h.example", 7000, key)[0] == base / "h.example_7000", content
    remember_server("not-a-key", 7000, base / "h.example_7000")  # ignored, nothing filed
    remember_server(key, 7000, tmp_path / "outside_7000")  # not a place under the base: ignored
    assert sorted(p.name for p in (base / "by-key").iterdir()) == [f"{key}_7000"]
