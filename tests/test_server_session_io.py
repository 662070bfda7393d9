"""The session's I/O shell (securechat/server/session/io.py) over real TLS: what only
the shell does (keepalive bookkeeping across the reader and watchdog threads). The
lingering close, overflow cut-offs and deadlines are covered in test_server_robustness.py
and test_server_limits.py, which drive whole servers."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading

from conftest import TIMEOUT, RawTls, StartServer

from securechat.protocol import PROTOCOL_VERSION
from securechat.server import Server
from securechat.server.session.io import Session

#: Long enough that the real watchdog never pings during the test: the test calls
#: `check_alive` itself, with the times it chooses.
INTERVAL = 1000.0


def _only_session(server: Server) -> Session:
    with server._lock:
        (session,) = server._sessions
    return session


def _pings_until_answered(quiet: RawTls, token: str) -> list[str]:
    """The pings the server sent before the answer to our ping `token`: the server
    answers in order, so a ping delivered before we asked comes before that answer."""
    quiet.send_line(json.dumps({"type": "ping", "token": token}))
    pings: list[str] = []
    while True:
        frame = quiet.read_json()  # raises TimeoutError if the answer never comes
        if frame["type"] == "pong" and frame["token"] == token:
            return pings
        if frame["type"] == "ping":
            pings.append(str(frame["token"]))


def test_a_ping_is_sent_once_per_silence_and_rearmed_by_any_frame(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    # The watchdog pings at most once for one `last_heard` (it owns that mark); the
    # reader moving `last_heard` on any frame is what allows the next ping.
    server = start_server(ping_interval=INTERVAL, ping_timeout=INTERVAL)
    quiet = RawTls(server.address, client_ctx)
    quiet.send_line(json.dumps({"type": "hello", "version": PROTOCOL_VERSION, "nick": "quiet"}))
    assert quiet.read_json()["type"] == "welcome"
    assert _pings_until_answered(quiet, "settled") == []  # nothing quiet yet
    session = _only_session(server)
    heard = session.last_heard
    session.check_alive(heard + INTERVAL / 2)  # not quiet for long enough
    for sweep in (1, 2, 3):  # three sweeps of one silence
        session.check_alive(heard + INTERVAL + sweep)
    assert _pings_until_answered(quiet, "after-three-sweeps") == [f"{heard + INTERVAL + 1:.0f}"]
    # Our ping moved `last_heard` on (any frame does): the next silence gets its ping.
    heard_again = session.last_heard
    assert heard_again > heard
    session.check_alive(heard_again + INTERVAL + 1)
    session.check_alive(heard_again + INTERVAL + 2)
    assert _pings_until_answered(quiet, "rearmed") == [f"{heard_again + INTERVAL + 1:.0f}"]
    # Silent past the timeout too: dropped, saying why.
    session.check_alive(session.last_heard + 2 * INTERVAL + 1)
    error = quiet.read_json()
    assert (error["type"], error["code"], error["fatal"]) == ("error", "timeout", True)
    quiet.close()


def test_a_session_its_peer_reset_ends_without_starting_a_writer_thread(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    # The close_notify cannot go to a peer that reset the connection, so the outbox asks
    # for a writer to finish the connection; the reader, which is ending anyway, runs it
    # itself instead of starting a thread (one per ended session in a connect storm).
    server = start_server()
    started: set[str] = set()

    def note_thread(*_: object) -> None:  # threading.settrace: called in every new thread
        started.add(threading.current_thread().name)

    threading.settrace(note_thread)
    try:
        peer = RawTls(server.address, client_ctx)
        peer.send_line(json.dumps({"type": "hello", "version": PROTOCOL_VERSION, "nick": "gone"}))
        assert peer.read_json()["type"] == "welcome"
        while peer.read_json()["type"] != "entered":  # the login's work is done
            pass
        # SO_LINGER 0: close() sends a TCP reset.
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.sock.close()
        assert server.wait_sessions(0, TIMEOUT)
    finally:
        threading.settrace(None)
    assert [name for name in started if name.startswith("securechat-writer")] == []
