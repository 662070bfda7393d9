"""securechat side by side with ngIRCd (a C IRC server, over TLS) and a classroom relay.

Measures every target of issue 14, each scenario on a fresh server, servers interleaved
(the order rotates from one scenario and repetition to the next), --repeat times (3):

- steady, against all three: every traffic pattern asked for (by default spread, at
  random moments, and simultaneous, every client at the same moment), with the
  generator's two write modes (a client's queued lines together, and one line per write
  as an independent generator writes);
- burst, against all three, both write modes, the clients split over --burst-procs
  generator processes (3) so that the generator is not the limit, which the table shows
  (the busiest process's CPU over the run's length);
- logins (5,000 one after another, all staying; time per login per tenth of the room's
  growth; idle memory and threads per session at the end) and connect (new TLS sessions/s),
  against securechat and ngIRCd;
- relay (whispers between 50 pairs: opaque, the server's cost, and real clients encrypting
  end to end) and rooms (2,000 clients in 100 rooms against the same clients in one room, at
  the same total line rate), against securechat.

Every figure is the median of the repetitions [min-max], with the machine's load before and
after each run, the server's CPU per unit of work (from /proc) and the generator's share
with a flag where it was the limit. The first table gives each target of issue 14, the
figure measured and whether it was met or missed, by how much. It writes the tables, the
exact command, the machine and a plot into docs/performance.md (between its "compare"
markers), docs/performance.png and benchmarks/results.json. Then, unless --no-profile, it
profiles securechat in each scenario (py-spy when installed, sampling without stopping
the server; `make bench` installs it) into benchmarks/profiles/, with a one-line summary
each in benchmarks/profiles/SUMMARY.md. `make bench` runs it; it prints its estimated
duration at the start (about 34 minutes on a quiet 2-core machine; --quick about 3).

    python benchmarks/compare.py [--repeat 3] [--seconds 15] [--ports 9400-9499] [--kinds ...] [--quick]

The servers listen on ports 9400-9499 by default (--ports), away from the ephemeral ports
the test suite's servers use. --quick: one repetition, 5 s steady, only the project's write
mode, 1,000 logins, 300 connects, 500 clients in 25 rooms, no profiles.

ngIRCd comes from the Debian package `ngircd` (apt-get install ngircd); without it the
comparison says so and measures the others. The plot needs matplotlib (the `bench`
extra: pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from securechat.bench import relay as relay_scenario
from securechat.bench import relay_real, scenarios
from securechat.bench import rooms as rooms_scenario
from securechat.bench.dialects import Dialect, Irc, Plain, SecureChat
from securechat.bench.ports import free_port, parse_port_range
from securechat.bench.procfs import loadavg
from securechat.bench.progress import ProgressBar
from securechat.bench.server import BenchServer, scenario_args
from securechat.certs import make_certs
from securechat.cli.common import raise_open_files_limit
from securechat.transport import client_context

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "performance.png"
RESULTS = ROOT / "benchmarks" / "results.json"
PROFILES = ROOT / "benchmarks" / "profiles"
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
#: The logins scenario's clients when profiled (see `profile_scenarios`).
PROFILE_LOGINS = 1000
#: "Flat as the room grows": the last tenth's time per login at most this many times the first's.
FLAT = 1.25
SECURECHAT, NGIRCD, RELAY = "securechat", "ngIRCd", "classroom relay (plaintext)"


@dataclasses.dataclass
class Target:
    name: str
    dialect: Dialect
    context: ssl.SSLContext | None
    port: int
    pid: int
    version: str


#: Which servers each kind of scenario runs against: steady and burst against all three;
#: logins and connect need a login and a room (the classroom relay has neither); relay
#: (whispers) and rooms (many rooms at once) are securechat's alone (the irc dialect of the
#: generator joins one channel only).
KINDS: dict[str, tuple[str, ...]] = {
    "steady": (SECURECHAT, NGIRCD, RELAY),
    "burst": (SECURECHAT, NGIRCD, RELAY),
    "logins": (SECURECHAT, NGIRCD),
    "connect": (SECURECHAT, NGIRCD),
    "relay": (SECURECHAT,),
    "rooms": (SECURECHAT,),
}
#: The scenarios measured in deliveries (the first table); the others give figures of their own.
DELIVERY_KINDS = ("steady", "burst")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One measured scenario: `kind` (a key of KINDS), steady's pattern, the generator's write
    mode (steady, burst), burst's generator processes, and a `variant`: relay's clients
    (opaque or real), rooms' room count."""

    kind: str
    pattern: str | None = None
    one_line_per_write: bool = False
    procs: int = 1
    variant: str | None = None

    @property
    def name(self) -> str:
        parts = [self.kind, *([self.pattern] if self.pattern else [])]
        if self.variant:
            parts.append(self.variant)
        if self.one_line_per_write:
            parts.append("1 line/write")
        if self.procs > 1:
            parts.append(f"({self.procs} procs)")
        return " ".join(parts)

    @property
    def servers(self) -> tuple[str, ...]:
        return KINDS[self.kind]

    @property
    def slug(self) -> str:
        """The name as a file name (its profile's)."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def scenario_list(
    patterns: Sequence[str],
    write_modes: Sequence[bool],
    burst_procs: int = 1,
    kinds: Sequence[str] = DELIVERY_KINDS,
    rooms: int = 100,
) -> list[Scenario]:
    """The scenarios of a comparison, of the `kinds` asked for, in the order they run."""
    out: list[Scenario] = []
    if "steady" in kinds:
        out += [Scenario("steady", p, w) for w in write_modes for p in patterns]
    if "burst" in kinds:
        out += [Scenario("burst", None, w, burst_procs) for w in write_modes]
    if "logins" in kinds:
        out.append(Scenario("logins"))
    if "connect" in kinds:
        out.append(Scenario("connect"))
    if "relay" in kinds:
        out += [Scenario("relay", variant="opaque"), Scenario("relay", variant="real")]
    if "rooms" in kinds:
        out += [Scenario("rooms", variant=f"{rooms} rooms"), Scenario("rooms", variant="1 room")]
    return out


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    """Until something accepts on 127.0.0.1:`port`; RuntimeError if `proc` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port another process opens: no event to wait on
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


@contextmanager
def securechat_server(work: Path, ports: range | None = None, extra: Sequence[str] = ()) -> Iterator[Target]:
    """A fresh securechat server; `extra`: more `securechat server` flags (a scenario's)."""
    server = BenchServer(work / "securechat", extra, ports=ports)
    try:
        from securechat import __version__

        yield Target(
            SECURECHAT, SecureChat(), client_context(server.cafile), server.port, server.pid, __version__
        )
    finally:
        server.stop()


def find_ngircd() -> str | None:
    return shutil.which("ngircd") or shutil.which("ngircd", path="/usr/sbin:/usr/local/sbin")


