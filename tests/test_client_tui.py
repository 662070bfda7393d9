"""The terminal front end driven through prompt_toolkit's pipe input."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator

import pytest
from chat import TIMEOUT, next_matching
from conftest import Connect
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from securechat import Client
from securechat.client.tui import run_tui
from securechat.protocol import Left, Message


def test_typed_lines_are_said_and_commands_run(connect: Connect) -> None:
    bob = connect("bob")
    alice = connect("alice")
    shown: list[str] = []
    lock = threading.Lock()
    seen_names = threading.Event()
    unknown = threading.Event()

    def write(line: str) -> None:
        with lock:
            shown.append(line)
        if "* in #lobby: alice, bob" in line:
            seen_names.set()
        if line.startswith("! unknown command"):
            unknown.set()

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
        pipe.send_text("/wo\r")
        assert unknown.wait(TIMEOUT)
        pipe.send_text("/help quit\r//slash\r")  # in one read, as a paste: both run
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
    with create_pipe_input() as pipe:
        term = Terminal(alice, pipe)
        pipe.send_text("x" * 5000 + "\r/quit\r")  # one read: a paste, stopped at its refused line
        term.wait_shown("! not sent: text: longer than 4096 bytes")
        term.wait_shown("! the rest of the paste was not sent: a line of it was not sent, so the 1 line")
        term.quit(pipe)


def test_whisper_commands_in_the_terminal_ui(server: object, client_ctx: object) -> None:
    from whisper_helpers import login, memory_keys

    from securechat.client.events import WhisperReceived

    bob = login(server, client_ctx, "bob", memory_keys("bob"))  # type: ignore[arg-type]
    alice = login(server, client_ctx, "alice", memory_keys("alice"))  # type: ignore[arg-type]
    shown: list[str] = []
    seen = threading.Event()
    awaited: list[str] = []

    def write(line: str) -> None:
        shown.append(line)
        if "whisper to bob: delivered" in line or line.startswith("* bob: key") or line in awaited:
            seen.set()

    try:
        with create_pipe_input() as pipe:
            ui = threading.Thread(
                target=run_tui,
                args=(alice,),
                kwargs={"pt_input": pipe, "pt_output": DummyOutput(), "write": write},
            )
            ui.start()
            pipe.send_text("/msg bob psst\r")
            got = bob.wait_for_any(WhisperReceived, TIMEOUT)
            assert isinstance(got, WhisperReceived) and got.text == "psst"
            assert seen.wait(TIMEOUT)
            seen.clear()
            pipe.send_text("/verify bob\r/whois bob\r")
            assert seen.wait(TIMEOUT)
            number = shown[shown.index("* safety number with bob:") + 1].strip()
            assert bob.keys is not None and number == bob.keys.safety_number("alice")
            whois = next(line for line in shown if line.startswith("* bob: key"))
            assert whois.endswith(", unverified, post-quantum")  # a version-2 setup
            # One at a time: each is refused or answered before the next (a paste would
            # stop at its first refusal).
            for line, answer in [
                (f"/verify bob {number}", "* bob is verified: the number matches"),
                ("/msg", "! usage: /msg NICK TEXT"),
                ("/r", "! usage: /r TEXT"),
                ("/r anyone?", "! nobody has whispered you yet"),
                ("/trust bob", "! no changed key to accept for bob"),
                ("/msg nobody hi", "! nobody is registered as nobody"),
                ("/msg alice me", "! not sent: you cannot whisper yourself: whispers go to someone else"),
                ("/history bob", "* your last 1 whisper(s) with bob:"),
                ("/history bob x", "! usage: /history NICK [N]"),
                ("/history carol", "* no whispers with carol kept on this device"),
            ]:
                seen.clear()
                awaited[:] = [answer]
                pipe.send_text(line + "\r")
                assert seen.wait(TIMEOUT), f"{line}: never shown: {answer}; the last lines: {shown[-3:]}"
            pipe.send_text("/quit\r")
            ui.join(TIMEOUT)
        assert not ui.is_alive()
    finally:
        bob.close()
    assert any(line.endswith("[\U0001f512 whisper to bob] psst") for line in shown)
    assert any(line.endswith("[\U0001f512 to bob, delivered] psst") for line in shown)


HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b31m admin\u202etxt.exe \u2066x\u2069 \x1b[1A"
FORBIDDEN = ["\x1b", "\x07", "\x9b", "\u202e", "\u2066", "\u2069"]


def test_hostile_text_from_another_user_is_shown_inert(connect: Connect) -> None:
    mallory = connect("mallory")
    alice = connect("alice")
    shown: list[str] = []
    arrived = threading.Event()

    def write(line: str) -> None:
        shown.append(line)
        if "owned" in line:
            arrived.set()

    with create_pipe_input() as pipe:
        ui = threading.Thread(
            target=run_tui,
            args=(alice,),
            kwargs={"pt_input": pipe, "pt_output": DummyOutput(), "write": write},
        )
        ui.start()
        mallory.say(HOSTILE + "\nsecond line \x1b[31m")
        assert arrived.wait(TIMEOUT)
        pipe.send_text("/quit\r")
        ui.join(TIMEOUT)
    text = "\n".join(shown)
    assert not any(ch in text for ch in FORBIDDEN)
    assert "\\x1b]0;owned\\x07" in text and "\\u202e" in text  # visible, not executed


class RecordingOutput(DummyOutput):
    def __init__(self) -> None:
        super().__init__()
        self.bells = 0

    def bell(self) -> None:
        self.bells += 1


def test_mentions_and_whispers_stand_out_and_ring_and_me_and_ignore_work(
    server: object, client_ctx: object, connect: Connect
) -> None:
    from whisper_helpers import login, memory_keys

    from securechat.client.display import Theme

    bob = login(server, client_ctx, "bob", memory_keys("bob"))  # type: ignore[arg-type]
    alice = login(server, client_ctx, "alice", memory_keys("alice"))  # type: ignore[arg-type]
    carol = connect("carol")
    shown: list[str] = []
    marks = {
        "mention": threading.Event(),
        "whisper": threading.Event(),
        "action": threading.Event(),
        "ignoring": threading.Event(),
        "after": threading.Event(),
    }

    def write(line: str) -> None:
        shown.append(line)
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # match on what a person reads
        if "hey alice" in line:
            marks["mention"].set()
        if "psst" in line:
            marks["whisper"].set()
        if "* carol waves" in line:
            marks["action"].set()
        if "after ignore" in line:
            marks["after"].set()
        if line.startswith("* ignoring carol"):
            marks["ignoring"].set()

    output = RecordingOutput()
    try:
        with create_pipe_input() as pipe:
            ui = threading.Thread(
                target=run_tui,
                args=(alice,),
                kwargs={"pt_input": pipe, "pt_output": output, "write": write, "theme": Theme(color=True)},
            )
            ui.start()
            carol.say("hey alice, look")
            assert marks["mention"].wait(TIMEOUT)
            bob.whisper("alice", "psst")
            assert marks["whisper"].wait(TIMEOUT)
            carol.say("waves", action=True)
            assert marks["action"].wait(TIMEOUT)
            pipe.send_text("/ignore carol\r")
            assert marks["ignoring"].wait(TIMEOUT)
            carol.say("you should not see this")
            bob.say("after ignore")
            assert marks["after"].wait(TIMEOUT)
            pipe.send_text("/me waves back\r")
            assert next_matching(bob, Message, nick="alice").text == "waves back"  # type: ignore[attr-defined]
            pipe.send_text("/quit\r")
            ui.join(TIMEOUT)
    finally:
        bob.close()
    mention = next(line for line in shown if "hey alice" in line)
    whisper = next(line for line in shown if "psst" in line)
    assert mention.startswith("\x1b[1;33m") and whisper.startswith("\x1b[1;35m")
    assert output.bells == 2  # the mention and the whisper, nothing else
    assert not any("you should not see this" in line for line in shown)
    plain_carol = next(line for line in shown if "waves" in line and "carol" in line)
    assert "\x1b[38;5;" in plain_carol  # carol's nick has its colour


def test_tab_completes_commands_and_nicks() -> None:
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from securechat.client.completion import ChatCompleter

    completer = ChatCompleter(lambda: ["Bob", "bobby", "carol"], lambda: ["#lobby", "#Dev"])

    def complete(text: str) -> list[str]:
        return [
            c.text
            for c in completer.get_completions(Document(text), CompleteEvent(completion_requested=True))
        ]

    assert complete("/veri") == ["/verify "]
    assert sorted(complete("/w")) == ["/w ", "/who ", "/whois ", "/window "]
    assert complete("/part #d") == ["#Dev "]
    assert complete("bo") == ["Bob: ", "bobby: "]
    assert complete("/msg ca") == ["carol "]
    assert complete("hello ") == []


def test_identity_switches_identity_and_the_room_sees_it(
    server: object, client_ctx: object, connect: Connect
) -> None:
    from whisper_helpers import login, memory_keys

    from securechat import LoginRejected
    from securechat.protocol import Joined

    observer = connect("carol")
    alice = login(server, client_ctx, "alice", memory_keys("alice"))  # type: ignore[arg-type]
    shown: list[str] = []
    switched = threading.Event()
    refused = threading.Event()
    usage = threading.Event()

    def switch_to(nick: str) -> Client:
        if nick == "carol":
            raise LoginRejected("nick-taken", "carol is already in use")
        return login(server, client_ctx, nick, memory_keys(nick), wait_published=False)  # type: ignore[arg-type]

    def write(line: str) -> None:
        shown.append(line)
        if line == "* you are now alice2":
            switched.set()
        if line.startswith("! still alice: cannot become carol"):
            refused.set()
        if line.startswith("! usage: /identity NICK"):
            usage.set()

    with create_pipe_input() as pipe:
        ui = threading.Thread(
            target=run_tui,
            args=(alice,),
            kwargs={"pt_input": pipe, "pt_output": DummyOutput(), "write": write, "switch_to": switch_to},
        )
        ui.start()
        pipe.send_text("/identity carol\r")  # taken: alice stays alice
        assert refused.wait(TIMEOUT)
        pipe.send_text("/identity bad nick!\r")
        assert usage.wait(TIMEOUT)
        pipe.send_text("/identity alice2\r")
        assert switched.wait(TIMEOUT)
        assert next_matching(observer, Joined, nick="alice2") == Joined(nick="alice2")
        assert next_matching(observer, Left, nick="alice") == Left(nick="alice", reason="now known as alice2")
        pipe.send_text("still me\r")
        assert next_matching(observer, Message, nick="alice2").text == "still me"  # type: ignore[attr-defined]
        pipe.send_text("/quit\r")
        ui.join(TIMEOUT)
    assert not ui.is_alive()
    assert any(line.startswith("! usage: /identity NICK") for line in shown)
    switch_lines = shown[: shown.index("* you are now alice2")]
    assert not any("server: goodbye" in line for line in switch_lines)  # the old connection leaves quietly


def test_room_and_whisper_windows_pastes_and_control_characters(
    server: object, client_ctx: object, connect: Connect
) -> None:
    from whisper_helpers import login, memory_keys

    from securechat import __version__
    from securechat.client.events import WhisperReceived

    bob = login(server, client_ctx, "bob", memory_keys("bob"))  # type: ignore[arg-type]
    alice = login(server, client_ctx, "alice", memory_keys("alice"))  # type: ignore[arg-type]
    shown: list[str] = []
    seen: dict[str, threading.Event] = {}

    def wait_shown(fragment: str) -> None:
        event = seen.setdefault(fragment, threading.Event())
        if not any(fragment in line for line in list(shown)):
            assert event.wait(TIMEOUT), f"never shown: {fragment}; the last lines: {shown[-5:]}"

    changed = threading.Event()

    def write(line: str) -> None:
        shown.append(line)
        changed.set()
        for fragment, event in list(seen.items()):
            if fragment in line:
                event.set()

    def wait_until(check: Callable[[], bool]) -> None:
        changed.clear()
        while not check():
            assert changed.wait(TIMEOUT), f"the last lines: {shown[-5:]}"
            changed.clear()

    def said(room: str) -> str:
        message = next_matching(bob, Message, nick="alice", room=room)
        assert isinstance(message, Message)
        return message.text

    try:
        with create_pipe_input() as pipe:
            ui = threading.Thread(
                target=run_tui,
                args=(alice,),
                kwargs={"pt_input": pipe, "pt_output": DummyOutput(), "write": write},
            )
            ui.start()
            bob.join("#dev")
            pipe.send_text("/join #dev\r")
            wait_shown("* you are in #dev; here: alice, bob")
            pipe.send_text("hello dev\r")  # the #dev window is current: said in #dev
            assert said("#dev") == "hello dev"
            pipe.send_text("/query bob\r")
            wait_shown("* whispering bob")
            pipe.send_text("psst\r")  # a line in a query window is a whisper
            got = bob.wait_for_any(WhisperReceived, TIMEOUT)
            assert isinstance(got, WhisperReceived) and got.text == "psst"
            pipe.send_text("/msg bbo hi\r")
            wait_shown("did you mean bob?")
            pipe.send_text("/query bbo\r")
            wait_shown("* whispering bbo")
            pipe.send_text("anyone?\r")  # refused as /msg is
            wait_until(lambda: shown.count("! nobody is registered as bbo; did you mean bob?") == 2)
            pipe.send_text("/close\r")  # closes bbo's window
            pipe.send_text("/version\r")
            wait_shown("* this client: securechat")
            # A paste too long for one message, in one go as a terminal sends it: refused whole.
            pipe.send_text("/window 2\r/topic\r")
            wait_shown("* #dev has no topic")
            paste = "".join(f"pasted line {n:03} of a long paste, 41 b\r" for n in range(120))
            pipe.send_text(paste)
            wait_shown("! not sent: the paste is 120 lines")
            bob.set_away("lunch")
            pipe.send_text("bad \x1a line\r")  # Ctrl-Z, as typed: shown as ^Z, never sent
            wait_shown("! not sent: the line holds control characters (\\x1a)")
            pipe.send_text("\x15after the paste\r")  # Ctrl-U clears the refused line
            assert said("#dev") == "after the paste"  # nothing of the paste came before it
            pipe.send_text("/names\r")
            wait_shown("* in #dev: alice, bob (away)")
            pipe.send_text("/part #dev see you\r")
            wait_shown("* you left #dev (see you)")
            pipe.send_text("/quit\r")
            ui.join(TIMEOUT)
        assert not ui.is_alive()
    finally:
        bob.close()
    assert f"* this client: securechat {__version__}; the server: securechat {__version__}" in shown
    assert shown.count("! nobody is registered as bbo; did you mean bob?") == 2


def test_a_paste_runs_as_typed_but_text_stays_with_its_command() -> None:
    from securechat.client.tui import _paste_parts

    assert _paste_parts("one line") == ["one line"]
    assert _paste_parts("a\nb\n/quit") == ["a\nb", "/quit"]  # text is one message
    assert _paste_parts("/msg bob a\nb\n/quit") == ["/msg bob a\nb", "/quit"]  # never b in clear
    assert _paste_parts("/window 2\nx\ny") == ["/window 2", "x\ny"]
    assert _paste_parts("/wo\n/help quit\n//slash") == ["/wo", "/help quit", "//slash"]


def test_chat_state_follows_rooms_renames_and_kicks() -> None:
    from securechat.client.state import ChatState
    from securechat.protocol import Entered, Joined, Names, Renamed, RoomChanged

    state = ChatState(nick="alice", server="h:1")
    state.apply(Entered(room="#Dev", users=("alice", "bob"), away=("bob",), owner="bob", registered=True))
    state.apply(Joined(room="#dev", nick="carol"))
    assert (
        state.status_line("#dev", "[2:#Dev]", "act: 1!")
        == " h:1 | alice | connected | [2:#Dev] 3 here | act: 1! "
    )
    state.apply(Renamed(old="bob", new="bob2"))
    room = state.room("#DEV")
    assert room is not None and room.marked() == ["alice", "~bob2 (away)", "carol"]
    state.apply(
        RoomChanged(
            room="#dev", nick="bob2", what="operators", registered=True, owner="bob2", operators=("carol",)
        )
    )
    assert room.marked() == ["alice", "~bob2 (away)", "@carol"]
    state.apply(Names(room="#dev", users=("alice", "carol")))
    assert state.known_nicks() == ["carol"] and state.shares_room("CAROL") == ["#Dev"]
    state.apply(Left(room="#dev", nick="alice", by="carol", reason="out"))  # kicked: no longer in it
    assert state.room("#dev") is None
    state.apply(Renamed(old="alice", new="alice2"))
    assert state.nick == "alice2"


# -- where a line goes: pastes that fail part-way, windows that events must not move ---------

BRACKETED = "\x1b[200~{}\x1b[201~"  # a paste as a terminal with bracketed paste sends it


class Terminal:
    """A `_Tui` on a pipe, run on its own thread: keys in, shown lines out, each waited for."""

    def __init__(self, client: Client, pipe: object, switch_to: object = None) -> None:
        from securechat.client.display import PLAIN
        from securechat.client.tui import _Tui

        self.shown: list[str] = []
        self._lock = threading.Lock()
        self._waits: dict[str, threading.Event] = {}
        self.tui = _Tui(client, pipe, DummyOutput(), self._write, PLAIN, False, None)  # type: ignore[arg-type]
        self._line_is: tuple[str, threading.Event] | None = None
        self.tui.buffer.on_text_changed += self._typed
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.tui.run()))
        self.thread.start()

    def _write(self, line: str) -> None:
        with self._lock:
            self.shown.append(line)
            for fragment, event in self._waits.items():
                if fragment in line:
                    event.set()

    def _typed(self, _buffer: object) -> None:
        wanted = self._line_is
        if wanted is not None and self.tui.buffer.text == wanted[0]:
            wanted[1].set()

    def wait_shown(self, fragment: str) -> None:
        with self._lock:
            event = self._waits.setdefault(fragment, threading.Event())
            if any(fragment in line for line in self.shown):
                event.set()
        assert event.wait(TIMEOUT), f"never shown: {fragment!r}; the last lines: {self.shown[-5:]}"

    def type_line(self, pipe: object, text: str) -> None:
        """Type `text` into the input line (no Enter), and wait until the line holds it."""
        event = threading.Event()
        self._line_is = (text, event)
        pipe.send_text(text)  # type: ignore[attr-defined]
        assert event.wait(TIMEOUT), f"the input line never read {text!r}"

    def quit(self, pipe: object) -> None:
        pipe.send_text("/quit\r")  # type: ignore[attr-defined]
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


SECRET = "the door code is 4711"


def test_a_paste_stops_at_a_command_that_failed_and_nothing_after_it_is_sent(
    server: object, client_ctx: object
) -> None:
    """Review 2: "/quer bob", "/query bob?" or "/window 7" followed by a line, pasted (or
    typed ahead in one read), said that line in the room in clear. Each is refused whole
    now, with a notice; a paste whose command worked whispers the rest to whom it opened."""
    from whisper_helpers import login, memory_keys

    from securechat.client.events import WhisperReceived

    bob = login(server, client_ctx, "bob", memory_keys("bob"))  # type: ignore[arg-type]
    alice = login(server, client_ctx, "alice", memory_keys("alice"))  # type: ignore[arg-type]
    try:
        with create_pipe_input() as pipe:
            term = Terminal(alice, pipe)
            for command in ("/quer bob", "/query bob?", "/window 7"):
                pipe.send_text(BRACKETED.format(f"{command}\n{SECRET}") + "\r")
                term.wait_shown(f"! the rest of the paste was not sent: {command}")
            pipe.send_text("/window 9\rtyped ahead: " + SECRET + "\r")  # keys in one read: a paste
            term.wait_shown("! the rest of the paste was not sent: /window 9")
            pipe.send_text("a room line\r")
            # The first line alice says in the room: nothing of the refused pastes came before it.
            assert next_matching(bob, Message, nick="alice").text == "a room line"  # type: ignore[attr-defined]
            pipe.send_text(BRACKETED.format(f"/query bob\n{SECRET}") + "\r")
            got = bob.wait_for_any(WhisperReceived, TIMEOUT)
            assert isinstance(got, WhisperReceived) and got.text == SECRET
            term.quit(pipe)
    finally:
        bob.close()
    assert "! unknown command /quer; did you mean /query?" in term.shown


class Frames:
    """A scripted server's view of one client connection: what it sent, by type, waited for."""

    def __init__(self) -> None:
        self._frames: list[dict[str, object]] = []
        self._cond = threading.Condition()

    def add(self, frame: dict[str, object]) -> None:
        with self._cond:
            self._frames.append(frame)
            self._cond.notify_all()

    def wait(self, kind: str) -> dict[str, object]:
        """The first frame of type `kind` not yet waited for."""
        with self._cond:
            found = self._cond.wait_for(lambda: any(f["type"] == kind for f in self._frames), TIMEOUT)
            assert found, f"no {kind} frame; got {self._frames}"
            frame = next(f for f in self._frames if f["type"] == kind)
            self._frames.remove(frame)
            return frame

    def said(self) -> list[dict[str, object]]:
        with self._cond:
            return [f for f in self._frames if f["type"] == "say"]


