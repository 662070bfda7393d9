"""`make chaos`: real processes, real faults, and an exact count of every whisper.

The README promises "Nothing acknowledged is lost". This harness tries to break that from
the outside: it runs a real `securechat server` process and real `securechat client --json`
processes (each with its own XDG_DATA_HOME keystore directory and an empty
SECURECHAT_PASSPHRASE), drives a mixed load through their stdin, reads every line they
print, and injects real faults: SIGKILL of the server or of a client (aimed at the narrow
windows where a loss could hide, or at random moments), a full tmpfs under the database,
a damaged database, a low descriptor limit, clock jumps; for a cluster of three nodes on
PostgreSQL and Redis, SIGKILL of a node, and Redis killed (started again empty) or frozen.

Every whisper carries a unique token as its text (``w-<sender>-<n>``; end markers
``m-<sender>-<to>``), so what a sender was told can be matched with what its recipient
printed whatever the message-id format.

The figures (one column per scenario in `format_table`):

``sent``
    whisper commands the harness wrote to a client's stdin.
``accepted``
    answered by ``whisper_sent`` (the client took it: with a durable outbox, it is
    committed and will be sent until the server says stored).
``refused``
    answered by ``command_error`` (nothing was sent, e.g. while reconnecting), or never
    answered because the client was killed first. Not covered by the guarantee.
``stored``
    distinct whispers whose sender saw ``whisper_status`` "stored" (or "delivered"): the
    acknowledged ones. The guarantee is about exactly these.
``delivered``
    distinct whispers whose sender saw "delivered".
``shown``
    distinct whispers printed (``whisper`` line) by their intended recipient.
``recovered``
    first shown with ``"replay": true``: the previous run of the recipient's client was
    killed after committing it and before it confirmed printing it. Not lost, not a
    duplicate.
``replayed``
    shown again with ``"replay": true`` after having been shown already (the
    display-boundary at-least-once window). Reported, allowed.
``lost``
    stored, but never shown to the recipient by the end of the run. FAILS the run.
``shown twice``
    shown again with ``"replay": false``. FAILS the run.
``phantom``
    a whisper line whose text matches nothing sent to that recipient. FAILS the run.
``failed``
    ``whisper_status`` "failed" or ``whisper_failed`` lines (cannot be decrypted).
``unconfirmed``
    accepted but never stored by the end (the sender's outbox still holds them, or they
    died with an unacknowledged send): reported, not covered.
``store-unavailable``
    ``error`` frames with code store-unavailable (each a retryable refusal).
``room said / seen``
    room lines said, and seen by at least one other client (room lines are not covered
    by the whisper guarantee: the last ~0.5 s of history may be lost at a crash).

Kills are counted by kind: ``drain`` (the server killed as soon as a reconnecting
recipient printed the first whisper of its offline queue), ``commit`` (the server killed as
soon as a sender saw "stored" for a whisper its online recipient had not printed yet),
``random``, ``missed`` (an aimed kill whose moment did not come within its wait, done at
once instead), and for kills of a recipient's client: ``client-live`` (0-5 ms after it
printed a whisper during a burst to it), ``client-drain`` (0-5 ms after it printed the first
whisper of the queue it drains at login), ``client-ack`` (the moment a sender saw
"delivered" for a whisper the recipient had not printed yet), ``client-missed``.

A run fails on any ``lost``, ``shown twice`` or ``phantom``, on ``unconfirmed`` left after
the settle phase (``whisper_sent`` promises a durable outbox), and on a scenario's own
contract violations (listed under "notes").

Every wait is on an event (a line printed, a process ending, a port answering) with a
deadline; every process started is killed at the end, even on failure. Only 127.0.0.1 is
ever contacted.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from server_process import server_argv

if TYPE_CHECKING:
    from redis_server import RedisServer

#: Longest wait for any one event (a banner, a reply, a reconnect). Generous for a busy CI
#: machine; a passing run never waits this long, since every wait ends on its event.
TIMEOUT = 15.0
#: A cluster node's lease in the cluster scenario (seconds): short, so that a killed
#: node's nicks are free again soon after its clients come back through the other node.
CLUSTER_LEASE = 2.0
HOST = "127.0.0.1"
TOKEN = re.compile(r"\b([wm]-[A-Za-z0-9_.-]+?-[0-9A-Za-z_.-]+)\b")
ROOM_TOKEN = re.compile(r"^r-([A-Za-z0-9_.]+)-(\d+)$")

Json = dict[str, Any]


#: Run the product from another source tree (e.g. a `git archive` of an older commit, to
#: measure a baseline) instead of the installed one: a directory holding `securechat/`.
SOURCE = os.environ.get("SECURECHAT_CHAOS_SOURCE", "")


def product_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a server or client process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    if SOURCE:
        env["PYTHONPATH"] = SOURCE + os.pathsep + env.get("PYTHONPATH", "")
    return env


@functools.cache
def _server_has_init_flag() -> bool:
    """Whether the product's `securechat server` wants --init for a new data directory
    (older trees, run as a baseline, create it by themselves and know no such flag)."""
    # Asked of the command itself: where its flags are spelt has moved before (they are
    # made from ServerConfig's fields now), and a text search of one file went stale.
    help_text = subprocess.run(
        [sys.executable, "-m", "securechat", "server", "--help"],
        env=product_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return "--init" in help_text


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def git_revision(repo: Path) -> str:
    """HEAD, with "+dirty" when the work tree differs (others edit it concurrently)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "securechat"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


# -- processes ------------------------------------------------------------------------------


class Proc:
    """A child process whose stdout lines go to `on_line` from a reader thread."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        log: Path,
        on_line: Callable[[str], None],
        cwd: Path,
        stdin: bool = True,
    ) -> None:
        self._log_file = log.open("ab")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=env,
            cwd=cwd,
            text=True,
            bufsize=1,
        )
        self.pid = self.popen.pid
        self.log = log
        self.eof = threading.Event()
        self._on_line = on_line
        self._write_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"chaos-read-{self.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.popen.stdout
        assert stdout is not None
        try:
            for line in stdout:
                self._on_line(line)
        except (OSError, ValueError):
            pass
        finally:
            self.eof.set()

    def write(self, line: str) -> bool:
        """Write one line to stdin; False if the process is gone."""
        stdin = self.popen.stdin
        if stdin is None:
            return False
        with self._write_lock:
            try:
                stdin.write(line + "\n")
                stdin.flush()
            except (OSError, ValueError):
                return False
        return True

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL now (safe from any thread, and on a process already gone)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float = TIMEOUT) -> int | None:
        """The exit status once it ended and its stdout was read to the end; None on timeout."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.eof.wait(timeout)
        return code

    def reap(self) -> None:
        """Kill if still running, wait, close the pipes (for cleanup paths)."""
        if self.alive():
            self.kill9()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(TIMEOUT)
        self.eof.wait(TIMEOUT)
        for pipe in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError, ValueError):
                if pipe is not None:
                    pipe.close()
        self._log_file.close()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class ServerProc:
    """`securechat server` on 127.0.0.1:`port` over `data_dir`, restartable in place."""

    def __init__(
        self,
        port: int,
        data_dir: Path,
        cert_files: dict[str, str],
        workdir: Path,
        *,
        extra: tuple[str, ...] = (),
        wrapper: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        name: str = "server",
    ) -> None:
        self.port = port
        self.name = name  # its logs: NAME-N.log
        self.data_dir = data_dir
        self.cert_files = cert_files
        self.workdir = workdir
        self.extra = extra
        self.wrapper = wrapper
        self.env = env or {}
        self.proc: Proc | None = None
        self.starts = 0
        self._banner = threading.Event()
        self.all: list[Proc] = []

    def _on_line(self, line: str) -> None:
        if f":{self.port} (TLS)" in line:
            self._banner.set()

    def spawn(self) -> Proc:
        self._banner.clear()
        self.starts += 1
        argv = [
            *self.wrapper,
            *server_argv(
                self.port,
                self.data_dir,
                self.cert_files,
                "--message-rate",
                "0",  # a fast mixed load on purpose (the server logs it)
                "--log-level",
                "warning",
                *self.extra,
                host=HOST,
                # Only the very first start makes the directory: a restart must find it.
                init=self.starts == 1 and _server_has_init_flag(),
            ),
        ]
        env = product_env(self.env)
        self.proc = Proc(
            argv,
            env=env,
            log=self.workdir / f"{self.name}-{self.starts}.log",
            on_line=self._on_line,
            cwd=self.workdir,
            stdin=False,
        )
        self.all.append(self.proc)
        return self.proc

    def start(self, timeout: float = TIMEOUT) -> None:
        """Start and wait for the banner; raises with the log if it exits or stays silent."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.spawn()
            if self.wait_ready(proc, max(0.1, deadline - time.monotonic())):
                return
            code = proc.wait(1.0)
            log = proc.log_text()
            proc.reap()
            # The port may still be held by the previous process's sockets for a moment.
            if time.monotonic() < deadline and "cannot listen" in log:
                continue
            raise AssertionError(f"server did not start (exit {code}):\n{log[-3000:]}")

    def wait_ready(self, proc: Proc, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._banner.wait(0.05):
            if not proc.alive() or time.monotonic() > deadline:
                return self._banner.is_set()
        return True

    def try_start(self, timeout: float = TIMEOUT) -> tuple[bool, int | None, str]:
        """Start; (came up, exit status if it ended, its log). For damaged-database cases."""
        proc = self.spawn()
        if self.wait_ready(proc, timeout):
            return True, None, proc.log_text()
        code = proc.wait(TIMEOUT)
        log = proc.log_text()
        proc.reap()
        return False, code, log

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill9()

    def wait_dead(self) -> None:
        if self.proc is not None:
            self.proc.reap()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; every process this object started is reaped."""
        for proc in self.all:
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(TIMEOUT)
            proc.reap()


