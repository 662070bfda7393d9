"""`Budget`: how often something may happen, as a token bucket on a monotonic clock.

Used where a server's word would otherwise make the client work without end (a server
that answers every prekey publication with "you have none left").
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Budget"]


class Budget:
    """At most `burst` at once, then one more every `every` seconds.

    Not thread-safe: its owner calls it under its own lock. The clock is monotonic, so a
    wall-clock jump neither grants nor withholds anything.
    """

    def __init__(self, burst: int, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or every <= 0:
            raise ValueError("a budget needs burst >= 1 and every > 0")
        self._burst = burst
        self._every = every
        self._clock = clock
        self._tokens = float(burst)
        self._since = clock()

    def take(self) -> bool:
        """Spend one if there is one; False (and nothing spent) otherwise."""
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._since) / self._every)
        self._since = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