WELCOME_V2 = {"type": "welcome", "version": 2, "nick": "alice", "room": "#lobby", "users": ["alice", "bob"]}


def _entered(room: str) -> dict[str, object]:
    return {"type": "entered", "room": room, "users": ["alice", "bob"]}


def _serve_until_quit(conn: object, frames: Frames, answer: dict[str, object] | None = None) -> None:
    """Record the client's frames until its quit; a join of a room in `answer` (a dict
    from room to a threading.Event to wait for, then the frame to send) is answered so."""
    while True:
        frame = conn.read_frame()  # type: ignore[attr-defined]
        frames.add(frame)
        if frame["type"] == "quit":
            conn.send({"type": "bye", "reason": "goodbye"})  # type: ignore[attr-defined]
            return
        if frame["type"] == "join" and answer is not None and frame["room"] in answer:
            release, reply = answer[frame["room"]]  # type: ignore[misc]
            assert release.wait(TIMEOUT)
            conn.send(reply)  # type: ignore[attr-defined]


@pytest.fixture
def scripted_alice(server_ctx: object, client_ctx: object) -> Iterator[Callable[..., Client]]:
    """`scripted_alice(script, **client_args)`: a guest alice logged in to a scripted server."""
    from hostile_server import HostileServer

    from securechat.client.backoff import Backoff

    made: list[tuple[Client, HostileServer]] = []

    def make(script: object, **kwargs: object) -> Client:
        server = HostileServer(server_ctx, script)  # type: ignore[arg-type]
        args: dict[str, object] = {"timeout": TIMEOUT, "backoff": Backoff(base=0.05, cap=0.2), **kwargs}
        client = Client("alice", context=client_ctx, port=server.port, **args)  # type: ignore[arg-type]
        made.append((client, server))
        client.connect()
        return client

    yield make
    for client, server in made:
        client.close()
        server.close()


