"""A short run of every benchmark scenario against a server the bench starts itself.

Timing targets are not tested here (they live in docs/performance.md); this checks that
the tool works and that every message is delivered, in order per sender.
"""

from __future__ import annotations

import json
import socket

import pytest

from securechat.bench.ports import parse_port_range
from securechat.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["burst", "--clients", "10", "--senders", "3", "--messages", "40"],
        ["steady", "--clients", "10", "--rate", "5", "--seconds", "1"],
        ["steady", "--clients", "10", "--rate", "5", "--seconds", "1", "--pattern", "even"],
        ["steady", "--clients", "10", "--rate", "5", "--seconds", "1", "--pattern", "simultaneous"],
        ["steady", "--clients", "10", "--rate", "5", "--seconds", "1", "--one-line-per-write"],
        ["burst", "--clients", "10", "--senders", "3", "--messages", "40", "--one-line-per-write"],
        ["burst", "--clients", "10", "--senders", "3", "--messages", "40", "--procs", "3"],
        ["connect", "--sessions", "30"],
    ],
)
def test_bench_scenarios_deliver_everything(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *argv, "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("started a server on 127.0.0.1:") and "rate limit off" in out[0]
    result = json.loads(out[-1])
    assert result["scenario"] == argv[0]
    if "expected" in result:
        assert result["deliveries"] == result["expected"] > 0
        assert result["out_of_order"] == 0
        assert result["latency"]["count"] == result["deliveries"]
        # Measured (the server's pid was known); it may round to 0 in a run this short,
        # since the kernel counts CPU time in 10 ms ticks.
        assert isinstance(result["cpu_us_per_delivery"], float) and result["cpu_us_per_delivery"] >= 0
        assert result["one_line_per_write"] == ("--one-line-per-write" in argv)
        if argv[0] == "steady":
            pattern = argv[argv.index("--pattern") + 1] if "--pattern" in argv else "spread"
            assert result["pattern"] == pattern
        generator = result["generator"]
        assert generator["run_seconds"] > 0 and generator["cpu_seconds"] >= 0
        assert generator["limited"] == (generator["busy"] >= 0.9)
        procs = int(argv[argv.index("--procs") + 1]) if "--procs" in argv else 1
        assert generator["processes"] == procs
    else:
        assert result["sessions"] == 30 and result["per_second"] > 0
        assert result["cpu_us_per_session"] >= 0 and result["generator"]["run_seconds"] > 0


def test_bench_idle_reports_memory_per_session(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "idle", "--sessions", "40", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["sessions"] == 40 and result["rss_kib_per_session"] > 0
    assert 0.9 <= result["threads_per_session"] <= 1.5  # a reader each; writers come and go


def test_bench_logins_one_after_another_by_tenths_with_idle_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "logins", "--clients", "30", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["scenario"] == "logins" and result["clients"] == 30 and result["per_second"] > 0
    tenths = result["deciles"]
    assert [d["members"] for d in tenths] == list(range(0, 30, 3))
    assert all(d["logins"] == 3 and d["wall_ms_per_login"] > 0 for d in tenths)
    assert all(d["cpu_us_per_login"] is not None for d in tenths)
    assert result["rss_kib_per_session"] is not None and result["threads_per_session"] >= 0.9
    assert result["open_files_limit"] >= 30 and result["generator"]["processes"] == 1


def test_bench_refuses_nonsense() -> None:
    assert main(["bench", "burst", "--senders", "5", "--clients", "2"]) == 2
    assert main(["bench", "steady", "--procs", "2"]) == 2  # burst's only
    assert main(["bench", "steady", "--clients", "real"]) == 2  # relay's only
    assert main(["bench", "relay", "--clients", "7"]) == 2
    assert main(["bench", "burst", "--clients", "0"]) == 2
    assert main(["bench", "burst", "--port", "7443", "--ports", "9000-9001"]) == 2


def test_bench_server_listens_in_the_port_range_given(capsys: pytest.CaptureFixture[str]) -> None:
    # A range whose first port is taken (by us, listening): the bench's server takes the next.
    taken, first = _listen_before_a_free_port()
    with taken:
        argv = ["steady", "--clients", "3", "--rate", "5", "--seconds", "0.5"]
        assert main(["bench", *argv, "--ports", f"{first}-{first + 1}", "--json"]) == 0
    banner = capsys.readouterr().out.splitlines()[0]
    assert banner.startswith(f"started a server on 127.0.0.1:{first + 1} ")


def _listen_before_a_free_port() -> tuple[socket.socket, int]:
    """A socket listening on a port P of 127.0.0.1 whose next port P+1 is free now."""
    for port in range(30011, 40000, 101):
        try:
            taken = socket.create_server(("127.0.0.1", port), reuse_port=False)
        except OSError:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                taken.close()
                continue
        return taken, port
    raise AssertionError("no two adjacent ports free between 30011 and 40000")


def test_port_ranges_parse_and_refuse_nonsense() -> None:
    assert parse_port_range("9000-9002") == range(9000, 9003)
    assert parse_port_range("9000") == range(9000, 9001)
    for bad in ("0", "9002-9000", "70000", "a-b", "9000-"):
        with pytest.raises(ValueError):
            parse_port_range(bad)


@pytest.mark.parametrize("keys", ["memory", "disk"])
def test_bench_whisper_compares_plain_and_encrypted_round_trips(
    keys: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "whisper", "--rounds", "5", "--keys", keys, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["keys"] == keys
    assert result["plain_rtt"]["count"] == result["whisper_rtt"]["count"] == 5
    assert result["whisper_rtt"]["p50"] > 0 and result["plain_rtt"]["p50"] > 0
    crypto = result["crypto"]
    # The e2e layer necessarily costs at least the primitives it is made of.
    assert crypto["us_per_whisper"] > 0 and crypto["x25519_us"] > 0
    assert crypto["ratio"] == pytest.approx(crypto["us_per_whisper"] / crypto["primitives_us"])
