"""Benchmark scenarios. Each returns a result dataclass; nothing here prints."""

from __future__ import annotations

import array
import contextlib
import dataclasses
import heapq
import itertools
import multiprocessing
import random
import resource
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection

from .dialects import Dialect, SecureChat
from .loadgen import BenchClient, Loop, Marker, connect
from .procfs import sample
from .stats import LatencySummary, summarize

__all__ = [
    "GENERATOR_LIMIT",
    "PATTERNS",
    "BurstPart",
    "BurstResult",
    "ConnectResult",
    "DescriptorLimit",
    "GeneratorLoad",
    "IdleResult",
    "LoginDecile",
    "LoginsResult",
    "MergedBurst",
    "SteadyResult",
    "burst",
    "burst_expected",
    "connect_storm",
    "deciles",
    "growth",
    "idle",
    "logins",
    "merge_parts",
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

    cpu_seconds: float  # all its processes' together
    run_seconds: float
    busy: float  # its busiest process's CPU / run_seconds (one process: cpu_seconds / run_seconds)
    limited: bool  # busy >= GENERATOR_LIMIT: the figures measure the generator too
    processes: int = 1


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
    procs: int = 1  # generator processes


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
    dialect: str = "securechat"
    cpu_us_per_session: float | None = None  # the server's, login and close included
    generator: GeneratorLoad | None = None


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
    procs: int = 1,
    progress: Progress | None = None,
) -> BurstResult:
    """`senders` of `clients` each send `messages` lines as fast as the server takes them.

    Each line counts once per receiver other than its sender. The run ends when every
    line has arrived everywhere, or when nothing arrived for `settle` seconds (a server
    that loses lines), or after `timeout`. The rate is deliveries over the time from the
    first send to the last delivery. `one_line_per_write`: see `Loop`.

    `procs` > 1 splits the clients (and so the senders) over that many generator processes
    (forked: call it from a process without threads), client i in process i % procs; they
    log in, then all start at one moment, and their counts and latencies are merged. The
    generator's `busy` is then its busiest process's share, which shows whether the
    generator, not the server, was the limit. No progress is shown then.
    Raises `ValueError` for `procs` < 1, `RuntimeError` if a generator process fails.
    """
    if procs < 1:
        raise ValueError("procs must be at least 1")
    dialect = dialect or SecureChat()
    marker = Marker()
    if procs == 1:
        part, loop = _burst_part(
            host,
            port,
            ctx,
            dialect,
            list(range(clients)),
            senders,
            messages,
            marker.run,
            one_line_per_write,
            settle,
            timeout,
            server_pid,
            progress,
        )
        loop.close()
        parts = [part]
        cpu_before, cpu_after, start = part.server_cpu_before, part.server_cpu_after, part.start
    else:
        parts, cpu_before, cpu_after, start = _burst_in_processes(
            host,
            port,
            ctx,
            dialect,
            clients,
            senders,
            messages,
            marker.run,
            one_line_per_write,
            settle,
            timeout,
            server_pid,
            procs,
        )
    merged = merge_parts(parts, start)
    return BurstResult(
        dialect.name,
        clients,
        senders,
        messages,
        merged.deliveries,
        merged.expected,
        merged.seconds,
        merged.deliveries / merged.seconds,
        summarize([us / 1e6 for us in merged.latencies_us] or [0.0]),
        merged.out_of_order,
        _us_per_delivery(cpu_before, cpu_after, merged.deliveries),
        one_line_per_write,
        merged.generator,
        procs,
    )


@dataclass(frozen=True)
class BurstPart:
    """What one generator process of a burst measured (monotonic times: one clock for every
    process of the machine)."""

    deliveries: int
    expected: int
    out_of_order: int
    latencies_us: list[int]
    start: float  # when it started sending
    end: float  # when its loop stopped
    last_delivery: float  # when a line last arrived at one of its clients
    cpu_seconds: float  # its own CPU from `start` to `end`
    server_cpu_before: float | None = None  # in-process runs only
    server_cpu_after: float | None = None


@dataclass(frozen=True)
class MergedBurst:
    deliveries: int
    expected: int
    out_of_order: int
    latencies_us: list[int]
    seconds: float  # from the common start to the last delivery anywhere
    generator: GeneratorLoad


