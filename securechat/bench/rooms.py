"""The rooms scenario: many clients spread over many rooms, each line heard in its room only.

Three phases, each measured on its own: the logins (every session lands in the server's
autojoin rooms first, `#lobby` by default), the joins (every client sends `join` for its
rooms at once and waits for its `entered` answers), and steady room lines (every client
says `rate` lines a second, taking its rooms in turn).

Each line's marker `~RUN~SENDER~ROOM~SEQ~MICROSECONDS~` names the room it was said to,
and the receiver reads it together with the `room` field of the `message` frame that
carried it (one regular expression, no JSON decoding, as in loadgen). That makes the
correctness check cheap: a delivery whose frame names a room the receiver is not in, or
another room than the line was said to, is a `wrong_room`; a receiver keeps a bit per
(sender, room, seq) it has seen, so a second copy is a `duplicate`, and what never came
is `missing`. The regular expression depends on the server's field order
(`"room"`, `"nick"`, `"text"`, which `encode` keeps); were it to change, every line
would count as missing and the run would fail loudly, not pass.
"""

from __future__ import annotations

import heapq
import os
import random
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from .dialects import SecureChat
from .loadgen import BenchClient, Loop, Marker, connect
from .procfs import loadavg, sample
from .stats import LatencySummary, summarize

__all__ = ["JoinRefused", "RoomMarker", "RoomsLoop", "RoomsResult", "assign_rooms", "many_rooms", "room_name"]

Progress = Callable[[float, float], None]  # (done, total)

#: Rooms of the benchmark are named `#bench-N`: unlikely to meet a real room on a server
#: given with `--port`.
_ROOM_PREFIX = "#bench-"

#: After the logins and after the joins, the generator reads until nothing has come for
#: this long (at most `_SETTLE_MAX` seconds), so that the notices they cause (`joined`, to
#: the other members; 2 million of them for 2,000 logins into #lobby) are not charged to
#: the next phase.
_QUIET = 0.5
_SETTLE_MAX = 60.0

_ENTERED = re.compile(rb'"type":"entered","room":"([^"]*)"')


class JoinRefused(ConnectionError):
    """The server refused a benchmark client's join, or did not answer all of them in time."""


@dataclass(frozen=True)
class RoomsResult:
    dialect: str
    clients: int
    rooms: int
    rooms_per_client: int
    members_per_room: float  # on average; rooms differ by at most `rooms_per_client`
    rate: float
    seconds: float
    login_seconds: float
    # -- the joins: every client sends its `join`s at once, until the last `entered`
    joins: int
    join_seconds: float
    joins_per_second: float
    join_cpu_us_per_join: float | None  # the server's, notices to other members included
    # -- the steady phase; a delivery is one line arriving once, in its room, at a member
    # other than its sender
    deliveries: int
    expected: int
    per_second: float
    latency: LatencySummary
    out_of_order: int  # per sender and room
    wrong_room: int  # must be 0
    duplicates: int  # must be 0
    missing: int  # expected - deliveries
    cpu_us_per_delivery: float | None
    server_cpu_share: float | None  # server CPU over wall time: 1.0 is one core busy
    generator_cpu_us_per_delivery: float
    generator_cpu_share: float  # near 1.0: the generator, not the server, was the limit
    load_before: float | None  # the machine's 1-minute load average
    load_after: float | None


def room_name(index: int) -> str:
    return f"{_ROOM_PREFIX}{index}"


def assign_rooms(clients: int, rooms: int, per_client: int) -> list[tuple[int, ...]]:
    """The rooms (indexes) of each client: `per_client` distinct rooms each, spread evenly.

    Client i is in rooms i, i + s, i + 2s, ... (mod `rooms`) with s = rooms // per_client,
    so room sizes differ by at most `per_client`. Raises `ValueError` if a client cannot
    be in that many distinct rooms.
    """
    if not 1 <= per_client <= rooms:
        raise ValueError("a client can be in 1 to `rooms` rooms")
    step = rooms // per_client
    return [tuple((i + j * step) % rooms for j in range(per_client)) for i in range(clients)]