# -- bookkeeping ----------------------------------------------------------------------------


@dataclass
class WhisperRecord:
    token: str
    sender: str
    to: str
    msg_id: str = ""
    accepted: bool = False
    refused: str = ""
    stored: bool = False
    delivered: bool = False
    failed: str = ""
    store_unavailable: int = 0
    shows: list[bool] = field(default_factory=list)  # the replay flag of each time it was shown
    #: The sending device (a client's label: its nick, or nick-dN for a linked device).
    sender_label: str = ""
    #: Per device (label): the replay flag of each time it showed the whisper, and of
    #: each time it showed the copy (a device of the sender's other than the one sending).
    shown_on: dict[str, list[bool]] = field(default_factory=dict)
    copied_on: dict[str, list[bool]] = field(default_factory=dict)
    sent_at: float = 0.0  # time.monotonic() of each step, for the report on a loss
    stored_at: float = 0.0
    delivered_at: float = 0.0


@dataclass
class Figures:
    """The counts of one scenario run (see the module docstring for their meaning)."""

    scenario: str
    sent: int = 0
    accepted: int = 0
    refused: int = 0
    stored: int = 0
    delivered: int = 0
    shown: int = 0
    recovered: int = 0
    replayed: int = 0
    lost: int = 0
    shown_twice: int = 0
    phantom: int = 0
    failed: int = 0
    unconfirmed: int = 0
    store_unavailable: int = 0
    #: Acknowledged stored by the server (the sender's outbox says so) but the status was
    #: never printed: a kill of the sender cut it between recording and printing.
    status_cut: int = 0
    room_said: int = 0
    room_seen: int = 0
    #: Copies owed to the sender's other devices (acknowledged whispers only), and shown.
    copies_owed: int = 0
    copies_shown: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    lost_tokens: list[str] = field(default_factory=list)
    twice_tokens: list[str] = field(default_factory=list)
    #: Scenario-specific observations (e.g. "came up": 0) and broken promises of the contract.
    contract: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    #: Whether `unconfirmed` breaks a promise: `whisper_sent` means committed to a durable
    #: outbox and sent until stored, so after the settle phase none may be left.
    check_outbox: bool = True
    unconfirmed_tokens: list[str] = field(default_factory=list)
    outcome: str = ""

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{self.lost} acknowledged whisper(s) lost: {self.lost_tokens[:10]}")
        if self.shown_twice:
            out.append(f"{self.shown_twice} whisper(s) shown twice: {self.twice_tokens[:10]}")
        if self.phantom:
            out.append(f"{self.phantom} phantom whisper line(s)")
        if self.check_outbox and self.unconfirmed:
            out.append(
                f"{self.unconfirmed} whisper(s) answered whisper_sent were never stored "
                f"(the outbox promise): {self.unconfirmed_tokens[:10]}"
            )
        return out + self.violations

    def as_json(self) -> Json:
        return dict(self.__dict__)


class Ledger:
    """Everything the clients printed, matched by token. All methods hold `cond`."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.whispers: dict[str, WhisperRecord] = {}
        self.by_id: dict[str, WhisperRecord] = {}
        self.failed_lines = 0
        self.phantom = 0
        self.store_unavailable = 0
        self.room_said: set[str] = set()
        self.room_seen: set[str] = set()
        #: Each person's devices: folded nick -> client labels, the identity's device first.
        self.devices: dict[str, list[str]] = {}
        self.garbage: list[str] = []
        #: The server's clock minus ours, from the `ts` of the newest live room line or
        #: whisper shown (seconds).
        self.server_skew = 0.0

    def new_whisper(self, token: str, sender: str, to: str, sender_label: str = "") -> WhisperRecord:
        rec = WhisperRecord(token, sender, to, sent_at=time.monotonic(), sender_label=sender_label or sender)
        self.whispers[token] = rec
        return rec

    def apply(self, client: ClientProc, obj: Json) -> None:
        kind = obj.get("type")
        if kind == "whisper_sent":
            rec = client.pending.popleft() if client.pending else None
            if rec is not None:
                rec.accepted, rec.msg_id = True, str(obj.get("id", ""))
                self.by_id[rec.msg_id] = rec
        elif kind == "command_error":
            m = TOKEN.search(str(obj.get("command", "")))
            if m and m.group(1) in self.whispers and client.pending and client.pending[0].token == m.group(1):
                rec = client.pending.popleft()
                rec.refused = str(obj.get("reason", "refused"))
        elif kind == "whisper_status":
            rec = self.by_id.get(str(obj.get("id", "")))
            status = obj.get("status")
            if rec is not None:
                if status in ("stored", "delivered") and not rec.stored:
                    rec.stored, rec.stored_at = True, time.monotonic()
                if status == "delivered" and not rec.delivered:
                    rec.delivered, rec.delivered_at = True, time.monotonic()
                if status == "failed":
                    rec.failed = str(obj.get("reason", "failed"))
        elif kind == "whisper" and "sender" in obj:
            if not obj.get("replay") and isinstance(obj.get("ts"), (int, float)):
                self.server_skew = float(obj["ts"]) - time.time()  # the server's time of storing
            text = str(obj.get("text", ""))
            rec = self.whispers.get(text)
            if rec is None or rec.to.lower() != client.nick.lower():
                self.phantom += 1
            else:
                rec.shows.append(bool(obj.get("replay", False)))
                rec.shown_on.setdefault(client.label, []).append(bool(obj.get("replay", False)))
        elif kind == "whisper_copied":
            rec = self.whispers.get(str(obj.get("text", "")))
            if rec is None or rec.sender.lower() != client.nick.lower() or rec.sender_label == client.label:
                self.phantom += 1  # a copy of nothing this person's other device sent
            else:
                rec.copied_on.setdefault(client.label, []).append(bool(obj.get("replay", False)))
        elif kind == "whisper_failed":
            self.failed_lines += 1
        elif kind == "error" and obj.get("code") == "store-unavailable":
            self.store_unavailable += 1
            rec = self.by_id.get(str(obj.get("ref", "")))
            if rec is not None:
                rec.store_unavailable += 1
        elif kind == "message":
            if not obj.get("history") and isinstance(obj.get("ts"), (int, float)):
                self.server_skew = float(obj["ts"]) - time.time()
            text = str(obj.get("text", ""))
            if ROOM_TOKEN.match(text) and obj.get("nick") != client.nick:
                self.room_seen.add(text)

    # -- queries (call with cond held) --

    def stored_count(self) -> int:
        return sum(1 for r in self.whispers.values() if r.stored)

    def queued_for(self, client: ClientProc) -> int:
        """Acknowledged whispers to `client`'s person that this device has not shown yet."""
        return sum(
            1
            for r in self.whispers.values()
            if r.to.lower() == client.nick.lower() and r.stored and client.label not in r.shown_on
        )

    def owed(self, rec: WhisperRecord) -> list[tuple[str, dict[str, list[bool]]]]:
        """Every device that must show `rec`, with where its shows are counted: each of
        the recipient's devices (the whisper), each of the sender's other devices (the copy)."""
        to = self.devices.get(rec.to.lower(), [rec.to])
        own = [d for d in self.devices.get(rec.sender.lower(), []) if d != rec.sender_label]
        return [(d, rec.shown_on) for d in to] + [(d, rec.copied_on) for d in own]

    def missing(self, rec: WhisperRecord) -> list[str]:
        """The devices that owe `rec` a show and have not shown it."""
        return [device for device, shows in self.owed(rec) if not shows.get(device)]

    def unconfirmed(self) -> list[WhisperRecord]:
        """Accepted (whisper_sent) but not acknowledged stored yet."""
        return [r for r in self.whispers.values() if r.accepted and not r.stored]

    def unshown_acknowledged(self) -> list[WhisperRecord]:
        return [r for r in self.whispers.values() if r.stored and self.missing(r)]

    def figures(self, scenario: str) -> Figures:
        f = Figures(scenario)
        for r in self.whispers.values():
            f.sent += 1
            f.accepted += r.accepted
            f.refused += not r.accepted
            f.stored += r.stored
            f.delivered += r.delivered
            f.failed += bool(r.failed)
            # Per device: the first show may be a replay (recovered after a kill); a
            # later show flagged replay is allowed, one not flagged is shown twice.
            every = [*r.shown_on.values(), *r.copied_on.values()]
            if r.shows:
                f.shown += 1
                f.recovered += any(shows[0] for shows in every if shows)
                f.replayed += sum(1 for shows in every for replay in shows[1:] if replay)
            if any(not replay for shows in every for replay in shows[1:]):
                f.shown_twice += 1
                f.twice_tokens.append(r.token)
            if r.stored:
                copies = [d for d, shows in self.owed(r) if shows is r.copied_on]
                f.copies_owed += len(copies)
                f.copies_shown += sum(1 for d in copies if r.copied_on.get(d))
                if self.missing(r):
                    f.lost += 1
                    f.lost_tokens.append(r.token)
            if r.accepted and not r.stored:
                f.unconfirmed += 1
                f.unconfirmed_tokens.append(r.token)
        f.failed += self.failed_lines
        f.phantom = self.phantom
        f.store_unavailable = self.store_unavailable
        f.room_said = len(self.room_said)
        f.room_seen = len(self.room_seen & self.room_said)
        return f


