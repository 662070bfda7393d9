"""Many chat clients in one thread, driven by a selector.

A thread per simulated client would make the generator, not the server, the thing
measured. Clients log in one after another with blocking sockets, then switch to
non-blocking mode; from then on one loop reads and writes for all of them.

Every benchmark line carries a marker `~RUN~SENDER~SEQ~MICROSECONDS~`: the run's id,
the sender's index, its sequence number and the moment it was queued. A receiver finds
the markers in complete lines with one regular expression, without decoding frames, so
the generator's cost per delivery stays small; it checks per-sender order and measures
latency. Lines from a previous run (history, with `--port`) carry another run id.
"""

from __future__ import annotations

import os
import re
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .dialects import Dialect, connect_socket

__all__ = ["BenchClient", "Loop", "Marker", "connect"]

_CHUNK = 256 * 1024
#: At most this much is written per send (one TLS record each). ngIRCd 26.1 (GnuTLS)
#: stalls a client that pipelines a full 16 KiB record of commands: it processed about
#: a fifth of a burst and then nothing for seconds. With 4 KiB writes it keeps up, and
#: every server gets the same client behaviour.
_WRITE = 4096


class Marker:
    """Writes and finds the benchmark markers of one run."""

    def __init__(self, run: int | None = None) -> None:
        self.run = run if run is not None else int.from_bytes(os.urandom(4), "big")
        self._pattern = re.compile(rb"~%d~(\d+)~(\d+)~(\d+)~" % self.run)

    def text(self, sender: int, seq: int) -> str:
        """A line for `sender`'s `seq`th message, stamped now."""
        return f"~{self.run}~{sender}~{seq}~{time.perf_counter_ns() // 1000}~"

    def find(self, data: bytes) -> list[tuple[bytes, bytes, bytes]]:
        """(sender, seq, stamp) of every marker in `data`, in order."""
        return self._pattern.findall(data)


@dataclass(eq=False)
class BenchClient:
    index: int
    sock: socket.socket
    dialect: Dialect
    out: bytearray = field(default_factory=bytearray)
    tail: bytes = b""  # an incomplete last line
    received: int = 0  # benchmark lines from others
    last_seq: dict[int, int] = field(default_factory=dict)
    out_of_order: int = 0
    closed: bool = False

    #: Clients with new output, shared with the Loop serving this client (so the loop
    #: need not scan every client for output on every turn).
    has_output: set[BenchClient] | None = None

    def queue(self, text: str) -> None:
        """Say `text` (a marker line) the dialect's way."""
        self.queue_bytes(self.dialect.say(text))

    def queue_bytes(self, data: bytes) -> None:
        """Send `data` as it is (an already encoded frame), when the loop next writes."""
        self.out += data
        if self.has_output is not None:
            self.has_output.add(self)


def connect(
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    dialect: Dialect,
    index: int,
    nick: str,
    timeout: float = 30.0,
) -> BenchClient:
    """A logged-in client, switched to non-blocking. Raises `OSError`, `ssl.SSLError`."""
    sock = connect_socket(host, port, context, timeout)
    try:
        dialect.login(sock, nick)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return BenchClient(index, sock, dialect)


