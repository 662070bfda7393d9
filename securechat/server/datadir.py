"""The data directory: which store it holds, and whether it may be opened.

A server that opens an empty database where its real one used to be starts silently
empty: every nick can be registered again by anyone (an impostor takes a victim's nick),
and every queued whisper is gone. SQLite alone cannot tell "new" from "lost": it creates
what is missing. So the directory remembers that it was initialised, in a marker file
next to the database (`MARKER_NAME`, 0600, JSON):

    {"format": 1, "store_id": "<32 hex digits>", "initialised": "<UTC time>",
     "state": "running" | "stopped", "pid": <pid of the last server>}

`store_id` is random and is also kept inside the database (`meta`), so a database from
another server is recognised. `state` is "running" from before the database is opened
until after it was closed cleanly. A server that died leaves "running", and its
write-ahead log (`securechat.db-wal`) then holds the commits not yet copied into the
main file: if that file is gone, so is recent data.

`DataDir.open` refuses (`DataDirRefused`, with what is wrong and how to restore) when
the directory was initialised and the database is missing, empty, unreadable, from
another store, or lost its write-ahead log after a crash. A copy made by
`securechat backup` is accepted in place of the database (it carries its store id and a
backup mark). A directory without a marker is initialised, or, if it holds a database
of ours (from a version before the marker, or a restored backup), adopted.

While running, `DataDir.changed` tells whether the directory or the database was deleted
or replaced (device and inode no longer those opened); the server then stops writing.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..files import write_private
from .config import ServerConfig
from .store import SCHEMA_VERSION, SqliteStore, StoreUnavailable, inspect

__all__ = ["DB_NAME", "MARKER_NAME", "DataDir", "DataDirRefused", "check_db"]

#: The database file inside the data directory.
DB_NAME = "securechat.db"
#: The marker file inside the data directory (see the module docstring).
MARKER_NAME = "securechat-datadir.json"
_FORMAT = 1

log = logging.getLogger(__name__)


class DataDirRefused(Exception):
    """The data directory must not be opened as it is; the message says why and what to do."""


@dataclass(frozen=True)
class _Marker:
    store_id: str
    initialised: str
    state: str

    @staticmethod
    def read(path: Path) -> _Marker | None:
        """The marker at `path`, None if there is none. Raises `DataDirRefused` if unreadable."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DataDirRefused(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw)
            return _Marker(str(data["store_id"]), str(data["initialised"]), str(data["state"]))
        except (ValueError, KeyError, TypeError):
            raise DataDirRefused(
                f"{path} is damaged. It records which database belongs in this directory; "
                f"if {path.parent / DB_NAME} is the right one, delete the marker and start again "
                "(it is written anew)."
            ) from None

    def write(self, path: Path) -> None:
        body = {
            "format": _FORMAT,
            "store_id": self.store_id,
            "initialised": self.initialised,
            "state": self.state,
            "pid": os.getpid(),
        }
        write_private(path, json.dumps(body, indent=1).encode() + b"\n")


def _now_text(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), UTC).isoformat(timespec="seconds")


def _restore_advice(directory: Path) -> str:
    db = directory / DB_NAME
    return (
        f"To restore: stop anything using {directory}, remove {db}-wal and {db}-shm, copy your "
        f"latest backup (made with `securechat backup`) to {db}, and start again. "
        f"To start empty on purpose (every registered nick and queued whisper is lost, and anyone "
        f"may register any nick): move {directory} aside and start again."
    )


def check_db(directory: Path) -> None:
    """Check, without writing anything, that `directory` holds a database this server may
    open (for tools such as `release-nick` and `backup`). Raises `DataDirRefused`."""
    marker = _Marker.read(directory / MARKER_NAME)
    db = directory / DB_NAME
    if not db.is_file():
        if marker is None:
            raise DataDirRefused(f"no server database at {db}")
        raise DataDirRefused(f"the database {db} is missing. " + _restore_advice(directory))
    _facts_or_refuse(directory, marker)


def _facts_or_refuse(directory: Path, marker: _Marker | None) -> str | None:
    """Check the database against the marker; its store id and backup mark."""
    db = directory / DB_NAME
    if db.stat().st_size == 0:
        raise DataDirRefused(
            f"the database {db} is empty (0 bytes): its contents were lost. " + _restore_advice(directory)
        )
    try:
        facts = inspect(db)
    except StoreUnavailable as exc:
        raise DataDirRefused(
            f"{db} is not a securechat database, or is damaged ({exc}). " + _restore_advice(directory)
        ) from None
    if facts.schema_version > SCHEMA_VERSION:
        raise DataDirRefused(
            f"{db} has schema version {facts.schema_version}, newer than this server "
            f"({SCHEMA_VERSION}): run the newer securechat that wrote it."
        )
    if marker is not None and facts.store_id != marker.store_id:
        raise DataDirRefused(
            f"{db} belongs to another store (id {facts.store_id or 'none'}), not to the one this "
            f"directory was initialised with ({marker.store_id}, {marker.initialised}). "
            + _restore_advice(directory)
        )
    return facts.backup_taken


