"""One person online from several devices, over real TLS: the server's side of linked
devices (session/logic.py, devices.py, relay.py, hub.py), driven by scripted clients."""

from __future__ import annotations

import dataclasses
import ssl
from typing import TypeVar

import pytest
from conftest import TIMEOUT, RawTls, StartServer
from raw_identity import RawIdentity

from securechat.e2e.devices import (
    Device,
    DeviceList,
    device_list_message,
    device_list_record,
    sign_device_list,
)
from securechat.e2e.identity import Identity
from securechat.e2e.login import login_message
from securechat.protocol import (
    DEVICES_VERSION,
    NEED_DATA,
    Ack,
    Auth,
    Challenge,
    Code,
    Connection,
    Delivery,
    DeviceListRecord,
    DeviceRecord,
    Devices,
    Error,
    Event,
    FetchKeys,
    Hello,
    Keys,
    Left,
    Link,
    Message,
    PublishDevices,
    Role,
    Say,
    Whisper,
    WhisperStatus,
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


def refusal(server: Server, ctx: ssl.SSLContext, nick: str, identity: Identity, device: str) -> Error:
    """The fatal error a login of `identity` as `nick` from `device` gets."""
    tls = RawTls(server.address, ctx)
    conn = Connection(Role.CLIENT)
    tls.sock.sendall(
        conn.send(Hello(version=DEVICES_VERSION, nick=nick, identity=identity.sig_key, device=device))
    )
    event = next_of(tls, conn, Event)
    if isinstance(event, Challenge):
        proof = identity.sign(login_message(nick, event.nonce, identity.sig_key))
        tls.sock.sendall(conn.send(Auth(signature=proof)))
        event = next_of(tls, conn, Error)
    assert isinstance(event, Error) and event.fatal, event
    tls.close()
    return event


def hears(who: RawIdentity, *texts: str) -> bool:
    """Wait (up to the socket's timeout) for the room lines `texts` to reach `who`, in
    any order."""
    waiting = set(texts)
    while waiting:
        if isinstance(event := who.next(), Message):
            waiting.discard(event.text)
    return True


class Person:
    """alice: the device holding her identity key (laptop) and a linked one (phone)."""

    def __init__(self, server: Server, ctx: ssl.SSLContext) -> None:
        self.server, self.ctx = server, ctx
        self.identity = Identity.generate("alice")
        self.phone_key = Identity.generate("alice")  # the phone's own key, bound to the nick
        self.laptop = self.login(self.identity, "laptop")
        self.laptop.send(self.laptop.publication(5))
        self.laptop.round_trip()
        self.version = 0

    def login(self, identity: Identity, device: str) -> RawIdentity:
        return RawIdentity(self.server, self.ctx, "alice", identity, version=DEVICES_VERSION, device=device)

    def publish(self, *devices: tuple[str, Identity], version: int | None = None) -> list[Event]:
        """Sign and publish a list of the laptop and `devices`; what the laptop got back."""
        self.version = version if version is not None else self.version + 1
        listed = (Device("laptop", self.identity.sig_key), *(Device(d, i.sig_key) for d, i in devices))
        signed = sign_device_list(self.identity, self.version, listed)
        self.laptop.send(PublishDevices(devices=device_list_record(signed)))
        return self.laptop.round_trip()

    def link_phone(self) -> RawIdentity:
        assert not any(isinstance(f, Error) for f in self.publish(("phone", self.phone_key)))
        phone = self.login(self.phone_key, "phone")
        phone.send(phone.publication(5))
        phone.round_trip()
        return phone


def test_a_linked_device_logs_in_with_its_own_key_and_the_person_is_shown_once(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    alice = Person(server, client_ctx)
    bob = RawIdentity(server, client_ctx, "bob", version=DEVICES_VERSION)
    # Before the list names it, the phone's key is not alice's.
    assert refusal(server, client_ctx, "alice", alice.phone_key, "phone").code == Code.NICK_REGISTERED
    phone = alice.link_phone()
    assert sorted(server.hub.online()) == ["alice", "bob"]
    assert server.hub.names("bob", "#lobby").users == ("alice", "bob")
    bob.send(Say(room="#lobby", text="hi alice"))
    phone.send(Say(room="#lobby", text="from the phone"))
    for device in (alice.laptop, phone):
        assert hears(device, "hi alice", "from the phone")
    phone.close()
    assert server.wait_sessions(at_most=2, timeout=TIMEOUT)  # the server has seen it go
    bob.send(Say(room="#lobby", text="still here?"))
    assert hears(alice.laptop, "still here?")
    assert not any(isinstance(f, Left) for f in bob.round_trip())  # alice did not leave
    alice.laptop.close()
    bob.expect(Left)  # her last device gone: now she has
    bob.close()


def test_a_linked_device_is_sent_the_list_at_login_and_every_device_each_new_list(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    alice = Person(server, client_ctx)
    answers = alice.publish(("phone", alice.phone_key))
    assert [f.devices.version for f in answers if isinstance(f, Devices)] == [1]
    phone = alice.login(alice.phone_key, "phone")
    listed = phone.expect(Devices)  # right after its login
    assert (listed.nick, [d.device for d in listed.devices.devices]) == ("alice", ["laptop", "phone"])
    tablet = Identity.generate("alice")
    alice.publish(("phone", alice.phone_key), ("tablet", tablet))
    assert phone.expect(Devices).devices.version == 2


def _unchecked(identity: Identity, version: int, devices: tuple[Device, ...]) -> DeviceListRecord:
    """A list signed by `identity` without the checks `sign_device_list` makes."""
    return device_list_record(
        DeviceList(
            user="alice",
            version=version,
            devices=devices,
            signature=identity.sign(device_list_message("alice", version, devices)),
        )
    )


@pytest.mark.parametrize("case", ["older", "same", "forged", "foreign", "without-me"])
def test_the_server_refuses_a_list_that_is_not_the_persons_newest(
    server: Server, client_ctx: ssl.SSLContext, case: str
) -> None:
    alice = Person(server, client_ctx)
    alice.publish(("phone", alice.phone_key), version=5)
    stranger = Identity.generate("alice")
    laptop = Device("laptop", alice.identity.sig_key)
    evil = DeviceRecord(device="evil", key=stranger.sig_key)
    if case in ("older", "same"):
        answers = alice.publish(version=4 if case == "older" else 5)
    else:
        if case == "forged":  # a device added to a validly signed list
            signed = _unchecked(alice.identity, 6, (laptop,))
            record = dataclasses.replace(signed, devices=(*signed.devices, evil))
        elif case == "foreign":  # signed, but by another key
            record = _unchecked(stranger, 6, (laptop, Device("evil", stranger.sig_key)))
        else:  # the identity's own device left out
            record = _unchecked(alice.identity, 6, (Device("phone", alice.phone_key.sig_key),))
        alice.laptop.send(PublishDevices(devices=record))
        answers = alice.laptop.round_trip()
    errors = [f for f in answers if isinstance(f, Error)]
    assert errors and errors[0].code == Code.INVALID and not errors[0].fatal
    held = server.store.device_list("alice")
    assert held is not None and held[0] == 5


def test_only_the_device_holding_the_identity_key_may_change_the_list(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    alice = Person(server, client_ctx)
    phone = alice.link_phone()
    signed = sign_device_list(alice.identity, 9, (Device("laptop", alice.identity.sig_key),))
    phone.send(PublishDevices(devices=device_list_record(signed)))  # even a validly signed one
    (answer,) = [f for f in phone.round_trip() if isinstance(f, Error)]
    assert answer.code == Code.NOT_REGISTERED and "identity key" in answer.reason


def test_whispers_go_to_the_device_they_name_and_acks_come_back_per_device(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    alice = Person(server, client_ctx)
    phone = alice.link_phone()
    bob = RawIdentity(server, client_ctx, "bob", version=DEVICES_VERSION)
    # bob fetches alice's keys: the list, and a bundle per device.
    bob.send(FetchKeys(nick="alice", ref="k1"))
    keys = bob.expect(Keys)
    assert keys.device == "laptop" and [o.device for o in keys.others] == ["phone"]
    assert keys.others[0].identity.sig_key == alice.phone_key.sig_key
    assert keys.devices[0].version == 1
    # One whisper per device.
    bob.send(Whisper(to="alice", id="w1", header=b"h-phone", ciphertext=b"c", device="phone"))
    bob.send(Whisper(to="alice", id="w1", header=b"h-laptop", ciphertext=b"c", device="laptop"))
    stored = [f for f in bob.round_trip() if isinstance(f, WhisperStatus)]
    assert [(s.status, s.device) for s in stored] == [("stored", "phone"), ("stored", "laptop")]
    to_phone, to_laptop = phone.expect(Delivery), alice.laptop.expect(Delivery)
    assert (to_phone.header, to_laptop.header) == (b"h-phone", b"h-laptop")
    assert to_phone.sender == "bob" and to_phone.device == ""  # bob has no list
    phone.send(Ack(id=to_phone.id))
    delivered = bob.expect(WhisperStatus)
    assert (delivered.id, delivered.status, delivered.device) == ("w1", "delivered", "phone")
    # A device the list does not name is refused.
    bob.send(Whisper(to="alice", id="w2", header=b"h", ciphertext=b"c", device="tablet"))
    (refused,) = [f for f in bob.round_trip() if isinstance(f, Error)]
    assert refused.code == Code.NO_SUCH_USER and "tablet" in refused.reason


def test_a_copy_for_another_of_your_devices_says_which_device_sent_it(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    alice = Person(server, client_ctx)
    phone = alice.link_phone()
    phone.send(Whisper(to="alice", id="c1", header=b"h", ciphertext=b"copy", device="laptop"))
    assert [f.status for f in phone.round_trip() if isinstance(f, WhisperStatus)] == ["stored"]
    copy = alice.laptop.expect(Delivery)
    assert (copy.sender, copy.device, copy.ciphertext) == ("alice", "phone", b"copy")
    phone.send(Whisper(to="alice", id="c2", header=b"h", ciphertext=b"c", device="phone"))
    (refused,) = [f for f in phone.round_trip() if isinstance(f, Error)]
    assert refused.code == Code.INVALID  # to itself


def test_an_unlinked_device_is_logged_out_gets_nothing_more_and_cannot_log_in(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    alice = Person(server, client_ctx)
    phone = alice.link_phone()
    bob = RawIdentity(server, client_ctx, "bob", version=DEVICES_VERSION)
    phone.close()
    assert server.wait_sessions(at_most=2, timeout=TIMEOUT)
    bob.send(Whisper(to="alice", id="w1", header=b"h", ciphertext=b"queued for the phone", device="phone"))
    bob.round_trip()
    assert len(server.store.pending("alice/phone")) == 1
    alice.publish()  # version 2: the laptop alone
    assert server.store.pending("alice/phone") == []  # what waited for it is gone
    assert refusal(server, client_ctx, "alice", alice.phone_key, "phone").code == Code.NICK_REGISTERED
    bob.send(Whisper(to="alice", id="w2", header=b"h", ciphertext=b"c", device="phone"))
    (refused,) = [f for f in bob.round_trip() if isinstance(f, Error)]
    assert refused.code == Code.NO_SUCH_USER


def test_unlinking_a_device_that_is_online_logs_it_out(server: Server, client_ctx: ssl.SSLContext) -> None:
    alice = Person(server, client_ctx)
    phone = alice.link_phone()
    alice.publish()
    closed = phone.expect(Error)
    assert (closed.code, closed.fatal) == (Code.UNLINKED, True)


def test_a_reconnect_of_a_linked_device_replaces_its_stale_session_only(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    alice = Person(server, client_ctx)
    stale = alice.link_phone()
    fresh = alice.login(alice.phone_key, "phone")
    assert stale.expect(Error).code == Code.REPLACED
    fresh.send(Say(room="#lobby", text="back"))
    assert hears(alice.laptop, "back")  # the laptop was left alone and hears the new session


def test_devices_beyond_the_servers_cap_are_refused_with_a_clear_error(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    server = start_server(max_devices=2)
    alice = Person(server, client_ctx)
    tablet = Identity.generate("alice")
    alice.publish(("phone", alice.phone_key), ("tablet", tablet))
    phone = alice.login(alice.phone_key, "phone")
    too_many = refusal(server, client_ctx, "alice", tablet, "tablet")
    assert too_many.code == Code.QUOTA and "2 devices" in too_many.reason
    phone.close()
    assert server.wait_sessions(at_most=1, timeout=TIMEOUT)
    alice.login(tablet, "tablet").round_trip()  # room for it now


def test_pairing_messages_are_relayed_between_a_new_device_and_the_identity_device(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    alice = Person(server, client_ctx)
    phone = alice.link_phone()
    newcomer = RawIdentity(server, client_ctx, "newdevice", version=DEVICES_VERSION)
    newcomer.send(Link(peer="alice", pairing="p1", step="commit", data=b"commitment"))
    got = alice.laptop.expect(Link)
    assert (got.peer, got.pairing, got.step, got.data) == ("newdevice", "p1", "commit", b"commitment")
    assert not any(isinstance(f, Link) for f in phone.round_trip())  # only the identity device
    alice.laptop.send(Link(peer="newdevice", pairing="p1", step="answer", data=b"B"))
    back = newcomer.expect(Link)
    assert (back.peer, back.step, back.data) == ("alice", "answer", b"B")
    newcomer.send(Link(peer="nobody", pairing="p1", step="commit", data=b"x"))
    (nobody,) = [f for f in newcomer.round_trip() if isinstance(f, Error)]
    assert nobody.code == Code.NO_SUCH_USER and nobody.ref == "p1"


def test_an_older_client_is_served_as_its_persons_one_device(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    alice = Person(server, client_ctx)
    alice.link_phone()
    old = RawIdentity(server, client_ctx, "carol", version=3)
    old.send(FetchKeys(nick="alice", ref="k"))
    keys = old.expect(Keys)
    assert (keys.devices, keys.others, keys.device) == ((), (), "")
    old.send(Whisper(to="alice", id="o1", header=b"h", ciphertext=b"c"))  # names no device
    assert alice.laptop.expect(Delivery).msg_id == "o1"  # the identity device gets it
    old.send(Link(peer="alice", pairing="p", step="commit"))
    (unexpected,) = [f for f in old.round_trip() if isinstance(f, Error)]
    assert unexpected.code == Code.UNEXPECTED
