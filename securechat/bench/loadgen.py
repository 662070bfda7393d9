"""Many TLS chat clients in one thread, driven by a selector.

A thread per simulated client would make the generator, not the server, the thing
measured. Clients log in one after another with blocking sockets, then switch to
non-blocking mode; from then on one loop reads and writes for all of them. Every room
line carries its sender's sequence number and the moment it was queued, so each
receiver checks per-sender order and measures latency.
"""

from __future__ import annotations

import json
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol import PROTOCOL_VERSION, Hello, Say, encode
from ..protocol.framing import LineBuffer
from ..protocol.limits import MAX_LINE_BYTES

__all__ = ["BenchClient", "Loop", "connect"]


@dataclass(eq=False)
class BenchClient:
    nick: str
    sock: ssl.SSLSocket
    out: bytearray = field(default_factory=bytearray)
    lines: LineBuffer = field(default_factory=lambda: LineBuffer(MAX_LINE_BYTES))
    received: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)
    out_of_order: int = 0
    sent: int = 0
    closed: bool = False

    def queue_say(self, text: str) -> None:
        self.out += encode(Say(text=text))
        self.sent += 1


def connect(host: str, port: int, context: ssl.SSLContext, nick: str, timeout: float = 30.0) -> BenchClient:
    """A logged-in guest client, switched to non-blocking. Raises `OSError` or `ssl.SSLError`."""
    raw = socket.create_connection((host, port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = context.wrap_socket(raw, server_hostname=host)
    sock.sendall(encode(Hello(version=PROTOCOL_VERSION, nick=nick, client="securechat-bench")))
    client = BenchClient(nick, sock)
    while True:  # until the welcome
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"{nick}: closed during login")
        client.lines.feed(data)
        line = client.lines.next_line()
        if line is not None:
            frame = json.loads(line)
            if frame.get("type") != "welcome":
                raise ConnectionError(f"{nick}: login refused: {frame}")
            break
    sock.setblocking(False)
    return client


class Loop:
    """Reads and writes for many clients until a condition holds or time runs out."""

    def __init__(
        self, clients: list[BenchClient], on_message: Callable[[BenchClient, dict[str, object]], None]
    ):
        self.clients = clients
        self._on_message = on_message
        self._sel = selectors.DefaultSelector()
        for c in clients:
            self._sel.register(c.sock, selectors.EVENT_READ, c)

    def close(self) -> None:
        self._sel.close()
        for c in self.clients:
            c.sock.close()

    def run(
        self, done: Callable[[], bool], deadline: float, tick: Callable[[float], float] | None = None
    ) -> bool:
        """Serve I/O until `done()` (True) or `deadline` (False). `tick(now)` may queue sends
        and returns how long the loop may wait before calling it again."""
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return False
            wait = min(deadline - now, tick(now) if tick is not None else 0.5)
            for c in self.clients:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
                if not c.closed and self._sel.get_key(c.sock).events != events:
                    self._sel.modify(c.sock, events, c)
            for key, mask in self._sel.select(timeout=max(0.0, wait)):
                client: BenchClient = key.data
                if mask & selectors.EVENT_WRITE:
                    self._write(client)
                if mask & selectors.EVENT_READ:
                    self._read(client)
        return True

    def _write(self, c: BenchClient) -> None:
        try:
            sent = c.sock.send(c.out[:262144])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            return
        del c.out[:sent]

    def _read(self, c: BenchClient) -> None:
        while True:
            try:
                data = c.sock.recv(262144)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            if not data:
                c.closed = True
                self._sel.unregister(c.sock)
                return
            c.lines.feed(data)
            if not c.sock.pending():
                break
        while (line := c.lines.next_line()) is not None:
            frame = json.loads(line)
            if frame.get("type") == "message":
                self._on_message(c, frame)
