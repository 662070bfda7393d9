"""Two parties talking through an in-memory relay, and everything a relay could do wrong."""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import json
import random

import pytest
from e2e_helpers import NOW, Clock, fetched_bundle, party, v1_initiate, v1_party
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechat.e2e.bundle import MAX_CLOCK_ERROR, OPK_KEEP
from securechat.e2e.conversations import MAX_CONTACT_REQUESTS, Carried, Conversations, Trust
from securechat.e2e.devices import Device, DeviceList, DeviceListError, sign_device_list
from securechat.e2e.errors import BundleError, DecryptionError, IdentityChanged, NotTrusted, UnknownDevice
from securechat.e2e.identity import Identity
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
    with pytest.raises(ValueError, match="keystore record 'identity' is damaged: user: missing"):
        Conversations.from_records({"identity": b"{}"})
    with pytest.raises(ValueError, match="keystore record 'identity' is damaged"):
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


# -- clock jumps ---------------------------------------------------------------------------

DAY = 86_400


def log_in(conv: Conversations, now: float) -> None:
    """What the client does with its prekeys at each login (`WhisperKeys.publications`)."""
    secrets = conv.secrets
    if secrets.current_spk() is None or secrets.needs_rotation(now):
        secrets.rotate_spk(now, random.Random(int(now)).randbytes)


def spk_id(conv: Conversations) -> int:
    current = conv.secrets.current_spk()
    assert current is not None
    return current.id


@pytest.mark.parametrize("jump_days", [365, -365])
def test_a_queued_whisper_decrypts_after_the_recipients_clock_jumps_and_the_spk_rotates(
    jump_days: int,
) -> None:
    bob_clock = Clock()
    alice, bob = party("alice", 1), party("bob", 101, bob_clock)
    alice.start_session("bob", fetched_bundle(bob))  # against signed prekey 1
    queued = send(alice, bob, "sent while bob was away")
    bob_clock.now += jump_days * DAY
    log_in(bob, bob_clock.now)
    # A year-old SPK, or one dated a year ahead, is replaced: either way its weekly
    # rotation would otherwise be a year late.
    assert spk_id(bob) == 2
    assert bob.decrypt("alice", *queued).plaintext == b"sent while bob was away"
    assert alice.decrypt("bob", *send(bob, alice, "got it")).plaintext == b"got it"


def test_whispers_queued_across_a_clock_running_behind_and_its_correction_all_decrypt() -> None:
    bob_clock = Clock()
    alice, bob, carol = party("alice", 1), party("bob", 101, bob_clock), party("carol", 3)
    alice.start_session("bob", fetched_bundle(bob))
    from_alice = send(alice, bob, "against SPK 1")
    bob_clock.now -= 365 * DAY
    log_in(bob, bob_clock.now)  # SPK 2, dated a year back by bob's clock
    carol.start_session("bob", fetched_bundle(bob, sorted(bob.secrets.opks)[1]))  # her clock is right
    from_carol = send(carol, bob, "against SPK 2")
    bob_clock.now = NOW + DAY
    log_in(bob, bob_clock.now)  # corrected: SPK 2 looks a year old, SPK 3 replaces it
    assert spk_id(bob) == 3
    bob = Conversations.from_records(
        {k: v for k, v in bob.records().items() if v is not None}, clock=bob_clock
    )
    assert bob.decrypt("alice", *from_alice).plaintext == b"against SPK 1"
    assert bob.decrypt("carol", *from_carol).plaintext == b"against SPK 2"


@pytest.mark.parametrize("offset_days", [365, -365])
def test_a_sender_whose_clock_is_a_year_off_starts_a_session_from_an_honest_bundle(offset_days: int) -> None:
    alice, bob = party("alice", 1, Clock(NOW + offset_days * DAY)), party("bob", 101)
    alice.start_session("bob", fetched_bundle(bob))
    assert bob.decrypt("alice", *send(alice, bob, "hello")).plaintext == b"hello"
    assert alice.decrypt("bob", *send(bob, alice, "hi")).plaintext == b"hi"


