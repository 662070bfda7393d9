"""One identity online from several devices at once, over real TLS (the server's side:
session/logic.py and hub.py; what each device is, client/whispers.py's device record)."""

from __future__ import annotations

import ssl
from typing import TypeVar

from conftest import TIMEOUT, RawTls, StartServer
from raw_identity import RawIdentity

from securechat.e2e.identity import Identity
from securechat.e2e.login import login_message
from securechat.protocol import (
    NEED_DATA,
    PROTOCOL_VERSION,
    Auth,
    Challenge,
    Code,
    Connection,
    Error,
    Event,
    Hello,
    Left,
    Message,
    Role,
    Say,
)
from securechat.server import Server

E = TypeVar("E", bound=Event)


def next_of(tls: RawTls, conn: Connection, kind: type[E]) -> E:
    """The next frame of type `kind` the server sends (others skipped)."""
    while True:
        event = conn.next_event()
        if isinstance(event, kind):
            return event
        if event is NEED_DATA:
            chunk = tls.sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            conn.receive_data(chunk)
        elif not isinstance(event, Event):
            raise EOFError("closed")


def hears(who: RawIdentity, *texts: str) -> bool:
    """Wait (up to the socket's timeout) for the room lines `texts` to reach `who`, in
    any order."""
    waiting = set(texts)
    while waiting:
        if isinstance(event := who.next(), Message):
            waiting.discard(event.text)
    return True


def test_two_devices_of_one_identity_are_both_online_and_hear_every_line(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    alice = Identity.generate("alice")
    laptop = RawIdentity(server, client_ctx, "alice", alice, device="laptop")
    bob = RawIdentity(server, client_ctx, "bob")
    desktop = RawIdentity(server, client_ctx, "alice", alice, device="desktop")
    laptop.round_trip()
    bob.round_trip()
    # Nobody was thrown out, and alice is one user in the room.
    assert sorted(server.hub.online()) == ["alice", "bob"]
    assert server.hub.names("bob", "#lobby").users == ("alice", "bob")
    bob.send(Say(room="#lobby", text="hi alice"))
    desktop.send(Say(room="#lobby", text="hi from the desktop"))
    for device in (laptop, desktop):
        assert hears(device, "hi alice", "hi from the desktop")
    # One device quits: bob is told nothing; the other still hears bob.
    laptop.close()
    assert server.wait_sessions(at_most=2, timeout=TIMEOUT)  # the server has seen it go
    bob.send(Say(room="#lobby", text="still here?"))
    assert hears(desktop, "still here?")
    assert not any(isinstance(f, Left) for f in bob.round_trip())
    desktop.close()
    bob.expect(Left)  # the last device gone: now alice has left
    bob.close()


def test_the_same_device_logging_in_again_replaces_its_stale_session(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    alice = Identity.generate("alice")
    desktop = RawIdentity(server, client_ctx, "alice", alice, device="desktop")
    stale = RawIdentity(server, client_ctx, "alice", alice, device="laptop")
    laptop = RawIdentity(server, client_ctx, "alice", alice, device="laptop")  # it reconnects
    replaced = stale.expect(Error)
    assert replaced.code == Code.REPLACED
    assert server.wait_sessions(at_most=2, timeout=TIMEOUT)
    laptop.send(Say(room="#lobby", text="back"))
    assert hears(desktop, "back")  # the desktop was left alone, and hears the new session


def test_a_device_beyond_the_servers_cap_is_refused_with_a_clear_error(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    server = start_server(max_devices=2)
    alice = Identity.generate("alice")
    one = RawIdentity(server, client_ctx, "alice", alice, device="one")
    two = RawIdentity(server, client_ctx, "alice", alice, device="two")
    third = RawTls(server.address, client_ctx)
    conn = Connection(Role.CLIENT)
    third.sock.sendall(
        conn.send(Hello(version=PROTOCOL_VERSION, nick="alice", identity=alice.sig_key, device="three"))
    )
    challenge = next_of(third, conn, Challenge)
    proof = alice.sign(login_message("alice", challenge.nonce, alice.sig_key))
    third.sock.sendall(conn.send(Auth(signature=proof)))
    refusal = next_of(third, conn, Error)
    assert refusal.code == Code.QUOTA and refusal.fatal
    assert "2 devices" in refusal.reason
    assert one.round_trip() is not None  # the devices online were left alone
    one.close()
    assert server.wait_sessions(at_most=1, timeout=TIMEOUT)
    three = RawIdentity(server, client_ctx, "alice", alice, device="three")  # room for another now
    assert two.round_trip() is not None and three.round_trip() is not None
