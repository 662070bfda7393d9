"""Nick and room patterns: `*` (any run, the empty one included) and `?` (one character);
every other character stands for itself. Pure: no locks, no I/O.

Matching is greedy, never backtracking: the pattern is cut at its stars; the piece before
the first star must start the text, the piece after the last one must end it, and each
piece between takes its leftmost place after the one before. Taking the leftmost place
is never wrong (a later place leaves less text for the rest), so there is nothing to try
again, and the cost is at most (text length x pattern length) character steps, mostly
inside `str.find` and star-free regular expressions. A backtracking matcher (a glob
turned into `.*` regular expressions) took seconds for one 27-character pattern against
one room name, with the hub's lock held (review 2, finding 1).
"""

from __future__ import annotations

import functools
import re

__all__ = ["matches"]


def matches(pattern: str, text: str) -> bool:
    """True if all of `text` matches `pattern` (compared as given: callers fold both)."""
    pieces = _pieces(pattern)
    if len(pieces) == 1:  # no star: the text is the piece
        return len(text) == len(pattern) and _at(pieces[0], text, 0)
    first, last = pieces[0], pieces[-1]
    end = len(text) - len(last[0])  # where the last piece must start
    if end < len(first[0]) or not _at(first, text, 0) or not _at(last, text, end):
        return False
    at = len(first[0])
    for piece in pieces[1:-1]:
        found = _find(piece, text, at, end)
        if found < 0:
            return False
        at = found + len(piece[0])
    return True


#: A piece between stars: its text, and for a piece with `?` a star-free regular
#: expression for it (None: `str.find` and `startswith` do).
_Piece = tuple[str, re.Pattern[str] | None]


@functools.lru_cache(maxsize=1024)  # bans and searches repeat their patterns; thread-safe
def _pieces(pattern: str) -> tuple[_Piece, ...]:
    # Runs of stars are one star; empty middle pieces match anywhere and are dropped.
    parts = pattern.split("*")
    kept = [parts[0], *(p for p in parts[1:-1] if p), parts[-1]] if len(parts) > 1 else parts
    return tuple((p, _regex(p) if "?" in p else None) for p in kept)


def _regex(piece: str) -> re.Pattern[str]:
    # No `*` in it: a fixed-length expression, which no input can make backtrack deeply.
    return re.compile("".join("." if c == "?" else re.escape(c) for c in piece), re.DOTALL)


def _at(piece: _Piece, text: str, at: int) -> bool:
    """True if `piece` matches `text` at `at` exactly (its length of characters)."""
    literal, regex = piece
    if regex is None:
        return text.startswith(literal, at)
    return regex.match(text, at, at + len(literal)) is not None


def _find(piece: _Piece, text: str, start: int, end: int) -> int:
    """The first place from `start` where `piece` matches wholly before `end`; -1 if none."""
    literal, regex = piece
    if regex is None:
        return text.find(literal, start, end)
    found = regex.search(text, start, end)
    return -1 if found is None else found.start()