@pytest.mark.parametrize("offset_days", [0, 365, -365])
def test_a_replayed_old_bundle_is_refused_to_a_sender_who_saw_newer_keys_whatever_her_clock(
    offset_days: int,
) -> None:
    alice_clock, bob_clock = Clock(), Clock()
    alice, bob = party("alice", 1, alice_clock), party("bob", 101, bob_clock)
    old = fetched_bundle(bob)
    alice.start_session("bob", old)
    bob_clock.now += 8 * DAY
    log_in(bob, bob_clock.now)
    alice_clock.now += 8 * DAY
    alice.start_session("bob", fetched_bundle(bob))  # she has seen SPK 2
    alice_clock.now += offset_days * DAY
    alice = Conversations.from_records(
        {k: v for k, v in alice.records().items() if v is not None}, clock=alice_clock
    )
    alice.forget_sessions("bob")
    with pytest.raises(BundleError, match="rolled back"):
        alice.start_session("bob", old)
    assert not alice.has_session("bob")


def test_a_bundle_more_than_a_year_and_a_month_old_is_refused_even_at_first_contact() -> None:
    # Older than any clock error we allow for: an owner gone for over a year, or a replay.
    alice, bob = party("alice", 1), party("bob", 101, Clock(NOW - 401 * DAY))
    with pytest.raises(BundleError, match="stale"):
        alice.start_session("bob", fetched_bundle(bob))
    assert alice.pin("bob") is None and not alice.has_session("bob")


# -- damaged keystore records --------------------------------------------------------------


def a_real_keystore() -> dict[str, bytes]:
    """bob's records after a varied history: a pin, a pending key change, a verified peer,
    sessions with skipped keys and an unanswered setup, retired prekeys, seen setups."""
    clock = Clock()
    alice, bob, carol = party("alice", 1), party("bob", 101, clock), party("carol", 3)
    alice.start_session("bob", fetched_bundle(bob))
    send(alice, bob, "skipped")
    bob.decrypt("alice", *send(alice, bob, "hello"))
    alice.decrypt("bob", *send(bob, alice, "hi"))
    bob.decrypt("alice", *send(alice, bob, "next chain"))
    bob.start_session("carol", fetched_bundle(carol))
    send(bob, carol, "unanswered: the setup stays in the state")
    assert bob.verify("carol", carol.identity.safety_number_with(bob.identity.public()))
    clock.now += 8 * DAY
    log_in(bob, clock.now)
    new_carol = party("carol", 4, Clock(clock.now))
    new_carol.start_session("bob", fetched_bundle(bob))
    with pytest.raises(IdentityChanged):
        bob.decrypt("carol", *send(new_carol, bob, "from a new key"))
    for opk in sorted(bob.secrets.opks)[3:]:
        del bob.secrets.opks[opk]  # a few are as good as a hundred here, and much faster
    records = {k: v for k, v in bob.records().items() if v is not None}
    assert {"identity", "prekeys", "index", "seen"} <= set(records)
    assert {n for n in records if n.startswith("pin:")} == {
        "pin:" + p.encode().hex() for p in ("alice", "carol")
    }
    assert len([n for n in records if n.startswith("session:")]) == 2
    return records


REAL = a_real_keystore()


def test_a_pins_record_that_is_a_list_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="keystore record 'pins' is damaged"):
        Conversations.from_records({**REAL, "pins": b"[]"})


def test_a_missing_identity_record_is_a_value_error_naming_it() -> None:
    without = {k: v for k, v in REAL.items() if k != "identity"}
    with pytest.raises(ValueError, match="keystore record 'identity' is missing"):
        Conversations.from_records(without)


def test_records_of_other_layers_are_left_alone() -> None:
    conv = Conversations.from_records({**REAL, "received:0": b"anything", "received": b"[]"})
    assert conv.has_session("alice")


