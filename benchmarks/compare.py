"""securechat side by side with ngIRCd (a C IRC server, over TLS) and a classroom relay.

Runs the `steady` and `burst` scenarios of `securechat bench` against the three servers:
steady with every traffic pattern asked for (by default spread, at random moments, and
simultaneous, every client at the same moment), each scenario with the generator's two
write modes (a client's queued lines together, and one line per write as an independent
generator writes). Servers are interleaved (each run starts a fresh server; the order
rotates) and every scenario repeats --repeat times (3). The table gives medians and
ranges, the machine's load before and after each run and the generator's own CPU, with a
flag where the generator was the limit. It writes the table, the exact command, the
machine and a plot into docs/performance.md (between its "compare" markers),
docs/performance.png and benchmarks/results.json. Then, unless --no-profile, it profiles
securechat in each scenario (py-spy when installed, sampling without stopping the server;
`make bench` installs it) into benchmarks/profiles/, with a one-line summary each in
benchmarks/profiles/SUMMARY.md. `make bench` runs it.

    python benchmarks/compare.py [--repeat 3] [--seconds 20] [--ports 9400-9499] [--quick]

The full run takes about (4 steady x seconds + 2 short bursts + ~6 s of logins and start-up)
x 3 servers x repeat, plus one run of each scenario for the profiles: 20-25 minutes with the
defaults. --quick (one repetition, 5 s steady, only the project's write mode, no profiles)
takes about 2 minutes.

ngIRCd comes from the Debian package `ngircd` (apt-get install ngircd); without it the
comparison says so and measures the other two. The plot needs matplotlib (the `bench`
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

from securechat.bench import scenarios
from securechat.bench.dialects import Dialect, Irc, Plain, SecureChat
from securechat.bench.ports import free_port, parse_port_range
from securechat.bench.procfs import loadavg
from securechat.bench.progress import ProgressBar
from securechat.bench.server import BenchServer
from securechat.certs import make_certs
from securechat.transport import client_context

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "performance.png"
RESULTS = ROOT / "benchmarks" / "results.json"
PROFILES = ROOT / "benchmarks" / "profiles"
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
SECURECHAT, NGIRCD, RELAY = "securechat", "ngIRCd", "classroom relay (plaintext)"


@dataclasses.dataclass
class Target:
    name: str
    dialect: Dialect
    context: ssl.SSLContext | None
    port: int
    pid: int
    version: str


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One measured scenario: `kind` steady or burst, its pattern (steady), the write mode."""

    kind: str
    pattern: str | None
    one_line_per_write: bool

    @property
    def name(self) -> str:
        parts = [self.kind, *([self.pattern] if self.pattern else [])]
        if self.one_line_per_write:
            parts.append("1 line/write")
        return " ".join(parts)

    @property
    def slug(self) -> str:
        """The name as a file name (its profile's)."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def scenario_list(patterns: Sequence[str], write_modes: Sequence[bool]) -> list[Scenario]:
    return [Scenario("steady", p, w) for w in write_modes for p in patterns] + [
        Scenario("burst", None, w) for w in write_modes
    ]


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
def securechat_server(work: Path, ports: range | None = None) -> Iterator[Target]:
    server = BenchServer(work / "securechat", ports=ports)
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
def ngircd_server(work: Path, binary: str, ports: range | None = None) -> Iterator[Target]:
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
def classroom_relay(work: Path, ports: range | None = None) -> Iterator[Target]:
    port = free_port(ports)
    relay = Path(__file__).with_name("classroom_relay.py")
    proc = subprocess.Popen([sys.executable, str(relay), str(port)], stdout=subprocess.DEVNULL)  # noqa: S603
    try:
        wait_listening(port, proc, "the classroom relay")
        yield Target(RELAY, Plain(), None, port, proc.pid, "benchmarks/classroom_relay.py")
    finally:
        proc.kill()
        proc.wait(10)


#: A server to start: given a fresh work directory and the port range, a running target.
Starter = Callable[[Path, "range | None"], AbstractContextManager[Target]]


def starters() -> tuple[dict[str, Starter], list[str]]:
    """The servers this machine can run, in table order, and notes on those it cannot."""
    found: dict[str, Starter] = {SECURECHAT: securechat_server}
    notes: list[str] = []
    binary = find_ngircd()
    if binary is None:
        notes.append("ngIRCd was not measured: `ngircd` is not installed (apt-get install ngircd).")
    else:
        found[NGIRCD] = lambda work, ports: ngircd_server(work, binary, ports)
    found[RELAY] = classroom_relay
    return found, notes


def run_scenario(
    target: Target, scenario: Scenario, args: argparse.Namespace, bar: ProgressBar | None
) -> dict[str, Any]:
    """One run of `scenario` against `target`: the scenario's result as a dict."""
    common: dict[str, Any] = {
        "dialect": target.dialect,
        "server_pid": target.pid,
        "settle": args.settle,
        "one_line_per_write": scenario.one_line_per_write,
        "progress": bar,
    }
    result: scenarios.SteadyResult | scenarios.BurstResult
    if scenario.kind == "steady":
        assert scenario.pattern is not None
        result = scenarios.steady(
            "127.0.0.1",
            target.port,
            target.context,
            clients=args.clients,
            rate=args.rate,
            seconds=args.seconds,
            pattern=scenario.pattern,
            **common,
        )
    else:
        result = scenarios.burst(
            "127.0.0.1",
            target.port,
            target.context,
            clients=args.clients,
            senders=args.senders,
            messages=args.messages,
            **common,
        )
    return dataclasses.asdict(result)


