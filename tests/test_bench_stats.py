from __future__ import annotations

import os

import pytest

from securechat.bench.procfs import parse_stat, parse_status, sample
from securechat.bench.stats import percentile, summarize


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    s = summarize([3.0, 1.0, 2.0])
    assert (s.count, s.p50, s.p99, s.max) == (3, 2.0, 3.0, 3.0)


@pytest.mark.parametrize("p", [0, -1, 101])
def test_bad_percentiles(p: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], p)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_stat_parsing_survives_odd_process_names() -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    line = "4242 (we ird) name)) S 1 2 3 4 5 6 7 8 9 10 " + f"{3 * ticks} {2 * ticks}" + " 0 0 20 0 9 0"
    assert parse_stat(line) == 5.0


def test_status_parsing() -> None:
    text = "Name:\tpython\nVmRSS:\t  123456 kB\nThreads:\t7\n"
    assert parse_status(text) == (123456, 7)


def test_sampling_this_very_process() -> None:
    s = sample(os.getpid())
    assert s.cpu_seconds > 0 and s.rss_kib > 1000 and s.threads >= 1