@contextmanager
def ngircd_server(
    work: Path, binary: str, ports: range | None = None, extra: Sequence[str] = ()
) -> Iterator[Target]:
    """ngIRCd on 127.0.0.1 with TLS only, flood penalties off, one IP allowed many clients."""
    home = work / "ngircd"
    paths, _ = make_certs(home / "certs", ["localhost", "127.0.0.1"])
    (home / "conf.d").mkdir()
    port = free_port(ports)
    conf = home / "ngircd.conf"
    conf.write_text(
        f"""[Global]
Name = bench.local
Info = securechat benchmark
AdminInfo1 = benchmark
AdminInfo2 = benchmark
AdminEMail = bench@localhost
Listen = 127.0.0.1
Ports =
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 30
MaxPenaltyTime = 0
PingTimeout = 600
PongTimeout = 600
[Options]
DNS = no
Ident = no
PAM = no
IncludeDir = {home / "conf.d"}
[SSL]
CertFile = {paths.cert}
KeyFile = {paths.key}
Ports = {port}
"""
    )
    version = subprocess.run(  # noqa: S603 -- the ngircd found on PATH, fixed arguments
        [binary, "--version"], capture_output=True, text=True, check=False
    ).stdout.split("\n")[0]
    proc = subprocess.Popen(  # noqa: S603 -- as above
        [binary, "--nodaemon", "--config", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, proc, "ngircd")
        number = version.split("-")[0].removeprefix("ngIRCd").strip()  # "ngIRCd 26.1-IDENT+..."
        yield Target(NGIRCD, Irc(), client_context(paths.ca), port, proc.pid, number)
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def classroom_relay(work: Path, ports: range | None = None, extra: Sequence[str] = ()) -> Iterator[Target]:
    port = free_port(ports)
    relay = Path(__file__).with_name("classroom_relay.py")
    proc = subprocess.Popen([sys.executable, str(relay), str(port)], stdout=subprocess.DEVNULL)  # noqa: S603
    try:
        wait_listening(port, proc, "the classroom relay")
        yield Target(RELAY, Plain(), None, port, proc.pid, "benchmarks/classroom_relay.py")
    finally:
        proc.kill()
        proc.wait(10)


#: A server to start: given a fresh work directory, the port range and the scenario's extra
#: `securechat server` flags (which other servers ignore), a running target.
Starter = Callable[[Path, "range | None", Sequence[str]], AbstractContextManager[Target]]


def starters() -> tuple[dict[str, Starter], list[str]]:
    """The servers this machine can run, in table order, and notes on those it cannot."""
    found: dict[str, Starter] = {SECURECHAT: securechat_server}
    notes: list[str] = []
    binary = find_ngircd()
    if binary is None:
        notes.append("ngIRCd was not measured: `ngircd` is not installed (apt-get install ngircd).")
    else:
        found[NGIRCD] = lambda work, ports, extra: ngircd_server(work, binary, ports, extra)
    found[RELAY] = classroom_relay
    return found, notes


def run_scenario(
    target: Target, scenario: Scenario, args: argparse.Namespace, bar: ProgressBar | None
) -> dict[str, Any]:
    """One run of `scenario` against `target`: the scenario's result as a dict; for kinds
    other than steady and burst, with its headline `figures` (see `figures_of`)."""
    host, port, ctx, pid = "127.0.0.1", target.port, target.context, target.pid
    common: dict[str, Any] = {
        "dialect": target.dialect,
        "server_pid": pid,
        "settle": args.settle,
        "one_line_per_write": scenario.one_line_per_write,
        "progress": bar,
    }
    result: Any
    if scenario.kind == "steady":
        assert scenario.pattern is not None
        result = scenarios.steady(
            host,
            port,
            ctx,
            clients=args.clients,
            rate=args.rate,
            seconds=args.seconds,
            pattern=scenario.pattern,
            **common,
        )
    elif scenario.kind == "burst":
        result = scenarios.burst(
            host,
            port,
            ctx,
            clients=args.clients,
            senders=args.senders,
            messages=args.messages,
            procs=scenario.procs,
            **{**common, "progress": bar if scenario.procs == 1 else None},
        )
    elif scenario.kind == "logins":
        result = scenarios.logins(
            host, port, ctx, clients=args.logins, dialect=target.dialect, server_pid=pid, progress=bar
        )
    elif scenario.kind == "connect":
        result = scenarios.connect_storm(
            host, port, ctx, sessions=args.sessions, dialect=target.dialect, server_pid=pid
        )
    elif scenario.kind == "relay" and scenario.variant == "real":
        assert ctx is not None
        result = relay_real.relay_real(
            host, port, ctx, pairs=args.pairs, whispers=args.real_whispers, server_pid=pid, progress=bar
        )
    elif scenario.kind == "relay":
        result = relay_scenario.relay(
            host, port, ctx, pairs=args.pairs, whispers=args.whispers, server_pid=pid, progress=bar
        )
    else:
        result = rooms_scenario.many_rooms(
            host,
            port,
            ctx,
            clients=args.rooms_clients,
            rooms=room_count(scenario),
            rate=args.rooms_rate,
            seconds=args.rooms_seconds,
            server_pid=pid,
            settle=args.settle,
            progress=bar,
        )
    data: dict[str, Any] = dataclasses.asdict(result)
    if scenario.kind not in DELIVERY_KINDS:
        data["figures"] = figures_of(scenario.kind, data)
    return data


def room_count(scenario: Scenario) -> int:
    """A rooms scenario's number of rooms, from its variant ("100 rooms", "1 room"); 0 for
    other kinds."""
    return int((scenario.variant or "1").split()[0]) if scenario.kind == "rooms" else 0


#: Per kind: (key in `figures`, how the table names it, its format, the unit after it).
FIGURES: dict[str, list[tuple[str, str, str, str]]] = {
    "logins": [
        ("per_second", "logins/s", ",.0f", "/s"),
        ("cpu_us_per_login", "server CPU per login", ",.0f", " us"),
        ("wall_ms_first", "wall per login, first tenth of the room", ".2f", " ms"),
        ("wall_ms_last", "wall per login, last tenth", ".2f", " ms"),
        ("wall_growth", "wall per login, last tenth / first", ".2f", "x"),
        ("cpu_us_first", "server CPU per login, first tenth", ",.0f", " us"),
        ("cpu_us_last", "server CPU per login, last tenth", ",.0f", " us"),
        ("cpu_growth", "server CPU per login, last tenth / first", ".2f", "x"),
        ("rss_kib_per_session", "idle: resident memory per session", ".1f", " KiB"),
        ("threads_per_session", "idle: threads per session", ".2f", ""),
    ],
    "connect": [
        ("per_second", "new TLS sessions/s", ",.0f", "/s"),
        ("cpu_us_per_session", "server CPU per session (handshake, login, close)", ",.0f", " us"),
    ],
    "relay": [
        ("whispers_per_s", "whispers/s", ",.0f", "/s"),
        ("server_cpu_us_per_whisper", "server CPU per whisper", ",.0f", " us"),
        ("p99_ms", "p99 sent -> delivered", ",.1f", " ms"),
    ],
    "rooms": [
        ("cpu_us_per_delivery", "server CPU per delivery", ".2f", " us"),
        ("per_second", "deliveries/s", ",.0f", "/s"),
        ("p99_ms", "p99", ",.1f", " ms"),
        ("join_cpu_us_per_join", "server CPU per join", ",.0f", " us"),
    ],
}


def figures_of(kind: str, r: dict[str, Any]) -> dict[str, Any]:
    """A non-delivery run's headline figures (the keys of FIGURES[kind]) and, for every
    kind, the generator's `busy` share, `limited` flag and whether the run was `complete`."""
    f: dict[str, Any]
    if kind == "logins":
        first, last = r["deciles"][0], r["deciles"][-1]
        f = {
            "per_second": r["per_second"],
            "cpu_us_per_login": r["cpu_us_per_login"],
            "wall_ms_first": first["wall_ms_per_login"],
            "wall_ms_last": last["wall_ms_per_login"],
            "wall_growth": r["wall_growth"],
            "cpu_us_first": first["cpu_us_per_login"],
            "cpu_us_last": last["cpu_us_per_login"],
            "cpu_growth": r["cpu_growth"],
            "rss_kib_per_session": r["rss_kib_per_session"],
            "threads_per_session": r["threads_per_session"],
            "busy": r["generator"]["busy"],
            "limited": r["generator"]["limited"],
            "complete": True,
        }
    elif kind == "connect":
        gen = r["generator"] or {"busy": 0.0, "limited": False}
        f = {
            "per_second": r["per_second"],
            "cpu_us_per_session": r["cpu_us_per_session"],
            "busy": gen["busy"],
            "limited": gen["limited"],
            "complete": True,
        }
    elif kind == "relay":
        latency = r["delivered_latency"]
        # Opaque: one process, its CPU over the run; real: the busier of its two processes.
        busy = r.get("generator_busy", r["generator_cpu_s"] / max(1e-9, r["seconds"]))
        f = {
            "whispers_per_s": r["whispers_per_s"],
            "server_cpu_us_per_whisper": r["server_cpu_us_per_whisper"],
            "p99_ms": latency["p99"] * 1e3,
            "busy": busy,
            "limited": busy >= scenarios.GENERATOR_LIMIT,
            "complete": r["delivered"] == r["whispers"] and not r.get("refused"),
        }
    else:  # rooms
        f = {
            "cpu_us_per_delivery": r["cpu_us_per_delivery"],
            "per_second": r["per_second"],
            "p99_ms": r["latency"]["p99"] * 1e3,
            "join_cpu_us_per_join": r["join_cpu_us_per_join"],
            "busy": r["generator_cpu_share"],
            "limited": r["generator_cpu_share"] >= scenarios.GENERATOR_LIMIT,
            "complete": r["missing"] == 0 and not r["wrong_room"] and not r["duplicates"],
        }
    return f


def run_once(
    start: Starter,
    work: Path,
    scenario: Scenario,
    args: argparse.Namespace,
    progress: Callable[[], ProgressBar | None],
) -> dict[str, Any]:
    """A fresh server, one run of `scenario`, the machine's load before and after."""
    extra = scenario_args(scenario.kind, rooms=room_count(scenario), pairs=args.pairs)
    with start(work, args.ports, extra) as target:
        before = loadavg()
        bar = progress()
        try:
            result = run_scenario(target, scenario, args, bar)
        finally:
            if bar is not None:
                bar.finish()
        return {
            "server": target.name,
            "version": target.version,
            "scenario": scenario.name,
            "kind": scenario.kind,
            "load_before": before,
            "load_after": loadavg(),
            "result": result,
        }


def run_all(
    servers: dict[str, Starter],
    scenario_set: Sequence[Scenario],
    args: argparse.Namespace,
    work: Path,
    progress: Callable[[], ProgressBar | None],
) -> list[dict[str, Any]]:
    """Every scenario against every server it runs on, `args.repeat` times, servers interleaved.

    Each repetition runs each scenario on its servers back to back, in an order rotated
    from one scenario and repetition to the next, so that a busy spell of the shared
    machine does not fall on one server's runs only; a scenario of one server alternates
    with its neighbours (relay opaque and real, rooms many and one).
    """
    runs: list[dict[str, Any]] = []
    turn = 0
    for rep in range(args.repeat):
        for scenario in scenario_set:
            names = [n for n in servers if n in scenario.servers]
            if not names:
                continue
            order = names[turn % len(names) :] + names[: turn % len(names)]
            turn += 1
            for name in order:
                run = run_once(servers[name], work / f"run{len(runs)}", scenario, args, progress)
                run["repetition"] = rep + 1
                runs.append(run)
                print(f"   [{rep + 1}/{args.repeat}] {scenario.name:<28} {describe(run)}", flush=True)
    return runs


def describe(run: dict[str, Any]) -> str:
    r = run["result"]
    load = f", load {fmt_load(run['load_before'])} -> {fmt_load(run['load_after'])}"
    if "figures" in r:
        f = r["figures"]
        shown = ", ".join(
            f"{label} {'n/a' if f[key] is None else format(f[key], fmt) + unit}"
            for key, label, fmt, unit in FIGURES[run["kind"]][:3]
        )
        return (
            f"{run['server']}: {shown}, generator CPU {f['busy']:.0%} of the run"
            + (" (the limit)" if f["limited"] else "")
            + ("" if f["complete"] else " INCOMPLETE")
            + load
        )
    lat = r["latency"]
    rate = f"{r['per_second']:,.0f} deliveries/s, " if "per_second" in r else ""
    procs = r["generator"].get("processes", 1)
    return (
        f"{run['server']}: {r['deliveries']:,}/{r['expected']:,} delivered, {r['out_of_order']} out "
        f"of order, {rate}p99 {lat['p99'] * 1e3:.1f} ms, server CPU {fmt_us(r['cpu_us_per_delivery'])} "
        f"per delivery, generator CPU {r['generator']['busy']:.0%} of the run"
        + (f" (busiest of {procs} processes)" if procs > 1 else "")
        + (" (the limit)" if r["generator"]["limited"] else "")
        + load
    )


def fmt_us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} us"


