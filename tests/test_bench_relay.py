"""The relay benchmark: a tiny run stores and delivers every whisper, and a refusal fails it.

Timing figures are not tested (they belong in the performance report).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from securechat.cli import main
from securechat.server.server import Server


def test_bench_relay_stores_and_delivers_every_whisper_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "relay", "--pairs", "3", "--whispers", "60", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("started a server on 127.0.0.1:")
    result = json.loads(out[-1])
    assert result["scenario"] == "relay" and result["pairs"] == 3
    assert result["whispers"] == result["stored"] == result["delivered"] == 60 and result["refused"] == 0
    assert result["stored_latency"]["count"] == result["delivered_latency"]["count"] == 60
    # Measured from /proc (the server's pid was known); CPU time counts in 10 ms ticks.
    assert result["server_cpu_us_per_whisper"] >= 0 and result["generator_cpu_s"] > 0


def test_bench_relay_with_real_clients_encrypts_and_delivers_every_whisper(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "relay", "--clients", "real", "--pairs", "2", "--whispers", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["clients"] == "real" and result["pairs"] == 2
    assert result["whispers"] == result["delivered"] == 20
    assert result["delivered_latency"]["count"] == 20
    assert result["server_cpu_us_per_whisper"] >= 0 and result["generator_cpu_s"] > 0


def test_bench_relay_reports_refused_whispers_as_a_failure(
    start_server: Callable[..., Server], cert_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Each sender may have one whisper waiting to be read: the rest of its window is refused.
    server = start_server(queue_max_per_sender=1, max_per_ip=1000)
    port = str(server.address[1])
    argv = [
        "bench",
        "relay",
        "--port",
        port,
        "--cafile",
        cert_files["ca"],
        "--pairs",
        "2",
        "--whispers",
        "40",
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "FAILED:" in out and "whispers refused" in out
