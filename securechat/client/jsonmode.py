"""`securechat client --json`: the client for programs, one JSON object per line each way.

Out (stdout): every event, as the frame's own JSON (`message`, `joined`, `whisper_status`,
...) or, for what the client makes itself, `whisper` (a decrypted whisper),
`whisper_failed`, `key_changed`, `not_post_quantum`, `resend_pending`, `storage_failed`, `reconnecting`,
`reconnected`, and last `disconnected`. A `whisper` with `"replay": true` was kept
before the client last stopped and may have been printed then too: dedupe by `msg_id`.
A whisper counts as printed once the next event is printed. A whisper's `whisper_sent` is
printed before any `whisper_status` of it.
Output is UTF-8, but controls (C0, DEL, C1), Unicode format characters (bidi overrides,
zero-width characters, the BOM), lone surrogates and U+2028/U+2029 are written as JSON
`\\uXXXX` escapes: a program that parses the line gets the exact text, and one that
shows or logs the raw line shows nothing invisible or reordering.
Answers to commands: `whisper_sent`, `safety_number`, `whois`, `verified`, `history`,
`in_rooms`, `command_error`.

In (stdin), one object per line, its `type` naming the command (every field and an example
of each in docs/usage.md, "JSON mode"): `say` (text, room="#lobby", action=false),
`whisper` (to, text), `reply` (text), `who` (room="#lobby"), `safety_number` (nick),
`whois` (nick: fingerprint, trust, a pending changed key, and whether the session is
post-quantum),
`verify` (nick, number), `trust` (nick), `history` (nick, last=20), `away` (message=""),
the room commands `join` (room), `part` (room, reason=""), `names` (room), `topic` (room,
topic), `list` (pattern=""), `invite` (room, nick), `kick` (room, nick, reason=""),
`ban` / `unban` (room, mask), `bans` (room), `mode` (room, invite_only), `register`
(room), `op` / `deop` / `transfer` (room, nick), `nick` (nick: rename yourself), `in_rooms`
(answered by `in_rooms`: the rooms you are in), and `quit` (reason=""). End of input quits.
The server's answers to room commands are its frames (`entered`, `left`, `room_changed`,
`rooms`, `invited`, `ban_list`, `renamed`, `names`), a refusal an `error` whose `ref` is the
room as sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import queue
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from ..e2e.errors import E2EError
from ..protocol import DEFAULT_ROOM, Event
from .display import is_unsafe
from .events import (
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
from .inbox import HISTORY_SHOWN
from .session import Client, Disconnected

__all__ = ["dumps", "run_json"]

#: Candidates for escaping beyond what `json.dumps` escapes itself (C0, '"', '\\'):
#: DEL and everything outside ASCII; `is_unsafe` decides for each.
_MAYBE_UNSAFE = re.compile(r"[^\x00-\x7e]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if not is_unsafe(ch):
        return ch
    code = ord(ch)
    if code > 0xFFFF:  # JSON escapes astral characters as a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def dumps(obj: dict[str, Any]) -> str:
    """One output line: JSON, readable UTF-8, with every unsafe character escaped.

    Safe characters can only sit inside JSON strings here (the rest of the syntax is
    ASCII), so replacing them by escapes keeps the JSON valid and its value unchanged.
    """
    return _MAYBE_UNSAFE.sub(_escape, json.dumps(obj, ensure_ascii=False))


_CLIENT_EVENT_TYPES: dict[type, str] = {
    WhisperReceived: "whisper",
    WhisperCopied: "whisper_copied",
    DeviceUnreachable: "device_unreachable",
    WhisperFailed: "whisper_failed",
    KeyChanged: "key_changed",
    KnownKeyRenamed: "known_key_renamed",
    NotPostQuantum: "not_post_quantum",
    RenameUnconfirmed: "rename_unconfirmed",
    ResendPending: "resend_pending",
    StorageFailed: "storage_failed",
    Reconnecting: "reconnecting",
    Reconnected: "reconnected",
    Disconnected: "disconnected",
}


def _as_json(item: object) -> dict[str, Any]:
    if isinstance(item, Event):
        return item.to_dict()
    kind = _CLIENT_EVENT_TYPES[type(item)]
    body = dataclasses.asdict(item)  # type: ignore[call-overload]
    return {"type": kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in body.items()}}


#: What a command may fail with: told to the program as a `command_error`, never fatal.
_COMMAND_ERRORS = (ValueError, KeyError, TypeError, LookupError, E2EError, ConnectionError, TimeoutError)


def run_json(client: Client, stdin: TextIO, stdout: TextIO) -> int:
    """Serve one connected client over JSON lines until quit, end of input or disconnection.

    Returns 0 after a requested quit, 1 if the connection ended otherwise.
    """
    # Re-entrant: a whisper command holds it from sending its frame until its
    # `whisper_sent` is out, so that no status of that whisper is printed before it.
    lock = threading.RLock()

    def emit(obj: dict[str, Any]) -> None:
        with lock:
            stdout.write(dumps(obj) + "\n")
            stdout.flush()

    ended = threading.Event()
    lost: list[bool] = []

    def pump() -> None:
        while True:
            item = client.next_event()
            emit(_as_json(item))
            if isinstance(item, Disconnected):
                lost.append(not quitting.is_set())
                ended.set()
                return

    quitting = threading.Event()
    if client.welcome is not None:
        emit(client.welcome.to_dict())
    reader = threading.Thread(target=pump, name="securechat-json-pump", daemon=True)
    reader.start()
    for line in stdin:
        if ended.is_set():
            break
        _command_line(client, line, emit, lock, quitting)
        if quitting.is_set():
            break
    if not ended.is_set() and not quitting.is_set():
        quitting.set()
        with contextlib.suppress(ConnectionError):
            client.quit("end of input")
    ended.wait(15.0)
    client.close()
    reader.join(5.0)
    return 1 if lost and lost[0] else 0


def serve_attached(
    client: Client, lines: Iterable[str], write: Callable[[str], None], hang_up: Callable[[], None]
) -> None:
    """JSON mode for a program attached to a running client (`securechat client --json`
    while another process holds the identity's keystore: client/handoff.py). It sees every
    event the running client's own program takes, from now on (a second view of it, not a
    second reader), and its commands act on that client; "quit" or the end of its input
    detaches it: the client itself goes on, never quit or closed from here. Returns when
    detached, or once the client is disconnected or the program stops reading (then
    `hang_up` ends its connection, so that it is let go even while it waits to be told
    something). Called by the handoff connection's thread."""
    lock = threading.RLock()  # as in `run_json`: whisper_sent before any status of it

    def emit(obj: dict[str, Any]) -> None:
        with lock:
            write(dumps(obj) + "\n")

    done = threading.Event()
    with client.watch_events() as events:

        def pump() -> None:
            """The attached program's event thread."""
            while not done.is_set():
                try:
                    item = events.get(timeout=0.2)  # and look at `done` between events
                except queue.Empty:
                    continue
                try:
                    emit(_as_json(item))
                except OSError:  # the attached program went away
                    break
                if isinstance(item, Disconnected):
                    break
            done.set()
            hang_up()  # the command loop may be waiting for a line that never comes

        if client.welcome is not None:
            emit(client.welcome.to_dict())
        thread = threading.Thread(target=pump, name="securechat-json-attached", daemon=True)
        thread.start()
        try:
            for line in lines:
                if done.is_set() or _command_line(client, line, emit, lock, detach=True):
                    break
        finally:
            done.set()
            thread.join(5.0)


