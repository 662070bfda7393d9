"""`Client` against hand-made servers: refusals, hostile frames, keepalive."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import pytest
from chat import TIMEOUT
from e2e_helpers import genuine_keys_frame
from hostile_server import HostileConn, HostileServer, Script
from whisper_helpers import memory_keys

from securechat import Client, ConnectError, Disconnected, LoginRejected
from securechat.protocol import Entered, Message, Names, Ping, encode
from securechat.protocol.codec import entered_frames, names_frames
from securechat.protocol.rooms import Members


class FakeServer:
    """A one-connection TLS server whose behaviour after the hello is a script."""

    def __init__(self, context: ssl.SSLContext, script: Callable[[ssl.SSLSocket, FakeServer], None]) -> None:
        self._listen = socket.create_server(("127.0.0.1", 0))
        self.port = self._listen.getsockname()[1]
        self._context = context
        self._script = script
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raw, _ = self._listen.accept()
        raw.settimeout(TIMEOUT)
        with self._context.wrap_socket(raw, server_side=True) as tls:
            self.received.append(self.read_line(tls))
            self._script(tls, self)

    @staticmethod
    def read_line(tls: ssl.SSLSocket) -> bytes:
        data = b""
        while not data.endswith(b"\n"):
            chunk = tls.recv(1)
            if not chunk:
                break
            data += chunk
        return data

    def join(self) -> None:
        self._thread.join(TIMEOUT)
        self._listen.close()


WELCOME = b'{"type":"welcome","version":1,"nick":"alice","room":"#lobby","users":["alice"]}\n'


@pytest.fixture
def fake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Iterator[Callable[..., Client]]:
    servers: list[FakeServer] = []
    clients: list[Client] = []

    def make(script: Callable[[ssl.SSLSocket, FakeServer], None]) -> Client:
        server = FakeServer(server_ctx, script)
        servers.append(server)
        client = Client("alice", context=client_ctx, port=server.port, timeout=TIMEOUT)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()
    for s in servers:
        s.join()


def test_unreachable_server_is_a_clear_connect_error(client_ctx: ssl.SSLContext) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        with pytest.raises(ConnectError, match=f"cannot connect to 127.0.0.1:{port}"):
            Client("alice", context=client_ctx, port=port).connect()


def test_refused_login_raises_login_rejected(fake: Callable[..., Client]) -> None:
    def refuse(tls: ssl.SSLSocket, _: FakeServer) -> None:
        tls.sendall(b'{"type":"error","code":"nick-taken","reason":"alice is already in use","fatal":true}\n')

    with pytest.raises(LoginRejected) as info:
        fake(refuse).connect()
    assert info.value.code == "nick-taken" and "already in use" in str(info.value)


def test_server_closing_during_login_is_a_connect_error(fake: Callable[..., Client]) -> None:
    with pytest.raises(ConnectError, match="closed the connection during login"):
        fake(lambda tls, _: None).connect()


def test_server_sending_garbage_after_welcome_ends_the_session_cleanly(fake: Callable[..., Client]) -> None:
    def garbage(tls: ssl.SSLSocket, _: FakeServer) -> None:
        tls.sendall(WELCOME + b"\x1b[2J not json\n")
        FakeServer.read_line(tls)  # hold the connection until the client hangs up

    client = fake(garbage)
    client.connect()
    item = client.next_event(timeout=TIMEOUT)
    assert isinstance(item, Disconnected) and "broke the protocol" in item.reason
    assert isinstance(client.next_event(timeout=0), Disconnected)  # it stays ended


def test_unknown_frames_from_a_newer_server_are_skipped(fake: Callable[..., Client]) -> None:
    def newer(tls: ssl.SSLSocket, _: FakeServer) -> None:
        tls.sendall(
            WELCOME + b'{"type":"hologram","x":1}\n'
            b'{"type":"message","room":"#lobby","nick":"bob","text":"hi","ts":1,"color":"red"}\n'
        )
        FakeServer.read_line(tls)

    client = fake(newer)
    client.connect()
    assert client.next_event(timeout=TIMEOUT) == Message(nick="bob", text="hi", ts=1.0)


def test_client_answers_server_pings(fake: Callable[..., Client]) -> None:
    answered: list[bytes] = []
    done = threading.Event()

    def pinger(tls: ssl.SSLSocket, _: FakeServer) -> None:
        tls.sendall(WELCOME + b'{"type":"ping","token":"t1"}\n')
        answered.append(FakeServer.read_line(tls))
        done.set()

    client = fake(pinger)
    client.connect()
    assert client.next_event(timeout=TIMEOUT) == Ping(token="t1")
    assert done.wait(TIMEOUT)
    assert answered == [b'{"type":"pong","token":"t1"}\n']


def test_sending_on_a_closed_client_raises_connection_error(fake: Callable[..., Client]) -> None:
    def quick_close(tls: ssl.SSLSocket, _: FakeServer) -> None:
        tls.sendall(WELCOME)

    client = fake(quick_close)
    client.connect()
    assert isinstance(client.next_event(timeout=TIMEOUT), Disconnected)
    with pytest.raises(ConnectionError):
        client.say("anyone?")


def test_invalid_text_is_refused_before_sending(fake: Callable[..., Client]) -> None:
    def hold(tls: ssl.SSLSocket, _: FakeServer) -> None:
        tls.sendall(WELCOME)
        FakeServer.read_line(tls)

    client = fake(hold)
    client.connect()
    with pytest.raises(ValueError, match="4096"):
        client.say("x" * 5000)
    with pytest.raises(ValueError, match="empty"):
        client.say("")


def test_a_nick_with_control_characters_from_a_hostile_server_never_reaches_the_user(
    fake: Callable[..., Client],
) -> None:
    def hostile(tls: ssl.SSLSocket, _: FakeServer) -> None:
        tls.sendall(
            WELCOME
            + b'{"type":"message","room":"#lobby","nick":"\\u001b[2Jevil","text":"x","ts":1}\n'
            + b'{"type":"joined","room":"#lobby","nick":"bad\\u202enick"}\n'
            + b'{"type":"message","room":"#lobby","nick":"bob","text":"fine","ts":2}\n'
        )
        FakeServer.read_line(tls)

    client = fake(hostile)
    client.connect()
    # The two frames with hostile nicks fail validation and are skipped; the good one comes.
    assert client.next_event(timeout=TIMEOUT) == Message(nick="bob", text="fine", ts=2.0)


# -- key fetches are matched to their answers by a request reference ------------------------


@pytest.fixture
def scripted(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Iterator[Callable[..., Client]]:
    """`scripted(script)`: a client with keys (not connected) of a server running `script`."""
    made: list[tuple[Client, HostileServer]] = []

    def make(script: Script) -> Client:
        server = HostileServer(server_ctx, script)
        client = Client(
            "alice", context=client_ctx, port=server.port, timeout=TIMEOUT, keys=memory_keys("alice")
        )
        made.append((client, server))
        return client

    yield make
    for client, server in made:
        client.close()
        server.close()
        assert not server.errors, server.errors


def _next_fetch(conn: HostileConn) -> dict[str, object]:
    while (frame := conn.read_frame())["type"] != "fetch_keys":
        pass
    return frame


def test_a_rate_limited_room_line_during_a_fetch_is_not_its_answer(scripted: Callable[..., Client]) -> None:
    # The bug: a "rate-limited" for a room-line flood (ref "") arriving while a
    # whisper waits for keys was taken as the fetch's answer. Fixed already by 6b61dea
    # (answers matched by the nick in ref); still holds with fetch refs.
    sent = threading.Event()

    def script(conn: HostileConn, _: int) -> None:
        conn.login()
        ref = str(_next_fetch(conn)["ref"])
        conn.send(
            {"type": "error", "code": "rate-limited", "reason": "slow down: too many messages", "ref": ""}
        )
        conn.send(genuine_keys_frame("bob", ref))
        while conn.read_frame()["type"] != "whisper":
            pass
        sent.set()
        conn.hold()

    client = scripted(script)
    client.connect()
    client.whisper("bob", "hello")
    assert sent.wait(TIMEOUT)


def test_a_late_answer_to_an_earlier_fetch_does_not_answer_the_next_one(
    scripted: Callable[..., Client],
) -> None:
    # The first fetch gets no answer in time; its late refusal ("no-keys", naming the
    # same nick) arrives while the second fetch waits. Before refs: the second whisper
    # failed with the first fetch's "no keys" (matched by nick).
    second = threading.Event()
    sent = threading.Event()

    def script(conn: HostileConn, _: int) -> None:
        conn.login()
        first = str(_next_fetch(conn)["ref"])  # not answered: that whisper times out
        now = str(_next_fetch(conn)["ref"])
        assert now != first and now.startswith("keys:")
        second.set()
        conn.send({"type": "error", "code": "no-keys", "reason": "bob has published no keys", "ref": first})
        conn.send(genuine_keys_frame("bob", first))  # late keys for the first fetch: not taken either
        conn.send(genuine_keys_frame("bob", now))
        while conn.read_frame()["type"] != "whisper":
            pass
        sent.set()
        conn.hold()

    client = scripted(script)
    client.connect()
    with pytest.raises(TimeoutError):
        client.whisper("bob", "first", timeout=0.3)
    client.whisper("bob", "second")  # before: LookupError "bob has published no keys"
    assert second.is_set() and sent.wait(TIMEOUT)


def test_an_old_server_that_echoes_no_ref_is_still_understood(scripted: Callable[..., Client]) -> None:
    # A version-1 server answers by nick: keys without a ref, and a refusal naming the nick.
    sent = threading.Event()

    def script(conn: HostileConn, _: int) -> None:
        conn.login()
        _next_fetch(conn)
        conn.send({"type": "error", "code": "no-such-user", "reason": "no such user: carol", "ref": "carol"})
        _next_fetch(conn)
        conn.send(genuine_keys_frame("bob"))
        while conn.read_frame()["type"] != "whisper":
            pass
        sent.set()
        conn.hold()

    client = scripted(script)
    client.connect()
    with pytest.raises(LookupError, match="no such user"):
        client.whisper("carol", "hi")
    client.whisper("bob", "hello")
    assert sent.wait(TIMEOUT)


# -- member lists in pages (issue 14: rooms of thousands) ----------------------------

WELCOME_2 = b'{"type":"welcome","version":2,"nick":"alice","room":"#lobby"}\n'


def test_a_room_of_5000_arrives_whole_from_its_pages(fake: Callable[..., Client]) -> None:
    users = tuple(sorted(("alice", *(f"member{i:010d}" for i in range(4999)))))
    entered = Entered(room="#lobby", users=users, away=users[::9], topic="big")
    names = Names(room="#lobby", users=users[1:], away=users[1::9])
    frames = entered_frames(entered)
    assert len(frames) > 1  # the case at hand: no single line could carry it

    def paged(tls: ssl.SSLSocket, _: FakeServer) -> None:
        tls.sendall(WELCOME_2 + b"".join(frames) + b"".join(names_frames(names)))
        FakeServer.read_line(tls)

    client = fake(paged)
    client.connect()
    assert client.next_event(timeout=TIMEOUT) == entered
    assert client.rooms == ("#lobby",)
    assert client.next_event(timeout=TIMEOUT) == names


def test_a_malformed_sequence_of_pages_ends_the_connection_saying_why(fake: Callable[..., Client]) -> None:
    page = encode(Members(room="#lobby", of="entered", users=("alice", "bob")))
    twice = encode(Entered(room="#lobby", users=("bob", "carol")))

    def malformed(tls: ssl.SSLSocket, _: FakeServer) -> None:
        tls.sendall(WELCOME_2 + page + twice)
        FakeServer.read_line(tls)

    client = fake(malformed)
    client.connect()
    item = client.next_event(timeout=TIMEOUT)
    assert isinstance(item, Disconnected)
    assert "broke the protocol" in item.reason and "names someone twice" in item.reason
    assert client.rooms == ()
