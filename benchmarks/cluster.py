"""securechat as a cluster (PostgreSQL + Redis, cluster/backplane.py) beside one process.

Runs the same steady room load (the `steady` scenario of `make bench`: every client says
--rate lines per second in #lobby for --seconds, everyone receives everything) against:

- `single`: one `securechat server` process, SQLite (today's default);
- `cluster-1`: one node with `--store` and `--cluster` (every room line goes through Redis
  and back: the cost of the hop, with nothing to spread);
- `cluster-2`: two nodes sharing the port with `--reuse-port`, the clients spread over them
  by the kernel.

Modes are interleaved (the order rotates each repetition), --repeat times (3), each on
fresh engines' data. Per run: deliveries, the p50/p99 latency the generator measured (send
to receipt), the CPU of the servers and of Redis per delivery (from /proc: utime+stime of
each process, the nodes' and redis-server's, over the run), the generator's own CPU share,
the machine's load. Then, from the medians, the costs a model of N nodes needs, and the
model itself (docs/performance.md, "A cluster"); --write puts the tables there.

    python benchmarks/cluster.py [--repeat 3] [--clients 100] [--rate 2] [--seconds 10] [--write]

PostgreSQL (initdb, pg_ctl) and redis-server come from Debian's packages; the engines are
started as the tests start them (tests/pg_server.py, tests/redis_server.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from pg_server import PgServer, fresh_database  # noqa: E402 (the tests' engine helpers)
from redis_server import RedisServer  # noqa: E402

from securechat.bench.ports import free_port  # noqa: E402
from securechat.bench.procfs import loadavg, sample  # noqa: E402
from securechat.bench.scenarios import steady  # noqa: E402
from securechat.certs import make_certs  # noqa: E402
from securechat.transport import client_context  # noqa: E402

MODES = ("single", "cluster-1", "cluster-2")
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- cluster:begin -->", "<!-- cluster:end -->"


@dataclass
class Run:
    mode: str
    deliveries: int
    expected: int
    p50_ms: float
    p99_ms: float
    node_us: float  # the nodes' CPU per delivery
    redis_us: float  # redis-server's CPU per delivery
    redis_us_per_line: float  # redis-server's CPU per line said (each line is published once)
    lines: int
    generator_share: float
    load_before: float | None
    load_after: float | None


def cpu_seconds(pid: int) -> float:
    return sample(pid).cpu_seconds


def start_node(port: int, work: Path, certs: tuple[Path, Path], extra: list[str]) -> subprocess.Popen[str]:
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(  # noqa: S603 -- our own interpreter and arguments
        [
            sys.executable, "-m", "securechat", "server", "--port", str(port),
            "--data-dir", str(work / "data"), "--init", "--cert", str(certs[0]), "--key", str(certs[1]),
            "--message-rate", "0", "--max-per-ip", "1000000", "--log-level", "warning", *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    if f":{port} (TLS)" not in banner:
        proc.kill()
        raise RuntimeError(f"a node did not start: {banner!r}")
    return proc


def run_once(mode: str, args: argparse.Namespace, pg: PgServer, redis: RedisServer, work: Path) -> Run:
    paths, _ = make_certs(work / "certs", ["localhost", "127.0.0.1"])
    certs = (paths.cert, paths.key)
    port = free_port(None)
    nodes: list[subprocess.Popen[str]] = []
    extra: list[str] = []
    if mode != "single":
        redis.command("FLUSHALL")
        extra = ["--store", fresh_database(pg, "bench"), "--cluster", redis.url, "--reuse-port"]
    try:
        for n in range(2 if mode == "cluster-2" else 1):
            nodes.append(start_node(port, work / f"node{n}", certs, extra))
        pids = [p.pid for p in nodes]
        watched = pids + ([redis.pid] if mode != "single" else [])
        load_before = loadavg()
        before = {pid: cpu_seconds(pid) for pid in watched}
        result = steady(
            "127.0.0.1",
            port,
            client_context(paths.ca),
            clients=args.clients,
            rate=args.rate,
            seconds=args.seconds,
        )
        after = {pid: cpu_seconds(pid) for pid in watched}
        load_after = loadavg()
    finally:
        for proc in nodes:
            proc.terminate()
        for proc in nodes:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    deliveries = max(1, result.deliveries)
    lines = max(1, round(result.deliveries / max(1, args.clients - 1)))
    node_cpu = sum(after[p] - before[p] for p in pids)
    redis_cpu = after[redis.pid] - before[redis.pid] if mode != "single" else 0.0
    return Run(
        mode=mode,
        deliveries=result.deliveries,
        expected=result.expected,
        p50_ms=result.latency.p50 * 1e3,
        p99_ms=result.latency.p99 * 1e3,
        node_us=node_cpu / deliveries * 1e6,
        redis_us=redis_cpu / deliveries * 1e6,
        redis_us_per_line=redis_cpu / lines * 1e6,
        lines=lines,
        generator_share=result.generator.busy,
        load_before=load_before,
        load_after=load_after,
    )


def redis_costs(redis: RedisServer, calls: int = 20_000, batch_bytes: int = 200) -> dict[int, float]:
    """Redis's own CPU per room publish (the backplane's Lua script: offset, stream append,
    publish), in microseconds, with 0, 1, 2 and 4 nodes subscribed (subscribers that read
    everything, as nodes do). From INFO's used_cpu_* before and after `calls` publishes,
    pipelined from this process (so the client's own cost is not in it)."""
    import threading

    import redis as redis_py

    from securechat.server.cluster.scripts import PUBLISH

    client = redis_py.Redis.from_url(redis.url)
    script = client.register_script(PUBLISH)
    costs: dict[int, float] = {}
    payload = b"x" * batch_bytes
    for subscribers in (0, 1, 2, 4):
        client.flushall()
        client.set("bench:epoch", "e")
        stop = threading.Event()
        readers = []
        for _ in range(subscribers):
            pubsub = client.pubsub()  # type: ignore[no-untyped-call]
            pubsub.subscribe("bench:rooms")

            def read(ps: object = pubsub, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    ps.get_message(timeout=0.2)  # type: ignore[attr-defined]

            thread = threading.Thread(target=read, daemon=True)
            thread.start()
            readers.append((pubsub, thread))
        info = client.info("cpu")
        before = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        for start in range(0, calls, 500):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(500, calls - start)):
                script(keys=["bench:off:#r", "bench:log:#r", "bench:epoch", "bench:state:#r"],
                       args=["bench:rooms", payload, 1000, "#r", ""], client=pipe)  # fmt: skip
            pipe.execute()
        info = client.info("cpu")
        after = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        stop.set()
        for pubsub, thread in readers:
            thread.join(2)
            pubsub.close()
        costs[subscribers] = (after - before) / calls * 1e6
    client.close()
    return costs


def median_span(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def report(runs: list[Run], args: argparse.Namespace, costs: list[dict[int, float]]) -> str:
    by_mode = {m: [r for r in runs if r.mode == m] for m in MODES}
    out = [
        f"`python benchmarks/cluster.py --repeat {args.repeat} --clients {args.clients} --rate {args.rate} "
        f"--seconds {args.seconds}`: {args.clients} clients in one room, each saying {args.rate} lines/s "
        f"for {args.seconds} s; medians [min-max] of {args.repeat} interleaved runs. CPU per delivery "
        "is the servers' (every node) and Redis's own, from /proc.",
        "",
        "| mode | deliveries (of expected) | p50 ms | p99 ms | nodes' CPU us/delivery | Redis us/delivery "
        "| all us/delivery | vs single | generator CPU share | load before-after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    single_total = statistics.median(r.node_us for r in by_mode["single"])
    for mode, rs in by_mode.items():
        totals = [r.node_us + r.redis_us for r in rs]
        loads = ", ".join(f"{r.load_before or 0:.1f}-{r.load_after or 0:.1f}" for r in rs)
        out.append(
            f"| {mode} | {statistics.median(r.deliveries for r in rs):,.0f} "
            f"({statistics.median(r.expected for r in rs):,.0f}) | {median_span([r.p50_ms for r in rs])} "
            f"| {median_span([r.p99_ms for r in rs])} | {median_span([r.node_us for r in rs])} "
            f"| {median_span([r.redis_us for r in rs])} | {median_span(totals)} "
            f"| {statistics.median(totals) / single_total:.2f}x "
            f"| {median_span([r.generator_share for r in rs])} | {loads} |"
        )
    per = {n: statistics.median(c[n] for c in costs) for n in costs[0]}
    out += [
        "",
        f"Redis's own CPU per room publish (the Lua script), {len(costs)} measurements of 20,000 "
        "pipelined publishes of a 200-byte batch, by nodes subscribed: "
        + ", ".join(f"{n}: {us:.1f} us" for n, us in per.items())
        + ".",
        "",
        model(by_mode, args, per),
    ]
    return "\n".join(out)


def model(by_mode: dict[str, list[Run]], args: argparse.Namespace, redis_per: dict[int, float]) -> str:
    """Deliveries/s at N nodes, from the measured costs (see the printed text)."""
    m = args.clients  # members of the room; every line reaches m - 1 of them
    single = statistics.median(r.node_us for r in by_mode["single"])  # one process, per delivery
    node1 = statistics.median(r.node_us for r in by_mode["cluster-1"])
    node2 = statistics.median(r.node_us for r in by_mode["cluster-2"])
    # A node's cost per line of the cluster, whoever said it and however few of its
    # members hear it: its subscriber's hand-off. Two nodes fan out to the same members
    # and publish the same lines as one; what they spend more is one more hand-off of
    # every line. The rest of one node's cost is per delivery (the fan-out, and the
    # publishing, which each node does for its own senders).
    handoff = max(0.0, (node2 - node1) * (m - 1))
    fanout = node1 - handoff / (m - 1)
    # Redis per line: running the script once, plus one publish per subscribed node
    # (the slope of the measured cost from 0 to 4 subscribers).
    script = redis_per[0]
    per_subscriber = max(0.0, (redis_per[4] - redis_per[0]) / 4)
    rows = [
        "Costs behind the model, from the medians above: one process spends "
        f"{single:.2f} us per delivery; a node of the cluster spends {handoff:.0f} us per line "
        f"of the cluster for its subscriber's hand-off (cluster-2 minus cluster-1, per line: the "
        f"second node's one extra hand-off of every line), and {fanout:.2f} us per delivery for the "
        f"rest (its fan-out, its share of the publishing); Redis spends {script:.1f} us per line for "
        f"the script and {per_subscriber:.1f} us more per subscribed node (the publish costs above). "
        "In the runs Redis's CPU per line is higher than the script's alone: at these rates its "
        "fixed costs (event loop, the nodes' leases) are not spread over many lines.",
        "",
        f"Model: a room of {m} members spread evenly over N nodes of one core each, every line "
        f"reaching all members. A node spends, per line, the hand-off ({handoff:.0f} us) plus the "
        f"rest for its m/N members; Redis (one core) spends the script plus one publish per node. "
        "Lines/s = min(N nodes' limit, Redis's limit); deliveries/s = lines/s x m.",
        "",
        "| nodes | node limit (lines/s) | Redis limit (lines/s) | deliveries/s | limited by |",
        "|---|---|---|---|---|",
    ]
    for n in (1, 2, 4, 8, 16):
        node_us = handoff + fanout * m / n
        node_lines = 1e6 / node_us if node_us else float("inf")
        redis_us = script + per_subscriber * n
        redis_lines = 1e6 / redis_us if redis_us else float("inf")
        lines = min(node_lines, redis_lines)
        rows.append(
            f"| {n} | {node_lines:,.0f} | {redis_lines:,.0f} | {lines * m:,.0f} | "
            f"{'Redis' if redis_lines < node_lines else 'the nodes'} |"
        )
    return "\n".join(rows)


def write_doc(section: str) -> None:
    text = DOC.read_text()
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + block + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n## A cluster\n\n" + block + "\n"
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--write", action="store_true", help="put the tables in docs/performance.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="securechat-cluster-bench-") as tmp:
        work = Path(tmp)
        pg = PgServer.start()
        redis = RedisServer.start(work / "redis")
        runs: list[Run] = []
        costs: list[dict[int, float]] = []
        try:
            for rep in range(args.repeat):
                order = MODES[rep % 3 :] + MODES[: rep % 3]
                for mode in order:
                    run = run_once(mode, args, pg, redis, work / f"{mode}-{rep}")
                    runs.append(run)
                    print(
                        f"{mode:9} rep {rep + 1}: {run.deliveries:,} of {run.expected:,} deliveries, "
                        f"p50 {run.p50_ms:.2f} ms, nodes {run.node_us:.2f} + redis {run.redis_us:.2f} "
                        f"us/delivery, generator {run.generator_share:.0%}",
                        flush=True,
                    )
                costs.append(redis_costs(redis))
                print(f"redis publish cost rep {rep + 1}: {costs[-1]}", flush=True)
        finally:
            redis.stop()
            pg.close()
    section = report(runs, args, costs)
    print("\n" + section)
    if args.write:
        write_doc(section)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
