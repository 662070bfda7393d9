"""Two parties talking through an in-memory relay, and everything a relay could do wrong."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
from e2e_helpers import Clock, fetched_bundle, party

from securechat.e2e.conversations import Conversations, Trust
from securechat.e2e.errors import BundleError, DecryptionError, IdentityChanged, NotTrusted
from securechat.e2e.ratchet import MAX_SKIP, parse_header


def started(seed: int = 1) -> tuple[Conversations, Conversations]:
    alice, bob = party("alice", seed), party("bob", seed + 100)
    alice.start_session("bob", fetched_bundle(bob))
    return alice, bob


def send(frm: Conversations, to: Conversations, text: str) -> tuple[bytes, bytes]:
    return frm.encrypt(to.identity.user, text.encode())


def test_first_message_then_replies_decrypt() -> None:
    alice, bob = started()
    h, c = send(alice, bob, "hello bob")
    got = bob.decrypt("alice", h, c)
    assert got.plaintext == b"hello bob" and got.trust is Trust.UNVERIFIED and got.sender.user == "alice"
    h, c = send(bob, alice, "hi alice")
    assert alice.decrypt("bob", h, c).plaintext == b"hi alice"


def test_the_one_time_prekey_is_burned_only_after_the_first_message_decrypts() -> None:
    alice, bob = started()
    opk_id = min(bob.secrets.opks)
    h, c = send(alice, bob, "x")
    with pytest.raises(DecryptionError):
        bob.decrypt("alice", h, c[:-1] + bytes([c[-1] ^ 1]))  # forged: OPK must survive
    assert opk_id in bob.secrets.opks
    bob.decrypt("alice", h, c)
    assert opk_id not in bob.secrets.opks


def test_reused_one_time_prekey_is_refused() -> None:
    # A malicious directory hands the same OPK to two senders (or twice to one).
    bob = party("bob", 2)
    bundle = fetched_bundle(bob)
    alice, carol = party("alice", 1), party("carol", 3)
    alice.start_session("bob", bundle)
    carol.start_session("bob", bundle)
    bob.decrypt("alice", *send(alice, bob, "first"))
    with pytest.raises(DecryptionError):
        bob.decrypt("carol", *send(carol, bob, "second use of the same OPK"))


def test_every_single_bit_flip_is_rejected_and_the_next_genuine_message_decrypts() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "warm up"))
    bob_reply = send(bob, alice, "reply")
    alice.decrypt("bob", *bob_reply)
    h, c = send(alice, bob, "target")
    blob = h + c
    for bit in range(len(blob) * 8):
        flipped = bytearray(blob)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptionError):
            bob.decrypt("alice", bytes(flipped[: len(h)]), bytes(flipped[len(h) :]))
    assert bob.decrypt("alice", h, c).plaintext == b"target"
    assert bob.decrypt("alice", *send(alice, bob, "next")).plaintext == b"next"


def test_truncated_and_extended_frames_are_rejected() -> None:
    alice, bob = started()
    h, c = send(alice, bob, "x")
    for bad_h, bad_c in [(h[:-1], c), (h + b"\x00", c), (h, c[:-1]), (h, c + b"\x00"), (b"", c), (h, b"")]:
        with pytest.raises(DecryptionError):
            bob.decrypt("alice", bad_h, bad_c)


def test_relabelled_sender_and_reflection_are_rejected() -> None:
    alice, bob = started()
    carol = party("carol", 3)
    h, c = send(alice, bob, "for bob from alice")
    with pytest.raises(DecryptionError):
        bob.decrypt("carol", h, c)  # the relay claims another sender
    with pytest.raises(DecryptionError):
        carol.decrypt("alice", h, c)  # redirected to someone else
    bob.decrypt("alice", h, c)
    h2, c2 = send(bob, alice, "reply")
    with pytest.raises(DecryptionError):
        bob.decrypt("alice", h2, c2)  # reflected back to its sender
    assert alice.decrypt("bob", h2, c2).plaintext == b"reply"


def test_frame_moved_into_another_session_is_rejected() -> None:
    alice, bob = started(1)
    alice2, bob2 = started(7)  # another pair of sessions between the same names
    h, c = send(alice, bob, "session one")
    other_sid = parse_header(send(alice2, bob2, "x")[0], "alice").sid
    moved = h[:2] + other_sid + h[18:]
    with pytest.raises(DecryptionError):
        bob.decrypt("alice", moved, c)
    with pytest.raises(DecryptionError):
        bob2.decrypt("alice", h, c)


def test_replays_are_rejected_before_and_after_ratchet_steps() -> None:
    alice, bob = started()
    first = send(alice, bob, "one")
    bob.decrypt("alice", *first)
    with pytest.raises(DecryptionError):
        bob.decrypt("alice", *first)  # replay of a setup message in a live session
    second = send(alice, bob, "two")
    bob.decrypt("alice", *second)
    with pytest.raises(DecryptionError):
        bob.decrypt("alice", *second)  # replay within the chain
    alice.decrypt("bob", *send(bob, alice, "ratchet"))
    third = send(alice, bob, "three")  # a new chain
    bob.decrypt("alice", *third)
    for old in (first, second, third):
        with pytest.raises(DecryptionError):
            bob.decrypt("alice", *old)  # replays after the DH ratchet step
    assert bob.decrypt("alice", *send(alice, bob, "four")).plaintext == b"four"


def test_replayed_first_message_cannot_restart_a_forgotten_session() -> None:
    alice, bob = started()
    first = send(alice, bob, "hello")
    bob.decrypt("alice", *first)
    bob._sessions.clear()
    bob._active.clear()
    with pytest.raises(DecryptionError):
        bob.decrypt("alice", *first)


def test_shuffled_and_late_delivery_across_ratchet_steps_decrypts_each_exactly_once() -> None:
    alice, bob = started()
    rng = random.Random(5)
    sent: list[tuple[str, tuple[bytes, bytes]]] = []
    bob.decrypt("alice", *send(alice, bob, "open"))
    alice.decrypt("bob", *send(bob, alice, "opened"))
    for step in range(4):  # several chains: alice sends a few, bob answers, repeat
        sent += [(f"a{step}.{i}", send(alice, bob, f"a{step}.{i}")) for i in range(5)]
        reply = send(bob, alice, f"b{step}")
        alice.decrypt("bob", *reply)
    rng.shuffle(sent)
    got = sorted(bob.decrypt("alice", *frame).plaintext.decode() for _, frame in sent)
    assert got == sorted(text for text, _ in sent)
    for _, frame in sent:
        with pytest.raises(DecryptionError):
            bob.decrypt("alice", *frame)


def test_huge_counter_is_rejected_fast_and_leaves_state_unchanged() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "x"))
    h, c = send(alice, bob, "y")
    header = parse_header(h, "alice")
    before = copy.deepcopy(bob.records())
    for n in (10**6, 2**32 - 1, header.n + MAX_SKIP + 1):
        bad = dataclasses.replace(header, n=n).encode()
        with pytest.raises(DecryptionError):
            bob.decrypt("alice", bad, c)
    assert bob.records() == before
    assert bob.decrypt("alice", h, c).plaintext == b"y"


def test_low_order_ratchet_key_is_refused_without_harm() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "x"))
    h, c = send(alice, bob, "y")
    bad = dataclasses.replace(parse_header(h, "alice"), dh=bytes(32)).encode()
    with pytest.raises(DecryptionError):
        bob.decrypt("alice", bad, c)
    assert bob.decrypt("alice", h, c).plaintext == b"y"


def test_low_order_keys_in_a_bundle_are_refused() -> None:
    bob = party("bob", 2)
    bundle = fetched_bundle(bob)
    # Only a forged bundle can carry one (the keys are signed), so sign it as bob would.
    zero_spk = dataclasses.replace(bundle.spk, public=bytes(32))
    from securechat.e2e.bundle import spk_message

    resigned = dataclasses.replace(
        zero_spk, signature=bob.identity.sign(spk_message("bob", zero_spk.id, zero_spk.created, bytes(32)))
    )
    with pytest.raises(BundleError, match="low-order"):
        party("alice", 1).start_session("bob", dataclasses.replace(bundle, spk=resigned))


def test_forward_secrecy_a_snapshot_cannot_read_earlier_messages() -> None:
    alice, bob = started()
    early = [send(alice, bob, f"early {i}") for i in range(3)]
    for frame in early:
        bob.decrypt("alice", *frame)
    stolen = Conversations.from_records({k: v for k, v in bob.records().items() if v is not None})
    for frame in early:
        with pytest.raises(DecryptionError):
            stolen.decrypt("alice", *frame)


def test_post_compromise_a_stolen_state_stops_working_after_one_round_trip() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "x"))
    alice.decrypt("bob", *send(bob, alice, "y"))
    stolen = Conversations.from_records({k: v for k, v in bob.records().items() if v is not None})
    # The thief can read what is sent right now...
    now_frame = send(alice, bob, "readable by the thief")
    assert stolen.decrypt("alice", *now_frame).plaintext == b"readable by the thief"
    bob.decrypt("alice", *now_frame)
    # ...but after one round trip fresh DH keys it does not have are mixed in.
    alice.decrypt("bob", *send(bob, alice, "round"))
    healed = send(alice, bob, "private again")
    with pytest.raises(DecryptionError):
        stolen.decrypt("alice", *healed)
    assert bob.decrypt("alice", *healed).plaintext == b"private again"


def test_identity_swap_for_a_pinned_contact_stops_sending_until_trusted() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "hi"))
    impostor = party("bob", 999)  # the server swaps in a key it controls
    with pytest.raises(IdentityChanged) as info:
        alice.start_session("bob", fetched_bundle(impostor))
    assert info.value.peer == "bob"
    with pytest.raises(IdentityChanged):
        alice.encrypt("bob", b"secret")  # nothing flows, not even in the old session
    assert alice.pin("bob").trust is Trust.CHANGED  # type: ignore[union-attr]
    accepted = alice.trust("bob")
    assert accepted.key == impostor.identity.public().key
    alice.start_session("bob", fetched_bundle(impostor))
    assert impostor.decrypt("alice", *alice.encrypt("bob", b"after trust")).plaintext == b"after trust"


def test_a_verified_contact_whose_key_changes_needs_a_new_verification() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "hi"))
    assert alice.verify("bob", bob.safety_number("alice"))
    new_bob = party("bob", 998)
    with pytest.raises(IdentityChanged):
        alice.start_session("bob", fetched_bundle(new_bob))
    with pytest.raises(NotTrusted, match="verify"):
        alice.trust("bob")
    assert not alice.verify("bob", bob.safety_number("alice"))  # the old number no longer matches
    assert alice.verify("bob", new_bob.identity.safety_number_with(alice.identity.public()))
    assert alice.pin("bob").trust is Trust.VERIFIED  # type: ignore[union-attr]


def test_a_setup_under_a_new_key_is_held_not_decrypted() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "hi"))
    new_alice = party("alice", 777)
    new_alice.start_session("bob", fetched_bundle(bob))
    frame = send(new_alice, bob, "from the new key")
    with pytest.raises(IdentityChanged):
        bob.decrypt("alice", *frame)
    bob.trust("alice")
    assert bob.decrypt("alice", *frame).plaintext == b"from the new key"


def test_first_contact_mitm_shows_different_safety_numbers() -> None:
    alice, bob = party("alice", 1), party("bob", 2)
    mallory_as_bob = party("bob", 666)
    alice.start_session("bob", fetched_bundle(mallory_as_bob))  # TOFU accepted the wrong key
    bob_view_of_alice = party("alice", 667)  # and bob got mallory's "alice"
    bob.start_session("alice", fetched_bundle(bob_view_of_alice))
    assert alice.safety_number("bob") != bob.safety_number("alice")
    honest_a, honest_b = started(11)
    honest_b.decrypt("alice", *send(honest_a, honest_b, "x"))
    assert honest_a.safety_number("bob") == honest_b.safety_number("alice")
    digits = honest_a.safety_number("bob").split()
    assert len(digits) == 12 and all(len(g) == 5 and g.isdigit() for g in digits)


def test_verify_refuses_a_wrong_number() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "x"))
    wrong = "1" * 60
    assert not alice.verify("bob", wrong)
    assert not alice.verify("bob", "not a number")
    assert alice.pin("bob").trust is Trust.UNVERIFIED  # type: ignore[union-attr]
    with pytest.raises(NotTrusted):
        alice.safety_number("stranger")


def test_records_round_trip_and_the_conversation_continues() -> None:
    clock = Clock()
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "before"))
    alice.decrypt("bob", *send(bob, alice, "reply"))
    restored = {
        name: Conversations.from_records({k: v for k, v in c.records().items() if v is not None}, clock=clock)
        for name, c in (("alice", alice), ("bob", bob))
    }
    assert (
        restored["bob"].decrypt("alice", *send(restored["alice"], restored["bob"], "after")).plaintext
        == b"after"
    )
    assert restored["alice"].pin("bob").identity.key == bob.identity.public().key  # type: ignore[union-attr]


def test_malformed_records_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="malformed"):
        Conversations.from_records({"identity": b"{}"})
    with pytest.raises(ValueError, match="malformed"):
        Conversations.from_records({"identity": b"not json"})


def test_take_dirty_reports_what_changed_and_resets() -> None:
    alice, bob = started()
    alice.take_dirty()
    send(alice, bob, "x")
    dirty = alice.take_dirty()
    assert [n for n in dirty if n.startswith("session:")] and alice.take_dirty() == {}
    # Another message in the same session: only that session's record is rewritten, not
    # the index of sessions (it did not change), since every record costs a disk flush.
    send(alice, bob, "y")
    assert list(alice.take_dirty()) == [n for n in dirty if n.startswith("session:")]
    # And a restart from the records still has everything.
    again = Conversations.from_records({k: v for k, v in alice.records().items() if v is not None})
    assert again.has_session("bob")


def test_a_conversation_of_1000_whispers_with_random_interleaving() -> None:
    alice, bob = started(21)
    rng = random.Random(9)
    queues: dict[str, list[tuple[str, tuple[bytes, bytes]]]] = {"alice": [], "bob": []}
    delivered = 0
    bob.decrypt("alice", *send(alice, bob, "start"))
    for i in range(1000):
        sender, receiver = (alice, bob) if rng.random() < 0.5 else (bob, alice)
        queues[receiver.identity.user].append((f"{i}", send(sender, receiver, f"{i}")))
        if rng.random() < 0.3:  # deliver a random pending frame, out of order
            for name, conv in (("alice", alice), ("bob", bob)):
                while queues[name] and rng.random() < 0.5:
                    text, frame = queues[name].pop(rng.randrange(len(queues[name])))
                    peer = "bob" if name == "alice" else "alice"
                    assert conv.decrypt(peer, *frame).plaintext.decode() == text
                    delivered += 1
    for name, conv in (("alice", alice), ("bob", bob)):
        peer = "bob" if name == "alice" else "alice"
        for text, frame in queues[name]:
            assert conv.decrypt(peer, *frame).plaintext.decode() == text
            delivered += 1
    assert delivered == 1000


def test_an_unauthenticated_setup_never_touches_the_pins() -> None:
    alice, bob = started()
    h, c = send(alice, bob, "hi")
    with pytest.raises(DecryptionError):
        bob.decrypt("alice", h, c[:-1] + bytes([c[-1] ^ 1]))
    assert bob.pin("alice") is None  # a forged first message cannot plant a TOFU pin
    bob.decrypt("alice", h, c)
    pinned = bob.pin("alice")
    assert pinned is not None and pinned.trust is Trust.UNVERIFIED
    mallory = party("alice", 555)
    mallory.start_session("bob", fetched_bundle(bob))
    mh, mc = send(mallory, bob, "x")
    with pytest.raises(DecryptionError):
        bob.decrypt("alice", mh, mc[:-1] + bytes([mc[-1] ^ 1]))
    assert bob.pin("alice").trust is Trust.UNVERIFIED  # type: ignore[union-attr]  # no false alarm
