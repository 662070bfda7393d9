"""Reconnection delays: exponential, capped, with jitter so that a restarted server is
not hit by every client in the same instant."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt n (0-based): half of min(cap, base * 2**n), plus up to the
    other half at random ("equal jitter": never zero, never above the cap)."""

    base: float = 0.5
    # Short: a restarted server has its users back within a few seconds. Equal jitter
    # spreads a crowd's attempts over the second half of the cap (2-4 s), which keeps a
    # reconnect storm within what the server accepts per second (docs/performance.md).
    cap: float = 4.0
    # Its own generator: the jitter must not consume, or depend on, the global one.
    _rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = float(min(self.cap, self.base * 2.0 ** min(attempt, 32)))
        return ceiling / 2 + (rng or self._rng).uniform(0.0, ceiling / 2)
