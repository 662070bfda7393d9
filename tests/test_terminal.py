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
from whisper_helpers import login, memory_keys

from securechat.client.events import WhisperReceived
from securechat.protocol import Message
from securechat.server import Server

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


@pytest.fixture
def alice_terminal(server: Server, cert_files: dict[str, str], tmp_path: Path) -> Iterator[Pane]:
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "SECURECHAT_PASSPHRASE": "",
        "TERM": "xterm-256color",
        "NO_COLOR": "1",
    }
    pane = Pane(
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
