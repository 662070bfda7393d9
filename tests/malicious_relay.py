"""A malicious server for tests: a TLS man-in-the-middle that the clients trust.

From the clients' point of view it *is* the server (it presents the trusted
certificate), which is exactly the threat whispers must survive: it may read, drop,
reorder, replay, rewrite and inject any frame. It forwards to a real server and lets
a test rewrite each frame with hooks.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable

from securechat.transport import TlsChannel

Frame = dict[str, object]
Hook = Callable[["Leg", Frame], list[Frame]]


class Leg:
    """One client's connection through the relay."""

    def __init__(self, relay: MaliciousRelay, client: TlsChannel, server: TlsChannel) -> None:
        self.relay = relay
        self.client = client
        self.server = server
        self.nick: str | None = None
        self._lock = threading.Lock()

    def to_client(self, frame: Frame) -> None:
        """Inject a frame to the client as if the server sent it."""
        self._send(self.client, frame, "down")

    def to_server(self, frame: Frame) -> None:
        self._send(self.server, frame, "up")

    def _send(self, channel: TlsChannel, frame: Frame, direction: str) -> None:
        data = json.dumps(frame).encode() + b"\n"
        self.relay.record(direction, data)
        channel.send(data)

    def pump(self, src: TlsChannel, direction: str) -> None:
        buf = b""
        try:
            while data := src.recv():
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    frame = json.loads(line)
                    if direction == "up" and frame.get("type") == "hello":
                        self.nick = str(frame["nick"]).lower()
                        self.relay.legs[self.nick] = self
                    hook = self.relay.up_hook if direction == "up" else self.relay.down_hook
                    for out in hook(self, frame):
                        (self.to_server if direction == "up" else self.to_client)(out)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            self.client.shutdown()
            self.server.shutdown()


def _pass(leg: Leg, frame: Frame) -> list[Frame]:
    return [frame]


class MaliciousRelay:
    def __init__(
        self, upstream: tuple[str, int], server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
    ) -> None:
        self._upstream = upstream
        self._server_ctx = server_ctx
        self._client_ctx = client_ctx
        self._listen = socket.create_server(("127.0.0.1", 0))
        self.address = self._listen.getsockname()
        self.up_hook: Hook = _pass
        self.down_hook: Hook = _pass
        self.legs: dict[str, Leg] = {}
        self.wire: list[tuple[str, bytes]] = []  # every frame that crossed, both directions
        self._wire_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._channels: list[TlsChannel] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def record(self, direction: str, data: bytes) -> None:
        with self._wire_lock:
            self.wire.append((direction, data))

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listen.accept()
            except OSError:
                return
            client = TlsChannel(raw, self._server_ctx, server_side=True)
            server = TlsChannel(
                socket.create_connection(self._upstream),
                self._client_ctx,
                server_side=False,
                server_hostname="localhost",
            )
            try:
                client.handshake()
                server.handshake()
            except (OSError, ssl.SSLError):
                client.close()
                server.close()
                continue
            self._channels += [client, server]
            leg = Leg(self, client, server)
            for src, direction in ((client, "up"), (server, "down")):
                thread = threading.Thread(target=leg.pump, args=(src, direction), daemon=True)
                thread.start()
                self._threads.append(thread)

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept() on Linux; shutdown does.
        with contextlib.suppress(OSError):
            self._listen.shutdown(socket.SHUT_RDWR)
        self._listen.close()
        self._accepting.join(10)
        for channel in self._channels:
            channel.shutdown()
        for thread in self._threads:
            thread.join(10)
        for channel in self._channels:
            channel.close()
