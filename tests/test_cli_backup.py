"""`securechat backup`: a consistent, private copy the server can start from."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from securechat.cli import main
from securechat.server.datadir import DB_NAME, DataDir


def test_a_backup_taken_during_writes_is_consistent_and_starts_a_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "data"
    live = DataDir.open(directory)
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        while not stop.is_set():
            n = len(written)
            live.store.enqueue("bob", f"m{n}", "alice", b"h" * 64, b"c" * 512, float(n))
            written.append(n)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        copy = tmp_path / "copy.db"
        assert main(["backup", "--data-dir", str(directory), str(copy)]) == 0
        assert f"backed up {directory / DB_NAME}" in capsys.readouterr().out
    finally:
        stop.set()
        writer.join()
    db = sqlite3.connect(copy)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ids = [row[0] for row in db.execute("SELECT msg_id FROM queue ORDER BY id")]
    db.close()
    assert ids == [f"m{n}" for n in range(len(ids))]  # a prefix of what was written: one snapshot
    live.close_store()
    restored = tmp_path / "restored"
    restored.mkdir(mode=0o700)
    copy.rename(restored / DB_NAME)
    again = DataDir.open(restored)  # no marker there: the copy is adopted with its own store id
    assert len(again.store.pending("bob")) == len(ids)
    again.close_store()


def test_backing_up_nothing_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backup", "--data-dir", str(tmp_path / "none"), str(tmp_path / "copy.db")]) == 2
    assert "no server database" in capsys.readouterr().err
    assert not (tmp_path / "copy.db").exists()
