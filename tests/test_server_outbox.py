from __future__ import annotations

import threading

from securechat.server.outbox import IDLE, Outbox, OutboxState


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


class FakeSink:
    """Takes frames immediately until told the socket is full."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.full = False  # send_now refuses (another send in progress, or a backlog)
        self.backlogged = False
        self.can_finish = True  # finish_now succeeds
        self.finished = False

    def finish_now(self) -> bool:
        self.finished = self.can_finish
        return self.can_finish

    def send_nowait(self, data: bytes) -> bool | None:
        if self.full:
            return None
        self.sent.append(data)
        return not self.backlogged


def test_an_idle_outbox_sends_directly_without_waking_the_writer() -> None:
    box = Outbox(1000)
    sink = FakeSink()
    box.attach(sink)
    assert box.put(b"a\n") and box.put(b"b\n")
    assert sink.sent == [b"a\n", b"b\n"]
    box.close()
    assert box.take() is None  # nothing was left for the writer


def test_frames_queue_behind_a_refusal_and_the_writer_gets_them_in_order() -> None:
    box = Outbox(1000)
    sink = FakeSink()
    box.attach(sink)
    sink.full = True
    assert box.put(b"a\n")
    sink.full = False
    assert box.put(b"b\n")  # must not overtake "a", still queued
    assert sink.sent == []
    assert box.take() == b"a\nb\n"
    assert box.put(b"c\n")  # the writer is mid-send: queued, not sent directly
    assert sink.sent == []
    assert box.take() == b"c\n"


def test_a_backlog_left_by_the_fast_path_wakes_the_writer() -> None:
    box = Outbox(1000)
    sink = FakeSink()
    box.attach(sink)
    sink.backlogged = True  # the kernel took only part of it
    assert box.put(b"a\n")
    assert box.take() == b""  # nothing queued, but the writer must push the backlog
    box.close()
    assert box.take() is None


def test_the_last_frame_is_last_even_on_the_fast_path() -> None:
    box = Outbox(1000)
    sink = FakeSink()
    box.attach(sink)
    box.close(b"bye\n")
    assert not box.put(b"late\n")
    assert sink.sent == [b"bye\n"]


def test_a_writer_is_started_only_when_work_appears_and_leaves_when_idle() -> None:
    started: list[int] = []
    box = Outbox(1000, start_writer=lambda: started.append(1), idle_exit=0.01)
    sink = FakeSink()
    box.attach(sink)
    assert box.put(b"a\n") and started == []  # the fast path needs no thread
    sink.full = True
    assert box.put(b"b\n") and box.put(b"c\n")
    assert started == [1]  # one writer for both, started by the first queued frame
    assert box.take() == b"b\nc\n"
    assert box.take() is IDLE  # nothing more within idle_exit: the writer may go
    assert box.put(b"d\n") and started == [1, 1]  # work again: a new writer
    assert box.take() == b"d\n"
    box.close()
    assert box.take() is None


def test_closing_an_idle_outbox_ends_the_connection_without_a_writer_when_it_can() -> None:
    started: list[int] = []
    box = Outbox(1000, start_writer=lambda: started.append(1))
    sink = FakeSink()
    box.attach(sink)
    box.close(b"bye\n")
    assert sink.sent == [b"bye\n"] and sink.finished and started == []
    assert not box.put(b"late\n")


def test_closing_starts_a_writer_when_the_connection_cannot_end_at_once() -> None:
    started: list[int] = []
    box = Outbox(1000, start_writer=lambda: started.append(1))
    sink = FakeSink()
    sink.can_finish = False  # e.g. the socket is full
    box.attach(sink)
    box.close(b"bye\n")  # sent by the fast path; a writer must still end the connection
    assert started == [1]
    assert box.take() is None  # the writer then calls finish_sending


# -- the state machine (OutboxState's docstring lists these transitions) -------------


def test_a_writer_goes_idle_waiting_writing_waiting_idle() -> None:
    started: list[int] = []
    box = Outbox(1000, start_writer=lambda: started.append(1), idle_exit=0.01)
    sink = FakeSink()
    box.attach(sink)
    assert box.state is OutboxState.IDLE
    assert box.put(b"a\n") and box.state is OutboxState.IDLE  # sent directly
    sink.full = True
    assert box.put(b"b\n")
    assert box.state is OutboxState.WAITING and started == [1]
    assert box.take() == b"b\n"
    assert box.state is OutboxState.WRITING
    assert box.put(b"c\n") and box.state is OutboxState.WRITING  # queued behind the send
    assert box.take() == b"c\n"  # the earlier batch was sent: WAITING, then WRITING again
    assert box.state is OutboxState.WRITING
    assert box.take() is IDLE
    assert box.state is OutboxState.IDLE


def test_closing_in_place_finishes_and_a_second_close_does_nothing() -> None:
    box = Outbox(1000)
    sink = FakeSink()
    box.attach(sink)
    box.close(b"bye\n")
    assert box.state is OutboxState.FINISHED and sink.finished
    sink.finished = False
    box.close(b"again\n")
    assert box.state is OutboxState.FINISHED and not sink.finished
    assert sink.sent == [b"bye\n"]
    assert box.take() is None


def test_closing_with_frames_queued_drains_then_finishes() -> None:
    started: list[int] = []
    box = Outbox(1000, start_writer=lambda: started.append(1))
    sink = FakeSink()
    box.attach(sink)
    sink.full = True
    assert box.put(b"a\n")
    box.close(b"bye\n")
    assert box.state is OutboxState.CLOSING and started == [1]  # one writer for both
    assert not box.put(b"late\n")
    assert box.take() == b"a\nbye\n"
    assert box.state is OutboxState.CLOSING
    assert box.take() is None
    assert box.state is OutboxState.FINISHED and not sink.finished  # the writer finishes it


def test_overflow_is_final_and_starts_a_writer_to_drop_the_client() -> None:
    started: list[int] = []
    box = Outbox(10, start_writer=lambda: started.append(1))
    sink = FakeSink()
    sink.full = True
    box.attach(sink)
    assert box.put(b"12345678")
    assert box.state is OutboxState.WAITING
    assert not box.put(b"abc")
    assert box.state is OutboxState.OVERFLOWED and box.overflowed
    box.close(b"bye\n")
    assert box.state is OutboxState.OVERFLOWED
    assert box.take() is None
    assert box.state is OutboxState.OVERFLOWED and started == [1]


def test_the_last_frame_can_overflow_and_then_nothing_is_finished() -> None:
    started: list[int] = []
    box = Outbox(4, start_writer=lambda: started.append(1))
    sink = FakeSink()
    sink.full = True
    box.attach(sink)
    box.close(b"a long goodbye\n")
    assert box.state is OutboxState.OVERFLOWED and started == [1]
    assert not sink.finished
    assert box.take() is None


def test_frames_put_while_a_backlog_waits_queue_behind_it() -> None:
    box = Outbox(1000)
    sink = FakeSink()
    box.attach(sink)
    sink.backlogged = True
    assert box.put(b"a\n")  # the kernel took part of it; the rest waits in the sink
    assert box.put(b"b\n")  # must not be offered to the sink before that backlog
    assert sink.sent == [b"a\n"]
    assert box.take() == b"b\n"  # the writer sends the backlog first, then this
    assert box.state is OutboxState.WRITING


# -- staging: a broadcast's frames for one recipient, coalesced across senders ---------


def test_frames_staged_before_the_flush_go_out_in_one_write_whoever_staged_them() -> None:
    box = Outbox(1000)
    sink = FakeSink()
    box.attach(sink)
    assert box.stage(b"from alice\n") is True  # the first stager owes the flush
    assert box.stage(b"from bob\n") is False  # behind it: alice's flush carries it
    assert box.stage(b"from carol\n") is False
    assert sink.sent == []  # nothing sent while staging (the hub's lock is held then)
    box.flush()
    assert sink.sent == [b"from alice\nfrom bob\nfrom carol\n"]
    box.flush()  # a second flush (bob's, had he owed one) finds nothing
    assert sink.sent == [b"from alice\nfrom bob\nfrom carol\n"]
    assert box.stage(b"later\n") is True  # emptied: the next stager owes a flush again


def test_a_put_behind_staged_frames_sends_them_all_in_order() -> None:
    box = Outbox(1000)
    sink = FakeSink()
    box.attach(sink)
    assert box.stage(b"a\n")
    assert box.put(b"b\n")  # e.g. the session's own reader answering
    box.flush()
    assert sink.sent in ([b"a\n", b"b\n"], [b"a\nb\n"]) and b"".join(sink.sent) == b"a\nb\n"


def test_staged_frames_wait_for_a_writer_mid_send_and_are_refused_once_closed() -> None:
    box = Outbox(1000)
    sink = FakeSink()
    box.attach(sink)
    sink.full = True
    assert box.put(b"a\n")
    assert box.take() == b"a\n"  # the writer is mid-send
    assert box.stage(b"b\n") is False  # the writer owes it, not the stager
    box.flush()
    assert sink.sent == []
    assert box.take() == b"b\n"
    box.close()
    assert box.stage(b"late\n") is None


def test_a_flush_the_socket_refuses_overflows_when_too_much_is_staged() -> None:
    box = Outbox(8)
    sink = FakeSink()
    box.attach(sink)
    sink.full = True
    assert box.stage(b"12345\n") is True  # owed a direct send: not held to the limit
    box.flush()  # refused, and 6 bytes fit: queued for the writer
    assert box.state is not OutboxState.OVERFLOWED
    assert box.stage(b"6789\n") is None  # 11 bytes queued would exceed 8
    assert box.overflowed