def _command_line(
    client: Client,
    line: str,
    emit: Callable[[dict[str, Any]], None],
    lock: threading.RLock,
    quitting: threading.Event | None = None,
    *,
    detach: bool = False,
) -> bool:
    """Run one command line; a failure is told as a `command_error`. With `detach` (an
    attached program), "quit" only returns True, for the caller to detach, and acts on
    nothing; otherwise it quits the client (`quitting` is set). The lock is held while
    the command runs (see `run_json`)."""
    if not line.strip():
        return False
    try:
        command = json.loads(line)
        if not isinstance(command, dict):
            raise ValueError("a command is a JSON object")
        if detach and command.get("type") == "quit":
            return True
        with lock:  # the pump waits meanwhile; the reader does not
            _run(client, command, emit, quitting or threading.Event())
    except _COMMAND_ERRORS as exc:
        emit({"type": "command_error", "reason": str(exc), "command": line.strip()[:200]})
    return False


def _flag(command: dict[str, Any], name: str) -> bool:
    value = command[name]
    if not isinstance(value, bool):
        raise TypeError(f"{name}: true or false")
    return value


#: The room commands: each sends one request; the server's answer is printed as its frame.
#: A missing field is a `command_error` naming it (a KeyError); optional ones default.
_ROOM_COMMANDS: dict[str, Callable[[Client, dict[str, Any]], None]] = {
    "join": lambda c, m: c.join(str(m["room"])),
    "part": lambda c, m: c.part(str(m["room"]), str(m.get("reason", ""))),
    "names": lambda c, m: c.names(str(m["room"])),
    "topic": lambda c, m: c.set_topic(str(m["room"]), str(m["topic"])),
    "list": lambda c, m: c.list_rooms(str(m.get("pattern", ""))),
    "invite": lambda c, m: c.invite(str(m["room"]), str(m["nick"])),
    "kick": lambda c, m: c.kick(str(m["room"]), str(m["nick"]), str(m.get("reason", ""))),
    "ban": lambda c, m: c.ban(str(m["room"]), str(m["mask"])),
    "unban": lambda c, m: c.unban(str(m["room"]), str(m["mask"])),
    "bans": lambda c, m: c.bans(str(m["room"])),
    "mode": lambda c, m: c.set_mode(str(m["room"]), _flag(m, "invite_only")),
    "register": lambda c, m: c.register_room(str(m["room"])),
    "op": lambda c, m: c.op(str(m["room"]), str(m["nick"])),
    "deop": lambda c, m: c.deop(str(m["room"]), str(m["nick"])),
    "transfer": lambda c, m: c.transfer(str(m["room"]), str(m["nick"])),
    "nick": lambda c, m: c.rename(str(m["nick"])),
}