def test_a_room_entered_after_the_user_moved_on_never_takes_their_line(
    scripted_alice: Callable[..., Client],
) -> None:
    """Review 2: /join #dev, then off to bob's whisper window to type; #dev's `entered`
    arriving then switched to #dev, and Enter said the line there in clear. The window
    stays where the user went, and the line goes where it was typed."""
    frames = Frames()
    release = threading.Event()

    def script(conn: object, index: int) -> None:
        conn.read_frame()  # type: ignore[attr-defined]
        conn.send(WELCOME_V2)  # type: ignore[attr-defined]
        conn.send(_entered("#lobby"))  # type: ignore[attr-defined]
        _serve_until_quit(conn, frames, {"#dev": (release, _entered("#dev"))})

    alice = scripted_alice(script)
    with create_pipe_input() as pipe:
        term = Terminal(alice, pipe)
        pipe.send_text("/query bob\r")
        term.wait_shown("* whispering bob")
        pipe.send_text("/window 1\r")
        pipe.send_text("/join #dev\r")
        assert frames.wait("join")["room"] == "#dev"
        pipe.send_text("\x1b2")  # Alt+2: bob's window
        term.type_line(pipe, "my pin is 1234")
        release.set()  # the server answers the join now
        term.wait_shown("* you are in #dev")
        pipe.send_text("\r")
        term.wait_shown("! ")  # a guest cannot whisper: refused, and said so
        term.quit(pipe)
        frames.wait("quit")
    assert not [f for f in frames.said() if "1234" in str(f["text"])], frames.said()


