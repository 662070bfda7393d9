"""Linking and unlinking devices with the real client over real TLS (client/linking.py),
and whispers between a person with two devices and another with one."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat import TIMEOUT, next_matching
from linking_helpers import Person, link_phone
from whisper_helpers import disk_keys, login

from securechat import Client, LoginRejected
from securechat.client.events import WhisperCopied, WhisperReceived
from securechat.client.linking import LinkError, unlink
from securechat.client.whispers import WhisperKeys
from securechat.protocol import Code, Error, Message, WhisperStatus
from securechat.server import Server


@pytest.fixture
def alice(server: Server, client_ctx: ssl.SSLContext, tmp_path: Path) -> Iterator[tuple[Client, WhisperKeys]]:
    """alice's laptop (the identity's device), logged in; closed at teardown."""
    keys = disk_keys(tmp_path / "laptop", "alice")
    laptop = login(server, client_ctx, "alice", keys)
    yield laptop, keys
    laptop.close()


def test_a_linked_phone_whispers_and_receives_as_alice_with_copies_to_the_laptop(
    server: Server, client_ctx: ssl.SSLContext, tmp_path: Path, alice: tuple[Client, WhisperKeys]
) -> None:
    laptop, laptop_keys = alice
    phone_keys = disk_keys(tmp_path / "phone", "alice")
    device = link_phone(server.address[1], client_ctx, laptop, laptop_keys, phone_keys)
    assert device == phone_keys.device and phone_keys.linked
    assert [d for d, _ in laptop_keys.own_devices()] == [laptop_keys.device, phone_keys.device]
    phone = login(server, client_ctx, "alice", phone_keys)
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"))
    # bob -> alice: both of her devices get it, once each.
    sent = bob.whisper("alice", "to all of alice's devices")
    for device_client in (laptop, phone):
        got = next_matching(device_client, WhisperReceived, msg_id=sent)
        assert (got.sender, got.text) == ("bob", "to all of alice's devices")
    next_matching(bob, WhisperStatus, id=sent, status="delivered")
    # The phone answers bob; the laptop gets a copy of what the phone sent.
    answer = phone.whisper("bob", "from alice's phone")
    assert next_matching(bob, WhisperReceived, msg_id=answer).text == "from alice's phone"
    copy = next_matching(laptop, WhisperCopied, msg_id=answer)
    assert (copy.to, copy.text, copy.device) == ("bob", "from alice's phone", phone_keys.device)
    # And the other way round.
    from_laptop = laptop.whisper("bob", "from alice's laptop")
    assert next_matching(bob, WhisperReceived, msg_id=from_laptop).text == "from alice's laptop"
    assert next_matching(phone, WhisperCopied, msg_id=from_laptop).to == "bob"
    # The safety number bob sees for alice is the same on both of her devices.
    assert laptop.keys is not None and phone.keys is not None and bob.keys is not None
    assert (
        phone.keys.safety_number("bob") == laptop.keys.safety_number("bob") == bob.keys.safety_number("alice")
    )
    for client in (phone, bob, laptop):
        client.close()


def test_a_wrong_code_typed_three_times_links_nothing(
    server: Server, client_ctx: ssl.SSLContext, tmp_path: Path, alice: tuple[Client, WhisperKeys]
) -> None:
    laptop, laptop_keys = alice
    phone_keys = disk_keys(tmp_path / "phone", "alice")
    person = Person()
    person.typos = 3
    with pytest.raises(LinkError):
        link_phone(server.address[1], client_ctx, laptop, laptop_keys, phone_keys, person)
    assert not phone_keys.linked
    assert server.store.device_list("alice") is None  # nothing was published
    with pytest.raises(LoginRejected) as refused:  # the phone's key is not alice's
        login(server, client_ctx, "alice", phone_keys, wait_published=False)
    assert refused.value.code == Code.NICK_REGISTERED


def test_an_unlinked_phone_is_logged_out_and_gets_nothing_more(
    server: Server, client_ctx: ssl.SSLContext, tmp_path: Path, alice: tuple[Client, WhisperKeys]
) -> None:
    laptop, laptop_keys = alice
    phone_keys = disk_keys(tmp_path / "phone", "alice")
    link_phone(server.address[1], client_ctx, laptop, laptop_keys, phone_keys)
    phone = login(server, client_ctx, "alice", phone_keys)
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"))
    first = bob.whisper("alice", "before")
    next_matching(phone, WhisperReceived, msg_id=first)
    unlink(laptop, laptop_keys, phone_keys.device)
    gone = next_matching(phone, Error, code=Code.UNLINKED)
    assert gone.fatal
    after = bob.whisper("alice", "after the unlink")  # bob learns the new list with alice's keys
    assert next_matching(laptop, WhisperReceived, msg_id=after).text == "after the unlink"
    assert server.store.pending(f"alice/{phone_keys.device}") == []  # its copy was refused
    phone.close()
    bob.close()


def test_a_device_linked_after_a_peer_fetched_keys_still_gets_that_peers_next_whisper(
    server: Server, client_ctx: ssl.SSLContext, tmp_path: Path, alice: tuple[Client, WhisperKeys]
) -> None:
    # bob has a session with alice's laptop from before the phone existed: his client
    # learns of the phone from the server's "stored" (the list's version went up), fetches
    # alice's keys and sends that same whisper to the phone.
    laptop, laptop_keys = alice
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"))
    early = bob.whisper("alice", "before the phone")
    next_matching(laptop, WhisperReceived, msg_id=early)
    phone_keys = disk_keys(tmp_path / "phone", "alice")
    link_phone(server.address[1], client_ctx, laptop, laptop_keys, phone_keys)
    phone = login(server, client_ctx, "alice", phone_keys)
    later = bob.whisper("alice", "after the phone was linked")
    assert next_matching(phone, WhisperReceived, msg_id=later).text == "after the phone was linked"
    assert next_matching(laptop, WhisperReceived, msg_id=later).text == "after the phone was linked"
    for client in (phone, bob, laptop):
        client.close()


def test_the_identity_device_reconnects_as_itself_after_linking(
    server: Server, client_ctx: ssl.SSLContext, tmp_path: Path, alice: tuple[Client, WhisperKeys]
) -> None:
    # Its device id is in the list too: it must still log in as the nick's owner, get the
    # whispers queued for the nick, and be able to link another device.
    laptop, laptop_keys = alice
    phone_keys = disk_keys(tmp_path / "phone", "alice")
    link_phone(server.address[1], client_ctx, laptop, laptop_keys, phone_keys)
    laptop.close()
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"))
    sent = bob.whisper("alice", "waiting for the laptop")
    laptop = login(server, client_ctx, "alice", laptop_keys)
    assert next_matching(laptop, WhisperReceived, msg_id=sent).text == "waiting for the laptop"
    assert server.store.pending(f"alice/{laptop_keys.device}") == []  # no mailbox of its own
    tablet_keys = disk_keys(tmp_path / "tablet", "alice")
    link_phone(server.address[1], client_ctx, laptop, laptop_keys, tablet_keys)  # a third device
    assert sorted(d for d, _ in laptop_keys.own_devices()) == sorted(
        [laptop_keys.device, phone_keys.device, tablet_keys.device]
    )
    laptop.close()
    bob.close()


def _seen_until(client: Client, sentinel: str) -> list[object]:
    """Every event `client` gets until the room line `sentinel`: the server handles a
    sender's frames in order, so a whisper (or copy) sent before the line arrives before it."""
    seen: list[object] = []
    while True:
        item = client.next_event(timeout=TIMEOUT)
        if isinstance(item, Message) and item.text == sentinel:
            return seen
        seen.append(item)


