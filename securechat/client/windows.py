"""The terminal client's windows, as irssi and WeeChat users know them: one per room and one
per whisper conversation, each with its own scrollback, activity level and lastlog search.

Pure: no I/O, no locks, no clock. The terminal front end (client/tui.py) owns one `Windows`
and guards it with its own lock, since lines arrive on the event pump's thread while keys
are handled on prompt_toolkit's.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from enum import Enum, IntEnum

from prompt_toolkit.utils import get_cwidth

__all__ = ["FOCUS_WAIT", "SCROLLBACK_LINES", "Activity", "Kind", "PendingFocus", "Window", "Windows"]

#: Lines each window keeps for PageUp and /lastlog. irssi keeps 500 by default and WeeChat
#: 4096; 2,000 lines of at most a few hundred characters is well under a MiB per window.
SCROLLBACK_LINES = 2000

#: Seconds a /join's room may take to be entered and still become the current window. A
#: server answers in milliseconds; an `entered` later than this (the client's own rejoin
#: after a reconnect, say) opens the room's window without moving the user out of theirs.
FOCUS_WAIT = 10.0


class Kind(Enum):
    """What a window is for: a line typed in it goes to its room, or is whispered to its nick."""

    ROOM = "room"
    QUERY = "query"


class Activity(IntEnum):
    """What happened in a window since it was last looked at; only ever raised until then."""

    NONE = 0
    ACTIVITY = 1  # ordinary lines: someone spoke, joined, left
    HIGHLIGHT = 2  # a line naming you, or a whisper: worth switching for


def fold(name: str) -> str:
    """Window names are matched case-insensitively, as room names and nicks are."""
    return name.lower()


@dataclass
class Window:
    kind: Kind
    #: The room ("#dev") or the peer's nick, as first spelt.
    name: str
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=SCROLLBACK_LINES))
    activity: Activity = Activity.NONE
    #: Lines scrolled back from the newest (PageUp); 0 follows new lines as they come.
    scroll: int = 0


class Windows:
    """The numbered windows (1-based, as shown) and which one is current.

    There is always at least one window: the first room the welcome named. Notices that
    belong to no window (errors, connection state) go to the current one.
    """

    def __init__(self, first_room: str, *, scrollback: int = SCROLLBACK_LINES) -> None:
        self._scrollback = scrollback
        self._windows: list[Window] = [self._new(Kind.ROOM, first_room)]
        self._current = 0
        #: How often the user has changed the current window (`select`, `next`, `previous`,
        #: `close`; not `focus`): a /join's window becomes current only if this has not
        #: moved since the /join was typed (`PendingFocus`).
        self.switches = 0

    def _new(self, kind: Kind, name: str) -> Window:
        return Window(kind, name, deque(maxlen=self._scrollback))

    # -- finding and opening ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._windows)

    @property
    def all(self) -> list[Window]:
        """Every window, in number order (a copy)."""
        return list(self._windows)

    @property
    def current(self) -> Window:
        return self._windows[self._current]

    @property
    def current_number(self) -> int:
        return self._current + 1

    def find(self, kind: Kind, name: str) -> Window | None:
        key = fold(name)
        return next((w for w in self._windows if w.kind is kind and fold(w.name) == key), None)

    def number(self, window: Window) -> int:
        """The 1-based number shown for `window`."""
        return self._windows.index(window) + 1

    def open(self, kind: Kind, name: str, *, focus: bool = False) -> Window:
        """The window for `name`, made (as the last one) if it did not exist; current if `focus`."""
        window = self.find(kind, name)
        if window is None:
            window = self._new(kind, name)
            self._windows.append(window)
        if focus:
            self.select(self.number(window))
        return window

    def rename(self, kind: Kind, old: str, new: str) -> None:
        """The window for `old` becomes the window for `new`, unless `new` has one. Never
        for a bare `renamed` of a peer: a line typed in a query window is whispered to its
        name, so that window may follow a peer only once their new nick's key is known to
        be the one the old nick had (client/tui.py leaves it on the old nick until then)."""
        window = self.find(kind, old)
        if window is not None and self.find(kind, new) is None:
            window.name = new

    # -- lines -------------------------------------------------------------------------------

    def add(self, window: Window | None, lines: list[str], level: Activity = Activity.ACTIVITY) -> None:
        """Append `lines` to `window` (None: the current one). A window not being looked at
        takes `level` as its activity if that is higher; one scrolled back stays where it was."""
        target = self.current if window is None else window
        target.lines.extend(lines)
        if target is not self.current:
            target.activity = max(target.activity, level)
        elif target.scroll:
            target.scroll = min(target.scroll + len(lines), max(len(target.lines) - 1, 0))

    def clear(self, window: Window | None = None) -> None:
        """/clear: the scrollback of `window` (None: the current one) is emptied."""
        target = self.current if window is None else window
        target.lines.clear()
        target.scroll = 0

    def lastlog(self, text: str, window: Window | None = None) -> list[str]:
        """/lastlog TEXT: the lines of `window` (None: the current one) containing `text`,
        case-insensitively."""
        needle = text.casefold()
        target = self.current if window is None else window
        return [line for line in target.lines if needle in line.casefold()]

    # -- switching ---------------------------------------------------------------------------

    def select(self, number: int) -> bool:
        """The user makes window `number` (1-based) current, its activity seen; False if
        there is none."""
        if not 1 <= number <= len(self._windows):
            return False
        self.switches += 1
        self._current = number - 1
        self.current.activity = Activity.NONE
        return True

    def focus(self, window: Window) -> None:
        """Make `window` current for the program (a /join answered), not counted in `switches`."""
        self._current = self._windows.index(window)
        self.current.activity = Activity.NONE

    def next(self) -> None:
        """Alt+Right: the next window, wrapping around."""
        self.select((self._current + 1) % len(self._windows) + 1)

    def previous(self) -> None:
        """Alt+Left: the previous window, wrapping around."""
        self.select((self._current - 1) % len(self._windows) + 1)

    def close(self, window: Window) -> bool:
        """Remove `window`; the last one left is never closed (False). The one before it
        becomes current if it was."""
        if len(self._windows) == 1 or window not in self._windows:
            return False
        index = self._windows.index(window)
        was_current = self.current
        self.switches += 1
        del self._windows[index]
        if was_current is window:
            self._current = max(index - 1, 0)
            self.current.activity = Activity.NONE
        else:
            self._current = self._windows.index(was_current)
        return True

    # -- scrolling ---------------------------------------------------------------------------

    def page_up(self, rows: int) -> None:
        """PageUp: back by a screen (less one line, to keep the reader's place)."""
        window = self.current
        window.scroll = min(window.scroll + max(rows - 1, 1), max(len(window.lines) - 1, 0))

    def page_down(self, rows: int) -> None:
        """PageDown: forward by a screen; at the bottom it follows new lines again."""
        window = self.current
        window.scroll = max(window.scroll - max(rows - 1, 1), 0)

    def view(self, rows: int, width: int) -> list[str]:
        """The screen rows of the current window: the lines up to its scroll position,
        wrapped to `width`, the last `rows` of them (fewer when there are fewer)."""
        window = self.current
        end = len(window.lines) - window.scroll
        shown: list[str] = []
        # Walk back from the newest line shown only as far as fills the screen.
        index = end - 1
        while index >= 0 and len(shown) < rows:
            wrapped = _wrap(window.lines[index], width)
            shown[:0] = wrapped
            index -= 1
        return shown[-rows:] if rows > 0 else []

    # -- the status bar ----------------------------------------------------------------------

    def activity_text(self) -> str:
        """The other windows with something new, by number: "act: 2,3!" where "!" marks a
        mention or a whisper (also highlighted where the terminal has colour); "" if none."""
        marks = [
            f"{number}{'!' if w.activity is Activity.HIGHLIGHT else ''}"
            for number, w in enumerate(self._windows, start=1)
            if w.activity is not Activity.NONE
        ]
        return f"act: {','.join(marks)}" if marks else ""

    def title(self) -> str:
        """The current window as the status bar names it: "[2:#dev]", "[3:bob (whisper)]",
        with "(scrolled)" while PageUp has moved it off the newest line."""
        window = self.current
        what = window.name if window.kind is Kind.ROOM else f"{window.name} (whisper)"
        scrolled = " (scrolled)" if window.scroll else ""
        return f"[{self.current_number}:{what}]{scrolled}"


class PendingFocus:
    """Rooms the user asked to join whose window is to become current when the server says
    we are in (`entered`), as irssi does, but only if nothing changed meanwhile: within
    `FOCUS_WAIT` seconds of asking, and only if the user has not switched windows since
    (`Windows.switches`). A refusal naming the room, or a join that could not be sent,
    drops the request. An `entered` takes its room's request whether it switches or not,
    so none is ever left behind to move the user later.

    Pure: the caller passes the monotonic time and the switch count, and keeps the lock.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, tuple[float, int]] = {}  # folded room -> (asked at, switches then)

    def ask(self, room: str, now: float, switches: int) -> None:
        """The user asked to join `room` at `now`, after `switches` window switches."""
        self._rooms = {key: asked for key, asked in self._rooms.items() if now - asked[0] <= FOCUS_WAIT}
        self._rooms[fold(room)] = (now, switches)

    def drop(self, room: str) -> None:
        """The join of `room` was refused, or never sent."""
        self._rooms.pop(fold(room), None)

    def due(self, room: str, now: float, switches: int) -> bool:
        """We entered `room`: whether its window is to become current (its request is gone either way)."""
        asked = self._rooms.pop(fold(room), None)
        return asked is not None and now - asked[0] <= FOCUS_WAIT and asked[1] == switches

    def __len__(self) -> int:
        return len(self._rooms)


#: Colour codes the display adds (client/display.py): they take no room on screen.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _wrap(line: str, width: int) -> list[str]:
    """`line` cut into screen rows of at most `width` columns (wide characters count two).
    A coloured line too long for one row loses its colour rather than have a code cut."""
    plain = _ANSI.sub("", line)
    if width <= 0 or get_cwidth(plain) <= width:
        return [line]
    rows: list[str] = []
    row: list[str] = []
    used = 0
    for ch in plain:
        w = get_cwidth(ch)
        if used + w > width and row:
            rows.append("".join(row))
            row, used = [], 0
        row.append(ch)
        used += w
    rows.append("".join(row))
    return rows
