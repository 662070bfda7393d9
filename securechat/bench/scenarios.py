"""Benchmark scenarios. Each returns a result dataclass; nothing here prints."""

from __future__ import annotations

import random
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .loadgen import BenchClient, Loop, connect
from .procfs import sample
from .stats import LatencySummary, summarize

__all__ = [
    "BurstResult",
    "ConnectResult",
    "IdleResult",
    "SteadyResult",
    "burst",
    "connect_storm",
    "idle",
    "steady",
]


@dataclass(frozen=True)
class BurstResult:
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


@dataclass(frozen=True)
class SteadyResult:
    clients: int
    rate: float
    seconds: float
    deliveries: int
    expected: int
    latency: LatencySummary
    out_of_order: int
    cpu_us_per_delivery: float | None


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


class _Tally:
    """Counts room lines per receiver, checks per-sender order, collects latencies."""

    def __init__(self) -> None:
        self.latencies: list[float] = []

    def __call__(self, client: BenchClient, frame: dict[str, object]) -> None:
        if frame.get("history"):
            return  # lines from before this run
        seq_text, _, stamp = str(frame["text"]).partition(" ")
        nick = str(frame["nick"])
        seq = int(seq_text)
        if seq != client.last_seq.get(nick, -1) + 1:
            client.out_of_order += 1
        client.last_seq[nick] = seq
        client.received += 1
        self.latencies.append(time.perf_counter() - float(stamp))


def _clients(host: str, port: int, ctx: ssl.SSLContext, count: int, prefix: str) -> list[BenchClient]:
    return [connect(host, port, ctx, f"{prefix}{i}") for i in range(count)]


def _cpu(pid: int | None) -> float | None:
    return sample(pid).cpu_seconds if pid is not None else None


def _us_per_delivery(cpu_before: float | None, cpu_after: float | None, deliveries: int) -> float | None:
    """Server CPU microseconds per delivered line, when the server's pid is known."""
    if cpu_before is None or cpu_after is None:
        return None
    return (cpu_after - cpu_before) / max(1, deliveries) * 1e6


def burst(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    *,
    clients: int,
    senders: int,
    messages: int,
    server_pid: int | None = None,
    timeout: float = 300.0,
) -> BurstResult:
    """`senders` of `clients` each send `messages` lines as fast as the server takes them."""
    cs = _clients(host, port, ctx, clients, "burst")
    tally = _Tally()
    loop = Loop(cs, tally)
    try:
        expected_each = senders * messages
        cpu_before = _cpu(server_pid)
        start = time.perf_counter()
        for sender in cs[:senders]:
            for i in range(messages):
                sender.queue_say(f"{i} {time.perf_counter():.6f}")
        loop.run(lambda: all(c.received >= expected_each for c in cs), time.monotonic() + timeout)
        seconds = time.perf_counter() - start
        cpu_after = _cpu(server_pid)
    finally:
        loop.close()
    deliveries = sum(c.received for c in cs)
    return BurstResult(
        clients,
        senders,
        messages,
        deliveries,
        expected_each * clients,
        seconds,
        deliveries / seconds,
        summarize(tally.latencies or [0.0]),
        sum(c.out_of_order for c in cs),
        _us_per_delivery(cpu_before, cpu_after, deliveries),
    )


def steady(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    *,
    clients: int,
    rate: float,
    seconds: float,
    server_pid: int | None = None,
) -> SteadyResult:
    """Every client sends `rate` lines per second for `seconds`, at evenly spread moments."""
    cs = _clients(host, port, ctx, clients, "steady")
    tally = _Tally()
    loop = Loop(cs, tally)
    rng = random.Random(1)  # noqa: S311 -- spreads send times; nothing secret
    interval = 1.0 / rate
    start = time.monotonic()
    end = start + seconds
    due = {c: start + rng.uniform(0, interval) for c in cs}
    seq = dict.fromkeys(cs, 0)

    def tick(now: float) -> float:
        for c, when in due.items():
            if when <= now and when < end:
                c.queue_say(f"{seq[c]} {time.perf_counter():.6f}")
                seq[c] += 1
                due[c] = when + interval
        upcoming = [w for w in due.values() if w < end]
        return max(0.0, min(upcoming) - now) if upcoming else 0.5

    try:
        cpu_before = _cpu(server_pid)
        loop.run(
            lambda: time.monotonic() >= end and all(c.received >= sum(seq.values()) for c in cs),
            end + 60.0,
            tick,
        )
        cpu_after = _cpu(server_pid)
    finally:
        loop.close()
    deliveries = sum(c.received for c in cs)
    return SteadyResult(
        clients,
        rate,
        seconds,
        deliveries,
        sum(seq.values()) * clients,
        summarize(tally.latencies or [0.0]),
        sum(c.out_of_order for c in cs),
        _us_per_delivery(cpu_before, cpu_after, deliveries),
    )


def connect_storm(
    host: str, port: int, ctx: ssl.SSLContext, *, sessions: int, concurrency: int = 8
) -> ConnectResult:
    """`sessions` complete logins (TCP, TLS, hello, welcome), `concurrency` at a time."""

    def one(i: int) -> None:
        connect(host, port, ctx, f"storm{i}").sock.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(sessions)))
    seconds = time.perf_counter() - start
    return ConnectResult(sessions, seconds, sessions / seconds)


def idle(host: str, port: int, ctx: ssl.SSLContext, *, sessions: int, server_pid: int) -> IdleResult:
    """The server's resident memory and threads per connected, idle session."""
    before = sample(server_pid)
    cs = _clients(host, port, ctx, sessions, "idle")
    try:
        after = sample(server_pid)
    finally:
        for c in cs:
            c.sock.close()
    return IdleResult(
        sessions, (after.rss_kib - before.rss_kib) / sessions, (after.threads - before.threads) / sessions
    )
