from __future__ import annotations

import pytest

from securechat.server.ratelimit import KeyedBuckets, TokenBucket


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


def test_wait_says_when_the_next_token_comes() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=0.5, burst=1, clock=lambda: now[0])
    assert bucket.wait() == 0 and bucket.allow()
    assert bucket.wait() == pytest.approx(2.0)
    now[0] += 1.5
    assert bucket.wait() == pytest.approx(0.5)


def test_keyed_buckets_are_separate_per_key_and_bounded() -> None:
    now = [0.0]
    buckets = KeyedBuckets(rate=1.0, burst=2, size=3, clock=lambda: now[0])
    assert [buckets.allow("a") for _ in range(3)] == [True, True, False]
    assert buckets.allow("b")  # another key has its own bucket
    assert buckets.wait("a") == pytest.approx(1.0) and buckets.wait("unseen") == 0
    for key in ("c", "d", "e", "f"):
        buckets.allow(key)
    assert len(buckets) <= 3  # memory stays bounded however many prefixes come by


def test_keyed_buckets_forget_refilled_buckets_before_busy_ones() -> None:
    now = [0.0]
    buckets = KeyedBuckets(rate=1.0, burst=2, size=2, clock=lambda: now[0])
    buckets.allow("flooder", cost=2)  # empty
    now[0] += 0.5
    buckets.allow("quiet", cost=0)  # full, and more recently used
    buckets.allow("newcomer")  # room is made by dropping the full bucket, not the empty one
    assert not buckets.allow("flooder")
