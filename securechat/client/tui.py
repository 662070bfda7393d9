"""The terminal front end: the only place in the client that prints.

The input line is a prompt_toolkit prompt; incoming events print above it through
`patch_stdout`, so a half-typed line is never garbled by arriving messages.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from prompt_toolkit import PromptSession
from prompt_toolkit.input import Input as PtInput
from prompt_toolkit.output import Output as PtOutput
from prompt_toolkit.patch_stdout import patch_stdout

from ..e2e.errors import BundleError, IdentityChanged, KeystoreError, NotTrusted
from ..protocol import Bye, Message, is_valid_nick
from .commands import Command, Text, Unknown, help_lines, parse_input
from .completion import ChatCompleter
from .display import PLAIN, Theme, block, clock, format_event, sanitize
from .events import KeyChanged, WhisperReceived
from .inbox import HISTORY_SHOWN, Direction
from .session import Client, Disconnected
from .state import ChatState

__all__ = ["run_tui"]


def run_tui(
    client: Client,
    *,
    pt_input: PtInput | None = None,
    pt_output: PtOutput | None = None,
    write: Callable[[str], None] = print,
    theme: Theme = PLAIN,
    bell: bool = True,
    switch_to: Callable[[str], Client] | None = None,
) -> int:
    """Chat interactively on a connected `client` until /quit, EOF or disconnection.

    `switch_to(nick)` returns a client connected as another nick, for /nick.
    Returns a process exit status: 0 after a clean quit, 1 if the connection was lost.
    """
    current = [client]  # /nick swaps in another connected client
    state = ChatState(nick=client.nick, server=f"{client.host}:{client.port}")
    if client.welcome is not None:
        state.apply(client.welcome)
    # erase_when_done: the server echoes what we said, in the order everyone sees it;
    # leaving the typed line too would show every line twice.
    session: PromptSession[str] = PromptSession(
        input=pt_input,
        output=pt_output,
        erase_when_done=True,
        completer=ChatCompleter(lambda: state.users.values()),
        complete_while_typing=False,  # Tab completes; typing is never interrupted
        bottom_toolbar=state.status_line,
    )
    lost = threading.Event()
    outcome: list[str] = []

    def show(item: object) -> None:
        if state.hides(item):
            return
        lines = format_event(item, theme=theme)  # type: ignore[arg-type]
        kind = None
        if isinstance(item, WhisperReceived):
            kind = "whisper"
        elif isinstance(item, KeyChanged):
            kind = "alarm"
        elif isinstance(item, Message) and not item.history and item.nick.lower() != current[0].nick.lower():
            kind = "mention" if state.mentions_me(item.text) else None
        for line in lines:
            write(theme.emphasis(line, kind) if kind else line)
        if kind and bell:
            session.app.output.bell()
        app = session.app
        if app.is_running and app.loop is not None:
            # Redraw the status bar, in the prompt's own loop; it may just have closed.
            with contextlib.suppress(RuntimeError):
                app.loop.call_soon_threadsafe(app.invalidate)

    def stop_prompt() -> None:
        app = session.app
        if app.is_running and app.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may just have closed
                app.loop.call_soon_threadsafe(
                    lambda: app.exit(exception=EOFError()) if app.is_running else None
                )

    def pump(source: Client) -> None:
        while True:
            item = source.next_event()
            if source is not current[0] and isinstance(item, (Bye, Disconnected)):
                if isinstance(item, Disconnected):
                    return  # the nick we just left: its end is not ours
                continue
            if isinstance(item, Disconnected):
                outcome.append(item.reason)
                write(f"* disconnected: {sanitize(item.reason)}")
                lost.set()
                stop_prompt()
                return
            state.apply(item)
            show(item)

    def check_lost() -> None:
        if lost.is_set():
            session.app.exit(exception=EOFError())

    quitting = False
    with patch_stdout(raw=True):
        if client.welcome is not None:
            for line in format_event(client.welcome, theme=theme):
                write(line)
        readers = {
            client: threading.Thread(target=pump, args=(client,), name="securechat-tui-pump", daemon=True)
        }
        readers[client].start()

        def switch(new_nick: str) -> None:
            if switch_to is None:
                write("! /nick is not available here")
                return
            old = current[0]
            try:
                new_client = switch_to(new_nick)
            except Exception as exc:  # connection, login or keystore: say why, stay who we are
                write(
                    f"! still {sanitize(old.nick)}: cannot become {sanitize(new_nick)}: {sanitize(str(exc))}"
                )
                return
            current[0] = new_client
            state.nick = new_client.nick
            if new_client.welcome is not None:
                state.apply(new_client.welcome)
            readers[new_client] = threading.Thread(
                target=pump, args=(new_client,), name="securechat-tui-pump", daemon=True
            )
            readers[new_client].start()
            with contextlib.suppress(ConnectionError):
                old.quit(f"now known as {new_client.nick}")
            # Let the server answer the quit before closing: closing with its answer
            # unread would reset the connection and could lose the quit itself.
            readers.pop(old).join(timeout=10.0)
            old.close()
            write(f"* you are now {sanitize(new_client.nick)}")

        while not lost.is_set():
            try:
                line = session.prompt(f"{current[0].nick}> ", pre_run=check_lost)
            except (EOFError, KeyboardInterrupt):
                line = "/quit"
            if lost.is_set():
                break
            state.unread_whispers = 0  # the user is here and typing: they have seen them
            parsed = parse_input(line)
            if isinstance(parsed, Command) and parsed.name == "nick":
                new_nick = parsed.arg.strip()
                if is_valid_nick(new_nick):
                    switch(new_nick)
                else:
                    write("! usage: /nick NEW (1-24 of A-Z a-z 0-9 _ - .)")
                continue
            quitting = _act(current[0], line, write, state, theme) or quitting
            if quitting:
                break
        for reader in readers.values():
            reader.join(timeout=10.0)
    current[0].close()
    return 0 if quitting or not outcome else 1


def _act(client: Client, line: str, write: Callable[[str], None], state: ChatState, theme: Theme) -> bool:
    """Carry out one input line; True when it was a quit."""
    parsed = parse_input(line)
    try:
        if isinstance(parsed, Text):
            client.say(parsed.text)
        elif isinstance(parsed, Command):
            if parsed.name in _WHISPER_COMMANDS:
                _whisper_command(client, parsed, write, theme)
            elif parsed.name == "me":
                if parsed.arg:
                    client.say(parsed.arg, action=True)
                else:
                    write("! usage: /me ACTION")
            elif parsed.name == "away":
                client.set_away(parsed.arg or "away")
                write(f"* you are away ({sanitize(parsed.arg or 'away')}); /back when you return")
            elif parsed.name == "back":
                client.set_away("")
                write("* welcome back")
            elif parsed.name in ("ignore", "unignore"):
                _ignore(parsed, write, state)
            elif parsed.name in ("who", "names"):
                client.who()
            elif parsed.name == "help":
                for text in help_lines(parsed.arg):
                    write(text)
            elif parsed.name == "quit":
                client.quit(parsed.arg)
                return True
        elif isinstance(parsed, Unknown):
            hint = f"; did you mean /{parsed.suggestion}?" if parsed.suggestion else "; /help lists commands"
            write(f"! unknown command /{sanitize(parsed.name)}{hint}")
    except ValueError as exc:  # e.g. text over 4 KiB: tell the person, keep the session
        write(f"! not sent: {exc}")
    except ConnectionError as exc:
        write(f"! not sent: {exc}")
    return False


def _ignore(cmd: Command, write: Callable[[str], None], state: ChatState) -> None:
    nick = cmd.arg.split(" ")[0]
    if not nick:
        ignored = ", ".join(sorted(state.ignored)) or "nobody"
        write(f"* usage: /{cmd.name} NICK (ignoring: {sanitize(ignored)})")
    elif cmd.name == "ignore":
        state.ignored.add(nick.lower())
        write(
            f"* ignoring {sanitize(nick)}: their lines and whispers are hidden (/unignore {sanitize(nick)})"
        )
    else:
        state.ignored.discard(nick.lower())
        write(f"* no longer ignoring {sanitize(nick)}")


_WHISPER_COMMANDS = frozenset({"msg", "w", "r", "verify", "trust", "whois", "history"})


def _stamp() -> str:
    return time.strftime("%H:%M")


def _whisper_command(client: Client, cmd: Command, write: Callable[[str], None], theme: Theme) -> None:
    nick, _, rest = cmd.arg.partition(" ")
    rest = rest.strip()
    try:
        if cmd.name in ("msg", "w"):
            if not nick or not rest:
                write(f"! usage: /{cmd.name} NICK TEXT")
                return
            client.whisper(nick, rest)
            _echo(write, nick, rest, theme)
        elif cmd.name == "r":
            if not cmd.arg:
                write("! usage: /r TEXT")
                return
            to, _ = client.reply(cmd.arg)
            _echo(write, to, cmd.arg, theme)
        elif not nick:
            write(f"! usage: {help_lines(cmd.name)[0].split(':')[0]}")
        elif cmd.name == "verify":
            _verify(client, nick, rest, write)
        elif cmd.name == "trust":
            client.trust(nick)
            who = sanitize(nick)
            write(f"* accepted {who}'s new key (unverified: compare numbers with /verify {who})")
        elif cmd.name == "whois":
            _whois(client, nick, write)
        elif cmd.name == "history":
            _history(client, nick, rest, write, theme)
    except IdentityChanged as exc:
        for line in format_event(
            KeyChanged(
                peer=exc.peer,
                old_fingerprint=exc.pinned_fingerprint,
                new_fingerprint=exc.new_fingerprint,
                held=0,
            )
        ):
            write(line)
    except BundleError as exc:
        write(
            f"! not sent: the server gave keys for {sanitize(nick)} that fail checks ({sanitize(str(exc))})"
        )
    except (LookupError, NotTrusted, TimeoutError, KeystoreError) as exc:
        write(f"! {sanitize(str(exc))}")


def _history(client: Client, nick: str, count: str, write: Callable[[str], None], theme: Theme) -> None:
    if count and not count.isdigit():
        write("! usage: /history NICK [N]")
        return
    kept = client.history(nick, int(count) if count else HISTORY_SHOWN)
    who = sanitize(nick)
    if not kept:
        write(f"* no whispers with {who} kept on this device")
        return
    write(f"* your last {len(kept)} whisper(s) with {who}:")
    lock = "e2e" if theme.ascii_only else "\U0001f512"
    for message in kept:
        if message.direction is Direction.IN:
            head = f"{clock(message.ts)} [{lock} from {theme.nick(message.peer)}] "
        else:
            head = f"{clock(message.ts)} [{lock} to {theme.nick(message.peer)}, {message.state.value}] "
        for line in block(head, message.text):
            write(theme.finish(line))


def _echo(write: Callable[[str], None], to: str, text: str, theme: Theme) -> None:
    lock = "e2e" if theme.ascii_only else "\U0001f512"
    head = f"{_stamp()} [{lock} whisper to {theme.nick(to)}] "
    lines = text.split("\n")
    write(head + sanitize(lines[0]))
    for line in lines[1:]:
        write(" " * len(head) + sanitize(line))


def _verify(client: Client, nick: str, number: str, write: Callable[[str], None]) -> None:
    who = sanitize(nick)
    if not number:
        if client.keys is None:
            raise NotTrusted("guests have no keys to verify")
        # On a line of its own: 71 characters fit an 80-column terminal unwrapped.
        write(f"* safety number with {who}:")
        write(f"  {client.keys.safety_number(nick)}")
        write(f"* compare with {who} (voice, in person), then: /verify {who} NUMBER")
    elif client.verify(nick, number):
        write(f"* {who} is verified: the number matches")
    else:
        write(f"! that is not your safety number with {who}: their key is NOT verified")


def _whois(client: Client, nick: str, write: Callable[[str], None]) -> None:
    who = sanitize(nick)
    info = client.keys.peer_info(nick) if client.keys is not None else None
    if info is None:
        write(f"* no key seen for {who} yet (whisper them, or wait for their whisper)")
        return
    identity, trust, pending = info
    write(f"* {who}: key {identity.fingerprint()}, {trust.value}")
    if pending is not None:
        write(f"! {who} now presents another key {pending.fingerprint()}: /verify {who} or /trust {who}")
