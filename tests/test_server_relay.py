"""The relay's rules, with a real store and hub but no sockets."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest
from test_server_hub import FakeMember

from securechat.e2e import bundle as e2e_bundle
from securechat.e2e.bundle import KOPK_TARGET
from securechat.e2e.conversations import Conversations
from securechat.e2e.identity import Identity
from securechat.e2e.login import login_message
from securechat.protocol import (
    Ack,
    Code,
    OneTimePrekeyRecord,
    PublishKeys,
    Whisper,
    WhisperStatus,
)
from securechat.server import ServerConfig
from securechat.server.hub import Hub
from securechat.server.relay import OPK_LOW_WATER, Relay, RelayError
from securechat.server.store import SqliteStore, StoreUnavailable


def publication(conv: Conversations, opk_count: int = 30, kopk_count: int = KOPK_TARGET) -> PublishKeys:
    """A publish of `opk_count` one-time prekeys and `kopk_count` one-time KEM prekeys."""
    b = conv.secrets.bundle(
        conv.identity, sorted(conv.secrets.opks)[:opk_count], sorted(conv.secrets.kopks)[:kopk_count]
    )
    return e2e_bundle.publication(b)


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
        relay.publish("bob", b"z" * 32, event, kem=True)
    bad_spk = dataclasses.replace(event, spk=dataclasses.replace(event.spk, public=b"q" * 32))
    with pytest.raises(RelayError, match="invalid signature"):
        relay.publish("bob", bob.identity.sig_key, bad_spk, kem=True)
    bad_opk = dataclasses.replace(event, opks=(dataclasses.replace(event.opks[0], id=999_999),))
    with pytest.raises(RelayError, match="one-time prekey"):
        relay.publish("bob", bob.identity.sig_key, bad_opk, kem=True)
    status = relay.publish("bob", bob.identity.sig_key, event, kem=True)
    assert status.count == 30 and status.spk_id == event.spk.id


def test_fetch_hands_out_one_prekey_and_warns_the_owner_when_low(
    setup: tuple[Relay, Hub, Conversations],
) -> None:
    relay, hub, bob = setup
    relay.publish("bob", bob.identity.sig_key, publication(bob, OPK_LOW_WATER + 1), kem=True)
    owner = FakeMember()
    hub.join(owner, "bob", lambda room, users: None)
    owner.frames.clear()  # what logging in sent (the room it entered)
    first = relay.fetch(requester=b"r" * 32, nick="bob", kem=True)
    assert len(first.opks) == 1 and owner.frames == []
    second = relay.fetch(requester=b"r" * 32, nick="BOB", kem=True)
    assert second.opks[0].id != first.opks[0].id
    assert json.loads(owner.frames[-1]) == {
        "type": "prekey_count",
        "count": OPK_LOW_WATER - 1,
        "spk_id": first.spk.id,
        "spk_created": first.spk.created,
        "kem_count": KOPK_TARGET - 2,
        "kpk_id": first.kpk[0].id,
    }
    with pytest.raises(RelayError) as info:
        relay.fetch(requester=b"r" * 32, nick="nobody", kem=True)
    assert info.value.code == Code.NO_SUCH_USER
    relay.register("carol", b"c" * 32)
    with pytest.raises(RelayError) as info:
        relay.fetch(requester=b"r" * 32, nick="carol", kem=True)
    assert info.value.code == Code.NO_KEYS


def test_whisper_is_stored_pushed_and_acked_into_delivered(setup: tuple[Relay, Hub, Conversations]) -> None:
    relay, hub, _ = setup
    relay.register("alice", b"a" * 32)
    alice, bob = FakeMember(), FakeMember()
    hub.join(alice, "alice", lambda room, users: None)
    status = relay.whisper("alice", Whisper(to="bob", id="m1", header=b"h", ciphertext=b"c"))
    assert status.status == "stored"
    assert [d.msg_id for d in relay.pending("bob")] == ["m1"]  # bob offline: queued
    hub.join(bob, "bob", lambda room, users: None)
    relay.whisper("alice", Whisper(to="bob", id="m2", header=b"h", ciphertext=b"c"))
    pushed = json.loads(bob.frames[-1])
    assert pushed["type"] == "delivery" and pushed["msg_id"] == "m2" and pushed["sender"] == "alice"
    relay.ack("bob", Ack(id=pushed["id"]))
    relay.ack("bob", Ack(id=pushed["id"]))  # a repeated ack is harmless
    relay.ack("bob", Ack(id="not-a-number"))
    assert [json.loads(f) for f in alice.frames if b"whisper_status" in f] == [
        {
            "type": "whisper_status",
            "id": "m2",
            "to": "bob",
            "status": "delivered",
            "away": "",
            "reason": "",
            "device": "",
            "devices": 0,
        }
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
    hub.join(alice, "alice", lambda room, users: None)
    hub.join(bob, "bob", lambda room, users: None)
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
            "device": "",
            "devices": 0,
        }
    ]
    assert relay.pending("bob") == []  # dealt with: the sender's client sends it again if it can


def test_a_failure_is_kept_for_an_offline_sender_until_it_sends_that_whisper_again(
    setup: tuple[Relay, Hub, Conversations],
) -> None:
    relay, hub, _ = setup
    relay.register("alice", b"a" * 32)
    bob = FakeMember()
    hub.join(bob, "bob", lambda room, users: None)
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
    hub.join(bob, "bob", lambda room, users: None)
    status = relay.whisper("alice", Whisper(to="bob", id="m1", header=b"h", ciphertext=b"c"))
    assert (status.status, status.away) == ("stored", "at lunch")


def test_one_time_prekeys_held_are_capped_and_a_publish_over_the_cap_is_trimmed(
    setup: tuple[Relay, Hub, Conversations],
) -> None:
    # One session once stored 11,800 one-time prekeys in 8 s.
    relay, _, bob = setup
    cap = ServerConfig().opk_max_held
    for _ in range(3):
        status = relay.publish("bob", bob.identity.sig_key, new_prekeys(bob, 200), kem=True)
    assert status.count == cap  # the reply tells the client what the server holds
    assert relay.prekey_count("bob", kem=True).count == cap


def new_prekeys(conv: Conversations, count: int) -> PublishKeys:
    """A publication of `count` new one-time prekeys."""
    opks = conv.secrets.signed_opks(conv.identity, conv.secrets.new_opks(count))
    return dataclasses.replace(
        publication(conv, 0),
        opks=tuple(OneTimePrekeyRecord(id=o.id, public=o.public, signature=o.signature) for o in opks),
    )


def small_relay(**limits: object) -> tuple[Relay, Hub, list[float]]:
    """A relay with `limits` (ServerConfig fields); the store's monotonic clock is `now[0]`."""
    now = [1000.0]
    hub = Hub()
    store = SqliteStore(None, monotonic=lambda: now[0])
    relay = Relay(store, hub, config=dataclasses.replace(ServerConfig(), **limits), monotonic=lambda: now[0])  # type: ignore[arg-type]
    for nick in ("alice", "bob", "carol"):
        assert relay.register(nick, nick.encode() * 8)
    return relay, hub, now


