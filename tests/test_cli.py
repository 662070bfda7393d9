"""`securechat` entry points, called as `main(argv)` and as a real process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from chat import TIMEOUT, next_matching
from whisper_helpers import login, memory_keys

from securechat import Client
from securechat.cli import main
from securechat.protocol import Bye, Message
from securechat.server import Server, ServerConfig
from securechat.transport import client_context, server_context


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "server" in capsys.readouterr().out


def test_certs_are_written_private_and_usable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "certs"
    assert main(["certs", "--dir", str(d), "--host", "localhost", "--host", "127.0.0.1"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (d / "server.key").stat().st_mode & 0o777 == 0o600
    assert not any("KEY" in p.read_text() for p in (d / "ca.pem", d / "server.pem"))
    # What `make certs` writes is what a server and a client load, and they agree.
    with Server(ServerConfig(port=0), server_context(d / "server.pem", d / "server.key")) as server:
        for host in ("localhost", "127.0.0.1"):
            with Client(
                "alice", context=client_context(d / "ca.pem"), port=server.address[1], server_hostname=host
            ) as client:
                assert client.welcome is not None


def test_certs_are_idempotent_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--dir", str(tmp_path)]) == 0
    first = (tmp_path / "ca.pem").read_bytes()
    assert main(["certs", "--dir", str(tmp_path)]) == 0
    assert "already" in capsys.readouterr().out
    assert (tmp_path / "ca.pem").read_bytes() == first
    assert main(["certs", "--dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() != first


def test_certs_into_an_unwritable_place_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["certs", "--dir", str(blocker / "certs")]) == 2
    assert "cannot write certificates" in capsys.readouterr().err


def test_server_without_certificates_says_to_make_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["server", "--cert", str(tmp_path / "none.pem"), "--key", str(tmp_path / "none.key")]) == 2
    assert "make certs" in capsys.readouterr().err


def test_server_with_a_mismatched_key_is_a_clear_error(
    tmp_path: Path, cert_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    import trustme

    other = tmp_path / "other.key"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other))
    assert main(["server", "--port", "0", "--cert", cert_files["cert"], "--key", str(other)]) == 2
    assert "cannot load" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["client", "--nick", "bad nick"], "not a valid nick"),
        (["client", "--nick", ""], "pass --nick"),
        (["client", "--nick", "alice", "--port", "70000"], "out of range"),
        (["client", "--nick", "alice", "--cafile", "/nonexistent/ca.pem"], "not found"),
    ],
)
def test_client_command_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_send_reports_an_unreachable_server(
    cert_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        argv = ["send", "--guest", "--nick", "alice", "--port", str(port), "--cafile", cert_files["ca"]]
        assert main([*argv, "--room", "hi"]) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_a_chat_client_started_before_the_server_waits_for_it_saying_so(
    cert_files: dict[str, str], tmp_path: Path
) -> None:
    from server_process import ServerProcess, free_port

    port = free_port()
    env = {**os.environ, "SECURECHAT_PASSPHRASE": "", "XDG_DATA_HOME": str(tmp_path / "xdg")}
    argv = ["client", "--json", "--nick", "early", "--port", str(port), "--cafile", cert_files["ca"]]
    client = subprocess.Popen(
        [sys.executable, "-m", "securechat", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert client.stderr is not None and client.stdout is not None
        for line in client.stderr:  # it says so, and keeps trying
            if "waiting for the server" in line:
                break
        assert "cannot connect" in line
        server = ServerProcess(port, tmp_path / "data", cert_files)
        try:
            welcome = client.stdout.readline()  # blocks until it is in: the server's first frame
            assert '"type": "welcome"' in welcome and '"nick": "early"' in welcome
        finally:
            server.stop()
    finally:
        client.kill()
        client.wait(TIMEOUT)


def test_client_refuses_an_untrusted_server(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import trustme

    wrong_ca = tmp_path / "wrong-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(wrong_ca))
    argv = ["client", "--nick", "alice", "--port", str(server.address[1]), "--cafile", str(wrong_ca)]
    assert main(argv) == 1
    assert "cannot be trusted" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_server_process_stops_cleanly_on_signals(
    sig: signal.Signals, cert_files: dict[str, str], tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "securechat",
            "server",
            "--port",
            "0",
            "--cert",
            cert_files["cert"],
            "--key",
            cert_files["key"],
            "--data-dir",
            str(tmp_path),
            "--init",  # tmp_path is empty: a new server
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+) \(TLS\)", banner)
        assert match, banner
        ctx = client_context(cert_files["ca"])
        # After a burst of sessions come and go, the server once missed a SIGTERM the
        # kernel handed to one of its other threads (its main thread slept in a lock).
        for i in range(20):
            with Client(f"user{i}", context=ctx, port=int(match.group(1))) as other:
                other.say("hello")
                next_matching(other, Message)
        with Client("alice", context=ctx, port=int(match.group(1))) as alice:
            alice.say("anyone?")
            next_matching(alice, Message)
            proc.send_signal(sig)
            assert next_matching(alice, Bye) == Bye(reason="server shutting down")
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert "anyone?" not in err  # message texts never reach the log


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "securechat", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    ).stdout
    assert "client" in out and "certs" in out


def test_release_nick_frees_a_registered_nick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from securechat.server.server import DB_NAME
    from securechat.server.store import SqliteStore

    store = SqliteStore(tmp_path / DB_NAME)
    store.register("alice", b"k" * 32, 1.0)
    store.close()
    assert main(["release-nick", "alice", "--data-dir", str(tmp_path)]) == 0
    assert "released alice" in capsys.readouterr().out
    assert main(["release-nick", "alice", "--data-dir", str(tmp_path)]) == 1
    assert main(["release-nick", "bad nick", "--data-dir", str(tmp_path)]) == 2
    assert main(["release-nick", "alice", "--data-dir", str(tmp_path / "none")]) == 2
    assert "no server database" in capsys.readouterr().err


def test_client_creates_protected_keys_from_the_environment(
    server: Server,
    cert_files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from securechat.client.keystore import Keystore

    monkeypatch.setenv("SECURECHAT_PASSPHRASE", "from the env")
    argv = [
        "send",
        "--nick",
        "alice",
        "--port",
        "1",
        "--cafile",
        cert_files["ca"],
        "--keys",
        str(tmp_path / "k"),
        "--to",
        "bob",
        "hi",
    ]
    assert main(argv) == 1  # port 1: nothing listens, but the keys are made first
    assert Keystore.needs_passphrase(tmp_path / "k")
    assert "unprotected" not in capsys.readouterr().err
    monkeypatch.setenv("SECURECHAT_PASSPHRASE", "wrong")
    assert main(argv) == 2
    assert "wrong passphrase" in capsys.readouterr().err


def test_client_without_a_passphrase_says_the_keys_are_unprotected_once(
    cert_files: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = [
        "client",
        "--nick",
        "bob",
        "--port",
        "1",
        "--cafile",
        cert_files["ca"],
        "--keys",
        str(tmp_path / "k"),
    ]
    assert main(["send", *argv[1:], "--to", "alice", "hi"]) == 2  # no terminal, no passphrase said
    assert "makes no new identity without a terminal" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()
    monkeypatch.setenv("SECURECHAT_PASSPHRASE", "")  # said: none
    assert main(["send", *argv[1:], "--to", "alice", "hi"]) == 1
    assert "unprotected" in capsys.readouterr().err
    assert main(["send", *argv[1:], "--to", "alice", "hi"]) == 1
    assert "unprotected" not in capsys.readouterr().err  # said once, when the keys were made
    assert main(["send", *argv[1:-2], "--guest", "--room", "hi"]) == 1
    assert "unprotected" not in capsys.readouterr().err  # a guest has no keys at all


def test_server_process_threads_survive_the_deepest_nesting_a_frame_can_hold(
    cert_files: dict[str, str], tmp_path: Path
) -> None:
    # `securechat server` gives session threads 512 KiB stacks; the JSON decoder recurses
    # in C, so the deepest nesting that fits in one frame must be refused, not crash it.
    import json

    from conftest import RawTls
    from server_process import ServerProcess, free_port

    from securechat.protocol.limits import MAX_LINE_BYTES

    server = ServerProcess(free_port(), tmp_path / "data", cert_files)
    try:
        ctx = client_context(cert_files["ca"])
        raw = RawTls(("127.0.0.1", server.port), ctx)
        raw.send_line('{"type":"hello","version":1,"nick":"deep"}')
        assert raw.read_json()["type"] == "welcome"
        depth = (MAX_LINE_BYTES - 64) // 2
        raw.send_line(b'{"type":"say","text":' + b"[" * depth + b"]" * depth + b"}")
        last = json.loads(raw.read_until_closed()[-1])
        assert (last["type"], last["code"], last["fatal"]) == ("error", "bad-json", True)
        raw.close()
        with Client("after", context=ctx, port=server.port) as after:  # still serving
            after.say("still here")
            assert next_matching(after, Message).text == "still here"  # type: ignore[attr-defined]
    finally:
        server.stop()


# -- a rename cut short: the client died after the server renamed it, before `renamed` ---------


def _rename_cut_short(server: Server, cert_files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """alice (a keystore in the default place) renames to alice2; the server does it, and
    the client stops before it hears so: what a crash in that window leaves on disk."""
    from securechat.client.keystore import Keystore, default_keystore_dir
    from securechat.client.whispers import WhisperKeys
    from securechat.protocol import Renamed

    port = server.address[1]
    store = Keystore.open(default_keystore_dir("127.0.0.1", port, "alice"), None)
    client = Client(
        "alice",
        context=client_context(cert_files["ca"]),
        port=port,
        keys=WhisperKeys.in_keystore(store, "alice"),
    )
    monkeypatch.setattr(Client, "_renamed", lambda self, new: None)  # dead before it could finish
    with client:
        client.rename("alice2")
        client.wait_for(Renamed, TIMEOUT)  # the server renamed us
    store.close()
    monkeypatch.undo()


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


@pytest.fixture
def alice_renamed(
    server: Server, cert_files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """The command line for `send --room` (add --nick), with alice's rename cut short."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SECURECHAT_PASSPHRASE", "")
    argv = ["send", "--port", str(server.address[1]), "--cafile", cert_files["ca"], "--room", "hi"]
    assert main([*argv, "--nick", "alice"]) == 0  # alice's keys made and registered
    with pytest.MonkeyPatch.context() as patch:
        _rename_cut_short(server, cert_files, patch)
    return argv


