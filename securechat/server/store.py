"""Durable server state behind a small interface, with SQLite as the embedded default.

The hub never touches SQL: it goes through `Store`, so a networked backend can serve
several server processes later. What the store holds is public keys, signatures and
ciphertext; never a plaintext whisper.

Faults (disk full, I/O errors, a database gone or closed) surface as one exception,
`StoreUnavailable`, never as a raw `sqlite3` error: callers answer it with a
`store-unavailable` error frame and carry on, and the next operation simply tries again,
so the server recovers by itself when space returns. The store logs faults itself, once
per interval with a count, not once per failed operation.

Queued whispers expire by a *service clock*: seconds the server has been running, kept
in the database and advanced by a monotonic clock. A jump of the wall clock (a wrong
NTP step, a VM restored from a snapshot) therefore cannot expire a whisper early or keep
it for ever; time the server was stopped does not count towards a whisper's age.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from ..protocol import KeyIdentity, OneTimePrekeyRecord, SignedPrekeyRecord, fold_nick
from .config import ServerConfig
from .faultlog import FaultLog

__all__ = [
    "SCHEMA_VERSION",
    "DbFacts",
    "QueuedWhisper",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "StoredBundle",
    "backup",
    "inspect",
]

SCHEMA_VERSION = 4

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """The store could not do what was asked (disk full, I/O error, database gone or closed).

    Nothing of the failed operation took effect. The message says why, for the log; it
    may name files, so it is not meant for clients.
    """


@dataclass(frozen=True)
class StoredBundle:
    identity: KeyIdentity
    spk: SignedPrekeyRecord
    opk: OneTimePrekeyRecord | None


@dataclass(frozen=True)
class QueuedWhisper:
    id: int
    recipient: str
    msg_id: str
    sender: str
    header: bytes
    ciphertext: bytes
    ts: float


class Store(Protocol):
    """Contract: every method is thread-safe, and returns only after its change is durable.

    Every method raises `StoreUnavailable` (and nothing else from the backend) when it
    cannot do its work; the operation then had no effect.
    """

    def registered_key(self, nick: str) -> bytes | None:
        """The Ed25519 key `nick` is bound to, or None."""

    def register(self, nick: str, sig_key: bytes, now: float) -> bool:
        """Bind `nick` to `sig_key` unless bound to another key; True if bound to `sig_key` now."""

    def release(self, nick: str) -> bool:
        """Forget `nick`'s binding, keys and queued whispers; True if it was registered."""

    def publish(
        self, nick: str, identity: KeyIdentity, spk: SignedPrekeyRecord, opks: tuple[OneTimePrekeyRecord, ...]
    ) -> None:
        """Set the identity and signed prekey; add `opks` (all of them replaced if the identity changed)."""

    def take_bundle(self, nick: str) -> StoredBundle | None:
        """The bundle with one one-time prekey, which is removed in the same transaction."""

    def prekey_status(self, nick: str) -> tuple[int, int, int]:
        """(one-time prekeys held, signed prekey id or 0, its creation time or 0)."""

    def enqueue(
        self,
        recipient: str,
        msg_id: str,
        sender: str,
        header: bytes,
        ciphertext: bytes,
        ts: float,
        *,
        before_commit: Callable[[int], None] | None = None,
    ) -> int:
        """Queue a whisper durably; returns its id. Queuing the same (sender, msg_id,
        recipient) again returns the first id and stores nothing new.

        `before_commit(id)` runs once the id is known, before the commit waits for the
        disk: pushing to an online recipient then overlaps with the flush.
        """

    def pending(self, recipient: str) -> list[QueuedWhisper]:
        """Everything queued for `recipient`, oldest first."""

    def ack(self, recipient: str, whisper_id: int, failed: str = "") -> QueuedWhisper | None:
        """Delete a whisper `recipient` has dealt with (only they may); the deleted row, or None.

        Read (`failed` empty): not flushed to disk at once: if power fails, the whisper is
        delivered again, and the recipient's client drops it by its message id. Could not
        be decrypted (`failed` is the reason): the failure is kept for its sender in the
        same, flushed, transaction (see `failures`).
        """

    def failures(self, sender: str) -> list[tuple[str, str, str]]:
        """(recipient, message id, reason) of `sender`'s whispers their recipients could
        not decrypt and `sender` has not sent again since; told at each login, so a sender
        who was offline when it happened still learns it."""

    def expire(self, max_age: float) -> int:
        """Delete queued whispers older than `max_age` seconds of service time (time the
        server was running, see the module docstring); how many went."""

    def append_history(self, lines: list[tuple[str, str, str, float]], keep: int) -> None:
        """Add (room, nick, text, ts) lines; keep only the newest `keep` per room."""

    def recent_history(self, room: str, count: int) -> list[tuple[str, str, float]]:
        """The newest `count` (nick, text, ts) lines of `room`, oldest first."""

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    nick_key TEXT PRIMARY KEY, nick TEXT NOT NULL, sig_key BLOB NOT NULL, registered REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bundles (
    nick_key TEXT PRIMARY KEY, sig_key BLOB NOT NULL, dh_key BLOB NOT NULL, dh_sig BLOB NOT NULL,
    spk_id INTEGER NOT NULL, spk_created INTEGER NOT NULL, spk_pub BLOB NOT NULL, spk_sig BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS opks (
    nick_key TEXT NOT NULL, id INTEGER NOT NULL, pub BLOB NOT NULL, sig BLOB NOT NULL,
    PRIMARY KEY (nick_key, id));
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL, msg_id TEXT NOT NULL,
    sender TEXT NOT NULL, header BLOB NOT NULL, ciphertext BLOB NOT NULL, ts REAL NOT NULL,
    UNIQUE (sender, msg_id, recipient));
