"""Turning events into lines a terminal can show safely.

Everything that came over the network is sanitised before display: C0 and C1
control characters (ESC starts terminal escape sequences: a hostile nick could
retitle the window, move the cursor or forge lines), every Unicode format character
(the bidi overrides and isolates of Trojan Source, CVE-2021-42574; zero-width spaces
and joiners, the word joiner and the byte-order mark, which hide text or make two
different strings look alike), lone surrogates, and the line and paragraph
separators U+2028/U+2029 (a line break to some terminals and viewers) are replaced by
visible escapes.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from dataclasses import dataclass

from ..protocol import Bye, Code, Error, Event, Joined, Left, Message, Names, Welcome, WhisperStatus
from .events import (
    ClientMade,
    KeyChanged,
    Reconnected,
    Reconnecting,
    ResendPending,
    StorageFailed,
    WhisperFailed,
    WhisperReceived,
)

#: Everything `format_event` can draw.
Drawable = Event | ClientMade

__all__ = [
    "PLAIN",
    "UNSAFE_CATEGORIES",
    "Drawable",
    "Theme",
    "block",
    "clock",
    "format_event",
    "is_unsafe",
    "sanitize",
]

#: Unicode categories never shown as they are: controls (Cc), format characters (Cf:
#: every bidi control, zero-width characters, the BOM, tags), surrogates (Cs) and the
#: line and paragraph separators (Zl, Zp).
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def is_unsafe(ch: str) -> bool:
    """True if the character `ch` must not reach a terminal or a reader as it is."""
    return unicodedata.category(ch) in UNSAFE_CATEGORIES


def sanitize(text: str) -> str:
    """`text` with every control, format, surrogate and line/paragraph separator character
    made visible (`\\x1b`, `\\u200b`, `\\U000e0041`).

    Newlines and tabs become visible too: callers split multi-line text first.
    """
    if text.isascii() and text.isprintable():  # the common case, without a loop in Python
        return text
    out: list[str] = []
    for ch in text:
        if is_unsafe(ch):
            code = ord(ch)
            out.append(
                f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
            )
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class Theme:
    """How lines are decorated. `color` False: plain text only (NO_COLOR, --no-color);
    `ascii_only`: for terminals that cannot show UTF-8, non-ASCII is escaped too."""

    color: bool = False
    ascii_only: bool = False

    def nick(self, nick: str) -> str:
        """The nick in its own stable colour (the same in every session and terminal)."""
        shown = sanitize(nick)
        if not self.color:
            return shown
        index = hashlib.sha256(nick.lower().encode()).digest()[0] % len(_NICK_COLOURS)
        return f"\x1b[38;5;{_NICK_COLOURS[index]}m{shown}\x1b[0m"

    def emphasis(self, line: str, kind: str) -> str:
        """A whole line marked as a "mention", "whisper" or "alarm"."""
        if not self.color:
            return line
        return f"\x1b[{_EMPHASIS[kind]}m{line}\x1b[0m"

    def finish(self, line: str) -> str:
        return line.encode("ascii", "backslashreplace").decode() if self.ascii_only else line


#: 256-colour palette entries that read well on dark and on light backgrounds.
_NICK_COLOURS = (33, 37, 40, 70, 130, 133, 136, 166, 169, 172, 31, 61, 97, 124, 142, 176)
_EMPHASIS = {"mention": "1;33", "whisper": "1;35", "alarm": "1;37;41"}
PLAIN = Theme()


def clock(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def block(head: str, text: str) -> list[str]:
    """`text` after `head`, continuation lines indented under it, every line sanitised."""
    lines = text.split("\n")
    pad = " " * len(_ANSI.sub("", head))  # colour codes take no room on screen
    return [head + sanitize(lines[0])] + [pad + sanitize(line) for line in lines[1:]]


def format_event(
    event: Drawable,
    *,
    now: float | None = None,
    theme: Theme = PLAIN,
) -> list[str]:
    """The display lines for `event` (none for events that show nothing)."""
    return [theme.finish(line) for line in _lines(event, now, theme)]


def _lines(
    event: Drawable,
    now: float | None,
    theme: Theme,
) -> list[str]:
    if isinstance(event, Message):
        earlier = "(earlier) " if event.history else ""
        if event.action:
            return block(f"{clock(event.ts)} {earlier}* {theme.nick(event.nick)} ", event.text)
        return block(f"{clock(event.ts)} {earlier}<{theme.nick(event.nick)}> ", event.text)
    if isinstance(event, WhisperReceived):
        lock = "e2e" if theme.ascii_only else "\U0001f512"
        # A replay was kept before the client last stopped; it may have been shown then.
        again = " (kept from before a restart)" if event.replay else ""
        head = f"{clock(event.ts)} [{lock} whisper from {theme.nick(event.sender)}, {event.trust}{again}] "
        return block(head, event.text)
    stamp = clock(time.time() if now is None else now)
    if isinstance(event, WhisperFailed):
        return [
            f"{stamp} ! a whisper claiming to be from {sanitize(event.sender)} {event.reason}; it was dropped"
        ]
    if isinstance(event, KeyChanged):
        who = sanitize(event.peer)
        return [
            f"{stamp} !!! {who}'s safety number changed. Nothing is sent to {who} and their whispers",
            f"{stamp} !!! are held ({event.held} so far) until you decide: /verify {who} shows the new",
            f"{stamp} !!! number to compare with {who}; /trust {who} accepts the new key"
            + (
                f" and sends again the {event.unsent} whisper(s) their client could not decrypt."
                if event.unsent
                else "."
            ),
        ]
    if isinstance(event, ResendPending):
        return [
            f"{stamp} ! {event.count} whisper(s) to {sanitize(event.peer)} are kept, not yet sent again: "
            f"{sanitize(event.reason)}"
        ]
    if isinstance(event, StorageFailed):
        return [
            f"{stamp} ! cannot save whispers: {sanitize(event.reason)}. They wait on the server "
            "and arrive once there is room."
        ]
    if isinstance(event, Reconnecting):
        why = sanitize(event.reason)
        return [f"{stamp} * {why}; reconnecting in {event.delay:.1f} s (attempt {event.attempt})..."]
    if isinstance(event, Reconnected):
        return [f"{stamp} * reconnected; here: {', '.join(sanitize(n) for n in event.users)}"]
    if isinstance(event, WhisperStatus):
        if event.status == "failed":
            return [
                f"{stamp} ! whisper to {sanitize(event.to)} could not be decrypted by their client "
                f"({event.reason}); it is kept, and sent again in a new session once their keys check out"
            ]
        away = f" ({sanitize(event.to)} is away: {sanitize(event.away)})" if event.away else ""
        return [f"{stamp} * whisper to {sanitize(event.to)}: {event.status}{away}"]
    if isinstance(event, Joined):
        return [f"{stamp} * {sanitize(event.nick)} joined {sanitize(event.room)}"]
    if isinstance(event, Left):
        why = f" ({sanitize(event.reason)})" if event.reason else ""
        return [f"{stamp} * {sanitize(event.nick)} left {sanitize(event.room)}{why}"]
    if isinstance(event, Names):
        return [f"{stamp} * in {sanitize(event.room)}: {', '.join(sanitize(n) for n in event.users)}"]
    if isinstance(event, Welcome):
        here = ", ".join(sanitize(n) for n in event.users)
        return [f"{stamp} * connected as {sanitize(event.nick)} to {sanitize(event.room)}; here: {here}"]
    if isinstance(event, Error):
        if event.code == Code.STORE_UNAVAILABLE and event.ref:
            return [f"{stamp} ! the server could not store a whisper just now; it will be sent again shortly"]
        return [f"{stamp} ! {sanitize(event.reason or event.code)}"]
    if isinstance(event, Bye):
        return [f"{stamp} * server: {sanitize(event.reason)}"] if event.reason else []
    return []
