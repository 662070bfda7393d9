"""Parsing what a person types on the input line. Pure functions, no I/O."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .inbox import HISTORY_SHOWN

__all__ = ["COMMANDS", "Command", "Input", "Text", "Unknown", "help_lines", "parse_input"]

#: Command name -> (usage, one-line help). The order is the order /help lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "msg": ("/msg NICK TEXT", "whisper NICK, end-to-end encrypted (the server cannot read it); or /w"),
    "w": ("/w NICK TEXT", "same as /msg"),
    "r": ("/r TEXT", "whisper back to whoever whispered you last (the same key, not just the nick)"),
    "verify": ("/verify NICK [NUMBER]", "show your safety number with NICK; with NUMBER, mark them verified"),
    "trust": ("/trust NICK", "accept NICK's new key after a safety-number change"),
    "whois": ("/whois NICK", "NICK's key fingerprint and whether you verified it"),
    "history": (
        "/history NICK [N]",
        f"your last N (default {HISTORY_SHOWN}) whispers with NICK, both ways, kept on this device",
    ),
    "me": ("/me ACTION", "say what you do: /me waves -> * alice waves"),
    "nick": (
        "/nick NEW",
        "become NEW: a nick is an identity here, so this logs in as NEW (keys made on first use)",
    ),
    "ignore": ("/ignore NICK", "hide NICK's lines and whispers (only on your screen)"),
    "unignore": ("/unignore NICK", "stop hiding NICK"),
    "away": ("/away [MESSAGE]", "tell whisperers you are away (default: away)"),
    "back": ("/back", "you are back"),
    "who": ("/who", "list who is in the room; or /names"),
    "names": ("/names", "same as /who"),
    "help": ("/help [command]", "list commands, or explain one"),
    "quit": ("/quit [message]", "leave the chat"),
}


#: How an alias's help begins ("same as /msg").
_ALIAS = "same as "


@dataclass(frozen=True)
class Text:
    """Plain text to say in the room."""

    text: str


@dataclass(frozen=True)
class Command:
    """A known slash command and the rest of the line."""

    name: str
    arg: str


@dataclass(frozen=True)
class Unknown:
    """A slash command we do not know, with the closest known one if any."""

    name: str
    suggestion: str | None


Input = Text | Command | Unknown | None


def parse_input(line: str) -> Input:
    """Classify one input line. Blank lines are None; '//x' says the text '/x'."""
    if not line.strip():
        return None
    if line.startswith("//"):
        return Text(line[1:])
    if not line.startswith("/"):
        return Text(line)
    name, _, arg = line[1:].partition(" ")
    name = name.lower()
    if name in COMMANDS:
        return Command(name, arg.strip())
    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    return Unknown(name, close[0] if close else None)


def help_lines(topic: str = "") -> list[str]:
    """The /help text: all commands, or one."""
    topic = topic.lstrip("/").lower()
    if topic:
        if topic not in COMMANDS:
            return [f"no command /{topic}; /help lists them"]
        usage, text = COMMANDS[topic]
        return [f"{usage}: {text}"]
    # Aliases are named on their command's line: the list fits a 24-line terminal.
    listed = [(usage, text) for usage, text in COMMANDS.values() if not text.startswith(_ALIAS)]
    width = max(len(usage) for usage, _ in listed)
    return [f"{usage:<{width}}  {text}" for usage, text in listed] + [
        "anything else is said to the room; start with // to say a line beginning with /"
    ]
