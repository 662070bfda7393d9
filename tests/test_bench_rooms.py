"""The rooms benchmark: its room checks count what they should, and a tiny run is clean.

Timing figures are not tested (they live in docs/performance.md, "Many rooms").
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from securechat.bench.dialects import SecureChat
from securechat.bench.loadgen import BenchClient
from securechat.bench.procfs import parse_loadavg
from securechat.bench.rooms import RoomMarker, RoomsLoop, assign_rooms, room_name
from securechat.cli import main
from securechat.protocol import Code, Entered, Error, Message, encode
from securechat.server.server import Server


@pytest.mark.parametrize(("clients", "rooms", "per_client"), [(2000, 100, 1), (30, 7, 3), (10, 4, 4)])
def test_rooms_are_distinct_per_client_and_evenly_filled(clients: int, rooms: int, per_client: int) -> None:
    memberships = assign_rooms(clients, rooms, per_client)
    assert len(memberships) == clients
    assert all(len(set(rs)) == per_client for rs in memberships)
    sizes = Counter(r for rs in memberships for r in rs)
    assert set(sizes) == set(range(rooms))
    assert max(sizes.values()) - min(sizes.values()) <= per_client


def test_assign_rooms_refuses_more_rooms_per_client_than_rooms() -> None:
    with pytest.raises(ValueError):
        assign_rooms(4, 2, 3)


@pytest.fixture
def receiver() -> Iterator[tuple[RoomsLoop, BenchClient, RoomMarker]]:
    """Client 0, a member of rooms 0 and 2 of 3, behind a RoomsLoop (no server needed)."""
    a, b = socket.socketpair()
    marker = RoomMarker(7)
    loop = RoomsLoop(marker, [(0, 2), (1,), (0, 1, 2)], [room_name(r) for r in range(3)])
    client = BenchClient(0, a, SecureChat())
    loop.add(client)
    try:
        yield loop, client, marker
    finally:
        loop.close()
        b.close()


def _line(
    marker: RoomMarker, frame_room: int, sender: int, room: int, seq: int, run: int | None = None
) -> bytes:
    text = marker.text(sender, room, seq)
    if run is not None:
        text = text.replace(f"~{marker.run}~", f"~{run}~", 1)
    return encode(Message(room=room_name(frame_room), nick=f"room{sender}", text=text, ts=1.0))


def test_rooms_loop_counts_wrong_rooms_duplicates_and_order(
    receiver: tuple[RoomsLoop, BenchClient, RoomMarker],
) -> None:
    loop, client, marker = receiver
    lines = b"".join(
        [
            _line(marker, 0, 2, 0, 0),  # good
            _line(marker, 2, 2, 2, 1),  # good (another room: its own sequence)
            _line(marker, 0, 2, 0, 0),  # the same line again
            _line(marker, 1, 1, 1, 0),  # a room client 0 is not in
            _line(marker, 2, 2, 0, 1),  # said to room 0 but delivered as room 2's
            _line(marker, 0, 2, 0, 2),  # good, but seq 1 of room 0 skipped so far...
            _line(marker, 0, 2, 0, 1),  # ...and it comes after 2: out of order
            _line(marker, 0, 0, 0, 0),  # its own line, echoed: not a delivery
            _line(marker, 0, 2, 0, 3, run=8),  # another run's (history): ignored
        ]
    )
    loop.deliver(client, lines)
    assert (loop.deliveries, client.received) == (4, 4)
    assert (loop.wrong_room, loop.duplicates, client.out_of_order) == (2, 1, 1)
    assert len(loop.latencies_us) == 4


def test_rooms_loop_counts_entered_once_per_own_room_and_keeps_errors(
    receiver: tuple[RoomsLoop, BenchClient, RoomMarker],
) -> None:
    loop, client, _ = receiver
    entered = [Entered(room=room) for room in ("#lobby", room_name(0), room_name(1), room_name(0))]
    loop.deliver(client, b"".join(encode(e) for e in entered))
    assert loop.joined == 1  # #lobby and room 1 are not client 0's; room 0 counts once
    refusal = encode(Error(code=Code.QUOTA, reason="this server has 1000 rooms", ref=room_name(2)))
    loop.deliver(client, refusal)
    assert loop.errors == [refusal.rstrip(b"\n")]


def test_parse_loadavg() -> None:
    assert parse_loadavg("0.73 1.18 1.36 3/139 3802\n") == 0.73


def test_bench_rooms_delivers_each_line_once_to_its_room_only(capsys: pytest.CaptureFixture[str]) -> None:
    per_client = 2  # each client in 2 of the 3 rooms: lines of one room must not leak to another
    argv = ["bench", "rooms", "--clients", "9", "--rooms", "3", "--rooms-per-client", str(per_client)]
    assert main([*argv, "--rate", "5", "--seconds", "1", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("started a server on 127.0.0.1:") and "rate limit off" in out[0]
    result = json.loads(out[-1])
    assert result["scenario"] == "rooms" and result["joins"] == 9 * per_client
    # Each line reaches the other members of its room: 3 x per_client members a room.
    lines = result["expected"] / (3 * per_client - 1)
    assert lines == int(lines) and 9 * 5 * 0.5 <= lines <= 9 * 5 * 1.5
    assert result["deliveries"] == result["expected"] == result["latency"]["count"]
    assert result["wrong_room"] == result["duplicates"] == result["missing"] == result["out_of_order"] == 0
    # Measured from /proc (the server's pid was known); CPU time counts in 10 ms ticks.
    assert result["cpu_us_per_delivery"] >= 0 and result["join_cpu_us_per_join"] >= 0
    assert result["generator_cpu_share"] > 0


def test_bench_rooms_refuses_impossible_spreads() -> None:
    assert main(["bench", "rooms", "--clients", "4", "--rooms", "3"]) == 2  # a room of one
    assert main(["bench", "rooms", "--clients", "4", "--rooms", "2", "--rooms-per-client", "3"]) == 2
    assert main(["bench", "rooms", "--clients", "4", "--rooms", "0"]) == 2


def test_bench_rooms_reports_a_refused_join_as_a_failure(
    start_server: Callable[..., Server], cert_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # A server whose room caps the run exceeds (#lobby is its one room, and each session's).
    server = start_server(max_rooms=1, max_rooms_per_user=1, max_per_ip=1000)
    port = str(server.address[1])
    argv = ["bench", "rooms", "--port", port, "--cafile", cert_files["ca"], "--clients", "4", "--rooms", "2"]
    assert main([*argv, "--rate", "2", "--seconds", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: the server refused a join" in out and "quota-exceeded" in out
