"""kill -9 of a real server process in the middle of a burst of whispers."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat import TIMEOUT
from server_process import ServerProcess, free_port
from whisper_helpers import disk_keys, login

from securechat import Client
from securechat.client.backoff import Backoff
from securechat.client.events import Reconnected, WhisperReceived
from securechat.protocol import WhisperStatus

#: This test is a burst on purpose: lift the rate limit (the server logs that it did).
BURST = ("--message-rate", "0")


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for p in started:
        p.stop()


def test_every_whisper_acknowledged_as_stored_survives_kill_9_exactly_once_in_order(
    processes: list[ServerProcess],
    cert_files: dict[str, str],
    client_ctx: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    data = tmp_path / "server"
    port = free_port()
    processes.append(ServerProcess(port, data, cert_files, *BURST))
    login(port, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob")).close()  # bob registers, goes offline

    alice = Client(
        "alice",
        context=client_ctx,
        port=port,
        reconnect=True,
        keys=disk_keys(tmp_path / "alice", "alice"),
        backoff=Backoff(base=0.05, cap=0.5),
    )
    alice.connect()
    sent: list[str] = []
    stop = threading.Event()

    def burst() -> None:
        for i in range(1000):
            if stop.is_set():
                return
            try:
                sent.append(alice.whisper("bob", f"w{i:04d}"))
            except ConnectionError:
                return  # the server is gone: nothing more is attempted

    sender = threading.Thread(target=burst)
    sender.start()
    stored: list[str] = []
    while len(stored) < 100:  # kill it in the middle of the burst
        status = alice.wait_for(WhisperStatus, TIMEOUT)
        assert isinstance(status, WhisperStatus)
        stored.append(status.id)
    processes[0].kill9()
    sender.join(TIMEOUT)
    stop.set()

    processes.append(ServerProcess(port, data, cert_files, *BURST))
    # Alice reconnects by herself and sends again what the server never confirmed.
    while True:
        item = alice.wait_for_any(object, TIMEOUT)
        if isinstance(item, WhisperStatus):
            stored.append(item.id)
        if isinstance(item, Reconnected):
            break
    marker = alice.whisper("bob", "marker: the end")
    while True:
        status = alice.wait_for(WhisperStatus, TIMEOUT)
        assert isinstance(status, WhisperStatus)
        if status.id == marker:
            break
        stored.append(status.id)
    assert len(set(stored)) >= 100

    bob = login(port, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"), wait_published=False)
    got: list[WhisperReceived] = []
    while not got or got[-1].msg_id != marker:
        item = bob.wait_for_any(WhisperReceived, TIMEOUT)
        assert isinstance(item, WhisperReceived)
        got.append(item)
    received_ids = [g.msg_id for g in got[:-1]]
    assert len(received_ids) == len(set(received_ids)), "a whisper arrived twice"
    assert set(stored) <= set(received_ids), "a whisper acknowledged as stored was lost"
    assert set(received_ids) <= set(sent), "something arrived that alice never sent"
    texts = [g.text for g in got[:-1]]
    assert texts == sorted(texts), "whispers arrived out of order"
    alice.close()
    bob.close()
