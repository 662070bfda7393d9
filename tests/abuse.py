"""`make abuse`: what each attack achieves against the limit that should stop it.

Every attack runs against real processes: a `securechat server` process (default settings,
as an operator would run it) attacked from many source addresses across 127.0.0.0/8, or a
real `securechat client --json` process talking to a hostile TLS server run here. Each
attack prints what it achieved next to the product's promise, and fails when a promise
does not hold. Only 127.0.0.0/8 is ever contacted (client sockets are bound to addresses
such as 127.20.1.5 before connecting to 127.0.0.1).

Limits are read from the product where it states them (`ServerConfig` defaults, client
constants): the suite checks the product's own promise. Where the product states none yet,
the suite's own bound (`Limit.fallback`) applies and the table says "suite". Measurements
of memory and CPU come from /proc/PID/status (VmRSS, Threads) and /proc/PID/stat (utime,
stime).

Every wait is on an event (a frame, a connection, a process state) with a deadline; the
only pauses are the attacks' own pacing (a slow reader, a trickle). Every process and
socket opened is closed at the end, also on failure.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import inspect
import json
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos import Proc, free_port, git_revision
from server_process import server_argv

from securechat.e2e.bundle import OPK_TARGET, PrekeySecrets
from securechat.e2e.identity import Identity
from securechat.e2e.login import login_message
from securechat.protocol import (
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    Auth,
    Event,
    FetchKeys,
    Hello,
    KeyIdentity,
    Keys,
    OneTimePrekeyRecord,
    PublishKeys,
    SignedPrekeyRecord,
    Whisper,
    encode,
)
from securechat.protocol.keys import MAX_CIPHERTEXT_BYTES, MAX_OPKS_PER_PUBLISH
from securechat.server.config import ServerConfig
from securechat.transport import server_context

Json = dict[str, Any]

HOST = "127.0.0.1"
#: Longest wait for one event (a frame, a banner, a reconnect): generous for a busy CI
#: machine; a passing run never waits this long, since every wait ends on its event.
TIMEOUT = 15.0
LONG = os.environ.get("SECURECHAT_ABUSE") == "long"
#: Attack the product from another source tree (e.g. a `git archive` of an older commit,
#: for the baseline) instead of the installed one: a directory holding `securechat/`.
SOURCE = os.environ.get("SECURECHAT_ABUSE_SOURCE", "")
REPO = Path(__file__).resolve().parent.parent
DEFAULTS = ServerConfig()


def scale(short: int, long: int) -> int:
    return long if LONG else short


def revision() -> str:
    return f"source {SOURCE}" if SOURCE else git_revision(REPO)


# -- limits: the product's promise, or the suite's own bound ---------------------------------


@dataclass(frozen=True)
class Limit:
    """A promise an attack checks. `setting` names where the product states it:
    "ServerConfig.x" (a default), "PrefixLimits.x" (a per-prefix limit as the server
    works it out from the defaults), "module:CONSTANT" or "module:Class.parameter" (a
    constructor's default). `fallback` is the suite's own bound while the product states
    none (the table then says "suite")."""

    what: str
    setting: str
    fallback: float

    def lookup(self) -> tuple[float, str]:
        value = _product_value(self.setting)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), self.setting
        return float(self.fallback), "suite"

    @property
    def value(self) -> float:
        return self.lookup()[0]

    def describe(self, fmt: str = "{:g}") -> str:
        value, where = self.lookup()
        return f"<= {fmt.format(value)} ({where})"


@dataclass(frozen=True)
class RateLimit:
    """A token bucket the product promises: `burst` at once, then `rate` per second
    (`rate` read as "per hour" with `per=3600`, or as "one per N seconds" with `every`)."""

    what: str
    burst: Limit
    rate: Limit
    per: float = 1.0
    every: bool = False

    def per_second(self) -> float:
        value = self.rate.value
        if self.every:
            return 1.0 / value if value > 0 else 0.0
        return value / self.per

    def allowed(self, elapsed: float) -> float:
        """The most the bucket lets through in `elapsed` seconds from full."""
        return self.burst.value + self.per_second() * elapsed

    def describe(self, elapsed: float) -> str:
        where = {self.burst.lookup()[1], self.rate.lookup()[1]}
        return (
            f"<= {self.allowed(elapsed):.0f} = {self.burst.value:g} + {self.per_second():.3g}/s x "
            f"{elapsed:.1f} s ({', '.join(sorted(where))})"
        )


def _product_value(name: str) -> object:
    if not name:
        return None
    head, _, attr = name.partition(".")
    if head == "ServerConfig" and ":" not in name:
        return getattr(DEFAULTS, attr, None)
    try:
        if head == "PrefixLimits" and ":" not in name:
            from securechat.server.addresses import PrefixLimits  # type: ignore[import-not-found,unused-ignore]

            return getattr(PrefixLimits.from_config(DEFAULTS), attr, None)
        module, _, what = name.partition(":")
        owner, _, param = what.partition(".")
        found = getattr(importlib.import_module(module), owner, None)
        if param and found is not None:
            default = inspect.signature(found).parameters.get(param)
            return None if default is None else default.default
        return found
    except (ImportError, AttributeError, ValueError):
        return None


class Pacer:
    """An attacker that knows the limit: spends a mirror of the server's token bucket, so
    it sends as fast as the server lets it without being cut off for flooding. The
    pause is the attack's own pacing."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, time.monotonic()

    def take(self, cost: float = 1.0) -> None:
        if self.rate <= 0:
            return
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= cost:
                self.tokens -= cost
                return
            time.sleep((cost - self.tokens) / self.rate)


# -- figures ----------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    achieved: str
    limit: str = ""
    ok: bool | None = None  # None: measured only, not a promise


@dataclass
class Figures:
    """What one attack achieved: rows of (figure, achieved, limit, verdict)."""

    attack: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    outcome: str = ""
    raw: dict[str, Any] = field(default_factory=dict)  # numbers for the JSON file

    def measure(self, figure: str, achieved: object) -> None:
        self.rows.append(Row(figure, _fmt(achieved)))
        self.raw[figure] = achieved

    def check(self, figure: str, achieved: object, ok: bool, limit: str) -> None:
        self.rows.append(Row(figure, _fmt(achieved), limit, ok))
        self.raw[figure] = achieved

    def at_most(self, figure: str, achieved: float, limit: Limit, fmt: str = "{:g}") -> None:
        self.check(figure, achieved, achieved <= limit.value, limit.describe(fmt))

    def problems(self) -> list[str]:
        return [f"{r.figure}: {r.achieved} (limit {r.limit})" for r in self.rows if r.ok is False]

    def as_json(self) -> Json:
        return {
            "attack": self.attack,
            "outcome": self.outcome,
            "seconds": round(self.seconds, 1),
            "rows": [r.__dict__ for r in self.rows],
            "notes": self.notes,
            "raw": self.raw,
        }


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(rows: list[Figures]) -> str:
    """One line per figure: attack, figure, achieved, limit, verdict; then the notes."""
    if not rows:
        return "(no abuse figures)"
    body = [["attack", "figure", "achieved", "limit", "verdict"]]
    for f in rows:
        for i, r in enumerate(f.rows):
            verdict = "" if r.ok is None else ("held" if r.ok else "BEATEN")
            body.append([f.attack if i == 0 else "", r.figure, r.achieved, r.limit, verdict])
    widths = [max(len(r[i]) for r in body) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  [{f.attack}] {n}" for f in rows for n in f.notes]
    return "\n".join(lines + (["notes:", *notes] if notes else []))


def write_figures(path: Path, rows: list[Figures]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "revision": revision(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "long": LONG,
        "attacks": [f.as_json() for f in rows],
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


# -- /proc ------------------------------------------------------------------------------------


def proc_status(pid: int, name: str) -> int:
    """A number from /proc/PID/status: "VmRSS" (KiB), "Threads"; 0 once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of `pid` so far (/proc/PID/stat fields 14 and 15)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll `predicate` (a /proc reading, a counter) until true or `timeout`; whether it came true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


# -- addresses across 127.0.0.0/8 -------------------------------------------------------------


def subnet(n: int) -> str:
    """The n-th /24 the suite attacks from: 127.(20 + n // 200).(n % 200).0/24, written
    without the last byte. Never 127.0.0.0/24, where the legitimate users come from."""
    return f"127.{20 + n // 200}.{n % 200}"


def hosts(prefix: str, count: int, first: int = 1) -> list[str]:
    if first + count > 255:
        raise ValueError("a /24 holds 254 hosts")
    return [f"{prefix}.{h}" for h in range(first, first + count)]


def tcp_from(source: str, port: int, timeout: float = TIMEOUT, rcvbuf: int = 0) -> socket.socket:
    """A TCP connection to 127.0.0.1:`port` from the address `source` (any of 127.0.0.0/8);
    `rcvbuf` sets a small receive buffer (a slow reader whose kernel does not absorb much)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        raise
    return sock


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- processes ----------------------------------------------------------------------------------


def product_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    if SOURCE:
        env["PYTHONPATH"] = SOURCE + os.pathsep + env.get("PYTHONPATH", "")
    return env


class ServerUnderAttack:
    """`securechat server` on 127.0.0.1 with its default limits, logging at info."""

    def __init__(self, workdir: Path, cert_files: dict[str, str], *extra: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.data_dir = workdir / "server-data"
        self._banner = threading.Event()
        argv = server_argv(
            self.port, self.data_dir, cert_files, "--log-level", "info", *extra, host=HOST, init=True
        )
        self.proc = Proc(
            argv,
            env=product_env({}),
            log=workdir / "server.log",
            on_line=self._on_line,
            cwd=workdir,
            stdin=False,
        )
        if not wait_until(lambda: self._banner.is_set() or not self.proc.alive(), TIMEOUT):
            self.stop()
            raise AssertionError("server did not start in time")
        if not self._banner.is_set():
            log = self.log_text()
            self.stop()
            raise AssertionError(f"server did not start:\n{log[-3000:]}")

    def _on_line(self, line: str) -> None:
        if f":{self.port} (TLS)" in line:
            self._banner.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def threads(self) -> int:
        return proc_status(self.pid, "Threads")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.proc.alive()

    def db_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.data_dir.glob("securechat.db*") if p.is_file())

    def log_text(self) -> str:
        return self.proc.log_text()

    def stop(self) -> None:
        if self.proc.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.popen.wait(TIMEOUT)
        self.proc.reap()


# -- an attacker's connection ------------------------------------------------------------------


class Closed(Exception):
    """The server ended the connection (EOF or reset)."""


class Peer:
    """One connection to the server from `source`: TLS, JSON lines both ways, one thread."""

    def __init__(
        self, port: int, ctx: ssl.SSLContext, source: str, timeout: float = TIMEOUT, rcvbuf: int = 0
    ) -> None:
        raw = tcp_from(source, port, timeout, rcvbuf)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        except (OSError, ssl.SSLError):
            raw.close()
            raise
        self.source = source
        self.timeout = timeout
        self._buf = b""
        self.closed = False
        self.seen: Counter[str] = Counter()

    def send(self, frame: bytes | Event) -> None:
        data = encode(frame) if isinstance(frame, Event) else frame
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def _frame(self) -> Json | None:
        if b"\n" not in self._buf:
            return None
        line, _, self._buf = self._buf.partition(b"\n")
        obj = json.loads(line)
        self.seen[str(obj.get("type"))] += 1
        return obj if isinstance(obj, dict) else {"type": "?"}

    def _fill(self, timeout: float, size: int = 65536) -> int:
        """Read once (at most `size` bytes, within `timeout`); how many came."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(size)
        except (ConnectionError, ssl.SSLError) as exc:
            self.closed = True
            raise Closed(str(exc)) from None
        if not chunk:
            self.closed = True
            raise Closed("EOF")
        self._buf += chunk
        return len(chunk)

    def read(self, timeout: float | None = None) -> Json:
        """The next frame; raises `TimeoutError` or `Closed`."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (frame := self._frame()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame in time")
            self._fill(left)
        return frame

    def poll(self) -> list[Json]:
        """Every frame already here, without waiting. Raises `Closed`."""
        out = []
        while self.sock.pending() or select.select([self.sock], [], [], 0)[0]:
            try:
                self._fill(0.5)
            except TimeoutError:
                break
        while (frame := self._frame()) is not None:
            out.append(frame)
        return out

    def expect(self, *types: str, timeout: float | None = None) -> Json:
        """The first frame of one of `types`, or a fatal error frame (returned too)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.read(max(0.0, deadline - time.monotonic()))
            if frame.get("type") in types or (frame.get("type") == "error" and frame.get("fatal")):
                return frame

    def login(self, nick: str, identity: Identity | None = None) -> Json:
        """Log in (as a guest without `identity`); the welcome, or the error that refused it."""
        self.send(
            Hello(
                version=PROTOCOL_VERSION,
                nick=nick,
                client="abuse",
                identity=identity.sig_key if identity else b"",
            )
        )
        if identity is None:
            return self.expect("welcome", "error")
        frame = self.expect("challenge", "error")
        if frame.get("type") != "challenge":
            return frame
        nonce = base64.b64decode(frame["nonce"])
        self.send(Auth(signature=identity.sign(login_message(nick, nonce, identity.sig_key))))
        return self.expect("welcome", "error")

    def is_open(self) -> bool:
        """Whether the server has not closed the connection (reads what has come meanwhile)."""
        if self.closed:
            return False
        try:
            self.poll()
        except (Closed, OSError, ValueError):
            self.closed = True
        return not self.closed

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def connect(
    port: int, ctx: ssl.SSLContext, source: str, timeout: float = TIMEOUT, rcvbuf: int = 0
) -> Peer | None:
    """A `Peer`, or None when the server refused the connection (closed, reset, no TLS)."""
    try:
        return Peer(port, ctx, source, timeout, rcvbuf)
    except (OSError, ssl.SSLError):
        return None


class Keyring:
    """A user's identity and prekeys, made here, to register and publish as a real client does."""

    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.identity = Identity.generate(nick)
        self.secrets = PrekeySecrets()
        self.secrets.rotate_spk(time.time())

    def publish(self, opks: int) -> PublishKeys:
        ident = self.identity
        pub = ident.public()
        spk = self.secrets.signed_spk(ident)
        signed = self.secrets.signed_opks(ident, self.secrets.new_opks(opks))
        return PublishKeys(
            identity=KeyIdentity(sig_key=pub.sig_key, dh_key=pub.dh_key, dh_sig=pub.dh_sig),
            spk=SignedPrekeyRecord(
                id=spk.id, created=spk.created, public=spk.public, signature=spk.signature
            ),
            opks=tuple(OneTimePrekeyRecord(id=o.id, public=o.public, signature=o.signature) for o in signed),
        )


def register(
    port: int, ctx: ssl.SSLContext, source: str, nick: str, opks: int = 0
) -> tuple[Keyring, Peer | None, Json]:
    """Log `nick` in with a new identity from `source` (publishing `opks` prekeys if asked).

    Returns the keyring, the logged-in connection (None if refused) and the last frame."""
    keys = Keyring(nick)
    peer = connect(port, ctx, source)
    if peer is None:
        return keys, None, {"type": "refused", "reason": "connection refused"}
    try:
        frame = peer.login(nick, keys.identity)
        if frame.get("type") != "welcome":
            peer.close()
            return keys, None, frame
        if opks:
            peer.send(keys.publish(opks))
            frame = peer.expect("prekey_count", "error")
            while frame.get("type") == "prekey_count" and frame.get("count", 0) < opks:
                frame = peer.expect("prekey_count", "error")  # the one sent at login came first
        return keys, peer, frame
    except (TimeoutError, Closed, OSError) as exc:
        peer.close()
        return keys, None, {"type": "refused", "reason": str(exc)}


def whisper_frame(to: str, msg_id: str, size: int = MAX_CIPHERTEXT_BYTES) -> bytes:
    """A whisper of `size` random ciphertext bytes: the server cannot tell it from a real one."""
    return encode(Whisper(to=to, id=msg_id, header=os.urandom(FLOOD_HEADER), ciphertext=os.urandom(size)))


def code_counts(frames: Counter[str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(frames.items())) or "-"


# -- attacks on the server -------------------------------------------------------------------------

#: The suite's own bounds, for promises the product does not state (yet). Each names the
#: settings the product may state it under; the first found wins.
QUEUE_PER_RECIPIENT = Limit("whispers queued for one recipient", "ServerConfig.queue_max_per_recipient", 1000)
QUEUE_BYTES_PER_RECIPIENT = Limit(
    "bytes queued for one recipient", "ServerConfig.queue_max_bytes_per_recipient", 16 * 1024 * 1024
)
DELIVERY_PAGE = Limit("deliveries sent at once at login", "ServerConfig.queue_page", 100)
SERVER_RSS_GROWTH_KIB = Limit("server RSS growth under an attack (KiB)", "", 64 * 1024)
#: Whisper ciphertext in the queue flood: the largest allowed in the long run; smaller in
#: the short one, so that the slow victim reads it all in a few seconds.
FLOOD_CIPHERTEXT = scale(2048, MAX_CIPHERTEXT_BYTES)
FLOOD_HEADER = 58


def attack_queue_flood(workdir: Path, cert_files: dict[str, str], ctx: ssl.SSLContext) -> Figures:
    """Fresh nicks from one /24 whisper one offline victim as fast as they can; then the
    victim logs in reading at ~200 KB/s."""
    f = Figures("queue flood")
    attackers, seconds = scale(8, 40), scale(2, 20)
    server = ServerUnderAttack(workdir, cert_files)
    peers: list[Peer] = []
    try:
        victim, vpeer, _ = register(server.port, ctx, "127.0.0.1", "victim", opks=OPK_TARGET)
        assert vpeer is not None, "the victim could not register"
        vpeer.send(b'{"type":"quit"}\n')
        with contextlib.suppress(TimeoutError, Closed):
            vpeer.expect("bye")
        vpeer.close()
        rss_before = server.rss_kib()
        prefix = subnet(1)
        for i, source in enumerate(hosts(prefix, attackers)):
            _, peer, last = register(server.port, ctx, source, f"flood{i}")
            if peer is None:
                f.notes.append(
                    f"flood{i} from {source} not registered: {last.get('code') or last.get('reason')}"
                )
            else:
                peers.append(peer)
        f.measure(f"nicks registered from {prefix}.0/24", len(peers))
        answers: Counter[str] = Counter()
        stored = 0
        lock = threading.Lock()
        rss_peak = [rss_before]

        def flood(peer: Peer, n: int) -> None:
            nonlocal stored
            local: Counter[str] = Counter()
            got = 0
            end = time.monotonic() + seconds
            k = 0
            pacer = Pacer(DEFAULTS.message_rate, DEFAULTS.message_burst)
            try:
                while time.monotonic() < end:
                    k += 1
                    pacer.take()
                    peer.send(whisper_frame("victim", f"f{n}x{k}", FLOOD_CIPHERTEXT))
                    for frame in peer.poll():
                        if frame.get("type") == "whisper_status":
                            got += frame.get("status") == "stored"
                        elif frame.get("type") == "error":
                            local[str(frame.get("code"))] += 1
                # The answers to what is in flight.
                with contextlib.suppress(TimeoutError):
                    while True:
                        frame = peer.read(1.0)
                        if frame.get("type") == "whisper_status":
                            got += frame.get("status") == "stored"
                        elif frame.get("type") == "error":
                            local[str(frame.get("code"))] += 1
            except (Closed, OSError):
                local["disconnected"] += 1
            with lock:
                stored += got
                answers.update(local)

        threads = [threading.Thread(target=flood, args=(p, n)) for n, p in enumerate(peers)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss_peak[0] = max(rss_peak[0], server.rss_kib())
            threads[0].join(0.2)
        for t in threads:
            t.join()
        for p in peers:
            p.close()
        f.at_most("whispers queued for the victim", stored, QUEUE_PER_RECIPIENT)
        f.at_most(
            "bytes queued for the victim (header + ciphertext)",
            stored * (FLOOD_HEADER + FLOOD_CIPHERTEXT),
            QUEUE_BYTES_PER_RECIPIENT,
            "{:,.0f}",
        )
        f.measure("refusals (error codes)", code_counts(answers))
        f.measure("database size after (bytes)", server.db_bytes())
        rss_after = server.rss_kib()
        f.measure(
            "server RSS before/peak/after (MiB)",
            f"{rss_before / 1024:.1f}/{rss_peak[0] / 1024:.1f}/{rss_after / 1024:.1f}",
        )
        f.at_most("server RSS growth (KiB)", rss_peak[0] - rss_before, SERVER_RSS_GROWTH_KIB)
        _victim_login(f, server, ctx, victim, stored)
    finally:
        for p in peers:
            p.close()
        server.stop()
    return f


#: How the victim reads: this many bytes per second (a slow link).
SLOW_READ_BYTES_PER_S = 200_000
#: A gap this long with no delivery ends the first page (the server waits for acks).
PAGE_QUIET = 1.5


def _victim_login(
    f: Figures, server: ServerUnderAttack, ctx: ssl.SSLContext, victim: Keyring, queued: int
) -> None:
    """The victim logs in, takes deliveries without acking until the server pauses (a
    page), then acks as it reads, all at ~200 KB/s."""
    peer = connect(server.port, ctx, "127.0.0.1", rcvbuf=64 * 1024)
    if peer is None:
        f.check("victim could connect", False, False, "yes")
        return
    first_page = 0
    total = 0
    ids: list[str] = []
    dropped = ""
    chunk = 16 * 1024
    try:
        welcome = peer.login("victim", victim.identity)
        if welcome.get("type") != "welcome":
            dropped = f"login refused: {welcome.get('code')}"
            raise Closed(dropped)
        paging = True
        quiet_since = time.monotonic()
        per_delivery = (FLOOD_HEADER + FLOOD_CIPHERTEXT) * 4 / 3 + 200  # base64 and the frame
        deadline = time.monotonic() + TIMEOUT + queued * per_delivery / SLOW_READ_BYTES_PER_S * 1.5
        while total < queued and time.monotonic() < deadline:
            while (frame := peer._frame()) is not None:
                kind = frame.get("type")
                if kind == "delivery":
                    total += 1
                    ids.append(str(frame["id"]))
                    quiet_since = time.monotonic()
                elif kind == "error" and frame.get("fatal"):
                    dropped = f"error {frame.get('code')}: {frame.get('reason')}"
                    raise Closed(dropped)
            if paging and time.monotonic() - quiet_since > PAGE_QUIET:
                paging = False
                first_page = total
            if not paging and ids:
                peer.send(b"".join(encode_ack(i) for i in ids))
                ids.clear()
            got = 0
            with contextlib.suppress(TimeoutError):
                got = peer._fill(0.2 if not paging else PAGE_QUIET, chunk)
            time.sleep(got / SLOW_READ_BYTES_PER_S)  # the attack's own pacing: a slow link
        if paging:
            first_page = total
    except Closed as exc:
        dropped = dropped or str(exc)
    except OSError as exc:
        dropped = str(exc)
    finally:
        peer.close()
    if dropped and not first_page:
        first_page = total  # dropped while it was still taking the first batch
    f.at_most("deliveries the victim had to take before acking", first_page, DELIVERY_PAGE)
    f.measure("deliveries received of those queued", f"{total} of {queued}")
    f.check(
        "slow victim (200 KB/s) stays connected",
        dropped or "yes",
        not dropped and total >= queued,
        "connected until all delivered",
    )


def encode_ack(delivery_id: str) -> bytes:
    return (json.dumps({"type": "ack", "id": delivery_id, "outcome": "read", "reason": ""}) + "\n").encode()


PER_PREFIX_SESSIONS = Limit("connections from one /24", "PrefixLimits.per_prefix", 64)
PRE_LOGIN_PER_PREFIX = Limit("connections not logged in from one /24", "PrefixLimits.prelogin_per_prefix", 16)
SHED_SECONDS = Limit("seconds to shed a flood's threads", "", 10)
LEGIT_LOGIN_SECONDS = Limit("a legitimate login during a flood (s)", "ServerConfig.handshake_timeout", 10)


def attack_connection_flood(workdir: Path, cert_files: dict[str, str], ctx: ssl.SSLContext) -> Figures:
    """Guest sessions, idle TLS and idle TCP connections from 160 addresses over 10 /24s,
    one of which keeps trying past its caps; meanwhile a user from 127.0.0.0/24 logs in."""
    f = Figures("connection flood")
    prefixes, per_prefix, each = 10, 16, scale(1, 4)
    server = ServerUnderAttack(workdir, cert_files)
    socks: list[socket.socket] = []
    guests: dict[str, list[Peer]] = {}
    idle: dict[str, list[Peer]] = {}
    counter = iter(range(1_000_000))
    refused = 0

    def guest(prefix: str, source: str) -> bool:
        nonlocal refused
        peer = connect(server.port, ctx, source, timeout=5.0)
        if peer is not None:
            try:
                if peer.login(f"g{next(counter)}", None).get("type") == "welcome":
                    guests.setdefault(prefix, []).append(peer)
                    return True
            except (TimeoutError, Closed, OSError):
                pass
            peer.close()
        refused += 1
        return False

    def idle_tls(prefix: str, source: str) -> None:
        nonlocal refused
        peer = connect(server.port, ctx, source, timeout=5.0)
        if peer is None:
            refused += 1
        else:
            idle.setdefault(prefix, []).append(peer)

    try:
        user, upeer, _ = register(server.port, ctx, "127.0.0.1", "regular")
        assert upeer is not None
        upeer.close()
        threads0, rss0 = server.threads(), server.rss_kib()
        t0 = time.monotonic()
        tried = 0
        # One /24 of its own keeps trying past both caps for a while: guests first (its
        # idle connections would otherwise crowd out its own logins before the session
        # cap is reached), then idle TLS. Paced at the prefix's accept rate, if stated.
        hot = subnet(100 + prefixes)
        want_guests = int(PER_PREFIX_SESSIONS.value) + 16
        want_idle = int(PRE_LOGIN_PER_PREFIX.value) + 8
        rate = _product_value("PrefixLimits.accept_rate")
        burst = _product_value("PrefixLimits.accept_burst")
        pacer = (
            Pacer(float(rate), float(burst)) if isinstance(rate, float) and isinstance(burst, float) else None
        )
        cold = subnet(101 + prefixes)  # a second one for idle TLS alone
        n = 0
        for where, want, store in ((hot, want_guests, guests), (cold, want_idle, idle)):
            end = time.monotonic() + scale(2, 5)
            while time.monotonic() < end and len(store.get(where, [])) < want:
                source = f"{where}.{1 + n % per_prefix}"
                n += 1
                tried += 1
                if pacer is not None:
                    pacer.take()
                (guest if where == hot else idle_tls)(where, source)
        for p in range(prefixes):
            prefix = subnet(100 + p)
            for source in hosts(prefix, per_prefix):
                for _ in range(each):
                    guest(prefix, source)
                idle_tls(prefix, source)
                with contextlib.suppress(OSError):
                    socks.append(tcp_from(source, server.port, 5.0))
                tried += each + 2
        opened = time.monotonic() - t0
        threads_during, rss_during = server.threads(), server.rss_kib()
        # A legitimate user, from a prefix the flood does not use, logs in meanwhile.
        t1 = time.monotonic()
        legit = connect(server.port, ctx, "127.0.0.1", timeout=LEGIT_LOGIN_SECONDS.value)
        ok = False
        if legit is not None:
            with contextlib.suppress(TimeoutError, Closed, OSError):
                ok = legit.login("regular", user.identity).get("type") == "welcome"
            legit.close()
        legit_s = time.monotonic() - t1
        open_guests = {k: sum(p.is_open() for p in v) for k, v in guests.items()}
        open_idle = {k: sum(p.is_open() for p in v) for k, v in idle.items()}
        f.measure(
            "connections tried (guest, idle TLS, idle TCP)",
            f"{tried} from {prefixes * per_prefix} addresses in {opened:.1f} s ({refused} refused)",
        )
        f.at_most(
            f"guest sessions held from {hot}.0/24 (wanted {want_guests})",
            open_guests.get(hot, 0),
            PER_PREFIX_SESSIONS,
        )
        f.at_most(
            f"idle TLS connections held from {cold}.0/24 (wanted {want_idle})",
            open_idle.get(cold, 0),
            PRE_LOGIN_PER_PREFIX,
        )
        others = [v for k, v in open_guests.items() if k != hot]
        f.measure(
            "guest sessions held per other /24 (min-max)", f"{min(others)}-{max(others)}" if others else "-"
        )
        f.measure("idle TCP connections still open", sum(1 for s in socks if _still_open(s)))
        f.measure("server threads before/during", f"{threads0}/{threads_during}")
        f.measure("server RSS before/during (MiB)", f"{rss0 / 1024:.1f}/{rss_during / 1024:.1f}")
        f.check(
            "legitimate login from 127.0.0.1 during the flood",
            f"{'ok' if ok else 'FAILED'} in {legit_s:.2f} s",
            ok and legit_s <= LEGIT_LOGIN_SECONDS.value,
            f"succeeds {LEGIT_LOGIN_SECONDS.describe()}",
        )
        for group in (*guests.values(), *idle.values()):
            for held in group:
                held.close()
        for sock in socks:
            sock.close()
        t2 = time.monotonic()
        shed = wait_until(lambda: server.threads() <= threads0 + 2, TIMEOUT + DEFAULTS.linger)
        shed_s = time.monotonic() - t2
        f.check(
            "seconds to shed the threads after the flood left",
            f"{shed_s:.1f}" if shed else f"> {shed_s:.0f} ({server.threads()} threads)",
            shed and shed_s <= SHED_SECONDS.value,
            SHED_SECONDS.describe(),
        )
        f.measure("server RSS after (MiB)", round(server.rss_kib() / 1024, 1))
    finally:
        for group in (*guests.values(), *idle.values()):
            for held in group:
                held.close()
        for sock in socks:
            sock.close()
        server.stop()
    return f


def _still_open(sock: socket.socket) -> bool:
    """Whether the server has not closed this plain TCP connection."""
    try:
        if not select.select([sock], [], [], 0)[0]:
            return True
        return bool(sock.recv(1, socket.MSG_PEEK))
    except OSError:
        return False


PREKEYS_HANDED_PER_OWNER = RateLimit(
    "one-time prekeys of one owner handed out",
    Limit("burst", "ServerConfig.opk_burst_per_owner", 20),
    Limit("per second", "ServerConfig.opk_rate_per_owner", 1 / 60),
)


def attack_prekey_drain(workdir: Path, cert_files: dict[str, str], ctx: ssl.SSLContext) -> Figures:
    """Fresh nicks fetch one victim's bundle as fast as they can."""
    f = Figures("prekey drain")
    fetchers, seconds = scale(4, 10), scale(2, 15)
    server = ServerUnderAttack(workdir, cert_files)
    peers: list[Peer] = []
    try:
        _, vpeer, _ = register(server.port, ctx, "127.0.0.1", "victim", opks=OPK_TARGET)
        assert vpeer is not None
        vpeer.close()  # offline: nobody tops the prekeys up meanwhile
        prefix = subnet(2)
        for i, source in enumerate(hosts(prefix, fetchers)):
            _, peer, _ = register(server.port, ctx, source, f"drain{i}")
            if peer is not None:
                peers.append(peer)
        handed = 0
        answers: Counter[str] = Counter()
        lock = threading.Lock()

        def drain(peer: Peer) -> None:
            nonlocal handed
            got, local = 0, Counter[str]()
            end = time.monotonic() + seconds
            fetch = encode(FetchKeys(nick="victim"))
            pacer = Pacer(DEFAULTS.fetch_rate, DEFAULTS.fetch_burst)  # the requester's own limit
            try:
                while time.monotonic() < end:
                    pacer.take()
                    peer.send(fetch)
                    frame = peer.expect("keys", "error", timeout=TIMEOUT)
                    if frame.get("type") == "keys":
                        got += len(frame.get("opks") or [])
                        local["keys"] += 1
                    else:
                        local[str(frame.get("code"))] += 1
            except (Closed, OSError, TimeoutError):
                local["disconnected"] += 1
            with lock:
                handed += got
                answers.update(local)

        t0 = time.monotonic()
        threads = [threading.Thread(target=drain, args=(p,)) for p in peers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        f.measure(f"fetchers registered from {prefix}.0/24", len(peers))
        f.check(
            f"one-time prekeys handed out of {OPK_TARGET} in {elapsed:.1f} s",
            handed,
            handed <= PREKEYS_HANDED_PER_OWNER.allowed(elapsed),
            PREKEYS_HANDED_PER_OWNER.describe(elapsed),
        )
        f.measure("one-time prekeys handed out per second", round(handed / elapsed, 1))
        f.measure("answers", code_counts(answers))
    finally:
        for p in peers:
            p.close()
        server.stop()
    return f


PREKEYS_HELD = Limit("one-time prekeys the server holds for one user", "ServerConfig.opk_max_held", 1000)
PUBLISH_CPU = Limit("server CPU during a publish flood (cores)", "", 0.5)


def attack_publish_flood(workdir: Path, cert_files: dict[str, str], ctx: ssl.SSLContext) -> Figures:
    """One identity publishes 200 fresh prekeys per frame as fast as it can."""
    f = Figures("publish flood")
    seconds = scale(2, 15)
    server = ServerUnderAttack(workdir, cert_files)
    try:
        keys, peer, _ = register(server.port, ctx, "127.0.0.1", "hoarder")
        assert peer is not None
        frames = [encode(keys.publish(MAX_OPKS_PER_PUBLISH)) for _ in range(scale(20, 40))]
        held, sent = 0, 0
        answers: Counter[str] = Counter()
        # What a publish costs in request tokens, if the product charges per prekey.
        per_token = getattr(DEFAULTS, "opks_per_request_token", 0) or 0
        cost = 1 + (-(-MAX_OPKS_PER_PUBLISH // per_token) if per_token else 0)
        pacer = Pacer(DEFAULTS.message_rate, DEFAULTS.message_burst)
        cpu0, t0 = server.cpu(), time.monotonic()
        end = t0 + seconds
        try:
            while time.monotonic() < end:
                if not frames:
                    frames.append(encode(keys.publish(MAX_OPKS_PER_PUBLISH)))
                pacer.take(min(cost, DEFAULTS.message_burst))
                peer.send(frames.pop())
                sent += 1
                try:
                    frame = peer.expect("prekey_count", "error", timeout=2.0)
                except TimeoutError:
                    answers["unanswered"] += 1  # refusals are answered only now and then
                    continue
                if frame.get("type") == "prekey_count":
                    held = max(held, int(frame.get("count", 0)))
                else:
                    answers[str(frame.get("code"))] += 1
        except (Closed, OSError) as exc:
            answers[f"disconnected ({exc})"] += 1
        cpu = (server.cpu() - cpu0) / (time.monotonic() - t0)
        peer.close()
        f.measure(f"publish frames sent (200 prekeys each, paced at {cost} tokens)", sent)
        f.at_most("one-time prekeys held for one user", held, PREKEYS_HELD)
        f.at_most("server CPU during the flood (cores)", round(cpu, 2), PUBLISH_CPU)
        f.measure("answers", code_counts(answers))
    finally:
        server.stop()
    return f


REGISTRATIONS_PER_PREFIX = RateLimit(
    "new nicks registered from one /24",
    Limit("burst", "ServerConfig.registration_burst", 20),
    Limit("per hour", "ServerConfig.registrations_per_hour", 20),
    per=3600,
)


def attack_registration_flood(workdir: Path, cert_files: dict[str, str], ctx: ssl.SSLContext) -> Figures:
    """New nicks from one /24 (a new source address each time) as fast as they can."""
    f = Figures("registration flood")
    seconds = scale(2, 15)
    server = ServerUnderAttack(workdir, cert_files)
    try:
        prefix = subnet(3)
        addresses = hosts(prefix, 250)
        made, refused = 0, Counter[str]()
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < seconds:
            source = addresses[n % len(addresses)]
            _, peer, last = register(server.port, ctx, source, f"reg{n}")
            n += 1
            if peer is not None:
                made += 1
                peer.close()
            else:
                refused[str(last.get("code") or last.get("type"))] += 1
        elapsed = time.monotonic() - t0
        f.check(
            f"nicks registered from {prefix}.0/24 in {elapsed:.1f} s",
            made,
            made <= REGISTRATIONS_PER_PREFIX.allowed(elapsed),
            REGISTRATIONS_PER_PREFIX.describe(elapsed),
        )
        f.measure("registrations per second", round(made / elapsed, 1))
        f.measure("refused", code_counts(refused))
    finally:
        server.stop()
    return f


#: The failed-login line operators point fail2ban at (docs/operations.md, "Logs").
FAIL2BAN_LINE = r"auth failure from {address} for nick \S+: \S"

FAILED_LOGINS_ANSWERED = RateLimit(
    "claims of a registered nick without its key one /24 may try",
    Limit("burst", "ServerConfig.login_failure_burst", 10),
    Limit("one per N seconds", "ServerConfig.login_failure_interval", 30),
    every=True,
)


def attack_failed_logins(workdir: Path, cert_files: dict[str, str], ctx: ssl.SSLContext) -> Figures:
    """Repeated claims of a registered nick without its key, from one address. (Claims with
    an identity are never refused: a valid proof cannot be guessed, and refusing it would
    let a failing neighbour lock the owner out; those are bounded by the accept rate.)"""
    f = Figures("failed logins")
    seconds = scale(2, 15)
    server = ServerUnderAttack(workdir, cert_files)
    try:
        owner, peer, _ = register(server.port, ctx, "127.0.0.1", "owner")
        assert peer is not None
        peer.close()
        source = f"{subnet(4)}.7"
        wrong = Identity.generate("owner")
        answered, refused = 0, Counter[str]()
        times: list[float] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            a = time.monotonic()
            p = connect(server.port, ctx, source, timeout=TIMEOUT)
            if p is None:
                refused["connection refused"] += 1
                times.append(time.monotonic() - a)
                continue
            try:
                # Every other try with a forged proof, the rest as a guest: both are failures
                # of the nick; only the guest's claims are refused once they keep failing.
                forge = len(times) % 2 == 1
                p.send(
                    Hello(
                        version=PROTOCOL_VERSION,
                        nick="owner",
                        client="abuse",
                        identity=owner.identity.sig_key if forge else b"",
                    )
                )
                frame = p.expect("challenge", "error")
                if frame.get("type") == "challenge":
                    nonce = base64.b64decode(frame["nonce"])
                    p.send(Auth(signature=wrong.sign(login_message("owner", nonce, owner.identity.sig_key))))
                    frame = p.expect("welcome", "error")
                code = str(frame.get("code") or frame.get("type"))
                refused[code] += 1
                answered += code == "nick-registered"
            except (TimeoutError, Closed, OSError) as exc:
                refused[type(exc).__name__] += 1
            finally:
                p.close()
            times.append(time.monotonic() - a)
        elapsed = time.monotonic() - t0
        f.check(
            f"claims without the key answered (nick-registered) in {elapsed:.1f} s",
            answered,
            answered <= FAILED_LOGINS_ANSWERED.allowed(elapsed),
            FAILED_LOGINS_ANSWERED.describe(elapsed),
        )
        f.measure("attempts per second", round(len(times) / elapsed, 1))
        f.measure("seconds per attempt: first/last", f"{times[0]:.3f}/{times[-1]:.3f}" if times else "-")
        f.measure("answers", code_counts(refused))
        log = server.log_text().splitlines()
        lines = [line for line in log if source in line]
        pattern = re.compile(FAIL2BAN_LINE.format(address=re.escape(source)))
        fail2ban = [line for line in lines if pattern.search(line)]
        f.measure(
            f"log lines naming {source} (per attempt)",
            f"{len(lines)} ({len(lines) / max(1, len(times)):.2f})",
        )
        f.check(
            "failed logins logged for fail2ban",
            len(fail2ban),
            0 < len(fail2ban) <= len(times),
            "one line per failure: 'auth failure from ADDRESS for nick NICK: REASON'",
        )
        sample = (fail2ban or lines or ["(none)"])[-1]
        f.notes.append(f"log line: {sample.split(' ', 2)[-1][:160]}")
    finally:
        server.stop()
    return f


HALF_LINE_SECONDS = Limit(
    "seconds a connection may sit on an incomplete line", "ServerConfig.line_timeout", 60
)
#: An idle session (~82 KiB, docs/operations.md) plus two copies of the longest line
#: (64 KiB each) and slack for TLS buffers: what a half line may reasonably cost.
HALF_LINE_RSS_KIB = Limit("server RSS per connection parked on a half line (KiB)", "", 256)


def attack_half_lines(workdir: Path, cert_files: dict[str, str], ctx: ssl.SSLContext) -> Figures:
    """Guest sessions each parked on a 60 KiB incomplete line, trickling a byte now and then."""
    f = Figures("half lines")
    count = scale(40, 200)
    part = MAX_LINE_BYTES - 4096
    server = ServerUnderAttack(workdir, cert_files)
    peers: list[Peer] = []
    try:
        rss0 = server.rss_kib()
        for i in range(count):
            source = f"{subnet(5 + i // 50)}.{1 + i % 50}"
            p = connect(server.port, ctx, source)
            if p is None:
                continue
            try:
                if p.login(f"half{i}", None).get("type") == "welcome":
                    p.send(b'{"type":"say","text":"' + b"a" * part)
                    peers.append(p)
                else:
                    p.close()
            except (TimeoutError, Closed, OSError):
                p.close()
        rss1 = server.rss_kib()
        parked = len(peers)
        limit, where = HALF_LINE_SECONDS.lookup()
        # The long run waits the limit out, plus the server's sweep period (a quarter of
        # its shortest keepalive or line interval) and the linger; the short one only
        # trickles for a moment.
        window = limit * 1.25 + DEFAULTS.linger + 3 if LONG else 3.0
        # Trickle one byte per connection per second through the window (the attack's pacing).
        end = time.monotonic() + window
        open_now = list(peers)
        while open_now and time.monotonic() < end:
            for p in list(open_now):
                if not p.is_open():
                    open_now.remove(p)
                    continue
                try:
                    p.send(b"a")
                except OSError:
                    open_now.remove(p)
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        per = (rss1 - rss0) / parked if parked else 0.0
        f.measure("connections parked on a half line", parked)
        f.at_most("server RSS per parked connection (KiB)", round(per, 1), HALF_LINE_RSS_KIB)
        closed = parked - len(open_now)
        if window >= limit:
            f.check(
                f"closed by the server within {window:.0f} s",
                f"{closed} of {parked}",
                closed == parked,
                f"all, after {limit:g} s ({where})",
            )
        else:  # the short run ends before the deadline: a figure, not a check it would pass anyway
            f.measure(
                f"closed by the server within {window:.0f} s (deadline {limit:g} s, not reached)",
                f"{closed} of {parked}",
            )
    finally:
        for p in peers:
            p.close()
        server.stop()
    return f


def attack_tls(workdir: Path, cert_files: dict[str, str], ctx: ssl.SSLContext) -> Figures:
    """A ClientHello offering only ffdhe groups, and TLS 1.2 session tickets (openssl s_client)."""
    f = Figures("TLS")
    openssl = shutil.which("openssl")
    if openssl is None:
        f.notes.append("openssl not installed: skipped")
        return f
    server = ServerUnderAttack(workdir, cert_files)
    try:
        base = [openssl, "s_client", "-connect", f"{HOST}:{server.port}", "-CAfile", cert_files["ca"]]
        # A control: the same client does complete a handshake the server offers, so a
        # refusal below is the server's choice, not a client that never connects.
        control = _s_client([*base, "-tls1_3", "-groups", "X25519"])
        f.check(
            "control handshake with X25519 completes",
            "yes" if _completed(control) else "no",
            _completed(control),
            "yes",
        )
        handshakes = scale(3, 10)
        ok = 0
        groups: Counter[str] = Counter()
        cpu0 = server.cpu()
        for _ in range(handshakes):
            out = _s_client([*base, "-tls1_3", "-groups", "ffdhe8192:ffdhe6144:ffdhe4096"])
            ok += _completed(out)
            for line in out.splitlines():
                if "Negotiated TLS1.3 group" in line or "Server Temp Key" in line:
                    groups[line.split(":", 1)[1].strip()] += 1
        cpu = server.cpu() - cpu0
        f.check(
            "handshakes completed offering only ffdhe groups",
            f"{ok} of {handshakes} ({code_counts(groups)})",
            ok == 0,
            "0: refused",
        )
        f.measure("server CPU per ffdhe-only handshake (ms)", round(cpu / handshakes * 1000, 1))
        sess = workdir / "tls12.sess"
        out = _s_client([*base, "-tls1_2", "-sess_out", str(sess)])
        f.check(
            "TLS 1.2 handshake completes (to look for a ticket)",
            "yes" if _completed(out) else "no",
            _completed(out),
            "yes",
        )
        ticket = "TLS session ticket:" in out
        resumed = False
        if sess.exists() and sess.stat().st_size > 0:
            resumed = "Reused," in _s_client([*base, "-tls1_2", "-sess_in", str(sess)])
        f.check("TLS 1.2 session ticket issued", ticket, not ticket, "no")
        # Resumption by session id (OpenSSL's server-side cache) is not a ticket: reported.
        f.measure("TLS 1.2 session resumed (by session id)", resumed)
    finally:
        server.stop()
    return f


def _completed(s_client_output: str) -> bool:
    """Whether `openssl s_client` agreed a cipher (its handshake completed)."""
    return bool(re.search(r"Cipher is (?!\(NONE\))", s_client_output))


def _s_client(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, input="", capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout + done.stderr


# -- a hostile server against a real client ------------------------------------------------------


class Hostile:
    """One connection of a real client to our hostile server: JSON lines each way."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.sock.settimeout(TIMEOUT)
        self._buf = b""

    def read(self, timeout: float = TIMEOUT) -> Json:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the client sent nothing")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionError, ssl.SSLError) as exc:
                raise Closed(str(exc)) from None
            if not chunk:
                raise Closed("EOF")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        obj = json.loads(line)
        assert isinstance(obj, dict)
        return obj

    def expect(self, kind: str, timeout: float = TIMEOUT) -> Json:
        while (frame := self.read(timeout)).get("type") != kind:
            if frame.get("type") == "ping":
                self.send({"type": "pong", "token": frame.get("token", "")})
        return frame

    def send(self, frame: Json | bytes) -> None:
        data = frame if isinstance(frame, bytes) else (json.dumps(frame) + "\n").encode()
        self.sock.settimeout(TIMEOUT)
        self.sock.sendall(data)

    def login(self, welcome: bool = True) -> str:
        """Take the client's hello (and auth); send the welcome. The nick."""
        hello = self.expect("hello")
        nick = str(hello["nick"])
        if hello.get("identity"):
            self.send({"type": "challenge", "nonce": b64(os.urandom(32))})
            self.expect("auth")
        if welcome:
            self.send(
                {
                    "type": "welcome",
                    "version": PROTOCOL_VERSION,
                    "nick": nick,
                    "room": "#lobby",
                    "users": [nick],
                    "server": "hostile",
                }
            )
        return nick

    def alive(self) -> bool:
        """Ping; whether the client answered (it still reads and serves this connection)."""
        token = b64(os.urandom(6))
        try:
            self.send({"type": "ping", "token": token})
            while True:
                frame = self.read()
                if frame.get("type") == "pong" and frame.get("token") == token:
                    return True
        except (TimeoutError, Closed, OSError):
            return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


Script = Callable[[Hostile, int], None]


class HostileServer:
    """A TLS server with the suite's certificate that runs `script(conn, n)` on the n-th
    connection (from 0), each in its own thread."""

    def __init__(self, cert_files: dict[str, str], script: Script) -> None:
        self.ctx = server_context(cert_files["cert"], cert_files["key"])
        self.listen = socket.create_server((HOST, 0))
        self.port = int(self.listen.getsockname()[1])
        self.script = script
        self.cond = threading.Condition()
        self.connections = 0
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._stop = False
        self._accepter = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self.listen.accept()
            except OSError:
                return
            with self.cond:
                n = self.connections
                self.connections += 1
                self._socks.append(sock)
                self.cond.notify_all()
            t = threading.Thread(target=self._serve, args=(sock, n), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket, n: int) -> None:
        try:
            tls = self.ctx.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError):
            sock.close()
            return
        conn = Hostile(tls)
        try:
            self.script(conn, n)
        except (TimeoutError, Closed, OSError) as exc:
            with self.cond:
                self.errors.append(f"connection {n}: {exc}")
        finally:
            conn.close()

    def wait_connections(self, count: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.connections >= count, timeout)

    def close(self) -> None:
        self._stop = True
        self.listen.close()
        with self.cond:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(TIMEOUT)


class ClientUnderAttack:
    """A real `securechat client --json` process with its own keystore, no passphrase."""

    def __init__(self, workdir: Path, cert_files: dict[str, str], port: int, nick: str = "target") -> None:
        home = workdir / f"home-{nick}"
        home.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        argv = [
            sys.executable, "-m", "securechat", "client", "--json", "--nick", nick,
            "--host", HOST, "--port", str(port), "--cafile", cert_files["ca"],
        ]  # fmt: skip
        env = product_env(
            {"XDG_DATA_HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"), "SECURECHAT_PASSPHRASE": ""}
        )
        self.proc = Proc(
            argv, env=env, log=workdir / f"client-{nick}.log", on_line=self._on_line, cwd=workdir
        )

    def _on_line(self, line: str) -> None:
        with self.cond:
            self.lines.append(line)
            self.cond.notify_all()

    def wait_line(self, predicate: Callable[[Json], bool], timeout: float = TIMEOUT) -> Json | None:
        def find() -> Json | None:
            for line in self.lines:
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if isinstance(obj, dict) and predicate(obj):
                        return obj
            return None

        with self.cond:
            found: list[Json | None] = [None]

            def ready() -> bool:
                found[0] = find()
                return found[0] is not None or self.proc.eof.is_set()

            self.cond.wait_for(ready, timeout)
            return found[0]

    def rss_kib(self) -> int:
        return proc_status(self.proc.pid, "VmRSS")

    def alive(self) -> bool:
        return self.proc.alive()

    def stop(self) -> None:
        self.proc.write(json.dumps({"type": "quit"}))
        if self.proc.wait(5.0) is None:
            self.proc.kill9()
        self.proc.reap()


@contextlib.contextmanager
def hostile_run(
    workdir: Path, cert_files: dict[str, str], script: Script
) -> Iterator[tuple[HostileServer, ClientUnderAttack]]:
    server = HostileServer(cert_files, script)
    client = ClientUnderAttack(workdir, cert_files, server.port)
    try:
        yield server, client
    finally:
        client.stop()
        server.close()


CLIENT_TOPUPS = RateLimit(
    "rounds of new one-time prekeys a client makes at its server's word",
    Limit("burst", "securechat.client.whispers:OPK_TOPUP_BURST", 4),
    Limit("one per N seconds", "securechat.client.whispers:OPK_TOPUP_EVERY", 600),
    every=True,
)


def hostile_prekey_counts(workdir: Path, cert_files: dict[str, str]) -> Figures:
    """`prekey_count` count 0 again and again (each asks for 100 new prekeys), then spk_id 0
    (which asked the client to publish everything it holds)."""
    f = Figures("hostile: prekey_count")
    rounds = scale(6, 30)
    result: Json = {}

    def publications(conn: Hostile, status: Json) -> list[Json]:
        """What the client publishes for `status`: every publish_keys before the pong to a
        ping sent right after (the client answers frames in order)."""
        conn.send(status)
        token = b64(os.urandom(6))
        conn.send({"type": "ping", "token": token})
        out = []
        while (frame := conn.read()).get("type") != "pong" or frame.get("token") != token:
            if frame.get("type") == "publish_keys":
                out.append(frame)
        return out

    def script(conn: Hostile, n: int) -> None:
        conn.login()
        if n > 0:
            result.setdefault("reconnected", True)
            return
        t0 = time.monotonic()
        made, spk = 0, None
        for _ in range(rounds):
            spk_id, created = (spk["id"], spk["created"]) if spk else (0, 0)
            for pub in publications(
                conn, {"type": "prekey_count", "count": 0, "spk_id": spk_id, "spk_created": created}
            ):
                spk = pub["spk"]
                made += len(pub["opks"])
        result["made"], result["elapsed"] = made, time.monotonic() - t0
        try:
            again = publications(conn, {"type": "prekey_count", "count": 0, "spk_id": 0, "spk_created": 0})
            result["republished"] = f"{len(again)} frame(s), {sum(len(p['opks']) for p in again)} prekeys"
        except (TimeoutError, Closed) as exc:
            result["republished"] = f"nothing ({exc})"
        result["alive"] = conn.alive()

    with hostile_run(workdir, cert_files, script) as (server, client):
        server.wait_connections(1, TIMEOUT)
        wait_until(lambda: "alive" in result or not client.alive(), TIMEOUT * 2)
        made, elapsed = int(result.get("made", 0)), float(result.get("elapsed", 0.0))
        f.check(
            f"one-time prekeys made for {rounds} x 'count 0'",
            made,
            made <= OPK_TARGET * CLIENT_TOPUPS.allowed(elapsed),
            f"{OPK_TARGET} x {CLIENT_TOPUPS.describe(elapsed)}",
        )
        f.measure("published after 'spk_id 0'", result.get("republished", "-"))
        serving = bool(result.get("alive")) and client.alive()
        f.check("client still serving after 'spk_id 0'", serving, serving, "yes")
        f.notes += server.errors[:2]
    return f


CLIENT_RSS_GROWTH_KIB = Limit("client RSS growth under hostile frames (KiB)", "", 16 * 1024)


def hostile_keys_flood(workdir: Path, cert_files: dict[str, str]) -> Figures:
    """A flood of `keys` frames the client never asked for."""
    f = Figures("hostile: keys flood")
    frames = scale(20_000, 100_000)
    result: Json = {}
    bundle = encode(
        Keys(
            nick="mallory",
            identity=KeyIdentity(sig_key=os.urandom(32), dh_key=os.urandom(32), dh_sig=os.urandom(64)),
            spk=SignedPrekeyRecord(
                id=1, created=int(time.time()), public=os.urandom(32), signature=os.urandom(64)
            ),
            opks=(OneTimePrekeyRecord(id=7, public=os.urandom(32), signature=os.urandom(64)),),
        )
    )
    rss: list[int] = []

    def script(conn: Hostile, n: int) -> None:
        conn.login()
        if n > 0:
            return
        result["alive0"] = conn.alive()
        rss.append(client.rss_kib())
        batch = bundle * 1000
        for _ in range(frames // 1000):
            conn.send(batch)
        result["alive"] = conn.alive()  # answered after every keys frame was read
        rss.append(client.rss_kib())

    with hostile_run(workdir, cert_files, script) as (_server, client):
        wait_until(lambda: "alive" in result or not client.alive(), TIMEOUT * 3)
        grown = rss[1] - rss[0] if len(rss) == 2 else -1
        f.measure(f"unsolicited keys frames sent ({len(bundle)} bytes each)", frames)
        f.at_most("client RSS growth (KiB)", grown, CLIENT_RSS_GROWTH_KIB)
        f.check("client still serving", bool(result.get("alive")), bool(result.get("alive")), "yes")
    return f


CLIENT_LOGIN_SECONDS = Limit(
    "seconds a client waits for a login that never ends", "securechat.client.session:Client.timeout", 10
)


def hostile_endless_login(workdir: Path, cert_files: dict[str, str]) -> Figures:
    """The login never ends: no welcome, a ping every 2 s."""
    f = Figures("hostile: endless login")
    limit = CLIENT_LOGIN_SECONDS.value
    observe = limit + 5.0
    result: Json = {}

    def script(conn: Hostile, n: int) -> None:
        if n > 0:
            result["retried_after"] = time.monotonic() - result.get("t0", time.monotonic())
            conn.login()
            return
        conn.login(welcome=False)
        result["t0"] = time.monotonic()
        end = result["t0"] + observe
        try:
            while time.monotonic() < end:
                conn.send({"type": "ping", "token": "x"})
                with contextlib.suppress(TimeoutError):
                    conn.read(2.0)  # pongs; the 2 s between pings is the attack's pace
            result["held"] = observe
        except (Closed, OSError):
            result["held"] = time.monotonic() - result["t0"]

    with hostile_run(workdir, cert_files, script) as (_server, _client):
        wait_until(lambda: "held" in result, observe + TIMEOUT)
        held = float(result.get("held", observe))
        f.check(
            "seconds the client sat in a login that never ended",
            f"{held:.1f}" + ("+ (never gave up)" if held >= observe else ""),
            held <= limit + 1,
            CLIENT_LOGIN_SECONDS.describe(),
        )
        retried = result.get("retried_after")
        f.measure("then connected again after (s)", "-" if retried is None else round(float(retried), 1))
    return f


def hostile_unknown_statuses(workdir: Path, cert_files: dict[str, str]) -> Figures:
    """`whisper_status` frames for whispers the client never sent."""
    f = Figures("hostile: forged statuses")
    count = scale(500, 5000)
    result: Json = {}

    def script(conn: Hostile, n: int) -> None:
        conn.login()
        if n > 0:
            return
        statuses = [
            {
                "type": "whisper_status",
                "id": f"forged{i}",
                "to": "mallory",
                "status": ("delivered", "stored")[i % 2],
                "away": "",
                "reason": "",
            }
            for i in range(count)
        ]
        conn.send(b"".join((json.dumps(s) + "\n").encode() for s in statuses))
        result["alive"] = conn.alive()
        conn.send(MARKER)  # printed after whatever the statuses produced

    with hostile_run(workdir, cert_files, script) as (_server, client):
        wait_until(lambda: "alive" in result or not client.alive(), TIMEOUT * 2)
        client.wait_line(lambda o: o.get("text") == "end-marker")
        shown = sum(1 for line in list(client.lines) if '"forged' in line)
        f.check("forged statuses passed on to the program", f"{shown} of {count}", shown == 0, "0 (dropped)")
        f.check("client still serving", bool(result.get("alive")), bool(result.get("alive")), "yes")
    return f


#: A room line a hostile server sends after its attack: once the client printed it, it
#: has printed everything the attack made it print (events keep their order).
MARKER = (
    json.dumps({"type": "message", "room": "#lobby", "nick": "mallory", "text": "end-marker", "ts": 1.0e9})
    + "\n"
).encode()

#: What a hostile server sends right after the welcome, by name.
GARBAGE: dict[str, bytes] = {
    "1 MiB line": b"{" + b"x" * (1024 * 1024) + b"}\n",
    "bad JSON": b'{"type": "message", nope\n',
    "5,000-digit number": b'{"type":"ping","token":"t","n":' + b"9" * 5000 + b"}\n",
}


def hostile_garbage(workdir: Path, cert_files: dict[str, str], name: str) -> Figures:
    """A frame that breaks the protocol: the client should reconnect, not exit."""
    f = Figures(f"hostile: {name}")

    def script(conn: Hostile, n: int) -> None:
        conn.login()
        if n == 0:
            conn.send(GARBAGE[name])
            with contextlib.suppress(TimeoutError, Closed, OSError):
                while True:
                    conn.read()

    with hostile_run(workdir, cert_files, script) as (server, client):
        again = server.wait_connections(2, TIMEOUT)
        gone = client.wait_line(lambda o: o.get("type") == "disconnected", 0.5 if again else 0.0)
        f.check("client reconnected", again, again, "yes")
        f.check("client process still running", client.alive(), client.alive(), "yes")
        if gone is not None:
            f.notes.append(f"disconnected: {str(gone.get('reason'))[:120]}")
    return f


#: Characters a terminal obeys rather than shows: bidi overrides and isolates, zero-width,
#: C1 controls, an escape sequence.
DANGEROUS = {
    "RLO U+202E": "\u202e",
    "LRI U+2066": "\u2066",
    "ZWSP U+200B": "\u200b",
    "C1 NEL U+0085": "\u0085",
    "C1 CSI U+009B": "\u009b",
    "ESC": "\x1b",
}


def hostile_control_text(workdir: Path, cert_files: dict[str, str]) -> Figures:
    """A room message full of bidi, zero-width and C1 characters: what the JSON output carries."""
    f = Figures("hostile: control text")
    text = "a" + "".join(DANGEROUS.values()) + "[31mb"

    def script(conn: Hostile, n: int) -> None:
        conn.login()
        conn.send(
            {
                "type": "message",
                "room": "#lobby",
                "nick": "mallory",
                "text": text,
                "ts": time.time(),
                "history": False,
                "action": False,
            }
        )
        with contextlib.suppress(TimeoutError, Closed, OSError):
            while True:
                conn.read()

    with hostile_run(workdir, cert_files, script) as (_server, client):
        found = client.wait_line(lambda o: o.get("type") == "message" and o.get("nick") == "mallory")
        raw = next((line for line in list(client.lines) if '"mallory"' in line and '"message"' in line), "")
        carried = [name for name, ch in DANGEROUS.items() if ch in raw]
        f.check(
            "raw control characters in the JSON output line",
            ", ".join(carried) or "none",
            bool(raw) and not carried,
            "none (escaped as \\uXXXX)",
        )
        value = "" if found is None else str(found.get("text"))
        f.measure("the text field after decoding", ascii(value))
    return f


HOSTILE: list[Callable[[Path, dict[str, str]], Figures]] = [
    hostile_prekey_counts,
    hostile_keys_flood,
    hostile_endless_login,
    hostile_unknown_statuses,
    *[(lambda w, c, name=name: hostile_garbage(w, c, name)) for name in GARBAGE],
    hostile_control_text,
]


def run_hostile(workdir: Path, cert_files: dict[str, str]) -> list[Figures]:
    """Every hostile-server attack, at once (each has its own server, client and directory):
    most of their time is the endless login's wait."""

    def one(i: int, attack: Callable[[Path, dict[str, str]], Figures]) -> Figures:
        d = workdir / f"hostile{i}"
        d.mkdir()
        t0 = time.monotonic()
        fig = attack(d, cert_files)
        fig.seconds = time.monotonic() - t0
        return fig

    with ThreadPoolExecutor(max_workers=len(HOSTILE)) as pool:
        return list(pool.map(lambda pair: one(*pair), enumerate(HOSTILE)))