# Replacements tried at every position of a record's JSON: every JSON type, and values of
# the right type but the wrong content (empty, not base64, negative, out of range).
SWAPS: list[object] = [None, True, False, 0, -1, 2**64, 1.5, "", "!!", "AAAA", [], {}, [[]], {"": None}]


def damaged_versions(value: object) -> list[object]:
    """Every copy of `value` with one thing wrong: a node swapped for each of `SWAPS`, a
    field deleted, a list entry dropped or repeated."""
    out: list[object] = [swap for swap in SWAPS if swap != value or type(swap) is not type(value)]
    if isinstance(value, dict):
        for key, child in value.items():
            out.append({k: v for k, v in value.items() if k != key})
            out += [{**value, key: damaged} for damaged in damaged_versions(child)]
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out.append(value[:i] + value[i + 1 :])
            out += [[*value[:i], damaged, *value[i + 1 :]] for damaged in damaged_versions(child)]
        if value:
            out.append([*value, value[0]])
    return out


def assert_loads_or_names_the_record(records: dict[str, bytes], name: str) -> None:
    try:
        conv = Conversations.from_records(records, clock=Clock())
    except ValueError as exc:
        assert f"keystore record {name!r}" in str(exc), str(exc)
        return
    # Damage the loader accepted must leave a usable state, not a crash later.
    again = Conversations.from_records({k: v for k, v in conv.records().items() if v is not None})
    again.bundle_to_publish()
    for peer in ("alice", "carol"):
        with contextlib.suppress(NotTrusted, IdentityChanged):
            again.encrypt(peer, b"still works")


@pytest.mark.parametrize("name", sorted(REAL))
def test_every_structural_damage_to_a_record_is_a_value_error_naming_it(name: str) -> None:
    original = json.loads(REAL[name])
    versions = damaged_versions(original)
    assert len(versions) > 20
    for damaged in versions:
        assert_loads_or_names_the_record({**REAL, name: json.dumps(damaged).encode()}, name)


@pytest.mark.parametrize("name", sorted(REAL))
def test_truncated_and_non_json_records_are_a_value_error_naming_them(name: str) -> None:
    data = REAL[name]
    for cut in sorted({0, 1, len(data) // 3, len(data) // 2, len(data) - 1}):
        assert_loads_or_names_the_record({**REAL, name: data[:cut]}, name)
    for junk in (b"\xff\xfe\x00garbage", b"NaN", b"[" * 100_000, data + b"x"):
        assert_loads_or_names_the_record({**REAL, name: junk}, name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_byte_damage_to_any_record_is_a_value_error_naming_it(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(REAL)))
    blob = bytearray(REAL[name])
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(blob)))
        kind = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = data.draw(st.integers(0, 255))
        if kind == "insert" or at == len(blob):
            blob[at:at] = bytes([byte])
        elif kind == "flip":
            blob[at] ^= byte or 1
        else:
            del blob[at]
    assert_loads_or_names_the_record({**REAL, name: bytes(blob)}, name)


# -- first contacts and pins at scale ------------------------------------------------------


def first_contact(bob: Conversations, name: str, seed: int) -> Conversations:
    """`name` (new to bob) whispers bob once; bob reads it."""
    sender = party(name, seed)
    sender.start_session("bob", fetched_bundle(bob))
    assert (
        bob.decrypt(name, *send(sender, bob, f"hello from {name}")).plaintext == f"hello from {name}".encode()
    )
    return sender


def pin_records(records: dict[str, bytes | None]) -> dict[str, bytes | None]:
    return {n: v for n, v in records.items() if n == "pins" or n.startswith("pin:")}


def test_a_new_pin_writes_one_small_record_however_many_there_are() -> None:
    bob = party("bob", 101)
    for n in range(40):
        first_contact(bob, f"user{n}", 1000 + n)
    bob.take_dirty()
    first_contact(bob, "newcomer", 999)
    written = pin_records(bob.take_dirty())
    # Before: the one "pins" record, all 41 pins again (13 KB), rewritten and flushed each time.
    assert list(written) == ["pin:" + b"newcomer".hex()]
    assert sum(len(v or b"") for v in written.values()) < 1024
    assert all(len(n) <= len("pin:") + 64 for n in bob.records())  # keystore record names


