"""The non-interactive client: `client --json`, `send`, and the example bot, end to end."""

from __future__ import annotations

import io
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat import TIMEOUT
from whisper_helpers import login, memory_keys

from securechat.cli import main
from securechat.client import Disconnected
from securechat.client.events import WhisperReceived
from securechat.protocol import Entered
from securechat.server import Server

ROOT = Path(__file__).resolve().parent.parent


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "PYTHONUNBUFFERED": "1",
        "SECURECHAT_PASSPHRASE": "",
    }


class JsonClient:
    """`securechat client --json` as a subprocess."""

    def __init__(self, nick: str, server: Server, ca: str, tmp_path: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "securechat",
                "client",
                "--json",
                "--nick",
                nick,
                "--port",
                str(server.address[1]),
                "--cafile",
                ca,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(tmp_path),
        )

    def send(self, **command: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def until(self, kind: str) -> dict[str, object]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # ends if the process dies: then the assert below fails
            event = json.loads(line)
            if event["type"] == kind:
                return event
        raise AssertionError(
            f"no {kind!r} before the end; stderr: {self.proc.stderr.read() if self.proc.stderr else ''}"
        )


@pytest.fixture
def bot(server: Server, cert_files: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "docs" / "examples" / "echo_bot.py"),
            "--port",
            str(server.address[1]),
            "--cafile",
            cert_files["ca"],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(tmp_path),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "echobot is listening"
    yield proc
    proc.terminate()
    proc.wait(TIMEOUT)


def test_a_json_script_whispers_the_example_bot_and_gets_its_answer(
    server: Server, cert_files: dict[str, str], tmp_path: Path, bot: subprocess.Popen[str]
) -> None:
    script = JsonClient("script", server, cert_files["ca"], tmp_path)
    assert script.until("welcome")["nick"] == "script"
    script.send(type="whisper", to="echobot", text="ping over e2e")
    sent = script.until("whisper_sent")
    # "stored" and "delivered" leave the server from two threads (the sender's session and
    # the recipient's ack): either may come first, and a "stored" after "delivered" is old
    # news the client does not print.
    statuses = [script.until("whisper_status")]
    if statuses[0]["status"] != "delivered":
        statuses.append(script.until("whisper_status"))
    assert statuses[-1] == {
        "type": "whisper_status",
        "id": sent["id"],
        "to": "echobot",
        "status": "delivered",
        "away": "",
        "reason": "",
        "device": "",
        "devices": 0,
    }
    assert [s["status"] for s in statuses] in (["stored", "delivered"], ["delivered"])
    answer = script.until("whisper")
    assert (answer["sender"], answer["text"], answer["trust"], answer["replay"]) == (
        "echobot",
        "echo: ping over e2e",
        "unverified",
        False,
    )
    script.send(type="history", nick="echobot", last=5)
    kept = script.until("history")["messages"]
    assert [(m["direction"], m["text"]) for m in kept] == [  # type: ignore[union-attr]
        ("out", "ping over e2e"),
        ("in", "echo: ping over e2e"),
    ]
    script.send(type="safety_number", nick="echobot")
    assert len(str(script.until("safety_number")["number"]).split()) == 12
    script.send(type="whois", nick="echobot")
    whois = script.until("whois")
    assert (whois["known"], whois["trust"], whois["pending_fingerprint"], whois["post_quantum"]) == (
        True,
        "unverified",
        None,
        True,  # a version-2 setup: the conversation is post-quantum
    )
    script.send(type="whois", nick="stranger")
    assert script.until("whois")["known"] is False
    script.send(type="teleport")
    assert "unknown command" in str(script.until("command_error")["reason"])
    script.send(type="say", text="hello room")
    assert script.until("message")["text"] == "hello room"
    script.send(type="quit", reason="done")
    assert script.until("disconnected")["type"] == "disconnected"
    assert script.proc.wait(TIMEOUT) == 0


def test_send_exit_codes_say_delivered_stored_or_failed(
    server: Server,
    client_ctx: ssl.SSLContext,
    cert_files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bot: subprocess.Popen[str],
) -> None:
    monkeypatch.setenv("SECURECHAT_PASSPHRASE", "")
    base = ["send", "--nick", "alice", "--port", str(server.address[1]), "--cafile", cert_files["ca"]]
    assert main([*base, "--to", "echobot", "are you there?"]) == 0  # online: delivered
    login(server, client_ctx, "sleeper", memory_keys("sleeper")).close()  # registered, then offline
    assert main([*base, "--to", "sleeper", "read this later", "--wait", "0.5"]) == 3  # stored
    assert main([*base, "--to", "nobody", "hello?"]) == 1  # no such user
    assert main([*base, "--room", "hi all"]) == 0
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main([*base, "--to", "echobot"]) == 2  # no text, and nothing piped in


def test_send_reads_the_text_from_standard_input(
    server: Server, client_ctx: ssl.SSLContext, cert_files: dict[str, str], tmp_path: Path
) -> None:
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "securechat",
            "send",
            "--nick",
            "alice",
            "--to",
            "bob",
            "--port",
            str(server.address[1]),
            "--cafile",
            cert_files["ca"],
        ],
        input="line one\nline two\n",
        capture_output=True,
        text=True,
        env=cli_env(tmp_path),
        timeout=TIMEOUT * 3,
    )
    assert result.returncode == 0, result.stderr
    assert "delivered" in result.stderr
    got = bob.wait_for_any(WhisperReceived, TIMEOUT)
    assert isinstance(got, WhisperReceived) and got.text == "line one\nline two"
    bob.close()