class ClientProc:
    """One user's `securechat client --json`, restartable with the same keystore directory."""

    def __init__(self, chaos: Chaos, nick: str, label: str = "") -> None:
        self.chaos = chaos
        self.nick = nick
        #: Which of the person's devices this is: the nick for the identity's device,
        #: nick-dN for a linked one (its own home, so its own keystore).
        self.label = label or nick
        self.home = chaos.workdir / "users" / self.label
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc: Proc | None = None
        self.pending: deque[WhisperRecord] = deque()  # whisper commands awaiting their answer
        self.online = False
        self.connects = 0  # welcome or reconnected lines seen, over every run
        self.published = False
        self.runs = 0
        self.all: list[Proc] = []
        self.counter = itertools.count(1)
        self.room_counter = itertools.count(1)
        self.send_lock = threading.Lock()  # a command's FIFO place and its stdin line together

    # -- process --

    def spawn(self) -> Proc:
        self.runs += 1
        argv = [
            sys.executable,
            "-m",
            "securechat",
            "client",
            "--json",
            "--nick",
            self.nick,
            "--host",
            HOST,
            "--port",
            str(self.chaos.port),
            "--cafile",
            self.chaos.cert_files["ca"],
        ]
        env = product_env(
            {
                "XDG_DATA_HOME": str(self.home),
                "XDG_CONFIG_HOME": str(self.home / "config"),
                "SECURECHAT_PASSPHRASE": "",
                **self.chaos.client_env,
            }
        )
        proc_box: list[Proc] = []

        def on_line(line: str) -> None:
            self.chaos.on_line(self, proc_box[0] if proc_box else None, line)

        with self.chaos.ledger.cond:
            self.pending.clear()
            self.online = False
        proc = Proc(
            argv,
            env=env,
            log=self.chaos.workdir / f"client-{self.label}-{self.runs}.log",
            on_line=on_line,
            cwd=self.chaos.workdir,
        )
        proc_box.append(proc)
        self.proc = proc
        self.all.append(proc)
        return proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def start(self, timeout: float = TIMEOUT) -> None:
        """Start and wait until logged in (and, the first time, until its keys are published).

        A start that fails because the server is not up yet is retried until `timeout`.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self.chaos.ledger.cond:
                before = self.connects
            proc = self.spawn()
            ok = self.chaos.wait(
                lambda before=before, proc=proc: (
                    (  # type: ignore[misc]
                        self.connects > before and (self.published or not self.chaos.need_publish)
                    )
                    or not proc.alive()
                ),
                max(0.1, deadline - time.monotonic()),
            )
            if ok and proc.alive():
                return
            proc.reap()
            self._after_exit(proc)
            if time.monotonic() > deadline:
                raise AssertionError(f"client {self.label} did not log in:\n{proc.log_text()[-2000:]}")
            self.chaos.wait(lambda: self.chaos.server.alive(), max(0.1, deadline - time.monotonic()))

    def _after_exit(self, proc: Proc) -> None:
        with self.chaos.ledger.cond:
            if self.proc is proc:
                self.online = False
                self.pending.clear()
            self.chaos.ledger.cond.notify_all()

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill9()

    def reap(self) -> None:
        """After a kill: wait until it is gone and everything it printed was read."""
        if self.proc is not None:
            self.proc.reap()
            self._after_exit(self.proc)

    def quit(self) -> None:
        """Leave cleanly (`quit` command) and wait for the process to end."""
        proc = self.proc
        if proc is None:
            return
        proc.write(json.dumps({"type": "quit", "reason": "chaos: going offline"}))
        if proc.wait(TIMEOUT) is None:
            proc.kill9()
        self.reap()

    # -- commands --

    def whisper(self, to: str, token: str | None = None, wait: bool = True) -> WhisperRecord | None:
        """Whisper a new token to `to`; with `wait`, until answered (or the process ended)."""
        proc = self.proc
        if proc is None:
            return None
        ledger = self.chaos.ledger
        with self.send_lock:
            with ledger.cond:
                token = token or f"w-{self.label}-{next(self.counter)}"
                rec = ledger.new_whisper(token, self.nick, to, self.label)
                self.pending.append(rec)
            written = proc.write(json.dumps({"type": "whisper", "to": to, "text": token}))
        if not written:
            with ledger.cond:
                if rec in self.pending:
                    self.pending.remove(rec)
                rec.refused = "client gone"
            return rec
        if wait:
            self.chaos.wait(lambda: rec.accepted or bool(rec.refused) or not proc.alive(), TIMEOUT)
            with ledger.cond:
                if not rec.accepted and not rec.refused:
                    rec.refused = "no answer"
                    if rec in self.pending:
                        self.pending.remove(rec)
        return rec

    def say(self) -> None:
        if self.proc is None:
            return
        token = f"r-{self.nick}-{next(self.room_counter)}"
        with self.chaos.ledger.cond:
            self.chaos.ledger.room_said.add(token)
        self.proc.write(json.dumps({"type": "say", "text": token}))


@dataclass
class Trigger:
    """A one-shot action run by the reader thread the moment a matching line is read."""

    name: str
    match: Callable[[ClientProc, Json], bool]
    action: Callable[[], None]
    fired: threading.Event = field(default_factory=threading.Event)


# -- the orchestrator -------------------------------------------------------------------------


class Chaos:
    """One scenario: a server process, some users, the load, the faults, the ledger."""

    def __init__(
        self,
        workdir: Path,
        cert_files: dict[str, str],
        *,
        users: int = 5,
        pace: float = 0.25,
        seed: int | None = None,
        data_dir: Path | None = None,
        server_extra: tuple[str, ...] = (),
        server_wrapper: tuple[str, ...] = (),
        server_env: dict[str, str] | None = None,
        client_env: dict[str, str] | None = None,
        devices: dict[str, int] | None = None,
        cluster: tuple[str, str] | None = None,
    ) -> None:
        """`devices`: how many devices a user has (default one); the extra ones are
        linked to the user's identity at `start`, as `securechat link` does."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_files = cert_files
        self.port = free_port()
        self.ledger = Ledger()
        self.rng = random.Random(seed)
        self.pace = pace
        self.client_env = client_env or {}
        # `cluster` (a PostgreSQL DSN, a Redis URL): the server is one node of three
        # sharing the port (--reuse-port); `server` is the one the node faults hit, the
        # `peers` stay up, and the clients of a killed node reconnect to whichever the
        # kernel picks.
        if cluster is not None:
            server_extra = (
                *server_extra,
                "--store",
                cluster[0],
                "--cluster",
                cluster[1],
                "--reuse-port",
                "--node-lease",
                str(CLUSTER_LEASE),
            )
        self.server = ServerProc(
            self.port,
            data_dir or workdir / "server-data",
            cert_files,
            workdir,
            extra=server_extra,
            wrapper=server_wrapper,
            env=server_env,
        )
        self.peers = (
            []
            if cluster is None
            else [
                ServerProc(
                    self.port,
                    workdir / f"peer{n}-data",
                    cert_files,
                    workdir,
                    extra=server_extra,
                    name=f"peer{n}",
                )
                for n in (1, 2)
            ]
        )
        self.clients: dict[str, ClientProc] = {}  # by label
        for i in range(users):
            nick = f"u{i}"
            for n in range((devices or {}).get(nick, 1)):
                client = ClientProc(self, nick, nick if n == 0 else f"{nick}-d{n + 1}")
                self.clients[client.label] = client
                self.ledger.devices.setdefault(nick, []).append(client.label)
        self.triggers: list[Trigger] = []
        self.kills: dict[str, int] = {}
        self.kill_log: list[tuple[float, str]] = []
        self.notes: list[str] = []
        self.need_publish = True
        self.load_on = threading.Event()
        self.stopping = threading.Event()
        self.drivers: list[threading.Thread] = []
        self.driver_errors: list[BaseException] = []
        self.offline_weight = 6.0
        self.started = time.monotonic()

    # -- lines from the clients --

    def on_line(self, client: ClientProc, proc: Proc | None, line: str) -> None:
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        fired: list[Trigger] = []
        with self.ledger.cond:
            if not isinstance(obj, dict):
                if len(self.ledger.garbage) < 20:
                    self.ledger.garbage.append(line[:200])
                return
            if proc is not None and client.proc is not proc:
                # A line from an earlier run of this user, read after its successor started:
                # what it showed and was told counts; its command answers belong to it only.
                if obj.get("type") not in ("whisper_sent", "command_error"):
                    self.ledger.apply(client, obj)
                self.ledger.cond.notify_all()
                return
            kind = obj.get("type")
            if kind in ("welcome", "reconnected"):
                client.online = True
                client.connects += 1
            elif kind in ("reconnecting", "disconnected"):
                client.online = False
            elif kind == "prekey_count" and int(obj.get("count", 0)) > 0:
                client.published = True
            self.ledger.apply(client, obj)
            for trigger in self.triggers:
                if trigger.match(client, obj):
                    fired.append(trigger)
            for trigger in fired:
                self.triggers.remove(trigger)
            self.ledger.cond.notify_all()
        for trigger in fired:
            trigger.action()
            trigger.fired.set()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (on the ledger's condition) until `predicate` holds; False at the deadline."""
        with self.ledger.cond:
            return self.ledger.cond.wait_for(predicate, timeout)

    def arm(
        self, name: str, match: Callable[[ClientProc, Json], bool], action: Callable[[], None]
    ) -> Trigger:
        trigger = Trigger(name, match, action)
        with self.ledger.cond:
            self.triggers.append(trigger)
        return trigger

    def disarm(self, trigger: Trigger) -> None:
        with self.ledger.cond:
            if trigger in self.triggers:
                self.triggers.remove(trigger)

    # -- setup and teardown --

    def start(self) -> None:
        self.server.start()
        for peer in self.peers:
            peer.start()
        self._link_devices()
        for client in self.clients.values():
            client.start()
        self.need_publish = False

    def _link_devices(self) -> None:
        """Make the keystores of every person with several devices and link them: the
        identity's device logs in once, then links each other device as `securechat
        link` does (both sides of the code exchange, through this server). Their client
        processes then start on those keystores."""
        if all(len(labels) == 1 for labels in self.ledger.devices.values()):
            return
        from linking_helpers import link_phone
        from whisper_helpers import login

        from securechat.client.keystore import Keystore
        from securechat.client.whispers import WhisperKeys
        from securechat.transport import client_context

        ctx = client_context(self.cert_files["ca"])

        def keys_of(label: str, nick: str) -> WhisperKeys:
            place = self.clients[label].home / "securechat" / f"localhost_{self.port}" / nick
            return WhisperKeys.in_keystore(Keystore.create(place, None), nick)

        for nick, labels in self.ledger.devices.items():
            if len(labels) < 2:
                continue
            first = keys_of(labels[0], nick)
            holder = login(self.port, ctx, nick, first)
            try:
                for label in labels[1:]:
                    keys = keys_of(label, nick)
                    try:
                        link_phone(self.port, ctx, holder, first, keys, nick=nick)
                    finally:
                        keys.storage.close()
            finally:
                holder.close()
                first.storage.close()

    def devices_of(self, nick: str) -> list[ClientProc]:
        return [self.clients[label] for label in self.ledger.devices.get(nick.lower(), [])]

    def close(self) -> None:
        """Stop the load and every process this run started, whatever state it is in."""
        self.stopping.set()
        self.load_on.clear()
        with self.ledger.cond:
            self.ledger.cond.notify_all()
        for thread in self.drivers:
            thread.join(TIMEOUT)
        for client in self.clients.values():
            for proc in client.all:
                proc.reap()
        self.server.stop()
        for peer in self.peers:
            peer.stop()

    # -- the load --

    def start_load(self) -> None:
        if not self.drivers:
            for client in self.clients.values():
                thread = threading.Thread(
                    target=self._drive, args=(client,), name=f"chaos-drive-{client.nick}", daemon=True
                )
                thread.start()
                self.drivers.append(thread)
        self.load_on.set()

    def pause_load(self) -> None:
        self.load_on.clear()

    def _drive(self, me: ClientProc) -> None:
        rng = random.Random(self.rng.random())
        try:
            while not self.stopping.is_set():
                if not self.load_on.wait(0.5):
                    continue
                if not self.wait(lambda: self.stopping.is_set() or (me.alive() and me.online), 0.5):
                    continue
                if self.stopping.is_set():
                    return
                if rng.random() < 0.1:
                    me.say()
                else:
                    others = [c for c in self.clients.values() if c.nick != me.nick]
                    with self.ledger.cond:
                        weights = [1.0 if (c.alive() and c.online) else self.offline_weight for c in others]
                    to = rng.choices(others, weights)[0]
                    me.whisper(to.nick)
                # Load shaping, not a wait for an outcome: each user whispers every `pace` s.
                self.stopping.wait(rng.uniform(0.5, 1.5) * self.pace)
        except BaseException as exc:  # reported by the scenario, not lost in a thread
            self.driver_errors.append(exc)

    def wait_stored(self, more: int, timeout: float = TIMEOUT) -> bool:
        """Wait until `more` whispers beyond the current count have been acknowledged."""
        with self.ledger.cond:
            target = self.ledger.stored_count() + more
        return self.wait(lambda: self.ledger.stored_count() >= target, timeout)

    # -- server faults --

    def count(self, kind: str) -> None:
        self.kills[kind] = self.kills.get(kind, 0) + 1
        self.kill_log.append((time.monotonic(), kind))

    def explain(self, rec: WhisperRecord) -> str:
        """Where a lost whisper sat relative to the faults (for the report)."""

        def rel(t: float) -> str:
            return f"{t - self.started:.2f}s" if t else "-"

        after = [(t, k) for t, k in self.kill_log if t >= rec.sent_at]
        near = f"next kill {after[0][1]} at {rel(after[0][0])}" if after else "no kill after it"
        return (
            f"{rec.token} {rec.sender}->{rec.to} id={rec.msg_id} sent {rel(rec.sent_at)} "
            f"stored {rel(rec.stored_at)} delivered {rel(rec.delivered_at)}; "
            f"not shown on {self.ledger.missing(rec)}; {near}"
        )

    def restart_server(self) -> None:
        """After a kill: reap it, start it again on the same data dir, wait for every live
        client to log in again by itself."""
        self.server.wait_dead()
        with self.ledger.cond:
            before = {c.label: c.connects for c in self.clients.values() if c.alive()}
        self.server.start()
        if self.peers:
            # A cluster: only the killed node's clients lost their connection, and they
            # may be on a peer already. Each one that is offline comes back.
            self.wait_all_online("a node restart")
            return
        ok = self.wait(
            lambda: all(
                self.clients[n].connects > k or not self.clients[n].alive() for n, k in before.items()
            ),
            TIMEOUT * 2,
        )
        if not ok:
            late = [n for n, k in before.items() if self.clients[n].connects <= k]
            raise AssertionError(f"clients did not reconnect after a server restart: {late}")

    def wait_all_online(self, after: str) -> None:
        """Wait until every live client is logged in (a cluster: on whichever node)."""
        if not self.wait(lambda: all(c.online or not c.alive() for c in self.clients.values()), TIMEOUT * 2):
            late = [c.label for c in self.clients.values() if c.alive() and not c.online]
            raise AssertionError(f"clients did not reconnect after {after}: {late}")

    def kill_server_random(self, low: float = 0.1, high: float = 1.5) -> None:
        # The moment is chosen at random on purpose (this is the unaimed kill).
        self.stopping.wait(self.rng.uniform(low, high))
        self.server.kill9()
        self.count("random")

    def kill_server_in_drain(self, queue: int) -> None:
        """(a) Take a user offline, let whispers queue for it, bring it back, and kill the
        server the moment its client prints the first queued whisper."""
        target = self.rng.choice([c for c in self.clients.values() if c.alive()])
        target.quit()
        if not self.wait(lambda: self.ledger.queued_for(target) >= queue, TIMEOUT * 2):
            self.notes.append(f"drain: only {self.ledger.queued_for(target)} queued for {target.label}")
        server = self.server
        trigger = self.arm(
            "drain",
            lambda c, obj: c is target and obj.get("type") == "whisper" and "sender" in obj,
            server.kill9,
        )
        target.start()
        if trigger.fired.wait(TIMEOUT):
            self.count("drain")
        else:
            self.disarm(trigger)
            server.kill9()
            self.count("missed")

    def kill_server_between_commit_and_ack(self, timeout: float = TIMEOUT) -> None:
        """(b) Kill the server the moment a sender sees "stored" for a whisper its online
        recipient has not printed yet."""

        def match(client: ClientProc, obj: Json) -> bool:
            if obj.get("type") != "whisper_status" or obj.get("status") != "stored":
                return False
            rec = self.ledger.by_id.get(str(obj.get("id", "")))
            if rec is None or rec.shows:
                return False
            return any(to.alive() and to.online for to in self.devices_of(rec.to))

        trigger = self.arm("commit", match, self.server.kill9)
        if trigger.fired.wait(timeout):
            self.count("commit")
        else:
            self.disarm(trigger)
            self.server.kill9()
            self.count("missed")

    # -- client faults --

    def _jittered_kill(self, proc: Proc) -> Callable[[], None]:
        """SIGKILL `proc` after a random 0-5 ms. The line that fires a client kill is printed
        at the end of one whisper's handling; the window that matters (the next whisper
        committed and acknowledged, not printed yet) comes a few milliseconds later, so
        the kill moment is spread over it on purpose (this picks a moment; it waits for
        nothing)."""
        delay = self.rng.uniform(0.0, 0.005)

        def kill() -> None:
            time.sleep(delay)
            proc.kill9()

        return kill

    def burst_to(self, target: ClientProc, each: int) -> None:
        """Every other live user whispers `target` `each` times without waiting for answers."""
        for sender in self.clients.values():
            if sender.nick != target.nick and sender.alive() and sender.online:
                for _ in range(each):
                    sender.whisper(target.nick, wait=False)

    def _aimed_client_kill(
        self,
        target: ClientProc,
        name: str,
        match: Callable[[ClientProc, Json], bool],
        load: Callable[[], None],
        timeout: float,
        *,
        at_once: bool = False,
    ) -> None:
        """Kill `target`'s client on the first line `match` accepts (after a 0-5 ms
        jitter, or `at_once`), with `load` run to make that line come; counted as `name`,
        or as client-missed if it did not come within `timeout` (killed anyway, the other
        way). Then start it again on the same keystore."""
        proc = target.proc
        assert proc is not None
        jittered = self._jittered_kill(proc)
        trigger = self.arm(name, match, proc.kill9 if at_once else jittered)
        load()
        if trigger.fired.wait(timeout):
            self.count(name)
        else:
            self.disarm(trigger)
            (jittered if at_once else proc.kill9)()
            self.count("client-missed")
        target.reap()
        target.start()

    def kill_client_live(self, target: ClientProc, burst: int = 4, timeout: float = TIMEOUT) -> None:
        """Kill a recipient's client (0-5 ms) after its stdout shows a whisper line, during
        a burst of whispers to it; then start it again on the same keystore."""
        self._aimed_client_kill(
            target,
            "client-live",
            lambda c, obj: c is target and obj.get("type") == "whisper" and "sender" in obj,
            lambda: self.burst_to(target, burst),
            timeout,
        )

    def kill_client_at_ack(self, target: ClientProc, burst: int = 4, timeout: float = TIMEOUT / 3) -> None:
        """Kill a recipient's client the moment a sender sees "delivered" (the recipient
        acknowledged it) for a whisper the recipient has not printed yet."""

        def match(client: ClientProc, obj: Json) -> bool:
            if obj.get("type") != "whisper_status" or obj.get("status") != "delivered":
                return False
            rec = self.ledger.by_id.get(str(obj.get("id", "")))
            return rec is not None and rec.to == target.nick and target.label not in rec.shown_on

        self._aimed_client_kill(
            target, "client-ack", match, lambda: self.burst_to(target, burst), timeout, at_once=True
        )

    def kill_client_at_copy(self, target: ClientProc, sender: ClientProc, burst: int = 4) -> None:
        """Kill a device (0-5 ms) after it shows a copy of a whisper its person's other
        device `sender` sent, during a burst of such whispers; then start it again."""
        others = sorted({c.nick for c in self.clients.values() if c.nick != sender.nick})

        def load() -> None:
            for n in range(burst):
                sender.whisper(others[n % len(others)], wait=False)

        self._aimed_client_kill(
            target,
            "client-copy",
            lambda c, obj: c is target and obj.get("type") == "whisper_copied",
            load,
            TIMEOUT,
        )

    def kill_client_in_drain(self, target: ClientProc, queue: int) -> None:
        """Take the client offline, let whispers queue, restart it and kill it (0-5 ms) after
        it prints the first queued whisper; then start it again."""
        target.quit()
        if not self.wait(lambda: self.ledger.queued_for(target) >= queue, TIMEOUT * 2):
            self.notes.append(f"client drain: only {self.ledger.queued_for(target)} queued")
        holder: list[Proc] = []

        def kill() -> None:
            self._jittered_kill(holder[0])()

        trigger = self.arm(
            "client-drain",
            lambda c, obj: c is target and obj.get("type") == "whisper" and "sender" in obj,
            kill,
        )
        holder.append(target.spawn())
        if trigger.fired.wait(TIMEOUT):
            self.count("client-drain")
        else:
            self.disarm(trigger)
            target.kill9()
            self.count("client-missed")
        target.reap()
        target.start()

    # -- the end --

    def settle(self, timeout: float = TIMEOUT * 3) -> None:
        """Stop the load, bring everyone online, send one marker whisper per pair, and wait
        until every marker and every acknowledged whisper has been shown (or the deadline)."""
        self.pause_load()
        for thread in self.drivers:
            thread.join(0)  # drivers finish their current whisper on their own
        if not self.server.alive():
            self.server.wait_dead()
            self.server.start()
        for client in self.clients.values():
            if not client.alive():
                client.reap()
                client.start()
        deadline = time.monotonic() + timeout
        # The drivers may be mid-whisper: wait until none of their commands is unanswered.
        self.wait(lambda: all(not c.pending for c in self.clients.values()), TIMEOUT)
        markers: list[WhisperRecord] = []
        for sender in self.clients.values():
            for to in sorted({c.nick for c in self.clients.values() if c.nick != sender.nick}):
                for attempt in range(5):
                    rec = sender.whisper(to, f"m-{sender.label}-{to}-{attempt}")
                    if rec is not None and rec.accepted:
                        markers.append(rec)
                        break
                    self.wait(lambda s=sender: s.online, TIMEOUT)  # type: ignore[misc]
        ledger = self.ledger
        left = max(1.0, deadline - time.monotonic())
        if not self.wait(lambda: not any(ledger.missing(m) for m in markers), left):
            missing = [m.token for m in markers if ledger.missing(m)]
            self.notes.append(f"settle: markers not shown by the deadline: {missing[:5]}")
        # Every marker was whispered after everything else and shown: what is still not
        # shown gets a last, shorter chance (a resend still on its way), then counts as lost.
        self.wait(lambda: not self.ledger.unshown_acknowledged(), TIMEOUT / 3)
        # The push to the recipient and the sender's "stored" leave after the same commit
        # but on different connections, so the last marker may be shown before its sender
        # hears "stored": wait for those answers too.
        self.wait(lambda: not self.ledger.unconfirmed(), TIMEOUT / 3)

    def _stored_in_outbox(self, unconfirmed: list[WhisperRecord]) -> list[WhisperRecord]:
        """Of whispers never seen acknowledged, those whose sender's outbox records the
        server's answer (stored, delivered or failed): its client was killed after
        recording the status and before printing it. A status is printed at most once,
        like any line; the outbox (and /history) keeps it. Read from the keystore's
        database: a message's id and state are not sealed."""
        found = []
        for rec in unconfirmed:
            sender = self.clients.get(rec.sender_label)
            if sender is None or not rec.msg_id:
                continue
            for db_path in sender.home.rglob("keystore.db"):
                db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
                try:
                    row = db.execute(
                        "SELECT state FROM messages WHERE direction='out' AND msg_id=?", (rec.msg_id,)
                    ).fetchone()
                except sqlite3.Error:
                    row = None  # an older product without a message store
                finally:
                    db.close()
                if row is not None and row[0] in ("stored", "delivered", "failed"):
                    found.append(rec)
                    break
        return found

    def finish(self, scenario: str, *, count_losses: bool = True) -> Figures:
        """The figures of this run (`count_losses` False: its acknowledged whispers were
        destroyed on purpose, as in the damaged-database cases)."""
        with self.ledger.cond:
            cut = self._stored_in_outbox(self.ledger.unconfirmed())
            for rec in cut:
                rec.stored = True
            figures = self.ledger.figures(scenario)
            figures.status_cut = len(cut)
            if not count_losses:
                figures.lost, figures.lost_tokens = 0, []
                figures.check_outbox = False
            garbage = list(self.ledger.garbage)
        figures.kills = dict(self.kills)
        figures.seconds = round(time.monotonic() - self.started, 1)
        figures.notes = list(self.notes) + [f"non-JSON line: {g!r}" for g in garbage[:3]]
        with self.ledger.cond:
            reasons: dict[str, int] = {}
            for r in self.ledger.whispers.values():
                if r.refused:
                    reasons[r.refused[:60]] = reasons.get(r.refused[:60], 0) + 1
            if reasons:
                figures.notes.append(
                    "refused: " + ", ".join(f"{n}x {why!r}" for why, n in sorted(reasons.items()))
                )
            figures.notes += [
                "lost: " + self.explain(self.ledger.whispers[t]) for t in figures.lost_tokens[:10]
            ]
        if self.driver_errors:
            figures.notes.append(f"driver error: {self.driver_errors[0]!r}")
        return figures


@contextlib.contextmanager
def chaos_run(workdir: Path, cert_files: dict[str, str], **kwargs: Any) -> Iterator[Chaos]:
    chaos = Chaos(workdir, cert_files, **kwargs)
    try:
        yield chaos
    finally:
        chaos.close()


# -- scenarios --------------------------------------------------------------------------------


def scenario_server_kills(
    workdir: Path,
    cert_files: dict[str, str],
    *,
    kills: int,
    queue: int = 20,
    load_between: int = 15,
    users: int = 5,
    pace: float = 0.25,
    seed: int | None = None,
    cluster: tuple[str, str] | None = None,
) -> Figures:
    """The server SIGKILLed `kills` times under a mixed load; kinds cycle drain, commit,
    random, so at least half are aimed. With `cluster` (a PostgreSQL DSN, a Redis URL):
    two nodes sharing one port, one of them killed and started again each time; its
    clients reconnect through the port to whichever node the kernel gives them."""
    kinds = list(itertools.islice(itertools.cycle(["drain", "commit", "random"]), kills))
    with chaos_run(workdir, cert_files, users=users, pace=pace, seed=seed, cluster=cluster) as chaos:
        chaos.start()
        chaos.start_load()
        for kind in kinds:
            if not chaos.wait_stored(load_between, TIMEOUT * 2):
                chaos.notes.append("load stalled before a kill")
            if kind == "drain":
                chaos.kill_server_in_drain(queue)
            elif kind == "commit":
                chaos.kill_server_between_commit_and_ack()
            else:
                chaos.kill_server_random()
            chaos.restart_server()
        chaos.settle()
        return chaos.finish("server kill -9" if cluster is None else "cluster node kill -9")


def scenario_redis_faults(
    workdir: Path,
    cert_files: dict[str, str],
    *,
    faults: int,
    pg_dsn: str,
    redis: RedisServer,
    load_between: int = 15,
    users: int = 5,
    pace: float = 0.25,
    seed: int | None = None,
) -> Figures:
    """Three nodes under a mixed load while their Redis fails `faults` times, in turn:
    killed with SIGKILL and started again empty after a random outage of up to twice
    the node lease (the nodes fence if it outlasts 60% of it), or frozen with SIGSTOP
    past the lease (every node fences) and thawed. Their clients reconnect; no whisper
    acknowledged may be lost or shown twice."""
    kinds = list(itertools.islice(itertools.cycle(["redis kill -9", "redis frozen"]), faults))
    with chaos_run(
        workdir, cert_files, users=users, pace=pace, seed=seed, cluster=(pg_dsn, redis.url)
    ) as chaos:
        chaos.start()
        chaos.start_load()
        for kind in kinds:
            if not chaos.wait_stored(load_between, TIMEOUT * 2):
                chaos.notes.append("load stalled before a Redis fault")
            if kind == "redis kill -9":
                redis.kill9()
                # The outage's length is chosen at random on purpose: shorter and
                # longer than the moment the nodes fence.
                chaos.stopping.wait(chaos.rng.uniform(0.1, 2 * CLUSTER_LEASE))
                redis.start_again()
            else:
                redis.pause()
                chaos.stopping.wait(1.5 * CLUSTER_LEASE)
                redis.resume()
            chaos.count(kind)
            chaos.wait_all_online(kind)
        chaos.settle()
        return chaos.finish("cluster Redis faults")


def scenario_client_kills(
    workdir: Path,
    cert_files: dict[str, str],
    *,
    kills: int,
    queue: int = 15,
    load_between: int = 10,
    users: int = 4,
    pace: float = 0.25,
    seed: int | None = None,
) -> Figures:
    """A recipient's client SIGKILLed `kills` times while receiving, then restarted on the
    same keystore. The kinds cycle: right after a whisper line during a burst to it; right
    after it reconnects and prints the first whisper of its queue; the moment a sender
    sees "delivered" for a whisper it has not printed."""
    with chaos_run(workdir, cert_files, users=users, pace=pace, seed=seed) as chaos:
        chaos.start()
        chaos.offline_weight = 4.0
        chaos.start_load()
        for i in range(kills):
            if not chaos.wait_stored(load_between, TIMEOUT * 2):
                chaos.notes.append("load stalled before a kill")
            target = chaos.clients[f"u{i % 2}"]
            kind = i % 3
            if kind == 0:
                chaos.kill_client_live(target)
            elif kind == 1:
                chaos.kill_client_in_drain(target, queue)
            else:
                chaos.kill_client_at_ack(target)
        chaos.settle()
        return chaos.finish("client kill -9")


def scenario_device_kills(
    workdir: Path,
    cert_files: dict[str, str],
    *,
    kills: int,
    queue: int = 10,
    load_between: int = 10,
    pace: float = 0.25,
    seed: int | None = None,
) -> Figures:
    """u0 has two devices (its identity's, u0, and a linked one, u0-d2), u1 and u2 one
    each; every device whispers. Each whisper is owed to every device of its recipient
    and, as a copy, to every other device of its sender, each exactly once. The faults
    cycle: the linked device killed right after it shows a whisper during a burst to u0;
    killed right after it shows a copy of what u0 sent; taken offline and killed as it
    drains its queue; the identity's device killed during a burst; the server killed at a
    random moment. Every killed process is started again on its keystore."""
    with chaos_run(workdir, cert_files, users=3, pace=pace, seed=seed, devices={"u0": 2}) as chaos:
        chaos.start()
        chaos.offline_weight = 4.0
        chaos.start_load()
        laptop, phone = chaos.clients["u0"], chaos.clients["u0-d2"]
        for i in range(kills):
            if not chaos.wait_stored(load_between, TIMEOUT * 2):
                chaos.notes.append("load stalled before a kill")
            kind = i % 5
            if kind == 0:
                chaos.kill_client_live(phone)
            elif kind == 1:
                chaos.kill_client_at_copy(phone, laptop)
            elif kind == 2:
                chaos.kill_client_in_drain(phone, queue)
            elif kind == 3:
                chaos.kill_client_live(laptop)
            else:
                chaos.kill_server_random()
                chaos.restart_server()
        chaos.settle()
        return chaos.finish("linked devices kill -9")


class NotSupportedHere(Exception):
    """The machine cannot run this fault (not root, no tmpfs, no libfaketime): a skip."""


def _mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        raise NotSupportedHere("mounting a tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise NotSupportedHere(f"mount -t tmpfs failed: {done.stderr.strip()}")


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=TIMEOUT, check=False)


def _fill(directory: Path) -> int:
    """Write a filler file until the file system is full (dd stops at ENOSPC); its size."""
    filler = directory / "filler"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"],
        capture_output=True,
        timeout=TIMEOUT * 4,
        check=False,
    )
    return filler.stat().st_size if filler.exists() else 0


