"""Hand-driven protocol clients for room tests over real TLS: a `Peer` speaks frames
itself (a guest, or an identity proving its key), so a test sees exactly what the server
sent and in which order. Registered as a pytest plugin by conftest.py (the `peers`
fixture)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from typing import TypeVar

import pytest
from chat import TIMEOUT

from securechat.e2e.identity import Identity
from securechat.e2e.login import login_message
from securechat.protocol import (
    NEED_DATA,
    PROTOCOL_VERSION,
    Auth,
    Challenge,
    Connection,
    Error,
    Event,
    Hello,
    Message,
    Ping,
    Pong,
    Role,
    Welcome,
)
from securechat.server import Server

E = TypeVar("E", bound=Event)


class Peer:
    """A client speaking frames by hand: a guest, or an identity (`identity`) that proves
    its key at login. `nonce` is the login challenge's (a rename signs over it)."""

    def __init__(
        self,
        address: tuple[str, int],
        ctx: ssl.SSLContext,
        nick: str,
        *,
        identity: Identity | None = None,
        version: int = PROTOCOL_VERSION,
    ) -> None:
        self.nick = nick
        self.identity = identity
        raw = socket.create_connection(address, timeout=TIMEOUT)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.conn = Connection(Role.CLIENT)
        self.nonce = b""
        self._pings = 0
        self.send(Hello(version=version, nick=nick, identity=identity.sig_key if identity else b""))
        if identity is not None:
            self.nonce = self.expect(Challenge).nonce
            self.send(Auth(signature=identity.sign(login_message(nick, self.nonce, identity.sig_key))))
        self.welcome = self.expect(Welcome)

    def send(self, event: Event) -> None:
        self.sock.sendall(self.conn.send(event))

    def next(self) -> Event:
        while True:
            event = self.conn.next_event()
            if isinstance(event, Event):
                return event
            if event is not NEED_DATA:
                raise EOFError("closed")
            self.conn.receive_data(self.sock.recv(65536))

    def expect(self, kind: type[E], **fields: object) -> E:
        """Skip frames until one of type `kind` with these field values."""
        while True:
            event = self.next()
            if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
                return event

    def round_trip(self) -> list[Event]:
        """Every frame the server sent before answering a ping sent now."""
        self._pings += 1
        token = f"rt{self._pings}"
        self.send(Ping(token=token))
        frames = []
        while not (isinstance(event := self.next(), Pong) and event.token == token):
            frames.append(event)
        return frames

    def request(self, event: Event) -> list[Event]:
        """Send `event`; the frames the server sent before answering a ping after it."""
        self.send(event)
        return self.round_trip()

    def refused(self, event: Event) -> Error:
        [error] = [f for f in self.request(event) if isinstance(f, Error)]
        return error

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for peer in made:
        peer.close()


def login(
    peers: list[Peer], server: Server | tuple[str, int], ctx: ssl.SSLContext, nick: str, **kw: object
) -> Peer:
    address = server.address if isinstance(server, Server) else server
    peer = Peer(address, ctx, nick, **kw)  # type: ignore[arg-type]
    peers.append(peer)
    peer.round_trip()  # what logging in sent (entered, history, counts)
    return peer


def texts(frames: list[Event], room: str) -> list[str]:
    return [f.text for f in frames if isinstance(f, Message) and f.room == room]
