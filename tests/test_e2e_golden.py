"""Frozen vectors of this protocol, made from fixed keys (seeded randomness).

If one of these changes, the wire format or a KDF changed: old clients can no longer
talk to new ones. Update them only with a protocol version bump.
"""

from __future__ import annotations

from e2e_helpers import fetched_bundle, party

from securechat.e2e.ratchet import HEADER_LEN, SETUP_LEN

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


def test_first_message_and_reply_match_the_frozen_vectors() -> None:
    alice, bob = party("alice", 1), party("bob", 101)
    alice.start_session("bob", fetched_bundle(bob))
    header, ciphertext = alice.encrypt("bob", b"golden whisper")
    assert len(header) == HEADER_LEN + SETUP_LEN
    assert (header.hex(), ciphertext.hex()) == (FIRST_HEADER, FIRST_CIPHERTEXT)
    assert bob.decrypt("alice", header, ciphertext).plaintext == b"golden whisper"
    header, ciphertext = bob.encrypt("alice", b"golden reply")
    assert (header.hex(), ciphertext.hex()) == (REPLY_HEADER, REPLY_CIPHERTEXT)
    assert alice.decrypt("bob", header, ciphertext).plaintext == b"golden reply"


def test_frozen_vectors_decrypt_with_fresh_parties() -> None:
    alice, bob = party("alice", 1), party("bob", 101)
    alice.start_session("bob", fetched_bundle(bob))  # bob's OPK and SPK as when frozen
    got = bob.decrypt("alice", bytes.fromhex(FIRST_HEADER), bytes.fromhex(FIRST_CIPHERTEXT))
    assert got.plaintext == b"golden whisper"
    assert alice.safety_number("bob") == bob.safety_number("alice") == SAFETY_NUMBER