class RoomMarker:
    """Writes the markers of one run and finds them with the room of their frame."""

    def __init__(self, run: int | None = None) -> None:
        self.run = run if run is not None else int.from_bytes(os.urandom(4), "big")
        # A securechat `message` frame: {"type":"message","room":R,"nick":N,"text":T,...}
        self._pattern = re.compile(
            rb'"room":"([^"]*)","nick":"[^"]*","text":"~%d~(\d+)~(\d+)~(\d+)~(\d+)~"' % self.run
        )

    def text(self, sender: int, room: int, seq: int) -> str:
        """A line for `sender`'s `seq`th message to room `room`, stamped now."""
        return f"~{self.run}~{sender}~{room}~{seq}~{time.perf_counter_ns() // 1000}~"

    def find(self, data: bytes) -> list[tuple[bytes, bytes, bytes, bytes, bytes]]:
        """(frame's room, sender, marker's room, seq, stamp) of every marker in `data`."""
        return self._pattern.findall(data)


class RoomsLoop(Loop):
    """A `Loop` that checks rooms: which room each delivery names, duplicates, joins answered.

    Everything here runs on the loop's (the caller's) thread.
    """

    def __init__(self, marker: RoomMarker, memberships: list[tuple[int, ...]], names: list[str]) -> None:
        super().__init__([], Marker(marker.run))
        self.room_marker = marker
        #: Per client index: its rooms by the name the server writes, to room index.
        self._member_of = [{names[r].encode(): r for r in rs} for rs in memberships]
        #: Per client index: the rooms whose `entered` it has had.
        self._entered: list[set[int]] = [set() for _ in memberships]
        #: Per client index: (sender, room) -> a bit per seq received.
        self._seen: list[dict[tuple[int, int], int]] = [{} for _ in memberships]
        self.joined = 0
        self.delivered = 0  # the sum of the clients' `received`, kept as it grows
        self.wrong_room = 0
        self.duplicates = 0
        self.errors: list[bytes] = []  # `error` frames the server sent (the first few)
        self.last_read = time.monotonic()  # when a read last completed a line

    @property
    def deliveries(self) -> int:
        # Asked at every turn of the loop: a sum over 2,000 clients each time would cost
        # the generator more than the deliveries themselves.
        return self.delivered

    def deliver(self, c: BenchClient, lines: bytes) -> None:
        me = c.index
        self.last_read = time.monotonic()
        if b'"entered"' in lines:
            mine, entered = self._member_of[me], self._entered[me]
            for room in _ENTERED.findall(lines):
                index = mine.get(room)
                if index is not None and index not in entered:
                    entered.add(index)
                    self.joined += 1
        if b'"type":"error"' in lines and len(self.errors) < 5:
            self.errors += [line for line in lines.splitlines() if b'"type":"error"' in line][:5]
        found = self.room_marker.find(lines)
        if not found:
            return
        now = time.perf_counter_ns() // 1000
        self.last_delivery = time.monotonic()
        mine, seen, lat = self._member_of[me], self._seen[me], self.latencies_us
        for frame_room, sender_b, room_b, seq_b, stamp in found:
            sender = int(sender_b)
            if sender == me:
                continue  # the server echoes a line to its sender
            room = int(room_b)
            if mine.get(frame_room) != room:
                self.wrong_room += 1  # not my room, or not the room it was said to
                continue
            key = (sender, room)
            bits = seen.get(key, 0)
            seq = int(seq_b)
            if bits >> seq & 1:
                self.duplicates += 1
                continue
            if bits >> (seq + 1):
                c.out_of_order += 1  # a later line of this sender in this room came first
            seen[key] = bits | 1 << seq
            c.received += 1
            self.delivered += 1
            lat.append(now - int(stamp))


def _cpu(pid: int | None) -> float | None:
    return sample(pid).cpu_seconds if pid is not None else None


def _settle(loop: RoomsLoop) -> None:
    """Read until the server has sent nothing for `_QUIET` seconds."""
    end = time.monotonic() + _SETTLE_MAX
    while (now := time.monotonic()) < end and now - loop.last_read < _QUIET:
        loop.pump(0.1)