def scenario_disk_full(
    workdir: Path,
    cert_files: dict[str, str],
    *,
    cycles: int = 1,
    users: int = 4,
    pace: float = 0.2,
    seed: int | None = None,
) -> Figures:
    """The server's data directory on an 8 MiB tmpfs, filled to the last byte and freed
    again, under load. Whispers sent while it is full must be refused with a retryable
    `store-unavailable` error (`ref` = their id) and sent again by the client later; the
    server must stay up; nothing acknowledged may be lost."""
    mount = workdir / "tmpfs"
    _mount_tmpfs(mount, "8m")
    try:
        with chaos_run(
            workdir, cert_files, users=users, pace=pace, seed=seed, data_dir=mount / "server"
        ) as chaos:
            chaos.start()
            chaos.start_load()
            refused_while_full = 0
            for _cycle in range(cycles):
                if not chaos.wait_stored(20, TIMEOUT * 2):
                    chaos.notes.append("load stalled before filling the disk")
                with chaos.ledger.cond:
                    before = chaos.ledger.store_unavailable
                size = _fill(mount)
                chaos.count("disk-full")
                # Whispers now must be refused, not acknowledged: wait for a few refusals.
                if not chaos.wait(lambda b=before: chaos.ledger.store_unavailable >= b + 5, TIMEOUT * 2):
                    got = chaos.ledger.store_unavailable - before
                    chaos.notes.append(
                        f"disk full ({size} bytes of filler): only {got} store-unavailable errors "
                        f"in {TIMEOUT * 2:.0f} s"
                    )
                with chaos.ledger.cond:
                    refused_while_full += chaos.ledger.store_unavailable - before
                if not chaos.server.alive() and chaos.server.proc is not None:
                    tail = chaos.server.proc.log_text()[-300:]
                    chaos.notes.append(f"the server exited while the disk was full: {tail}")
                (mount / "filler").unlink(missing_ok=True)
                if not chaos.server.alive():
                    chaos.restart_server()
                if not chaos.wait_stored(20, TIMEOUT * 2):
                    chaos.notes.append("whispers did not flow again after the disk was freed")
            chaos.settle()
            figures = chaos.finish("disk full")
            with chaos.ledger.cond:
                never = [
                    r.token for r in chaos.ledger.whispers.values() if r.store_unavailable and not r.stored
                ]
            figures.contract["store-unavailable while full"] = refused_while_full
            figures.contract["refused, never stored after"] = len(never)
            figures.contract["server stayed up"] = int(
                all(p.popen.returncode in (None, -signal.SIGTERM, 0) for p in chaos.server.all[:-1])
                and len(chaos.server.all) == 1
            )
            if refused_while_full == 0:
                figures.violations.append(
                    "no whisper was refused with store-unavailable while the disk was full"
                )
            if never:
                figures.violations.append(
                    f"{len(never)} whisper(s) refused store-unavailable never stored: {never[:5]}"
                )
            if len(chaos.server.all) != 1:
                figures.violations.append("the server exited while the disk was full")
            return figures
    finally:
        _umount(mount)


