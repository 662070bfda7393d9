"""One identity, several programs: the keystore's one holder, and `securechat send`
handing its whisper to it over the handoff socket (client/handoff.py), over real TLS."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from chat import TIMEOUT
from test_client_jsonmode import JsonClient
from whisper_helpers import login, memory_keys

from securechat.cli import main
from securechat.client.events import WhisperReceived
from securechat.client.handoff import SOCKET_NAME, AttachedClient, HandoffRefused, HandoffServer, hand_off
from securechat.client.keystore import Keystore, KeystoreBusy, default_keystore_dir
from securechat.protocol import Message
from securechat.server import Server

_HOLD = """
import sys
from pathlib import Path
from securechat.client.keystore import Keystore
store = Keystore.open(Path(sys.argv[1]), None)
print("held", flush=True)
sys.stdin.readline()
store.close()
"""


def _until(condition: object, what: str) -> None:
    """Wait (with a deadline) for a condition another process brings about."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _holder(directory: Path) -> subprocess.Popen[str]:
    """Another process holding the keystore (and taking no handoff), until told to stop."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_keystore_has_one_holder_process_at_a_time(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    Keystore.create(d, None).close()
    proc = _holder(d)
    try:
        with pytest.raises(KeystoreBusy, match=f"in use by process {proc.pid}"):
            Keystore.open(d, None)
        assert Keystore.holder(d) == proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(TIMEOUT)
    assert Keystore.holder(d) is None
    first = Keystore.open(d, None)
    second = Keystore.open(d, None)  # the same process: they share the hold
    first.close()
    probe = subprocess.run(
        [sys.executable, "-c", _HOLD, str(d)], input="\n", capture_output=True, text=True, timeout=TIMEOUT
    )
    assert probe.returncode != 0 and "KeystoreBusy" in probe.stderr  # still held by `second`
    second.close()
    probe = subprocess.run(
        [sys.executable, "-c", _HOLD, str(d)], input="\n", capture_output=True, text=True, timeout=TIMEOUT
    )
    assert probe.returncode == 0


def test_send_hands_its_whisper_to_the_running_client_and_nobody_is_thrown_out(
    server: Server,
    client_ctx: ssl.SSLContext,
    cert_files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SECURECHAT_PASSPHRASE", "")
    port = server.address[1]
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    alice = JsonClient("alice", server, cert_files["ca"], tmp_path)
    try:
        assert alice.until("welcome")["nick"] == "alice"
        keystore = default_keystore_dir("127.0.0.1", port, "alice")
        _until(lambda: (keystore / SOCKET_NAME).exists(), "the handoff socket")
        assert (keystore / SOCKET_NAME).stat().st_mode & 0o777 == 0o600
        base = ["send", "--nick", "alice", "--port", str(port), "--cafile", cert_files["ca"]]
        assert main([*base, "--to", "bob", "from a script, while alice chats"]) == 0  # delivered
        got = bob.wait_for_any(WhisperReceived, TIMEOUT)
        assert isinstance(got, WhisperReceived) and got.sender == "alice"
        assert got.text == "from a script, while alice chats"
        assert main([*base, "--room", "a room line by handoff"]) == 0
        # A line the server refuses (alice is in no such room) is reported as refused.
        refused = list(hand_off(keystore, {"type": "say", "room": "#nowhere", "text": "x"}, TIMEOUT))
        assert refused[-1]["type"] == "error" and "#nowhere" in str(refused[-1]["reason"])
        line = bob.wait_for_any(Message, TIMEOUT)
        assert isinstance(line, Message) and (line.nick, line.text) == ("alice", "a room line by handoff")
        # alice's client is still there, and it was the one that sent: it saw the status.
        assert alice.until("whisper_status")["to"] == "bob"
        assert alice.until("message")["text"] == "a room line by handoff"  # said by this very client
        alice.send(type="say", text="still here")
        assert alice.until("message")["text"] == "still here"
        assert alice.proc.poll() is None
    finally:
        alice.send(type="quit")
        alice.proc.wait(TIMEOUT)
        bob.close()
    # The holder gone, its socket went with it, and `send` opens the keystore itself.
    assert not (keystore / SOCKET_NAME).exists() and Keystore.holder(keystore) is None


def test_send_to_a_holder_that_takes_no_handoff_says_who_holds_the_keys(
    server: Server, cert_files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "alice-keys"
    Keystore.create(d, None).close()
    proc = _holder(d)
    try:
        argv = ["send", "--nick", "alice", "--keys", str(d), "--port", str(server.address[1])]
        assert main([*argv, "--cafile", cert_files["ca"], "--to", "bob", "hi"]) == 1
        err = capsys.readouterr().err
        assert f"in use by process {proc.pid}" in err and "try again when it ends" in err
    finally:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(TIMEOUT)


def _connect_as_nobody(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "/usr/bin/python3",  # nobody may not run this venv's interpreter (under /root)
            "-c",
            "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1]); print('reached')",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        user=65534,  # nobody
    )


@pytest.mark.skipif(
    os.getuid() != 0 or not Path("/usr/bin/python3").exists(), reason="needs root (to act as another user)"
)
def test_another_user_cannot_reach_the_handoff_socket() -> None:
    # Under a directory anyone may pass through (pytest's own temporary base is 0700, which
    # would stop the probe before the keystore's mode is ever tested).
    base = Path(tempfile.mkdtemp(prefix="securechat-handoff-"))
    try:
        base.chmod(0o755)
        d = base / "ks"
        Keystore.create(d, None).close()  # 0700, as every keystore directory
        server = HandoffServer(None, d)  # type: ignore[arg-type]  # no request is answered here
        server.start()
        try:
            assert (d / SOCKET_NAME).stat().st_mode & 0o777 == 0o600
            refused = _connect_as_nobody(d / SOCKET_NAME)
            assert refused.returncode != 0 and "PermissionError" in refused.stderr
            # The control: with the directory open to others, only the socket's own mode
            # stands in the way, and it holds too.
            d.chmod(0o755)
            refused = _connect_as_nobody(d / SOCKET_NAME)
            assert refused.returncode != 0 and "PermissionError" in refused.stderr
            # With both open (as a careless chmod would leave them) the user nobody does reach it,
            # which is why the holder checks the caller's uid and `send` the directory's.
            (d / SOCKET_NAME).chmod(0o666)
            assert _connect_as_nobody(d / SOCKET_NAME).stdout.strip() == "reached"
            with pytest.raises(HandoffRefused, match="not private to you"):
                list(hand_off(d, {"type": "whisper", "to": "bob", "text": "x"}, TIMEOUT))
        finally:
            server.close()
    finally:
        shutil.rmtree(base)


def test_closing_the_handoff_cuts_its_connections_and_leaves_another_holders_socket(tmp_path: Path) -> None:
    d = tmp_path / "ks"
    Keystore.create(d, None).close()
    first = HandoffServer(None, d)  # type: ignore[arg-type]
    first.start()
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(str(d / SOCKET_NAME))  # connected, and says nothing
    _until(lambda: bool(first._conns), "the server to take the connection")  # not a queued one
    closer = threading.Thread(target=first.close)
    closer.start()
    closer.join(TIMEOUT / 2)  # not one request timeout per connection
    assert not closer.is_alive() and idle.recv(1) == b""
    idle.close()
    # A server whose path another holder bound since (a rename moved the directory, an
    # /identity switch) leaves that holder's socket alone when it closes.
    stale = HandoffServer(None, d)  # type: ignore[arg-type]
    stale.start()
    current = HandoffServer(None, d)  # type: ignore[arg-type]
    current.start()  # replaces the file
    stale.close()
    assert (d / SOCKET_NAME).exists()
    current.close()
    assert not (d / SOCKET_NAME).exists()


def test_a_second_json_client_under_a_held_identity_attaches_to_the_running_one(
    server: Server,
    client_ctx: ssl.SSLContext,
    cert_files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    holder = JsonClient("alice", server, cert_files["ca"], tmp_path)
    attached: JsonClient | None = None
    try:
        assert holder.until("welcome")["nick"] == "alice"
        keystore = default_keystore_dir("127.0.0.1", server.address[1], "alice")
        _until(lambda: (keystore / SOCKET_NAME).exists(), "the handoff socket")
        attached = JsonClient("alice", server, cert_files["ca"], tmp_path)  # a bot under alice's name
        assert attached.until("welcome")["nick"] == "alice"  # the running client's
        attached.send(type="whisper", to="bob", text="from the attached bot")
        sent = attached.until("whisper_sent")
        got = bob.wait_for_any(WhisperReceived, TIMEOUT)
        assert isinstance(got, WhisperReceived) and (got.sender, got.text) == (
            "alice",
            "from the attached bot",
        )
        assert attached.until("whisper_status")["id"] == sent["id"]
        bob.whisper("alice", "to every program of alice's")
        for program in (holder, attached):  # both see it: one client, two views
            assert program.until("whisper")["text"] == "to every program of alice's"
        attached.send(type="quit")  # detaches: alice's client goes on
        assert attached.proc.wait(TIMEOUT) == 0
        holder.send(type="say", text="still here")
        assert holder.until("message")["text"] == "still here" and holder.proc.poll() is None
    finally:
        if attached is not None and attached.proc.poll() is None:
            attached.proc.kill()
        holder.send(type="quit")
        holder.proc.wait(TIMEOUT)
        bob.close()


def test_a_python_program_under_a_held_identity_works_through_the_running_client(
    server: Server,
    client_ctx: ssl.SSLContext,
    cert_files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    holder = JsonClient("alice", server, cert_files["ca"], tmp_path)
    try:
        assert holder.until("welcome")["nick"] == "alice"
        keystore = default_keystore_dir("127.0.0.1", server.address[1], "alice")
        _until(lambda: (keystore / SOCKET_NAME).exists(), "the handoff socket")
        with pytest.raises(KeystoreBusy):  # what the API finds: the keys are in use
            Keystore.open(keystore, None)
        with AttachedClient(keystore) as api:
            api.whisper("bob", "from a Python program, through alice's client")
            got = bob.wait_for_any(WhisperReceived, TIMEOUT)
            assert isinstance(got, WhisperReceived) and (got.sender, got.text) == (
                "alice",
                "from a Python program, through alice's client",
            )
            bob.whisper("alice", "to every program of alice's")
            deadline = time.monotonic() + TIMEOUT
            while (event := api.next_event(max(0.0, deadline - time.monotonic())))["type"] != "whisper":
                pass
            assert event["text"] == "to every program of alice's"
        holder.send(type="say", text="still here")  # detached: alice's client goes on
        assert holder.until("message")["text"] == "still here" and holder.proc.poll() is None
    finally:
        holder.send(type="quit")
        holder.proc.wait(TIMEOUT)
        bob.close()
    with pytest.raises(HandoffRefused):  # nothing holds the keys now: open them yourself
        AttachedClient(keystore)