CREATE INDEX IF NOT EXISTS queue_by_recipient ON queue (recipient, id);
"""

# Each migration takes the schema from version N-1 to N; they run in order, in one
# transaction, so a database is never left half-migrated.
_MIGRATIONS: dict[int, str] = {
    1: _SCHEMA,
    2: """
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL, nick TEXT NOT NULL, text TEXT NOT NULL,
    ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS history_by_room ON history (room, id);
""",
    # The service clock at which each whisper was queued (see the module docstring).
    3: """
ALTER TABLE queue ADD COLUMN svc REAL NOT NULL DEFAULT 0;
""",
    # Whispers a recipient could not decrypt, kept for the sender until it sends them again.
    4: """
CREATE TABLE IF NOT EXISTS failures (
    sender TEXT NOT NULL, msg_id TEXT NOT NULL, recipient TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (sender, msg_id, recipient));
""",
}

#: `meta` keys besides the schema version.
_STORE_ID = "store_id"  # random, also in the data directory's marker: which store this is
_SERVICE_CLOCK = "service_clock"  # seconds of service, as of the last write of it
_BACKUP_TAKEN = "backup_taken"  # set only in copies made by `backup`: when


@dataclass(frozen=True)
class DbFacts:
    """What `inspect` found in a database file."""

    schema_version: int
    store_id: str | None
    backup_taken: str | None


def inspect(path: Path) -> DbFacts:
    """Read a database's identity without changing it (no migration, no schema).

    Raises `StoreUnavailable` if the file is missing, is not an SQLite database, is
    damaged, or holds no securechat tables.
    """
    if not path.is_file():
        raise StoreUnavailable(f"{path} does not exist")
    try:
        # mode=rw: never creates the file; nothing here writes.
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{path}: {exc}") from exc
    try:
        if db.execute("SELECT name FROM sqlite_master WHERE name='meta'").fetchone() is None:
            raise StoreUnavailable(f"{path} holds no securechat tables")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if "schema_version" not in meta:
            raise StoreUnavailable(f"{path} holds no securechat schema version")
        return DbFacts(int(meta["schema_version"]), meta.get(_STORE_ID), meta.get(_BACKUP_TAKEN))
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{path}: {exc}") from exc
    finally:
        db.close()


def backup(source: Path, dest: Path, *, clock: Callable[[], float] = time.time) -> None:
    """Copy the database `source` to the new file `dest` with SQLite's online backup API.

    Safe while a server is writing to `source`: the copy is one consistent snapshot.
    `dest` is created 0600, written under a temporary name, flushed, and renamed into
    place, so it either exists complete or not at all. The copy is a single file (not
    WAL) and is marked as a backup, which lets a server start from it after a crash
    (see `datadir`). Raises `StoreUnavailable` if `source` cannot be read, `OSError`
    if `dest` cannot be written, `FileExistsError` if it exists.
    """
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    inspect(source)  # refuses a missing or foreign file before anything is written
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask
    os.close(fd)
    try:
        src = sqlite3.connect(f"file:{source}?mode=rw", uri=True, isolation_level=None)
        try:
            copy = sqlite3.connect(tmp, isolation_level=None)
            try:
                src.backup(copy)
                taken = datetime.fromtimestamp(clock(), UTC).isoformat(timespec="seconds")
                copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                copy.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_BACKUP_TAKEN, taken))
            finally:
                copy.close()
        finally:
            src.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise StoreUnavailable(f"backing up {source}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class SqliteStore:
    """`Store` on one SQLite database in WAL mode, one connection behind a lock.

    `path` None keeps everything in memory (tests, or a server that should forget).
    The data directory is created 0700 and the database file 0600. Raises
    `StoreUnavailable` for a file that is not a database of ours or cannot be opened,
    and `ValueError` for one with a newer schema than this code knows.

    `clock` is wall time (for migrating old rows); `monotonic` advances the service
    clock by which whispers expire. `log_every` is how often a run of failures is
    logged (one line with a count per interval).
    """

    def __init__(
        self,
        path: Path | None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        log_every: float = ServerConfig.fault_log_interval,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._monotonic = monotonic
        self._faults = FaultLog(log, "database", log_every, clock=monotonic)
        #: Why every operation is refused (the data directory was deleted or replaced);
        #: None while usable. Guarded by `_lock`.
        self._failed: str | None = None
        #: Says why the database on disk is no longer the one open (None while it is);
        #: run after every durable commit. Set once by `watch`, before use.
        self._still_here: Callable[[], str | None] | None = None
        #: The highest queue id handed to `before_commit` in a transaction that then did
        #: not commit. Guarded by `_lock`. SQLite would hand that id out again, and the
        #: recipient, who already saw it pushed, may still ack it: see `enqueue`.
        self._spent_id = 0
        if path is None:
            target = ":memory:"
        else:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # exists with 0600 before SQLite opens it
            os.close(fd)
            target = str(path)
        try:
            self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit survives power loss, not just a crash of this process.
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
            with self._read() as db:
                row = db.execute("SELECT value FROM meta WHERE key=?", (_SERVICE_CLOCK,)).fetchone()
                (newest,) = db.execute("SELECT MAX(svc) FROM queue").fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {target}: {exc}") from exc
        # The service clock goes on from where it was last written down; a whisper queued
        # after that write (and before a crash) carries a later reading, which counts too.
        # Guarded by nothing: set here, read-only afterwards.
        self._service_base = max(float(row[0]) if row else 0.0, float(newest or 0.0))
        self._mono_base = monotonic()

    def _migrate(self) -> None:
        with self._tx() as db:
            has_meta = db.execute("SELECT name FROM sqlite_master WHERE name='meta'").fetchone()
            version = 0
            if has_meta:
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise ValueError(f"database schema {version} is newer than this server ({SCHEMA_VERSION})")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
                if step == 3 and version >= 1:
                    # Whispers queued before the service clock existed: their age so far by
                    # the wall clock (the best there is), with the service clock at 0 now.
                    db.execute("UPDATE queue SET svc = MIN(0.0, ts - ?)", (self._clock(),))
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(step),))

    def service_clock(self) -> float:
        """Seconds this store has been in service (across restarts); never goes back."""
        return self._service_base + max(0.0, self._monotonic() - self._mono_base)

    def fail(self, reason: str) -> None:
        """Refuse every later operation with `StoreUnavailable(reason)` (any thread).

        For a database that can no longer be trusted to be the one on disk (its data
        directory was deleted or replaced while open): writes would go to a file nobody
        will ever open again.
        """
        with self._lock:
            self._failed = reason
        self._faults.failed(reason)

    def watch(self, check: Callable[[], str | None]) -> None:
        """Run `check` after every durable commit; when it names a reason (the data
        directory was deleted or replaced), the commit is reported as failed and the store
        refuses everything from then on, as after `fail`. The periodic check alone would
        leave a second in which "stored" is answered for writes into deleted files."""
        self._still_here = check

    @property
    def failed(self) -> str | None:
        """Why the store refuses everything (see `fail`), or None."""
        with self._lock:
            return self._failed

    def _fault(self, exc: sqlite3.Error) -> StoreUnavailable:
        # Called with `_lock` held, inside a failed transaction: undo whatever is left
        # of it so the connection is usable again once the fault clears. SQLite may have
        # rolled back already (e.g. after SQLITE_FULL), and a rollback can fail in turn.
        if self._db.in_transaction:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
        self._faults.failed(str(exc))
        return StoreUnavailable(str(exc))

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction. `durable=False` commits without waiting for the disk (in WAL
        mode the commit survives a crash of this process, not a power loss, until the next
        durable commit flushes it too). Raises `StoreUnavailable` for any SQLite failure."""
        with self._lock:
            if self._failed is not None:
                raise StoreUnavailable(self._failed)
            try:
                if not durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._db
                    except BaseException:
                        if self._db.in_transaction:
                            self._db.execute("ROLLBACK")
                        raise
                    self._db.execute("COMMIT")
                finally:
                    if not durable:
                        self._db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise self._fault(exc) from exc
            gone = self._still_here() if durable and self._still_here is not None else None
            if gone is not None:
                # Committed, but into files nobody will open again: not durable at all.
                self._failed = gone
                self._faults.failed(gone)
                raise StoreUnavailable(gone)
            self._faults.recovered()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read-only transaction: one consistent snapshot. Raises `StoreUnavailable`."""
        with self._lock:
            if self._failed is not None:
                raise StoreUnavailable(self._failed)
            try:
                self._db.execute("BEGIN")
                try:
                    yield self._db
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._fault(exc) from exc

    def store_id(self) -> str | None:
        """The random id the data directory's marker names this database by, or None."""
        with self._read() as db:
            row = db.execute("SELECT value FROM meta WHERE key=?", (_STORE_ID,)).fetchone()
        return None if row is None else str(row[0])

    def set_store_id(self, store_id: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_STORE_ID, store_id))

    def take_backup_mark(self) -> str | None:
        """If this database is a copy made by `backup`, forget that it is and say when it
        was taken; None otherwise. (A running database is never marked as a backup.)"""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key=?", (_BACKUP_TAKEN,)).fetchone()
            db.execute("DELETE FROM meta WHERE key=?", (_BACKUP_TAKEN,))
        return None if row is None else str(row[0])

    def registered_key(self, nick: str) -> bytes | None:
        with self._read() as db:
            row = db.execute("SELECT sig_key FROM users WHERE nick_key=?", (fold_nick(nick),)).fetchone()
        return None if row is None else bytes(row[0])

    def register(self, nick: str, sig_key: bytes, now: float) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT sig_key FROM users WHERE nick_key=?", (fold_nick(nick),)).fetchone()
            if row is not None:
                return bytes(row[0]) == sig_key
            db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", (fold_nick(nick), nick, sig_key, now))
            return True

    def release(self, nick: str) -> bool:
        key = fold_nick(nick)
        with self._tx() as db:
            gone = db.execute("DELETE FROM users WHERE nick_key=?", (key,)).rowcount > 0
            db.execute("DELETE FROM bundles WHERE nick_key=?", (key,))
            db.execute("DELETE FROM opks WHERE nick_key=?", (key,))
            db.execute("DELETE FROM queue WHERE recipient=?", (key,))
            db.execute("DELETE FROM failures WHERE sender=? OR recipient=?", (key, key))
        return gone

    def publish(
        self, nick: str, identity: KeyIdentity, spk: SignedPrekeyRecord, opks: tuple[OneTimePrekeyRecord, ...]
    ) -> None:
        key = fold_nick(nick)
        with self._tx() as db:
            old = db.execute("SELECT sig_key, dh_key FROM bundles WHERE nick_key=?", (key,)).fetchone()
            if old is not None and (bytes(old[0]), bytes(old[1])) != (identity.sig_key, identity.dh_key):
                db.execute("DELETE FROM opks WHERE nick_key=?", (key,))  # prekeys of a former identity
            db.execute(
                "INSERT OR REPLACE INTO bundles VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    identity.sig_key,
                    identity.dh_key,
                    identity.dh_sig,
                    spk.id,
                    spk.created,
                    spk.public,
                    spk.signature,
                ),
            )
            db.executemany(
                "INSERT OR REPLACE INTO opks VALUES (?, ?, ?, ?)",
                [(key, opk.id, opk.public, opk.signature) for opk in opks],
            )

    def take_bundle(self, nick: str) -> StoredBundle | None:
        key = fold_nick(nick)
        with self._tx() as db:
            row = db.execute(
                "SELECT sig_key, dh_key, dh_sig, spk_id, spk_created, spk_pub, spk_sig FROM bundles "
                "WHERE nick_key=?",
                (key,),
            ).fetchone()
            if row is None:
                return None
            opk_row = db.execute(
                "SELECT id, pub, sig FROM opks WHERE nick_key=? ORDER BY id LIMIT 1", (key,)
            ).fetchone()
            opk = None
            if opk_row is not None:
                db.execute("DELETE FROM opks WHERE nick_key=? AND id=?", (key, opk_row[0]))
                opk = OneTimePrekeyRecord(
                    id=opk_row[0], public=bytes(opk_row[1]), signature=bytes(opk_row[2])
                )
        return StoredBundle(
            KeyIdentity(sig_key=bytes(row[0]), dh_key=bytes(row[1]), dh_sig=bytes(row[2])),
            SignedPrekeyRecord(id=row[3], created=row[4], public=bytes(row[5]), signature=bytes(row[6])),
            opk,
        )

    def prekey_status(self, nick: str) -> tuple[int, int, int]:
        key = fold_nick(nick)
        with self._read() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM opks WHERE nick_key=?", (key,)).fetchone()
            row = db.execute("SELECT spk_id, spk_created FROM bundles WHERE nick_key=?", (key,)).fetchone()
        return (int(count), *(row if row else (0, 0)))

    def enqueue(
        self,
        recipient: str,
        msg_id: str,
        sender: str,
        header: bytes,
        ciphertext: bytes,
        ts: float,
        *,
        before_commit: Callable[[int], None] | None = None,
    ) -> int:
        args = (fold_nick(recipient), msg_id, fold_nick(sender))
        handed = 0  # the id `before_commit` was given, if it was
        try:
            with self._tx() as db:
                # An id pushed to a recipient in a transaction that then failed (a full disk
                # fails at COMMIT, after the push) must never name another whisper: a late
                # ack of the first would delete the second. So new ids start above it.
                floor = None
                if self._spent_id:
                    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='queue'").fetchone()
                    if row is None or int(row[0]) < self._spent_id:
                        floor = self._spent_id + 1
                db.execute(
                    "INSERT OR IGNORE INTO queue (id, recipient, msg_id, sender, header, ciphertext, ts, svc)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (floor, *args, header, ciphertext, ts, self.service_clock()),
                )
                (whisper_id,) = db.execute(
                    "SELECT id FROM queue WHERE recipient=? AND msg_id=? AND sender=?", args
                ).fetchone()
                # Sent again (after a failure, in a new session): that failure is answered.
                db.execute("DELETE FROM failures WHERE recipient=? AND msg_id=? AND sender=?", args)
                if before_commit is not None:
                    handed = int(whisper_id)
                    before_commit(handed)
        except BaseException:
            if handed:
                with self._lock:
                    self._spent_id = max(self._spent_id, handed)
            raise
        return int(whisper_id)

    def pending(self, recipient: str) -> list[QueuedWhisper]:
        with self._read() as db:
            rows = db.execute(
                "SELECT id, recipient, msg_id, sender, header, ciphertext, ts FROM queue WHERE recipient=? "
                "ORDER BY id",
                (fold_nick(recipient),),
            ).fetchall()
        return [QueuedWhisper(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), r[6]) for r in rows]

    def ack(self, recipient: str, whisper_id: int, failed: str = "") -> QueuedWhisper | None:
        with self._tx(durable=bool(failed)) as db:
            r = db.execute(
                "SELECT id, recipient, msg_id, sender, header, ciphertext, ts FROM queue "
                "WHERE id=? AND recipient=?",
                (whisper_id, fold_nick(recipient)),
            ).fetchone()
            if r is None:
                return None
            db.execute("DELETE FROM queue WHERE id=?", (whisper_id,))
            if failed:
                db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)", (r[3], r[2], r[1], failed))
        return QueuedWhisper(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), r[6])

    def failures(self, sender: str) -> list[tuple[str, str, str]]:
        with self._read() as db:
            rows = db.execute(
                "SELECT recipient, msg_id, reason FROM failures WHERE sender=? ORDER BY rowid",
                (fold_nick(sender),),
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def expire(self, max_age: float) -> int:
        now = self.service_clock()
        with self._tx() as db:
            # Written down here too, so a restart goes on from about here (see __init__).
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_SERVICE_CLOCK, repr(now)))
            return int(db.execute("DELETE FROM queue WHERE svc < ?", (now - max_age,)).rowcount)

    def append_history(self, lines: list[tuple[str, str, str, float]], keep: int) -> None:
        if not lines:
            return
        with self._tx() as db:
            db.executemany("INSERT INTO history (room, nick, text, ts) VALUES (?, ?, ?, ?)", lines)
            for room in {line[0] for line in lines}:
                db.execute(
                    "DELETE FROM history WHERE room=? AND id <= "
                    "(SELECT id FROM history WHERE room=? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (room, room, keep),
                )

    def recent_history(self, room: str, count: int) -> list[tuple[str, str, float]]:
        with self._read() as db:
            rows = db.execute(
                "SELECT nick, text, ts FROM history WHERE room=? ORDER BY id DESC LIMIT ?", (room, count)
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in reversed(rows)]

    def close(self) -> None:
        """Write the service clock down (if the database is still usable) and close."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)", (_SERVICE_CLOCK, repr(self.service_clock()))
                )
        except StoreUnavailable:
            pass  # already logged; the clock goes on from the newest whisper's reading
        with self._lock:
            self._failed = self._failed or "the database is closed"
            self._db.close()
