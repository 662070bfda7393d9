"""`Client` against hand-made servers: refusals, hostile frames, keepalive."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import pytest
from chat import TIMEOUT

from securechat import Client, ConnectError, Disconnected, LoginRejected
from securechat.protocol import Message, Ping


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
