"""A hostile server for client tests: real TLS on 127.0.0.1, the trusted certificate,
and a script per connection that may send anything at all."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable

from chat import TIMEOUT

WELCOME = {"type": "welcome", "version": 1, "nick": "alice", "room": "#lobby", "users": ["alice"]}


class HostileConn:
    """One client connection, driven by a script."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self._buf = b""

    def send_raw(self, data: bytes) -> None:
        self.tls.sendall(data)

    def send(self, frame: dict[str, object]) -> None:
        self.tls.sendall(json.dumps(frame).encode() + b"\n")

    def read_frame(self) -> dict[str, object]:
        """The client's next frame; raises `EOFError` when it hung up."""
        while b"\n" not in self._buf:
            chunk = self.tls.recv(65536)
            if not chunk:
                raise EOFError("the client hung up")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        frame = json.loads(line)
        assert isinstance(frame, dict)
        return frame

    def login(self) -> dict[str, object]:
        """Read the hello and welcome the client without a challenge; returns the hello."""
        hello = self.read_frame()
        self.send(WELCOME)
        return hello

    def hold(self) -> None:
        """Keep the connection open until the client hangs up, answering nothing."""
        with contextlib.suppress(EOFError, OSError, ssl.SSLError, ValueError):
            while True:
                self.read_frame()


Script = Callable[[HostileConn, int], None]


class HostileServer:
    """Accepts connections until closed; connection number i (from 0) runs `script(conn, i)`
    on its own thread."""

    def __init__(self, context: ssl.SSLContext, script: Script) -> None:
        self._listen = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listen.getsockname()[1]
        self._context = context
        self._script = script
        self.connections = 0
        self.errors: list[BaseException] = []  # what the scripts raised, besides hang-ups
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listen.accept()
            except OSError:
                return
            index, self.connections = self.connections, self.connections + 1
            thread = threading.Thread(target=self._serve, args=(raw, index), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket, index: int) -> None:
        raw.settimeout(TIMEOUT * 3)
        try:
            with self._context.wrap_socket(raw, server_side=True) as tls:
                self._script(HostileConn(tls), index)
        except (EOFError, OSError, ssl.SSLError):
            pass  # the client hung up: what clients under attack do
        except BaseException as exc:  # a broken script must fail the test, not vanish
            self.errors.append(exc)
        finally:
            raw.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listen.shutdown(socket.SHUT_RDWR)
        self._listen.close()
        self._accepting.join(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT * 3)
        assert not self.errors, self.errors