def burst_expected(indexes: list[int], senders: int, messages: int) -> int:
    """Deliveries owed to the clients `indexes` when clients 0..senders-1 each send
    `messages` lines: every line once at every client but its sender."""
    own = sum(1 for i in indexes if i < senders)
    return (senders * len(indexes) - own) * messages


def merge_parts(parts: list[BurstPart], start: float) -> MergedBurst:
    """One burst's figures from its processes' parts, all started at `start`.

    The generator's `busy` is the busiest process's CPU over the run's length (each
    process is one thread: one near 1.0 was the limit), `cpu_seconds` all of theirs.
    Raises `ValueError` for no parts.
    """
    if not parts:
        raise ValueError("no parts")
    last = max(p.last_delivery for p in parts)
    wall = max(1e-9, max(p.end for p in parts) - start)
    busy = max(p.cpu_seconds / max(1e-9, p.end - start) for p in parts)
    return MergedBurst(
        sum(p.deliveries for p in parts),
        sum(p.expected for p in parts),
        sum(p.out_of_order for p in parts),
        [us for p in parts for us in p.latencies_us],
        max(1e-9, last - start),
        GeneratorLoad(sum(p.cpu_seconds for p in parts), wall, busy, busy >= GENERATOR_LIMIT, len(parts)),
    )


def _burst_part(
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    dialect: Dialect,
    indexes: list[int],
    senders: int,
    messages: int,
    run: int,
    one_line_per_write: bool,
    settle: float,
    timeout: float,
    server_pid: int | None,
    progress: Progress | None,
    ready: Callable[[], float] | None = None,
) -> tuple[BurstPart, Loop]:
    """Log in the clients `indexes` and run their share of a burst: the part and the loop,
    for the caller to close (when closing no longer counts against the server's CPU).
    `ready()` (in a generator process) says we are logged in and returns the common start;
    without it the start is now and the server's CPU is read around the run here."""
    cs: list[BenchClient] = []
    try:
        for i in indexes:
            cs.append(connect(host, port, ctx, dialect, i, f"burst{i}"))
    except BaseException:
        for c in cs:
            c.sock.close()
        raise
    marker = Marker(run)
    loop = Loop(cs, marker, one_line_per_write)
    expected = burst_expected(indexes, senders, messages)
    try:
        cpu_before = _cpu(server_pid) if ready is None else None
        start = ready() if ready is not None else time.monotonic()
        own_before = time.process_time()
        loop.last_delivery = time.monotonic()
        for sender in cs:
            if sender.index < senders:
                for i in range(messages):
                    sender.queue(marker.text(sender.index, i))
        loop.run(
            lambda: loop.deliveries >= expected or time.monotonic() - loop.last_delivery > settle,
            start + timeout,
            progress=None if progress is None else lambda: progress(loop.deliveries, expected),
        )
        end = time.monotonic()
        cpu_after = _cpu(server_pid) if ready is None else None
        own = time.process_time() - own_before
        last = loop.last_delivery if loop.deliveries else start
    except BaseException:
        loop.close()
        raise
    part = BurstPart(
        loop.deliveries,
        expected,
        sum(c.out_of_order for c in cs),
        loop.latencies_us,
        start,
        end,
        last,
        own,
        cpu_before,
        cpu_after,
    )
    return part, loop


def _burst_child(
    conn: Connection,
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    dialect: Dialect,
    indexes: list[int],
    senders: int,
    messages: int,
    run: int,
    one_line_per_write: bool,
    settle: float,
    timeout: float,
) -> None:
    """A generator process's body: log in, say "ready", wait for the start, run, send the
    part (latencies packed), wait for "close", close."""

    def ready() -> float:
        conn.send(("ready", None, None))
        start: float = conn.recv()
        return start

    try:
        part, loop = _burst_part(
            host,
            port,
            ctx,
            dialect,
            indexes,
            senders,
            messages,
            run,
            one_line_per_write,
            settle,
            timeout,
            None,
            None,
            ready,
        )
        try:
            packed = array.array("q", part.latencies_us).tobytes()
            conn.send(("done", dataclasses.replace(part, latencies_us=[]), packed))
            conn.recv()  # "close": the parent has read the server's CPU
        finally:
            loop.close()
    except BaseException as exc:  # reported to the parent, which raises
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}", None))
    finally:
        conn.close()