def test_every_event_the_client_makes_has_a_json_name() -> None:
    from typing import get_args

    from securechat.client.events import ClientMade
    from securechat.client.jsonmode import _CLIENT_EVENT_TYPES

    assert set(_CLIENT_EVENT_TYPES) == {*get_args(ClientMade), Disconnected}
    assert len(set(_CLIENT_EVENT_TYPES.values())) == len(_CLIENT_EVENT_TYPES)


class _OneEventClient:
    """Just enough of `Client` for `run_json`: one event, then the end."""

    welcome = None

    def __init__(self, event: object) -> None:
        self._items = [event, Disconnected(reason="done")]

    def next_event(self, timeout: float | None = None) -> object:
        return self._items.pop(0) if len(self._items) > 1 else self._items[0]

    def close(self) -> None:
        pass


def test_json_mode_escapes_bidi_c1_and_invisible_characters_but_keeps_their_value() -> None:
    import io
    import unicodedata

    from securechat.client.jsonmode import run_json
    from securechat.protocol import Message

    text = "admin\u202etxt \x9b31m \u200b\u2028 caf\u00e9 \U0001f600 \U000e0041 del\x7f"
    out = io.StringIO()
    run_json(_OneEventClient(Message(nick="bob", text=text, ts=1.0)), io.StringIO(""), out)  # type: ignore[arg-type]
    line = out.getvalue().splitlines()[0]
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in line)
    for raw in ("\u202e", "\x9b", "\u200b", "\u2028", "\U000e0041", "\x7f"):
        assert raw not in line
    assert "caf\u00e9 \U0001f600" in line  # ordinary text stays readable
    assert json.loads(line)["text"] == text  # a program reads back exactly what was sent


def test_json_lines_cannot_carry_a_lone_surrogate_to_the_utf8_output() -> None:
    from securechat.client.jsonmode import dumps

    line = dumps({"x": "\ud800"})
    line.encode("utf-8")  # would raise UnicodeEncodeError and end the output pump
    assert json.loads(line)["x"] == "\ud800"


