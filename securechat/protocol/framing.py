"""JSON Lines framing: split a byte stream into lines, with a hard cap on line length."""

from __future__ import annotations

from .errors import Code, RemoteProtocolError

__all__ = ["LineBuffer"]


class LineBuffer:
    """Accumulates bytes and hands out complete `\\n`-terminated lines.

    A line longer than `max_line` bytes (newline and an optional trailing `\\r`
    excluded) raises a fatal `RemoteProtocolError` as soon as it is known to be too
    long, so a hostile peer can make us hold at most `max_line + 1` bytes per line.
    """

    def __init__(self, max_line: int) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self._max_line = max_line
        self._buf = bytearray()
        self._start = 0  # first unconsumed byte; compacting lazily keeps pops O(1)
        self._scanned = 0  # bytes after _start already known to hold no newline

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """How many unconsumed bytes are held."""
        return len(self._buf) - self._start

    def next_line(self) -> bytes | None:
        """The next complete line without its terminator, or None if none is complete.

        Raises `RemoteProtocolError(too-long, fatal)` when the pending line exceeds the cap.
        """
        end = self._buf.find(b"\n", self._start + self._scanned)
        if end < 0:
            self._scanned = len(self._buf) - self._start
            # +1 leaves room for a '\r' that will be stripped with the newline.
            if self._scanned > self._max_line + 1:
                raise RemoteProtocolError(
                    Code.TOO_LONG, f"line longer than {self._max_line} bytes", fatal=True
                )
            return None
        line = bytes(self._buf[self._start : end])
        self._start = end + 1
        self._scanned = 0
        if self._start > 65536 and self._start * 2 > len(self._buf):
            del self._buf[: self._start]
            self._start = 0
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self._max_line:
            raise RemoteProtocolError(Code.TOO_LONG, f"line longer than {self._max_line} bytes", fatal=True)
        return line