def _burst_in_processes(
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    dialect: Dialect,
    clients: int,
    senders: int,
    messages: int,
    run: int,
    one_line_per_write: bool,
    settle: float,
    timeout: float,
    server_pid: int | None,
    procs: int,
) -> tuple[list[BurstPart], float | None, float | None, float]:
    """Run a burst's parts in `procs` forked processes: (parts, server CPU before and after,
    the common start). The start is given once every process has logged in."""
    fork = multiprocessing.get_context("fork")
    pipes: list[Connection] = []
    children = []
    for k in range(procs):
        mine, theirs = fork.Pipe()
        child = fork.Process(
            target=_burst_child,
            args=(
                theirs,
                host,
                port,
                ctx,
                dialect,
                list(range(k, clients, procs)),
                senders,
                messages,
                run,
                one_line_per_write,
                settle,
                timeout,
            ),
            daemon=True,
        )
        child.start()
        theirs.close()
        pipes.append(mine)
        children.append(child)
    try:

        def receive(conn: Connection, want: str) -> tuple[object, bytes | None]:
            if not conn.poll(timeout + 120.0):
                raise RuntimeError("a generator process did not answer in time")
            try:
                what, value, extra = conn.recv()
            except EOFError:
                raise RuntimeError("a generator process died") from None
            if what == "error":
                raise RuntimeError(f"a generator process failed: {value}")
            if what != want:
                raise RuntimeError(f"a generator process said {what!r}, not {want!r}")
            return value, extra

        for conn in pipes:
            receive(conn, "ready")
        cpu_before = _cpu(server_pid)
        start = time.monotonic()
        for conn in pipes:
            conn.send(start)
        parts = []
        for conn in pipes:
            value, packed = receive(conn, "done")
            assert isinstance(value, BurstPart) and packed is not None
            latencies = array.array("q")
            latencies.frombytes(packed)
            parts.append(dataclasses.replace(value, latencies_us=latencies.tolist()))
        cpu_after = _cpu(server_pid)
        for conn in pipes:
            conn.send("close")
        return parts, cpu_before, cpu_after, start
    finally:
        # Closed first: a process still waiting for the start (another one failed) sees
        # the end of its pipe and stops at once.
        for conn in pipes:
            conn.close()
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
                child.join()


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
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    *,
    sessions: int,
    concurrency: int = 8,
    dialect: Dialect | None = None,
    server_pid: int | None = None,
) -> ConnectResult:
    """`sessions` complete logins (TCP, TLS, the dialect's login: securechat's hello and
    welcome, IRC's registration and JOIN), `concurrency` at a time, each closed at once.

    The server's CPU per session covers its whole login and close, not only the TLS
    handshake. The generator's `busy` is its CPU (all threads) over the run's length.
    """
    dialect = dialect or SecureChat()

    def one(i: int) -> None:
        connect(host, port, ctx, dialect, i, f"storm{i}").sock.close()

    cpu_before = _cpu(server_pid)
    own_before = time.process_time()
    begun = time.monotonic()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(sessions)))
    seconds = time.perf_counter() - start
    generator = _generator_load(own_before, begun)
    cpu_after = _cpu(server_pid)
    return ConnectResult(
        sessions,
        seconds,
        sessions / seconds,
        dialect.name,
        _us_per_delivery(cpu_before, cpu_after, sessions),
        generator,
    )


@dataclass(frozen=True)
class LoginDecile:
    """One tenth of a `logins` run: the room had `members` to `members + logins - 1`
    sessions in it while these logged in."""

    members: int
    logins: int
    wall_ms_per_login: float  # the decile's wall time over its logins
    p50_ms: float  # the median of its logins' connect-to-welcome times
    cpu_us_per_login: float | None  # the server's CPU over the decile, per login


