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

from ..protocol import (
    BanList,
    Bye,
    Code,
    Devices,
    Entered,
    Error,
    Event,
    Invited,
    Joined,
    Left,
    Message,
    Names,
    Renamed,
    RoomChanged,
    Rooms,
    Welcome,
    WhisperStatus,
    fold_nick,
)
from .events import (
    ClientMade,
    DeviceUnreachable,
    KeyChanged,
    KnownKeyRenamed,
    NotPostQuantum,
    Reconnected,
    Reconnecting,
    RenameUnconfirmed,
    ResendPending,
    StorageFailed,
    WhisperCopied,
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
    me: str = "",
) -> list[str]:
    """The display lines for `event` (none for events that show nothing); `me` is your
    nick, for the events that read differently about yourself ("you were invited")."""
    return [theme.finish(line) for line in _lines(event, now, theme, me)]


def _lines(
    event: Drawable,
    now: float | None,
    theme: Theme,
    me: str = "",
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
    if isinstance(event, WhisperCopied):
        lock = "e2e" if theme.ascii_only else "\U0001f512"
        where = (
            "from another of your devices (kept from before a restart)"
            if event.replay
            else f"from your device {sanitize(event.device)}"
        )
        head = f"{clock(event.ts)} [{lock} you to {theme.nick(event.to)}, {where}] "
        return block(head, event.text)
    stamp = clock(time.time() if now is None else now)
    if isinstance(event, DeviceUnreachable):
        return [
            f"{stamp} ! {sanitize(event.peer)}'s device {sanitize(event.device)} got no copy: the server "
            "gave no keys for it (not set up yet, or kept out by the server)"
        ]
    if isinstance(event, Devices):
        names = ", ".join(sanitize(d.device) for d in event.devices.devices)
        if fold_nick(event.nick) == fold_nick(me):
            return [f"{stamp} * your devices (list version {event.devices.version}): {names}"]
        return []
    if isinstance(event, WhisperFailed):
        return [
            f"{stamp} ! a whisper claiming to be from {sanitize(event.sender)} {event.reason}; it was dropped"
        ]
    if isinstance(event, KeyChanged):
        who = sanitize(event.peer)
        claim = []
        if event.renamed_from:
            was = sanitize(event.renamed_from)
            claim = [
                f"{stamp} !!! the server says {was} is now {who}, but {who} holds another key than "
                f"the one you know as {was}: {who} is taken for {was} with a changed key."
            ]
        return [
            *claim,
            f"{stamp} !!! {who}'s safety number changed. Nothing is sent to {who} and their whispers",
            f"{stamp} !!! are held ({event.held} so far) until you decide: /verify {who} shows the new",
            f"{stamp} !!! number to compare with {who}; /trust {who} accepts the new key"
            + (
                f" and sends again the {event.unsent} whisper(s) their client could not decrypt."
                if event.unsent
                else "."
            ),
        ]
    if isinstance(event, KnownKeyRenamed):
        old, new = sanitize(event.old), sanitize(event.new)
        if event.trust == "verified":
            return [f"{stamp} * {new} holds the key you verified as {old}: still verified"]
        return [f"{stamp} * {new} holds the key you knew as {old} (not verified: /verify {new})"]
    if isinstance(event, NotPostQuantum):
        who = sanitize(event.peer)
        return [
            f"{stamp} ! {who}'s client set up this conversation without post-quantum protection "
            f"(an older securechat): whispers are end-to-end encrypted, but recorded ones are not "
            f"protected against a future quantum computer. Ask {who} to upgrade; /whois {who} says which"
        ]
    if isinstance(event, RenameUnconfirmed):
        old, new = sanitize(event.old), sanitize(event.new)
        return [
            f"{stamp} ! the server says {old} is now {new}, but that could not be checked "
            f"({sanitize(event.reason)}): {old}'s whisper window stays theirs, and a whisper to "
            f"{new} goes to whoever holds that nick, as before"
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
        return [f"{stamp} * {_left(event, me)}"]
    if isinstance(event, Names):
        return [f"{stamp} * in {sanitize(event.room)}: {', '.join(_marked(event))}"]
    if isinstance(event, Entered):
        return _entered(event, stamp)
    if isinstance(event, RoomChanged):
        return [f"{stamp} * {_room_changed(event)}"]
    if isinstance(event, Rooms):
        return _rooms(event, stamp)
    if isinstance(event, Invited):
        room = sanitize(event.room)
        if me and fold_nick(event.nick) == fold_nick(me):
            return [f"{stamp} * {sanitize(event.by)} invites you to {room}: /join {room}"]
        return [f"{stamp} * {sanitize(event.by)} invited {sanitize(event.nick)} to {room}"]
    if isinstance(event, BanList):
        room = sanitize(event.room)
        if not event.bans:
            return [f"{stamp} * no bans in {room}"]
        return [f"{stamp} * bans in {room}:"] + [
            f"  {sanitize(ban.mask)} ({_BAN_KINDS.get(ban.kind, ban.kind)}, by {sanitize(ban.by)})"
            for ban in event.bans
        ]
    if isinstance(event, Renamed):
        if me and fold_nick(event.new) == fold_nick(me):
            return [f"{stamp} * you are now known as {sanitize(event.new)}"]
        return [f"{stamp} * {sanitize(event.old)} is now known as {sanitize(event.new)}"]
    if isinstance(event, Welcome):
        here = ", ".join(sanitize(n) for n in event.users)
        software = f" ({sanitize(event.software)})" if event.software else ""
        if event.version >= 2:
            # An `entered` for each room follows, with its members: saying them here too
            # would print every login's member list twice.
            return [f"{stamp} * connected as {sanitize(event.nick)}{software}"]
        return [
            f"{stamp} * connected as {sanitize(event.nick)} to {sanitize(event.room)}{software}; here: {here}"
        ]
    if isinstance(event, Error):
        if event.code == Code.STORE_UNAVAILABLE and event.ref:
            return [f"{stamp} ! the server could not store a whisper just now; it will be sent again shortly"]
        # A refused room request names its room (`ref`): say which, the window may be another.
        where = f"{sanitize(event.ref)}: " if event.ref.startswith("#") else ""
        return [f"{stamp} ! {where}{sanitize(event.reason or event.code)}"]
    if isinstance(event, Bye):
        return [f"{stamp} * server: {sanitize(event.reason)}"] if event.reason else []
    return []


#: How /bans names a ban's kind to a person.
_BAN_KINDS = {"key": "identity key", "pattern": "guests"}


def _marked(names: Names) -> list[str]:
    """Members as /names shows them: "~" the owner, "@" an operator, "(away)" after."""
    away = {fold_nick(n) for n in names.away}
    ops = {fold_nick(n) for n in names.operators}
    owner = fold_nick(names.owner)
    shown = []
    for nick in names.users:
        key = fold_nick(nick)
        mark = "~" if key == owner else "@" if key in ops else ""
        shown.append(f"{mark}{sanitize(nick)}{' (away)' if key in away else ''}")
    return shown


def _left(event: Left, me: str) -> str:
    room = sanitize(event.room)
    why = f" ({sanitize(event.reason)})" if event.reason else ""
    self_ = bool(me) and fold_nick(event.nick) == fold_nick(me)
    who = "you" if self_ else sanitize(event.nick)
    if event.by:
        return f"{who} {'were' if self_ else 'was'} kicked from {room} by {sanitize(event.by)}{why}"
    return f"{who} left {room}{why}"


def _entered(event: Entered, stamp: str) -> list[str]:
    room = sanitize(event.room)
    modes = [m for m, on in (("invite-only", event.invite_only), ("registered", event.registered)) if on]
    flags = f" ({', '.join(modes)})" if modes else ""
    names = Names(
        room=event.room, users=event.users, away=event.away, owner=event.owner, operators=event.operators
    )
    lines = [f"{stamp} * you are in {room}{flags}; here: {', '.join(_marked(names))}"]
    if event.topic:
        lines.append(f"{stamp} * topic of {room}: {sanitize(event.topic)}")
    return lines


def _room_changed(event: RoomChanged) -> str:
    room, who = sanitize(event.room), sanitize(event.nick)
    if event.what == "topic":
        return (
            f"{who} set the topic of {room}: {sanitize(event.topic)}"
            if event.topic
            else f"{who} cleared the topic of {room}"
        )
    if event.what == "invite_only":
        return f"{who} made {room} {'invite-only' if event.invite_only else 'open to everyone'}"
    if event.what == "registered":
        return f"{who} registered {room}; its owner is {sanitize(event.owner or event.nick)}"
    if event.what == "owner":
        return f"{who} handed {room} over: its owner is now {sanitize(event.owner) or 'someone not here'}"
    ops = ", ".join(sanitize(n) for n in event.operators) or "none present"
    return f"{who} changed the operators of {room}: {ops}"


def _rooms(event: Rooms, stamp: str) -> list[str]:
    matching = f" matching {sanitize(event.pattern)}" if event.pattern else ""
    if not event.rooms:
        return [f"{stamp} * no rooms{matching}"]
    width = max(len(entry.room) for entry in event.rooms)
    lines = [f"{stamp} * {len(event.rooms)} room{'s' if len(event.rooms) != 1 else ''}{matching}:"]
    for entry in event.rooms:
        topic = f"  {sanitize(entry.topic)}" if entry.topic else ""
        lines.append(f"  {sanitize(entry.room):<{width}} {entry.users:>4}{topic}")
    if event.truncated:
        lines.append("  ... and more: give /list a pattern to narrow it")
    return lines
