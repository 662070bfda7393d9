"""backplane.py's pure parts: how the publisher merges what queued meanwhile. (The
backplane against a real Redis: test_cluster.py and test_cluster_rooms.py.)"""

from __future__ import annotations

from securechat.server.cluster.backplane import _merged


def test_consecutive_line_batches_of_a_room_become_one_publish_in_order() -> None:
    items = [
        ("lines", "#a", b"1\n"),
        ("lines", "#b", b"x\n"),
        ("push", "bob", b"w\n"),
        ("lines", "#a", b"2\n"),
        ("lines", "#a", b"3\n"),
    ]
    assert _merged(items) == [
        ("lines", "#a", b"1\n2\n3\n"),
        ("lines", "#b", b"x\n"),
        ("push", "bob", b"w\n"),
    ]


def test_a_rooms_presence_or_news_keeps_its_place_between_line_batches() -> None:
    items = [
        ("lines", "#a", b"1\n"),
        ("joined", "#a\tbob\t", b"j\n"),
        ("lines", "#a", b"2\n"),
        ("state", "#a", b"{}"),
        ("lines", "#a", b"3\n"),
        ("left", "#b\tcarol\t", b"l\n"),
        ("lines", "#a", b"4\n"),
    ]
    assert _merged(items) == [
        ("lines", "#a", b"1\n"),
        ("joined", "#a\tbob\t", b"j\n"),
        ("lines", "#a", b"2\n"),
        ("state", "#a", b"{}"),
        ("lines", "#a", b"3\n4\n"),  # another room's news does not hold #a's lines apart
        ("left", "#b\tcarol\t", b"l\n"),
    ]