def _run(client: Client, command: dict[str, Any], emit: Any, quitting: threading.Event) -> None:
    kind = command.get("type")
    if kind == "say":
        client.say(
            str(command["text"]),
            str(command.get("room", DEFAULT_ROOM)),
            action=bool(command.get("action", False)),
        )
    elif kind == "whisper":
        to = str(command["to"])
        emit({"type": "whisper_sent", "to": to, "id": client.whisper(to, str(command["text"]))})
    elif kind == "reply":
        to, msg_id = client.reply(str(command["text"]))
        emit({"type": "whisper_sent", "to": to, "id": msg_id})
    elif kind == "who":
        client.who(str(command.get("room", DEFAULT_ROOM)))
    elif kind == "safety_number":
        keys = client.keys
        if keys is None:
            raise LookupError("a guest has no keys")
        nick = str(command["nick"])
        emit({"type": "safety_number", "nick": nick, "number": keys.safety_number(nick)})
    elif kind == "whois":
        keys = client.keys
        if keys is None:
            raise LookupError("a guest has no keys")
        nick = str(command["nick"])
        info = keys.peer_info(nick)
        emit(
            {
                "type": "whois",
                "nick": nick,
                "known": info is not None,
                "fingerprint": None if info is None else info.identity.fingerprint(),
                "trust": None if info is None else info.trust.value,
                "pending_fingerprint": None
                if info is None or info.pending is None
                else info.pending.fingerprint(),
                "post_quantum": None if info is None else info.post_quantum,
            }
        )
    elif kind == "verify":
        nick = str(command["nick"])
        emit({"type": "verified", "nick": nick, "ok": client.verify(nick, str(command["number"]))})
    elif kind == "trust":
        client.trust(str(command["nick"]))
    elif kind == "history":
        nick = str(command["nick"])
        kept = client.history(nick, int(command.get("last", HISTORY_SHOWN)))
        emit(
            {
                "type": "history",
                "nick": nick,
                "messages": [
                    {
                        "direction": m.direction.value,
                        "peer": m.peer,
                        "msg_id": m.msg_id,
                        "state": m.state.value,
                        "ts": m.ts,
                        "text": m.text,
                    }
                    for m in kept
                ],
            }
        )
    elif kind in _ROOM_COMMANDS:
        _ROOM_COMMANDS[kind](client, command)
    elif kind == "in_rooms":
        emit({"type": "in_rooms", "rooms": list(client.rooms)})
    elif kind == "away":
        client.set_away(str(command.get("message", "")))
    elif kind == "quit":
        quitting.set()
        client.quit(str(command.get("reason", "")))
    else:
        raise ValueError(f"unknown command type {kind!r}")
