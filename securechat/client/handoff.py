"""Hand a whisper to the process that holds the keystore (docs/usage.md, "One identity,
several programs").

A keystore has one holder process at a time (keystore.py): two processes advancing the
same ratchet would reuse a key. While a chat client or bot holds it, `securechat send`
under the same identity does not open it, and nobody is thrown out: it connects to the
holder's handoff socket, asks it to send, and reports what the holder's client reports.

The socket is `handoff.sock` in the keystore directory (0700), made 0600, and the holder
answers only a peer of its own user id (`SO_PEERCRED`): another user on the machine can
neither connect nor pass the check. One JSON object per line each way, one request per
connection:

    {"type": "whisper", "to": NICK, "text": TEXT, "wait": SECONDS}
        -> {"type": "whisper_sent", "id": ID}, then each {"type": "whisper_status", ...}
           of that whisper until "delivered" or "failed" or `wait` seconds, then
           {"type": "done"}
    {"type": "say", "room": ROOM, "text": TEXT}  -> {"type": "relayed"}
    {"type": "attach"}
        -> JSON mode over the connection (jsonmode.serve_attached): the running client's
           events as they come, the attached program's commands acted on, until it sends
           "quit" or closes its side (`securechat client --json` under a held identity)

and {"type": "error", "reason": ...} when the holder refuses or cannot send.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO, TypeVar

from ..e2e.errors import E2EError
from ..protocol import DEFAULT_ROOM, Error, Message, fold_nick, fold_room
from .session import Client

__all__ = ["SOCKET_NAME", "AttachedClient", "HandoffRefused", "HandoffServer", "attach", "hand_off"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: In the keystore directory.
SOCKET_NAME = "handoff.sock"
#: A request line at most: a whisper's text (4 KiB, JSON-escaped up to six times) and room.
_MAX_REQUEST = 64 * 1024
#: How long a holder waits for a request line after a connection.
_REQUEST_TIMEOUT = 10.0
#: Linux's limit on a socket path (sun_path), terminating NUL included.
_MAX_PATH = 108
#: How long a room line handed over waits for the server's echo (as `send --room`).
_ECHO_WAIT = 5.0
#: A send to a handoff peer that has not been read for this long ends that connection.
_SEND_TIMEOUT = 10.0


class HandoffRefused(Exception):
    """There is no holder to hand to (no socket, or it does not answer)."""


def socket_path(directory: Path) -> Path:
    return directory / SOCKET_NAME


class HandoffServer:
    """Answers handoff requests for `client`, which holds the keystore in `directory`.

    `start` binds the socket and starts the accepting thread; each connection is served
    by a thread of its own; `close` (any thread) removes the socket and waits for them.
    """

    def __init__(self, client: Client, directory: Path) -> None:
        self._client = client
        self._path = socket_path(directory)
        # Written once by `start`, before the accepting thread exists; closed by `close`.
        self._listener: socket.socket | None = None
        self._bound: tuple[int, int] | None = None  # the socket file's (dev, ino); as _listener
        self._threads: list[threading.Thread] = []  # guarded by _lock
        self._conns: set[socket.socket] = set()  # connections being served; guarded by _lock
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def start(self) -> None:
        """Listen. The caller holds the keystore, so a socket left by a crashed holder is
        stale and is replaced. Raises `OSError`."""
        self._path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _addressable(self._path) as address:
                listener.bind(address)
            # Made 0600 after the bind: until then only the 0700 directory's owner could
            # reach it anyway (the umask, which would avoid the moment, is the whole
            # process's, and other threads create files).
            os.chmod(self._path, 0o600)
            info = os.stat(self._path)
            listener.listen(8)
        except OSError:
            listener.close()
            raise
        self._bound = (info.st_dev, info.st_ino)
        self._listener = listener
        thread = threading.Thread(target=self._accept, name="securechat-handoff", daemon=True)
        thread.start()
        with self._lock:
            self._threads.append(thread)

    def close(self) -> None:
        """Stop answering: the socket goes (only ours: a rename may have moved it, and
        another holder may have bound that path since), connections being served are cut,
        and their threads are waited for."""
        self._closed.set()
        listener = self._listener
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            with contextlib.suppress(OSError):
                info = os.stat(self._path)
                if (info.st_dev, info.st_ino) == self._bound:
                    self._path.unlink()
        with self._lock:
            threads, conns = list(self._threads), list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(_REQUEST_TIMEOUT)

    def _accept(self) -> None:
        """The accepting thread."""
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            thread = threading.Thread(
                target=self._serve, args=(conn,), name="securechat-handoff-conn", daemon=True
            )
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        """One connection's thread: check who it is, read one request, answer it."""
        with self._lock:
            if self._closed.is_set():
                conn.close()
                return
            self._conns.add(conn)
        # A program that stops reading (suspended, say) must not hold this thread for ever:
        # sends give up after this long (reads wait: an attached program may be idle).
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(_SEND_TIMEOUT), 0))
        with conn:
            try:
                if not _same_user(conn):
                    _send(conn, {"type": "error", "reason": "not your keystore"})
                    return
                conn.settimeout(_REQUEST_TIMEOUT)
                with conn.makefile("rb") as reader:
                    request = _read_line(reader)
                    conn.settimeout(None)
                    if request.get("type") == "attach":
                        self._attach(conn, reader)
                    else:
                        self._answer(conn, request)
            except (OSError, ValueError) as exc:
                log.info("handoff: %s", exc)
            finally:
                with self._lock:
                    self._conns.discard(conn)

    def _attach(self, conn: socket.socket, reader: BinaryIO) -> None:
        """A JSON program attached to this client until it detaches (its connection's thread)."""
        from .jsonmode import serve_attached  # jsonmode is the layer above this one's peers

        lines = (raw.decode("utf-8", "replace") for raw in iter(lambda: reader.readline(_MAX_REQUEST), b""))

        def hang_up() -> None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

        serve_attached(self._client, lines, lambda text: conn.sendall(text.encode()), hang_up)

    def _say(self, text: str, room: str) -> dict[str, Any]:
        """Say `text` in `room` and wait for the server's echo of it ("relayed") or its
        refusal (an error about that room), as `send --room` does on its own."""
        with self._client.watch_events() as events:
            self._client.say(text, room)
            for item in _within(events, _ECHO_WAIT):
                if (
                    isinstance(item, Message)
                    and fold_room(item.room) == fold_room(room)
                    and fold_nick(item.nick) == fold_nick(self._client.nick)
                    and item.text == text
                ):
                    return {"type": "relayed"}
                if isinstance(item, Error) and fold_room(item.ref) == fold_room(room):
                    return {"type": "error", "reason": item.reason}
        return {"type": "error", "reason": "the server did not echo the line in time"}

    def _answer(self, conn: socket.socket, request: dict[str, Any]) -> None:
        kind, text = request.get("type"), request.get("text")
        if not isinstance(text, str) or not text:
            _send(conn, {"type": "error", "reason": "no text"})
            return
        try:
            if kind == "say":
                room = request.get("room", DEFAULT_ROOM)
                _send(conn, self._say(text, room if isinstance(room, str) else DEFAULT_ROOM))
                return
            to, wait = request.get("to"), request.get("wait", 5.0)
            if kind != "whisper" or not isinstance(to, str):
                _send(conn, {"type": "error", "reason": "unknown request"})
                return
            seconds = float(wait) if isinstance(wait, (int, float)) else 5.0
            with self._client.watch_statuses() as statuses:
                msg_id = self._client.whisper(to, text)
                _send(conn, {"type": "whisper_sent", "id": msg_id})
                for status in _within(statuses, max(0.0, min(seconds, 600.0))):
                    if status.id != msg_id:
                        continue
                    _send(conn, status.to_dict())
                    if status.status in ("delivered", "failed"):
                        break
            _send(conn, {"type": "done"})
        except (E2EError, LookupError, ConnectionError, TimeoutError, ValueError) as exc:
            _send(conn, {"type": "error", "reason": str(exc)})


