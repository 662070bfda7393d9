"""The client's whisper engine: prekey publication policy, persistence order, held whispers."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from e2e_helpers import fetched_bundle, keys_event, party
from whisper_helpers import FAST_KDF

from securechat.client.budget import Budget
from securechat.client.events import KeyChanged, WhisperCopied, WhisperFailed, WhisperReceived
from securechat.client.inbox import MemoryStorage
from securechat.client.keystore import Keystore
from securechat.client.whispers import HELD_PER_PEER, OPK_TOPUP_BURST, OPK_TOPUP_EVERY, WhisperKeys
from securechat.e2e import ratchet
from securechat.e2e.bundle import KOPK_REFILL_BELOW, KOPK_TARGET, OPK_KEEP, OPK_REFILL_BELOW, OPK_TARGET
from securechat.e2e.conversations import Conversations
from securechat.e2e.identity import Identity
from securechat.protocol import Delivery, Hello, PrekeyCount
from securechat.protocol.keys import MAX_OPKS_PER_PUBLISH
from securechat.protocol.limits import MAX_TEXT_BYTES


def engine(nick: str, clock: float | None = None) -> tuple[WhisperKeys, MemoryStorage]:
    storage = MemoryStorage()
    now = (lambda: clock) if clock is not None else time.time
    return WhisperKeys(Conversations(Identity.generate(nick), clock=now), storage, clock=now), storage


def test_first_publication_sends_everything_and_persists_first() -> None:
    keys, storage = engine("bob")
    (pub,) = keys.publications(PrekeyCount(count=0, spk_id=0))
    assert len(pub.opks) == OPK_TARGET
    # The private halves are on disk before the public ones leave.
    assert storage.commits == 1 and "prekeys" in storage.records


def test_nothing_is_published_when_all_is_well() -> None:
    keys, _ = engine("bob")
    (first,) = keys.publications(PrekeyCount(count=0, spk_id=0))
    assert keys.publications(PrekeyCount(count=OPK_TARGET, spk_id=first.spk.id)) == []


def test_refill_sends_only_new_prekeys() -> None:
    keys, _ = engine("bob")
    (first,) = keys.publications(PrekeyCount(count=0, spk_id=0))
    (refill,) = keys.publications(PrekeyCount(count=OPK_REFILL_BELOW - 1, spk_id=first.spk.id))
    assert len(refill.opks) == OPK_TARGET - (OPK_REFILL_BELOW - 1)
    assert not {o.id for o in refill.opks} & {o.id for o in first.opks}  # never re-sent


def test_a_week_old_signed_prekey_is_rotated() -> None:
    now = [time.time()]
    keys = WhisperKeys(Conversations(Identity.generate("bob")), MemoryStorage(), clock=lambda: now[0])
    (first,) = keys.publications(PrekeyCount(count=0, spk_id=0))
    now[0] += 8 * 86_400
    (rotated,) = keys.publications(PrekeyCount(count=OPK_TARGET, spk_id=first.spk.id))
    assert rotated.spk.id == first.spk.id + 1 and rotated.opks == ()


def deliver(
    keys: WhisperKeys, sender: str, frame: tuple[bytes, bytes], n: int, msg_id: str | None = None
) -> list[object]:
    incoming = keys.receive(
        Delivery(
            id=str(n), msg_id=msg_id or f"m{n}", sender=sender, header=frame[0], ciphertext=frame[1], ts=1.0
        )
    )
    return [
        *incoming.events,
        *(
            ("ack", a.id)
            if a.outcome == "read"
            else ("held", a.id)
            if a.outcome == "held"
            else ("failed", a.id, a.reason)
            for a in incoming.acks
        ),
    ]


def test_whisper_from_a_changed_key_is_held_unacked_until_trusted() -> None:
    bob, _ = engine("bob")
    bob.publications(PrekeyCount(count=0, spk_id=0))
    bob_conv = bob._conv  # the in-memory owner of the prekeys the directory would serve
    alice = party("alice", 1)
    alice._clock = time.time
    alice.start_session("bob", fetched_bundle(bob_conv))
    got = deliver(bob, "alice", alice.encrypt("bob", b'{"text":"hi"}'), 1)
    assert isinstance(got[0], WhisperReceived) and got[1] == ("ack", "1")

    new_alice = party("alice", 2)
    new_alice._clock = time.time
    new_alice.start_session("bob", fetched_bundle(bob_conv))
    held = deliver(bob, "alice", new_alice.encrypt("bob", b'{"text":"new key"}'), 2)
    # Acked only as "held": the server keeps it (it is not read), and goes on with the queue.
    assert isinstance(held[0], KeyChanged) and held[0].held == 1 and held[1:] == [("held", "2")]
    released = bob.trust("alice")
    assert [e.text for e in released.events if isinstance(e, WhisperReceived)] == ["new key"]
    assert [a.id for a in released.acks] == ["2"]


def test_garbage_is_acked_and_reported_not_shown() -> None:
    bob, _ = engine("bob")
    got = deliver(bob, "alice", (b"\x01" * 58, b"\x02" * 40), 3)
    assert isinstance(got[0], WhisperFailed) and got[1] == ("failed", "3", "malformed")


def test_authenticated_but_malformed_content_is_not_shown_as_text() -> None:
    bob, _ = engine("bob")
    bob.publications(PrekeyCount(count=0, spk_id=0))
    alice = party("alice", 1)
    alice._clock = time.time
    alice.start_session("bob", fetched_bundle(bob._conv))
    got = deliver(bob, "alice", alice.encrypt("bob", b"not json"), 4)
    assert isinstance(got[0], WhisperFailed) and "malformed" in got[0].reason


def test_a_whisper_delivered_again_is_acked_silently_even_after_a_restart(tmp_path: object) -> None:
    from pathlib import Path

    from whisper_helpers import disk_keys

    d = Path(str(tmp_path)) / "bob"
    bob = disk_keys(d, "bob")
    bob.publications(PrekeyCount(count=0, spk_id=0))
    alice = party("alice", 1)
    alice._clock = time.time
    alice.start_session("bob", fetched_bundle(bob._conv))
    frame = alice.encrypt("bob", b'{"text":"once"}')
    first = deliver(bob, "alice", frame, 10, "once")
    assert isinstance(first[0], WhisperReceived)
    again = deliver(bob, "alice", frame, 11, "once")  # the same message, a new delivery id
    assert again == [("ack", "11")]
    restarted = disk_keys(d, "bob")  # the memory of it survives a restart
    assert deliver(restarted, "alice", frame, 12, "once") == [("ack", "12")]
    replayed = deliver(restarted, "alice", frame, 13, "other")  # id differs: a replay of used bytes
    assert isinstance(replayed[0], WhisperFailed) and replayed[1] == ("failed", "13", "auth-failed")


def test_a_held_whisper_delivered_again_raises_no_second_alarm() -> None:
    bob, _ = engine("bob")
    bob.publications(PrekeyCount(count=0, spk_id=0))
    alice = party("alice", 1)
    alice._clock = time.time
    alice.start_session("bob", fetched_bundle(bob._conv))
    deliver(bob, "alice", alice.encrypt("bob", b'{"text":"hi"}'), 1)
    new_alice = party("alice", 2)
    new_alice._clock = time.time
    new_alice.start_session("bob", fetched_bundle(bob._conv))
    frame = new_alice.encrypt("bob", b'{"text":"held"}')
    assert isinstance(deliver(bob, "alice", frame, 2, "h1")[0], KeyChanged)
    assert deliver(bob, "alice", frame, 3, "h1") == [("held", "3")]  # the same again: no second alarm
    released = bob.trust("alice")
    assert [e.text for e in released.events if isinstance(e, WhisperReceived)] == ["held"]


# -- a server that lies about our prekeys ------------------------------------------------------


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_server_answering_every_publication_with_count_0_gets_a_bounded_number_of_new_keys() -> None:
    clock = FakeMonotonic()
    keys = WhisperKeys(
        Conversations(Identity.generate("bob")),
        MemoryStorage(),
        topups=Budget(OPK_TOPUP_BURST, OPK_TOPUP_EVERY, clock),
    )
    made: set[int] = set()
    spk_id = 0
    for _ in range(50):  # each round trip: "you have none" (before: 100 new keys each, 5,000 in all)
        for pub in keys.publications(PrekeyCount(count=0, spk_id=spk_id)):
            assert len(pub.opks) <= MAX_OPKS_PER_PUBLISH
            made |= {o.id for o in pub.opks}
            spk_id = pub.spk.id
    assert len(made) == OPK_TOPUP_BURST * OPK_TARGET
    clock.now += OPK_TOPUP_EVERY  # the budget comes back with time, one top-up at a time
    (pub,) = keys.publications(PrekeyCount(count=0, spk_id=spk_id))
    assert len(pub.opks) == OPK_TARGET
    assert keys.publications(PrekeyCount(count=0, spk_id=spk_id)) == []


def test_unused_one_time_prekeys_are_kept_up_to_a_bound_oldest_deleted_first() -> None:
    conv = Conversations(Identity.generate("bob"))
    first = conv.secrets.new_opks(OPK_TARGET)
    for _ in range(10):
        conv.secrets.new_opks(OPK_TARGET)
    assert len(conv.secrets.opks) == OPK_KEEP  # before: 1,100
    assert not set(first) & set(conv.secrets.opks)
    assert max(conv.secrets.opks) == conv.secrets.next_opk_id - 1


def test_whispers_held_for_a_changed_key_are_bounded_per_peer() -> None:
    bob, _ = engine("bob")
    bob.publications(PrekeyCount(count=0, spk_id=0))
    bob_conv = bob._conv
    alice = party("alice", 1)
    alice._clock = time.time
    alice.start_session("bob", fetched_bundle(bob_conv))
    deliver(bob, "alice", alice.encrypt("bob", b'{"text":"hi"}'), 0)
    impostor = party("alice", 2)
    impostor._clock = time.time
    impostor.start_session("bob", fetched_bundle(bob_conv))
    got = []
    for n in range(1, HELD_PER_PEER + 11):
        got += deliver(bob, "alice", impostor.encrypt("bob", b'{"text":"x"}'), n)
    alarms = [a for a in got if isinstance(a, KeyChanged)]
    assert len(alarms) == HELD_PER_PEER  # one alarm per held whisper
    # None read: each acked only as "held" (the server keeps them all), past the bound too.
    assert [a for a in got if not isinstance(a, KeyChanged)] == [
        ("held", str(n)) for n in range(1, HELD_PER_PEER + 11)
    ]
    assert max(a.held for a in alarms) == HELD_PER_PEER  # before: 110


def test_a_badly_padded_but_authenticated_whisper_is_reported_malformed_not_tampered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bob, _ = engine("bob")
    bob.publications(PrekeyCount(count=0, spk_id=0))
    alice = party("alice", 1)
    alice._clock = time.time
    alice.start_session("bob", fetched_bundle(bob._conv))
    with monkeypatch.context() as patch:  # a faulty client: no padding in a version-2 session
        patch.setattr(ratchet, "pad", lambda plaintext: plaintext)
        faulty = alice.encrypt("bob", b'{"text":"unpadded"}')
    got = deliver(bob, "alice", faulty, 5)
    assert isinstance(got[0], WhisperFailed) and got[1] == ("failed", "5", "malformed")
    # Nothing moved: alice's next whisper (padded) still decrypts.
    got = deliver(bob, "alice", alice.encrypt("bob", b'{"text":"padded"}'), 6)
    assert isinstance(got[0], WhisperReceived) and got[0].text == "padded"


def test_a_text_too_long_once_encoded_is_refused_before_the_ratchet_moves() -> None:
    bob, _ = engine("bob")
    bob.publications(PrekeyCount(count=0, spk_id=0))
    alice, _ = engine("alice")
    alice.serve_kem(True)
    alice.publications(PrekeyCount(count=0, spk_id=0))
    alice.start_session(keys_event(fetched_bundle(bob._conv), "bob"))
    quotes = '"' * MAX_TEXT_BYTES  # 4 KiB of text, 8 KiB once JSON escapes it
    with pytest.raises(ValueError, match="too long to whisper"):
        alice.seal_all("bob", quotes, "m1")
    assert alice.unsent() == []  # nothing kept that could never be sent
    (frame,) = alice.seal_all("bob", "a" * MAX_TEXT_BYTES, "m2")  # plain text of the same length fits
    got = deliver(bob, "alice", (frame.header, frame.ciphertext), 7)
    assert isinstance(got[0], WhisperReceived) and got[0].text == "a" * MAX_TEXT_BYTES


def test_kem_prekeys_are_published_to_a_server_that_holds_them_in_the_same_frame() -> None:
    keys, _ = engine("bob")
    assert all(p.kpk == () for p in keys.publications(PrekeyCount(count=0, spk_id=0)))  # an older server
    keys, _ = engine("bob")
    keys.serve_kem(True)
    (first,) = keys.publications(PrekeyCount(count=0, spk_id=0))
    assert len(first.opks) == OPK_TARGET and len(first.kopks) == KOPK_TARGET and len(first.kpk) == 1
    kpk_id = first.kpk[0].id
    held = PrekeyCount(count=OPK_TARGET, spk_id=first.spk.id, kem_count=KOPK_TARGET, kpk_id=kpk_id)
    assert keys.publications(held) == []
    low = dataclasses.replace(held, kem_count=KOPK_REFILL_BELOW - 1)
    (refill,) = keys.publications(low)
    assert refill.opks == () and len(refill.kopks) == KOPK_TARGET - (KOPK_REFILL_BELOW - 1)
    assert not {k.id for k in refill.kopks} & {k.id for k in first.kopks}
    # A server that says it holds no KEM prekey is sent the KPK again, with new one-time
    # ones (within the top-up budget).
    (again,) = keys.publications(dataclasses.replace(held, kpk_id=0))
    assert again.kpk[0].id == kpk_id and again.kopks
    # One that keeps naming another KPK is not sent ours again and again on this connection
    # (each would cost both sides signatures for nothing); at the next login it is.
    assert keys.publications(dataclasses.replace(held, kpk_id=kpk_id + 1000)) == []
    keys.serve_kem(True)
    (relogin,) = keys.publications(dataclasses.replace(held, kpk_id=kpk_id + 1000))
    assert relogin.kpk[0].id == kpk_id and relogin.kopks == ()


def test_published_is_known_once_the_server_holds_what_we_would_publish() -> None:
    keys, _ = engine("bob")
    keys.serve_kem(True)
    assert not keys.wait_published(0)  # nothing heard yet
    (first,) = keys.publications(PrekeyCount(count=0, spk_id=0))  # a first login: keys to send
    assert not keys.wait_published(0)
    kpk_id = first.kpk[0].id
    held = PrekeyCount(count=OPK_TARGET, spk_id=first.spk.id, kem_count=KOPK_TARGET, kpk_id=kpk_id)
    assert keys.publications(held) == [] and keys.wait_published(0)
    keys.serve_kem(True)  # the next login starts over
    assert not keys.wait_published(0)


def test_each_keystore_is_one_device_with_an_id_kept_across_opens(tmp_path: Path) -> None:
    first = WhisperKeys.in_keystore(Keystore.create(tmp_path / "laptop", None, FAST_KDF), "alice")
    again = WhisperKeys.in_keystore(Keystore.open(tmp_path / "laptop", None), "alice")
    other = WhisperKeys.in_keystore(Keystore.create(tmp_path / "desktop", None, FAST_KDF), "alice")
    assert first.device and first.device == again.device  # a restart is the same device
    assert other.device != first.device
    Hello(version=3, nick="alice", device=first.device)  # a valid id on the wire


# -- linked devices (review findings: copies, own pin, redelivery) --------------------------


def linked_pair() -> tuple[WhisperKeys, WhisperKeys, Conversations]:
    """alice's laptop (identity) and phone (linked) as WhisperKeys, knowing each other's
    list and keys, and bob's end-to-end state with a session on the laptop's side."""
    from securechat.e2e.bundle import publication
    from securechat.e2e.devices import Device
    from securechat.protocol import DeviceKeys

    lap_c, ph_c, bob_c = party("alice", 1), party("alice", 3), party("bob", 5)
    laptop = WhisperKeys(lap_c, MemoryStorage(), device="laptop-1")
    phone = WhisperKeys(ph_c, MemoryStorage(), device="phone-1")
    listed = laptop.list_with(Device("phone-1", ph_c.identity.sig_key))
    laptop.accept_own_devices(listed)
    phone.become_linked(lap_c.identity.public(), listed)
    laptop.start_session(keys_event(fetched_bundle(bob_c), "bob"))
    pb = publication(fetched_bundle(ph_c))
    own = dataclasses.replace(
        keys_event(fetched_bundle(lap_c), "alice"),
        devices=(listed,),
        device="laptop-1",
        others=(
            DeviceKeys(
                device="phone-1", identity=pb.identity, spk=pb.spk, opks=pb.opks, kpk=pb.kpk, kopks=pb.kopks
            ),
        ),
    )
    laptop.start_session(own)
    return laptop, phone, bob_c


def copy_from_laptop(laptop: WhisperKeys) -> Delivery:
    """The laptop whispers bob "hello" (m1): the copy for the phone, as the server delivers it."""
    frames = laptop.seal_all("bob", "hello", "m1")
    assert sorted((f.to, f.device) for f in frames) == [("alice", "phone-1"), ("bob", "")]
    copy = next(f for f in frames if f.to == "alice")
    return Delivery(
        id="7",
        msg_id="m1",
        sender="alice",
        header=copy.header,
        ciphertext=copy.ciphertext,
        ts=1.0,
        device="laptop-1",
    )


def test_a_copy_delivered_again_is_recognised_not_reported_as_tampering() -> None:
    laptop, phone, _ = linked_pair()
    delivery = copy_from_laptop(laptop)
    first = phone.receive(delivery)
    assert [type(e).__name__ for e in first.events] == ["WhisperCopied"] and first.acks[0].outcome == "read"
    again = phone.receive(delivery)  # the ack was lost: the server delivers it again
    assert again.events == [] and [a.outcome for a in again.acks] == ["read"]


def test_a_copy_not_yet_shown_when_the_client_died_is_shown_again_as_a_replay() -> None:
    laptop, phone, _ = linked_pair()
    delivery = copy_from_laptop(laptop)
    shown = phone.receive(delivery).events
    assert [type(e).__name__ for e in shown] == ["WhisperCopied"]
    # Killed before the program had it: the next start hands it out again, flagged.
    (replayed,) = phone.unshown()
    assert isinstance(replayed, WhisperCopied)
    assert (replayed.to, replayed.text, replayed.msg_id, replayed.replay) == ("bob", "hello", "m1", True)
    phone.mark_shown([replayed])
    assert phone.unshown() == []
    assert phone.receive(delivery).events == []  # and a redelivery is still recognised


def test_a_server_made_copy_from_our_own_nick_is_refused_and_changes_nothing() -> None:
    laptop, _, _ = linked_pair()
    forger = party("alice", 99)  # the server's own "alice" key
    forger.start_session("alice", fetched_bundle(laptop._conv))
    header, body = forger.encrypt("alice", b'{"text": "I owe you 1000", "to": "bob"}')
    for device in ("", "laptop-1", "phone-1"):
        got = laptop.receive(
            Delivery(
                id="8", msg_id="f1", sender="alice", header=header, ciphertext=body, ts=1.0, device=device
            )
        )
        assert not any(type(e).__name__ == "WhisperCopied" for e in got.events)
    pin = laptop._conv.pin("alice")
    assert pin is not None and pin.trust.value == "verified" and pin.pending is None
    # Whispers to others still go: our own pin was not turned into a key change.
    assert laptop.seal_all("bob", "still fine", "m2")