@dataclass(frozen=True)
class LoginsResult:
    dialect: str
    clients: int
    seconds: float  # from the first connect to the last welcome
    per_second: float
    cpu_us_per_login: float | None
    deciles: list[LoginDecile]
    #: The last decile's figure over the first's: 1.0 is flat as the room grows.
    wall_growth: float
    cpu_growth: float | None
    #: Once all are in and the server has been quiet for a moment: the server's resident
    #: memory and threads per session (the `idle` figures, at this many sessions).
    rss_kib_per_session: float | None
    threads_per_session: float | None
    open_files_limit: int  # the generator's soft RLIMIT_NOFILE
    generator: GeneratorLoad


class DescriptorLimit(OSError):
    """This process may not open a descriptor per client: raise RLIMIT_NOFILE (ulimit -n)."""


def deciles(marks: list[tuple[int, float, float | None]], login_times: list[float]) -> list[LoginDecile]:
    """Per decile, from `marks` (login index, monotonic time, server CPU or None) taken at
    the start of every tenth and after the last login, and each login's seconds."""
    out = []
    for (first, t0, c0), (last, t1, c1) in itertools.pairwise(marks):
        n = last - first
        if n <= 0:
            continue
        times = sorted(login_times[first:last])
        out.append(
            LoginDecile(
                first,
                n,
                (t1 - t0) / n * 1e3,
                times[len(times) // 2] * 1e3,
                None if c0 is None or c1 is None else (c1 - c0) / n * 1e6,
            )
        )
    return out


def growth(first: float | None, last: float | None) -> float | None:
    """`last` over `first` (how much a per-login figure grew), or None without both."""
    if first is None or last is None or first <= 0:
        return None
    return last / first


def logins(
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    *,
    clients: int,
    dialect: Dialect | None = None,
    server_pid: int | None = None,
    progress: Progress | None = None,
) -> LoginsResult:
    """`clients` clients log in one after another, each waiting for its welcome (IRC: the
    end of its JOIN's NAMES) before the next starts; all stay connected, in one room.

    Between two logins the generator reads what is ready (the notices of the new member
    to every member: a real client reads them), so the time per login includes a room's
    worth of notices on both sides. Each tenth of the run is measured on its own (wall
    time and server CPU per login) so that growth with the room shows. Needs a
    descriptor per client: raises `DescriptorLimit` when RLIMIT_NOFILE's soft limit is too
    low (the caller raises it to the hard limit first); `LoginRefused`, `OSError`.
    """
    dialect = dialect or SecureChat()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < clients + 64:
        raise DescriptorLimit(
            f"{clients} clients need about {clients + 64} open files; this process may open "
            f"{soft} (raise it: ulimit -n)"
        )
    step = max(1, clients // 10)
    before = sample(server_pid) if server_pid is not None else None
    loop = Loop([], Marker())
    marks: list[tuple[int, float, float | None]] = []
    times: list[float] = []
    try:
        own_before = time.process_time()
        start = time.monotonic()
        for i in range(clients):
            if i % step == 0:
                marks.append((i, time.monotonic(), _cpu(server_pid)))
            t = time.monotonic()
            loop.add(connect(host, port, ctx, dialect, i, f"login{i}"))
            times.append(time.monotonic() - t)
            loop.pump()
            if progress is not None and (i % 100 == 99 or i == clients - 1):
                progress(i + 1, clients)
        end = time.monotonic()
        marks.append((clients, end, _cpu(server_pid)))
        generator = _generator_load(own_before, start)
        # The last notices, then the memory of `clients` idle sessions.
        quiet = time.monotonic() + 1.0
        while time.monotonic() < quiet:
            loop.pump(0.1)
        after = sample(server_pid) if server_pid is not None else None
    finally:
        loop.close()
    tenths = deciles(marks, times)
    seconds = max(1e-9, end - start)
    total_cpu = None if marks[0][2] is None or marks[-1][2] is None else marks[-1][2] - marks[0][2]
    return LoginsResult(
        dialect.name,
        clients,
        seconds,
        clients / seconds,
        None if total_cpu is None else total_cpu / clients * 1e6,
        tenths,
        growth(tenths[0].wall_ms_per_login, tenths[-1].wall_ms_per_login) or 0.0,
        growth(tenths[0].cpu_us_per_login, tenths[-1].cpu_us_per_login),
        None if before is None or after is None else (after.rss_kib - before.rss_kib) / clients,
        None if before is None or after is None else (after.threads - before.threads) / clients,
        int(soft),
        generator,
    )


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
