"""A short side-by-side run of benchmarks/compare.py (the full one is `make bench`).

It checks that every server it could start received every line in order: securechat
and ngIRCd (when installed; .ci/run installs it) must deliver all of them. The
classroom relay has no framing, so in a burst it may garble lines; only its steady
run is required to be complete.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare  # noqa: E402


def test_compare_runs_the_servers_side_by_side_without_writing(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--clients",
        "8",
        "--seconds",
        "1",
        "--rate",
        "4",
        "--senders",
        "2",
        "--messages",
        "30",
        "--settle",
        "1",
        "--no-write",
    ]
    before = (ROOT / "docs" / "performance.md").read_text()
    assert (
        subprocess.run([sys.executable, "benchmarks/compare.py", *argv], cwd=ROOT, check=False).returncode
        == 0
    )
    assert (ROOT / "docs" / "performance.md").read_text() == before


def test_every_server_gets_every_line(tmp_path: Path) -> None:
    import argparse

    args = argparse.Namespace(clients=8, seconds=1.0, rate=4.0, senders=2, messages=30, settle=1.0)
    targets = [compare.securechat_server(tmp_path), compare.classroom_relay(tmp_path)]
    binary = compare.find_ngircd()
    if binary is not None:
        targets.insert(1, compare.ngircd_server(tmp_path, binary))
    rows = [compare.with_target(t, args, lambda: None) for t in targets]
    for row in rows:
        steady, burst = row["steady"], row["burst"]
        assert steady["deliveries"] == steady["expected"] > 0 and steady["out_of_order"] == 0, row
        if row["server"] != "classroom relay (plaintext)":
            assert burst["deliveries"] == burst["expected"] == 2 * 30 * 7 and burst["out_of_order"] == 0, row
    table = compare.table(rows)
    assert table.count("\n") == 1 + len(rows)
    assert ("ngIRCd" in table) == (binary is not None)