def test_unanswered_first_contacts_are_bounded_the_oldest_forgotten_each_still_read() -> None:
    bob = party("bob", 101)
    bob.secrets.new_opks(OPK_KEEP - len(bob.secrets.opks))  # enough for every setup below
    friend = first_contact(bob, "friend", 7)
    bob.decrypt("friend", *send(friend, bob, "again"))
    send(bob, friend, "hi friend")  # answered: friend is a contact of ours now
    senders = [first_contact(bob, f"s{n}", 2000 + n) for n in range(MAX_CONTACT_REQUESTS + 5)]
    assert len(bob.pins) == MAX_CONTACT_REQUESTS + 1  # before: 106, one per nick anyone made
    assert bob.pin("friend") is not None and bob.has_session("friend")
    for n in range(5):  # the oldest five: pin and sessions gone
        assert bob.pin(f"s{n}") is None and not bob.has_session(f"s{n}")
    assert bob.pin("s5") is not None
    # The order survives a restart: the next newcomer drops s5, not some other.
    bob = Conversations.from_records({k: v for k, v in bob.records().items() if v is not None})
    assert len(bob.pins) == MAX_CONTACT_REQUESTS + 1
    first_contact(bob, "late", 3000)
    assert bob.pin("s5") is None and bob.pin("s6") is not None and bob.pin("late") is not None
    # A forgotten sender who writes again in the old session is not read (no session);
    # their client is told and starts a new one, which is a first contact again.
    with pytest.raises(DecryptionError):
        bob.decrypt("s0", *send(senders[0], bob, "still there?"))


def test_a_keystore_with_all_pins_in_one_record_loads_and_is_rewritten_one_record_per_pin() -> None:
    per_pin = pin_records(dict(REAL))
    legacy = {k: v for k, v in REAL.items() if k not in per_pin}
    legacy["pins"] = json.dumps(
        {bytes.fromhex(n.removeprefix("pin:")).decode(): json.loads(v or b"") for n, v in per_pin.items()}
    ).encode()
    conv = Conversations.from_records(legacy)
    current = Conversations.from_records(REAL)
    assert conv.pins == current.pins
    assert pin_records(conv.take_dirty()) == {"pins": None, **per_pin}  # the old record deleted


def renamed(conv: Conversations, new: str) -> Conversations:
    """`conv`'s owner under a new nick: the same keys, bound to `new` (what a rename does)."""
    ident = conv.identity
    moved = Conversations(Identity(new, ident.sig_private, ident.dh), random=conv._random, clock=conv._clock)
    moved.bundle_to_publish()
    return moved


def test_a_pin_carries_its_trust_to_the_new_nick_of_the_same_key() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "hi"))
    assert alice.verify("bob", bob.safety_number("alice"))
    bob2 = renamed(bob, "bob2")
    alice.start_session("bob2", fetched_bundle(bob2))  # first contact with bob2: the same key
    pin = alice.pin("bob2")
    assert pin is not None and pin.trust is Trust.VERIFIED and pin.was_verified and pin.request is None
    assert bob2.decrypt("alice", *alice.encrypt("bob2", b"still you")).plaintext == b"still you"
    assert alice.pin("bob").trust is Trust.VERIFIED  # type: ignore[union-attr]  # the old pin stays


def test_a_renamed_sender_who_writes_first_keeps_the_trust_of_the_key() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "hi"))
    assert bob.verify("alice", alice.safety_number("bob"))
    alice2 = renamed(alice, "alice2")
    alice2.start_session("bob", fetched_bundle(bob))
    got = bob.decrypt("alice2", *alice2.encrypt("bob", b"new name"))
    assert got.trust is Trust.VERIFIED and got.sender.user == "alice2"
    assert bob.pin("alice2").request is None  # type: ignore[union-attr]  # a contact, not a stranger


