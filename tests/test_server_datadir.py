"""The data directory never lets a server start empty by accident, nor write into the void."""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
from pathlib import Path

import pytest
from chat import TIMEOUT, next_matching
from conftest import StartServer
from server_process import ServerProcess, free_port
from whisper_helpers import login, memory_keys

from securechat.cli import main
from securechat.protocol import Code, Error, WhisperStatus
from securechat.server.datadir import DB_NAME, MARKER_NAME, DataDir, DataDirRefused
from securechat.server.store import SqliteStore


def marker(directory: Path) -> dict[str, object]:
    data = json.loads((directory / MARKER_NAME).read_text())
    assert isinstance(data, dict)
    return data


def start_refused(directory: Path, cert_files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `securechat server` on `directory`; it must refuse. What it said."""
    argv = ["server", "--port", "0", "--data-dir", str(directory)]
    assert main([*argv, "--cert", cert_files["cert"], "--key", cert_files["key"]]) == 2
    return capsys.readouterr().err


def test_a_new_directory_records_its_store_and_whether_it_stopped_cleanly(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    opened = DataDir.open(directory)
    assert directory.stat().st_mode & 0o777 == 0o700
    assert (directory / MARKER_NAME).stat().st_mode & 0o777 == 0o600
    record = marker(directory)
    assert record["state"] == "running" and record["pid"] == os.getpid()
    assert record["store_id"] == opened.store.store_id() and len(str(record["store_id"])) == 32
    opened.close_store()
    assert marker(directory)["state"] == "stopped"
    again = DataDir.open(directory)  # a clean stop opens again with everything
    assert marker(directory)["store_id"] == record["store_id"]
    again.close_store()


def registered(directory: Path) -> None:
    opened = DataDir.open(directory)
    assert opened.store.register("alice", b"k" * 32, 1.0)
    opened.close_store()


def test_an_emptied_database_is_refused_with_how_to_restore(
    tmp_path: Path, cert_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "data"
    registered(directory)
    (directory / DB_NAME).write_bytes(b"")  # truncated to 0 bytes
    said = start_refused(directory, cert_files, capsys)
    assert "is empty (0 bytes)" in said and "securechat backup" in said and "move" in said


def test_a_missing_database_is_refused(
    tmp_path: Path, cert_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "data"
    registered(directory)
    (directory / DB_NAME).unlink()
    said = start_refused(directory, cert_files, capsys)
    assert "is missing" in said and "initialised on" in said
    assert not (directory / DB_NAME).exists()  # nothing was created in its place


def test_a_database_of_another_store_is_refused(
    tmp_path: Path, cert_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    registered(ours)
    registered(theirs)
    shutil.copy(theirs / DB_NAME, ours / DB_NAME)
    said = start_refused(ours, cert_files, capsys)
    assert "belongs to another store" in said
    (ours / DB_NAME).write_bytes(b"not a database at all" * 200)
    assert "not a securechat database" in start_refused(ours, cert_files, capsys)


def test_a_crash_that_lost_the_write_ahead_log_is_refused_and_one_that_kept_it_is_not(
    tmp_path: Path, cert_files: dict[str, str], client_ctx: ssl.SSLContext, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "data"
    port = free_port()
    process = ServerProcess(port, directory, cert_files)
    login(port, client_ctx, "alice", memory_keys("alice")).close()  # alice's key, in the log only
    process.kill9()
    db = directory / DB_NAME
    wal = Path(f"{db}-wal")
    assert marker(directory)["state"] == "running" and wal.stat().st_size > 0
    kept = tmp_path / "kept-wal"
    shutil.move(wal, kept)
    Path(f"{db}-shm").unlink(missing_ok=True)
    said = start_refused(directory, cert_files, capsys)
    assert "did not stop cleanly" in said and f"{db}-wal" in said
    # The impostor's way in stays shut: nobody got to register alice's nick meanwhile.
    shutil.move(kept, wal)  # the log put back: starts, and alice is still alice
    opened = DataDir.open(directory)
    assert opened.store.registered_key("alice") is not None
    opened.close_store()


def test_a_backup_restores_after_a_crash_and_is_a_private_single_file(
    tmp_path: Path, cert_files: dict[str, str], client_ctx: ssl.SSLContext, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "data"
    port = free_port()
    process = ServerProcess(port, directory, cert_files)
    login(port, client_ctx, "alice", memory_keys("alice")).close()
    copy = tmp_path / "backups" / "securechat.db"
    copy.parent.mkdir()
    assert main(["backup", "--data-dir", str(directory), str(copy)]) == 0  # while it runs
    assert copy.stat().st_mode & 0o777 == 0o600
    assert not Path(f"{copy}-wal").exists()
    assert main(["backup", "--data-dir", str(directory), str(copy)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err
    process.kill9()
    db = directory / DB_NAME
    for lost in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        lost.unlink(missing_ok=True)
    shutil.copy(copy, db)  # the restore, as docs/operations.md says
    opened = DataDir.open(directory)
    assert opened.store.registered_key("alice") is not None
    opened.close_store()


def test_a_directory_with_a_database_but_no_marker_is_adopted(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    store = SqliteStore(directory / DB_NAME)  # as an older version left it
    store.register("alice", b"k" * 32, 1.0)
    store.close()
    opened = DataDir.open(directory)
    assert opened.store.registered_key("alice") == b"k" * 32
    assert marker(directory)["store_id"] == opened.store.store_id()
    opened.close_store()


def test_an_unreadable_marker_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    registered(directory)
    (directory / MARKER_NAME).write_text("{")
    with pytest.raises(DataDirRefused, match="damaged"):
        DataDir.open(directory)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_running_server_stops_writing_once_its_data_directory_goes(
    how: str,
    start_server: StartServer,
    client_ctx: ssl.SSLContext,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = tmp_path / "data"
    server = start_server(data_dir=directory, datadir_check_interval=0.05)
    login(server, client_ctx, "bob", memory_keys("bob")).close()
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    first = alice.whisper("bob", "while all is well")
    assert next_matching(alice, WhisperStatus, id=first)
    if how == "deleted":
        shutil.rmtree(directory)
    else:
        directory.rename(tmp_path / "aside")
        DataDir.open(directory).close_store()  # someone else's, in its place
    assert server.store_lost.wait(TIMEOUT)
    msg_id = alice.whisper("bob", "into the void?")
    refused = next_matching(alice, Error, code=Code.STORE_UNAVAILABLE)
    assert isinstance(refused, Error) and refused.ref == msg_id
    assert any(r.levelno == logging.CRITICAL and how in r.getMessage() for r in caplog.records)
    alice.close()
    server.stop()
    if how == "replaced":  # the newcomer's marker is not vouched for by the old server
        assert marker(directory)["state"] == "stopped"
        assert marker(tmp_path / "aside")["state"] == "running"


def test_the_first_whisper_after_the_directory_goes_is_refused_not_acknowledged(
    start_server: StartServer, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    # The periodic check is an hour away: only the check after each commit can notice.
    directory = tmp_path / "data"
    server = start_server(data_dir=directory, datadir_check_interval=3600.0)
    login(server, client_ctx, "bob", memory_keys("bob")).close()
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    assert next_matching(alice, WhisperStatus, id=alice.whisper("bob", "while all is well"))
    shutil.rmtree(directory)
    msg_id = alice.whisper("bob", "into the void?")
    refused = next_matching(alice, Error, code=Code.STORE_UNAVAILABLE)
    assert isinstance(refused, Error) and refused.ref == msg_id
    assert server.store.failed is not None and "deleted" in server.store.failed
    alice.close()


def test_a_missing_data_directory_is_created_only_when_asked(
    tmp_path: Path, cert_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "gone"  # deleted
    said = start_refused(directory, cert_files, capsys)
    assert f"the data directory {directory} does not exist" in said and "--init" in said
    assert not directory.exists()
    mount_point = tmp_path / "volume"  # a volume that is not mounted: an empty directory
    mount_point.mkdir()
    said = start_refused(mount_point, cert_files, capsys)
    assert f"the data directory {mount_point} holds no securechat data" in said
    assert list(mount_point.iterdir()) == []
    process = ServerProcess(free_port(), directory, cert_files)  # passes --init for a new one
    process.stop()
    assert marker(directory)["state"] == "stopped"
