"""The real `securechat client` in a real terminal (tmux), driven as a person would.

Skipped where tmux is missing; CI installs it (.ci/run).
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat import TIMEOUT, next_matching
from conftest import StartServer
from whisper_helpers import login, memory_keys

from securechat import Client
from securechat.client.events import WhisperReceived
from securechat.client.handoff import SOCKET_NAME
from securechat.client.keystore import default_keystore_dir
from securechat.protocol import Message, WhisperStatus
from securechat.server import Server, ServerConfig

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Pane:
    """One tmux session on its own server socket, 80x24, running `command`."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.socket = f"securechat-test-{uuid.uuid4().hex[:8]}"
        line = " ".join(shlex_quote(c) for c in command) + "; echo EXIT=$?; sleep 60"
        subprocess.run(
            ["tmux", "-L", self.socket, "new-session", "-d", "-s", "t", "-x", "80", "-y", "24", line],
            check=True,
            env=env,
        )

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "-L", self.socket, "send-keys", "-t", "t", *keys], check=True)

    def type(self, text: str) -> None:
        subprocess.run(["tmux", "-L", self.socket, "send-keys", "-t", "t", "-l", text], check=True)

    def screen(self) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, "capture-pane", "-p", "-t", "t"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """The screen once `pattern` (a regex) shows on it. A terminal offers no event to
        wait on, so this polls the screen until the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if re.search(pattern, screen, re.MULTILINE):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} never showed; the screen was:\n{screen}")
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], check=False, capture_output=True)


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def alice_pane(server: Server, cert_files: dict[str, str], tmp_path: Path) -> Pane:
    """`securechat client --nick alice` for `server`, in a fresh tmux."""
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "SECURECHAT_PASSPHRASE": "",
        "TERM": "xterm-256color",
        "NO_COLOR": "1",
    }
    return Pane(
        [
            sys.executable,
            "-m",
            "securechat",
            "client",
            "--nick",
            "alice",
            "--no-bell",
            "--port",
            str(server.address[1]),
            "--cafile",
            cert_files["ca"],
        ],
        env,
    )


@pytest.fixture
def alice_terminal(server: Server, cert_files: dict[str, str], tmp_path: Path) -> Iterator[Pane]:
    pane = alice_pane(server, cert_files, tmp_path)
    yield pane
    pane.close()


def test_a_person_chats_whispers_verifies_and_quits_in_a_real_terminal(
    alice_terminal: Pane, server: Server, client_ctx: ssl.SSLContext
) -> None:
    pane = alice_terminal
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    pane.wait_for(r"connected as alice")
    pane.wait_for(r"127\.0\.0\.1:\d+ \| alice \| connected")  # the status bar

    # Half a line typed, then bob speaks: both stay intact on screen.
    pane.type("half a thou")
    bob.say("a message from bob arrives")
    screen = pane.wait_for(r"<bob> a message from bob arrives")
    assert re.search(r"^alice> half a thou\s*$", screen, re.MULTILINE), screen
    pane.type("ght, finished")
    pane.keys("Enter")
    assert next_matching(bob, Message, nick="alice").text == "half a thought, finished"  # type: ignore[attr-defined]

    # Up recalls the line sent before.
    pane.keys("Up")
    pane.wait_for(r"^alice> half a thought, finished\s*$")
    pane.keys("C-u")

    # Tab completion of a command and of a nick.
    pane.type("/verif")
    pane.keys("Tab")
    pane.wait_for(r"^alice> /verify\s*$")
    pane.type("bo")
    pane.keys("Tab")
    pane.wait_for(r"^alice> /verify bob\s*$")
    pane.keys("C-u")  # clear the line

    # An end-to-end whisper, and the safety number both sides compute.
    pane.type("/msg bob meet at noon")
    pane.keys("Enter")
    got = bob.wait_for_any(WhisperReceived, TIMEOUT)
    assert isinstance(got, WhisperReceived) and got.text == "meet at noon"
    pane.wait_for(r"whisper to bob: delivered")
    pane.type("/verify bob")
    pane.keys("Enter")
    screen = pane.wait_for(r"safety number with bob:\n  ((\d{5} ){11}\d{5})$")
    shown = re.search(r"safety number with bob:\n  ((\d{5} ){11}\d{5})$", screen, re.MULTILINE)
    assert shown is not None and bob.keys is not None
    assert shown.group(1) == bob.keys.safety_number("alice")

    pane.type("/help")
    pane.keys("Enter")
    pane.wait_for(r"^whispers: +/msg /w /r /query")
    pane.type("/quit see you")
    pane.keys("Enter")
    pane.wait_for(r"EXIT=0")
    bob.close()


def next_said(client: Client, nick: str) -> str:
    """The text of the next room line `nick` says, in any room."""
    said = next_matching(client, Message, nick=nick)
    assert isinstance(said, Message)
    return said.text


def test_escape_sequences_in_the_input_line_never_turn_a_whisper_into_room_text(
    alice_terminal: Pane, server: Server, client_ctx: ssl.SSLContext
) -> None:
    """Found testing as a new user: a pasted mouse report moved the cursor to the start of
    the line (the text after it landed before "/msg bob", and the line went to the room in
    clear), and a malformed one raised "Unhandled exception in event loop", whose "Press
    ENTER to continue" ate the next Enter."""
    pane = alice_terminal
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    pane.wait_for(r"connected as alice")
    # An xterm mouse click report, then one with a button number prompt_toolkit has no
    # entry for, each typed into the middle of a whisper.
    pane.type("/msg bob first secret \x1b[<0;1;1M and more")
    pane.keys("Enter")
    got = bob.wait_for_any(WhisperReceived, TIMEOUT)
    assert isinstance(got, WhisperReceived) and got.text == "first secret  and more"
    pane.type("/msg bob second secret \x1b[Mz!! and more")
    pane.keys("Enter")
    got = bob.wait_for_any(WhisperReceived, TIMEOUT)
    assert isinstance(got, WhisperReceived) and got.text == "second secret  and more"
    pane.type("in the room")
    pane.keys("Enter")
    assert next_said(bob, "alice") == "in the room"  # the first room line: nothing leaked before it
    assert "Unhandled exception" not in pane.screen()
    bob.close()


