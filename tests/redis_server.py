"""A throwaway Redis server for tests: `RedisServer.start(directory)` runs Debian's
`redis-server` on 127.0.0.1 at a free port, with nothing persisted (a restart comes up
empty, as a Redis whose data was lost); without the binary the calling test is skipped
(`apt-get install redis-server`; .ci/run installs it).

It can be killed (SIGKILL), restarted empty on the same port, paused (SIGSTOP: a Redis
that hangs, as under a long fork or a swap storm) and resumed, and configured at run
time (`CONFIG SET`), for the cluster's fault tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

__all__ = ["RedisServer"]

#: The longest a start may take before the test fails.
_START_WAIT = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One `redis-server` process (see the module docstring)."""

    def __init__(self, binary: str, directory: Path, port: int, password: str = "") -> None:
        self._binary = binary
        self.directory = directory
        self.port = port
        self.password = password
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @classmethod
    def start(cls, directory: Path, password: str = "") -> RedisServer:
        """`password`: clients must AUTH with it (requirepass)."""
        binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
        )
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        directory.mkdir(parents=True, exist_ok=True)
        server = cls(binary, directory, _free_port(), password)
        server.start_again()
        return server

    def start_again(self) -> None:
        """Start (again, empty) on the same port; returns once it answers PING."""
        self.starts += 1
        log = open(self.directory / f"redis-{self.starts}.log", "wb")  # noqa: SIM115 (the child keeps it)
        self._proc = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + _START_WAIT
        while not self.ping():
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited: {(self.directory / f'redis-{self.starts}.log').read_text()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer in time")
            time.sleep(0.02)  # polling a port that is not open yet: nothing to wait on

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                answer = s.recv(64)
                # With a password, "-NOAUTH" also says it is up and answering.
                return answer.startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def command(self, *words: str) -> bytes:
        """One command, as a client sends it (inline form); the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as s:
            if self.password:
                s.sendall(f"AUTH {self.password}\r\n".encode())
                s.recv(64)
            s.sendall(" ".join(words).encode() + b"\r\n")
            return s.recv(65536)

    def kill9(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)

    def pause(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.resume()
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
