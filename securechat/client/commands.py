"""Parsing what a person types on the input line. Pure functions, no I/O."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from .inbox import HISTORY_SHOWN

__all__ = [
    "COMMANDS",
    "ROOM_COMMANDS",
    "SECTIONS",
    "Command",
    "Input",
    "Text",
    "Unknown",
    "closest_nick",
    "help_lines",
    "parse_input",
    "split_room",
]

#: Command name -> (usage, one-line help). `/help COMMAND` shows one; `/help SECTION` a section.
COMMANDS: dict[str, tuple[str, str]] = {
    "msg": ("/msg NICK TEXT", "whisper NICK, end-to-end encrypted (the server cannot read it); or /w"),
    "w": ("/w NICK TEXT", "same as /msg"),
    "r": ("/r TEXT", "whisper back to whoever whispered you last (the same key, not just the nick)"),
    "query": ("/query NICK", "open a window to whisper NICK: every line typed there is a whisper"),
    "verify": ("/verify NICK [NUMBER]", "show your safety number with NICK; with NUMBER, mark them verified"),
    "trust": ("/trust NICK", "accept NICK's new key after a safety-number change"),
    "whois": ("/whois NICK", "NICK's key fingerprint, whether you verified it, whether post-quantum"),
    "history": (
        "/history NICK [N]",
        f"your last N (default {HISTORY_SHOWN}) whispers with NICK, both ways, kept on this device",
    ),
    "join": ("/join #ROOM", "enter ROOM (made if nobody is in it) in a window of its own"),
    "part": ("/part [#ROOM] [REASON]", "leave the room (this window's by default)"),
    "topic": ("/topic [#ROOM] [TEXT]", "show the topic, or set it (/topic -delete clears it)"),
    "list": ("/list [PATTERN]", "rooms with their member counts and topics; PATTERN like #dev*"),
    "names": ("/names [#ROOM]", "who is in the room, operators marked @, away marked (away); or /who"),
    "who": ("/who [#ROOM]", "same as /names"),
    "invite": ("/invite NICK [#ROOM]", "invite NICK to the room (needed for an invite-only room)"),
    "me": ("/me ACTION", "say what you do: /me waves -> * alice waves"),
    "kick": ("/kick [#ROOM] NICK [REASON]", "remove NICK from a registered room (operators)"),
    "ban": ("/ban [#ROOM] MASK", "ban a nick (by its key if registered) or a guest pattern like bob*"),
    "unban": ("/unban [#ROOM] MASK", "lift a ban, as /bans shows it"),
    "bans": ("/bans [#ROOM]", "the room's bans (operators)"),
    "mode": ("/mode [#ROOM] +i|-i", "make the room invite-only (+i) or open (-i) (operators)"),
    "register": (
        "/register [#ROOM]",
        "register a room you made, so it and its settings stay (identity users)",
    ),
    "op": ("/op [#ROOM] NICK", "make NICK (a registered nick) an operator (the owner)"),
    "deop": ("/deop [#ROOM] NICK", "NICK is no longer an operator (the owner)"),
    "transfer": ("/transfer [#ROOM] NICK", "make NICK the owner; you stay an operator (the owner)"),
    "window": ("/window N", "go to window N; or Alt+1..9, Alt+Left/Right"),
    "close": ("/close", "close this window (leaving its room)"),
    "clear": ("/clear", "empty this window's scrollback"),
    "lastlog": ("/lastlog TEXT", "this window's lines containing TEXT"),
    "nick": ("/nick NEW", "rename yourself to NEW (a registered nick's binding moves to NEW)"),
    "identity": ("/identity NICK", "log in as another identity NICK (keys made on first use)"),
    "away": ("/away [MESSAGE]", "tell whisperers you are away (default: away)"),
    "back": ("/back", "you are back"),
    "ignore": ("/ignore NICK", "hide NICK's lines, whispers and invitations (only on your screen)"),
    "unignore": ("/unignore NICK", "stop hiding NICK"),
    "devices": ("/devices", "your devices: this one and those linked to your identity"),
    "link": (
        "/link [CODE]",
        "link a new device: /link here, `securechat link` there, then /link CODE with its code",
    ),
    "unlink": ("/unlink DEVICE", "remove a linked device: it gets nothing sent from now on"),
    "version": ("/version", "this client's version and the server's"),
    "help": ("/help [COMMAND|SECTION]", "list commands, or explain one"),
    "quit": ("/quit [message]", "leave the chat"),
}

#: /help's sections, in the order it lists them; every command is in exactly one.
SECTIONS: dict[str, tuple[str, ...]] = {
    "whispers": ("msg", "w", "r", "query", "verify", "trust", "whois", "history"),
    "rooms": ("join", "part", "topic", "list", "names", "who", "invite", "me"),
    "operators": ("kick", "ban", "unban", "bans", "mode", "register", "op", "deop", "transfer"),
    "windows": ("window", "close", "clear", "lastlog"),
    "devices": ("devices", "link", "unlink"),
    "you": ("nick", "identity", "away", "back", "ignore", "unignore", "version", "help", "quit"),
}

#: Commands whose first argument may name a room ("#dev"); otherwise the window's room.
ROOM_COMMANDS = frozenset(
    {
        "part",
        "topic",
        "names",
        "who",
        "kick",
        "ban",
        "unban",
        "bans",
        "mode",
        "register",
        "op",
        "deop",
        "transfer",
    }
)

#: How an alias's help begins ("same as /msg").
_ALIAS = "same as "


@dataclass(frozen=True)
class Text:
    """Plain text for the current window: said in its room, or whispered to its nick."""

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
    """The /help text: the sections and their commands, one section's usages, or one command."""
    topic = topic.lstrip("/").lower()
    if topic in SECTIONS:
        listed = [COMMANDS[name] for name in SECTIONS[topic] if not COMMANDS[name][1].startswith(_ALIAS)]
        width = max(len(usage) for usage, _ in listed)
        return [f"{usage:<{width}}  {text}" for usage, text in listed]
    if topic:
        if topic not in COMMANDS:
            return [f"no command /{topic}; /help lists them"]
        usage, text = COMMANDS[topic]
        return [f"{usage}: {text}"]
    # A line per section: the list fits a 24-line terminal however many commands there are.
    width = max(len(name) for name in SECTIONS)
    return [
        f"{name + ':':<{width + 1}} " + " ".join(f"/{c}" for c in names) for name, names in SECTIONS.items()
    ] + [
        "keys: Alt+1..9, Alt+Left/Right: windows; PageUp/PageDown: scroll; Tab: complete",
        "/help SECTION: a section's usages (/help rooms); /help COMMAND explains one",
        "a line typed in a room window is said there, in a whisper window whispered;",
        "start with // to say a line beginning with /",
    ]


def split_room(arg: str, default: str | None) -> tuple[str | None, str]:
    """A room-taking command's argument: its room (a first word starting with '#', else
    `default`, the current window's room; None when there is neither) and the rest."""
    first, _, rest = arg.partition(" ")
    if first.startswith("#"):
        return first, rest.strip()
    return default, arg.strip()


def closest_nick(nick: str, known: Iterable[str]) -> str | None:
    """The known nick `nick` was most likely a typo of ("bbo" -> "bob"), or None."""
    spelled = {name.lower(): name for name in known}
    close = difflib.get_close_matches(nick.lower(), list(spelled), n=1, cutoff=0.6)
    return spelled[close[0]] if close else None
