"""`make chaos`: the guarantee "nothing acknowledged is lost", tried with real processes.

The suite runs a short version of every scenario; `make chaos` runs the long one through
SECURECHAT_CHAOS=long (or the numbers below one by one). Figures are printed (pytest -s)
and written to SECURECHAT_CHAOS_FIGURES (default: chaos-figures.json in the session's
temporary directory). See tests/chaos.py for what each figure means.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos import (
    CLOCK_JUMPS,
    DAMAGES,
    SOURCE,
    Figures,
    NotSupportedHere,
    dump_logs,
    format_table,
    git_revision,
    scenario_client_kills,
    scenario_clock_jumps,
    scenario_damaged_database,
    scenario_descriptor_limit,
    scenario_device_kills,
    scenario_disk_full,
    scenario_redis_faults,
    scenario_server_kills,
    write_figures,
)
from redis_server import RedisServer

LONG = os.environ.get("SECURECHAT_CHAOS") == "long"


def setting(name: str, short: int, long: int) -> int:
    return int(os.environ.get(f"SECURECHAT_CHAOS_{name}", long if LONG else short))


SERVER_KILLS = setting("SERVER_KILLS", 5, 21)
CLIENT_KILLS = setting("CLIENT_KILLS", 3, 9)
DISK_CYCLES = setting("DISK_CYCLES", 1, 3)
DEVICE_KILLS = setting("DEVICE_KILLS", 5, 10)
CLUSTER_KILLS = setting("CLUSTER_KILLS", 3, 9)
REDIS_FAULTS = setting("REDIS_FAULTS", 2, 6)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def chaos_figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Figures]]:
    rows: list[Figures] = []
    yield rows
    if not rows:
        return
    # The product measured: this work tree, or another source tree (SECURECHAT_CHAOS_SOURCE).
    revision = f"source {SOURCE}" if SOURCE else git_revision(REPO)
    default = tmp_path_factory.getbasetemp() / "chaos-figures.json"
    path = Path(os.environ.get("SECURECHAT_CHAOS_FIGURES") or default)
    write_figures(path, rows, revision)
    sys.stdout.write(f"\n\nchaos figures at {revision} ({path}):\n{format_table(rows)}\n")


def check(figures: Figures, rows: list[Figures], workdir: Path) -> None:
    problems = figures.problems()
    figures.outcome = "FAIL" if problems else "pass"
    rows.append(figures)
    print("\n" + format_table([figures]))
    if problems:
        dump_logs(workdir, sys.stdout)
    assert not problems, "; ".join(problems)


@pytest.mark.timeout(600 if LONG else 150)
def test_server_kill9_loses_no_acknowledged_whisper(
    cert_files: dict[str, str], tmp_path: Path, chaos_figures: list[Figures]
) -> None:
    figures = scenario_server_kills(tmp_path, cert_files, kills=SERVER_KILLS)
    assert figures.kills.get("drain", 0) + figures.kills.get("commit", 0) >= SERVER_KILLS // 2, figures.kills
    assert figures.stored > 0 and figures.shown > 0  # a run that tested nothing is no pass
    check(figures, chaos_figures, tmp_path)


@pytest.mark.timeout(600 if LONG else 120)
def test_recipient_client_kill9_loses_no_acknowledged_whisper(
    cert_files: dict[str, str], tmp_path: Path, chaos_figures: list[Figures]
) -> None:
    figures = scenario_client_kills(tmp_path, cert_files, kills=CLIENT_KILLS)
    aimed = sum(n for kind, n in figures.kills.items() if kind != "client-missed")
    assert aimed >= (CLIENT_KILLS + 1) // 2, figures.kills  # most kills landed where aimed
    assert figures.stored > 0 and figures.shown > 0
    check(figures, chaos_figures, tmp_path)


@pytest.mark.timeout(600 if LONG else 180)
def test_linked_devices_kill9_every_whisper_once_on_every_device(
    cert_files: dict[str, str], tmp_path: Path, chaos_figures: list[Figures]
) -> None:
    figures = scenario_device_kills(tmp_path, cert_files, kills=DEVICE_KILLS)
    assert figures.stored > 0 and figures.copies_owed > 0  # a run that tested nothing is no pass
    assert sum(figures.kills.values()) >= DEVICE_KILLS, figures.kills
    check(figures, chaos_figures, tmp_path)


@pytest.mark.timeout(600 if LONG else 180)
def test_cluster_node_kill9_loses_no_acknowledged_whisper(
    cert_files: dict[str, str],
    tmp_path: Path,
    chaos_figures: list[Figures],
    pg_dsn: str,
    redis_server: RedisServer,
) -> None:
    pytest.importorskip("redis", reason="the cluster extra is not installed (pip install -e '.[cluster]')")
    figures = scenario_server_kills(
        tmp_path, cert_files, kills=CLUSTER_KILLS, cluster=(pg_dsn, redis_server.url)
    )
    assert figures.stored > 0 and figures.shown > 0  # a run that tested nothing is no pass
    check(figures, chaos_figures, tmp_path)


@pytest.mark.timeout(600 if LONG else 180)
def test_cluster_redis_killed_or_frozen_loses_no_acknowledged_whisper(
    cert_files: dict[str, str],
    tmp_path: Path,
    chaos_figures: list[Figures],
    pg_dsn: str,
    redis_server: RedisServer,
) -> None:
    pytest.importorskip("redis", reason="the cluster extra is not installed (pip install -e '.[cluster]')")
    figures = scenario_redis_faults(
        tmp_path, cert_files, faults=REDIS_FAULTS, pg_dsn=pg_dsn, redis=redis_server
    )
    assert figures.stored > 0 and figures.shown > 0  # a run that tested nothing is no pass
    assert sum(figures.kills.values()) >= REDIS_FAULTS, figures.kills
    check(figures, chaos_figures, tmp_path)


def run_fault(scenario: Callable[[], Figures]) -> Figures:
    try:
        return scenario()
    except NotSupportedHere as exc:
        pytest.skip(str(exc))


@pytest.mark.timeout(300 if LONG else 90)
def test_full_disk_refuses_whispers_retryably_and_loses_nothing(
    cert_files: dict[str, str], tmp_path: Path, chaos_figures: list[Figures]
) -> None:
    figures = run_fault(lambda: scenario_disk_full(tmp_path, cert_files, cycles=DISK_CYCLES))
    assert figures.store_unavailable > 0 and figures.stored > 0  # the disk really was full, then not
    check(figures, chaos_figures, tmp_path)


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.timeout(90)
def test_damaged_database_is_refused_never_served_empty(
    how: str, cert_files: dict[str, str], tmp_path: Path, chaos_figures: list[Figures]
) -> None:
    figures = scenario_damaged_database(tmp_path, cert_files, how)
    check(figures, chaos_figures, tmp_path)


@pytest.mark.timeout(180)
def test_descriptor_limit_keeps_whispers_flowing(
    cert_files: dict[str, str], tmp_path: Path, chaos_figures: list[Figures]
) -> None:
    figures = run_fault(lambda: scenario_descriptor_limit(tmp_path, cert_files))
    check(figures, chaos_figures, tmp_path)


@pytest.mark.timeout(300 if LONG else 150)
def test_clock_jumps_lose_no_acknowledged_whisper(
    cert_files: dict[str, str], tmp_path: Path, chaos_figures: list[Figures]
) -> None:
    jumps = (
        CLOCK_JUMPS
        if LONG
        else (("server", "+31d"), ("server", "-31d"), ("clients", "+31d"), ("clients", "-31d"))
    )
    figures = run_fault(
        lambda: scenario_clock_jumps(tmp_path, cert_files, jumps=jumps, queue=10 if LONG else 6)
    )
    assert figures.stored > 0 and figures.shown > 0
    check(figures, chaos_figures, tmp_path)