def test_a_35_line_paste_arrives_whole(
    start_server: StartServer, cert_files: dict[str, str], tmp_path: Path, client_ctx: ssl.SSLContext
) -> None:
    """Found testing as a new user: a 35-line paste lost 14 lines to the server's rate
    limit, with two "slow down" notices. Pasted as a terminal without bracketed paste does
    (tmux's paste-buffer: each line ends in a carriage return, as if Enter was pressed), to
    a server with the default rate limit (the test servers run without one)."""
    defaults = ServerConfig(host="127.0.0.1", port=0)
    server = start_server(message_rate=defaults.message_rate, message_burst=defaults.message_burst)
    pane = alice_pane(server, cert_files, tmp_path)
    try:
        bob = login(server, client_ctx, "bob", memory_keys("bob"))
        pane.wait_for(r"connected as alice")
        lines = [f"line {n:02} of a pasted traceback, long enough to matter" for n in range(1, 36)]
        subprocess.run(
            ["tmux", "-L", pane.socket, "set-buffer", "\n".join(lines) + "\n"],
            check=True,
            capture_output=True,
        )
        subprocess.run(["tmux", "-L", pane.socket, "paste-buffer", "-t", "t"], check=True)
        assert next_said(bob, "alice") == "\n".join(lines)  # one message, every line, in order
        assert "slow down" not in pane.screen()
        bob.close()
    finally:
        pane.close()


def test_windows_switch_show_activity_and_scroll_back(
    alice_terminal: Pane, server: Server, client_ctx: ssl.SSLContext
) -> None:
    pane = alice_terminal
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    pane.wait_for(r"connected as alice")
    bob.join("#dev")
    pane.type("/join #dev")
    pane.keys("Enter")
    pane.wait_for(r"\| \[2:#dev\] 2 here")  # the status bar: its own window, current
    pane.type("/join #ops")
    pane.keys("Enter")
    pane.wait_for(r"\| \[3:#ops\] 1 here")
    # 30 lines in #dev (one multi-line message: the server's burst is not the point here)
    # and a mention of alice, while alice looks at #ops.
    bob.say("\n".join(f"dev line {n:02}" for n in range(1, 31)), room="#dev")
    pane.wait_for(r"\[3:#ops\] 1 here \| act: 2$")
    bob.say("alice: look at this", room="#dev")
    pane.wait_for(r"\[3:#ops\] 1 here \| act: 2!$")  # highlighted: a mention
    assert "dev line" not in pane.screen()  # #dev's lines stay in #dev's window
    pane.keys("M-2")
    screen = pane.wait_for(r"\| \[2:#dev\] 2 here$")  # no activity left
    assert "alice: look at this" in screen and "dev line 01" not in screen  # scrolled to the newest
    pane.keys("PageUp")
    screen = pane.wait_for(r"<bob> dev line 01$")
    assert "[2:#dev] (scrolled)" in screen
    pane.keys("PageDown")
    pane.wait_for(r"alice: look at this")
    pane.keys("M-Left")
    pane.wait_for(r"\| \[1:#lobby\] 2 here")
    pane.type("/quit")
    pane.keys("Enter")
    pane.wait_for(r"EXIT=0")
    bob.close()