def refusal(relay: Relay, sender: str, to: str, msg_id: str, size: int = 10) -> str:
    """The quota refusal's reason, or "" if the whisper was stored."""
    try:
        relay.whisper(sender, Whisper(to=to, id=msg_id, header=b"h", ciphertext=b"c" * (size - 1)))
    except RelayError as exc:
        assert exc.code == Code.QUOTA
        return exc.reason
    return ""


def test_each_queue_quota_is_refused_with_a_reason_the_sender_understands() -> None:
    relay, _, _ = small_relay(queue_max_per_recipient=2, queue_max_per_sender=3, queue_max_bytes=100)
    assert [refusal(relay, "alice", "bob", f"m{n}") for n in range(2)] == ["", ""]
    assert refusal(relay, "alice", "BOB", "m2") == (
        "BOB has too many whispers waiting to be read: nothing was stored; try again after BOB has read some"
    )
    assert refusal(relay, "alice", "carol", "m3") == ""
    assert refusal(relay, "alice", "carol", "m4") == (
        "you have too many whispers waiting to be read (at most 3 or 8192 KiB): nothing was stored; "
        "try again once some are read"
    )
    assert refusal(relay, "bob", "carol", "m5", size=80) == (
        "the server holds too many unread whispers: nothing was stored; try again later"
    )
    assert refusal(relay, "alice", "bob", "m1") == ""  # sent again: it was stored, so it is not refused