#: How the database is damaged after a kill -9 (see `scenario_damaged_database`).
DAMAGES = ("emptied", "truncated", "wal-removed", "dir-deleted-while-running")


def _damage(data_dir: Path, how: str) -> None:
    db = data_dir / "securechat.db"
    if how == "emptied":
        os.truncate(db, 0)
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    elif how == "truncated":
        # Checkpointed first? No: the kill left the WAL; the main file loses its second half.
        os.truncate(db, db.stat().st_size // 2)
    elif how == "wal-removed":
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    elif how == "dir-deleted-while-running":
        shutil.rmtree(data_dir)
    else:
        raise ValueError(how)


def scenario_damaged_database(
    workdir: Path, cert_files: dict[str, str], how: str, *, queued: int = 10, seed: int | None = None
) -> Figures:
    """Whispers queued for an offline user (u2), then the database damaged for real:

    - after a kill -9: `emptied` (truncated to 0 bytes, -wal gone), `truncated` (the main
      file, checkpointed by a clean restart first, cut in half), `wal-removed` (the -wal
      holding the last commits deleted). The server must refuse to start (non-zero exit
      and a message naming the problem), or come up and refuse every write; it must
      never come up and accept writes while what it had acknowledged is gone (checked
      by bringing u2 back to drain its queue).
    - `dir-deleted-while-running`: the data directory removed under a running server.
      Whispers (to the offline u2) are then sent one at a time for up to TIMEOUT seconds:
      the server must start refusing them (store-unavailable) or stop within that time;
      how many it still acknowledged before noticing is reported ("stored after
      deletion"): those live only in deleted files.

    The queued whispers are destroyed on purpose, so they do not count as lost here.
    """
    with chaos_run(workdir / how, cert_files, users=3, pace=0.2, seed=seed) as chaos:
        chaos.start()
        offline = chaos.clients["u2"]
        offline.quit()
        senders = [chaos.clients["u0"], chaos.clients["u1"]]
        for i in range(queued):
            senders[i % 2].whisper("u2")
        chaos.wait(lambda: chaos.ledger.queued_for(chaos.clients["u2"]) >= queued, TIMEOUT)
        with chaos.ledger.cond:
            before = chaos.ledger.queued_for(chaos.clients["u2"])
        data_dir = chaos.server.data_dir
        name = f"db {how}"
        if how == "dir-deleted-while-running":
            return _deleted_while_running(chaos, name, data_dir, senders[0])
        sender = senders[0]
        if how == "truncated" and chaos.server.proc is not None:
            # A clean stop checkpoints the WAL into the main file first, so that cutting
            # the main file cuts what the database holds (not just pages the WAL repeats).
            chaos.server.proc.popen.terminate()
            chaos.restart_server()
        with chaos.ledger.cond:
            connects = sender.connects
        chaos.server.kill9()
        chaos.server.wait_dead()
        chaos.count("kill9")
        _damage(data_dir, how)
        came_up, code, log = chaos.server.try_start()
        contract: dict[str, Any] = {"queued before": before, "came up": int(came_up)}
        violations: list[str] = []
        if came_up:
            # Up: it must refuse writes, or still hold everything it acknowledged.
            rec = None
            if chaos.wait(lambda: sender.connects > connects, TIMEOUT * 2):
                rec = sender.whisper("u1")
            chaos.wait(
                lambda: rec is None or rec.stored or bool(rec.store_unavailable) or bool(rec.refused), TIMEOUT
            )
            accepted_write = rec is not None and rec.stored
            contract["accepted a write"] = int(accepted_write)
            contract["write answer"] = _answer(rec)
            drained = 0
            try:
                offline.start()
                chaos.wait(lambda: chaos.ledger.queued_for(chaos.clients["u2"]) == 0, TIMEOUT)
                drained = before - chaos.ledger.queued_for(chaos.clients["u2"])
            except AssertionError as exc:
                chaos.notes.append(f"u2 could not log in again: {exc}"[:200])
            contract["queued shown after"] = drained
            if accepted_write and drained < before:
                violations.append(
                    f"the server came up after the database was {how}, accepted writes, "
                    f"and {before - drained} acknowledged whisper(s) were gone"
                )
        else:
            message = _last_error_line(log)
            contract["exit status"] = code if code is not None else "-"
            contract["message"] = message[:160]
            if code in (0, None):
                violations.append(f"the server ended with status {code} after the database was {how}")
            if not message:
                violations.append("the server refused to start without saying why")
        figures = chaos.finish(name, count_losses=False)
        figures.contract.update(contract)
        figures.violations += violations
        return figures


def _deleted_while_running(chaos: Chaos, name: str, data_dir: Path, sender: ClientProc) -> Figures:
    _damage(data_dir, "dir-deleted-while-running")
    chaos.count("dir-deleted")
    deleted_at = time.monotonic()
    stored_after = 0
    noticed_after: float | None = None
    while time.monotonic() - deleted_at < TIMEOUT:
        rec = sender.whisper("u2")
        if rec is None:
            break
        chaos.wait(
            lambda rec=rec: (
                rec.stored or bool(rec.store_unavailable) or bool(rec.refused) or not chaos.server.alive()
            ),
            TIMEOUT,
        )
        if rec.store_unavailable or not chaos.server.alive():
            noticed_after = time.monotonic() - deleted_at
            break
        stored_after += rec.stored
        # Load shaping: a whisper every 0.1 s while waiting for the server to notice.
        chaos.stopping.wait(0.1)
    restart = "-"
    if noticed_after is not None:
        chaos.server.kill9()
        chaos.server.wait_dead()
        came_up, code, log = chaos.server.try_start()
        restart = "came up (new empty directory)" if came_up else f"refused ({code}): {_last_error_line(log)}"
    figures = chaos.finish(name, count_losses=False)
    figures.contract["stored after deletion"] = stored_after
    figures.contract["noticed after s"] = "never" if noticed_after is None else round(noticed_after, 2)
    figures.contract["server exited"] = int(not chaos.server.alive())
    chaos.notes.append(f"restart after deletion: {restart}"[:200])
    figures.notes.append(f"restart after deletion: {restart}"[:200])
    if noticed_after is None:
        figures.violations.append(
            f"the server kept acknowledging whispers for {TIMEOUT:.0f} s after its data directory "
            f"was deleted ({stored_after} stored into deleted files)"
        )
    elif stored_after:
        figures.violations.append(f"{stored_after} whispers acknowledged as stored into deleted files")
    if restart.startswith("came up"):
        figures.violations.append("after its data directory was deleted the server came back up empty")
    return figures


def _answer(rec: WhisperRecord | None) -> str:
    if rec is None:
        return "not sent"
    if rec.stored:
        return "stored"
    if rec.store_unavailable:
        return "store-unavailable"
    return f"refused: {rec.refused}" if rec.refused else "no answer"


def _last_error_line(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and "rate limit" not in ln]
    return lines[-1] if lines else ""


def scenario_descriptor_limit(
    workdir: Path,
    cert_files: dict[str, str],
    *,
    connections: int = 400,
    limit: int = 256,
    users: int = 4,
    pace: float = 0.2,
    seed: int | None = None,
) -> Figures:
    """The server under a descriptor limit of `limit` (prlimit, soft and hard) while
    `connections` idle TCP connections are opened to it: whispers between the users already
    logged in must still flow and be shown; the server must stay up; once the connections
    close, a new user must get in."""
    if shutil.which("prlimit") is None:
        raise NotSupportedHere("prlimit (util-linux) is not installed")
    wrapper = ("prlimit", f"--nofile={limit}:{limit}", "--")
    with chaos_run(
        workdir,
        cert_files,
        users=users,
        pace=pace,
        seed=seed,
        server_extra=("--max-per-ip", str(connections * 2)),
        server_wrapper=wrapper,
    ) as chaos:
        chaos.start()
        chaos.start_load()
        chaos.wait_stored(15, TIMEOUT * 2)
        flood: list[socket.socket] = []
        try:
            for _ in range(connections):
                s = socket.socket()
                s.settimeout(TIMEOUT)
                try:
                    s.connect((HOST, chaos.port))
                except OSError as exc:
                    s.close()
                    chaos.notes.append(f"connection {len(flood) + 1} failed: {exc}")
                    break
                flood.append(s)
            chaos.count("fd-flood")
            with chaos.ledger.cond:
                before = chaos.ledger.stored_count()
                shown_before = sum(1 for r in chaos.ledger.whispers.values() if r.shows)
            flowed = chaos.wait_stored(30, TIMEOUT * 2)
            with chaos.ledger.cond:
                during = chaos.ledger.stored_count() - before
            shown_ok = chaos.wait(
                lambda: sum(1 for r in chaos.ledger.whispers.values() if r.shows) >= shown_before + 20,
                TIMEOUT,
            )
        finally:
            for s in flood:
                s.close()
        alive = chaos.server.alive()
        # A newcomer after the flood: the server must accept connections again.
        late = ClientProc(chaos, "late")
        chaos.need_publish = True
        newcomer = True
        try:
            late.start()
            chaos.clients["late"] = late  # a whisper target from now on, and settled with the rest
            chaos.ledger.devices["late"] = ["late"]
        except AssertionError as exc:
            late.reap()
            newcomer = False
            chaos.notes.append(f"newcomer after the flood: {exc}"[:300])
        chaos.need_publish = False
        chaos.settle()
        figures = chaos.finish(f"{limit} fds, {connections} conns")
        figures.contract["connections opened"] = len(flood)
        figures.contract["stored during flood"] = during
        figures.contract["server stayed up"] = int(alive)
        figures.contract["newcomer got in"] = int(newcomer)
        if not (flowed and shown_ok):
            figures.violations.append(
                f"whispers stalled under the descriptor limit ({during} stored during the flood)"
            )
        if not alive:
            figures.violations.append("the server died under the descriptor limit")
        if not newcomer:
            figures.violations.append("no new user could log in after the flood")
        return figures


def find_libfaketime() -> str | None:
    for candidate in (
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ):
        if Path(candidate).exists():
            return candidate
    return None


def faketime_env(library: str, control: Path) -> dict[str, str]:
    """libfaketime reading its offset from `control` (rewritten to jump), monotonic left real."""
    return {
        "LD_PRELOAD": library,
        "FAKETIME_TIMESTAMP_FILE": str(control),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_RESET": "1",
    }


def faketime_works(library: str, workdir: Path) -> str:
    """ "" if a Python child sees a +31 d offset written to its control file; else why not."""
    control = workdir / "faketime-probe"
    control.write_text("+31d\n")
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import threading, time; threading.Event().wait(0.05); print(time.time())",
            ],
            env={**os.environ, **faketime_env(library, control)},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        skew = float(done.stdout.strip()) - time.time()
    except (ValueError, OSError, subprocess.SubprocessError) as exc:
        return f"python under libfaketime failed: {exc}"
    finally:
        control.unlink(missing_ok=True)
    if abs(skew - 31 * 86400) > 3600:
        return f"python under libfaketime saw an offset of {skew:.0f} s instead of +31 d"
    return ""


