"""The real server and real clients over real TLS on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from chat import TIMEOUT, Chatter, next_matching
from conftest import Connect, RawTls, StartServer

from securechat import Client, LoginRejected
from securechat.protocol import Bye, Entered, Joined, Left, Message, Names
from securechat.server import Server
from securechat.version import SOFTWARE


def test_three_clients_chat_with_per_sender_order_and_notices(connect: Connect, server: Server) -> None:
    alice = connect("alice")
    bob = connect("bob")
    assert next_matching(alice, Joined) == Joined(nick="bob")
    carol = connect("carol")
    assert carol.welcome is not None and carol.welcome.users == ("alice", "bob", "carol")
    for c in (alice, bob):
        next_matching(c, Joined, nick="carol")

    per_sender = 200
    clients = [alice, bob, carol]
    threads = [
        threading.Thread(target=lambda c=c: [c.say(f"{c.nick} {i}") for i in range(per_sender)])
        for c in clients
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    for receiver in clients:
        seen: dict[str, list[int]] = defaultdict(list)
        while sum(len(v) for v in seen.values()) < per_sender * len(clients):
            msg = next_matching(receiver, Message)
            assert isinstance(msg, Message)
            nick, n = msg.text.split()
            assert nick == msg.nick
            seen[nick].append(int(n))
        assert all(seen[c.nick] == list(range(per_sender)) for c in clients)

    alice.who()
    assert next_matching(alice, Names) == Names(users=("alice", "bob", "carol"))
    carol.quit("off to lunch")
    assert next_matching(carol, Bye) == Bye(reason="goodbye")
    for c in (alice, bob):
        assert next_matching(c, Left) == Left(nick="carol", reason="off to lunch")
    assert server.wait_sessions(2, TIMEOUT)


def test_hand_written_json_from_the_protocol_doc_can_log_in_and_chat(
    connect: Connect, server: Server, client_ctx: ssl.SSLContext
) -> None:
    alice = connect("alice")
    raw = RawTls(server.address, client_ctx)
    raw.send_line('{"type":"hello","version":1,"nick":"rawbot","client":"handmade/1"}')
    welcome = raw.read_json()
    assert welcome == {
        "type": "welcome",
        "version": 1,
        "nick": "rawbot",
        "room": "#lobby",
        "users": ["alice", "rawbot"],
        "server": "securechat",
        "software": SOFTWARE,
    }
    raw.send_line('{"type":"say","room":"#lobby","text":"hello from netcat"}')
    echoed = raw.read_json()
    assert echoed["type"] == "message" and echoed["nick"] == "rawbot"
    assert next_matching(alice, Message, nick="rawbot").text == "hello from netcat"  # type: ignore[attr-defined]
    alice.say("hi rawbot")
    assert raw.read_json()["text"] == "hi rawbot"
    raw.send_line('{"type":"who","room":"#lobby"}')
    assert raw.read_json() == {
        "type": "names",
        "room": "#lobby",
        "users": ["alice", "rawbot"],
        "away": [],
        "owner": "",
        "operators": [],
    }
    raw.send_line('{"type":"ping","token":"42"}')
    assert raw.read_json() == {"type": "pong", "token": "42"}
    raw.send_line('{"type":"quit","reason":"done"}')
    assert [json.loads(line) for line in raw.read_until_closed()] == [{"type": "bye", "reason": "goodbye"}]
    raw.close()


def test_lines_sent_in_one_write_keep_their_place_around_other_requests(
    connect: Connect, server: Server, client_ctx: ssl.SSLContext
) -> None:
    # The server broadcasts the room lines of one read as a batch; a request between
    # them (who, ping, a line for an unknown room) must still be answered in its place.
    alice = connect("alice")
    raw = RawTls(server.address, client_ctx)
    raw.send_line('{"type":"hello","version":1,"nick":"rawbot","client":"handmade/1"}')
    assert raw.read_json()["type"] == "welcome"
    raw.send_line(
        '{"type":"say","text":"one"}\n{"type":"say","text":"two"}\n{"type":"who"}\n'
        '{"type":"say","text":"three"}\n{"type":"say","room":"#nowhere","text":"x"}\n'
        '{"type":"ping","token":"t"}\n{"type":"say","text":"four"}'
    )
    seen = [raw.read_json() for _ in range(7)]
    assert [(f["type"], f.get("text") or f.get("code") or f.get("token")) for f in seen] == [
        ("message", "one"),
        ("message", "two"),
        ("names", None),
        ("message", "three"),
        ("error", "no-such-room"),
        ("pong", "t"),
        ("message", "four"),
    ]
    assert [next_matching(alice, Message).text for _ in range(4)] == ["one", "two", "three", "four"]  # type: ignore[attr-defined]
    raw.close()


def test_client_refuses_a_server_certificate_from_another_ca(server: Server) -> None:
    import trustme

    from securechat import ConnectError

    other = ssl.create_default_context()
    trustme.CA().configure_trust(other)
    client = Client("alice", context=other, port=server.address[1], timeout=TIMEOUT)
    with pytest.raises(ConnectError, match=r"certificate cannot be trusted.*unable to get local issuer"):
        client.connect()


def test_client_refuses_a_certificate_for_another_host_name(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    from securechat import ConnectError

    client = Client("alice", context=client_ctx, port=server.address[1], server_hostname="chat.example.org")
    with pytest.raises(ConnectError, match=r"(?i)hostname mismatch"):
        client.connect()


# -- misbehaving clients, each while a pair of well-behaved ones keeps chatting ------


@pytest.fixture
def pair(connect: Connect) -> tuple[Client, Client]:
    return connect("alice"), connect("bob")


def test_plaintext_tcp_client_gets_only_a_closed_connection(
    server: Server, pair: tuple[Client, Client]
) -> None:
    with Chatter(*pair), socket.create_connection(server.address, timeout=TIMEOUT) as plain:
        plain.sendall(b'{"type":"hello","version":1,"nick":"plain"}\n')
        assert plain.recv(4096) == b""


def test_idle_tcp_connection_is_closed_at_the_handshake_deadline(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    server = start_server(handshake_timeout=0.5)
    alice = Client("alice", context=client_ctx, port=server.address[1])
    bob = Client("bob", context=client_ctx, port=server.address[1])
    alice.connect()
    bob.connect()
    try:
        with Chatter(alice, bob), socket.create_connection(server.address, timeout=TIMEOUT) as idle:
            assert idle.recv(4096) == b""  # returns when the server gives up on us
            assert server.wait_sessions(2, TIMEOUT)
        # A TLS client that completes the handshake but never says hello is cut too,
        # after being told why.
        raw = RawTls(server.address, client_ctx)
        assert [json.loads(x) for x in raw.read_until_closed()] == [
            {"type": "error", "code": "timeout", "reason": "no hello in time", "fatal": True, "ref": ""}
        ]
        raw.close()
    finally:
        alice.close()
        bob.close()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"this is not json\n", "bad-json"),
        (b"\xff\xfe\xfd\n", "bad-utf8"),
        (b"[1,2,3]\n", "bad-frame"),
        (b"x" * (70 * 1024), "too-long"),
        (b'{"type":"say","text":"before hello"}\n', "hello-required"),
        (b'{"type":"hello","version":99,"nick":"future"}\n', "unsupported-version"),
    ],
)
def test_garbage_gets_a_fatal_error_and_a_close(
    server: Server, pair: tuple[Client, Client], client_ctx: ssl.SSLContext, payload: bytes, code: str
) -> None:
    with Chatter(*pair):
        raw = RawTls(server.address, client_ctx)
        raw.send_line(payload)
        frames = [json.loads(line) for line in raw.read_until_closed()]
        raw.close()
    assert len(frames) == 1 and frames[0]["code"] == code and frames[0]["fatal"] is True
    assert server.wait_sessions(2, TIMEOUT)


def test_garbage_after_login_is_announced_as_a_leave(
    server: Server, pair: tuple[Client, Client], client_ctx: ssl.SSLContext, connect: Connect
) -> None:
    observer = connect("carol")  # the chatting pair's helper skips notices; carol keeps them
    with Chatter(*pair):
        raw = RawTls(server.address, client_ctx)
        raw.send_line('{"type":"hello","version":1,"nick":"mallory"}')
        raw.read_json()
        raw.send_line(b"\x00garbage\n")
        assert json.loads(raw.read_until_closed()[-1])["code"] == "bad-json"
        raw.close()
    assert next_matching(observer, Left, nick="mallory") == Left(nick="mallory", reason="protocol error")


def test_invalid_nick_is_refused_and_a_valid_retry_succeeds(
    server: Server, pair: tuple[Client, Client], client_ctx: ssl.SSLContext
) -> None:
    with Chatter(*pair):
        raw = RawTls(server.address, client_ctx)
        raw.send_line('{"type":"hello","version":1,"nick":"bad nick!"}')
        err = raw.read_json()
        assert err["type"] == "error" and err["code"] == "invalid" and err["fatal"] is False
        assert "nick" in str(err["reason"])
        raw.send_line('{"type":"hello","version":1,"nick":"good_nick"}')
        assert raw.read_json()["type"] == "welcome"
        raw.close()


def test_bad_fields_after_login_are_refused_without_disconnecting(
    server: Server, pair: tuple[Client, Client], client_ctx: ssl.SSLContext
) -> None:
    raw = RawTls(server.address, client_ctx)
    raw.send_line('{"type":"hello","version":1,"nick":"carol"}')
    raw.read_json()
    for line, code in [
        ('{"type":"say","text":""}', "invalid"),
        ('{"type":"say","text":"' + "x" * 5000 + '"}', "invalid"),
        ('{"type":"say","room":"#nowhere","text":"hi"}', "no-such-room"),
        ('{"type":"teleport"}', "unknown-type"),
        ('{"type":"message","nick":"alice","text":"forged","ts":1}', "unexpected"),
    ]:
        raw.send_line(line)
        err = raw.read_json()
        assert (err["type"], err["code"], err["fatal"]) == ("error", code, False)
    raw.send_line('{"type":"say","text":"still here"}')
    assert raw.read_json()["text"] == "still here"
    raw.close()


def test_duplicate_nick_is_refused_case_insensitively(pair: tuple[Client, Client], connect: Connect) -> None:
    with Chatter(*pair), pytest.raises(LoginRejected) as info:
        connect("ALICE")
    assert info.value.code == "nick-taken"


def test_a_client_that_stops_reading_is_dropped_and_others_get_everything(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    server = start_server(send_queue_bytes=256 * 1024)
    port = server.address[1]
    alice = Client("alice", context=client_ctx, port=port)
    bob = Client("bob", context=client_ctx, port=port)
    alice.connect()
    bob.connect()
    # The slow client shrinks its receive buffer so that the kernel cannot absorb the
    # flood for it, logs in, and then never reads again.
    sleepy = socket.socket()
    sleepy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sleepy.connect(server.address)
    sleepy_tls = client_ctx.wrap_socket(sleepy, server_hostname="localhost")
    sleepy_tls.sendall(b'{"type":"hello","version":1,"nick":"sleepy"}\n')
    next_matching(alice, Joined, nick="sleepy")

    # More than the server's socket buffer (tcp_wmem max 4 MiB here) plus its queue.
    # Alice sends in batches and waits for bob to see each one, so that only sleepy's
    # queue grows: the test is about the one client that does not read.
    count, batch, text = 6000, 50, "f" * 1000
    left: list[Left] = []
    received: dict[str, list[str]] = {"alice": [], "bob": []}

    def take(receiver: Client, upto: int) -> None:
        while len(received[receiver.nick]) < upto:
            item = receiver.next_event(timeout=TIMEOUT)
            if isinstance(item, Message):
                received[receiver.nick].append(item.text)
            elif isinstance(item, Left):
                left.append(item)
            elif not isinstance(item, (Joined, Entered)):  # entering #lobby, others joining
                raise AssertionError(item)

    for start in range(0, count, batch):
        for i in range(start, start + batch):
            alice.say(f"{i} {text}")
        take(bob, start + batch)
    take(alice, count)
    for receiver in (alice, bob):
        assert received[receiver.nick] == [f"{i} {text}" for i in range(count)]
    if not left:
        next_matching(bob, Left, nick="sleepy")
    else:
        assert left[0] == Left(nick="sleepy", reason="not reading (send queue full)")
    sleepy_tls.close()
    alice.close()
    bob.close()


def test_a_client_killed_mid_session_is_announced_and_its_threads_end(
    server: Server, pair: tuple[Client, Client], client_ctx: ssl.SSLContext
) -> None:
    alice, _ = pair
    baseline = threading.active_count()
    raw = RawTls(server.address, client_ctx)
    raw.send_line('{"type":"hello","version":1,"nick":"doomed"}')
    raw.read_json()
    next_matching(alice, Joined, nick="doomed")
    # SO_LINGER 0: close() sends a TCP reset, as when a process is killed mid-write.
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.sock.close()
    assert next_matching(alice, Left, nick="doomed").nick == "doomed"  # type: ignore[attr-defined]
    assert server.wait_sessions(2, TIMEOUT)
    assert threading.active_count() == baseline


def test_stop_says_goodbye_to_everyone_and_leaves_no_threads(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    baseline = threading.active_count()
    server = start_server()
    clients = [Client(f"user{i}", context=client_ctx, port=server.address[1]) for i in range(5)]
    for c in clients:
        c.connect()
    half_open = socket.create_connection(server.address)  # mid-handshake at stop time
    server.stop(timeout=TIMEOUT)
    for c in clients:
        assert next_matching(c, Bye) == Bye(reason="server shutting down")
        c.close()
    half_open.close()
    assert threading.active_count() == baseline


def test_a_newcomer_sees_recent_history_and_it_survives_a_restart(
    start_server: StartServer, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = start_server(data_dir=data, history_lines=3)
    alice = Client("alice", context=client_ctx, port=server.address[1])
    alice.connect()
    for i in range(5):
        alice.say(f"line {i}")
    next_matching(alice, Message, text="line 4")
    bob = Client("bob", context=client_ctx, port=server.address[1])
    bob.connect()
    early = [next_matching(bob, Message) for _ in range(3)]
    assert [(m.text, m.history) for m in early] == [(f"line {i}", True) for i in (2, 3, 4)]  # type: ignore[attr-defined]
    alice.say("live")
    live = next_matching(bob, Message)
    assert (live.text, live.history) == ("live", False)  # type: ignore[attr-defined]
    alice.close()
    bob.close()
    server.stop()
    restarted = start_server(data_dir=data, history_lines=3)
    carol = Client("carol", context=client_ctx, port=restarted.address[1])
    carol.connect()
    replayed = [next_matching(carol, Message) for _ in range(3)]
    assert [m.text for m in replayed] == ["line 3", "line 4", "live"]  # type: ignore[attr-defined]
    assert all(m.history for m in replayed)  # type: ignore[attr-defined]
    carol.close()