def test_fetches_beyond_an_owners_limit_carry_no_one_time_prekey_and_a_fast_requester_is_refused(
    setup: tuple[Relay, Hub, Conversations],
) -> None:
    _, _, bob = setup
    relay, _, now = small_relay(opk_burst_per_owner=2, fetch_burst=5)
    relay.register("bob", bob.identity.sig_key)
    relay.publish("bob", bob.identity.sig_key, publication(bob, 30), kem=True)
    opks = [len(relay.fetch("bob", requester=bytes([n]) * 32, kem=True).opks) for n in range(4)]
    assert opks == [1, 1, 0, 0]  # the bundle still goes out: setups use the signed prekey
    assert relay.prekey_count("bob", kem=True).count == 28
    for _ in range(5):
        relay.fetch("bob", requester=b"x" * 32, kem=True)
    with pytest.raises(RelayError) as info:
        relay.fetch("bob", requester=b"x" * 32, kem=True)  # the same identity, whatever its session
    assert info.value.code == Code.RATE_LIMITED
    now[0] += 60
    assert len(relay.fetch("bob", requester=b"y" * 32, kem=True).opks) == 1


def test_a_nick_nobody_logs_in_to_is_released_when_claimed_or_swept_unless_its_owner_is_online() -> None:
    day = 86_400.0
    relay, hub, now = small_relay(nick_ttl=10 * day)
    relay.whisper("alice", Whisper(to="bob", id="m1", header=b"h", ciphertext=b"c"))
    now[0] += 9 * day
    assert relay.register("carol", b"carol" * 8)  # carol logs in: her period starts again
    assert not relay.may_claim("bob", b"m" * 32)
    now[0] += 2 * day  # alice and bob: 11 days; carol: 2
    hub.join(FakeMember(), "alice", lambda room, users: None)  # online all along
    assert not relay.may_claim("alice", b"m" * 32)
    assert relay.may_claim("bob", b"m" * 32)  # expired: released, keys and queue with it
    assert relay.pending("bob") == [] and relay.register("bob", b"m" * 32)
    assert relay.expire_nicks() == []  # alice is online; bob is new; carol was here
    now[0] += 9 * day
    assert relay.expire_nicks() == ["carol"]


def test_failures_are_told_a_page_at_a_login() -> None:
    relay, hub, _ = small_relay(queue_page=2)
    bob = FakeMember()
    hub.join(bob, "bob", lambda room, users: None)
    for n in range(3):
        relay.whisper("alice", Whisper(to="bob", id=f"m{n}", header=b"h", ciphertext=b"c"))
        relay.ack("bob", Ack(id=json.loads(bob.frames[-1])["id"], outcome="failed", reason="no-session"))
    assert [s.id for s in relay.failures("alice")] == ["m0", "m1"]


def poison(path: Path) -> None:
    """Make the database refuse, from now on, to queue a whisper whose message id is
    "poison" (a failure in the middle of a transaction, as a full disk or an I/O error
    would be), through a second connection to the same file."""
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TRIGGER poison BEFORE INSERT ON queue WHEN NEW.msg_id = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    )
    db.commit()
    db.close()


def test_a_whisper_reaches_its_online_recipient_only_after_its_commit(tmp_path: Path) -> None:
    hub = Hub()
    store = SqliteStore(tmp_path / "db.sqlite")
    relay = Relay(store, hub)
    relay.register("alice", b"a" * 32)
    relay.register("bob", b"b" * 32)
    alice, bob = FakeMember(), FakeMember()
    hub.join(alice, "alice", lambda room, users: None)
    hub.join(bob, "bob", lambda room, users: None)
    deliveries_at_commit: list[int] = []

    def watch(statement: str) -> None:
        if statement == "COMMIT":
            deliveries_at_commit.append(sum(b'"delivery"' in f for f in bob.frames))

    store._db.set_trace_callback(watch)  # the store's own connection: what it runs, in order
    relay.whisper("alice", Whisper(to="bob", id="m1", header=b"h", ciphertext=b"c"))
    assert set(deliveries_at_commit) == {0}  # nothing pushed before the (last) commit
    assert sum(b'"delivery"' in f for f in bob.frames) == 1  # and pushed after it

    # A commit that fails: the sender is refused, and the recipient never saw it.
    poison(tmp_path / "db.sqlite")
    with pytest.raises(StoreUnavailable):
        relay.whisper("alice", Whisper(to="bob", id="poison", header=b"h", ciphertext=b"c"))
    assert [json.loads(f)["msg_id"] for f in bob.frames if b'"delivery"' in f] == ["m1"]
    store.close()