def many_rooms(
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    *,
    clients: int,
    rooms: int,
    rooms_per_client: int = 1,
    rate: float,
    seconds: float,
    server_pid: int | None = None,
    settle: float = 10.0,
    join_timeout: float = 300.0,
    progress: Progress | None = None,
) -> RoomsResult:
    """`clients` clients in `rooms` rooms (`rooms_per_client` each) say `rate` lines/s each.

    Raises `JoinRefused` if the server refuses a join (a cap: `max_rooms`,
    `max_rooms_per_user`) or does not answer them all within `join_timeout`;
    `LoginRefused`, `OSError`, `ssl.SSLError` from the logins.
    """
    dialect = SecureChat()
    memberships = assign_rooms(clients, rooms, rooms_per_client)
    names = [room_name(r) for r in range(rooms)]
    sizes = [0] * rooms
    for rs in memberships:
        for r in rs:
            sizes[r] += 1
    marker = RoomMarker()
    load_before = loadavg()
    loop = RoomsLoop(marker, memberships, names)
    try:
        # Logins, one after another, reading meanwhile: each is announced to the autojoin
        # rooms' members, and unread notices would pile up in the server's outboxes.
        start = time.monotonic()
        for i in range(clients):
            loop.add(connect(host, port, ctx, dialect, i, f"room{i}"))
            loop.pump()
            if progress is not None and (i % 100 == 99 or i == clients - 1):
                progress(i + 1, clients)
        login_seconds = time.monotonic() - start
        _settle(loop)

        # Joins: all at once, as after a netsplit or a server restart.
        joins = clients * rooms_per_client
        cpu_before = _cpu(server_pid)
        start = time.monotonic()
        for c in loop.clients:
            for r in memberships[c.index]:
                c.queue_bytes(dialect.join(names[r]))
        answered = loop.run(
            lambda: loop.joined >= joins or bool(loop.errors),
            start + join_timeout,
            progress=None if progress is None else lambda: progress(loop.joined, joins),
        )
        join_seconds = max(1e-9, time.monotonic() - start)
        if loop.errors:
            raise JoinRefused(f"the server refused a join: {loop.errors[0][:300]!r}")
        if not answered:
            raise JoinRefused(f"{loop.joined} of {joins} joins answered in {join_timeout:.0f} s")
        _settle(loop)  # the `joined` notices to other members: part of a join's cost
        cpu_after = _cpu(server_pid)
        join_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before

        # Steady room lines, at evenly spread moments, each client taking its rooms in turn.
        rng = random.Random(1)  # noqa: S311 -- spreads send times; nothing secret
        interval = 1.0 / rate
        cs = loop.clients
        cpu_before = _cpu(server_pid)
        gen_before = time.process_time()
        start = time.monotonic()
        end = start + seconds
        due = [(start + rng.uniform(0, interval), c.index) for c in cs]
        heapq.heapify(due)
        turns = [0] * clients
        seqs: list[dict[int, int]] = [dict.fromkeys(rs, 0) for rs in memberships]
        expected = 0

        def tick(now: float) -> float:
            nonlocal expected
            while due and due[0][0] <= now:
                when, index = heapq.heappop(due)
                rs = memberships[index]
                room = rs[turns[index] % len(rs)]
                turns[index] += 1
                seq = seqs[index][room]
                seqs[index][room] = seq + 1
                cs[index].queue_bytes(dialect.say_in(names[room], marker.text(index, room, seq)))
                expected += sizes[room] - 1
                if when + interval < end:
                    heapq.heappush(due, (when + interval, index))
            return max(0.0, due[0][0] - now) if due else 0.25

        def finished() -> bool:
            now = time.monotonic()
            return now >= end and (loop.deliveries >= expected or now - loop.last_delivery > settle)

        loop.run(
            finished,
            end + 120.0,
            tick,
            progress=None
            if progress is None
            else lambda: progress(min(seconds, time.monotonic() - start), seconds),
        )
        wall = max(1e-9, time.monotonic() - start)
        gen_cpu = time.process_time() - gen_before
        cpu_after = _cpu(server_pid)
    finally:
        loop.close()
    deliveries = loop.deliveries
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return RoomsResult(
        dialect=dialect.name,
        clients=clients,
        rooms=rooms,
        rooms_per_client=rooms_per_client,
        members_per_room=clients * rooms_per_client / rooms,
        rate=rate,
        seconds=seconds,
        login_seconds=login_seconds,
        joins=joins,
        join_seconds=join_seconds,
        joins_per_second=joins / join_seconds,
        join_cpu_us_per_join=None if join_cpu is None else join_cpu / joins * 1e6,
        deliveries=deliveries,
        expected=expected,
        per_second=deliveries / max(1e-9, loop.last_delivery - start),
        latency=summarize([us / 1e6 for us in loop.latencies_us] or [0.0]),
        out_of_order=sum(c.out_of_order for c in cs),
        wrong_room=loop.wrong_room,
        duplicates=loop.duplicates,
        missing=expected - deliveries,
        cpu_us_per_delivery=None if server_cpu is None else server_cpu / max(1, deliveries) * 1e6,
        server_cpu_share=None if server_cpu is None else server_cpu / wall,
        generator_cpu_us_per_delivery=gen_cpu / max(1, deliveries) * 1e6,
        generator_cpu_share=gen_cpu / wall,
        load_before=load_before,
        load_after=loadavg(),
    )