class DataDir:
    """An opened data directory: its store, its marker, and the identity of its files.

    Created by `open`; `close_store` closes the store and marks the directory stopped.
    `changed` may be called from any thread (the server's watchdog calls it).
    """

    def __init__(self, directory: Path, store: SqliteStore, marker: _Marker) -> None:
        self.directory = directory
        self.store = store
        self._marker = marker
        # Device and inode of the directory and the database as opened. Set here,
        # read-only afterwards.
        self._identity = self._identity_now()

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        log_every: float = ServerConfig.fault_log_interval,
        init: bool = True,
    ) -> DataDir:
        """Check `directory`, mark it running, and open its store.

        Raises `DataDirRefused` with a message for the operator if the directory must
        not be opened (see the module docstring; without `init`, also one that holds no
        securechat data), or `OSError` if it cannot be created.
        """
        marker_path = directory / MARKER_NAME
        db = directory / DB_NAME
        if not init and not marker_path.exists() and not db.exists():
            # Deleted, renamed, or a volume that is not mounted: an empty server here would
            # let anyone register every nick.
            raise DataDirRefused(
                f"the data directory {directory} "
                + ("holds no securechat data" if directory.is_dir() else "does not exist")
                + ". For a new server, start it once with --init; if it held a server's data, "
                "restore that first (docs/operations.md, Backup)"
            )
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        marker = _Marker.read(marker_path)
        backup_taken: str | None = None
        if marker is not None:
            if not db.is_file():
                raise DataDirRefused(
                    f"the database {db} is missing, but {directory} was initialised on "
                    f"{marker.initialised}. " + _restore_advice(directory)
                )
            # Before anything opens the database: opening creates a new, empty log.
            wal_lost = marker.state == "running" and not Path(f"{db}-wal").exists()
            try:
                backup_taken = _facts_or_refuse(directory, marker)
            except DataDirRefused:
                # Without its log the main file may hold nothing of ours at all; the lost
                # log is the thing to tell (unless the file is simply empty).
                if not wal_lost or db.stat().st_size == 0:
                    raise
                backup_taken = None
            if wal_lost and backup_taken is None:
                raise DataDirRefused(
                    f"the server using {directory} did not stop cleanly, and its write-ahead log "
                    f"{db}-wal, which holds its latest changes, is gone: {db} alone may be missing "
                    "registrations and whispers it confirmed. If you have that file, put it back "
                    "next to the database. " + _restore_advice(directory)
                )
            store_id = marker.store_id
            initialised = marker.initialised
        elif db.is_file():
            backup_taken = _facts_or_refuse(directory, None)
            store_id = inspect(db).store_id or secrets.token_hex(16)
            initialised = _now_text(clock)
            log.warning("adopting %s: it holds a database but no marker; writing %s", directory, MARKER_NAME)
        else:
            store_id = secrets.token_hex(16)
            initialised = _now_text(clock)
            log.info("initialising data directory %s (store %s)", directory, store_id)
        running = _Marker(store_id, initialised, "running")
        try:
            running.write(marker_path)  # before the database is opened: see the module docstring
        except OSError as exc:
            raise DataDirRefused(f"cannot write {marker_path}: {exc.strerror or exc}") from None
        try:
            store = SqliteStore(db, clock=clock, monotonic=monotonic, log_every=log_every)
        except (StoreUnavailable, ValueError) as exc:
            raise DataDirRefused(f"cannot open {db}: {exc}") from None
        try:
            if store.store_id() is None:
                store.set_store_id(store_id)
            taken = store.take_backup_mark()
        except StoreUnavailable as exc:
            store.close()
            raise DataDirRefused(f"cannot write to {db}: {exc}") from None
        if taken is not None:
            log.warning(
                "started from a backup taken %s: whispers delivered since then may be delivered "
                "again (clients drop repeats)",
                taken,
            )
        opened = cls(directory, store, running)
        store.watch(opened.changed)
        return opened

    def _identity_now(self) -> tuple[tuple[int, int], tuple[int, int]]:
        d = os.stat(self.directory)
        f = os.stat(self.directory / DB_NAME)
        return (d.st_dev, d.st_ino), (f.st_dev, f.st_ino)

    def changed(self) -> str | None:
        """None while the directory and database are the ones opened; else what happened."""
        try:
            now = self._identity_now()
        except FileNotFoundError:
            return f"the data directory {self.directory} or its database was deleted"
        except OSError as exc:
            return f"the data directory {self.directory} cannot be checked: {exc.strerror or exc}"
        if now != self._identity:
            return f"the data directory {self.directory} or its database was replaced"
        if not (self.directory / MARKER_NAME).is_file():
            return f"the marker {self.directory / MARKER_NAME} was deleted"
        return None

    def close_store(self) -> None:
        """Close the store, then (if the directory is still ours) mark it stopped cleanly."""
        self.store.close()
        if self.changed() is not None:
            return  # not ours any more: writing a marker there would vouch for a stranger
        try:
            _Marker(self._marker.store_id, self._marker.initialised, "stopped").write(
                self.directory / MARKER_NAME
            )
        except OSError as exc:
            log.error("cannot mark %s stopped: %s", self.directory, exc.strerror or exc)
