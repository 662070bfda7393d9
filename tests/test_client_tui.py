"""The terminal front end driven through prompt_toolkit's pipe input."""

from __future__ import annotations

import threading

from chat import TIMEOUT, next_matching
from conftest import Connect
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from securechat.client.tui import run_tui
from securechat.protocol import Left, Message


def test_typed_lines_are_said_and_commands_run(connect: Connect) -> None:
    bob = connect("bob")
    alice = connect("alice")
    shown: list[str] = []
    lock = threading.Lock()
    seen_names = threading.Event()

    def write(line: str) -> None:
        with lock:
            shown.append(line)
        if "* in #lobby: alice, bob" in line:
            seen_names.set()

    with create_pipe_input() as pipe:
        result: list[int] = []
        ui = threading.Thread(
            target=lambda: result.append(run_tui(alice, pt_input=pipe, pt_output=DummyOutput(), write=write))
        )
        ui.start()
        pipe.send_text("hello bob\r")
        assert next_matching(bob, Message, nick="alice").text == "hello bob"  # type: ignore[attr-defined]
        pipe.send_text("/who\r")
        assert seen_names.wait(TIMEOUT)
        pipe.send_text("/wo\r/help quit\r//slash\r")
        assert next_matching(bob, Message, nick="alice").text == "/slash"  # type: ignore[attr-defined]
        pipe.send_text("/quit gotta go\r")
        assert next_matching(bob, Left, nick="alice").reason == "gotta go"  # type: ignore[attr-defined]
        ui.join(TIMEOUT)
    assert result == [0]
    assert "! unknown command /wo; did you mean /who?" in shown
    assert "/quit [message]: leave the chat" in shown


def test_lost_connection_ends_the_ui_with_status_1(connect: Connect, server: object) -> None:
    alice = connect("alice")
    shown: list[str] = []
    with create_pipe_input() as pipe:
        result: list[int] = []
        ui = threading.Thread(
            target=lambda: result.append(
                run_tui(alice, pt_input=pipe, pt_output=DummyOutput(), write=shown.append)
            )
        )
        ui.start()
        server.stop()  # type: ignore[attr-defined]
        ui.join(TIMEOUT)
    assert not ui.is_alive()
    assert result == [1]
    assert any("server shutting down" in line for line in shown)


def test_text_that_is_too_long_is_reported_not_sent(connect: Connect) -> None:
    alice = connect("alice")
    shown: list[str] = []
    with create_pipe_input() as pipe:
        ui = threading.Thread(
            target=run_tui,
            args=(alice,),
            kwargs={"pt_input": pipe, "pt_output": DummyOutput(), "write": shown.append},
        )
        ui.start()
        pipe.send_text("x" * 5000 + "\r/quit\r")
        ui.join(TIMEOUT)
    assert any(line.startswith("! not sent: text: longer than 4096 bytes") for line in shown)