def run_once(
    start: Starter,
    work: Path,
    scenario: Scenario,
    args: argparse.Namespace,
    progress: Callable[[], ProgressBar | None],
) -> dict[str, Any]:
    """A fresh server, one run of `scenario`, the machine's load before and after."""
    with start(work, args.ports) as target:
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
    """Every scenario against every server, `args.repeat` times, servers interleaved.

    Each repetition runs each scenario on all servers back to back, in an order rotated from
    one scenario and repetition to the next, so that a busy spell of the shared machine does
    not fall on one server's runs only.
    """
    names = list(servers)
    runs: list[dict[str, Any]] = []
    turn = 0
    for rep in range(args.repeat):
        for scenario in scenario_set:
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
    lat = r["latency"]
    rate = f"{r['per_second']:,.0f} deliveries/s, " if "per_second" in r else ""
    return (
        f"{run['server']}: {r['deliveries']:,}/{r['expected']:,} delivered, {r['out_of_order']} out "
        f"of order, {rate}p99 {lat['p99'] * 1e3:.1f} ms, server CPU {fmt_us(r['cpu_us_per_delivery'])} "
        f"per delivery, generator CPU {r['generator']['busy']:.0%} of the run"
        + (" (the limit)" if r["generator"]["limited"] else "")
        + f", load {fmt_load(run['load_before'])} -> {fmt_load(run['load_after'])}"
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


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (scenario, server), scenarios in the order run, servers as in the table (securechat,
    ngIRCd, the relay): medians and ranges over the repetitions."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for run in runs:
        groups[(run["scenario"], run["server"])].append(run)
    rows = []
    scenario_order = list(dict.fromkeys(run["scenario"] for run in runs))
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
    for scenario in scenario_set:
        out = into / f"{scenario.slug}.txt"
        with securechat_server(work / f"profile-{scenario.slug}", args.ports) as target:
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
        lines.append(f"- {scenario.name} ([{out.name}]({out.name})): {summary}")
        print(f"   profile {scenario.name}: {summary}", flush=True)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.5, help="steady: lines/s per client")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady: duration")
    parser.add_argument("--senders", type=int, default=20, help="burst: senders")
    parser.add_argument("--messages", type=int, default=200, help="burst: lines per sender")
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
    parser.add_argument("--repeat", type=int, default=3, help="runs of each scenario on each server")
    parser.add_argument(
        "--ports",
        type=parse_port_range,
        default=None,
        metavar="LO[-HI]",
        help="the servers started listen on free ports of this range (default: ephemeral ports)",
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
        help="a quick look: one repetition, 5 s steady, queued writes only, no profiles",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/ and benchmarks/ alone"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.seconds, args.write_modes, args.profile = 1, 5.0, "queued", False
    patterns = [p for p in args.patterns.split(",") if p]
    if not patterns or not set(patterns) <= set(scenarios.PATTERNS) or args.repeat < 1:
        parser.error(f"--patterns takes {', '.join(scenarios.PATTERNS)}; --repeat at least 1")
    modes = {"both": [False, True], "queued": [False], "one-line": [True]}[args.write_modes]
    scenario_set = scenario_list(patterns, modes)
    show = sys.stderr.isatty()

    def progress() -> ProgressBar | None:
        return ProgressBar(sys.stderr) if show else None

    started = datetime.datetime.now(datetime.UTC)
    began = time.monotonic()
    servers, notes = starters()
    for note in notes:
        print(note, flush=True)
    print(f"{len(scenario_set)} scenarios x {len(servers)} servers x {args.repeat} repetitions", flush=True)
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
    command = "python benchmarks/compare.py " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "make bench"
    facts = machine()
    print()
    print(table(rows))
    print(f"\nmeasured in {measured / 60:.1f} min; {elapsed / 60:.1f} min in all")
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
                "summary": [
                    {k: dataclasses.asdict(v) if isinstance(v, Spread) else v for k, v in r.items()}
                    for r in rows
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
    section = "\n".join(
        [
            f"Generated by `{command}` (benchmarks/compare.py) on {started:%Y-%m-%d %H:%M} UTC in "
            f"{elapsed / 60:.0f} minutes; raw numbers in benchmarks/results.json"
            + ("; profiles in benchmarks/profiles/SUMMARY.md." if profile_lines else "."),
            "",
            f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory']}, Linux {facts['kernel']}, "
            f"Python {facts['python']}, {facts['openssl']}. The generator (one thread, one process) "
            "and the server share these cores; the load column is the 1-minute load average before "
            "and after each run.",
            "",
            f"steady: {args.clients} clients each sending {args.rate} lines/s for {args.seconds:g} s, "
            "at random moments (spread), evenly spaced ones (even) or all at once each period "
            f"(simultaneous). burst: {args.clients} clients, {args.senders} senders x {args.messages} "
            "lines as fast as possible. '1 line/write': the generator sends every line in a write "
            "of its own; otherwise a client's queued lines go together. A delivery is one line "
            "arriving at one client other than its sender. Each figure: the median of "
            f"{args.repeat} runs [min-max], servers interleaved, each run on a fresh server. "
            f"The generator is the limit where its CPU time reached {scenarios.GENERATOR_LIMIT:.0%} "
            "of the run's length.",
            "",
            "Servers: " + "; ".join(dict.fromkeys(f"{r['server']} {r['version']}" for r in runs)) + ".",
            "",
            table(rows),
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
