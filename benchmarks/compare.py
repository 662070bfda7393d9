"""securechat side by side with ngIRCd (a C IRC server, over TLS) and a classroom relay.

Runs the same `steady` and `burst` scenarios of `securechat bench` against the three
servers, one after another on this machine, and writes the table, the exact command,
the machine and a plot into docs/performance.md (between its "compare" markers) and
docs/performance.png. `make bench` runs it.

    python benchmarks/compare.py [--seconds 20] [--clients 200] [--no-write]

ngIRCd comes from the Debian package `ngircd` (apt-get install ngircd); without it the
comparison says so and measures the other two. The plot needs matplotlib (the `bench`
extra: pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from securechat.bench import scenarios
from securechat.bench.dialects import Dialect, Irc, Plain, SecureChat
from securechat.bench.progress import ProgressBar
from securechat.bench.server import BenchServer
from securechat.certs import make_certs
from securechat.transport import client_context

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "performance.png"
RESULTS = ROOT / "benchmarks" / "results.json"
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
T = TypeVar("T")


@dataclasses.dataclass
class Target:
    name: str
    dialect: Dialect
    context: ssl.SSLContext | None
    port: int
    pid: int
    version: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
def securechat_server(work: Path) -> Iterator[Target]:
    server = BenchServer(work / "securechat")
    try:
        from securechat import __version__

        yield Target(
            "securechat", SecureChat(), client_context(server.cafile), server.port, server.pid, __version__
        )
    finally:
        server.stop()


def find_ngircd() -> str | None:
    return shutil.which("ngircd") or shutil.which("ngircd", path="/usr/sbin:/usr/local/sbin")


@contextmanager
def ngircd_server(work: Path, binary: str) -> Iterator[Target]:
    """ngIRCd on 127.0.0.1 with TLS only, flood penalties off, one IP allowed many clients."""
    home = work / "ngircd"
    paths, _ = make_certs(home / "certs", ["localhost", "127.0.0.1"])
    (home / "conf.d").mkdir()
    port = free_port()
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
        yield Target("ngIRCd", Irc(), client_context(paths.ca), port, proc.pid, number)
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def classroom_relay(work: Path) -> Iterator[Target]:
    port = free_port()
    relay = Path(__file__).with_name("classroom_relay.py")
    proc = subprocess.Popen([sys.executable, str(relay), str(port)], stdout=subprocess.DEVNULL)  # noqa: S603
    try:
        wait_listening(port, proc, "the classroom relay")
        yield Target(
            "classroom relay (plaintext)", Plain(), None, port, proc.pid, "benchmarks/classroom_relay.py"
        )
    finally:
        proc.kill()
        proc.wait(10)


def run_target(
    target: Target, args: argparse.Namespace, progress: Callable[[], ProgressBar | None]
) -> dict[str, Any]:
    print(f"== {target.name} ({target.version}) on 127.0.0.1:{target.port}, pid {target.pid}", flush=True)
    row: dict[str, Any] = {"server": target.name, "version": target.version}
    common: dict[str, Any] = {"dialect": target.dialect, "server_pid": target.pid, "settle": args.settle}
    steady = with_bar(
        progress,
        lambda bar: scenarios.steady(
            "127.0.0.1",
            target.port,
            target.context,
            clients=args.clients,
            rate=args.rate,
            seconds=args.seconds,
            progress=bar,
            **common,
        ),
    )
    row["steady"] = dataclasses.asdict(steady)
    print(f"   steady: {describe_steady(row['steady'])}", flush=True)
    burst = with_bar(
        progress,
        lambda bar: scenarios.burst(
            "127.0.0.1",
            target.port,
            target.context,
            clients=args.clients,
            senders=args.senders,
            messages=args.messages,
            progress=bar,
            **common,
        ),
    )
    row["burst"] = dataclasses.asdict(burst)
    print(f"   burst:  {describe_burst(row['burst'])}", flush=True)
    return row


def with_bar(progress: Callable[[], ProgressBar | None], run: Callable[[ProgressBar | None], T]) -> T:
    """`run(bar)` with a fresh progress bar (or None), ending the bar's line afterwards."""
    bar = progress()
    try:
        return run(bar)
    finally:
        if bar is not None:
            bar.finish()


def describe_steady(s: dict[str, Any]) -> str:
    lat = s["latency"]
    return (
        f"{s['deliveries']:,}/{s['expected']:,} delivered, {s['out_of_order']} out of order, "
        f"p50 {lat['p50'] * 1e3:.2f} ms, p99 {lat['p99'] * 1e3:.2f} ms, "
        f"server CPU {fmt_us(s['cpu_us_per_delivery'])} per delivery"
    )


