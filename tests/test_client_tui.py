"""The terminal front end driven through prompt_toolkit's pipe input."""

from __future__ import annotations

import re
import threading

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

    def write(line: str) -> None:
        with lock:
            shown.append(line)
        if "* in #lobby: alice, bob" in line:
            seen_names.set()

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
        pipe.send_text("/wo\r/help quit\r//slash\r")
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
    shown: list[str] = []
    with create_pipe_input() as pipe:
        ui = threading.Thread(
            target=run_tui,
            args=(alice,),
            kwargs={"pt_input": pipe, "pt_output": DummyOutput(), "write": shown.append},
        )
        ui.start()
        pipe.send_text("x" * 5000 + "\r/quit\r")
        ui.join(TIMEOUT)
    assert any(line.startswith("! not sent: text: longer than 4096 bytes") for line in shown)


def test_whisper_commands_in_the_terminal_ui(server: object, client_ctx: object) -> None:
    from whisper_helpers import login, memory_keys

    from securechat.client.events import WhisperReceived

    bob = login(server, client_ctx, "bob", memory_keys("bob"))  # type: ignore[arg-type]
    alice = login(server, client_ctx, "alice", memory_keys("alice"))  # type: ignore[arg-type]
    shown: list[str] = []
    seen = threading.Event()

    def write(line: str) -> None:
        shown.append(line)
        if "whisper to bob: delivered" in line or line.startswith("* bob: key"):
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
            pipe.send_text(
                f"/verify bob {number}\r/msg\r/r\r/r anyone?\r/trust bob\r/msg nobody hi\r"
                "/msg alice me\r/history bob\r/history bob x\r/history carol\r/quit\r"
            )
            ui.join(TIMEOUT)
    finally:
        bob.close()
    assert any(line.endswith("[\U0001f512 whisper to bob] psst") for line in shown)
    assert "* bob is verified: the number matches" in shown
    assert "! usage: /msg NICK TEXT" in shown
    assert "! usage: /r TEXT" in shown
    assert "! nobody has whispered you yet" in shown
    assert "! no changed key to accept for bob" in shown
    assert any("nobody" in line and line.startswith("!") for line in shown)
    assert "! not sent: you cannot whisper yourself: whispers go to someone else" in shown
    assert "* your last 1 whisper(s) with bob:" in shown
    assert any(line.endswith("[\U0001f512 to bob, delivered] psst") for line in shown)
    assert "! usage: /history NICK [N]" in shown
    assert "* no whispers with carol kept on this device" in shown


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

    with create_pipe_input() as pipe:
        ui = threading.Thread(
            target=run_tui,
            args=(alice,),
            kwargs={"pt_input": pipe, "pt_output": DummyOutput(), "write": write, "switch_to": switch_to},
        )
        ui.start()
        pipe.send_text("/identity carol\r")  # taken: alice stays alice
        assert refused.wait(TIMEOUT)
        pipe.send_text("/identity bad nick!\r/identity alice2\r")
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

    def write(line: str) -> None:
        shown.append(line)
        for fragment, event in list(seen.items()):
            if fragment in line:
                event.set()

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
            pipe.send_text("anyone?\r/close\r")  # refused as /msg is; /close closes bbo's window
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
