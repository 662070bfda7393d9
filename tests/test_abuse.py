"""`make abuse`: each attack against a real server or client, next to the limit that should stop it.

The suite runs a short form of every attack (a few seconds each); `make abuse` runs the long
one through SECURECHAT_ABUSE=long. Figures are printed (pytest -s) and written to
SECURECHAT_ABUSE_FIGURES (default: abuse-figures.json in the session's temporary directory).
SECURECHAT_ABUSE_SOURCE=DIR attacks another source tree (a baseline). See tests/abuse.py
and docs/abuse.md for what each figure means.
"""

from __future__ import annotations

import os
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from abuse import (
    LONG,
    Figures,
    attack_connection_flood,
    attack_failed_logins,
    attack_half_lines,
    attack_prekey_drain,
    attack_publish_flood,
    attack_queue_flood,
    attack_registration_flood,
    attack_tls,
    format_table,
    revision,
    run_hostile,
    write_figures,
)

Attack = Callable[[Path, dict[str, str], ssl.SSLContext], Figures]


@pytest.fixture(scope="session")
def abuse_figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Figures]]:
    rows: list[Figures] = []
    yield rows
    if not rows:
        return
    default = tmp_path_factory.getbasetemp() / "abuse-figures.json"
    path = Path(os.environ.get("SECURECHAT_ABUSE_FIGURES") or default)
    write_figures(path, rows)
    sys.stdout.write(f"\n\nabuse figures at {revision()} ({path}):\n{format_table(rows)}\n")


@pytest.fixture(scope="session")
def hostile(
    cert_files: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Future[list[Figures]]]:
    """The hostile-server attacks, started in the background by the first test that asks:
    most of their time is spent waiting out a login that never ends, which the server
    attacks can use. `test_hostile_server_cannot_knock_the_client_over` collects them."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="abuse-hostile") as pool:
        yield pool.submit(run_hostile, tmp_path_factory.mktemp("hostile"), cert_files)


def check(figures: Figures, rows: list[Figures], workdir: Path) -> None:
    problems = figures.problems()
    figures.outcome = "BEATEN" if problems else "held"
    rows.append(figures)
    print("\n" + format_table([figures]))
    assert figures.rows, "the attack measured nothing"
    if problems:
        for log in sorted(workdir.rglob("*.log")):
            tail = log.read_text(errors="replace")[-1200:]
            if tail.strip():
                print(f"--- {log.relative_to(workdir)} ---\n{tail}")
    assert not problems, "; ".join(problems)


def run(attack: Attack, tmp_path: Path, cert_files: dict[str, str], ctx: ssl.SSLContext) -> Figures:
    t0 = time.monotonic()
    figures = attack(tmp_path, cert_files, ctx)
    figures.seconds = time.monotonic() - t0
    return figures


SERVER_ATTACKS: list[Attack] = [
    attack_queue_flood,
    attack_connection_flood,
    attack_prekey_drain,
    attack_publish_flood,
    attack_registration_flood,
    attack_failed_logins,
    attack_half_lines,
    attack_tls,
]


@pytest.mark.parametrize("attack", SERVER_ATTACKS, ids=lambda a: a.__name__.removeprefix("attack_"))
@pytest.mark.timeout(900 if LONG else 90)
def test_server_holds_its_limit(
    attack: Attack,
    cert_files: dict[str, str],
    client_ctx: ssl.SSLContext,
    tmp_path: Path,
    abuse_figures: list[Figures],
    hostile: Future[list[Figures]],  # started now, to run beside the server attacks
) -> None:
    figures = run(attack, tmp_path, cert_files, client_ctx)
    if not figures.rows and figures.notes:
        pytest.skip("; ".join(figures.notes))
    check(figures, abuse_figures, tmp_path)


@pytest.mark.timeout(300 if LONG else 90)
def test_hostile_server_cannot_knock_the_client_over(
    hostile: Future[list[Figures]], abuse_figures: list[Figures]
) -> None:
    results = hostile.result(timeout=240 if LONG else 60)
    problems = []
    for figures in results:
        figures.outcome = "BEATEN" if figures.problems() else "held"
        abuse_figures.append(figures)
        problems += [f"[{figures.attack}] {p}" for p in figures.problems()]
    print("\n" + format_table(results))
    assert all(f.rows for f in results), "an attack measured nothing"
    assert not problems, "; ".join(problems)
