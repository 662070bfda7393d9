"""How fast one-time prekeys are handed out: a fetch uses one up, and nicks are free.

Three limits, in memory, each table bounded (`fetch_limits_tracked` entries, least
recently used forgotten first):

- per requester identity, all its sessions together (`fetch_rate`, `fetch_burst`):
  beyond it the fetch is refused with `rate-limited`;
- per owner (`opk_rate_per_owner`, `opk_burst_per_owner`) and in all
  (`opk_rate_total`, `opk_burst_total`): beyond either, the bundle goes out without a
  one-time prekey, and the sender's setup uses the signed prekey alone, as it does when
  an owner has run out. Refusing instead would let a drainer stop everyone whispering
  to its victim.

So however many fresh nicks a drainer makes, it takes at most a burst of one owner's
prekeys, then one a minute; and a crowd of owners at most the total rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..protocol import fold_nick
from .config import ServerConfig
from .ratelimit import KeyedBuckets, TokenBucket

__all__ = ["PrekeyLimits"]


class PrekeyLimits:
    """The three limits. Thread-safe: session reader threads call `may_fetch`, and
    `may_hand_out` runs inside the store's transaction (it takes only its own locks)."""

    def __init__(self, config: ServerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        size = config.fetch_limits_tracked
        self._requesters = KeyedBuckets(config.fetch_rate, config.fetch_burst, size=size, clock=clock)
        self._owners = KeyedBuckets(
            config.opk_rate_per_owner, config.opk_burst_per_owner, size=size, clock=clock
        )
        self._lock = threading.Lock()
        #: Every owner's prekeys together. Guarded by `_lock`, which also makes checking
        #: both buckets and then taking from both one step.
        self._total = TokenBucket(config.opk_rate_total, config.opk_burst_total, clock)

    def may_fetch(self, requester: bytes) -> bool:
        """Count a fetch by the identity `requester`; False if it is fetching too fast."""
        return self._requesters.allow(requester)

    def may_hand_out(self, owner: str) -> bool:
        """Whether one of `owner`'s one-time prekeys may go out now; if so, it is counted."""
        key = fold_nick(owner)
        with self._lock:
            # Nothing is taken unless both have a token: a drainer hammering one owner
            # must not use up the total for everyone else's owners.
            if self._total.wait() > 0 or self._owners.wait(key) > 0:
                return False
            self._total.allow()
            return self._owners.allow(key)
