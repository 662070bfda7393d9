"""A short side-by-side run of benchmarks/compare.py (the full one is `make bench`).

It checks that every server it could start received every line in order, in the new
traffic pattern and write modes too: securechat and ngIRCd (when installed; .ci/run
installs it) must deliver all of them. The classroom relay has no framing, so in a burst
it may garble lines; only its steady runs are required to be complete. Timing figures are
not checked (they live in docs/performance.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare  # noqa: E402


def test_compare_runs_the_servers_side_by_side_without_writing() -> None:
    argv = ["--clients", "6", "--seconds", "1", "--rate", "4", "--senders", "2", "--messages", "20"]
    argv += ["--settle", "1", "--repeat", "1", "--patterns", "even", "--write-modes", "queued"]
    argv += ["--no-profile", "--no-write"]
    before = (ROOT / "docs" / "performance.md").read_text()
    done = subprocess.run(
        [sys.executable, "benchmarks/compare.py", *argv],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (ROOT / "docs" / "performance.md").read_text() == before
    assert "| steady even | securechat |" in done.stdout and "| burst | securechat |" in done.stdout
    assert "2 scenarios x" in done.stdout


def test_every_server_gets_every_line_in_each_pattern_and_write_mode(tmp_path: Path) -> None:
    args = argparse.Namespace(
        clients=6, seconds=1.0, rate=4.0, senders=2, messages=20, settle=1.0, repeat=1, ports=None
    )
    servers, _ = compare.starters()
    one_line = compare.scenario_list(["simultaneous"], [True])  # steady and burst
    scenario_set = [*one_line, compare.Scenario("steady", "spread", True)]
    runs = compare.run_all(servers, scenario_set, args, tmp_path, lambda: None)
    assert len(runs) == len(servers) * len(scenario_set)
    for run in runs:
        r = run["result"]
        assert r["one_line_per_write"] is True
        if run["scenario"].startswith("steady"):
            assert r["deliveries"] == r["expected"] > 0 and r["out_of_order"] == 0, run
            assert r["pattern"] == run["scenario"].split()[1]
        elif run["server"] != compare.RELAY:
            assert r["deliveries"] == r["expected"] == 2 * 20 * 5 and r["out_of_order"] == 0, run
        assert run["load_before"] is not None and run["load_after"] is not None
    # Interleaved: consecutive scenarios start with different servers.
    firsts = [runs[i]["server"] for i in range(0, len(runs), len(servers))]
    assert len(set(firsts)) == min(len(servers), len(scenario_set))
    rows = compare.summarize(runs)
    table = compare.table(rows)
    assert table.count("\n") == 1 + len(servers) * len(scenario_set)
    assert ("ngIRCd" in table) == (compare.NGIRCD in servers)


def _run(server: str, scenario: str, cpu: float, busy: float, load: float) -> dict[str, Any]:
    lat = {"count": 10, "p50": 0.002, "p99": 0.004, "max": 0.005}
    result = {"deliveries": 10, "expected": 10, "out_of_order": 0, "latency": lat, "cpu_us_per_delivery": cpu}
    result["generator"] = {"busy": busy, "limited": busy >= 0.9}
    return {
        "server": server,
        "scenario": scenario,
        "load_before": load,
        "load_after": load + 1,
        "result": result,
    }


def test_the_table_gives_medians_ranges_ratios_and_flags_a_limiting_generator() -> None:
    runs = [_run(compare.NGIRCD, "steady spread", cpu, 0.1, 0.5) for cpu in (4.0, 5.0, 6.0)] + [
        _run(compare.SECURECHAT, "steady spread", cpu, busy, 0.5)
        for cpu, busy in ((9, 0.2), (10, 0.95), (12, 0.3))
    ]
    rows = compare.summarize(runs)
    assert [r["server"] for r in rows] == [compare.SECURECHAT, compare.NGIRCD]  # table order
    line = compare.table(rows).splitlines()[2]
    assert "| 10.00 [9.00-12.00] us | 2.00x |" in line
    assert "30% [20%-95%], the limit in 1 of 3" in line
    assert "| 1.00 [0.50-1.50] |" in line  # the load before and after each run


def test_profile_summary_shares_the_functions_own_samples() -> None:
    collapsed = (
        "run (a.py:1);fan_out (hub.py:10);send_now (channel.py:5) 6\n"
        "run (a.py:1);fan_out (hub.py:12);send_now (channel.py:7) 2\n"
        "run (a.py:1);fan_out (hub.py:11) 2\n"
    )
    assert (
        compare.profile_summary(collapsed) == "send_now (channel.py) 80%, fan_out (hub.py) 20% (10 samples)"
    )
    assert compare.profile_summary("") == "no samples"


@pytest.mark.parametrize("bad", [["--patterns", "zigzag"], ["--repeat", "0"], ["--ports", "9-1"]])
def test_compare_refuses_nonsense(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        compare.main([*bad, "--no-write"])
    assert exc.value.code == 2