class Loop:
    """Reads and writes for many clients until a condition holds or time runs out."""

    def __init__(self, clients: list[BenchClient], marker: Marker, one_line_per_write: bool = False) -> None:
        """`one_line_per_write`: every line goes out in a send (one TLS record) of its own, as a
        generator writing each line when it has it would do; otherwise a client's queued lines
        go out together, up to 4 KiB a send."""
        self.clients = clients
        self.marker = marker
        self.one_line_per_write = one_line_per_write
        self.latencies_us: list[int] = []
        self.last_delivery = time.monotonic()  # when a benchmark line last arrived
        self._sel = selectors.DefaultSelector()
        self._writing: set[BenchClient] = set()
        self._has_output: set[BenchClient] = set()
        for c in clients:
            self._sel.register(c.sock, selectors.EVENT_READ, c)
            c.has_output = self._has_output

    def add(self, client: BenchClient) -> None:
        """Serve one more client."""
        self.clients.append(client)
        self._sel.register(client.sock, selectors.EVENT_READ, client)
        client.has_output = self._has_output

    def pump(self, timeout: float = 0.0) -> None:
        """Handle what is ready now (waiting at most `timeout`): read, answer keepalives."""
        for key, mask in self._sel.select(timeout=timeout):
            client: BenchClient = key.data
            if mask & selectors.EVENT_WRITE:
                self._write(client)
            if mask & selectors.EVENT_READ:
                self._read(client)

    @property
    def deliveries(self) -> int:
        return sum(c.received for c in self.clients)

    def close(self) -> None:
        self._sel.close()
        for c in self.clients:
            c.sock.close()

    def run(
        self,
        done: Callable[[], bool],
        deadline: float,
        tick: Callable[[float], float] | None = None,
        progress: Callable[[], None] | None = None,
    ) -> bool:
        """Serve I/O until `done()` (True) or `deadline` (False).

        `tick(now)` may queue sends and returns how long the loop may wait before calling
        it again; `progress()` is called about twice a second.
        """
        next_progress = time.monotonic()
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return False
            if progress is not None and now >= next_progress:
                progress()
                next_progress = now + 0.5
            wait = min(deadline - now, tick(now) if tick is not None else 0.25, 0.25)
            for c in self._has_output:
                if c.out and c not in self._writing and not c.closed:
                    self._writing.add(c)
                    self._sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            self._has_output.clear()
            self.pump(max(0.0, wait))
        if progress is not None:
            progress()
        return True

    def _write(self, c: BenchClient) -> None:
        if self.one_line_per_write:
            # Line by line, while the socket takes them; what it does not take waits
            # for the next writable event, still one line a send.
            while c.out:
                size = min(_WRITE, c.out.find(b"\n") + 1 or len(c.out))
                if not self._send(c, size):
                    break
        else:
            self._send(c, _WRITE)
        if not c.out and not c.closed:
            self._writing.discard(c)
            self._sel.modify(c.sock, selectors.EVENT_READ, c)

    def _send(self, c: BenchClient, size: int) -> bool:
        """One send of at most `size` bytes of `c.out`; True if it took all it was offered
        (False: it would block, took only part, or the connection is gone)."""
        chunk = c.out[:size]
        try:
            sent = c.sock.send(chunk)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            self._drop(c)
            return False
        del c.out[:sent]
        return sent == len(chunk)

    def _read(self, c: BenchClient) -> None:
        chunks = [c.tail]
        while True:
            try:
                data = c.sock.recv(_CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            except OSError:
                data = b""
            if not data:
                self._drop(c)
                break
            chunks.append(data)
            # What TLS already decrypted is taken now; more in the socket makes the
            # selector report this client again (cheaper than a failing recv).
            if not isinstance(c.sock, ssl.SSLSocket) or not c.sock.pending():
                break
        buf = b"".join(chunks)
        end = buf.rfind(b"\n") + 1
        c.tail = buf[end:]
        if not end:
            return
        lines = buf[:end]
        answers = c.dialect.keepalive_answers(lines)
        if answers:
            c.out += answers
            self._has_output.add(c)
        self.deliver(c, lines)

    def deliver(self, c: BenchClient, lines: bytes) -> None:
        """Count the benchmark lines in `lines` (complete lines `c` just read).

        Called on the loop's thread for every read that completed a line; a scenario that
        checks more than per-sender order (the rooms scenario) overrides it.
        """
        found = self.marker.find(lines)
        if not found:
            return
        now = time.perf_counter_ns() // 1000
        self.last_delivery = time.monotonic()
        me = c.index
        last = c.last_seq
        lat = self.latencies_us
        for sender_b, seq_b, stamp in found:
            sender = int(sender_b)
            if sender == me:
                continue  # securechat echoes a line to its sender; IRC and the relay do not
            seq = int(seq_b)
            if seq != last.get(sender, -1) + 1:
                c.out_of_order += 1
            last[sender] = seq
            c.received += 1
            lat.append(now - int(stamp))

    def _drop(self, c: BenchClient) -> None:
        if not c.closed:
            c.closed = True
            self._writing.discard(c)
            self._sel.unregister(c.sock)