def test_whispers_read_together_take_one_commit_and_reach_their_recipient_in_one_write(
    setup: tuple[Relay, Hub, Conversations],
) -> None:
    relay, hub, _ = setup
    store = relay._store
    assert isinstance(store, SqliteStore)
    relay.register("alice", b"a" * 32)
    alice, bob = FakeMember(), FakeMember()
    hub.join(alice, "alice", lambda room, users: None)
    hub.join(bob, "bob", lambda room, users: None)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    outcomes = relay.whisper_many(
        "alice",
        [
            Whisper(to="bob", id="m1", header=b"h", ciphertext=b"c"),
            Whisper(to="alice", id="m2", header=b"h", ciphertext=b"c"),  # herself
            Whisper(to="ghost", id="m3", header=b"h", ciphertext=b"c"),  # nobody
            Whisper(to="bob", id="m4", header=b"h", ciphertext=b"c"),
        ],
    )
    store._db.set_trace_callback(None)
    # One write transaction (reads, such as the device list's, take none).
    assert statements.count("BEGIN IMMEDIATE") == 1
    stored, herself, nobody, stored_too = outcomes
    assert stored == WhisperStatus(id="m1", to="bob", status="stored")
    assert stored_too == WhisperStatus(id="m4", to="bob", status="stored")
    assert isinstance(herself, RelayError) and herself.code == Code.INVALID
    assert isinstance(nobody, RelayError) and nobody.code == Code.NO_SUCH_USER
    [pushed] = [f for f in bob.frames if b'"delivery"' in f]  # both in one write, in order
    deliveries = [json.loads(line) for line in pushed.splitlines()]
    assert [d["msg_id"] for d in deliveries] == ["m1", "m4"]
    relay.ack_many("bob", [Ack(id=d["id"]) for d in deliveries])
    [told] = [f for f in alice.frames if b"whisper_status" in f]  # one write to alice too
    assert [json.loads(line)["id"] for line in told.splitlines()] == ["m1", "m4"]


def test_kem_prekeys_are_published_and_each_one_time_one_handed_out_once(
    setup: tuple[Relay, Hub, Conversations],
) -> None:
    relay, _, bob = setup
    status = relay.publish("bob", bob.identity.sig_key, publication(bob, 5, 3), kem=True)
    kpk_id = bob.secrets.current_kpk().id  # type: ignore[union-attr]
    assert (status.kem_count, status.kpk_id) == (3, kpk_id)
    fetched = [relay.fetch(requester=b"r" * 32, nick="bob", kem=True) for _ in range(4)]
    handed = [k.kopks[0].id for k in fetched if k.kopks]
    assert len(handed) == 3 == len(set(handed)) and not fetched[3].kopks
    assert all(k.kpk[0].id == kpk_id for k in fetched)  # the last-resort one, every time
    # A session of protocol version 2 gets no KEM prekey, and burns no one-time one.
    relay.publish("bob", bob.identity.sig_key, publication(bob, 0, 2), kem=True)
    old = relay.fetch(requester=b"r" * 32, nick="bob", kem=False)
    assert (old.kpk, old.kopks) == ((), ()) and relay.prekey_count("bob", kem=True).kem_count == 2
    assert relay.prekey_count("bob", kem=False).kem_count == 0


def test_a_publish_without_a_kem_prekey_removes_those_held(setup: tuple[Relay, Hub, Conversations]) -> None:
    relay, _, bob = setup
    relay.publish("bob", bob.identity.sig_key, publication(bob, 5, 3), kem=True)
    older_client = dataclasses.replace(publication(bob, 0, 0), kpk=())
    status = relay.publish("bob", bob.identity.sig_key, older_client, kem=True)
    assert (status.kem_count, status.kpk_id) == (0, 0)  # no post-quantum setup is sent to it
    assert relay.fetch(requester=b"r" * 32, nick="bob", kem=True).kpk == ()


def test_a_kem_prekey_with_a_bad_signature_is_refused(setup: tuple[Relay, Hub, Conversations]) -> None:
    relay, _, bob = setup
    good = publication(bob, 0, 1)
    bad_kpk = dataclasses.replace(good.kpk[0], signature=bytes(64))
    with pytest.raises(RelayError, match="post-quantum prekey"):
        relay.publish("bob", bob.identity.sig_key, dataclasses.replace(good, kpk=(bad_kpk,)), kem=True)
    bad_kopk = dataclasses.replace(good.kopks[0], signature=bytes(64))
    with pytest.raises(RelayError, match="one-time post-quantum prekey"):
        relay.publish("bob", bob.identity.sig_key, dataclasses.replace(good, kopks=(bad_kopk,)), kem=True)
    assert relay.prekey_count("bob", kem=True).kpk_id == 0