def test_a_different_key_for_a_new_nick_does_not_carry_any_trust() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "hi"))
    assert alice.verify("bob", bob.safety_number("alice"))
    stranger = party("bob2", 4242)  # someone else took a nick like bob's
    alice.start_session("bob2", fetched_bundle(stranger))
    assert alice.pin("bob2").trust is Trust.UNVERIFIED  # type: ignore[union-attr]
    assert not alice.pin("bob2").was_verified  # type: ignore[union-attr]


def test_a_pin_waiting_on_a_changed_key_carries_nothing() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "hi"))
    assert alice.verify("bob", bob.safety_number("alice"))
    with pytest.raises(IdentityChanged):
        alice.start_session("bob", fetched_bundle(party("bob", 31337)))
    alice.start_session("bob2", fetched_bundle(renamed(bob, "bob2")))  # bob's old key, under bob2
    assert alice.pin("bob2").trust is Trust.UNVERIFIED  # type: ignore[union-attr]


# -- a carry-over is told, and a server's rename claim is checked (review 2, item 3) ---------


def test_a_carry_over_is_reported_naming_both_nicks_once() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "hi"))
    assert alice.verify("bob", bob.safety_number("alice"))
    assert alice.take_carried() == []
    alice.start_session("bob2", fetched_bundle(renamed(bob, "bob2")))
    assert alice.take_carried() == [Carried(old="bob", new="bob2", trust=Trust.VERIFIED)]
    assert alice.take_carried() == []  # handed out once


def test_a_renamed_writer_s_carry_over_is_reported_too() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "hi"))
    assert bob.verify("alice", alice.safety_number("bob"))
    alice2 = renamed(alice, "alice2")
    alice2.start_session("bob", fetched_bundle(bob))
    bob.decrypt("alice2", *alice2.encrypt("bob", b"new name"))
    assert bob.take_carried() == [Carried(old="alice", new="alice2", trust=Trust.VERIFIED)]


def test_a_rename_claim_with_the_old_key_is_followed_with_its_trust() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "hi"))
    assert alice.verify("bob", bob.safety_number("alice"))
    assert alice.follow_rename("bob", fetched_bundle(renamed(bob, "bob2")))
    assert alice.pin("bob2").trust is Trust.VERIFIED  # type: ignore[union-attr]
    assert alice.take_carried() == [Carried(old="bob", new="bob2", trust=Trust.VERIFIED)]


def test_a_rename_claim_with_another_key_is_a_key_change_until_the_user_decides() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "hi"))
    assert alice.verify("bob", bob.safety_number("alice"))
    mallory = party("mallory", 666)
    with pytest.raises(IdentityChanged):
        alice.follow_rename("bob", fetched_bundle(mallory))  # the server says bob is mallory now
    pin = alice.pin("mallory")
    assert pin is not None and pin.trust is Trust.CHANGED and pin.was_verified
    assert alice.take_carried() == []  # nothing carried
    with pytest.raises(IdentityChanged):  # nothing sent: a whisper to mallory is refused
        alice.start_session("mallory", fetched_bundle(mallory))
    with pytest.raises(NotTrusted):  # bob was verified: only /verify with mallory's number
        alice.trust("mallory")
    assert alice.verify("mallory", mallory.identity.safety_number_with(alice.identity.public()))
    assert alice.pin("mallory").identity.key == mallory.identity.public().key  # type: ignore[union-attr]
    # The records as saved load again (a changed pin names the nick it is kept under).
    assert Conversations.from_records(alice.records()).pin("mallory") == alice.pin("mallory")


def test_a_rename_claim_naming_someone_else_we_know_changes_nothing() -> None:
    alice, bob = started()
    bob.decrypt("alice", *send(alice, bob, "hi"))
    carol = party("carol", 77)
    alice.start_session("carol", fetched_bundle(carol))
    assert not alice.follow_rename("bob", fetched_bundle(carol))
    assert alice.pin("carol").identity.key == carol.identity.public().key  # type: ignore[union-attr]
    assert alice.take_carried() == []


