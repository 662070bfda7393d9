from __future__ import annotations

import pytest

from securechat.client.commands import (
    COMMANDS,
    SECTIONS,
    Command,
    Text,
    Unknown,
    closest_nick,
    help_lines,
    parse_input,
    split_room,
)


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("hello", Text("hello")),
        ("  spaced  ", Text("  spaced  ")),
        ("//not a command", Text("/not a command")),
        ("/who", Command("who", "")),
        ("/WHO", Command("who", "")),
        ("/quit see you all ", Command("quit", "see you all")),
        ("/help quit", Command("help", "quit")),
        ("/wo", Unknown("wo", "who")),
        ("/JOIN #dev", Command("join", "#dev")),
        ("/jion #dev", Unknown("jion", "join")),
        ("/qit", Unknown("qit", "quit")),
        ("/zzzzzz", Unknown("zzzzzz", None)),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_input(line: str, parsed: object) -> None:
    assert parse_input(line) == parsed


def test_help_lists_every_command_and_explains_one() -> None:
    text = "\n".join(help_lines())
    assert all(f"/{name}" in text for name in COMMANDS)  # every command is named
    assert sorted(c for names in SECTIONS.values() for c in names) == sorted(COMMANDS)  # once each
    assert len(help_lines()) <= 23  # with the prompt, it fits a 24-line terminal
    assert all(len(line) <= 80 for line in help_lines())
    assert help_lines("/quit") == ["/quit [message]: leave the chat"]
    assert help_lines("nope") == ["no command /nope; /help lists them"]
    rooms = help_lines("rooms")
    assert rooms[0].startswith("/join #ROOM ") and not any(line.startswith("/who") for line in rooms)


@pytest.mark.parametrize(
    ("arg", "default", "split"),
    [
        ("#dev bye all", "#lobby", ("#dev", "bye all")),
        ("bye all", "#lobby", ("#lobby", "bye all")),
        ("", "#lobby", ("#lobby", "")),
        ("bob", None, (None, "bob")),  # a whisper window has no room
        ("#dev", None, ("#dev", "")),
    ],
)
def test_room_commands_default_to_the_window_room(
    arg: str, default: str | None, split: tuple[str | None, str]
) -> None:
    assert split_room(arg, default) == split


def test_a_mistyped_nick_gets_the_closest_known_one() -> None:
    known = ["Bob", "carol", "alice2"]
    assert closest_nick("bbo", known) == "Bob"
    assert closest_nick("carl", known) == "carol"
    assert closest_nick("zed", known) is None
    assert closest_nick("bob", []) is None