def test_two_devices_and_a_bot_for_alice_and_bob_every_whisper_once_on_every_device(
    server: Server, client_ctx: ssl.SSLContext, tmp_path: Path, alice: tuple[Client, WhisperKeys]
) -> None:
    laptop, laptop_keys = alice
    phone_keys, bot_keys = disk_keys(tmp_path / "phone", "alice"), disk_keys(tmp_path / "bot", "alice")
    link_phone(server.address[1], client_ctx, laptop, laptop_keys, phone_keys)
    link_phone(server.address[1], client_ctx, laptop, laptop_keys, bot_keys)  # the bot: a device too
    phone, bot = login(server, client_ctx, "alice", phone_keys), login(server, client_ctx, "alice", bot_keys)
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"))
    devices = {"laptop": laptop, "phone": phone, "bot": bot}

    def received(client: Client, sentinel: str) -> list[str]:
        return [e.msg_id for e in _seen_until(client, sentinel) if isinstance(e, WhisperReceived)]

    def copied(client: Client, sentinel: str) -> list[str]:
        return [e.msg_id for e in _seen_until(client, sentinel) if isinstance(e, WhisperCopied)]

    to_alice = [bob.whisper("alice", f"bob to alice {n}") for n in range(3)]
    bob.say("sentinel 1")
    for name, client in devices.items():
        assert received(client, "sentinel 1") == to_alice, name  # each once, in order
    for name, sender in devices.items():
        sent = [sender.whisper("bob", f"{name} to bob {n}") for n in range(2)]
        sender.say(f"after {name}")
        assert received(bob, f"after {name}") == sent  # bob: each once
        for other_name, other in devices.items():
            if other is not sender:
                assert copied(other, f"after {name}") == sent, (name, other_name)
    for client in (phone, bot, bob):
        client.close()