def test_a_rename_claim_about_a_stranger_is_not_followed() -> None:
    alice, _ = started()
    assert not alice.follow_rename("nobody", fetched_bundle(party("nobody2", 5)))
    assert alice.pin("nobody2") is None


def test_a_rolled_back_kem_prekey_is_refused_even_after_a_restart() -> None:
    alice_clock, bob_clock = Clock(), Clock()
    alice, bob = party("alice", 1, alice_clock), party("bob", 101, bob_clock)
    old = fetched_bundle(bob)
    alice.start_session("bob", old)
    bob_clock.now += 8 * DAY
    log_in(bob, bob_clock.now)  # a new signed prekey, and a new last-resort KEM prekey with it
    alice_clock.now += 8 * DAY
    new = fetched_bundle(bob, kopk=False)
    assert new.kpk is not None and old.kpk is not None and new.kpk.id > old.kpk.id
    alice.start_session("bob", new)
    alice = Conversations.from_records(
        {k: v for k, v in alice.records().items() if v is not None}, clock=alice_clock
    )
    alice.forget_sessions("bob")
    # The current signed prekey with the old (validly signed) KEM prekey: a server replaying
    # a KEM key whose private half bob may have deleted, or that was compromised.
    replayed = dataclasses.replace(new, kpk=old.kpk)
    with pytest.raises(BundleError, match="post-quantum prekey was rolled back"):
        alice.start_session("bob", replayed)
    alice.start_session("bob", new)  # the genuine one still works
    assert bob.decrypt("alice", *send(alice, bob, "after the refusal")).plaintext == b"after the refusal"


def test_a_keystore_written_before_version_2_loads_and_its_kem_ids_start_above_any_used() -> None:
    """Records as a version-1 client wrote them (also what an older client leaves after a
    newer one used the keystore: it drops fields it does not know)."""
    clock = Clock()
    alice, bob = v1_party("alice", 1, clock), v1_party("bob", 101, clock)
    state = v1_initiate(alice, fetched_bundle(bob), random.Random(5).randbytes)
    alice._remember(state)
    alice._check_pin(bob.identity.public())  # pinned, as starting the session pins
    records = {k: json.loads(v) for k, v in alice.records().items() if v is not None}
    for name, value in records.items():
        if name.startswith("session:"):
            for field in ("version", "kem_to_delete"):
                del value[field]
            for field in ("kem_id", "kem_ct"):
                del value["setup"][field]
        if name.startswith("pin:"):
            del value["max_kpk_id"]
    for field in ("kpks", "kopks", "next_kem_id"):
        del records["prekeys"][field]
    old = Conversations.from_records(
        {k: json.dumps(v).encode() for k, v in records.items()},
        clock=clock,
        random=random.Random(6).randbytes,
    )
    assert old.session_post_quantum("bob") is False  # the session goes on, as version 1
    assert bob.decrypt("alice", *send(old, bob, "still readable")).plaintext == b"still readable"
    published = old.bundle_to_publish()  # KEM prekeys made at the first publish
    assert published.kpk is not None and published.kpk.id >= int(NOW) + MAX_CLOCK_ERROR
    assert all(k.id > published.kpk.id for k in published.kopks)


# -- linked devices ------------------------------------------------------------------------


def linked_alice(seed: int = 70) -> tuple[Conversations, Conversations, DeviceList]:
    """alice's identity device (laptop) and a linked phone with its own key, and the list
    the identity key signed naming both."""
    laptop = party("alice", seed)
    phone = party("alice", seed + 1)  # its own identity (device) keys, bound to the nick
    phone.set_person(laptop.identity.public())
    listed = sign_device_list(
        laptop.identity,
        1,
        (Device("laptop", laptop.identity.sig_key), Device("phone", phone.identity.sig_key)),
    )
    return laptop, phone, listed


