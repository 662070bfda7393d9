"""Giving freed memory back to the system after a flood of sessions ends.

CPython frees a session's objects, but glibc keeps the freed heap pages (in the main
heap and in each thread's arena) for reuse, so a server that once held thousands of
sessions stays that big. `malloc_trim(0)` returns what is free at the top of every arena
and `madvise`s free pages in the middle. It is glibc-only; elsewhere `trim` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

__all__ = ["TrimAfterDrop", "rss_kib", "trim"]


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim_function: Callable[[int], int] = function
    return trim_function


_MALLOC_TRIM = _malloc_trim()


def trim() -> bool:
    """Hand free heap memory back to the system; whether it could be tried (glibc)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def rss_kib() -> int | None:
    """This process's resident memory in KiB (Linux), or None where unknown."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


class TrimAfterDrop:
    """Says when to trim: once `drop` sessions (and at least half of the peak) have ended
    since the most sessions seen. Not thread-safe: the server's lock guards it."""

    def __init__(self, drop: int) -> None:
        self._drop = drop
        self._peak = 0

    def seen(self, sessions: int) -> None:
        """Note the current number of sessions (after each accept)."""
        self._peak = max(self._peak, sessions)

    def due(self, sessions: int) -> bool:
        """Whether to trim now, with `sessions` left; the peak restarts from here if so."""
        if self._drop <= 0 or self._peak - sessions < self._drop or sessions * 2 > self._peak:
            return False
        self._peak = sessions
        return True