def describe_burst(b: dict[str, Any]) -> str:
    return (
        f"{b['deliveries']:,}/{b['expected']:,} delivered, {b['out_of_order']} out of order, "
        f"{b['per_second']:,.0f} deliveries/s, server CPU {fmt_us(b['cpu_us_per_delivery'])} per delivery"
    )


def fmt_us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} us"


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


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| server | steady: delivered | steady: p50 | steady: p99 | steady: server CPU per delivery "
        "| burst: delivered | burst: deliveries/s | burst: server CPU per delivery |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s, b = row["steady"], row["burst"]
        out.append(
            f"| {row['server']} "
            f"| {s['deliveries']:,} of {s['expected']:,}, {s['out_of_order']} out of order "
            f"| {s['latency']['p50'] * 1e3:.2f} ms | {s['latency']['p99'] * 1e3:.2f} ms "
            f"| {fmt_us(s['cpu_us_per_delivery'])} "
            f"| {b['deliveries']:,} of {b['expected']:,}, {b['out_of_order']} out of order "
            f"| {b['per_second']:,.0f} | {fmt_us(b['cpu_us_per_delivery'])} |"
        )
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install -e '.[bench]')"
    names = [row["server"].replace(" (plaintext)", "\n(plaintext)") for row in rows]
    panels = [
        ("steady: server CPU per delivery (us)", [r["steady"]["cpu_us_per_delivery"] or 0 for r in rows]),
        ("steady: p99 latency (ms)", [r["steady"]["latency"]["p99"] * 1e3 for r in rows]),
        ("burst: deliveries per second", [r["burst"]["per_second"] for r in rows]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 4))
    for ax, (title, values) in zip(axes, panels, strict=True):
        bars = ax.bar(names, values, color=["#3b7dd8", "#999999", "#d89b3b"][: len(values)])
        ax.set_title(title, fontsize=10)
        ax.bar_label(bars, labels=[f"{v:,.2f}" if v < 100 else f"{v:,.0f}" for v in values], fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.5, help="steady: lines/s per client")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady: duration")
    parser.add_argument("--senders", type=int, default=20, help="burst: senders")
    parser.add_argument("--messages", type=int, default=200, help="burst: lines per sender")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="a run ends after this long without a delivery"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args()
    show = sys.stderr.isatty()

    def progress() -> ProgressBar | None:
        return ProgressBar(sys.stderr) if show else None

    started = datetime.datetime.now(datetime.UTC)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="securechat-compare-") as tmp:
        work = Path(tmp)
        rows.append(with_target(securechat_server(work), args, progress))
        binary = find_ngircd()
        if binary is None:
            notes.append("ngIRCd was not measured: `ngircd` is not installed (apt-get install ngircd).")
            print(notes[-1], flush=True)
        else:
            rows.append(with_target(ngircd_server(work, binary), args, progress))
        rows.append(with_target(classroom_relay(work), args, progress))
    command = "python benchmarks/compare.py " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "make bench"
    facts = machine()
    print()
    print(table(rows))
    if args.no_write:
        return 0
    picture = plot(rows, PLOT)
    RESULTS.write_text(
        json.dumps({"started": started.isoformat(), "machine": facts, "rows": rows}, indent=1) + "\n"
    )
    section = "\n".join(
        [
            f"Generated by `{command}` (benchmarks/compare.py) on {started:%Y-%m-%d %H:%M} UTC; raw "
            "numbers in benchmarks/results.json.",
            "",
            f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory']}, Linux {facts['kernel']}, "
            f"Python {facts['python']}, {facts['openssl']}. The generator (one thread, one process) "
            "and the server share these cores.",
            "",
            f"steady: {args.clients} clients each sending {args.rate} lines/s for {args.seconds:g} s. "
            f"burst: {args.clients} clients, {args.senders} senders x {args.messages} lines as fast as "
            "possible. A delivery is one line arriving at one client other than its sender.",
            "",
            "Servers: " + "; ".join(f"{r['server']} {r['version']}" for r in rows) + ".",
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
    )
    return 0


def with_target(
    manager: Any, args: argparse.Namespace, progress: Callable[[], ProgressBar | None]
) -> dict[str, Any]:
    with manager as target:
        return run_target(target, args, progress)


if __name__ == "__main__":
    sys.exit(main())
