"""A logged-in identity that speaks frames by hand, with no e2e engine: what an abuser
scripts against the server (fake ciphertext, fetches that never start a session)."""

from __future__ import annotations

import ssl
from typing import TypeVar

from conftest import RawTls

from securechat.e2e.conversations import Conversations
from securechat.e2e.identity import Identity
from securechat.e2e.login import login_message
from securechat.protocol import (
    NEED_DATA,
    PROTOCOL_VERSION,
    Auth,
    Challenge,
    Connection,
    Event,
    Hello,
    KeyIdentity,
    OneTimePrekeyRecord,
    Ping,
    Pong,
    PrekeyCount,
    PublishKeys,
    Role,
    SignedPrekeyRecord,
    Welcome,
)
from securechat.server import Server

E = TypeVar("E", bound=Event)


class RawIdentity:
    """Logs in as `nick` with a fresh (or given) identity when constructed."""

    def __init__(
        self,
        server: Server,
        ctx: ssl.SSLContext,
        nick: str,
        identity: Identity | None = None,
        version: int = PROTOCOL_VERSION,
        device: str = "",
    ) -> None:
        """`version`: the hello's (2: a client from before post-quantum setup);
        `device`: the device id it names ("" none, as a client from before devices)."""
        self.nick = nick
        self.identity = identity or Identity.generate(nick)
        self.tls = RawTls(server.address, ctx)
        self.conn = Connection(Role.CLIENT)
        self._conv = Conversations(self.identity)
        self._conv.bundle_to_publish()  # a signed prekey, and 100 one-time prekeys kept back
        self._pings = 0
        self.send(Hello(version=version, nick=nick, identity=self.identity.sig_key, device=device))
        challenge = self.expect(Challenge)
        proof = self.identity.sign(login_message(nick, challenge.nonce, self.identity.sig_key))
        self.send(Auth(signature=proof))
        self.expect(Welcome)
        self.expect(PrekeyCount)  # every identity login gets one next

    def send(self, event: Event) -> None:
        self.tls.sock.sendall(self.conn.send(event))

    def next(self) -> Event:
        """The next frame from the server; raises `TimeoutError` or `EOFError`."""
        while True:
            event = self.conn.next_event()
            if isinstance(event, Event):
                return event
            if event is not NEED_DATA:
                raise EOFError("closed")
            chunk = self.tls.sock.recv(65536)
            self.conn.receive_data(chunk)

    def expect(self, kind: type[E]) -> E:
        """Skip frames until one of type `kind`."""
        while not isinstance(event := self.next(), kind):
            pass
        return event

    def round_trip(self) -> list[Event]:
        """Every frame the server sent before answering a ping sent now: all it had to
        say in answer to what we sent before (it handles our frames in order)."""
        self._pings += 1
        token = f"rt{self._pings}"
        self.send(Ping(token=token))
        frames = []
        while not (isinstance(event := self.next(), Pong) and event.token == token):
            frames.append(event)
        return frames

    def publication(self, opk_count: int) -> PublishKeys:
        """A validly signed publication of `opk_count` new one-time prekeys."""
        conv = self._conv
        ident = conv.identity.public()
        spk = conv.secrets.signed_spk(conv.identity)
        opks = conv.secrets.signed_opks(conv.identity, conv.secrets.new_opks(opk_count))
        return PublishKeys(
            identity=KeyIdentity(sig_key=ident.sig_key, dh_key=ident.dh_key, dh_sig=ident.dh_sig),
            spk=SignedPrekeyRecord(
                id=spk.id, created=spk.created, public=spk.public, signature=spk.signature
            ),
            opks=tuple(OneTimePrekeyRecord(id=o.id, public=o.public, signature=o.signature) for o in opks),
        )

    def close(self) -> None:
        self.tls.close()
