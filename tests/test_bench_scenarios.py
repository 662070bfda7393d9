"""The scenarios' own arithmetic: a burst's share per generator process and the merge of their
parts, the tenths of a logins run. No timing is checked (the figures are made up)."""

from __future__ import annotations

import pytest

from securechat.bench.scenarios import BurstPart, burst_expected, deciles, growth, merge_parts


def test_burst_shares_owed_deliveries_between_processes_and_they_add_up() -> None:
    clients, senders, messages, procs = 10, 3, 7, 3
    shares = [list(range(k, clients, procs)) for k in range(procs)]
    total = senders * messages * (clients - 1)  # every line at every client but its sender
    assert sum(burst_expected(share, senders, messages) for share in shares) == total
    # Process 0 holds clients 0, 3, 6, 9: senders 0 and... only 0 of them sends (0 < 3).
    assert burst_expected([0, 3, 6, 9], senders, messages) == (3 * 4 - 1) * 7
    assert burst_expected([5, 7], senders, messages) == 3 * 2 * 7


def _part(deliveries: int, start: float, end: float, last: float, cpu: float, lat: list[int]) -> BurstPart:
    return BurstPart(deliveries, deliveries, 0, lat, start, end, last, cpu)


def test_merged_parts_count_from_the_common_start_and_show_the_busiest_process() -> None:
    parts = [_part(100, 10.0, 14.0, 13.0, 1.0, [5, 6]), _part(50, 10.1, 12.0, 11.5, 1.8, [7])]
    merged = merge_parts(parts, start=10.0)
    assert merged.deliveries == merged.expected == 150
    assert merged.seconds == pytest.approx(3.0)  # to the last delivery anywhere
    assert sorted(merged.latencies_us) == [5, 6, 7]
    gen = merged.generator
    assert gen.processes == 2 and gen.cpu_seconds == pytest.approx(2.8)
    assert gen.run_seconds == pytest.approx(4.0)
    # The busiest: 1.8 s of CPU in the 2 s it ran (start to its end): the limit.
    assert gen.busy == pytest.approx(0.9) and gen.limited
    quiet = merge_parts([_part(10, 0.0, 4.0, 3.0, 1.0, [])], start=0.0).generator
    assert quiet.busy == pytest.approx(0.25) and not quiet.limited
    with pytest.raises(ValueError):
        merge_parts([], start=0.0)


def test_login_tenths_give_wall_and_cpu_per_login_and_the_median_login() -> None:
    marks = [(0, 100.0, 5.0), (2, 100.02, 5.004), (4, 100.1, 5.024)]
    times = [0.001, 0.003, 0.02, 0.04]
    first, second = deciles(marks, times)
    assert (first.members, first.logins, second.members) == (0, 2, 2)
    assert first.wall_ms_per_login == pytest.approx(10.0)
    assert second.wall_ms_per_login == pytest.approx(40.0)
    assert first.p50_ms == pytest.approx(3.0)  # the upper median of two
    assert first.cpu_us_per_login == pytest.approx(2000.0)
    assert second.cpu_us_per_login == pytest.approx(10000.0)
    # Without the server's pid, no CPU; an empty stretch is skipped.
    (only,) = deciles([(0, 0.0, None), (0, 0.5, None), (1, 1.0, None)], [0.5])
    assert only.cpu_us_per_login is None and only.logins == 1


def test_growth_is_last_over_first_or_none() -> None:
    assert growth(2.0, 5.0) == pytest.approx(2.5)
    assert growth(None, 5.0) is None and growth(0.0, 1.0) is None and growth(1.0, None) is None
