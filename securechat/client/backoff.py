"""Reconnection delays: exponential, capped, with jitter so that a restarted server is
not hit by every client in the same instant."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt n (0-based): half of min(cap, base * 2**n), plus up to the
    other half at random ("equal jitter": never zero, never above the cap)."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = float(min(self.cap, self.base * 2.0 ** min(attempt, 32)))
        return ceiling / 2 + (rng or random).uniform(0.0, ceiling / 2)
