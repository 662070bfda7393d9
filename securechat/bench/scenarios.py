"""Benchmark scenarios. Each returns a result dataclass; nothing here prints."""

from __future__ import annotations

import heapq
import random
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .dialects import Dialect, SecureChat
from .loadgen import BenchClient, Loop, Marker, connect
from .procfs import sample
from .stats import LatencySummary, summarize

__all__ = [
    "GENERATOR_LIMIT",
    "PATTERNS",
    "BurstResult",
    "ConnectResult",
    "GeneratorLoad",
    "IdleResult",
    "SteadyResult",
    "burst",
    "connect_storm",
    "idle",
    "steady",
]


#: How `steady` spreads each period's lines over time. spread: every client at a random
#: moment of the period (fixed seed); even: client i at i/clients of the period;
#: simultaneous: every client at the period's start, the pattern where a server that
#: merges a recipient's queued lines into one write gains most.
PATTERNS = ("spread", "even", "simultaneous")

#: A run whose generator used at least this share of the run's length in CPU time was
#: limited by the generator (one thread, so at most 1.0): its rate measures the generator.
GENERATOR_LIMIT = 0.9


@dataclass(frozen=True)
class GeneratorLoad:
    """The load generator's own cost in a run: this process's CPU time over the run's length."""

    cpu_seconds: float
    run_seconds: float
    busy: float  # cpu_seconds / run_seconds
    limited: bool  # busy >= GENERATOR_LIMIT: the figures measure the generator too


def _generator_load(cpu_before: float, started: float) -> GeneratorLoad:
    cpu = time.process_time() - cpu_before
    wall = max(1e-9, time.monotonic() - started)
    return GeneratorLoad(cpu, wall, cpu / wall, cpu / wall >= GENERATOR_LIMIT)


@dataclass(frozen=True)
class BurstResult:
    dialect: str
    clients: int
    senders: int
    messages: int
    deliveries: int
    expected: int
    seconds: float
    per_second: float
    latency: LatencySummary
    out_of_order: int
    cpu_us_per_delivery: float | None
    one_line_per_write: bool
    generator: GeneratorLoad


@dataclass(frozen=True)
class SteadyResult:
    dialect: str
    clients: int
    rate: float
    seconds: float
    deliveries: int
    expected: int
    latency: LatencySummary
    out_of_order: int
    cpu_us_per_delivery: float | None
    pattern: str
    one_line_per_write: bool
    generator: GeneratorLoad


@dataclass(frozen=True)
class ConnectResult:
    sessions: int
    seconds: float
    per_second: float


@dataclass(frozen=True)
class IdleResult:
    sessions: int
    rss_kib_per_session: float
    threads_per_session: float


Progress = Callable[[float, float], None]  # (done, total)


def _clients(
    host: str, port: int, ctx: ssl.SSLContext | None, dialect: Dialect, count: int, prefix: str
) -> list[BenchClient]:
    clients: list[BenchClient] = []
    try:
        for i in range(count):
            clients.append(connect(host, port, ctx, dialect, i, f"{prefix}{i}"))
    except BaseException:
        for c in clients:
            c.sock.close()
        raise
    return clients


def _cpu(pid: int | None) -> float | None:
    return sample(pid).cpu_seconds if pid is not None else None


def _us_per_delivery(cpu_before: float | None, cpu_after: float | None, deliveries: int) -> float | None:
    """Server CPU microseconds per delivered line, when the server's pid is known."""
    if cpu_before is None or cpu_after is None:
        return None
    return (cpu_after - cpu_before) / max(1, deliveries) * 1e6


def _latency(loop: Loop) -> LatencySummary:
    return summarize([us / 1e6 for us in loop.latencies_us] or [0.0])


def burst(
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    *,
    clients: int,
    senders: int,
    messages: int,
    dialect: Dialect | None = None,
    server_pid: int | None = None,
    timeout: float = 300.0,
    settle: float = 5.0,
    one_line_per_write: bool = False,
    progress: Progress | None = None,
) -> BurstResult:
    """`senders` of `clients` each send `messages` lines as fast as the server takes them.

    Each line counts once per receiver other than its sender. The run ends when every
    line has arrived everywhere, or when nothing arrived for `settle` seconds (a server
    that loses lines), or after `timeout`. The rate is deliveries over the time from the
    first send to the last delivery. `one_line_per_write`: see `Loop`.
    """
    dialect = dialect or SecureChat()
    cs = _clients(host, port, ctx, dialect, clients, "burst")
    marker = Marker()
    loop = Loop(cs, marker, one_line_per_write)
    expected = senders * messages * (clients - 1)
    try:
        cpu_before = _cpu(server_pid)
        own_before = time.process_time()
        start = time.monotonic()
        for sender in cs[:senders]:
            for i in range(messages):
                sender.queue(marker.text(sender.index, i))
        loop.run(
            lambda: loop.deliveries >= expected or time.monotonic() - loop.last_delivery > settle,
            start + timeout,
            progress=None if progress is None else lambda: progress(loop.deliveries, expected),
        )
        seconds = max(1e-9, loop.last_delivery - start)
        cpu_after = _cpu(server_pid)
        generator = _generator_load(own_before, start)
    finally:
        loop.close()
    deliveries = loop.deliveries
    return BurstResult(
        dialect.name,
        clients,
        senders,
        messages,
        deliveries,
        expected,
        seconds,
        deliveries / seconds,
        _latency(loop),
        sum(c.out_of_order for c in cs),
        _us_per_delivery(cpu_before, cpu_after, deliveries),
        one_line_per_write,
        generator,
    )