def fmt_load(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


@dataclasses.dataclass(frozen=True)
class Spread:
    """The median and range of one figure over the repetitions."""

    median: float
    low: float
    high: float

    @staticmethod
    def of(values: Sequence[float]) -> Spread | None:
        return Spread(statistics.median(values), min(values), max(values)) if values else None

    def show(self, fmt: str, scale: float = 1.0) -> str:
        mid, lo, hi = (format(v * scale, fmt) for v in (self.median, self.low, self.high))
        return mid if lo == hi else f"{mid} [{lo}-{hi}]"


def _groups(runs: Sequence[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """The runs per (scenario, server): scenarios in the order run, servers in table order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for run in runs:
        groups[(run["scenario"], run["server"])].append(run)
    scenario_order = list(dict.fromkeys(run["scenario"] for run in runs))
    server_order = [SECURECHAT, NGIRCD, RELAY]
    return [
        (scenario, server, group)
        for (scenario, server), group in sorted(
            groups.items(), key=lambda kv: (scenario_order.index(kv[0][0]), server_order.index(kv[0][1]))
        )
    ]


def summarize_figures(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (scenario, server) of the runs with `figures` (logins, connect, relay, rooms):
    each figure's median and range, the generator's share, how many runs it limited, how
    many were complete, and the load before and after the runs."""
    rows = []
    for scenario, server, group in _groups([r for r in runs if "figures" in r["result"]]):
        figs = [g["result"]["figures"] for g in group]
        keys = [key for key, *_ in FIGURES[group[0]["kind"]]]
        loads = [v for g in group for v in (g["load_before"], g["load_after"]) if v is not None]
        rows.append(
            {
                "scenario": scenario,
                "server": server,
                "kind": group[0]["kind"],
                "clients": group[0]["result"].get("clients"),
                "runs": len(group),
                "figures": {k: Spread.of([f[k] for f in figs if f.get(k) is not None]) for k in keys},
                "busy": Spread.of([f["busy"] for f in figs]),
                "limited": sum(bool(f["limited"]) for f in figs),
                "complete": sum(bool(f["complete"]) for f in figs),
                "load": Spread.of(loads),
            }
        )
    return rows


def figure_table(rows: Sequence[dict[str, Any]]) -> str:
    """A line per figure of each (scenario, server) row; ratios to ngIRCd's where it ran."""
    out = [
        "| scenario | server | figure | median [min-max] | vs ngIRCd | generator CPU (share of the run) "
        "| complete runs | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for n, (key, label, fmt, unit) in enumerate(FIGURES[row["kind"]]):
            value = row["figures"][key]
            other = next(
                (r for r in rows if r["scenario"] == row["scenario"] and r["server"] == NGIRCD), None
            )
            ratio = ""
            if other is not None and other is not row and value is not None:
                base = other["figures"][key]
                if base is not None and base.median > 0:
                    ratio = f"{value.median / base.median:.2f}x"
            busy = row["busy"]
            gen = "" if busy is None else busy.show(".0%")
            if row["limited"]:
                gen += f", the limit in {row['limited']} of {row['runs']}"
            first = n == 0
            complete = f"{row['complete']} of {row['runs']}"
            out.append(
                f"| {row['scenario'] if first else ''} | {row['server'] if first else ''} | {label} "
                f"| {'n/a' if value is None else value.show(fmt) + unit} | {ratio} "
                f"| {gen if first else ''} | {complete if first else ''} "
                f"| {('?' if row['load'] is None else row['load'].show('.2f')) if first else ''} |"
            )
    return "\n".join(out)


def decile_table(runs: Sequence[dict[str, Any]]) -> str:
    """The logins runs' time per login by tenth of the room's growth: per server, the median
    over the repetitions of wall time and server CPU per login ("" without logins runs)."""
    by_server: dict[str, list[list[dict[str, Any]]]] = collections.defaultdict(list)
    for run in runs:
        if run.get("kind") == "logins":
            by_server[run["server"]].append(run["result"]["deciles"])
    if not by_server:
        return ""
    servers = [s for s in (SECURECHAT, NGIRCD) if s in by_server]
    head = "| members already in the room | " + " | ".join(
        f"{s}: wall per login | {s}: server CPU per login" for s in servers
    )
    out = [head + " |", "|---" * (1 + 2 * len(servers)) + "|"]
    tenths = min(len(d) for s in servers for d in by_server[s])
    for i in range(tenths):
        first = by_server[servers[0]][0][i]
        cells = [f"{first['members']:,}-{first['members'] + first['logins'] - 1:,}"]
        for s in servers:
            wall = Spread.of([d[i]["wall_ms_per_login"] for d in by_server[s]])
            cpus = [d[i]["cpu_us_per_login"] for d in by_server[s]]
            cpu = Spread.of([c for c in cpus if c is not None])
            cells.append("" if wall is None else wall.show(".2f") + " ms")
            cells.append("n/a" if cpu is None else cpu.show(",.0f") + " us")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def verdict(value: float | None, limit: float, at_most: bool) -> str:
    """`value` against a target of at most (or at least) `limit`: "met (N% to spare)" or
    "missed by N%" (how far `value` is past the limit, relative to the limit)."""
    if value is None:
        return "not measured"
    if at_most:
        ok, off = value <= limit, (value - limit) / limit
    else:
        ok, off = value >= limit, (limit - value) / limit
    return f"met ({max(0.0, -off):.0%} to spare)" if ok else f"missed by {off:.0%}"


def targets(rows: Sequence[dict[str, Any]], frows: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Issue 14's targets: (target, what was measured, met or missed and by how much), from
    the delivery rows (`summarize`) and the figure rows (`summarize_figures`) of one run."""

    def row(scenario: str, server: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["scenario"] == scenario and r["server"] == server), None)

    def frow(scenario: str, server: str) -> dict[str, Any] | None:
        return next((r for r in frows if r["scenario"] == scenario and r["server"] == server), None)

    def fig(r: dict[str, Any] | None, key: str) -> Spread | None:
        return None if r is None else r["figures"].get(key)

    out: list[tuple[str, str, str]] = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        ours, theirs = row(scenario, SECURECHAT), row(scenario, NGIRCD)
        if ours is None or theirs is None:
            continue
        cpu, base = ours["cpu_us_per_delivery"], theirs["cpu_us_per_delivery"]
        if cpu is not None and base is not None and base.median > 0:
            ratio = cpu.median / base.median
            out.append(
                (
                    f"{scenario}: server CPU per delivery <= 1.2x ngIRCd's",
                    f"{cpu.show('.2f')} us against {base.show('.2f')} us: {ratio:.2f}x",
                    verdict(ratio, 1.2, at_most=True),
                )
            )
        if scenario.startswith("steady"):
            p99, their_p99 = ours["p99"].median * 1e3, theirs["p99"].median * 1e3
            out.append(
                (
                    f"{scenario}: p99 no worse than ngIRCd's",
                    f"{p99:.1f} ms against {their_p99:.1f} ms",
                    verdict(p99, their_p99, at_most=True),
                )
            )
        else:
            complete = ours["deliveries"] == ours["expected"] and not ours["out_of_order"]
            out.append(
                (
                    f"{scenario}: every line delivered, in order",
                    f"{ours['deliveries']:,} of {ours['expected']:,}, {ours['out_of_order']} out of order",
                    "met" if complete else "missed",
                )
            )
            rate, their_rate = ours["per_second"], theirs["per_second"]
            if rate is not None and their_rate is not None:
                free = not ours["generator_limited"] and not theirs["generator_limited"]
                out.append(
                    (
                        f"{scenario}: deliveries/s at least ngIRCd's, generator not the limit",
                        f"{rate.show(',.0f')} against {their_rate.show(',.0f')}; generator's busiest "
                        f"process {ours['generator_busy'].show('.0%')} of the run (ngIRCd's runs: "
                        f"{theirs['generator_busy'].show('.0%')})",
                        verdict(rate.median, their_rate.median, at_most=False)
                        + ("" if free else "; the generator WAS the limit in some runs"),
                    )
                )
    ours_l, theirs_l = frow("logins", SECURECHAT), frow("logins", NGIRCD)
    rate, their_rate = fig(ours_l, "per_second"), fig(theirs_l, "per_second")
    if rate is not None and their_rate is not None:
        out.append(
            (
                "logins one after another: >= 75% of ngIRCd's rate",
                f"{rate.show(',.0f')}/s against {their_rate.show(',.0f')}/s: "
                f"{rate.median / their_rate.median:.0%}",
                verdict(rate.median / their_rate.median, 0.75, at_most=False),
            )
        )
    for key, what in (("wall_growth", "wall time"), ("cpu_growth", "server CPU")):
        ours_g, theirs_g = fig(ours_l, key), fig(theirs_l, key)
        if ours_g is not None:
            out.append(
                (
                    f"logins: {what} per login flat as the room grows (last tenth <= {FLAT}x the first)",
                    f"{ours_g.show('.2f')}x"
                    + ("" if theirs_g is None else f" (ngIRCd: {theirs_g.show('.2f')}x)"),
                    verdict(ours_g.median, FLAT, at_most=True),
                )
            )
    connect = fig(frow("connect", SECURECHAT), "per_second")
    if connect is not None:
        their = fig(frow("connect", NGIRCD), "per_second")
        cpu = fig(frow("connect", SECURECHAT), "cpu_us_per_session")
        out.append(
            (
                "connect: >= 1,000 new TLS sessions/s",
                f"{connect.show(',.0f')}/s, {'n/a' if cpu is None else cpu.show(',.0f')} us of server CPU "
                "each" + ("" if their is None else f" (ngIRCd: {their.show(',.0f')}/s)"),
                verdict(connect.median, 1000, at_most=False),
            )
        )
    rss = fig(ours_l, "rss_kib_per_session")
    if rss is not None and ours_l is not None:
        threads = fig(ours_l, "threads_per_session")
        their_rss = fig(theirs_l, "rss_kib_per_session")
        out.append(
            (
                f"idle: <= 40 KiB resident per session at {ours_l['clients']:,} sessions (after the logins)",
                f"{rss.show('.1f')} KiB, {'?' if threads is None else threads.show('.2f')} threads each"
                + ("" if their_rss is None else f" (ngIRCd: {their_rss.show('.1f')} KiB)"),
                verdict(rss.median, 40, at_most=True),
            )
        )
    opaque, real = frow("relay opaque", SECURECHAT), frow("relay real", SECURECHAT)
    rate = fig(opaque, "whispers_per_s")
    if rate is not None:
        cpu = fig(opaque, "server_cpu_us_per_whisper")
        real_rate = fig(real, "whispers_per_s")
        out.append(
            (
                "whispers stored and relayed: >= 5,000/s between 50 pairs",
                f"{rate.show(',.0f')}/s, {'n/a' if cpu is None else cpu.show(',.0f')} us of server CPU each; "
                + (
                    "real clients end to end: n/a"
                    if real_rate is None
                    else f"real clients end to end: {real_rate.show(',.0f')}/s"
                ),
                verdict(rate.median, 5000, at_most=False),
            )
        )
    many = next((r for r in frows if r["kind"] == "rooms" and not r["scenario"].endswith("1 room")), None)
    one = frow("rooms 1 room", SECURECHAT)
    many_cpu, one_cpu = fig(many, "cpu_us_per_delivery"), fig(one, "cpu_us_per_delivery")
    if many is not None and many_cpu is not None and one_cpu is not None and one_cpu.median > 0:
        ratio = many_cpu.median / one_cpu.median
        out.append(
            (
                f"{many['scenario']}: server CPU per delivery within 10% of one room's (same clients, "
                "same total line rate)",
                f"{many_cpu.show('.2f')} us against {one_cpu.show('.2f')} us: {ratio:.2f}x",
                verdict(ratio, 1.10, at_most=True),
            )
        )
    return out


def targets_table(lines: Sequence[tuple[str, str, str]]) -> str:
    out = ["| target (issue 14) | measured, median [min-max] | |", "|---|---|---|"]
    out += [f"| {t} | {m} | {v} |" for t, m, v in lines]
    return "\n".join(out)


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (scenario, server) of the delivery runs (steady, burst), scenarios in the order
    run, servers as in the table (securechat, ngIRCd, the relay): medians and ranges over
    the repetitions."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for run in runs:
        if "figures" not in run["result"]:
            groups[(run["scenario"], run["server"])].append(run)
    rows = []
    scenario_order = list(dict.fromkeys(run["scenario"] for run in runs if "figures" not in run["result"]))
    server_order = [SECURECHAT, NGIRCD, RELAY]
    for (scenario, server), group in sorted(
        groups.items(), key=lambda kv: (scenario_order.index(kv[0][0]), server_order.index(kv[0][1]))
    ):
        results = [g["result"] for g in group]
        loads = [v for g in group for v in (g["load_before"], g["load_after"]) if v is not None]
        cpu = [r["cpu_us_per_delivery"] for r in results if r["cpu_us_per_delivery"] is not None]
        rows.append(
            {
                "scenario": scenario,
                "server": server,
                "runs": len(group),
                "deliveries": sum(r["deliveries"] for r in results),
                "expected": sum(r["expected"] for r in results),
                "out_of_order": sum(r["out_of_order"] for r in results),
                "cpu_us_per_delivery": Spread.of(cpu),
                "p50": Spread.of([r["latency"]["p50"] for r in results]),
                "p99": Spread.of([r["latency"]["p99"] for r in results]),
                "per_second": Spread.of([r["per_second"] for r in results if "per_second" in r]),
                "generator_busy": Spread.of([r["generator"]["busy"] for r in results]),
                "generator_limited": sum(r["generator"]["limited"] for r in results),
                "load": Spread.of(loads),
            }
        )
    return rows


def ratio_to(rows: Sequence[dict[str, Any]], row: dict[str, Any], server: str) -> str:
    """`row`'s median server CPU per delivery over `server`'s in the same scenario."""
    other = next((r for r in rows if r["scenario"] == row["scenario"] and r["server"] == server), None)
    if other is None or row["cpu_us_per_delivery"] is None or other["cpu_us_per_delivery"] is None:
        return ""
    base = other["cpu_us_per_delivery"].median
    return f"{row['cpu_us_per_delivery'].median / base:.2f}x" if base > 0 else ""


def table(rows: Sequence[dict[str, Any]]) -> str:
    out = [
        "| scenario | server | delivered | server CPU per delivery | vs ngIRCd | p50 | p99 "
        "| deliveries/s | generator CPU (share of the run) | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cpu, rate, busy = row["cpu_us_per_delivery"], row["per_second"], row["generator_busy"]
        limited = row["generator_limited"]
        out.append(
            f"| {row['scenario']} | {row['server']} "
            f"| {row['deliveries']:,} of {row['expected']:,}, {row['out_of_order']} out of order "
            f"| {'n/a' if cpu is None else cpu.show('.2f') + ' us'} "
            f"| {ratio_to(rows, row, NGIRCD)} "
            f"| {row['p50'].show('.1f', 1e3)} ms | {row['p99'].show('.1f', 1e3)} ms "
            f"| {'' if rate is None else rate.show(',.0f')} "
            f"| {busy.show('.0%')}" + (f", the limit in {limited} of {row['runs']}" if limited else "") + " "
            f"| {'?' if row['load'] is None else row['load'].show('.2f')} |"
        )
    return "\n".join(out)


def machine() -> dict[str, str]:
    model = "unknown CPU"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if match:
            model = match.group(1).strip()
    except OSError:
        pass
    mem = ""
    try:
        kib = int(re.findall(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[0])
        mem = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, IndexError):
        pass
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
    }


def plot(rows: Sequence[dict[str, Any]], path: Path) -> str:
    """Server CPU per delivery per scenario, a bar per server (medians, range as error bars)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install -e '.[bench]')"
    scenario_names = list(dict.fromkeys(r["scenario"] for r in rows))
    servers = list(dict.fromkeys(r["server"] for r in rows))
    fig, ax = plt.subplots(figsize=(13, 4.5))
    width = 0.8 / len(servers)
    colours = ["#3b7dd8", "#999999", "#d89b3b"]
    for k, server in enumerate(servers):
        xs: list[float] = []
        mids: list[float] = []
        errs: list[list[float]] = [[], []]
        for i, name in enumerate(scenario_names):
            row = next((r for r in rows if r["scenario"] == name and r["server"] == server), None)
            if row is None or row["cpu_us_per_delivery"] is None:
                continue
            s = row["cpu_us_per_delivery"]
            xs.append(i + k * width)
            mids.append(s.median)
            errs[0].append(s.median - s.low)
            errs[1].append(s.high - s.median)
        ax.bar(xs, mids, width, yerr=errs, label=server, color=colours[k % len(colours)], capsize=2)
    ax.set_xticks([i + width * (len(servers) - 1) / 2 for i in range(len(scenario_names))])
    ax.set_xticklabels(scenario_names, fontsize=8)
    ax.set_ylabel("server CPU per delivery (us)")
    ax.set_title("median of the repetitions, range as error bars", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"![side by side]({path.name})"


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{section}\n{END}{tail}")


def find_py_spy() -> str | None:
    """py-spy beside this interpreter (the venv `make bench` installs it in), or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile_summary(collapsed: str, top: int = 6) -> str:
    """The functions most samples were in (their own code, not their callees'), as shares.

    `collapsed` is py-spy's raw output: a line per distinct stack, `frame;frame;... COUNT`,
    each frame `function (file:line)`; the line numbers are dropped so that a function
    counts once.
    """
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1].strip())
        own[leaf] += int(count)
        total += int(count)
    if not total:
        return "no samples"
    return ", ".join(f"{name} {n / total:.0%}" for name, n in own.most_common(top)) + f" ({total} samples)"


def profile_scenarios(
    scenario_set: Sequence[Scenario], args: argparse.Namespace, work: Path, py_spy: str, into: Path
) -> list[str]:
    """One more securechat run of each scenario with py-spy sampling it (not blocking it: its
    samples do not pause the server, though py-spy takes CPU of its own, so these runs are
    not among the measured ones). Writes `into`/SLUG.txt (collapsed stacks, for flamegraph.pl
    or speedscope); returns the summary's lines, for SUMMARY.md."""
    into.mkdir(exist_ok=True)
    lines = []
    # Logins profiled at up to PROFILE_LOGINS: where the time goes shows as well, in far
    # less time than the measured runs' 5,000.
    args = argparse.Namespace(**{**vars(args), "logins": min(args.logins, PROFILE_LOGINS)})
    for scenario in scenario_set:
        if SECURECHAT not in scenario.servers or scenario.name == "rooms 1 room":
            continue  # one rooms profile is enough: the two differ in room sizes only
        out = into / f"{scenario.slug}.txt"
        extra = scenario_args(scenario.kind, rooms=room_count(scenario), pairs=args.pairs)
        with securechat_server(work / f"profile-{scenario.slug}", args.ports, extra) as target:
            command = [py_spy, "record", "--nonblocking", "--format", "raw", "--output", str(out)]
            sampler = subprocess.Popen(  # noqa: S603 -- py-spy, fixed arguments
                [*command, "--pid", str(target.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                run_scenario(target, scenario, args, None)
            finally:
                # py-spy writes its file when told to stop, as on Ctrl-C.
                sampler.send_signal(signal.SIGINT)
                try:
                    sampler.wait(30)
                except subprocess.TimeoutExpired:
                    sampler.kill()
                    sampler.wait()
        summary = profile_summary(out.read_text()) if out.exists() else "py-spy wrote nothing"
        size = f", {args.logins:,} clients" if scenario.kind == "logins" else ""
        lines.append(f"- {scenario.name}{size} ([{out.name}]({out.name})): {summary}")
        print(f"   profile {scenario.name}: {summary}", flush=True)
    return lines


#: The comparison's servers listen here unless --ports says otherwise: away from the
#: kernel's ephemeral ports (32768-60999), which the test suite's servers and every client
#: connection use, so that a comparison and a test run on the machine at once do not collide.
DEFAULT_PORTS = "9400-9499"

#: The kinds of scenario `--kinds` may name, in the order they run.
ALL_KINDS = tuple(KINDS)


def ports_text(ports: range | None) -> str:
    return "the kernel picks" if ports is None else f"{ports.start}-{ports.stop - 1}"


def ports_arg(text: str) -> range | None:
    """--ports: a range (`parse_port_range`), or None for `any` (ephemeral ports)."""
    return None if text == "any" else parse_port_range(text)


def estimate_seconds(
    scenario_set: Sequence[Scenario], servers: Sequence[str], args: argparse.Namespace
) -> float:
    """About how long the runs and the profiles take on a quiet 2-core machine (a busy one is
    slower): per run a server's start and the clients' logins, plus the scenario's own time.
    securechat's logins grow with the room (about 6 ms + 12 us per member already in it, as
    measured before issue 14's work); ngIRCd's about 3 ms each."""

    def one(scenario: Scenario, server: str) -> float:
        seconds: float = args.seconds
        logins: int = args.logins
        rooms_clients: int = args.rooms_clients
        if scenario.kind == "steady":
            return seconds + 6
        if scenario.kind == "burst":
            return 8
        if scenario.kind == "logins":
            n = logins
            return 6 + (n * (0.006 + 12e-6 * n / 2) if server == SECURECHAT else n * 0.003)
        if scenario.kind == "connect":
            return 4 + float(args.sessions) / 500
        if scenario.kind == "relay":
            real = scenario.variant == "real"
            return 8 + (float(args.real_whispers) / 1000 if real else float(args.whispers) / 4000)
        n = rooms_clients
        return 10 + n * (0.004 + 2e-6 * n / 2) + float(args.rooms_seconds)

    repeat: int = args.repeat
    runs = sum(one(sc, sv) for sc in scenario_set for sv in servers if sv in sc.servers) * repeat
    if args.profile:
        profiled = argparse.Namespace(**{**vars(args), "logins": min(args.logins, PROFILE_LOGINS)})
        runs += sum(
            estimate_seconds(
                [sc], [SECURECHAT], argparse.Namespace(**{**vars(profiled), "repeat": 1, "profile": False})
            )
            for sc in scenario_set
            if SECURECHAT in sc.servers and sc.name != "rooms 1 room"
        )
    return runs


def _arguments(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="steady, burst: clients")
    parser.add_argument("--rate", type=float, default=0.5, help="steady: lines/s per client")
    parser.add_argument("--seconds", type=float, default=15.0, help="steady: duration")
    parser.add_argument("--senders", type=int, default=20, help="burst: senders")
    parser.add_argument("--messages", type=int, default=200, help="burst: lines per sender")
    parser.add_argument(
        "--burst-procs",
        type=int,
        default=3,
        help="burst: generator processes (enough that none is the limit) (default: %(default)s)",
    )
    parser.add_argument("--logins", type=int, default=5000, help="logins: clients, one after another")
    parser.add_argument("--sessions", type=int, default=1000, help="connect: new sessions")
    parser.add_argument("--pairs", type=int, default=50, help="relay: sender -> recipient pairs")
    parser.add_argument("--whispers", type=int, default=20000, help="relay (opaque): whispers")
    parser.add_argument("--real-whispers", type=int, default=3000, help="relay (real clients): whispers")
    parser.add_argument("--rooms-clients", type=int, default=2000, help="rooms: clients")
    parser.add_argument("--rooms", type=int, default=100, help="rooms: rooms, against one room")
    parser.add_argument(
        "--rooms-rate",
        type=float,
        default=0.02,
        help="rooms: lines/s per client, the same in many rooms and in one (default: %(default)s)",
    )
    parser.add_argument("--rooms-seconds", type=float, default=15.0, help="rooms: duration")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="a run ends after this long without a delivery"
    )
    parser.add_argument(
        "--patterns",
        default="spread,simultaneous",
        help=f"steady: traffic patterns, comma-separated, of {', '.join(scenarios.PATTERNS)} "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--write-modes",
        choices=["both", "queued", "one-line"],
        default="both",
        help="the generator's: a client's queued lines together, one line per write, or both",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(ALL_KINDS),
        help=f"the kinds of scenario to run, comma-separated, of {', '.join(ALL_KINDS)} (default: all)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each scenario on each server")
    parser.add_argument(
        "--ports",
        type=ports_arg,
        default=parse_port_range(DEFAULT_PORTS),
        metavar="LO[-HI]",
        help=f"the servers started listen on free ports of this range, or on ports the kernel picks "
        f"with 'any' (default: {DEFAULT_PORTS})",
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="profile securechat in each scenario with py-spy into benchmarks/profiles/",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a quick look: one repetition, 5 s steady, queued writes only, 1,000 logins, 300 "
        "connects, 500 clients in 25 rooms, no profiles",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/ and benchmarks/ alone"
    )
    args = parser.parse_args(argv)
    return args, parser


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[Scenario]]:
    """The command line as run: the arguments (--quick's sizes applied) and the scenarios.
    Exits with status 2 (argparse) on nonsense."""
    args, parser = _arguments(argv)
    if args.quick:
        args.repeat, args.seconds, args.write_modes, args.profile = 1, 5.0, "queued", False
        args.logins, args.sessions, args.whispers, args.real_whispers = 1000, 300, 10000, 1000
        # The same total line rate in the rooms (40 lines/s) with a quarter of the clients.
        args.rooms_clients, args.rooms, args.rooms_rate, args.rooms_seconds = 500, 25, 0.08, 10.0
    patterns = [p for p in args.patterns.split(",") if p]
    kinds = [k for k in args.kinds.split(",") if k]
    if not patterns or not set(patterns) <= set(scenarios.PATTERNS) or args.repeat < 1:
        parser.error(f"--patterns takes {', '.join(scenarios.PATTERNS)}; --repeat at least 1")
    if not kinds or not set(kinds) <= set(ALL_KINDS):
        parser.error(f"--kinds takes {', '.join(ALL_KINDS)}")
    if min(args.burst_procs, args.logins, args.sessions, args.pairs, args.rooms, args.rooms_clients) < 1:
        parser.error("--burst-procs, --logins, --sessions, --pairs, --rooms, --rooms-clients: at least 1")
    modes = {"both": [False, True], "queued": [False], "one-line": [True]}[args.write_modes]
    if "logins" in kinds:
        # A descriptor per client in this process (logins: 5,000); the servers started from
        # here inherit the limit.
        files = raise_open_files_limit()
        if files < args.logins + 64:
            parser.error(
                f"--logins {args.logins} needs about {args.logins + 64} open files; the hard limit "
                f"allows {files} (raise it: ulimit -Hn, or /etc/security/limits.conf)"
            )
    return args, scenario_list(patterns, modes, args.burst_procs, kinds, args.rooms)


def main(argv: Sequence[str] | None = None) -> int:
    args, scenario_set = parse(argv)
    show = sys.stderr.isatty()

    def progress() -> ProgressBar | None:
        return ProgressBar(sys.stderr) if show else None

    started = datetime.datetime.now(datetime.UTC)
    began = time.monotonic()
    servers, notes = starters()
    for note in notes:
        print(note, flush=True)
    runs_planned = sum(1 for sc in scenario_set for sv in servers if sv in sc.servers) * args.repeat
    estimate = estimate_seconds(scenario_set, list(servers), args)
    print(
        f"{len(scenario_set)} scenarios, {runs_planned} runs ({args.repeat} repetitions, servers "
        f"interleaved) on ports {ports_text(args.ports)}; estimated "
        f"{estimate / 60:.0f} min on a quiet machine (load now {fmt_load(loadavg())})",
        flush=True,
    )
    py_spy = find_py_spy() if args.profile else None
    if args.profile and py_spy is None:
        notes.append("No profiles: py-spy is not installed (pip install py-spy; `make bench` does).")
        print(notes[-1], flush=True)
    with tempfile.TemporaryDirectory(prefix="securechat-compare-") as tmp:
        runs = run_all(servers, scenario_set, args, Path(tmp), progress)
        measured = time.monotonic() - began
        into = Path(tmp) / "profiles" if args.no_write else PROFILES  # --no-write: printed only
        profile_lines = (
            [] if py_spy is None else profile_scenarios(scenario_set, args, Path(tmp), py_spy, into)
        )
    elapsed = time.monotonic() - began
    rows = summarize(runs)
    frows = summarize_figures(runs)
    goals = targets(rows, frows)
    deciles = decile_table(runs)
    command = "python benchmarks/compare.py " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "make bench"
    facts = machine()
    print()
    print(targets_table(goals))
    print()
    print(table(rows))
    print()
    print(figure_table(frows))
    if deciles:
        print()
        print(deciles)
    print(
        f"\nmeasured in {measured / 60:.1f} min; {elapsed / 60:.1f} min in all "
        f"(estimated {estimate / 60:.0f}); load at the end {fmt_load(loadavg())}"
    )
    if args.no_write:
        return 0
    picture = plot(rows, PLOT)
    RESULTS.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "seconds": round(elapsed),
                "machine": facts,
                "args": {k: str(v) for k, v in vars(args).items()},
                "targets": [{"target": t, "measured": m, "verdict": v} for t, m, v in goals],
                "summary": [
                    {k: dataclasses.asdict(v) if isinstance(v, Spread) else v for k, v in r.items()}
                    for r in rows
                ],
                "figures": [
                    {
                        **{k: v for k, v in r.items() if k != "figures"},
                        "busy": None if r["busy"] is None else dataclasses.asdict(r["busy"]),
                        "load": None if r["load"] is None else dataclasses.asdict(r["load"]),
                        "figures": {
                            k: None if v is None else dataclasses.asdict(v) for k, v in r["figures"].items()
                        },
                    }
                    for r in frows
                ],
                "runs": runs,
            },
            indent=1,
        )
        + "\n"
    )
    if profile_lines:
        (PROFILES / "SUMMARY.md").write_text(
            f"# Profiles of securechat, one run of each scenario ({started:%Y-%m-%d %H:%M} UTC)\n\n"
            "py-spy samples (non-blocking) of the server's threads while they ran; the share is of "
            "the samples whose innermost frame was the function's own code.\n\n"
            + "\n".join(profile_lines)
            + "\n"
        )
    servers_line = "; ".join(dict.fromkeys(f"{r['server']} {r['version']}" for r in runs))
    section = "\n".join(
        [
            f"Generated by `{command}` (benchmarks/compare.py) on {started:%Y-%m-%d %H:%M} UTC in "
            f"{elapsed / 60:.0f} minutes; raw numbers in benchmarks/results.json"
            + ("; profiles in benchmarks/profiles/SUMMARY.md." if profile_lines else "."),
            "",
            f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory']}, Linux {facts['kernel']}, "
            f"Python {facts['python']}, {facts['openssl']}. The generator and the server share these "
            "cores; the load column is the 1-minute load average before and after each run.",
            "",
            f"Servers: {servers_line}.",
            "",
            "### Issue 14's targets",
            "",
            targets_table(goals),
            "",
            "### Deliveries",
            "",
            f"steady: {args.clients} clients each sending {args.rate} lines/s for {args.seconds:g} s, "
            "at random moments (spread), evenly spaced ones (even) or all at once each period "
            f"(simultaneous). burst: {args.clients} clients, {args.senders} senders x {args.messages} "
            f"lines as fast as possible, the clients split over {args.burst_procs} generator "
            "processes that start together (the generator column gives the busiest one's CPU "
            "over the run). '1 line/write': the generator sends every line in a write of its own; "
            "otherwise a client's queued lines go together. A delivery is one line arriving at one "
            "client other than its sender. Each figure: the median of "
            f"{args.repeat} runs [min-max], servers interleaved, each run on a fresh server. "
            f"The generator is the limit where a process's CPU time reached {scenarios.GENERATOR_LIMIT:.0%} "
            "of the run's length.",
            "",
            table(rows),
            "",
            "### Logins, connect, idle, whispers, rooms",
            "",
            f"logins: {args.logins:,} clients log in one after another (each waits for its welcome; "
            "ngIRCd: NICK, USER and JOIN, until the end of NAMES), all staying in one room; the "
            "generator reads the notices between logins. Idle memory and threads per session "
            "are read at the end of the same run, once the server has been quiet for a second. "
            f"connect: {args.sessions:,} sessions opened (TLS, login) and closed, 8 at a time; the "
            "server's CPU covers the whole login and close. relay: "
            f"{args.pairs} pairs; opaque: {args.whispers:,} well-formed whispers the generator "
            "replays and acknowledges without decrypting (the server's cost); real: "
            f"{args.real_whispers:,} whispers between real clients encrypting end to end (keys in "
            "memory), counted at `delivered`. rooms: "
            f"{args.rooms_clients:,} clients in {args.rooms} rooms, against the same clients in one room, "
            f"each saying {args.rooms_rate:g} lines/s for {args.rooms_seconds:g} s (the same total "
            "line rate in both). relay and rooms run against securechat only: ngIRCd has no "
            "stored whispers, and the generator's IRC dialect joins one channel per client.",
            "",
            figure_table(frows),
            *(["", "Time per login as the room grows (medians over the runs):", "", deciles] * bool(deciles)),
            "",
            *[f"{n}\n" for n in notes],
            picture,
        ]
    )
    write_doc(section)
    print(
        f"\nwrote {DOC.relative_to(ROOT)}, {RESULTS.relative_to(ROOT)}"
        + (f", {PLOT.relative_to(ROOT)}" if picture.startswith("!") else "")
        + (", benchmarks/profiles/" if profile_lines else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