def test_a_join_that_failed_leaves_no_window_switch_behind(scripted_alice: Callable[..., Client]) -> None:
    """Review 2: a refused /join (or one typed while offline) left its room waiting to be
    focused; its `entered` much later (the client's own rejoin) switched the window under
    the user. A refusal naming the room, or a join that could not be sent, ends the wait."""
    frames = [Frames(), Frames()]
    later = threading.Event()
    drop = threading.Event()
    back = threading.Event()

    def script(conn: object, index: int) -> None:
        conn.read_frame()  # type: ignore[attr-defined]
        if index == 1:
            assert back.wait(TIMEOUT)  # held at login: the client is offline meanwhile
        conn.send(WELCOME_V2)  # type: ignore[attr-defined]
        conn.send(_entered("#lobby"))  # type: ignore[attr-defined]
        if index == 1:
            conn.send(_entered("#ops"))  # type: ignore[attr-defined]  # as a rejoin's answer would come
            _serve_until_quit(conn, frames[1])
            return
        refusal = {"type": "error", "code": "invite-only", "reason": "invite only", "ref": "#vip"}
        while (frame := conn.read_frame())["type"] != "join":  # type: ignore[attr-defined]
            frames[0].add(frame)
        conn.send(refusal)  # type: ignore[attr-defined]
        assert later.wait(TIMEOUT)
        conn.send(_entered("#vip"))  # type: ignore[attr-defined]
        while (frame := conn.read_frame())["type"] != "say":  # type: ignore[attr-defined]
            pass
        frames[0].add(frame)
        assert drop.wait(TIMEOUT)  # then the connection drops

    alice = scripted_alice(script, reconnect=True)
    with create_pipe_input() as pipe:
        term = Terminal(alice, pipe)
        pipe.send_text("/join #vip\r")
        term.wait_shown("! #vip: invite only")
        later.set()
        term.wait_shown("* you are in #vip")
        pipe.send_text("hello\r")
        assert frames[0].wait("say")["room"] == "#lobby"
        drop.set()
        term.wait_shown("reconnecting in")
        pipe.send_text("/join #ops\r")
        term.wait_shown("! not sent: reconnecting")
        back.set()
        term.wait_shown("* you are in #ops")
        pipe.send_text("hello again\r")
        assert frames[1].wait("say")["room"] == "#lobby"
        term.quit(pipe)


