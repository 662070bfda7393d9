"""A live server whose disk fills up: a real, small tmpfs, filled with a real file."""

from __future__ import annotations

import errno
import logging
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat import next_matching
from conftest import StartServer
from whisper_helpers import login, memory_keys

from securechat import Client, LoginRejected
from securechat.protocol import Code, Error, Message, WhisperStatus
from securechat.server.datadir import DB_NAME
from securechat.server.store import SqliteStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


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


def fill(disk: Path) -> Path:
    """Write a file until the file system has no space left; the file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def status_of(client: Client, msg_id: str) -> WhisperStatus:
    got = next_matching(client, WhisperStatus, id=msg_id)
    assert isinstance(got, WhisperStatus)
    return got


def test_a_full_disk_is_answered_store_unavailable_and_the_server_recovers_when_space_returns(
    small_disk: Path,
    start_server: StartServer,
    client_ctx: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = small_disk / "data"
    server = start_server(data_dir=data, history_lines=50)
    login(server, client_ctx, "bob", memory_keys("bob")).close()  # registered, now offline
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    before = alice.whisper("bob", "before the disk filled")  # also sets up the session with bob
    assert status_of(alice, before).status == "stored"

    filler = fill(small_disk)
    caplog.set_level(logging.INFO, logger="securechat.server")
    for i in range(20):  # the same fault again and again: the log must not say it 20 times
        msg_id = alice.whisper("bob", f"on a full disk {i}")
        refused = next_matching(alice, Error, code=Code.STORE_UNAVAILABLE)
        assert isinstance(refused, Error)
        assert (refused.fatal, refused.ref) == (False, msg_id)
    alice.say("said while the disk was full")
    assert next_matching(alice, Message, text="said while the disk was full")  # still connected
    # A newcomer cannot register now: refused, but with a code a client retries later.
    with pytest.raises(LoginRejected) as newcomer:
        Client("carol", context=client_ctx, port=server.address[1], keys=memory_keys("carol")).connect()
    assert newcomer.value.code == Code.STORE_UNAVAILABLE

    filler.unlink()  # space is back: nothing to restart, nothing to reconnect
    after = alice.whisper("bob", "after space came back")
    assert status_of(alice, after).status == "stored"
    alice.close()
    server.stop()

    store = SqliteStore(data / DB_NAME)
    assert [q.msg_id for q in store.pending("bob")] == [before, after]
    assert "said while the disk was full" in [text for _, text, _ in store.recent_history("#lobby", 50)]
    store.close()
    faults = [r.getMessage() for r in caplog.records if r.name == "securechat.server.store"]
    assert len(faults) == 2, faults  # once when it began, once when it ended, with the count
    assert faults[0].startswith("database failing: database or disk is full")
    assert faults[1].startswith("database working again after ")
    assert int(faults[1].split()[4]) >= 21  # 20 whispers, the registration, history flushes
