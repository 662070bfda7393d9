from __future__ import annotations

import random

from securechat.client.backoff import Backoff


def test_delays_grow_exponentially_with_jitter_and_are_capped() -> None:
    backoff = Backoff(base=0.5, cap=8.0)
    rng = random.Random(1)
    for attempt, ceiling in enumerate([0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]):
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # really jittered
    assert backoff.delay(10_000, rng) <= 8.0  # no overflow for absurd attempt counts