def test_a_whisper_reaches_each_linked_device_in_its_own_session() -> None:
    laptop, phone, listed = linked_alice()
    bob = party("bob", 80)
    bob.start_session("alice", fetched_bundle(laptop))  # pins alice's identity key
    assert bob.accept_devices("alice", listed)
    assert bob.linked_devices("alice") == ["phone"]
    bob.start_session("alice", fetched_bundle(phone), device="phone")
    assert bob.has_session("alice") and bob.has_session("alice", "phone")
    to_laptop = bob.encrypt("alice", b"for the laptop")
    to_phone = bob.encrypt("alice", b"for the phone", device="phone")
    assert laptop.decrypt("bob", *to_laptop).plaintext == b"for the laptop"
    assert phone.decrypt("bob", *to_phone).plaintext == b"for the phone"
    # The phone answers; bob takes it as alice's, under her pinned identity.
    phone.own_device_list("alice", listed)
    got = bob.decrypt("alice", *phone.encrypt("bob", b"from the phone"), device="phone")
    assert got.plaintext == b"from the phone" and got.sender.key == laptop.identity.public().key


def test_a_device_key_the_list_does_not_name_is_refused_and_never_pinned() -> None:
    laptop, _phone, listed = linked_alice()
    evil = party("alice", 99)  # a device the server made up, with a key of its own
    bob = party("bob", 80)
    bob.start_session("alice", fetched_bundle(laptop))
    bob.accept_devices("alice", listed)
    with pytest.raises(BundleError, match="not in their device list"):
        bob.start_session("alice", fetched_bundle(evil), device="phone")  # under a listed id
    with pytest.raises(BundleError, match="not in their device list"):
        bob.start_session("alice", fetched_bundle(evil), device="evil")
    # And a whisper it starts is refused before anything changes.
    evil.start_session("bob", fetched_bundle(bob))
    header, body = evil.encrypt("bob", b"hello from a fake device")
    with pytest.raises(UnknownDevice):
        bob.decrypt("alice", header, body, device="evil")
    with pytest.raises(UnknownDevice):
        bob.decrypt("alice", header, body, device="phone")
    assert bob.pin("alice").identity.key == laptop.identity.public().key  # type: ignore[union-attr]


def test_a_first_whisper_from_a_linked_device_waits_for_the_persons_keys() -> None:
    laptop, phone, listed = linked_alice()
    bob = party("bob", 80)
    phone.start_session("bob", fetched_bundle(bob))
    header, body = phone.encrypt("bob", b"first contact from a phone")
    with pytest.raises(UnknownDevice):  # bob knows nothing of alice: no pin is made
        bob.decrypt("alice", header, body, device="phone")
    assert bob.pin("alice") is None
    bob.start_session("alice", fetched_bundle(laptop))  # the client fetches her keys
    bob.accept_devices("alice", listed)
    assert bob.decrypt("alice", header, body, device="phone").plaintext == b"first contact from a phone"


def test_an_older_device_list_is_refused_and_a_removed_device_loses_its_sessions() -> None:
    laptop, phone, listed = linked_alice()
    bob = party("bob", 80)
    bob.start_session("alice", fetched_bundle(laptop))
    bob.accept_devices("alice", listed)
    bob.start_session("alice", fetched_bundle(phone), device="phone")
    without_phone = sign_device_list(laptop.identity, 2, (Device("laptop", laptop.identity.sig_key),))
    assert bob.accept_devices("alice", without_phone)
    assert not bob.has_session("alice", "phone") and bob.linked_devices("alice") == []
    with pytest.raises(DeviceListError, match="went back"):
        bob.accept_devices("alice", listed)  # the server serving version 1 again
    same_version_other = sign_device_list(
        laptop.identity, 2, (Device("laptop", laptop.identity.sig_key), Device("x", phone.identity.sig_key))
    )
    with pytest.raises(DeviceListError, match="two different"):
        bob.accept_devices("alice", same_version_other)


