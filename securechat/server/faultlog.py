"""Logging a fault that repeats: the first time at once, then one line per interval.

A full disk fails every whisper, and a process out of file descriptors fails every
accept; a log line per failure would bury everything else (one was measured at 40,000
lines a second). `FaultLog` logs the first failure of a run, then at most one line per
interval with how many failed since, and one line when the fault clears.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["FaultLog"]


class FaultLog:
    """Counts failures of one kind (`what`) and logs them at a bounded rate.

    Thread-safe: `failed` and `recovered` may be called from any thread. Logging
    happens in the calling thread, at most once per `every` seconds of `clock` while
    the fault lasts (plus the first failure and the recovery).
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        every: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._every = every
        self._clock = clock
        self._lock = threading.Lock()
        # All guarded by `_lock`:
        self._since: float | None = None  # when the current run of failures began
        self._total = 0  # failures in the current run
        self._unlogged = 0  # failures not yet counted in a log line
        self._last_logged = 0.0

    @property
    def failing(self) -> bool:
        """True between a failure and the next `recovered`."""
        with self._lock:
            return self._since is not None

    def failed(self, detail: str) -> None:
        """Record one failure; `detail` (no secrets) says what went wrong."""
        now = self._clock()
        with self._lock:
            self._total += 1
            if self._since is None:
                self._since = now
                self._last_logged = now
                first = True
            else:
                self._unlogged += 1
                if now - self._last_logged < self._every:
                    return
                first = False
                count, self._unlogged = self._unlogged, 0
                self._last_logged = now
        if first:
            self._log.error(
                "%s failing: %s (further failures are counted, not logged one by one)", self._what, detail
            )
        else:
            self._log.error(
                "%s still failing: %d more failures in the last %.0f s (%s)",
                self._what,
                count,
                self._every,
                detail,
            )

    def recovered(self) -> None:
        """The operation worked: if it was failing, say so once, with the count."""
        with self._lock:
            if self._since is None:
                return
            total, began = self._total, self._since
            self._since, self._total, self._unlogged = None, 0, 0
        self._log.warning(
            "%s working again after %d failures over %.1f s", self._what, total, self._clock() - began
        )
