from __future__ import annotations

import pytest

from securechat.client.commands import COMMANDS, Command, Text, Unknown, help_lines, parse_input


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
    # Every command is named: aliases on their command's line ("; or /w").
    assert all(f"/{name}" in text for name in COMMANDS)
    assert len(help_lines()) <= 23  # with the prompt, it fits a 24-line terminal
    assert help_lines("/quit") == ["/quit [message]: leave the chat"]
    assert help_lines("nope") == ["no command /nope; /help lists them"]
