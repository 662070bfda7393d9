"""Shared fixtures: a trustme CA, real servers on 127.0.0.1 port 0, and clients."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from securechat import Client
from securechat.server import Server, ServerConfig
from securechat.transport import client_context, server_context

pytest_plugins = ["pg_fixtures", "redis_fixtures", "room_peers", "cluster_nodes"]

# Wait limits for events in tests: generous, because CI machines stall; a passing
# test never waits this long, since every wait ends on the event itself.
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def private_data_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keystores and server databases made by code under test land in a temp dir, never in ~."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg")))


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("certs")
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    paths = {"ca": str(d / "ca.pem"), "cert": str(d / "server.pem"), "key": str(d / "server.key")}
    ca.cert_pem.write_to_path(paths["ca"])
    leaf.private_key_and_cert_chain_pem.write_to_path(paths["cert"])
    leaf.private_key_pem.write_to_path(paths["key"])
    return paths


@pytest.fixture(scope="session")
def server_ctx(cert_files: dict[str, str]) -> ssl.SSLContext:
    return server_context(cert_files["cert"], cert_files["key"])


@pytest.fixture(scope="session")
def client_ctx(cert_files: dict[str, str]) -> ssl.SSLContext:
    return client_context(cert_files["ca"])


StartServer = Callable[..., Server]

#: Name prefixes of the threads session-scoped fixtures run in the background.
_BACKGROUND_THREADS = ("hostile-", "abuse-hostile")


@pytest.fixture
def start_server(server_ctx: ssl.SSLContext) -> Iterator[StartServer]:
    """Start servers on 127.0.0.1:0; at teardown stop them and check no thread leaked."""
    baseline = set(threading.enumerate())
    servers: list[Server] = []

    def start(**overrides: object) -> Server:
        # Most tests send as fast as they can on purpose; the rate limit has its own tests.
        base = ServerConfig(host="127.0.0.1", port=0, linger=1.0, message_rate=0)
        config = replace(base, **overrides)  # type: ignore[arg-type]
        server = Server(config, server_ctx)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=TIMEOUT)
    # stop() joins every thread a server started; clients were closed before this. Threads
    # of the session-long hostile-server run (test_abuse.py's `hostile` fixture, which
    # works in the background while other tests run) come and go on their own: not ours.
    leaked = [
        t for t in threading.enumerate() if t not in baseline and not t.name.startswith(_BACKGROUND_THREADS)
    ]
    assert not leaked, leaked


@pytest.fixture
def server(start_server: StartServer) -> Server:
    return start_server()


Connect = Callable[..., Client]


@pytest.fixture
def connect(server: Server, client_ctx: ssl.SSLContext) -> Iterator[Connect]:
    """Connect logged-in clients to `server`; closed at teardown."""
    clients: list[Client] = []

    def make(nick: str, **kwargs: object) -> Client:
        host, port = server.address
        client = Client(nick, context=client_ctx, host=host, port=port, timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]
        client.connect()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


class RawTls:
    """A hand-driven TLS connection speaking literal JSON lines, as another client would."""

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, hostname: str = "localhost"):
        raw = socket.create_connection(address, timeout=TIMEOUT)
        self.sock = context.wrap_socket(raw, server_hostname=hostname)
        self._buf = b""

    def send_line(self, line: str | bytes) -> None:
        data = line.encode() if isinstance(line, str) else line
        self.sock.sendall(data if data.endswith(b"\n") else data + b"\n")

    def read_line(self) -> bytes:
        """The next line; raises `TimeoutError` or `EOFError` (connection closed)."""
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def read_json(self) -> dict[str, object]:
        import json

        obj = json.loads(self.read_line())
        assert isinstance(obj, dict)
        return obj

    def read_until_closed(self) -> list[bytes]:
        """Every remaining line until the server closes the connection."""
        lines = []
        try:
            while True:
                lines.append(self.read_line())
        except (EOFError, ConnectionResetError, ssl.SSLError):
            return lines

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, so filling it up disturbs nothing else."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
