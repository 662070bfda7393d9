"""A version-1 first message and reply, frozen before version 2 existed, from fixed keys
(seeded randomness): today's code must still answer an older client's session setup.

If one of these changes, version 1's wire format or a KDF changed: clients from before
version 2 could no longer talk to new ones. Every step of both versions is frozen in
tests/vectors/ (tests/test_e2e_vectors.py).
"""

from __future__ import annotations

from e2e_helpers import fetched_bundle, v1_initiate, v1_party

from securechat.e2e.ratchet import HEADER_LEN, SETUP_LEN, encrypt, parse_header

FIRST_HEADER = (
    "0101417c15755d1d8d7fdb93ea88914c1dca122a0e23f1435d09d60e863a63e09ba0bebf9ee45fe49e90ac1a30a7646abb"
    "000000000000000000917cc3f700754b6985c05862e1fa3ce3554b8e50887963d960fa754e745369bdba92ffde98ce04e5"
    "c31ead7dcdf24333eed2d871263dba58863860fc8d7e8a717e39b1ec4000e209e6e9a4ad52df8ff8a84d8429157559aebe"
    "0845a50e4f92054b08c997cadb89677cfddcb7ae219e5bc3751452f70400eb2f926740719b570b34d167776bc3f71aa484"
    "372bf6896ba3468f440cab1e000937b13e88fd964e2500000000000000010000000000000001"
)
FIRST_CIPHERTEXT = "4c6548fc2635fcef039295f34d6ecbbff480c9236fb34e6da97adbfd027f"
REPLY_HEADER = (
    "0100417c15755d1d8d7fdb93ea88914c1dca58be61996dc988d512433453970f4db428e2fc3406c4644912f2575207a537"
    "480000000000000000"
)
REPLY_CIPHERTEXT = "06b0cfe36470467f10e8ef4e0aaef5a94f26807e528ec09be18c7092"
SAFETY_NUMBER = "01356 26800 73668 47262 53582 15563 58933 24140 12645 14427 82004 01254"


def test_a_version_1_first_message_decrypts_and_is_answered_as_when_frozen() -> None:
    bob = v1_party("bob", 101)  # bob's keys as a version-1 client made them
    first = bytes.fromhex(FIRST_HEADER)
    assert len(first) == HEADER_LEN + SETUP_LEN and parse_header(first, "alice").version == 1
    got = bob.decrypt("alice", first, bytes.fromhex(FIRST_CIPHERTEXT))
    assert got.plaintext == b"golden whisper"  # version 1 sends no padding
    assert got.new_session and not got.post_quantum  # the user is told: not post-quantum
    assert bob.session_post_quantum("alice") is False
    header, ciphertext = bob.encrypt("alice", b"golden reply")  # the session stays version 1
    assert (header.hex(), ciphertext.hex()) == (REPLY_HEADER, REPLY_CIPHERTEXT)


def test_the_safety_number_is_as_frozen() -> None:
    alice, bob = v1_party("alice", 1), v1_party("bob", 101)
    assert alice.identity.safety_number_with(bob.identity.public()) == SAFETY_NUMBER
    bob.decrypt("alice", bytes.fromhex(FIRST_HEADER), bytes.fromhex(FIRST_CIPHERTEXT))
    assert bob.safety_number("alice") == SAFETY_NUMBER  # from the key the setup carried


def test_the_older_client_the_tests_play_sends_what_a_version_1_client_sent() -> None:
    """`v1_initiate` (tests/e2e_helpers.py) stands for an older client in other tests: from
    the same keys and draws it must make the frozen version-1 first message, byte for byte."""
    alice, bob = v1_party("alice", 1), v1_party("bob", 101)
    state = v1_initiate(alice, fetched_bundle(bob, kopk=False), alice._random)
    header, ciphertext = encrypt(state, b"golden whisper")
    assert (header.hex(), ciphertext.hex()) == (FIRST_HEADER, FIRST_CIPHERTEXT)
