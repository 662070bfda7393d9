from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securechat.protocol.errors import Code, RemoteProtocolError
from securechat.protocol.framing import LineBuffer


def drain(buf: LineBuffer) -> list[bytes]:
    out = []
    while (line := buf.next_line()) is not None:
        out.append(line)
    return out


def test_splits_lines_and_keeps_the_partial_one() -> None:
    buf = LineBuffer(100)
    buf.feed(b"one\ntwo\r\nthr")
    assert drain(buf) == [b"one", b"two"]
    buf.feed(b"ee\n")
    assert drain(buf) == [b"three"]
    assert buf.buffered == 0


def test_one_byte_at_a_time_gives_the_same_lines() -> None:
    data = b'{"a":1}\n\n{"b":2}\r\nlast\n'
    buf = LineBuffer(100)
    lines = []
    for i in range(len(data)):
        buf.feed(data[i : i + 1])
        lines += drain(buf)
    assert lines == [b'{"a":1}', b"", b'{"b":2}', b"last"]


def test_line_at_the_cap_passes_and_one_more_byte_fails() -> None:
    buf = LineBuffer(10)
    buf.feed(b"x" * 10 + b"\n")
    assert drain(buf) == [b"x" * 10]
    buf.feed(b"y" * 11 + b"\n")
    with pytest.raises(RemoteProtocolError) as info:
        drain(buf)
    assert info.value.code == Code.TOO_LONG and info.value.fatal


def test_too_long_is_detected_before_the_newline_arrives() -> None:
    # A peer that never sends a newline must not make us buffer without bound.
    buf = LineBuffer(10)
    buf.feed(b"z" * 11)
    assert buf.next_line() is None  # 11 bytes could still be 10 + '\r'
    buf.feed(b"z")
    with pytest.raises(RemoteProtocolError):
        buf.next_line()


def test_rejects_a_nonpositive_cap() -> None:
    with pytest.raises(ValueError):
        LineBuffer(0)


def test_many_lines_in_one_large_feed_are_all_returned() -> None:
    buf = LineBuffer(100)
    buf.feed(b"".join(b"line%d\n" % i for i in range(50_000)))
    assert drain(buf) == [b"line%d" % i for i in range(50_000)]


@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=20), st.data())
def test_any_chunking_yields_the_same_lines(lines: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    buf = LineBuffer(64)
    got = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        buf.feed(stream[prev:cut])
        prev = cut
        got += drain(buf)
    assert got == [line[:-1] if line.endswith(b"\r") else line for line in lines]