def test_starting_as_the_new_nick_after_a_cut_short_rename_says_what_to_do_and_leaves_nothing(
    server: Server,
    cert_files: dict[str, str],
    tmp_path: Path,
    alice_renamed: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from securechat.client.keystore import default_keystore_dir

    capsys.readouterr()
    assert main([*alice_renamed, "--nick", "alice2"]) == 1
    err = capsys.readouterr().err
    assert "alice2 is registered to another key" in err
    assert "If you renamed yourself to alice2, start with your old nick (--nick OLD)" in err
    # The keystore made for alice2 in this run never did anything: gone, so it neither
    # stands in the way of finishing the rename nor makes the next start fail the same way.
    assert not default_keystore_dir("127.0.0.1", server.address[1], "alice2").exists()


def test_starting_as_the_old_nick_after_a_cut_short_rename_finishes_it(
    server: Server, cert_files: dict[str, str], alice_renamed: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from securechat.client.keystore import default_keystore_dir

    capsys.readouterr()
    assert main([*alice_renamed, "--nick", "alice"]) == 0
    assert "relayed" in capsys.readouterr().err
    port = server.address[1]
    assert not default_keystore_dir("127.0.0.1", port, "alice").exists()  # moved to alice2's place
    assert (default_keystore_dir("127.0.0.1", port, "alice2") / "keystore.db").is_file()
    assert not _registered(server, cert_files, "alice")  # not taken back: the old nick stays free
    assert _registered(server, cert_files, "alice2")
    assert main([*alice_renamed, "--nick", "alice2"]) == 0  # and alice2 is us


def test_release_room_forgets_a_registered_room(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from securechat.server.server import DB_NAME
    from securechat.server.store import SqliteStore, StoredRoom

    store = SqliteStore(tmp_path / DB_NAME)
    store.register_room(StoredRoom("#Dev", b"k" * 32))
    store.close()
    assert main(["release-room", "#dev", "--data-dir", str(tmp_path)]) == 0
    assert "released #dev" in capsys.readouterr().out
    store = SqliteStore(tmp_path / DB_NAME)
    assert store.registered_rooms() == []
    store.close()
    assert main(["release-room", "#dev", "--data-dir", str(tmp_path)]) == 1
    assert "#dev was not registered" in capsys.readouterr().out
    assert main(["release-room", "dev", "--data-dir", str(tmp_path)]) == 2
    assert main(["release-room", "#dev", "--data-dir", str(tmp_path / "none")]) == 2
    assert "no server database" in capsys.readouterr().err


def test_send_without_a_nick_uses_the_one_identity_this_machine_has_on_that_server(
    server: Server,
    cert_files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from securechat.client.events import WhisperReceived

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    base = ["send", "--port", str(server.address[1]), "--cafile", cert_files["ca"]]
    assert main([*base, "--to", "bob", "hi"]) == 2
    assert "no identity for 127.0.0.1:" in capsys.readouterr().err
    bob = login(server, client_context(cert_files["ca"]), "bob", memory_keys("bob"))  # keys published
    try:
        monkeypatch.setenv("SECURECHAT_PASSPHRASE", "")
        assert main([*base, "--nick", "Alice", "--to", "bob", "first, naming myself"]) == 0
        monkeypatch.delenv("SECURECHAT_PASSPHRASE")  # from now on nothing new may be made
        assert main([*base, "--to", "bob", "then without a nick"]) == 0
        got = [bob.wait_for_any(WhisperReceived, TIMEOUT) for _ in range(2)]
        assert [(w.sender, w.text) for w in got if isinstance(w, WhisperReceived)] == [
            ("Alice", "first, naming myself"),
            ("Alice", "then without a nick"),
        ]
    finally:
        bob.close()
    capsys.readouterr()
    monkeypatch.setenv("SECURECHAT_PASSPHRASE", "")
    assert main([*base, "--nick", "carol", "--room", "another identity here"]) == 0
    assert main([*base, "--to", "bob", "whose?"]) == 2
    assert "several identities for 127.0.0.1:" in capsys.readouterr().err


def test_the_same_server_typed_as_localhost_or_127_0_0_1_is_one_identity(
    server: Server, cert_files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SECURECHAT_PASSPHRASE", "")
    port = ["--port", str(server.address[1]), "--cafile", cert_files["ca"], "--nick", "alice"]
    assert main(["send", "--host", "localhost", *port, "--room", "made here"]) == 0
    monkeypatch.delenv("SECURECHAT_PASSPHRASE")  # nothing new may be made now
    # Before, the second spelling made a second identity, refused as registered to another key.
    assert main(["send", "--host", "127.0.0.1", *port, "--room", "the same alice"]) == 0
    places = sorted(p.name for p in (tmp_path / "xdg" / "securechat").iterdir())
    assert places == ["by-key", f"localhost_{server.address[1]}"]  # one place, known by its key too


def test_send_leaves_only_once_its_keys_are_published(
    server: Server, cert_files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first login publishes the identity's keys from the reader thread; a `send` that
    left on the room line's echo could close the connection before the server had read
    them (seen by hand against a server with a durable store: 1 time in 3 the next
    whisper to that user found "no keys yet"). It now waits for the confirmation."""
    from securechat.client.whispers import WhisperKeys

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SECURECHAT_PASSPHRASE", "")
    waited: list[bool] = []
    wait_published = WhisperKeys.wait_published

    def recording(self: WhisperKeys, timeout: float) -> bool:
        waited.append(wait_published(self, timeout))
        return waited[-1]

    monkeypatch.setattr(WhisperKeys, "wait_published", recording)
    base = ["send", "--port", str(server.address[1]), "--cafile", cert_files["ca"]]
    assert main([*base, "--nick", "bob", "--room", "one line and gone"]) == 0
    assert waited == [True]  # it waited, and the server confirmed bob's keys
    assert server.store.prekey_status("bob").spk_id > 0
    assert main([*base, "--nick", "alice", "--to", "bob", "for when you are back", "--wait", "0.5"]) == 3


def test_the_same_server_under_another_name_is_one_identity(
    ca: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keystores are filed by the server's certificate key: a name the host rules cannot
    tell is the same server (here this machine's own name) finds the identity made
    under 127.0.0.1. Before, it made a second one, refused as registered to another key."""
    import socket

    import trustme

    from securechat.client.keystore import Keystore

    name = socket.gethostname().lower()
    try:
        loopback = socket.gethostbyname(name).startswith("127.")
    except OSError:
        loopback = False
    if not loopback or name == "localhost":
        pytest.skip(f"this machine's name ({name}) does not lead to 127.0.0.1")
    assert isinstance(ca, trustme.CA)
    leaf = ca.issue_cert(name, "localhost", "127.0.0.1")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    context = server_context(tmp_path / "server.pem", tmp_path / "server.key")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with Server(ServerConfig(port=0), context) as server:
        port = server.address[1]
        args = ["--port", str(port), "--cafile", str(tmp_path / "ca.pem"), "--nick", "alice"]
        monkeypatch.setenv("SECURECHAT_PASSPHRASE", "")
        assert main(["send", "--host", "127.0.0.1", *args, "--room", "made here"]) == 0
        monkeypatch.delenv("SECURECHAT_PASSPHRASE")  # nothing new may be made now
        assert main(["send", "--host", name, *args, "--room", "the same alice"]) == 0
        # Without a nick too: the one identity on that server, found by its key.
        assert main(["send", "--host", name, *args[:4], "--room", "still alice"]) == 0
    places = sorted(p.name for p in (tmp_path / "xdg" / "securechat").iterdir())
    assert places == ["by-key", f"localhost_{port}"]
    assert Keystore.exists(tmp_path / "xdg" / "securechat" / places[1] / "alice")


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://u:s3cr%t!@h/db", "s3cr%t!"),
        ("postgresql://u:p@ss@h/db", "p@ss"),
        ("postgresql://u:caf%C3%A9@h/db", "café"),
        ("host=h password=secret dbname=x", "secret"),
        ("host=h password='q w' dbname=x", "q w"),
        ("redis://:pw-1@h:6379/0", "pw-1"),
        ("rediss://user:pw-2@h/0", "pw-2"),
    ],
)
def test_a_store_or_cluster_password_is_never_printed(url: str, secret: str) -> None:
    from securechat.cli.server_cmd import _redacted, _without_secrets

    assert secret not in _redacted(url) and "***" in _redacted(url)
    # Nor when an error quotes it, as written or decoded.
    assert secret not in _without_secrets(f"cannot parse {secret!r} in the URL", url)