def test_a_peers_rename_leaves_their_whisper_window_where_it_was(server: object, client_ctx: object) -> None:
    """Review 2: bob's rename moved alice's whisper window to the new nick, and her next
    line was whispered there, unasked and unchecked. The window stays bob's, with a note;
    whispering bob2 is a /query of its own, which checks bob2's key like any first contact."""
    from whisper_helpers import login, memory_keys, wait_published_keys

    from securechat.client.events import WhisperReceived

    bob = login(server, client_ctx, "bob", memory_keys("bob"))  # type: ignore[arg-type]
    alice = login(server, client_ctx, "alice", memory_keys("alice"))  # type: ignore[arg-type]
    try:
        with create_pipe_input() as pipe:
            term = Terminal(alice, pipe)
            pipe.send_text("/query bob\r")
            term.wait_shown("* whispering bob")
            bob.rename("bob2")
            term.wait_shown("/query bob2 to whisper them there")
            assert term.tui._prompt() == "alice (whisper to bob)> "
            pipe.send_text("meant for bob\r")  # bob's nick is free now: nobody to whisper
            term.wait_shown("! nobody is registered as bob")
            wait_published_keys(bob)  # bob2's keys, which bob's client publishes after the rename
            pipe.send_text("/query bob2\r")
            term.wait_shown("* whispering bob2")
            pipe.send_text("hello bob2\r")
            got = bob.wait_for_any(WhisperReceived, TIMEOUT)  # the first whisper bob2 gets
            assert isinstance(got, WhisperReceived) and got.text == "hello bob2"
            term.quit(pipe)
    finally:
        bob.close()
    assert (
        "bob is now known as bob2; /query bob2 to whisper them there: their key will be checked"
        in "\n".join(term.shown)
    )


