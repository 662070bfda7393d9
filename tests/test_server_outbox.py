from __future__ import annotations

import threading

from securechat.server.outbox import Outbox


def test_take_coalesces_everything_queued_into_one_write() -> None:
    box = Outbox(1000)
    for frame in (b"a\n", b"b\n", b"c\n"):
        assert box.put(frame)
    assert box.take() == b"a\nb\nc\n"


def test_take_blocks_until_a_frame_arrives() -> None:
    box = Outbox(1000)
    got: list[bytes | None] = []
    taker = threading.Thread(target=lambda: got.append(box.take()))
    taker.start()
    box.put(b"x")
    taker.join(10)
    assert got == [b"x"]


def test_close_drains_then_returns_none_and_refuses_more() -> None:
    box = Outbox(1000)
    box.put(b"last")
    box.close()
    assert not box.put(b"too late")
    assert box.take() == b"last"
    assert box.take() is None


def test_overflow_refuses_and_discards() -> None:
    box = Outbox(10)
    assert box.put(b"12345")
    assert box.put(b"67890")
    assert not box.put(b"!")  # 11 bytes would exceed the limit
    assert box.overflowed
    assert not box.put(b"")
    assert box.take() is None


def test_limit_is_about_queued_bytes_not_total() -> None:
    box = Outbox(10)
    for _ in range(100):
        assert box.put(b"123456")
        assert box.take() == b"123456"
    assert not box.overflowed
