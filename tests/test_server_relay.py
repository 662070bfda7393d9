"""The relay's rules, with a real store and hub but no sockets."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_server_hub import FakeMember

from securechat.e2e.conversations import Conversations
from securechat.e2e.identity import Identity
from securechat.e2e.login import login_message
from securechat.protocol import (
    Ack,
    Code,
    KeyIdentity,
    OneTimePrekeyRecord,
    PublishKeys,
    SignedPrekeyRecord,
    Whisper,
    WhisperStatus,
)
from securechat.server.hub import Hub
from securechat.server.relay import OPK_LOW_WATER, Relay, RelayError
from securechat.server.store import SqliteStore


def publication(conv: Conversations, opk_count: int = 30) -> PublishKeys:
    b = conv.secrets.bundle(conv.identity, sorted(conv.secrets.opks)[:opk_count])
    i = b.identity
    return PublishKeys(
        identity=KeyIdentity(sig_key=i.sig_key, dh_key=i.dh_key, dh_sig=i.dh_sig),
        spk=SignedPrekeyRecord(
            id=b.spk.id, created=b.spk.created, public=b.spk.public, signature=b.spk.signature
        ),
        opks=tuple(OneTimePrekeyRecord(id=o.id, public=o.public, signature=o.signature) for o in b.opks),
    )


@pytest.fixture
def setup() -> tuple[Relay, Hub, Conversations]:
    hub = Hub()
    relay = Relay(SqliteStore(None), hub)
    bob = Conversations(Identity.generate("bob"))
    bob.bundle_to_publish()
    assert relay.register("bob", bob.identity.sig_key)
    return relay, hub, bob


def test_login_proofs(setup: tuple[Relay, Hub, Conversations]) -> None:
    relay, _, bob = setup
    nonce = b"n" * 32
    proof = bob.identity.sign(login_message("bob", nonce, bob.identity.sig_key))
    assert relay.proof_valid("bob", nonce, bob.identity.sig_key, proof)
    assert not relay.proof_valid("bob", b"m" * 32, bob.identity.sig_key, proof)  # another challenge
    assert not relay.proof_valid("carol", nonce, bob.identity.sig_key, proof)  # another nick
    assert relay.may_claim("bob", bob.identity.sig_key)
    assert not relay.may_claim("bob", b"x" * 32) and not relay.may_claim("bob", b"")
    assert relay.may_claim("carol", b"")


def test_publish_checks_every_signature_against_the_login_key(
    setup: tuple[Relay, Hub, Conversations],
) -> None:
    relay, _, bob = setup
    event = publication(bob)
    with pytest.raises(RelayError, match="not the key you logged in with"):
        relay.publish("bob", b"z" * 32, event)
    bad_spk = dataclasses.replace(event, spk=dataclasses.replace(event.spk, public=b"q" * 32))
    with pytest.raises(RelayError, match="invalid signature"):
        relay.publish("bob", bob.identity.sig_key, bad_spk)
    bad_opk = dataclasses.replace(event, opks=(dataclasses.replace(event.opks[0], id=999_999),))
    with pytest.raises(RelayError, match="one-time prekey"):
        relay.publish("bob", bob.identity.sig_key, bad_opk)
    status = relay.publish("bob", bob.identity.sig_key, event)
    assert status.count == 30 and status.spk_id == event.spk.id


def test_fetch_hands_out_one_prekey_and_warns_the_owner_when_low(
    setup: tuple[Relay, Hub, Conversations],
) -> None:
    relay, hub, bob = setup
    relay.publish("bob", bob.identity.sig_key, publication(bob, OPK_LOW_WATER + 1))
    owner = FakeMember()
    hub.join(owner, "bob", lambda users: None)
    first = relay.fetch("bob")
    assert len(first.opks) == 1 and owner.frames == []
    second = relay.fetch("BOB")
    assert second.opks[0].id != first.opks[0].id
    assert json.loads(owner.frames[-1]) == {
        "type": "prekey_count",
        "count": OPK_LOW_WATER - 1,
        "spk_id": first.spk.id,
        "spk_created": first.spk.created,
    }
    with pytest.raises(RelayError) as info:
        relay.fetch("nobody")
    assert info.value.code == Code.NO_SUCH_USER
    relay.register("carol", b"c" * 32)
    with pytest.raises(RelayError) as info:
        relay.fetch("carol")
    assert info.value.code == Code.NO_KEYS


def test_whisper_is_stored_pushed_and_acked_into_delivered(setup: tuple[Relay, Hub, Conversations]) -> None:
    relay, hub, _ = setup
    relay.register("alice", b"a" * 32)
    alice, bob = FakeMember(), FakeMember()
    hub.join(alice, "alice", lambda users: None)
    status = relay.whisper("alice", Whisper(to="bob", id="m1", header=b"h", ciphertext=b"c"))
    assert status.status == "stored"
    assert [d.msg_id for d in relay.pending("bob")] == ["m1"]  # bob offline: queued
    hub.join(bob, "bob", lambda users: None)
    relay.whisper("alice", Whisper(to="bob", id="m2", header=b"h", ciphertext=b"c"))
    pushed = json.loads(bob.frames[-1])
    assert pushed["type"] == "delivery" and pushed["msg_id"] == "m2" and pushed["sender"] == "alice"
    relay.ack("bob", Ack(id=pushed["id"]))
    relay.ack("bob", Ack(id=pushed["id"]))  # a repeated ack is harmless
    relay.ack("bob", Ack(id="not-a-number"))
    assert [json.loads(f) for f in alice.frames if b"whisper_status" in f] == [
        {"type": "whisper_status", "id": "m2", "to": "bob", "status": "delivered", "away": "", "reason": ""}
    ]
    with pytest.raises(RelayError) as info:
        relay.whisper("alice", Whisper(to="ghost", id="m3", header=b"h", ciphertext=b"c"))
    assert info.value.code == Code.NO_SUCH_USER


def test_a_whisper_the_recipient_could_not_decrypt_is_reported_failed_not_delivered(
    setup: tuple[Relay, Hub, Conversations],
) -> None:
    relay, hub, _ = setup
    relay.register("alice", b"a" * 32)
    alice, bob = FakeMember(), FakeMember()
    hub.join(alice, "alice", lambda users: None)
    hub.join(bob, "bob", lambda users: None)
    relay.whisper("alice", Whisper(to="bob", id="m1", header=b"h", ciphertext=b"c"))
    pushed = json.loads(bob.frames[-1])
    relay.ack("bob", Ack(id=pushed["id"], outcome="failed", reason="unknown-prekey"))
    assert [json.loads(f) for f in alice.frames if b"whisper_status" in f] == [
        {
            "type": "whisper_status",
            "id": "m1",
            "to": "bob",
            "status": "failed",
            "away": "",
            "reason": "unknown-prekey",
        }
    ]
    assert relay.pending("bob") == []  # dealt with: the sender's client sends it again if it can


def test_a_failure_is_kept_for_an_offline_sender_until_it_sends_that_whisper_again(
    setup: tuple[Relay, Hub, Conversations],
) -> None:
    relay, hub, _ = setup
    relay.register("alice", b"a" * 32)
    bob = FakeMember()
    hub.join(bob, "bob", lambda users: None)
    relay.whisper("alice", Whisper(to="bob", id="m1", header=b"h", ciphertext=b"c"))  # alice then left
    relay.ack("bob", Ack(id=json.loads(bob.frames[-1])["id"], outcome="failed", reason="no-session"))
    told = WhisperStatus(id="m1", to="bob", status="failed", reason="no-session")
    assert relay.failures("alice") == [told]
    assert relay.failures("alice") == [told]  # at every login, until it is answered:
    relay.whisper("alice", Whisper(to="bob", id="m1", header=b"h2", ciphertext=b"c2"))  # sent again
    assert relay.failures("alice") == []
    relay.ack("bob", Ack(id=json.loads(bob.frames[-1])["id"]))  # read this time
    assert relay.failures("alice") == []


def test_a_whisper_to_yourself_is_refused(setup: tuple[Relay, Hub, Conversations]) -> None:
    relay, _, _ = setup
    relay.register("alice", b"a" * 32)
    with pytest.raises(RelayError) as info:
        relay.whisper("Alice", Whisper(to="alice", id="m1", header=b"h", ciphertext=b"c"))
    assert info.value.code == Code.INVALID and relay.pending("alice") == []


def test_whisperers_are_told_when_the_recipient_is_away(setup: tuple[Relay, Hub, Conversations]) -> None:
    relay, hub, _ = setup
    relay.register("alice", b"a" * 32)
    bob = FakeMember()
    bob.away = "at lunch"
    hub.join(bob, "bob", lambda users: None)
    status = relay.whisper("alice", Whisper(to="bob", id="m1", header=b"h", ciphertext=b"c"))
    assert (status.status, status.away) == ("stored", "at lunch")
