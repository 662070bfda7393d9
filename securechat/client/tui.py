"""The terminal front end: the only place in the client that prints.

The input line is a prompt_toolkit prompt; incoming events print above it through
`patch_stdout`, so a half-typed line is never garbled by arriving messages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prompt_toolkit import PromptSession
from prompt_toolkit.input import Input as PtInput
from prompt_toolkit.output import Output as PtOutput
from prompt_toolkit.patch_stdout import patch_stdout

from .commands import Command, Text, Unknown, help_lines, parse_input
from .display import format_event, sanitize
from .session import Client, Disconnected

__all__ = ["run_tui"]


def run_tui(
    client: Client,
    *,
    pt_input: PtInput | None = None,
    pt_output: PtOutput | None = None,
    write: Callable[[str], None] = print,
) -> int:
    """Chat interactively on a connected `client` until /quit, EOF or disconnection.

    Returns a process exit status: 0 after a clean quit, 1 if the connection was lost.
    """
    # erase_when_done: the server echoes what we said, in the order everyone sees it;
    # leaving the typed line too would show every line twice.
    session: PromptSession[str] = PromptSession(input=pt_input, output=pt_output, erase_when_done=True)
    lost = threading.Event()
    outcome: list[str] = []

    def stop_prompt() -> None:
        app = session.app
        if app.is_running and app.loop is not None:
            app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()) if app.is_running else None)

    def pump() -> None:
        while True:
            item = client.next_event()
            if isinstance(item, Disconnected):
                outcome.append(item.reason)
                write(f"* disconnected: {sanitize(item.reason)}")
                lost.set()
                stop_prompt()
                return
            for line in format_event(item):
                write(line)

    def check_lost() -> None:
        if lost.is_set():
            session.app.exit(exception=EOFError())

    quitting = False
    with patch_stdout(raw=True):
        if client.welcome is not None:
            for line in format_event(client.welcome):
                write(line)
        reader = threading.Thread(target=pump, name="securechat-tui-pump", daemon=True)
        reader.start()
        while not lost.is_set():
            try:
                line = session.prompt(f"{client.nick}> ", pre_run=check_lost)
            except (EOFError, KeyboardInterrupt):
                line = "/quit"
            if lost.is_set():
                break
            quitting = _act(client, line, write) or quitting
            if quitting:
                break
        reader.join(timeout=10.0)
    client.close()
    return 0 if quitting or not outcome else 1


def _act(client: Client, line: str, write: Callable[[str], None]) -> bool:
    """Carry out one input line; True when it was a quit."""
    parsed = parse_input(line)
    try:
        if isinstance(parsed, Text):
            client.say(parsed.text)
        elif isinstance(parsed, Command):
            if parsed.name in ("who", "names"):
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