def test_a_contacts_whisper_window_follows_their_rename_once_their_key_is_checked(
    server: object, client_ctx: object
) -> None:
    """Review 2: a verified contact's key carried over to a new nick without a word. Now
    the client checks the new nick's key (client/session.py) and the terminal says so,
    and only then does the whisper window follow."""
    from whisper_helpers import login, memory_keys, wait_published_keys

    from securechat.client.events import WhisperReceived

    bob = login(server, client_ctx, "bob", memory_keys("bob"))  # type: ignore[arg-type]
    alice = login(server, client_ctx, "alice", memory_keys("alice"))  # type: ignore[arg-type]
    try:
        with create_pipe_input() as pipe:
            term = Terminal(alice, pipe)
            pipe.send_text("/query bob\r")
            term.wait_shown("* whispering bob")
            pipe.send_text("first\r")
            got = bob.wait_for_any(WhisperReceived, TIMEOUT)
            assert isinstance(got, WhisperReceived) and got.text == "first"
            bob.rename("bob2")
            wait_published_keys(bob)
            term.wait_shown("* bob2 holds the key you knew as bob (not verified: /verify bob2)")
            assert term.tui._prompt() == "alice (whisper to bob2)> "
            pipe.send_text("second\r")
            got = bob.wait_for_any(WhisperReceived, TIMEOUT)
            assert isinstance(got, WhisperReceived) and got.text == "second"
            term.quit(pipe)
    finally:
        bob.close()


