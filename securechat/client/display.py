"""Turning events into lines a terminal can show safely.

Everything that came over the network is sanitised before display: C0 and C1
control characters (ESC starts terminal escape sequences: a hostile nick could
retitle the window, move the cursor or forge lines) and the Unicode bidi overrides
and isolates (Trojan Source, CVE-2021-42574) are replaced by visible escapes.
"""

from __future__ import annotations

import time
import unicodedata

from ..protocol import Bye, Error, Event, Joined, Left, Message, Names, Welcome

__all__ = ["format_event", "sanitize"]

_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def sanitize(text: str) -> str:
    """`text` with every control, bidi-control and unassigned-format character made visible.

    Newlines and tabs become visible too: callers split multi-line text first.
    """
    out: list[str] = []
    for ch in text:
        if ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs"):
            out.append(f"\\u{ord(ch):04x}" if ord(ch) > 0xFF else f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _clock(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


def format_event(event: Event, *, now: float | None = None) -> list[str]:
    """The display lines for `event` (none for events that show nothing)."""
    if isinstance(event, Message):
        head = f"{_clock(event.ts)} <{sanitize(event.nick)}> "
        lines = event.text.split("\n")
        pad = " " * len(head)
        return [head + sanitize(lines[0])] + [pad + sanitize(line) for line in lines[1:]]
    stamp = _clock(time.time() if now is None else now)
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
        return [f"{stamp} ! {sanitize(event.reason or event.code)}"]
    if isinstance(event, Bye):
        return [f"{stamp} * server: {sanitize(event.reason)}"] if event.reason else []
    return []
