"""The double ratchet's own rules: how long skipped message keys live, and what a saved
state must look like to be loaded."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from e2e_helpers import NOW, Clock, fetched_bundle, party

from securechat.e2e.conversations import Conversations
from securechat.e2e.errors import DecryptionError
from securechat.e2e.ratchet import MAX_SKIPPED_STORED, SKIPPED_CHAINS_KEPT, RatchetState

DAY = 86_400


def pair(bob_clock: Clock | None = None) -> tuple[Conversations, Conversations]:
    alice, bob = party("alice", 1), party("bob", 101, bob_clock)
    alice.start_session("bob", fetched_bundle(bob))
    return alice, bob


def round_trip(alice: Conversations, bob: Conversations, n: int) -> None:
    """One step of bob's receiving ratchet: bob replies, alice answers in a new chain."""
    assert alice.decrypt("bob", *bob.encrypt("alice", f"reply {n}".encode())).plaintext
    assert bob.decrypt("alice", *alice.encrypt("bob", f"answer {n}".encode())).plaintext


def snapshot(conv: Conversations, clock: Clock | None = None) -> Conversations:
    records = {k: v for k, v in conv.records().items() if v is not None}
    return Conversations.from_records(records, clock=clock or Clock())


@pytest.mark.parametrize(
    ("stored_at", "later"),
    [(0, 365), (0, -365), (-365, 0), (365, 0)],
    ids=["jump-ahead", "jump-back", "corrected-after-running-behind", "corrected-after-running-ahead"],
)
def test_skipped_keys_stored_before_a_clock_jump_still_open_the_delayed_whispers(
    stored_at: int, later: int
) -> None:
    clock = Clock(NOW + stored_at * DAY)
    alice, bob = pair(clock)
    delayed = [alice.encrypt("bob", f"delayed {i}".encode()) for i in range(3)]
    assert bob.decrypt("alice", *alice.encrypt("bob", b"overtook them")).plaintext == b"overtook them"
    clock.now = NOW + later * DAY
    assert bob.decrypt("alice", *alice.encrypt("bob", b"after the jump")).plaintext == b"after the jump"
    round_trip(alice, bob, 1)  # and the conversation moves on to a new chain
    for i, frame in enumerate(delayed):
        assert bob.decrypt("alice", *frame).plaintext == f"delayed {i}".encode()


def test_a_skipped_key_lives_until_its_chain_is_more_than_SKIPPED_CHAINS_KEPT_steps_behind() -> None:
    # Forward secrecy for a whisper that never arrives: its key must not stay on disk for
    # ever. Progress of the conversation decides, not the clock.
    alice, bob = pair()
    lost = alice.encrypt("bob", b"lost on the way")
    bob.decrypt("alice", *alice.encrypt("bob", b"overtook it"))
    for n in range(SKIPPED_CHAINS_KEPT):
        round_trip(alice, bob, n)
    assert snapshot(bob).decrypt("alice", *lost).plaintext == b"lost on the way"
    round_trip(alice, bob, SKIPPED_CHAINS_KEPT)
    with pytest.raises(DecryptionError):
        snapshot(bob).decrypt("alice", *lost)
    with pytest.raises(DecryptionError):
        bob.decrypt("alice", *lost)


def test_no_reading_of_the_clock_deletes_a_skipped_key() -> None:
    # Ten years pass between storing the key and using it, and nothing else happens.
    clock = Clock()
    alice, bob = pair(clock)
    late = alice.encrypt("bob", b"late")
    bob.decrypt("alice", *alice.encrypt("bob", b"early"))
    clock.now += 3650 * DAY
    bob.decrypt("alice", *alice.encrypt("bob", b"much later"))
    assert bob.decrypt("alice", *late).plaintext == b"late"


def test_stored_skipped_keys_are_capped_per_session_oldest_first() -> None:
    alice, bob = pair()
    per_chain = MAX_SKIPPED_STORED // 3 + 34  # three chains' worth is more than the cap
    chains = []
    for n in range(3):
        frames = [alice.encrypt("bob", f"{n}.{i}".encode()) for i in range(per_chain)]
        bob.decrypt("alice", *frames[-1])
        chains.append(frames[:-1])
        round_trip(alice, bob, n)
    dropped = 3 * (per_chain - 1) - MAX_SKIPPED_STORED
    with pytest.raises(DecryptionError):
        bob.decrypt("alice", *chains[0][dropped - 1])
    assert bob.decrypt("alice", *chains[0][dropped]).plaintext == f"0.{dropped}".encode()
    assert bob.decrypt("alice", *chains[2][0]).plaintext == b"2.0"


# -- saved states --------------------------------------------------------------------------


def saved_state() -> dict[str, Any]:
    """A saved responder state with skipped keys and an old chain, given the setup an
    initiator's state carries until the first reply."""
    alice, bob = pair()
    alice.encrypt("bob", b"skipped")
    bob.decrypt("alice", *alice.encrypt("bob", b"x"))
    round_trip(alice, bob, 0)
    state = next(iter(bob._sessions.values()))
    assert state.skipped and state.old_dhr
    initiator, _ = pair()
    setup = next(iter(initiator._sessions.values())).to_dict()["setup"]
    assert setup is not None
    return {**state.to_dict(), "setup": setup}


def test_a_saved_state_round_trips() -> None:
    d = saved_state()
    assert RatchetState.from_dict(d).to_dict() == d


B64_31 = base64.b64encode(bytes(31)).decode()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("sid",), B64_31, "sid"),
        (("rk",), "not base64!", "rk"),
        (("rk",), None, "rk"),
        (("dhs",), 7, "dhs"),
        (("cks",), B64_31, "cks"),
        (("me",), 5, "me"),
        (("me",), "", "me"),
        (("ns",), "1", "ns"),
        (("ns",), True, "ns"),
        (("nr",), -1, "nr"),
        (("pn",), 2**32, "pn"),
        (("skipped",), {}, "skipped"),
        (("skipped", 0), ["a", 1], "skipped"),
        (("skipped", 0, 3), float("nan"), "skipped"),
        (("old_dhr", 0), None, "old_dhr"),
        (("opk_to_delete",), "3", "opk_to_delete"),
        (("setup",), [], "setup"),
        (("setup", "spk_id"), 2**64, "spk_id"),
        (("setup", "dh_sig"), B64_31, "dh_sig"),
    ],
)
def test_a_damaged_saved_state_is_a_value_error_naming_the_field(
    path: tuple[str | int, ...], value: object, field: str
) -> None:
    d = saved_state()
    node: Any = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=field):
        RatchetState.from_dict(d)


@pytest.mark.parametrize("missing", ["sid", "ad0", "peer_key", "skipped", "setup", "opk_to_delete"])
def test_a_saved_state_missing_a_field_is_a_value_error_naming_it(missing: str) -> None:
    d = saved_state()
    del d[missing]
    with pytest.raises(ValueError, match=missing):
        RatchetState.from_dict(d)


@pytest.mark.parametrize("not_a_state", [[], "state", None, 3])
def test_a_saved_state_that_is_not_an_object_is_a_value_error(not_a_state: object) -> None:
    with pytest.raises(ValueError):
        RatchetState.from_dict(not_a_state)  # type: ignore[arg-type]