def _within(items: queue.Queue[_T], seconds: float) -> Iterator[_T]:
    """What arrives in `items` within `seconds` from now (the caller stops early at will)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            yield items.get(timeout=left)
        except queue.Empty:
            return


def attach(directory: Path, stdin: TextIO, stdout: TextIO) -> int:
    """`securechat client --json` while another process holds the keystore: JSON mode
    through the holder (its events out, our commands in) until our input ends or a
    "quit" (which detaches; the holder goes on) or the holder goes away. Raises
    `HandoffRefused` if nothing listens. Returns 0, or 1 if the holder went away first."""
    conn = _connect(directory)
    try:
        _send(conn, {"type": "attach"})
        holder_gone = threading.Event()
        detaching = threading.Event()  # our input ended, or we said "quit"

        def commands() -> None:
            """Our input to the holder (its thread); at its end our side is closed, which
            detaches us, as a "quit" does."""
            with contextlib.suppress(OSError):
                for line in stdin:
                    if holder_gone.is_set():
                        return
                    if _is_quit(line):
                        detaching.set()
                    conn.sendall(line.encode() if line.endswith("\n") else (line + "\n").encode())
                detaching.set()
                conn.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=commands, name="securechat-attach-in", daemon=True)
        sender.start()
        with conn.makefile("rb") as reader:
            for raw in iter(lambda: reader.readline(_MAX_REQUEST), b""):
                stdout.write(raw.decode("utf-8", "replace"))
                stdout.flush()
        holder_gone.set()
        return 0 if detaching.is_set() else 1  # else the holder ended it
    finally:
        conn.close()


class AttachedClient:
    """A Python program's way in when another process of yours holds the keystore in
    `directory` (`Keystore.open` raised `KeystoreBusy`): it works through that process's
    client, as `securechat client --json` does. Commands are JSON mode's objects (docs/
    usage.md, "JSON mode"), `whisper` and `say` send the common two; events are JSON
    mode's objects (dicts), from attaching on. `close` (or leaving `with`) detaches; the
    holder goes on.

    Raises `HandoffRefused` if nothing holds the keystore (open it yourself then). Any
    thread may send; one thread reads events (`next_event`, iteration)."""

    def __init__(self, directory: Path, timeout: float = 10.0) -> None:
        self._conn = _connect(directory, timeout)
        self._conn.settimeout(None)
        # Guards writes to the connection (commands from several threads, one line each).
        self._send_lock = threading.Lock()
        # Filled by the reader thread; None once the holder is gone. Thread-safe itself.
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._gone = False  # set by the reading thread once None was taken
        _send(self._conn, {"type": "attach"})
        self._reader = threading.Thread(target=self._read, name="securechat-attached", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """The reader thread: the holder's lines, as objects, until it closes."""
        try:
            with self._conn.makefile("rb") as reader:
                for raw in iter(lambda: reader.readline(_MAX_REQUEST), b""):
                    with contextlib.suppress(ValueError):
                        obj = json.loads(raw)
                        if isinstance(obj, dict):
                            self._events.put(obj)
        except OSError:
            pass
        finally:
            self._events.put(None)

    def command(self, obj: dict[str, Any]) -> None:
        """Send one JSON-mode command. Raises `ConnectionError` once the holder is gone."""
        line = (json.dumps(obj) + "\n").encode()
        with self._send_lock:
            try:
                self._conn.sendall(line)
            except OSError as exc:
                raise ConnectionError(f"the client holding your keys is gone: {exc}") from None

    def whisper(self, to: str, text: str) -> None:
        """Have the holder whisper `to`; its `whisper_sent` and statuses come as events."""
        self.command({"type": "whisper", "to": to, "text": text})

    def say(self, text: str, room: str = DEFAULT_ROOM) -> None:
        self.command({"type": "say", "text": text, "room": room})

    def next_event(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event. Raises `TimeoutError`, or `ConnectionError` once the holder is
        gone (and at every call after)."""
        if self._gone:
            raise ConnectionError("the client holding your keys is gone")
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event within {timeout} s") from None
        if item is None:
            self._gone = True
            raise ConnectionError("the client holding your keys is gone")
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                yield self.next_event()
            except ConnectionError:
                return

    def close(self) -> None:
        """Detach (the holder goes on) and wait for the reading thread."""
        with contextlib.suppress(OSError):
            self._conn.shutdown(socket.SHUT_RDWR)
        self._conn.close()
        self._reader.join()

    def __enter__(self) -> AttachedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hand_off(directory: Path, request: dict[str, Any], timeout: float) -> Iterator[dict[str, Any]]:
    """Send `request` to the holder of the keystore in `directory`; yields its answers.
    Raises `HandoffRefused` if there is no holder listening; `OSError` or `TimeoutError`
    if it stops answering."""
    conn = _connect(directory, timeout)
    try:
        _send(conn, request)
        with conn.makefile("rb") as reader:
            while True:
                answer = _read_line(reader)
                yield answer
                if answer.get("type") in ("done", "relayed", "error"):
                    return
    finally:
        conn.close()


@contextlib.contextmanager
def _addressable(path: Path) -> Iterator[str]:
    """`path` as a socket address: itself, or, when it is longer than a socket path may
    be (108 bytes on Linux; a keystore deep in a long home directory), the same file
    reached through an open descriptor of its directory (/proc/self/fd/N/NAME)."""
    if len(os.fsencode(path)) < _MAX_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _connect(directory: Path, timeout: float | None = None) -> socket.socket:
    """A connection to the holder of the keystore in `directory`, after checking that the
    directory is ours and private and that the process answering is ours: a directory
    others can write to (a --keys of the user's choice) could hold someone else's socket,
    which would get the whisper in the clear. Raises `HandoffRefused`."""
    try:
        info = os.stat(directory)
    except OSError as exc:
        raise HandoffRefused(str(exc)) from None
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise HandoffRefused(f"{directory} is not private to you: no handoff through it")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        with _addressable(socket_path(directory)) as address:
            conn.connect(address)
        if not _same_user(conn):
            raise HandoffRefused("the process answering for your keystore is not yours")
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        conn.close()
        raise HandoffRefused(str(exc)) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _is_quit(line: str) -> bool:
    try:
        command = json.loads(line)
    except ValueError:
        return False
    return isinstance(command, dict) and command.get("type") == "quit"


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
    _pid, uid, _gid = struct.unpack("iII", creds)  # uid_t and gid_t are unsigned
    return bool(uid == os.getuid())


def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
    conn.sendall(json.dumps(obj).encode() + b"\n")


def _read_line(reader: BinaryIO) -> dict[str, Any]:
    """One JSON object line. Raises `ValueError` for anything else or a line too long,
    `OSError` (`TimeoutError`) as the socket does, `ConnectionError` at the end."""
    data = reader.readline(_MAX_REQUEST + 1)
    if not data.endswith(b"\n"):
        if len(data) > _MAX_REQUEST:
            raise ValueError("handoff line too long")
        raise ConnectionError("the other side closed the handoff")
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("handoff line is not an object")
    return obj