def steady(
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    *,
    clients: int,
    rate: float,
    seconds: float,
    dialect: Dialect | None = None,
    server_pid: int | None = None,
    settle: float = 10.0,
    pattern: str = "spread",
    one_line_per_write: bool = False,
    progress: Progress | None = None,
) -> SteadyResult:
    """Every client sends `rate` lines per second for `seconds`, at moments set by `pattern`
    (one of `PATTERNS`). `one_line_per_write`: see `Loop`. Raises `ValueError` for an
    unknown pattern."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}: one of {', '.join(PATTERNS)}")
    dialect = dialect or SecureChat()
    cs = _clients(host, port, ctx, dialect, clients, "steady")
    marker = Marker()
    loop = Loop(cs, marker, one_line_per_write)
    rng = random.Random(1)  # noqa: S311 -- spreads send times; nothing secret
    interval = 1.0 / rate
    start = time.monotonic()
    end = start + seconds

    def offset(i: int) -> float:
        """When in the first period client `i` sends (seconds after the start)."""
        if pattern == "spread":
            return rng.uniform(0, interval)
        if pattern == "even":
            return interval * i / clients
        return 0.0  # simultaneous

    # (when the next line is due, client index): a heap, so a turn of the loop costs
    # only the clients that are due, not all of them.
    due = [(start + offset(c.index), c.index) for c in cs]
    heapq.heapify(due)
    seq = dict.fromkeys(cs, 0)

    def tick(now: float) -> float:
        while due and due[0][0] <= now:
            when, index = heapq.heappop(due)
            c = cs[index]
            c.queue(marker.text(c.index, seq[c]))
            seq[c] += 1
            if when + interval < end:
                heapq.heappush(due, (when + interval, index))
        return max(0.0, due[0][0] - now) if due else 0.25

    def expected() -> int:
        return sum(seq.values()) * (clients - 1)

    def finished() -> bool:
        now = time.monotonic()
        return now >= end and (loop.deliveries >= expected() or now - loop.last_delivery > settle)

    try:
        cpu_before = _cpu(server_pid)
        own_before = time.process_time()
        loop.run(
            finished,
            end + 120.0,
            tick,
            progress=None
            if progress is None
            else lambda: progress(min(seconds, time.monotonic() - start), seconds),
        )
        cpu_after = _cpu(server_pid)
        generator = _generator_load(own_before, start)
    finally:
        loop.close()
    deliveries = loop.deliveries
    return SteadyResult(
        dialect.name,
        clients,
        rate,
        seconds,
        deliveries,
        expected(),
        _latency(loop),
        sum(c.out_of_order for c in cs),
        _us_per_delivery(cpu_before, cpu_after, deliveries),
        pattern,
        one_line_per_write,
        generator,
    )


def connect_storm(
    host: str, port: int, ctx: ssl.SSLContext | None, *, sessions: int, concurrency: int = 8
) -> ConnectResult:
    """`sessions` complete logins (TCP, TLS, hello, welcome), `concurrency` at a time."""

    def one(i: int) -> None:
        connect(host, port, ctx, SecureChat(), i, f"storm{i}").sock.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(sessions)))
    seconds = time.perf_counter() - start
    return ConnectResult(sessions, seconds, sessions / seconds)


def idle(
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    *,
    sessions: int,
    server_pid: int,
    progress: Progress | None = None,
) -> IdleResult:
    """The server's resident memory and threads per connected, idle session.

    Idle means not chatting: like a real client, each one keeps reading what the
    server sends (the other sessions' join notices), so nothing piles up in buffers.
    """
    before = sample(server_pid)
    loop = Loop([], Marker())
    try:
        for i in range(sessions):
            loop.add(connect(host, port, ctx, SecureChat(), i, f"idle{i}"))
            loop.pump()
            if progress is not None and (i % 100 == 99 or i == sessions - 1):
                progress(i + 1, sessions)
        settle = time.monotonic() + 1.0  # the last join notices
        while time.monotonic() < settle:
            loop.pump(0.1)
        after = sample(server_pid)
    finally:
        loop.close()
    return IdleResult(
        sessions, (after.rss_kib - before.rss_kib) / sessions, (after.threads - before.threads) / sessions
    )
