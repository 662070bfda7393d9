"""A live server whose disk fills up: a real, small tmpfs, filled with a real file."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
from chat import next_matching
from conftest import StartServer
from disk_helpers import fill, needs_root
from whisper_helpers import login, memory_keys

from securechat import Client, LoginRejected
from securechat.protocol import Code, Error, Message, WhisperStatus
from securechat.server.datadir import DB_NAME
from securechat.server.store import SqliteStore

pytestmark = needs_root


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
    refused_ids = []
    for i in range(20):  # the same fault again and again: the log must not say it 20 times
        msg_id = alice.whisper("bob", f"on a full disk {i}")
        # (The client also sends earlier refused ones again after a pause: match this one.)
        refused = next_matching(alice, Error, code=Code.STORE_UNAVAILABLE, ref=msg_id)
        assert isinstance(refused, Error) and not refused.fatal
        refused_ids.append(msg_id)
    alice.say("said while the disk was full")
    assert next_matching(alice, Message, text="said while the disk was full")  # still connected
    # A newcomer cannot register now: refused, but with a code a client retries later.
    with pytest.raises(LoginRejected) as newcomer:
        Client("carol", context=client_ctx, port=server.address[1], keys=memory_keys("carol")).connect()
    assert newcomer.value.code == Code.STORE_UNAVAILABLE

    filler.unlink()  # space is back: nothing to restart, nothing to reconnect
    after = alice.whisper("bob", "after space came back")
    waiting = {after, *refused_ids}  # the client's own resends of the refused ones get in too
    while waiting:
        got = next_matching(alice, WhisperStatus, status="stored")
        assert isinstance(got, WhisperStatus)
        waiting.discard(got.id)
    alice.close()
    server.stop()

    store = SqliteStore(data / DB_NAME)
    assert sorted(q.msg_id for q in store.pending("bob")) == sorted([before, *refused_ids, after])
    assert "said while the disk was full" in [text for _, text, _ in store.recent_history("#lobby", 50)]
    store.close()
    faults = [r.getMessage() for r in caplog.records if r.name == "securechat.server.store"]
    assert len(faults) == 2, faults  # once when it began, once when it ended, with the count
    assert faults[0].startswith("database failing: database or disk is full")
    assert faults[1].startswith("database working again after ")
    assert int(faults[1].split()[4]) >= 21  # 20 whispers, the registration, history flushes