#: (which clock, offset written to its control file): the long version's jumps.
CLOCK_JUMPS = (
    ("server", "+31d"),
    ("server", "-31d"),
    ("server", "+0d"),
    ("clients", "+31d"),
    ("clients", "-31d"),
    ("clients", "+0d"),
)


def scenario_clock_jumps(
    workdir: Path,
    cert_files: dict[str, str],
    *,
    jumps: tuple[tuple[str, str], ...] = CLOCK_JUMPS,
    users: int = 4,
    pace: float = 0.2,
    queue: int = 10,
    seed: int | None = None,
) -> Figures:
    """Wall-clock jumps of +31 d and -31 d, first on the server, then on the clients,
    under load, each with a user offline across the jump so that its queue is drained
    after it. Queued whispers must not expire (the queue keeps them 30 days of *service*,
    not of wall clock); nothing acknowledged may be lost or fail to decrypt."""
    library = find_libfaketime()
    if library is None:
        raise NotSupportedHere("libfaketime is not installed (apt-get install -y faketime)")
    why = faketime_works(library, workdir)
    if why:
        raise NotSupportedHere(why)
    server_clock = workdir / "server-clock"
    client_clock = workdir / "client-clock"
    for control in (server_clock, client_clock):
        control.write_text("+0d\n")
    skews: list[str] = []
    with chaos_run(
        workdir,
        cert_files,
        users=users,
        pace=pace,
        seed=seed,
        server_env=faketime_env(library, server_clock),
        client_env=faketime_env(library, client_clock),
    ) as chaos:
        chaos.start()
        chaos.start_load()
        for who, offset in jumps:
            control = server_clock if who == "server" else client_clock
            chaos.wait_stored(queue, TIMEOUT * 2)
            target = chaos.rng.choice([c for c in chaos.clients.values() if c.alive()])
            target.quit()
            chaos.wait(lambda t=target: chaos.ledger.queued_for(t) >= queue, TIMEOUT * 2)
            control.write_text(offset + "\n")
            chaos.count(f"{who}{offset}")
            # The jump is seen within FAKETIME_CACHE_DURATION (1 s): let the load run across it.
            chaos.wait_stored(queue, TIMEOUT * 2)
            if who == "server":
                # Whispers and room lines carry the server's time: proof its clock moved.
                want = int(offset.rstrip("d")) * 86400
                chaos.wait(lambda w=want: abs(chaos.ledger.server_skew - w) < 3600, TIMEOUT)
                days = round(chaos.ledger.server_skew / 86400)
                skews.append(f"{offset}:{days:+d}d")
            target.start()
            if not chaos.wait(lambda t=target: chaos.ledger.queued_for(t) == 0, TIMEOUT * 2):
                chaos.notes.append(f"{who} {offset}: {target.nick} did not drain its queue")
        chaos.settle()
        figures = chaos.finish("clock jumps")
        figures.contract["server clock seen"] = " ".join(skews)
        if any(v.split(":")[0] != v.split(":")[1] for v in skews):
            figures.notes.append("the server's timestamps did not show every clock jump it was given")
        return figures


