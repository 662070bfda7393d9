"""After /nick, the old nick is not silently a new identity (review 2, item 9): the keystore
leaves a marker where it was, and starting with the old nick says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from chat import TIMEOUT

from securechat import Client
from securechat.cli import main
from securechat.server import Server
from securechat.transport import client_context


def _registered(server: Server, cert_files: dict[str, str], nick: str) -> bool:
    """Whether `nick` is registered: a guest may log in only under a free nick."""
    from securechat.client import LoginRejected

    guest = Client(nick, context=client_context(cert_files["ca"]), port=server.address[1], timeout=TIMEOUT)
    try:
        guest.connect()
    except LoginRejected as exc:
        assert exc.code == "nick-registered", exc
        return True
    guest.close()
    return False


def test_starting_with_the_nick_you_renamed_away_from_refuses_and_names_the_new_one(
    server: Server,
    cert_files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from securechat.client.keystore import Keystore, default_keystore_dir
    from securechat.client.whispers import WhisperKeys
    from securechat.protocol import Renamed

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SECURECHAT_PASSPHRASE", "")
    port = server.address[1]
    argv = ["send", "--port", str(port), "--cafile", cert_files["ca"], "--room", "hi"]
    assert main([*argv, "--nick", "alice"]) == 0  # alice's keys made and registered
    old_place = default_keystore_dir("127.0.0.1", port, "alice")
    store = Keystore.open(old_place, None)
    with Client(
        "alice",
        context=client_context(cert_files["ca"]),
        port=port,
        keys=WhisperKeys.in_keystore(store, "alice"),
    ) as client:
        client.rename("alice2")
        assert client.wait_for(Renamed, TIMEOUT) == Renamed(old="alice", new="alice2")
    store.close()
    capsys.readouterr()

    # A script (or a config file) still says alice: refused, nothing made, alice stays free.
    assert main([*argv, "--nick", "alice"]) == 2
    err = capsys.readouterr().err
    assert (
        'you renamed yourself to alice2; start with --nick alice2 (or set nick = "alice2" in your config)'
        in err
    )
    assert not Keystore.exists(old_place)
    assert not _registered(server, cert_files, "alice")
    marker = [p for p in old_place.parent.iterdir() if p.name.startswith("alice") and p.is_file()]
    assert len(marker) == 1 and marker[0].stat().st_mode & 0o777 == 0o600
    assert marker[0].read_text().strip() == "alice2"  # the nick, nothing secret
    assert main([*argv, "--nick", "alice2"]) == 0  # the new nick is us


def test_a_keystore_of_your_choice_bound_to_a_new_nick_refuses_the_old_one(
    server: Server, cert_files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from whisper_helpers import FAST_KDF

    from securechat.client.keystore import Keystore
    from securechat.client.whispers import WhisperKeys

    mine = tmp_path / "my-keys"
    WhisperKeys.in_keystore(Keystore.create(mine, None, FAST_KDF), "alice").renamed("alice2")  # stays there
    argv = ["send", "--port", str(server.address[1]), "--cafile", cert_files["ca"], "--keys", str(mine)]
    assert main([*argv, "--room", "hi", "--nick", "alice"]) == 2
    assert "you renamed yourself to alice2; start with --nick alice2" in capsys.readouterr().err
    assert not _registered(server, cert_files, "alice")
