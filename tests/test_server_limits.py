"""Abuse limits on a live server: flood, connection caps, keepalive."""

from __future__ import annotations

import json
import socket
import ssl
import time

from chat import TIMEOUT, next_matching
from conftest import RawTls, StartServer

from securechat import Client
from securechat.protocol import Error, Left, Message


def test_a_flooder_is_slowed_then_dropped_while_others_get_through(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    server = start_server(message_rate=5.0, message_burst=20, max_strikes=50)
    port = server.address[1]
    alice, bob = (Client(n, context=client_ctx, port=port) for n in ("alice", "bob"))
    alice.connect()
    bob.connect()
    flood = RawTls(server.address, client_ctx)
    flood.send_line('{"type":"hello","version":1,"nick":"flooder"}')
    flood.read_json()
    start = time.monotonic()
    flood.sock.sendall(b"".join(b'{"type":"say","text":"spam %d"}\n' % i for i in range(200)))
    frames = [json.loads(line) for line in flood.read_until_closed()]
    elapsed = time.monotonic() - start
    errors = [f for f in frames if f["type"] == "error"]
    assert errors[0] == {
        "type": "error",
        "code": "rate-limited",
        "reason": "slow down: too many messages",
        "fatal": False,
        "ref": "",
    }
    assert errors[-1]["fatal"] is True and "flooding" in errors[-1]["reason"]
    relayed = sum(1 for f in frames if f["type"] == "message")
    assert 20 <= relayed <= 20 + 5 * elapsed + 2  # the burst, then the rate
    assert next_matching(alice, Left, nick="flooder") == Left(nick="flooder", reason="flooding")
    for i in range(10):  # a normal paste-sized burst from someone else is untouched
        alice.say(f"normal {i}")
    for i in range(10):
        assert next_matching(bob, Message, nick="alice").text == f"normal {i}"  # type: ignore[attr-defined]
    alice.close()
    bob.close()
    flood.close()


def test_rate_limit_refuses_without_disconnecting_below_the_strike_limit(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    server = start_server(message_rate=1.0, message_burst=2, max_strikes=50)
    client = Client("alice", context=client_ctx, port=server.address[1])
    client.connect()
    for i in range(5):
        client.say(f"m{i}")
    err = client.wait_for(Error, TIMEOUT)
    assert err == Error(code="rate-limited", reason="slow down: too many messages")
    client.who()  # still connected
    client.close()


def test_connections_per_ip_are_capped(start_server: StartServer) -> None:
    server = start_server(max_per_ip=3, handshake_timeout=30)
    held = [socket.create_connection(server.address) for _ in range(3)]
    assert server.wait_sessions_at_least(3, TIMEOUT)
    extra = socket.create_connection(server.address, timeout=TIMEOUT)
    assert extra.recv(10) == b""  # closed at once, long before the 30 s handshake deadline
    extra.close()
    held.pop().close()
    assert server.wait_sessions(2, TIMEOUT)
    again = socket.create_connection(server.address)
    assert server.wait_sessions_at_least(3, TIMEOUT)
    for s in [*held, again]:
        s.close()


def test_total_sessions_are_capped(start_server: StartServer) -> None:
    server = start_server(max_sessions=2, handshake_timeout=30)
    held = [socket.create_connection(server.address) for _ in range(2)]
    assert server.wait_sessions_at_least(2, TIMEOUT)
    extra = socket.create_connection(server.address, timeout=TIMEOUT)
    assert extra.recv(10) == b""
    for s in [*held, extra]:
        s.close()


def test_keepalive_pings_quiet_clients_and_drops_silent_ones(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    server = start_server(ping_interval=0.3, ping_timeout=0.3)
    alice = Client("alice", context=client_ctx, port=server.address[1])
    alice.connect()  # answers pings by itself
    mute = RawTls(server.address, client_ctx)
    mute.send_line('{"type":"hello","version":1,"nick":"mute"}')
    assert mute.read_json()["type"] == "welcome"
    left = next_matching(alice, Left, nick="mute", timeout=TIMEOUT)
    assert left == Left(nick="mute", reason="ping timeout")
    frames = [json.loads(x) for x in mute.read_until_closed()]
    assert [f["type"] for f in frames] == ["ping", "error"]  # one ping, unanswered, then the drop
    assert frames[-1] == {
        "type": "error",
        "code": "timeout",
        "reason": "no answer to ping",
        "fatal": True,
        "ref": "",
    }
    alice.say("still here")  # alice was pinged too, answered, and is still connected
    assert next_matching(alice, Message).text == "still here"  # type: ignore[attr-defined]
    alice.close()
    mute.close()
