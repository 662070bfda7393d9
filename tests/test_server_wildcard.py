"""Nick and room patterns (`*`, `?`): the matcher against a model, and what an adversarial
pattern costs.

The cost tests state a generous bound of process CPU time (not wall time: the machine
may be busy). A backtracking matcher took seconds for one such pattern against one name
(review 2, finding 1), so the bounds are far from what a correct matcher needs and far
below what the old one took.
"""

from __future__ import annotations

import fnmatch
import time

from hypothesis import given
from hypothesis import strategies as st

from securechat.server.rooms import Rooms
from securechat.server.wildcard import matches

# -- the matcher against fnmatch ----------------------------------------------------

#: Short strings over a small alphabet, so that matches and near misses are both common.
TEXT = st.text(alphabet="ab", max_size=12)
PATTERN = st.text(alphabet="ab*?", max_size=10)


@given(pattern=PATTERN, text=TEXT)
def test_matches_agrees_with_fnmatch(pattern: str, text: str) -> None:
    assert matches(pattern, text) == fnmatch.fnmatchcase(text, pattern)


@given(pattern=st.text(alphabet="a*", max_size=10), text=st.text(alphabet="a", max_size=12))
def test_matches_agrees_with_fnmatch_on_runs_of_one_letter(pattern: str, text: str) -> None:
    # Where a backtracking matcher is at its worst: every position could start a match.
    assert matches(pattern, text) == fnmatch.fnmatchcase(text, pattern)


def test_matches_treats_other_characters_as_themselves() -> None:
    assert matches("#a.*", "#a.b") and not matches("#a.*", "#axb")
    assert matches("a+b", "a+b") and not matches("a+b", "aab")
    assert matches("[x]", "[x]") and not matches("[x]", "x")  # no character classes
    assert matches("", "") and not matches("", "a") and matches("**", "")


# -- what an adversarial pattern costs --------------------------------------------

#: Process CPU seconds the whole adversarial run may take: the matcher needs a few
#: hundredths; the backtracking one took 4.8 s for one room and 2.4 s per 20 bans.
CPU_BOUND = 0.5

ALICE = b"a" * 32


def test_listing_1000_rooms_with_an_adversarial_pattern_is_cheap() -> None:
    rooms = Rooms(max_rooms=1000, max_rooms_per_user=1000)
    for i in range(1000):
        rooms.join("#" + "a" * 28 + f"{i:04}", "alice", ALICE, 0.0)
    pattern = "#" + "*a" * 12 + "*b"  # the reviewer's: 27 characters, matches none of them
    started = time.process_time()
    found, cut = rooms.search(pattern)
    spent = time.process_time() - started
    assert (found, cut) == ([], False)
    assert spent < CPU_BOUND, f"{spent:.2f} s of CPU to list 1000 rooms"
    assert len(rooms.search("#" + "*a" * 12 + "*9")[0]) == 100  # and it still finds what matches


def test_joining_past_200_adversarial_bans_is_cheap() -> None:
    rooms = Rooms()
    rooms.join("#dev", "alice", ALICE, 0.0)
    rooms.register("#dev", "alice")
    for i in range(200):
        rooms.ban("#dev", "alice", "*a" * 13 + f"*x{i}", None)  # the reviewer's, made distinct
    started = time.process_time()
    rooms.join("#dev", "a" * 24, b"", 0.0)  # a guest none of them matches
    spent = time.process_time() - started
    assert spent < CPU_BOUND, f"{spent:.2f} s of CPU to check 200 bans"
    rooms.unban("#dev", "alice", "*a" * 13 + "*x0")
    rooms.ban("#dev", "alice", "*a" * 12 + "*", None)
    assert rooms.users(rooms.room("#dev")) == ("alice",)  # a matching one still puts the guest out
