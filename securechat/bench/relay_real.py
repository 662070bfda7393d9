"""`relay --clients real`: whispers between real clients, end to end, beside the opaque figure.

The opaque `relay` scenario measures the server alone (it replays pre-made whispers and
acknowledges without decrypting). This one runs `pairs` real `securechat.client` sessions
on each side, identity users with their keys in memory: every whisper is encrypted by its
sender's Double Ratchet, stored by the server, pushed, decrypted and acknowledged by the
recipient's client, and counted when the sender's client reports `delivered`. It is the
end-to-end figure a user sees, the clients' cryptography and threads included.

The recipients run in a forked process of their own (one interpreter lock would otherwise
serialise both sides' cryptography), the senders in the calling process, a thread each,
keeping `window` whispers waiting for their first status. Each pair's session is started
(X3DH, one whisper delivered) before the clock starts. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

from ..client import Client
from ..protocol import WhisperStatus
from .procfs import loadavg, sample
from .stats import LatencySummary, summarize
from .whisper import identity_client

__all__ = ["RealRelayResult", "relay_real"]

_TEXT = "0123456789 abcdefghij klmnopqrst"  # a short chat line, as the whisper scenario's


@dataclass(frozen=True)
class RealRelayResult:
    clients: str  # "real"
    pairs: int
    whispers: int  # measured, after each pair's first (session-starting) whisper
    delivered: int  # `delivered` statuses the senders' clients reported
    seconds: float  # from the first measured whisper to the last `delivered`
    whispers_per_s: float
    server_cpu_us_per_whisper: float | None
    #: Both generator processes' CPU, and the busier one's share of the run (near 1.0:
    #: the clients, not the server, were the limit).
    generator_cpu_s: float
    generator_busy: float
    delivered_latency: LatencySummary  # whisper() called -> its `delivered`
    load_before: float | None
    load_after: float | None


def _recipients(conn: Connection, host: str, port: int, ctx: ssl.SSLContext, nicks: list[str]) -> None:
    """The recipients' process: log in, say "ready", read every client's events (the client
    decrypts and acknowledges on its reader thread; reading keeps its event queue short)
    until told "stop", then send this process's CPU over the run."""
    try:
        clients = [identity_client(host, port, ctx, nick, "") for nick in nicks]
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    stop = threading.Event()

    def drain(client: Client) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                client.next_event(0.2)

    threads = [threading.Thread(target=drain, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    conn.send(("ready", None))
    with contextlib.suppress(EOFError, OSError):
        if conn.recv() == "start":  # the measured part begins ("stop": the senders failed)
            own = time.process_time()
            conn.recv()  # "stop"
            conn.send(("cpu", time.process_time() - own))
    stop.set()
    for t in threads:
        t.join(5)
    for c in clients:
        c.close()
    conn.close()


def relay_real(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    *,
    pairs: int,
    whispers: int,
    window: int = 8,
    server_pid: int | None = None,
    timeout: float = 300.0,
    progress: Callable[[int, int], None] | None = None,
) -> RealRelayResult:
    """`whispers` whispers in all between `pairs` pairs of new identity users (`xbench-...`
    nicks, registered on the server), spread evenly, each sender keeping `window` in
    flight. Forks (call it from a process without threads). Raises `RuntimeError` if the
    recipients' process fails, `TimeoutError` if not all are delivered within `timeout`,
    and what logging in raises (`ConnectionError`, `OSError`).
    """
    tag = os.urandom(3).hex()
    recipient_nicks = [f"xbench-r{i}-{tag}" for i in range(pairs)]
    fork = multiprocessing.get_context("fork")
    mine, theirs = fork.Pipe()
    child = fork.Process(target=_recipients, args=(theirs, host, port, ctx, recipient_nicks), daemon=True)
    child.start()
    theirs.close()
    senders: list[Client] = []
    try:
        if not mine.poll(timeout):
            raise RuntimeError("the recipients did not log in in time")
        what, detail = mine.recv()
        if what != "ready":
            raise RuntimeError(f"the recipients' process failed: {detail}")
        senders = [identity_client(host, port, ctx, f"xbench-s{i}-{tag}", "") for i in range(pairs)]
        # Each pair's session first (key fetch, X3DH): not part of the steady figure.
        for sender, to in zip(senders, recipient_nicks, strict=True):
            _whisper_and_wait(sender, to, 1, 1, timeout, [])
        counts = [whispers // pairs + (1 if i < whispers % pairs else 0) for i in range(pairs)]
        latencies: list[float] = []
        delivered = [0] * pairs
        errors: list[BaseException] = []
        load_before = loadavg()
        cpu_before = sample(server_pid).cpu_seconds if server_pid is not None else None
        mine.send("start")
        own = time.process_time()
        start = time.monotonic()

        def run(i: int) -> None:
            try:
                delivered[i] = _whisper_and_wait(
                    senders[i], recipient_nicks[i], counts[i], window, timeout, latencies
                )
            except BaseException as exc:  # reported after the join
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(pairs)]
        for t in threads:
            t.start()
        deadline = start + timeout
        for t in threads:
            while t.is_alive() and time.monotonic() < deadline:
                t.join(0.5)
                if progress is not None:
                    progress(sum(delivered), whispers)
        seconds = max(1e-9, time.monotonic() - start)
        cpu_after = sample(server_pid).cpu_seconds if server_pid is not None else None
        own = time.process_time() - own
        mine.send("stop")
        theirs_cpu = mine.recv()[1] if mine.poll(30) else 0.0
        if errors:
            raise errors[0]
        if any(t.is_alive() for t in threads):
            raise TimeoutError(f"only {sum(delivered)} of {whispers} whispers delivered in {timeout:.0f} s")
    finally:
        for s in senders:
            s.close()
        with contextlib.suppress(OSError):
            mine.send("stop")
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join()
        mine.close()
    done = sum(delivered)
    return RealRelayResult(
        "real",
        pairs,
        whispers,
        done,
        seconds,
        done / seconds,
        None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) / max(1, done) * 1e6,
        own + theirs_cpu,
        max(own, theirs_cpu) / seconds,
        summarize(latencies or [0.0]),
        load_before,
        loadavg(),
    )


def _whisper_and_wait(
    client: Client, to: str, count: int, window: int, timeout: float, latencies: list[float]
) -> int:
    """Whisper `count` lines to `to`, at most `window` without a status yet; return once each
    has been reported `delivered` (how many were). Raises `TimeoutError`, `ConnectionError`."""
    sent_at: dict[str, float] = {}
    waiting: set[str] = set()  # sent, no status yet
    done = 0
    sent = 0
    deadline = time.monotonic() + timeout
    while done < count:
        if sent < count and len(waiting) < window:
            msg_id = client.whisper(to, f"{sent} {_TEXT}")
            sent_at[msg_id] = time.monotonic()
            waiting.add(msg_id)
            sent += 1
            continue
        event = client.wait_for(WhisperStatus, max(0.0, deadline - time.monotonic()))
        assert isinstance(event, WhisperStatus)
        if event.id not in sent_at:
            continue
        waiting.discard(event.id)  # "stored" or an overtaking "delivered": the window moves
        if event.status == "delivered":
            latencies.append(time.monotonic() - sent_at.pop(event.id))
            done += 1
        elif event.status == "failed":
            raise ConnectionError(f"whisper {event.id} failed: {event.reason}")
    return done
