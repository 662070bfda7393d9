"""cluster/order.py: a room's total order as one node tracks it."""

from __future__ import annotations

from securechat.server.cluster.order import RoomOrder, Verdict


def test_batches_in_order_are_delivered_and_repeats_dropped() -> None:
    order = RoomOrder()
    order.reset("e1")
    order.baseline("#lobby", 6)  # at the first subscription: 1-6 were history here
    assert order.offer("e1", "#lobby", 7).verdict is Verdict.DELIVER
    order.delivered("#lobby", 7)
    assert order.offer("e1", "#lobby", 8).verdict is Verdict.DELIVER
    order.delivered("#lobby", 8)
    assert order.offer("e1", "#lobby", 8).verdict is Verdict.DUPLICATE
    assert order.offer("e1", "#lobby", 3).verdict is Verdict.DUPLICATE
    assert order.expected("#lobby") == 9
    order.baseline("#lobby", 100)  # a baseline never moves a room already followed
    assert order.expected("#lobby") == 9


def test_a_room_not_seen_yet_starts_at_1_so_its_first_batches_are_never_skipped() -> None:
    order = RoomOrder()
    order.reset("e1")
    # A room made after this node subscribed: lost from the channel, its first batch is
    # found missing (not taken as the room's start).
    offer = order.offer("e1", "#new", 3)
    assert offer.verdict is Verdict.GAP and offer.missing_from == 1


def test_a_gap_names_the_first_missing_batch_and_rooms_are_independent() -> None:
    order = RoomOrder()
    order.reset("e1")
    order.delivered("#a", 1)
    offer = order.offer("e1", "#a", 5)
    assert offer.verdict is Verdict.GAP and offer.missing_from == 2
    assert order.offer("e1", "#b", 1).verdict is Verdict.DELIVER  # another room, its own count
    order.skip_to("#a", 4)  # 2 and 3 were trimmed from the stream
    assert order.offer("e1", "#a", 4).verdict is Verdict.DELIVER


def test_another_epoch_resets_every_room() -> None:
    order = RoomOrder()
    order.reset("e1")
    order.delivered("#a", 100)
    assert order.offer("e2", "#a", 1).verdict is Verdict.RESET
    order.reset("e2")
    assert order.expected("#a") == 1
    assert order.offer("e2", "#a", 1).verdict is Verdict.DELIVER