def test_every_room_command_sends_its_frame_and_the_answers_come_out(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    from hostile_server import HostileConn, HostileServer

    from securechat.client import Client
    from securechat.client.jsonmode import run_json

    commands = [
        {"type": "join", "room": "#dev"},
        {"type": "part", "room": "#dev", "reason": "lunch"},
        {"type": "names", "room": "#dev"},
        {"type": "topic", "room": "#dev", "topic": "builds"},
        {"type": "list", "pattern": "#d*"},
        {"type": "invite", "room": "#dev", "nick": "bob"},
        {"type": "kick", "room": "#dev", "nick": "bob", "reason": "spam"},
        {"type": "ban", "room": "#dev", "mask": "spam*"},
        {"type": "unban", "room": "#dev", "mask": "spam*"},
        {"type": "bans", "room": "#dev"},
        {"type": "mode", "room": "#dev", "invite_only": True},
        {"type": "register", "room": "#dev"},
        {"type": "op", "room": "#dev", "nick": "bob"},
        {"type": "deop", "room": "#dev", "nick": "bob"},
        {"type": "transfer", "room": "#dev", "nick": "bob"},
        {"type": "nick", "nick": "alice2"},
        {"type": "say", "room": "#dev", "text": "hi", "action": True},
        {"type": "away", "message": "lunch"},
        {"type": "mode", "room": "#dev"},  # a missing field: a command_error, nothing sent
        {"type": "join", "room": "dev"},  # not a room name: a command_error, nothing sent
    ]
    expected = [
        {"type": "join", "room": "#dev"},
        {"type": "part", "room": "#dev", "reason": "lunch"},
        {"type": "who", "room": "#dev"},
        {"type": "set_topic", "room": "#dev", "topic": "builds"},
        {"type": "list", "pattern": "#d*"},
        {"type": "invite", "room": "#dev", "nick": "bob"},
        {"type": "kick", "room": "#dev", "nick": "bob", "reason": "spam"},
        {"type": "ban", "room": "#dev", "mask": "spam*"},
        {"type": "unban", "room": "#dev", "mask": "spam*"},
        {"type": "bans", "room": "#dev"},
        {"type": "set_mode", "room": "#dev", "invite_only": True},
        {"type": "register_room", "room": "#dev"},
        {"type": "op", "room": "#dev", "nick": "bob"},
        {"type": "deop", "room": "#dev", "nick": "bob"},
        {"type": "transfer", "room": "#dev", "nick": "bob"},
        {"type": "rename", "nick": "alice2", "signature": ""},
        {"type": "say", "room": "#dev", "text": "hi", "action": True},
        {"type": "away", "message": "lunch"},
    ]
    received: list[dict[str, object]] = []

    def script(conn: HostileConn, _: int) -> None:
        conn.read_frame()
        conn.send({"type": "welcome", "version": 2, "nick": "alice", "room": "#lobby", "users": ["alice"]})
        conn.send({"type": "entered", "room": "#lobby", "users": ["alice"]})
        while (frame := conn.read_frame())["type"] != "quit":
            received.append(frame)
        conn.send({"type": "bye", "reason": "goodbye"})

    server = HostileServer(server_ctx, script)
    client = Client("alice", context=client_ctx, port=server.port, timeout=TIMEOUT)
    try:
        client.connect()
        client.wait_for_any(Entered, TIMEOUT)
        lines = [json.dumps(c) for c in commands] + ['{"type": "in_rooms"}', '{"type": "quit"}']
        out = io.StringIO()
        assert run_json(client, io.StringIO("\n".join(lines) + "\n"), out) == 0
    finally:
        client.close()
        server.close()
    assert received == expected
    printed = [json.loads(line) for line in out.getvalue().splitlines()]
    errors = [p for p in printed if p["type"] == "command_error"]
    assert len(errors) == 2 and "invite_only" in errors[0]["reason"] and "room" in errors[1]["reason"]
    assert {"type": "in_rooms", "rooms": ["#lobby"]} in printed


def test_json_mode_tells_a_program_which_nick_holds_a_key_it_knows_under_another() -> None:
    import io

    from securechat.client.events import KeyChanged, KnownKeyRenamed
    from securechat.client.jsonmode import run_json

    out = io.StringIO()
    run_json(_OneEventClient(KnownKeyRenamed(old="bob", new="bob2", trust="verified")), io.StringIO(""), out)  # type: ignore[arg-type]
    assert json.loads(out.getvalue().splitlines()[0]) == {
        "type": "known_key_renamed",
        "old": "bob",
        "new": "bob2",
        "trust": "verified",
    }
    out = io.StringIO()
    claim = KeyChanged(peer="mallory", old_fingerprint="aa", new_fingerprint="bb", held=0, renamed_from="bob")
    run_json(_OneEventClient(claim), io.StringIO(""), out)  # type: ignore[arg-type]
    line = json.loads(out.getvalue().splitlines()[0])
    assert (line["type"], line["peer"], line["renamed_from"]) == ("key_changed", "mallory", "bob")
