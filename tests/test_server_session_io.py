"""The session's I/O shell (securechat/server/session/io.py) over real TLS: what only
the shell does (keepalive bookkeeping across the reader and watchdog threads). The
lingering close, overflow cut-offs and deadlines are covered in test_server_robustness.py
and test_server_limits.py, which drive whole servers."""

from __future__ import annotations

import json
import ssl

from conftest import RawTls, StartServer

from securechat.protocol import PROTOCOL_VERSION


def test_a_ping_is_sent_once_per_silence_and_rearmed_by_the_answer(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    # The watchdog pings at most once for one `last_heard` (it owns that mark); the
    # reader moving `last_heard` on any frame is what allows the next ping.
    server = start_server(ping_interval=0.2, ping_timeout=30)
    quiet = RawTls(server.address, client_ctx)
    quiet.send_line(json.dumps({"type": "hello", "version": PROTOCOL_VERSION, "nick": "quiet"}))
    assert quiet.read_json()["type"] == "welcome"
    seen: list[str] = []
    while len(seen) < 2:
        frame = quiet.read_json()  # raises TimeoutError if no ping comes
        if frame["type"] != "ping":
            continue  # room frames after the welcome
        seen.append(str(frame["token"]))
        quiet.send_line(json.dumps({"type": "pong", "token": frame["token"]}))
    assert len(seen) == 2
    quiet.sock.close()
