"""Token buckets: a steady rate with room for a burst; one per session, or one per key."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = ["KeyedBuckets", "TokenBucket"]


class TokenBucket:
    """Allows `burst` actions at once and `rate` per second sustained. Not thread-safe:
    each session owns its buckets and uses them from its reader thread (`KeyedBuckets`
    shares buckets between threads under its own lock)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now

    def allow(self, cost: float = 1.0) -> bool:
        """Take `cost` tokens if there are enough; False (and nothing taken) otherwise."""
        self._refill()
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def wait(self, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens will be there (0 if they are now); takes nothing."""
        self._refill()
        return max(0.0, (cost - self._tokens) / self._rate)

    def full(self) -> bool:
        """Whether the bucket is back to its burst: then it is as good as a new one."""
        self._refill()
        return self._tokens >= self._burst


class KeyedBuckets:
    """A token bucket per key (an address prefix), made full on first use.

    Memory is bounded: at most `size` buckets are kept, and making one more forgets
    the least recently used. A forgotten bucket comes back full, so eviction favours
    the key evicted; the least recently used bucket has usually refilled anyway, and
    buckets found full are dropped first (they are the same as no bucket at all).
    Thread-safe: one lock, held only for the arithmetic.
    """

    def __init__(
        self, rate: float, burst: float, *, size: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        TokenBucket(rate, burst, clock)  # checks the parameters now, not at first use
        self._rate = rate
        self._burst = burst
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()  # guarded by `_lock`

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)

    def allow(self, key: Hashable, cost: float = 1.0) -> bool:
        """Take `cost` tokens from `key`'s bucket if it has them; False otherwise."""
        with self._lock:
            return self._bucket(key).allow(cost)

    def wait(self, key: Hashable, cost: float = 1.0) -> float:
        """Seconds until `key`'s bucket has `cost` tokens (0 if now); takes nothing."""
        with self._lock:
            bucket = self._buckets.get(key)
            return 0.0 if bucket is None else bucket.wait(cost)

    def _bucket(self, key: Hashable) -> TokenBucket:
        """`key`'s bucket, most recently used from now on. Hold `_lock`."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        if len(self._buckets) >= self._size:
            self._make_room()
        bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._clock)
        return bucket

    def _make_room(self) -> None:
        """Forget the full buckets among the oldest few, or else the oldest. Hold `_lock`."""
        oldest = [k for k, _ in zip(self._buckets, range(_EVICTION_SCAN), strict=False)]
        full = [k for k in oldest if self._buckets[k].full()]
        for key in full or oldest[:1]:
            del self._buckets[key]


#: How many of the least recently used buckets an eviction looks at for full ones:
#: enough to free room in batches, few enough to keep one `allow` cheap.
_EVICTION_SCAN = 32