def test_device_lists_sessions_and_the_person_survive_a_reload() -> None:
    laptop, phone, listed = linked_alice()
    bob = party("bob", 80)
    bob.start_session("alice", fetched_bundle(laptop))
    bob.accept_devices("alice", listed)
    bob.start_session("alice", fetched_bundle(phone), device="phone")
    again = Conversations.from_records({k: v for k, v in bob.records().items() if v is not None})
    assert again.linked_devices("alice") == ["phone"] and again.has_session("alice", "phone")
    other_v1 = sign_device_list(laptop.identity, 1, (Device("laptop", laptop.identity.sig_key),))
    with pytest.raises(DeviceListError, match="two different"):
        again.accept_devices("alice", other_v1)
    phone.start_session("bob", fetched_bundle(bob))
    laptop.start_session("bob", fetched_bundle(bob))
    phone_again = Conversations.from_records({k: v for k, v in phone.records().items() if v is not None})
    assert phone_again.person.key == laptop.identity.public().key
    # Safety numbers are the person's, on every device: the phone shows bob the laptop's.
    assert phone_again.safety_number("bob") == laptop.safety_number("bob") == bob.safety_number("alice")


def test_a_pin_whose_saved_list_was_edited_is_refused_on_load() -> None:
    laptop, _phone, listed = linked_alice()
    bob = party("bob", 80)
    bob.start_session("alice", fetched_bundle(laptop))
    bob.accept_devices("alice", listed)
    records = {k: v for k, v in bob.records().items() if v is not None}
    name = next(n for n in records if n.startswith("pin:"))
    saved = json.loads(records[name])
    saved["devices"]["devices"][1][1] = base64.b64encode(bytes(32)).decode()  # a key slipped in
    records[name] = json.dumps(saved).encode()
    with pytest.raises(ValueError, match="not signed"):
        Conversations.from_records(records)


def test_accepting_a_changed_key_drops_the_old_keys_device_list() -> None:
    laptop, _phone, listed = linked_alice()
    bob = party("bob", 80)
    bob.start_session("alice", fetched_bundle(laptop))
    bob.accept_devices("alice", listed)
    new_alice = party("alice", 90)  # alice starts over with a new identity
    with pytest.raises(IdentityChanged):
        bob.start_session("alice", fetched_bundle(new_alice))
    bob.trust("alice")
    assert bob.linked_devices("alice") == []  # the old key vouches for nothing now
    fresh = sign_device_list(new_alice.identity, 1, (Device("desk", new_alice.identity.sig_key),))
    assert bob.accept_devices("alice", fresh)  # version 1 again: a new key's own list
    Conversations.from_records({k: v for k, v in bob.records().items() if v is not None})  # loads


def test_the_same_list_under_another_spelling_of_the_nick_is_the_same_list() -> None:
    laptop, _, listed = linked_alice()
    bob = party("bob", 80)
    bob.start_session("alice", fetched_bundle(laptop))
    bob.accept_devices("alice", listed)
    again = Conversations.from_records({k: v for k, v in bob.records().items() if v is not None})
    assert not again.accept_devices("alice", dataclasses.replace(listed, user="Alice"))


def test_a_linked_devices_key_passed_off_as_the_persons_is_never_a_key_change() -> None:
    laptop, phone, listed = linked_alice()
    bob = party("bob", 80)
    bob.start_session("alice", fetched_bundle(laptop))
    bob.accept_devices("alice", listed)
    with pytest.raises(BundleError, match="linked device"):
        bob.start_session("alice", fetched_bundle(phone))  # the phone's bundle as alice's own
    phone.start_session("bob", fetched_bundle(bob))
    header, body = phone.encrypt("bob", b'{"text": "x"}')
    with pytest.raises(DecryptionError):
        bob.decrypt("alice", header, body, device="")  # labelled as the identity's device
    pin = bob.pin("alice")
    assert pin is not None and pin.pending is None and pin.trust is Trust.UNVERIFIED