def test_ignoring_hides_their_invitations_and_follows_their_renames() -> None:
    """Review 2: /ignore left an ignored nick's invitations on screen."""
    from securechat.client.state import ChatState
    from securechat.protocol import Invited, Renamed

    state = ChatState(nick="alice", server="h:1")
    state.ignored.add("carol")
    assert state.hides(Invited(room="#dev", nick="alice", by="Carol"))
    assert not state.hides(Invited(room="#dev", nick="alice", by="bob"))
    assert not state.hides(Invited(room="#dev", nick="carol", by="alice"))  # the answer to our own
    state.apply(Renamed(old="carol", new="carol2"))
    assert state.hides(Message(room="#lobby", nick="carol2", text="still here", ts=0.0))
    assert state.hides(Invited(room="#dev", nick="alice", by="carol2"))


def test_a_line_half_typed_when_a_contacts_window_follows_their_rename_goes_to_the_new_nick(
    server: object, client_ctx: object
) -> None:
    """Review 3: the whisper window followed bob to bob2 (his key checked) while a line was
    half typed in it; Enter whispered it to "bob", a nick now free for anyone to take."""
    from whisper_helpers import login, memory_keys, wait_published_keys

    from securechat.client.events import WhisperReceived

    bob = login(server, client_ctx, "bob", memory_keys("bob"))  # type: ignore[arg-type]
    alice = login(server, client_ctx, "alice", memory_keys("alice"))  # type: ignore[arg-type]
    try:
        with create_pipe_input() as pipe:
            term = Terminal(alice, pipe)
            pipe.send_text("/query bob\r")
            term.wait_shown("* whispering bob")
            pipe.send_text("first\r")
            got = bob.wait_for_any(WhisperReceived, TIMEOUT)
            assert isinstance(got, WhisperReceived) and got.text == "first"
            term.type_line(pipe, "half")  # the line's destination is fixed now
            bob.rename("bob2")
            wait_published_keys(bob)
            term.wait_shown("* bob2 holds the key you knew as bob")
            assert term.tui._prompt() == "alice (whisper to bob2)> "
            pipe.send_text(" typed\r")
            got = bob.wait_for_any(WhisperReceived, TIMEOUT)
            assert isinstance(got, WhisperReceived) and got.text == "half typed"
            term.quit(pipe)
    finally:
        bob.close()
