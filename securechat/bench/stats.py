"""Latency summaries for the benchmark."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["LatencySummary", "median_seconds", "percentile", "summarize"]


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank `p`th percentile (0 < p <= 100) of already sorted values.

    Nearest rank reports a value that was actually observed, which for tail latency is
    the honest choice. Raises `ValueError` for no values or p out of range.
    """
    if not sorted_values:
        raise ValueError("no values")
    if not 0 < p <= 100:
        raise ValueError("p must be in (0, 100]")
    rank = math.ceil(p / 100 * len(sorted_values))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50: float
    p99: float
    max: float


def summarize(values: Sequence[float]) -> LatencySummary:
    ordered = sorted(values)
    return LatencySummary(len(ordered), percentile(ordered, 50), percentile(ordered, 99), ordered[-1])


def median_seconds(
    fn: Callable[[], object], rounds: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """The median of `rounds` timings of `fn` by `clock` (wall time by default; pass
    `time.process_time` for this process's CPU)."""
    samples = []
    for _ in range(rounds):
        start = clock()
        fn()
        samples.append(clock() - start)
    return statistics.median(samples)
