"""A recipient's queued whispers go out a page at a time, as its acks come back."""

from __future__ import annotations

import ssl

from raw_identity import RawIdentity

from securechat.e2e.identity import Identity
from securechat.protocol import Ack, Delivery
from securechat.server import Server, ServerConfig
from securechat.server.backlog import Backlog


def test_a_long_queue_goes_out_a_page_at_a_time_as_acks_come_back(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    # A queue once went into the outbox whole at login: a victim reading at 200 KB/s was
    # dropped as "not reading" after 334 of 8,757 whispers.
    page = ServerConfig().queue_page
    queued = 3 * page + 5
    bob_identity = Identity.generate("bob")
    assert server.store.register("bob", bob_identity.sig_key, 1.0)
    for n in range(queued):
        server.store.enqueue("bob", f"m{n:03d}", f"sender{n % 7}", b"h" * 64, b"c" * 512, 1.0)
    bob = RawIdentity(server, client_ctx, "bob", bob_identity)
    got: list[Delivery] = []
    unacked: list[Delivery] = []
    while len(got) < queued:
        frames = bob.round_trip()  # everything the server had to send until now
        assert frames, f"nothing more after {len(got)} of {queued}"
        assert all(isinstance(f, Delivery) for f in frames), frames
        unacked += frames  # type: ignore[arg-type]
        got += frames  # type: ignore[arg-type]
        assert len(unacked) <= page, f"{len(unacked)} deliveries out at once"
        for delivery in unacked[: page // 2 + 1]:  # a client that acks half a page at a time
            bob.send(Ack(id=delivery.id))
        unacked = unacked[page // 2 + 1 :]
    assert [d.msg_id for d in got] == [f"m{n:03d}" for n in range(queued)]  # each once, in order
    for delivery in unacked:
        bob.send(Ack(id=delivery.id))
    assert bob.round_trip() == []
    assert server.store.pending("bob") == []
    bob.close()


def backlog_of(count: int, page: int) -> tuple[Backlog, list[tuple[int, int]]]:
    """A backlog of `count` deliveries with ids 1.., and the (after, limit) loads it asks for."""
    deliveries = [
        Delivery(id=str(n), msg_id=f"m{n}", sender="alice", header=b"h", ciphertext=b"c", ts=1.0)
        for n in range(1, count + 1)
    ]
    loads: list[tuple[int, int]] = []

    def load(after: int, limit: int) -> list[Delivery]:
        loads.append((after, limit))
        return [d for d in deliveries if int(d.id) > after][:limit]

    return Backlog(load, page), loads


def ids(deliveries: list[Delivery]) -> list[int]:
    return [int(d.id) for d in deliveries]


def test_more_goes_out_once_half_a_page_is_acked() -> None:
    backlog, loads = backlog_of(10, page=4)
    assert ids(backlog.start()) == [1, 2, 3, 4]
    assert backlog.acked("1") == []  # 3 out: more than half a page
    assert ids(backlog.acked("2")) == [5, 6]  # 2 out: topped up to a page
    assert ids(backlog.acked("4")) == [7, 8]  # 3 settled too (held, or kept for later)
    assert ids(backlog.acked("7")) == [9, 10] and backlog.done  # asked for 3, got 2: the end
    assert backlog.acked("9") == [] and backlog.acked("10") == []
    assert loads == [(0, 4), (4, 2), (6, 2), (8, 3)]


def test_acks_for_other_deliveries_or_nonsense_settle_nothing() -> None:
    backlog, _ = backlog_of(10, page=4)
    backlog.start()
    assert backlog.acked("99") == [] and backlog.acked("x") == []


def test_a_short_queue_is_done_at_once() -> None:
    backlog, _ = backlog_of(3, page=4)
    assert ids(backlog.start()) == [1, 2, 3] and backlog.done
    empty, _ = backlog_of(0, page=4)
    assert empty.start() == [] and empty.done
