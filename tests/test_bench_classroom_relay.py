"""benchmarks/classroom_relay.py, the comparison's floor, as a real process.

A client that goes away before the relay greets it must cost the relay nothing: before,
the greeting's send raised in the accept loop, the relay died, and every later client of
the comparison was refused.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from securechat.bench.ports import free_port

RELAY = Path(__file__).resolve().parent.parent / "benchmarks" / "classroom_relay.py"


@pytest.fixture
def relay() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(RELAY), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("relay listening")
        yield proc, port
    finally:
        proc.kill()
        proc.wait(10)


def _greeted(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(10)
        data = b""
        while not data.endswith(b"\n"):
            more = s.recv(100)
            if not more:
                break
            data += more
        return data


def test_a_client_gone_before_its_greeting_does_not_stop_the_relay(
    relay: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = relay
    # Stopped, the relay cannot accept: the connections wait in its backlog, and each is
    # reset (SO_LINGER 0) before the relay takes it and sends its greeting.
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    # Later clients are greeted as ever, and can talk to each other.
    assert _greeted(port) == b"* welcome\n"
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as a,
        socket.create_connection(("127.0.0.1", port), timeout=10) as b,
    ):
        for s in (a, b):
            s.settimeout(10)
            assert s.recv(100) == b"* welcome\n"
        a.sendall(b"hello\n")
        assert b.recv(100) == b"hello\n"
    assert proc.poll() is None