def send_whisper(
    server: Server, cert_files: dict[str, str], tmp_path: Path, text: str, *nick: str
) -> subprocess.CompletedProcess[str]:
    """`securechat send --to bob TEXT` [--nick NICK], as a script beside the chat screen runs it
    (the same keystores as `alice_pane`)."""
    port = ["--port", str(server.address[1]), "--cafile", cert_files["ca"]]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "securechat",
            "send",
            *(["--nick", *nick] if nick else []),
            *port,
            "--to",
            "bob",
            text,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "SECURECHAT_PASSPHRASE": ""},
        timeout=TIMEOUT * 3,
    )


def test_a_script_sends_under_the_same_name_while_the_person_chats_and_nobody_is_thrown_out(
    alice_terminal: Pane,
    server: Server,
    client_ctx: ssl.SSLContext,
    cert_files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pane = alice_terminal
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    pane.wait_for(r"127\.0\.0\.1:\d+ \| alice \| connected")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # alice_pane's
    handoff = default_keystore_dir("127.0.0.1", server.address[1], "alice") / SOCKET_NAME
    deadline = time.monotonic() + TIMEOUT
    while not handoff.exists():  # the chat client listens once it is logged in
        assert time.monotonic() < deadline, "the chat client never offered a handoff"
        time.sleep(0.05)
    sent = send_whisper(server, cert_files, tmp_path, "the build is green")
    assert sent.returncode == 0, sent.stderr  # delivered, by the chat client
    assert "sent by your running client" in sent.stderr
    got = bob.wait_for_any(WhisperReceived, TIMEOUT)
    assert isinstance(got, WhisperReceived) and (got.sender, got.text) == ("alice", "the build is green")
    pane.wait_for(r"whisper to bob: delivered")  # the person sees it went
    pane.type("still chatting")
    pane.keys("Enter")
    assert next_said(bob, "alice") == "still chatting"
    pane.wait_for(r"127\.0\.0\.1:\d+ \| alice \| connected")
    pane.type("/quit")
    pane.keys("Enter")
    pane.wait_for(r"EXIT=0")
    bob.close()


def test_after_identity_the_handoff_follows_the_new_identity_and_frees_the_old(
    alice_terminal: Pane,
    server: Server,
    client_ctx: ssl.SSLContext,
    cert_files: dict[str, str],
    tmp_path: Path,
) -> None:
    pane = alice_terminal
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    pane.wait_for(r"127\.0\.0\.1:\d+ \| alice \| connected")
    pane.type("/identity carol")
    pane.keys("Enter")
    pane.wait_for(r"you are now carol")
    as_carol = send_whisper(server, cert_files, tmp_path, "through the chat screen", "carol")
    assert as_carol.returncode == 0 and "sent by your running client" in as_carol.stderr, as_carol.stderr
    as_alice = send_whisper(server, cert_files, tmp_path, "alice's keys are free again", "alice")
    assert as_alice.returncode == 0 and "running client" not in as_alice.stderr, as_alice.stderr
    texts = []
    for _ in range(2):
        got = bob.wait_for_any(WhisperReceived, TIMEOUT)
        assert isinstance(got, WhisperReceived)
        texts.append((got.sender, got.text))
    assert texts == [("carol", "through the chat screen"), ("alice", "alice's keys are free again")]
    pane.type("/quit")
    pane.keys("Enter")
    pane.wait_for(r"EXIT=0")
    bob.close()


def link_desktop(laptop: Pane, server: Server, cert_files: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Link a second device to alice, as a person does with two screens: the chat client
    on the laptop (`laptop`), `securechat link` on the new machine (its own keystore
    place); the codes are read off one screen and typed on the other. The new machine's
    environment (its XDG_DATA_HOME)."""
    laptop.wait_for(r"127\.0\.0\.1:\d+ \| alice \| connected")
    laptop.type("/link")
    laptop.keys("Enter")
    laptop.wait_for(r"securechat link --nick alice")
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "desktop"),
        "XDG_CONFIG_HOME": str(tmp_path / "desktop-cfg"),
        "SECURECHAT_PASSPHRASE": "",
        "TERM": "xterm-256color",
        "NO_COLOR": "1",
    }
    port = ["--port", str(server.address[1]), "--cafile", cert_files["ca"]]
    desktop = Pane([sys.executable, "-m", "securechat", "link", "--nick", "alice", *port], env)
    try:
        first = re.search(r"/link (\d{3} \d{3})", desktop.wait_for(r"There, type:  /link \d{3} \d{3}"))
        assert first is not None
        laptop.wait_for(r"type /link CODE with the 6-digit code")
        laptop.type(f"/link {first.group(1)}")
        laptop.keys("Enter")
        second = re.search(r"type this code: (\d{3} \d{3})", laptop.wait_for(r"type this code: \d{3} \d{3}"))
        assert second is not None
        desktop.wait_for(r"Type the code it shows then")
        desktop.type(second.group(1).replace(" ", ""))
        desktop.keys("Enter")
        desktop.wait_for(r"Linked: this device \(\S+\) is one of alice's 2 devices")
        desktop.wait_for(r"EXIT=0")
    finally:
        desktop.close()
    return env


def test_a_person_links_a_second_device_from_the_chat_screen_and_unlinks_it(
    alice_terminal: Pane,
    server: Server,
    cert_files: dict[str, str],
    tmp_path: Path,
) -> None:
    laptop = alice_terminal
    link_desktop(laptop, server, cert_files, tmp_path)
    listed = server.store.device_list("alice")
    assert listed is not None and listed[0] == 1
    laptop.type("/devices")
    laptop.keys("Enter")
    screen = laptop.wait_for(r"your devices \(2\):")
    listed_lines = re.findall(r"^\*   (\S+)( \(this one\))?\s*$", screen, re.MULTILINE)
    assert sorted(bool(this) for _, this in listed_lines) == [False, True]  # this one and the desktop
    device = next(name for name, this in listed_lines if not this)
    laptop.type(f"/unlink {device}")
    laptop.keys("Enter")
    laptop.wait_for(rf"device {re.escape(device)} is unlinked")
    listed = server.store.device_list("alice")
    assert listed is not None and listed[0] == 2


def desktop_pane(server: Server, cert_files: dict[str, str], env: dict[str, str]) -> Pane:
    """alice's chat client on the linked desktop (its keystore in `env`'s XDG_DATA_HOME)."""
    port = ["--port", str(server.address[1]), "--cafile", cert_files["ca"]]
    return Pane([sys.executable, "-m", "securechat", "client", "--nick", "alice", "--no-bell", *port], env)


def test_two_screens_of_one_person_each_show_every_whisper_once_across_a_restart(
    alice_terminal: Pane,
    server: Server,
    client_ctx: ssl.SSLContext,
    cert_files: dict[str, str],
    tmp_path: Path,
) -> None:
    laptop = alice_terminal
    env = link_desktop(laptop, server, cert_files, tmp_path)
    desktop = desktop_pane(server, cert_files, env)
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    try:
        desktop.wait_for(r"127\.0\.0\.1:\d+ \| alice \| connected")
        sent = bob.whisper("alice", "one for both screens")
        for pane in (laptop, desktop):
            pane.wait_for(r"act: 2!$")  # bob's whisper window, opened by the whisper
            pane.keys("M-2")
            screen = pane.wait_for(r"whisper from bob.*\] one for both screens")
            assert screen.count("one for both screens") == 1
        next_matching(bob, WhisperStatus, id=sent, status="delivered")
        # Typed on the desktop: bob gets it once, the laptop shows it as sent from the desktop.
        desktop.type("/msg bob from the desktop")
        desktop.keys("Enter")
        assert next_matching(bob, WhisperReceived, text="from the desktop").sender == "alice"
        screen = laptop.wait_for(r"you to bob, from your device \S+\] from the desktop")
        assert screen.count("from the desktop") == 1
        # The desktop closes; what bob sends meanwhile reaches it at its next start, once.
        desktop.type("/quit")
        desktop.keys("Enter")
        desktop.wait_for(r"EXIT=0")
        desktop.close()
        bob.whisper("alice", "while the desktop was off")
        laptop.wait_for(r"whisper from bob.*\] while the desktop was off")
        desktop = desktop_pane(server, cert_files, env)
        desktop.wait_for(r"act: 2!$")
        desktop.keys("M-2")
        screen = desktop.wait_for(r"whisper from bob.*\] while the desktop was off")
        assert screen.count("while the desktop was off") == 1
        assert not re.search(r"whisper from bob.*\] one for both screens", screen)  # not shown anew
        bob.say("sentinel")
        desktop.keys("M-1")
        desktop.wait_for(r"<bob> sentinel")
        desktop.keys("M-2")
        screen = desktop.wait_for(r"\[2:bob \(whisper\)\]")
        assert screen.count("while the desktop was off") == 1
    finally:
        desktop.close()
        bob.close()
