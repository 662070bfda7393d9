"""One watchdog thread that runs callbacks when their deadlines pass.

Blocking socket calls in session threads cannot time out as a whole (a peer can
trickle one byte just before each per-call timeout). Instead a session registers a
deadline here, and the callback shuts its socket down, which wakes the blocked call.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Deadline", "Watchdog"]

log = logging.getLogger(__name__)


class Deadline:
    """A scheduled callback; `cancel()` stops it from running if it has not yet.

    `cancel` may come from any thread, without a lock: it only drops the callback and
    sets a flag (each one reference write, atomic), which the watchdog reads under its
    own lock. A cancel that races the deadline's moment can be too late: the watchdog
    may already hold the callback and run it once. Every callback is therefore one that
    is harmless after the fact (closing or shutting down what is already closed).
    """

    __slots__ = ("_callback", "_cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self._callback: Callable[[], None] | None = callback
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True
        self._callback = None  # drop references to the session early

    @property
    def cancelled(self) -> bool:
        return self._cancelled


class Watchdog:
    """Runs each scheduled callback once, in the watchdog thread, at or after its time.

    Callbacks must be quick and must not raise (a raised exception is logged and
    swallowed so one bad callback cannot stop the others). They run without the
    watchdog's lock held, so they may schedule more (`after`); `after` may be called from
    any thread, and `_cond` is a leaf lock: nothing else is taken while it is held.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []  # guarded by `_cond`
        self._seq = itertools.count()  # guarded by `_cond`
        self._stopping = False  # guarded by `_cond`
        self._thread = threading.Thread(target=self._run, name="securechat-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def after(self, seconds: float, callback: Callable[[], None]) -> Deadline:
        """Schedule `callback` to run `seconds` from now; returns a cancellable handle."""
        deadline = Deadline(self._clock() + seconds, callback)
        with self._cond:
            heapq.heappush(self._heap, (deadline.when, next(self._seq), deadline))
            if self._heap[0][2] is deadline:
                self._cond.notify()
        return deadline

    def stop(self) -> None:
        """Stop the thread without running what is still scheduled; waits for it. Any
        thread but the watchdog's own (a callback must not stop its watchdog)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - self._clock()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopping:
                    return
                _, _, due = heapq.heappop(self._heap)
                callback = due._callback
                due.cancel()
            if callback is not None:
                try:
                    callback()
                except Exception:
                    log.exception("deadline callback failed")
