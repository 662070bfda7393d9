"""The terminal front end: the only place in the client that prints.

A full-screen prompt_toolkit application laid out as irssi and WeeChat users know it: the
current window's lines, a status bar, the input line. One window per room and one per
whisper conversation (client/windows.py), switched with Alt+1..9, Alt+Left/Right or
/window N; PageUp/PageDown scroll back.

Threads:
- prompt_toolkit's event loop (the thread that called `run_tui`) handles keys and draws;
- one pump thread per connected client turns its events into window lines;
- one input thread carries out typed lines, in the order typed (a whisper may wait seconds
  for its recipient's keys; the keyboard must not wait with it).
`_Tui._lock` guards the windows, the chat state, the current client and `_pending`.

Typed input is checked before it goes anywhere: every key handler runs guarded (a handler
that raises, as prompt_toolkit's mouse handler does on a malformed mouse report typed or
pasted into the line, is contained instead of reaching the event loop, whose "Press ENTER
to continue" ate the next Enter and joined two lines), mouse reports are ignored (mouse
support is never turned on, so they only come pasted), and a line still holding control
characters is refused, not sent.

A whisper must never reach a room in clear, whatever the input path:
- A line's destination is fixed at its first keystroke: the window current then. Only the
  user's own switch (Alt+1..9, Alt+Left/Right) carries the line being typed along; nothing
  the server sends moves it. A /join's window becomes current when the room is entered only
  if the input line is empty and the user has not switched windows since (`PendingFocus`),
  and that switch is made on the loop thread, between keys.
- A peer's rename never moves their whisper window: it stays on the old nick, with a note
  saying how to whisper the new one (a /query of its own, whose key is checked like any
  first contact's).
- A paste (or keys typed ahead, arriving in one read) is all or nothing: the lines after a
  command that was unknown, refused or failed are not sent, and the user is told; the
  lines after a /query or /window go to the window it opened.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NoReturn

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.data_structures import Point
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import ANSI, StyleAndTextTuples
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input as PtInput
from prompt_toolkit.key_binding import KeyBindings, KeyBindingsBase, KeyPressEvent, merge_key_bindings
from prompt_toolkit.key_binding.defaults import load_key_bindings
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import Float, FloatContainer, HSplit, Layout
from prompt_toolkit.layout import Window as Pane
from prompt_toolkit.layout.controls import BufferControl, FormattedTextControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.layout.menus import CompletionsMenu
from prompt_toolkit.layout.processors import BeforeInput
from prompt_toolkit.output import Output as PtOutput
from prompt_toolkit.styles import Style

from .. import __version__
from ..e2e.errors import BundleError, IdentityChanged, KeystoreError, NotTrusted
from ..protocol import (
    DEFAULT_ROOM,
    MAX_TEXT_BYTES,
    BanList,
    Bye,
    Entered,
    Error,
    Invited,
    Joined,
    Left,
    Link,
    Message,
    Names,
    Renamed,
    RoomChanged,
    WhisperStatus,
    fold_nick,
    is_valid_nick,
)
from .commands import (
    COMMANDS,
    ROOM_COMMANDS,
    Command,
    Text,
    Unknown,
    closest_nick,
    help_lines,
    parse_input,
    split_room,
)
from .completion import ChatCompleter
from .display import PLAIN, Theme, block, clock, format_event, is_unsafe, sanitize
from .events import (
    KeyChanged,
    KnownKeyRenamed,
    NotPostQuantum,
    RenameUnconfirmed,
    ResendPending,
    WhisperCopied,
    WhisperFailed,
    WhisperReceived,
)
from .inbox import HISTORY_SHOWN, Direction
from .linking import LinkDesk
from .session import Client, Disconnected
from .state import ChatState
from .windows import Activity, Kind, PendingFocus, Window, Windows

__all__ = ["run_tui"]

log = logging.getLogger(__name__)

#: Most rows the input line grows to for a multi-line paste before it scrolls.
_INPUT_ROWS = 6


def run_tui(
    client: Client,
    *,
    pt_input: PtInput | None = None,
    pt_output: PtOutput | None = None,
    write: Callable[[str], None] | None = None,
    theme: Theme = PLAIN,
    bell: bool = True,
    switch_to: Callable[[str], Client] | None = None,
) -> int:
    """Chat interactively on a connected `client` until /quit, EOF or disconnection.

    `write(line)` is told every line shown, whichever window it went to (tests read it;
    the screen is drawn from the windows). `switch_to(nick)` returns a client connected
    as another nick, for /identity. Returns a process exit status: 0 after a clean quit,
    1 if the connection was lost.
    """
    return _Tui(client, pt_input, pt_output, write, theme, bell, switch_to).run()


@dataclass(frozen=True)
class _Typed:
    """A line as Enter accepted it, with the window it was typed in (its destination) and
    how many window switches the user had made then (`Windows.switches`)."""

    text: str
    kind: Kind
    name: str
    switches: int = 0


@dataclass(frozen=True)
class _Done:
    """A typed line carried out: `quit` for /quit; `to`, the window a /query or /window
    made current (where the rest of a paste goes)."""

    quit: bool = False
    to: Window | None = None


class _Refused(Exception):
    """A typed line was refused or failed, and the user was told why: in a paste, nothing
    after it is sent."""


class _Tui:
    def __init__(
        self,
        client: Client,
        pt_input: PtInput | None,
        pt_output: PtOutput | None,
        write: Callable[[str], None] | None,
        theme: Theme,
        bell: bool,
        switch_to: Callable[[str], Client] | None,
    ) -> None:
        self._lock = threading.Lock()
        welcome = client.welcome
        self.client = client  # guarded by _lock; replaced by the input thread on /identity
        self.state = ChatState(nick=client.nick, server=f"{client.host}:{client.port}")  # _lock
        self.windows = Windows(welcome.room if welcome is not None else DEFAULT_ROOM)  # _lock
        #: Rooms the user asked to join: their window may become current on entering.
        self._pending = PendingFocus()  # guarded by _lock
        #: The window the line being typed goes to, fixed at its first keystroke; None
        #: while the line is empty. The window itself, not its name: a contact's checked
        #: rename (KnownKeyRenamed) renames it, and the line must follow, never go to the
        #: old nick, which anyone may take now. Owned by the loop thread; the window's
        #: fields are guarded by _lock.
        self._line_to: Window | None = None
        self._tap = write
        self._theme = theme
        self._bell = bell
        self._switch_to = switch_to
        self._typed: queue.Queue[_Typed | None] = queue.Queue()  # loop thread -> input thread
        self._lost = threading.Event()
        self._outcome: list[str] = []  # why the connection ended; the current pump writes it
        self._quitting = threading.Event()  # set by the input thread on /quit
        self._pumps: dict[Client, threading.Thread] = {}  # the input thread's (and run's)
        # The client whose /link, /unlink and /devices it serves, and its desk; guarded
        # by _lock (the pump thread feeds it `link` frames, the input thread commands).
        self._desk: tuple[Client, LinkDesk] | None = None
        self.buffer = Buffer(
            completer=ChatCompleter(self._known_nicks, self._joined_rooms),
            complete_while_typing=False,  # Tab completes; typing is never interrupted
            history=InMemoryHistory(),
            multiline=True,  # a paste is edited and sent as one message
        )
        self.buffer.on_text_changed += self._text_changed
        self._output = Pane(
            FormattedTextControl(self._screen, get_cursor_position=self._last_row), wrap_lines=False
        )
        self._input = Pane(
            BufferControl(self.buffer, input_processors=[BeforeInput(self._prompt)]),
            height=Dimension(min=1, max=_INPUT_ROWS),
            dont_extend_height=True,
            wrap_lines=True,
        )
        body = HSplit(
            [
                self._output,
                Pane(FormattedTextControl(self._status), height=1, style="class:status"),
                self._input,
            ]
        )
        self.app: Application[None] = Application(
            layout=Layout(
                FloatContainer(
                    body,
                    floats=[Float(xcursor=True, ycursor=True, content=CompletionsMenu(max_height=8))],
                ),
                focused_element=self._input,
            ),
            key_bindings=self._key_bindings(),
            style=Style.from_dict({"status": "reverse", "status.highlight": "reverse bold"}),
            full_screen=True,
            mouse_support=False,
            input=pt_input,
            output=pt_output,
        )
        if welcome is not None:
            self.state.apply(welcome)
            self._add(None, format_event(welcome, theme=theme))

    # -- running -----------------------------------------------------------------------------

    def run(self) -> int:
        self._start_pump(self.client)
        worker = threading.Thread(target=self._work, name="securechat-tui-input", daemon=True)
        worker.start()
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            # The connection may end before the application runs, when `_exit` cannot
            # reach it yet: `_exit_if_over` looks once it runs (it is set running first).
            self.app.run(pre_run=self._exit_if_over)
        if not self._quitting.is_set() and not self._lost.is_set():
            self._typed.put(_Typed("/quit", Kind.ROOM, DEFAULT_ROOM))  # the input ended
        self._typed.put(None)
        worker.join(timeout=15.0)
        for pump in list(self._pumps.values()):
            pump.join(timeout=10.0)
        with self._lock:
            client = self.client
        client.close()
        return 0 if self._quitting.is_set() or not self._outcome else 1

    def _exit_if_over(self) -> None:
        if self._lost.is_set() or self._quitting.is_set():
            self.app.exit()

    def _exit(self) -> None:
        """End the application from any thread (it exits in its own loop)."""
        app = self.app
        if app.is_running and app.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may just have closed
                app.loop.call_soon_threadsafe(lambda: app.exit() if app.is_running else None)

    def _start_pump(self, source: Client) -> None:
        pump = threading.Thread(target=self._pump, args=(source,), name="securechat-tui-pump", daemon=True)
        self._pumps[source] = pump
        pump.start()

    def _pump(self, source: Client) -> None:
        """A pump thread: `source`'s events into windows until it ends."""
        while True:
            item = source.next_event()
            with self._lock:
                current = source is self.client
            if not current and isinstance(item, (Bye, Disconnected)):
                if isinstance(item, Disconnected):
                    return  # the nick we just left: its end is not ours
                continue
            if isinstance(item, Link):
                desk = self._link_desk(source) if current else None
                lines = desk.on_link(item) if desk is not None else []
                if lines:
                    self._add(None, [sanitize(line) for line in lines], Activity.HIGHLIGHT)
                continue
            if isinstance(item, Disconnected):
                self._outcome.append(item.reason)
                self._add(None, [f"* disconnected: {sanitize(item.reason)}"])
                self._lost.set()
                self._exit()
                return
            self._show(item)

    # -- drawing -----------------------------------------------------------------------------

    def _add(self, window: Window | None, lines: list[str], level: Activity = Activity.NONE) -> None:
        """Lines into `window` (None: the current one), from any thread."""
        with self._lock:
            self.windows.add(window, lines, level)
        if self._tap is not None:
            for line in lines:
                self._tap(line)
        self._redraw()

    def _redraw(self) -> None:
        """Have the screen drawn again, in the application's own loop (any thread)."""
        # prompt_toolkit's invalidate reads the application's loop twice, and an application
        # exiting on its own thread (after /quit) may drop it between the two reads.
        with contextlib.suppress(RuntimeError):
            self.app.invalidate()

    def _show(self, item: object) -> None:
        """One event from the current client: the pump thread."""
        theme = self._theme
        with self._lock:
            self.state.apply(item)
            if isinstance(item, Error) and item.ref:
                self._pending.drop(item.ref)  # a refused join: its window is not to be switched to
            if self.state.hides(item):
                return
            lines = format_event(item, theme=theme, me=self.state.nick)  # type: ignore[arg-type]
            targets, level, kind = self._route(item)
            if kind:
                lines = [theme.emphasis(line, kind) for line in lines]
            for target in targets:
                self.windows.add(target, lines, level)
            note = self._rename_note(item) if isinstance(item, Renamed) else []
        if self._tap is not None:
            for line in lines + note:
                self._tap(line)
        if isinstance(item, Entered):
            room = item.room
            self._on_loop(lambda: self._focus_entered(room))
        self._redraw()
        if kind and self._bell:
            self._ring()

    def _rename_note(self, item: Renamed) -> list[str]:
        """A peer renamed: a note in their whisper window, which stays theirs under the old
        nick (lines typed there go to that nick, never to whoever holds the new one unchecked).
        Under `_lock`."""
        if fold_nick(item.old) == fold_nick(self.state.nick):
            return []
        query = self.windows.find(Kind.QUERY, item.old)
        if query is None:
            return []
        old, new = sanitize(item.old), sanitize(item.new)
        note = [
            f"* {old} is now known as {new}; /query {new} to whisper them there: their key will be checked"
        ]
        self.windows.add(query, note, Activity.HIGHLIGHT)
        return note

    def _on_loop(self, call: Callable[[], None]) -> None:
        """Run `call` on the loop thread, between keys (at once while the application is
        not running: nobody is typing then). Any thread, not under `_lock`."""
        app = self.app
        loop = app.loop
        if app.is_running and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may just have closed
                loop.call_soon_threadsafe(call)
            return
        call()

    def _focus_entered(self, room: str) -> None:
        """We are in `room`: its window becomes current if the user asked to join it, has
        not switched windows since and is not typing (the loop thread)."""
        with self._lock:
            window = self.windows.find(Kind.ROOM, room)
            due = self._pending.due(room, time.monotonic(), self.windows.switches)
            if due and window is not None and not self.buffer.text:
                self.windows.focus(window)
        self._redraw()

    def _ring(self) -> None:
        """The terminal bell, written by the loop thread while it draws (two writers would
        interleave their bytes), or at once before it runs."""
        app = self.app
        loop = app.loop
        if app.is_running and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may just have closed
                loop.call_soon_threadsafe(app.output.bell)
                return
        app.output.bell()

    def _route(self, item: object) -> tuple[list[Window | None], Activity, str | None]:
        """Where an event's lines go (None: the current window), the activity they make,
        and how they are emphasised. Under `_lock`."""
        windows, state = self.windows, self.state
        if isinstance(item, Message):
            window = windows.open(Kind.ROOM, item.room)
            mine = fold_nick(item.nick) == fold_nick(state.nick)
            if item.history or mine:
                return [window], Activity.NONE, None
            if state.mentions_me(item.text):
                return [window], Activity.HIGHLIGHT, "mention"
            return [window], Activity.ACTIVITY, None
        if isinstance(item, Entered):
            return [windows.open(Kind.ROOM, item.room)], Activity.NONE, None
        if isinstance(item, Left) and fold_nick(item.nick) == fold_nick(state.nick) and item.by:
            return [windows.find(Kind.ROOM, item.room)], Activity.HIGHLIGHT, "mention"
        if isinstance(item, (Joined, Left, Names, RoomChanged, BanList)):
            return [windows.find(Kind.ROOM, item.room)], Activity.NONE, None
        if isinstance(item, Invited):
            mine = fold_nick(item.nick) == fold_nick(state.nick)
            return [None], Activity.HIGHLIGHT if mine else Activity.NONE, None
        if isinstance(item, Renamed):
            # Where they are, and the whisper window of the old nick (which stays on it).
            rooms = [windows.find(Kind.ROOM, room) for room in state.shares_room(item.new)]
            query = windows.find(Kind.QUERY, item.old)
            targets: list[Window | None] = [w for w in [*rooms, query] if w is not None]
            return targets or [None], Activity.NONE, None
        if isinstance(item, WhisperReceived):
            return [windows.open(Kind.QUERY, item.sender)], Activity.HIGHLIGHT, "whisper"
        if isinstance(item, WhisperCopied):
            return [windows.open(Kind.QUERY, item.to)], Activity.ACTIVITY, None
        if isinstance(item, KnownKeyRenamed):
            # Checked: the new nick holds the old one's key, so its whisper window follows.
            windows.rename(Kind.QUERY, item.old, item.new)
            return self._here_and(windows.find(Kind.QUERY, item.new)), Activity.NONE, None
        if isinstance(item, RenameUnconfirmed):
            return self._here_and(windows.find(Kind.QUERY, item.old)), Activity.NONE, None
        if isinstance(item, NotPostQuantum):
            return [windows.open(Kind.QUERY, item.peer)], Activity.NONE, None
        if isinstance(item, KeyChanged):
            both = self._here_and(windows.find(Kind.QUERY, item.peer))
            if item.renamed_from:  # the old nick's window stays, and says why
                both += self._here_and(windows.find(Kind.QUERY, item.renamed_from))[1:]
            return both, Activity.HIGHLIGHT, "alarm"
        if isinstance(item, (WhisperStatus, WhisperFailed, ResendPending)):
            peer = (
                item.to
                if isinstance(item, WhisperStatus)
                else item.sender
                if isinstance(item, WhisperFailed)
                else item.peer
            )
            # In the conversation's window, and where the person is if that is elsewhere
            # (a /msg typed in a room window shows its echo and its fate there too).
            query = windows.find(Kind.QUERY, peer)
            seen: list[Window | None] = [None]
            if query is not None and query is not windows.current:
                seen.append(query)
            return seen, Activity.NONE, None
        return [None], Activity.NONE, None

    def _here_and(self, window: Window | None) -> list[Window | None]:
        """The current window (None) and `window` too if it is another. Under `_lock`."""
        if window is None or window is self.windows.current:
            return [None]
        return [None, window]

    def _screen(self) -> ANSI:
        """The current window's newest lines (or older, scrolled), bottom-aligned: the loop thread."""
        size = self.app.output.get_size()
        rows = max(size.rows - 1 - min(self.buffer.document.line_count, _INPUT_ROWS), 1)
        with self._lock:
            shown = self.windows.view(rows, size.columns)
        return ANSI("\n".join([""] * (rows - len(shown)) + shown))

    def _last_row(self) -> Point:
        """Where the output's cursor is: on its last row, so the newest line is always in view."""
        size = self.app.output.get_size()
        rows = max(size.rows - 1 - min(self.buffer.document.line_count, _INPUT_ROWS), 1)
        return Point(x=0, y=rows - 1)

    def _status(self) -> StyleAndTextTuples:
        with self._lock:
            window = self.windows.current
            room = window.name if window.kind is Kind.ROOM else None
            activity = self.windows.activity_text()
            text = self.state.status_line(room, self.windows.title(), activity)
        style = "class:status.highlight" if "!" in activity else "class:status"
        return [(style, text)]

    def _prompt(self) -> str:
        """The input line's prompt: where the line will go (the loop thread)."""
        with self._lock:
            window, nick = self._line_to or self.windows.current, self.state.nick
            kind, name = window.kind, window.name
        if kind is Kind.QUERY:
            return f"{nick} (whisper to {name})> "
        return f"{nick}> "

    def _known_nicks(self) -> list[str]:
        with self._lock:
            return self.state.known_nicks()

    def _joined_rooms(self) -> list[str]:
        with self._lock:
            return [room.name for room in self.state.rooms.values()]

    # -- keys (the loop thread) --------------------------------------------------------------

    def _key_bindings(self) -> KeyBindingsBase:
        kb = KeyBindings()

        @kb.add("enter")
        def _enter(event: KeyPressEvent) -> None:
            # Keys already waiting behind this Enter were pasted (no one types that fast):
            # the paste is kept together, to be sent whole as one message.
            if event.key_processor.input_queue or self._input_waiting():
                event.current_buffer.insert_text("\n")
            else:
                self._accept()

        for number in range(1, 10):
            kb.add("escape", str(number))(lambda _e, n=number: self._switch(lambda w: w.select(n)))
        kb.add("escape", "left")(lambda _e: self._switch(Windows.previous))
        kb.add("escape", "right")(lambda _e: self._switch(Windows.next))
        kb.add("pageup")(lambda _e: self._scroll(up=True))
        kb.add("pagedown")(lambda _e: self._scroll(up=False))
        kb.add("c-c")(lambda _e: self._typed.put(_Typed("/quit", Kind.ROOM, DEFAULT_ROOM)))
        empty = Condition(lambda: not self.buffer.text)
        kb.add("c-d", filter=empty)(lambda _e: self._typed.put(_Typed("/quit", Kind.ROOM, DEFAULT_ROOM)))
        # Mouse support is never turned on, so a mouse report can only be typed or pasted
        # junk: it must not move the cursor (text typed after it would land before a
        # "/msg bob", turning a whisper into a line for the room).
        for key in (Keys.Vt100MouseEvent, Keys.WindowsMouseEvent, Keys.ScrollUp, Keys.ScrollDown):
            kb.add(key)(lambda _e: None)

        @kb.add(Keys.BracketedPaste)
        def _paste(event: KeyPressEvent) -> None:
            text = event.data.replace("\r\n", "\n").replace("\r", "\n")
            # Pasted control characters are dropped here; what is left is what is seen.
            event.current_buffer.insert_text("".join(ch for ch in text if ch == "\n" or not is_unsafe(ch)))

        return merge_key_bindings([_guarded(load_key_bindings()), _guarded(kb)])

    def _input_waiting(self) -> bool:
        """Whether more typed bytes wait to be read: the rest of a paste longer than one read."""
        try:
            ready, _, _ = select.select([self.app.input.fileno()], [], [], 0)
        except (OSError, ValueError, NotImplementedError):
            return False
        return bool(ready)

    def _switch(self, move: Callable[[Windows], object]) -> None:
        """The user switches windows (the loop thread): a line being typed goes along."""
        with self._lock:
            move(self.windows)
            current = self.windows.current
        if self._line_to is not None:
            self._line_to = current

    def _text_changed(self, buffer: Buffer) -> None:
        """The loop thread: a line's first keystroke fixes where it goes (`_line_to`)."""
        if not buffer.text:
            self._line_to = None
        elif self._line_to is None:
            with self._lock:
                self._line_to = self.windows.current

    def _scroll(self, *, up: bool) -> None:
        rows = max(self.app.output.get_size().rows - 2, 1)
        with self._lock:
            if up:
                self.windows.page_up(rows)
            else:
                self.windows.page_down(rows)

    def _accept(self) -> None:
        """Enter: the line goes to the input thread with its window, unless it holds
        control characters (then it stays, for the person to see and edit)."""
        text = self.buffer.text
        unsafe = sorted({sanitize(ch) for ch in text if ch != "\n" and is_unsafe(ch)})
        if unsafe:
            self._add(
                None,
                [
                    f"! not sent: the line holds control characters ({' '.join(unsafe)}), "
                    "perhaps an escape sequence typed or pasted; remove them and send again"
                ],
            )
            return
        with self._lock:
            window = self._line_to or self.windows.current
            typed = _Typed(text, window.kind, window.name, self.windows.switches)
        if text.strip():
            self.buffer.append_to_history()
        self.buffer.reset()
        self._line_to = None
        parsed = parse_input(text)
        if isinstance(parsed, Command) and parsed.name in _SWITCHING and "\n" not in text:
            # Switched here and now, so the next line typed goes to the window switched to.
            with contextlib.suppress(_Refused):  # told why; nothing follows it
                self._window_command(parsed)
            return
        self._typed.put(typed)

    # -- typed lines (the input thread) ------------------------------------------------------

    def _work(self) -> None:
        while (typed := self._typed.get()) is not None:
            if self._quitting.is_set() or self._lost.is_set():
                continue
            parts = _paste_parts(typed.text)
            for index, part in enumerate(parts):
                try:
                    done = self._act(replace(typed, text=part))
                except _Refused:
                    self._drop_rest(part, parts[index + 1 :])
                    break
                except Exception as exc:  # a bug must not leave the keyboard typing into nothing
                    # The type only: the exception's message may quote what was typed.
                    log.error("a typed command failed: %s", type(exc).__name__)
                    self._say(f"! that failed: {sanitize(type(exc).__name__)}; the client carries on")
                    self._drop_rest(part, parts[index + 1 :])
                    break
                if done.quit:
                    self._quitting.set()
                    self._exit()
                    break
                if done.to is not None:  # the rest of a paste goes to the window it opened
                    with self._lock:
                        switches = self.windows.switches
                    typed = _Typed(typed.text, done.to.kind, done.to.name, switches)

    def _drop_rest(self, failed: str, rest: list[str]) -> None:
        """A line of a paste was refused or failed: the lines after it are not sent (they
        may have counted on it: a whisper window opened, a window switched to), and the
        user is told which line stopped the paste (its command and first word only: the
        rest may be text)."""
        if not rest:
            return
        count = sum(part.count("\n") + 1 for part in rest)
        if failed.startswith("/"):
            head = " ".join(failed.partition("\n")[0].split(" ")[:2])
            what = f"{sanitize(head)} did not work"
        else:
            what = "a line of it was not sent"
        plural = "s" if count != 1 else ""
        self._say(
            f"! the rest of the paste was not sent: {what}, so the {count} line{plural} after it went nowhere"
        )

    def _refuse(self, line: str) -> NoReturn:
        """Tell the user why a typed line was refused, and stop it (and the rest of its paste)."""
        self._say(line)
        raise _Refused

    def _say(self, line: str) -> None:
        self._add(None, [line])

    def _act(self, typed: _Typed) -> _Done:
        """Carry out one input line. Raises `_Refused` (the user told why) if it was
        refused or failed."""
        parsed = parse_input(typed.text)
        with self._lock:
            client = self.client
        try:
            if isinstance(parsed, Text):
                self._text(client, parsed.text, typed)
            elif isinstance(parsed, Command):
                return self._command(client, parsed, typed)
            elif isinstance(parsed, Unknown):
                hint = (
                    f"; did you mean /{parsed.suggestion}?" if parsed.suggestion else "; /help lists commands"
                )
                self._refuse(f"! unknown command /{sanitize(parsed.name)}{hint}")
        except (ValueError, ConnectionError) as exc:  # e.g. text over 4 KiB: say so, keep going
            self._refuse(f"! not sent: {sanitize(str(exc))}")
        return _Done()

    def _text(self, client: Client, text: str, typed: _Typed) -> None:
        size = len(text.encode("utf-8", "surrogatepass"))
        if "\n" in text and size > MAX_TEXT_BYTES:
            lines = text.count("\n") + 1
            self._refuse(
                f"! not sent: the paste is {lines} lines, {size} bytes; one message holds at most "
                f"{MAX_TEXT_BYTES} bytes. Nothing of it was sent: send it in parts, or as a file"
            )
        stripped = text.lstrip()
        if stripped != text and isinstance(parse_input(stripped), Command):
            # " /msg bob ..." is a command with the cursor moved or a space typed first:
            # saying it in the room would say in clear what was meant as a whisper.
            self._refuse(
                "! not sent: the line starts with spaces before a command; remove them (or // to say it)"
            )
        if typed.kind is Kind.QUERY:  # as /msg, with its answers to every refusal
            self._whisper_command(client, Command("msg", f"{typed.name} {text}"))
        else:
            client.say(text, room=typed.name)

    def _command(self, client: Client, cmd: Command, typed: _Typed) -> _Done:
        name = cmd.name
        room = typed.name if typed.kind is Kind.ROOM else None
        if name in _WHISPER_COMMANDS:
            self._whisper_command(client, cmd)
        elif name in ROOM_COMMANDS:
            target, rest = split_room(cmd.arg, room)
            if target is None:
                self._refuse(f"! which room? {COMMANDS[name][0]} (this window is a whisper window)")
            self._room_command(client, name, target, rest)
        elif name in _WINDOW_COMMANDS:
            return _Done(to=self._window_command(cmd, client, typed))
        elif name == "join":
            self._join(client, cmd.arg, typed)
        elif name == "list":
            client.list_rooms(cmd.arg)
        elif name == "invite":
            nick, _, where = cmd.arg.partition(" ")
            target = where.strip() or room
            if not nick or target is None:
                self._refuse(f"! usage: {COMMANDS['invite'][0]}")
            client.invite(target, nick)
        elif name == "me":
            if not cmd.arg:
                self._refuse("! usage: /me ACTION")
            elif typed.kind is Kind.QUERY:
                self._refuse("! /me is for rooms: whispers carry text only")
            else:
                client.say(cmd.arg, room=typed.name, action=True)
        elif name == "away":
            client.set_away(cmd.arg or "away")
            self._say(f"* you are away ({sanitize(cmd.arg or 'away')}); /back when you return")
        elif name == "back":
            client.set_away("")
            self._say("* welcome back")
        elif name in ("ignore", "unignore"):
            self._ignore(cmd)
        elif name == "nick":
            self._rename(client, cmd.arg)
        elif name == "identity":
            self._identity(cmd.arg)
        elif name in ("link", "unlink", "devices"):
            desk = self._link_desk(client)
            if desk is None:
                self._refuse("! a guest has no devices: log in with an identity")
            else:
                lines = (
                    desk.link(cmd.arg)
                    if name == "link"
                    else (desk.unlink(cmd.arg) if name == "unlink" else desk.devices())
                )
                for line in lines:
                    self._say(sanitize(line))
        elif name == "version":
            with self._lock:
                software = self.state.software
            server = sanitize(software) if software else "an older server, which does not say"
            self._say(f"* this client: securechat {__version__}; the server: {server}")
        elif name == "help":
            for text in help_lines(cmd.arg):
                self._say(text)
        elif name == "quit":
            client.quit(cmd.arg)
            return _Done(quit=True)
        return _Done()

    def _link_desk(self, client: Client) -> LinkDesk | None:
        """The linking desk of `client` (made on first use; a new one after /identity);
        None for a guest. Any thread."""
        if client.keys is None:
            return None
        with self._lock:
            if self._desk is None or self._desk[0] is not client:
                self._desk = (client, LinkDesk(client, client.keys))
            return self._desk[1]

    def _join(self, client: Client, arg: str, typed: _Typed) -> None:
        room = arg.split(" ")[0]
        if not room.startswith("#"):
            self._refuse(f"! usage: {COMMANDS['join'][0]}")
        with self._lock:
            # As of when the /join was typed: a switch since then, and its window stays put.
            self._pending.ask(room, time.monotonic(), typed.switches)
        try:
            client.join(room)
        except (ValueError, ConnectionError):
            with self._lock:
                self._pending.drop(room)  # never sent: nothing will answer it
            raise

    def _room_command(self, client: Client, name: str, room: str, rest: str) -> None:
        first, _, more = rest.partition(" ")
        usage = f"! usage: {COMMANDS[name][0]}"
        if name in _NEEDS_NICK and not first:
            self._refuse(usage)
        if name == "part":
            client.part(room, rest)
        elif name == "topic":
            if not rest:
                with self._lock:
                    known = self.state.room(room)
                topic = known.topic if known is not None else ""
                where = sanitize(room)
                self._say(f"* topic of {where}: {sanitize(topic)}" if topic else f"* {where} has no topic")
            else:
                client.set_topic(room, "" if rest == "-delete" else rest)
        elif name in ("names", "who"):
            client.names(room)
        elif name == "bans":
            client.bans(room)
        elif name == "register":
            client.register_room(room)
        elif name == "mode":
            if rest not in ("+i", "-i"):
                self._refuse(usage)
            client.set_mode(room, rest == "+i")
        elif name == "kick":
            client.kick(room, first, more.strip())
        elif name == "ban":
            client.ban(room, first)
        elif name == "unban":
            client.unban(room, first)
        elif name == "op":
            client.op(room, first)
        elif name == "deop":
            client.deop(room, first)
        elif name == "transfer":
            client.transfer(room, first)

    def _window_command(
        self, cmd: Command, client: Client | None = None, typed: _Typed | None = None
    ) -> Window | None:
        """/query, /window, /clear, /lastlog, /close: the input thread, or the loop thread
        for /query and /window (`_SWITCHING`, which need no client). Returns the window a
        /query or /window made current. /clear, /lastlog and /close act on the window they
        were typed in (`typed`), which may no longer be current. Raises `_Refused`."""
        with self._lock:
            here = self.windows.find(typed.kind, typed.name) if typed is not None else None
        if cmd.name == "query":
            nick = cmd.arg.split(" ")[0]
            if not is_valid_nick(nick):
                self._refuse(f"! usage: {COMMANDS['query'][0]}")
            with self._lock:
                opened = self.windows.open(Kind.QUERY, nick, focus=True)
            self._say(f"* whispering {sanitize(nick)}: every line typed here is an end-to-end whisper")
            return opened
        if cmd.name == "window":
            with self._lock:
                number = int(cmd.arg) if cmd.arg.isdigit() else 0
                found = self.windows.select(number)
                count = len(self.windows)
                selected = self.windows.current
            if not found:
                self._refuse(f"! usage: /window N (1-{count})")
            return selected
        if cmd.name == "clear":
            with self._lock:
                self.windows.clear(here)
            self._redraw()
        elif cmd.name == "lastlog":
            if not cmd.arg:
                self._refuse(f"! usage: {COMMANDS['lastlog'][0]}")
            with self._lock:
                matches = self.windows.lastlog(cmd.arg, here)
            plural = "s" if len(matches) != 1 else ""
            self._say(f"* lastlog: {len(matches)} line{plural} with {sanitize(cmd.arg)}:")
            for line in matches:
                self._say(f"  {line}")
        elif cmd.name == "close":
            with self._lock:
                window = here or self.windows.current
                closed = self.windows.close(window)
            if not closed:
                self._refuse("! this is the last window; /quit to leave")
            if window.kind is Kind.ROOM and client is not None:
                with contextlib.suppress(ConnectionError):
                    client.part(window.name)
            self._redraw()
        return None

    def _rename(self, client: Client, arg: str) -> None:
        new = arg.strip()
        if not is_valid_nick(new):
            self._refuse("! usage: /nick NEW (1-24 of A-Z a-z 0-9 _ - .); /identity NICK logs in as another")
        if fold_nick(new) == fold_nick(client.nick):
            self._say(f"* you are already {sanitize(client.nick)}")
        else:
            client.rename(new)

    def _identity(self, arg: str) -> None:
        new_nick = arg.strip()
        if not is_valid_nick(new_nick):
            self._refuse("! usage: /identity NICK (1-24 of A-Z a-z 0-9 _ - .)")
        if self._switch_to is None:
            self._refuse("! /identity is not available here")
        with self._lock:
            old = self.client
        try:
            new_client = self._switch_to(new_nick)
        except Exception as exc:  # connection, login or keystore: say why, stay who we are
            self._refuse(
                f"! still {sanitize(old.nick)}: cannot become {sanitize(new_nick)}: {sanitize(str(exc))}"
            )
        with self._lock:
            self.client = new_client
            self.state.nick = new_client.nick
            if new_client.welcome is not None:
                self.state.apply(new_client.welcome)
        self._start_pump(new_client)
        with contextlib.suppress(ConnectionError):
            old.quit(f"now known as {new_client.nick}")
        # Let the server answer the quit before closing: closing with its answer
        # unread would reset the connection and could lose the quit itself.
        self._pumps.pop(old).join(timeout=10.0)
        old.close()
        if old.keys is not None:
            old.keys.close()  # the identity left: its keystore is free for other programs
        self._say(f"* you are now {sanitize(new_client.nick)}")

    def _ignore(self, cmd: Command) -> None:
        nick = cmd.arg.split(" ")[0]
        with self._lock:
            if not nick:
                ignored = ", ".join(sorted(self.state.ignored)) or "nobody"
            elif cmd.name == "ignore":
                self.state.ignored.add(fold_nick(nick))
            else:
                self.state.ignored.discard(fold_nick(nick))
        if not nick:
            self._say(f"* usage: /{cmd.name} NICK (ignoring: {sanitize(ignored)})")
        elif cmd.name == "ignore":
            who = sanitize(nick)
            self._say(f"* ignoring {who}: their lines, whispers and invitations are hidden (/unignore {who})")
        else:
            self._say(f"* no longer ignoring {sanitize(nick)}")

    # -- whispers (the input thread) ---------------------------------------------------------

    def _whisper(self, client: Client, nick: str, text: str) -> None:
        """Whisper `nick` and echo it in their window (opened if need be)."""
        try:
            client.whisper(nick, text)
        except LookupError as exc:
            with self._lock:
                guess = closest_nick(nick, self.state.known_nicks())
            hint = (
                f"; did you mean {sanitize(guess)}?" if guess and fold_nick(guess) != fold_nick(nick) else ""
            )
            self._refuse(f"! {sanitize(str(exc))}{hint}")
        self._echo(nick, text)

    def _echo(self, to: str, text: str) -> None:
        lock = "e2e" if self._theme.ascii_only else "\U0001f512"
        head = f"{_stamp()} [{lock} whisper to {self._theme.nick(to)}] "
        lines = [self._theme.finish(line) for line in block(head, text)]
        with self._lock:
            query = self.windows.open(Kind.QUERY, to)
            elsewhere = query is not self.windows.current
        self._add(query, lines)
        if elsewhere:
            with self._lock:
                self.windows.add(None, lines)

    def _whisper_command(self, client: Client, cmd: Command) -> None:
        """A whisper command; raises `_Refused` (the user told why) if it did not go."""
        nick, _, rest = cmd.arg.partition(" ")
        rest = rest.strip()
        try:
            if cmd.name in ("msg", "w"):
                if not nick or not rest:
                    self._refuse(f"! usage: /{cmd.name} NICK TEXT")
                self._whisper(client, nick, rest)
            elif cmd.name == "r":
                if not cmd.arg:
                    self._refuse("! usage: /r TEXT")
                to, _ = client.reply(cmd.arg)
                self._echo(to, cmd.arg)
            elif not nick:
                self._refuse(f"! usage: {COMMANDS[cmd.name][0]}")
            elif cmd.name == "verify":
                self._verify(client, nick, rest)
            elif cmd.name == "trust":
                client.trust(nick)
                who = sanitize(nick)
                self._say(f"* accepted {who}'s new key (unverified: compare numbers with /verify {who})")
            elif cmd.name == "whois":
                self._whois(client, nick)
            elif cmd.name == "history":
                self._history(client, nick, rest)
        except IdentityChanged as exc:
            changed = KeyChanged(
                peer=exc.peer,
                old_fingerprint=exc.pinned_fingerprint,
                new_fingerprint=exc.new_fingerprint,
                held=0,
            )
            self._add(None, format_event(changed))
            raise _Refused from None
        except BundleError as exc:
            why = sanitize(str(exc))
            self._refuse(f"! not sent: the server gave keys for {sanitize(nick)} that fail checks ({why})")
        except (LookupError, NotTrusted, TimeoutError, KeystoreError) as exc:
            self._refuse(f"! {sanitize(str(exc))}")

    def _history(self, client: Client, nick: str, count: str) -> None:
        if count and not count.isdigit():
            self._refuse("! usage: /history NICK [N]")
        kept = client.history(nick, int(count) if count else HISTORY_SHOWN)
        who = sanitize(nick)
        if not kept:
            self._say(f"* no whispers with {who} kept on this device")
            return
        self._say(f"* your last {len(kept)} whisper(s) with {who}:")
        theme = self._theme
        lock = "e2e" if theme.ascii_only else "\U0001f512"
        for message in kept:
            if message.direction is Direction.IN:
                head = f"{clock(message.ts)} [{lock} from {theme.nick(message.peer)}] "
            else:
                head = f"{clock(message.ts)} [{lock} to {theme.nick(message.peer)}, {message.state.value}] "
            self._add(None, [theme.finish(line) for line in block(head, message.text)])

    def _verify(self, client: Client, nick: str, number: str) -> None:
        who = sanitize(nick)
        if not number:
            if client.keys is None:
                raise NotTrusted("guests have no keys to verify")
            # On a line of its own: 71 characters fit an 80-column terminal unwrapped.
            self._add(
                None,
                [
                    f"* safety number with {who}:",
                    f"  {client.keys.safety_number(nick)}",
                    f"* compare with {who} (voice, in person), then: /verify {who} NUMBER",
                ],
            )
        elif client.verify(nick, number):
            self._say(f"* {who} is verified: the number matches")
        else:
            self._refuse(f"! that is not your safety number with {who}: their key is NOT verified")

    def _whois(self, client: Client, nick: str) -> None:
        who = sanitize(nick)
        info = client.keys.peer_info(nick) if client.keys is not None else None
        if info is None:
            self._say(f"* no key seen for {who} yet (whisper them, or wait for their whisper)")
            return
        identity, trust, pending = info.identity, info.trust, info.pending
        quantum = {
            True: "post-quantum",
            False: "NOT post-quantum (their older client)",
            None: "no session yet",
        }
        self._say(f"* {who}: key {identity.fingerprint()}, {trust.value}, {quantum[info.post_quantum]}")
        if pending is not None:
            self._say(
                f"! {who} now presents another key {pending.fingerprint()}: /verify {who} or /trust {who}"
            )