# -- figures table ----------------------------------------------------------------------------

_ROWS = [
    ("sent", "sent"),
    ("accepted", "accepted (whisper_sent)"),
    ("refused", "refused / unanswered"),
    ("stored", "acknowledged stored"),
    ("delivered", "delivered"),
    ("shown", "decrypted and shown"),
    ("recovered", "  of which recovered (replay)"),
    ("replayed", "replayed again"),
    ("lost", "LOST (acknowledged)"),
    ("shown_twice", "SHOWN TWICE"),
    ("phantom", "phantom"),
    ("failed", "failed (undecryptable)"),
    ("unconfirmed", "accepted, never stored"),
    ("status_cut", "stored, status print cut by a kill"),
    ("store_unavailable", "store-unavailable errors"),
    ("copies_owed", "copies owed to own devices"),
    ("copies_shown", "copies shown"),
    ("room_said", "room lines said"),
    ("room_seen", "room lines seen"),
    ("kills", "faults"),
    ("seconds", "seconds"),
    ("outcome", "outcome"),
]


def _short(value: object, width: int = 44) -> str:
    """A table cell: absolute paths cut to their file name, long text cut to `width`."""
    text = re.sub(r"/(?:[^/\s]+/)+([^/\s]+)", r"…/\1", str(value))
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: list[Figures]) -> str:
    """One column per scenario, one line per figure, then the scenario-specific checks."""
    if not rows:
        return "(no chaos figures)"

    def cell(f: Figures, key: str) -> str:
        value = getattr(f, key)
        if isinstance(value, dict):
            return " ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
        return str(value)

    header = ["figure"] + [f.scenario for f in rows]
    body = [[label] + [cell(f, key) for f in rows] for key, label in _ROWS]
    checks = list(dict.fromkeys(k for f in rows for k in f.contract))
    body += [[f"check: {k}"] + [_short(f.contract.get(k, "")) for f in rows] for k in checks]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  [{f.scenario}] {_short(n, 200)}" for f in rows for n in f.notes + f.violations]
    return "\n".join(lines + (["notes:", *notes] if notes else []))


def write_figures(path: Path, rows: list[Figures], revision: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "revision": revision,
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "scenarios": [f.as_json() for f in rows],
            },
            indent=2,
        )
        + "\n"
    )


def dump_logs(workdir: Path, out: TextIO, tail: int = 1500) -> None:
    """The tail of every server log of a run (for a failing scenario's report)."""
    for log in sorted(workdir.glob("server-*.log")):
        text = log.read_text(errors="replace")
        if text.strip():
            out.write(f"--- {log.name} ---\n{text[-tail:]}\n")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
