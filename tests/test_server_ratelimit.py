from __future__ import annotations

import pytest

from securechat.server.ratelimit import TokenBucket


def test_burst_then_steady_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back at 2 per second
    assert bucket.allow() and not bucket.allow()
    now[0] += 100  # refills only up to the burst
    assert sum(bucket.allow() for _ in range(10)) == 3


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0)