_WHISPER_COMMANDS = frozenset({"msg", "w", "r", "verify", "trust", "whois", "history"})
#: Room commands that need a nick or mask after the room.
_NEEDS_NICK = frozenset({"kick", "ban", "unban", "op", "deop", "transfer"})
_WINDOW_COMMANDS = frozenset({"query", "window", "close", "clear", "lastlog"})
#: Window commands carried out as Enter is pressed: the lines after them go where they went.
_SWITCHING = frozenset({"query", "window"})
#: Commands whose argument ends in text: in a paste, the lines after them are that text.
_TEXT_COMMANDS = frozenset({"msg", "w", "r", "me"})


def _paste_parts(text: str) -> list[str]:
    """A pasted block as the lines it runs as: each line starting with "/" on its own,
    except that the lines after a command that takes text (/msg, /w, /r, /me) and do not
    start with "/" are its text ("/msg bob" and a pasted paragraph is one whisper, never a
    whisper and then lines said in clear); other runs of lines are one message each. A
    single line is itself."""
    parts: list[str] = []
    takes_text = False
    for line in text.split("\n"):
        if not _is_text(line):
            parts.append(line)
            takes_text = line[1:].partition(" ")[0].lower() in _TEXT_COMMANDS
        elif parts and (takes_text or _is_text(parts[-1])):
            parts[-1] += "\n" + line
        else:
            parts.append(line)
            takes_text = False
    return parts


def _is_text(line: str) -> bool:
    return not line.startswith("/") or line.startswith("//")


def _stamp() -> str:
    return time.strftime("%H:%M")


def _guarded(bindings: KeyBindingsBase) -> KeyBindings:
    """`bindings` with every handler guarded: one that raises (prompt_toolkit's own mouse
    handler does, on a malformed mouse report) rings the bell and changes nothing more,
    instead of reaching the event loop's handler, which prints a traceback over the screen
    and waits for an Enter that the person meant for their next line."""
    guarded = KeyBindings()
    for binding in bindings.bindings:
        guarded.add(
            *binding.keys,
            filter=binding.filter,
            eager=binding.eager,
            is_global=binding.is_global,
            save_before=binding.save_before,
            record_in_macro=binding.record_in_macro,
        )(_guard(binding.handler))
    return guarded


def _guard(handler: Callable[[KeyPressEvent], object]) -> Callable[[KeyPressEvent], object]:
    def guarded(event: KeyPressEvent) -> object:
        try:
            return handler(event)
        except Exception:
            # No key data in the log: it may be part of a whisper being typed.
            log.debug("a key handler failed on typed input", exc_info=False)
            event.app.output.bell()
            return None

    return guarded
