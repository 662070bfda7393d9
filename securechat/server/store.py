"""Durable server state behind a small interface, with SQLite as the embedded default.

The hub never touches SQL: it goes through `Store`, so a networked backend can serve
several server processes later. What the store holds is public keys, signatures and
ciphertext; never a plaintext whisper.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..protocol import KeyIdentity, OneTimePrekeyRecord, SignedPrekeyRecord, fold_nick

__all__ = ["SCHEMA_VERSION", "QueuedWhisper", "SqliteStore", "Store", "StoredBundle"]

SCHEMA_VERSION = 2


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
    """Contract: every method is thread-safe, and returns only after its change is durable."""

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

    def ack(self, recipient: str, whisper_id: int) -> QueuedWhisper | None:
        """Delete a delivered whisper (only `recipient` may); the deleted row, or None.

        Not flushed to disk at once: if power fails, the whisper is delivered again,
        and the recipient's client drops it by its message id.
        """

    def expire(self, before: float) -> int:
        """Delete queued whispers stored before `before` (Unix time); how many went."""

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
}


class SqliteStore:
    """`Store` on one SQLite database in WAL mode, one connection behind a lock.

    `path` None keeps everything in memory (tests, or a server that should forget).
    The data directory is created 0700 and the database file 0600. Raises
    `sqlite3.DatabaseError` for a file that is not a database of ours, and `ValueError`
    for one with a newer schema than this code knows.
    """

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        if path is None:
            target = ":memory:"
        else:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # exists with 0600 before SQLite opens it
            os.close(fd)
            target = str(path)
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit survives power loss, not just a crash of this process.
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()

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
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(step),))

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction. `durable=False` commits without waiting for the disk (in WAL
        mode the commit survives a crash of this process, not a power loss, until the next
        durable commit flushes it too)."""
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read-only transaction: one consistent snapshot, without taking the write lock."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

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
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO queue (recipient, msg_id, sender, header, ciphertext, ts) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (*args, header, ciphertext, ts),
            )
            (whisper_id,) = db.execute(
                "SELECT id FROM queue WHERE recipient=? AND msg_id=? AND sender=?", args
            ).fetchone()
            if before_commit is not None:
                before_commit(int(whisper_id))
        return int(whisper_id)

    def pending(self, recipient: str) -> list[QueuedWhisper]:
        with self._read() as db:
            rows = db.execute(
                "SELECT id, recipient, msg_id, sender, header, ciphertext, ts FROM queue WHERE recipient=? "
                "ORDER BY id",
                (fold_nick(recipient),),
            ).fetchall()
        return [QueuedWhisper(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), r[6]) for r in rows]

    def ack(self, recipient: str, whisper_id: int) -> QueuedWhisper | None:
        with self._tx(durable=False) as db:
            r = db.execute(
                "SELECT id, recipient, msg_id, sender, header, ciphertext, ts FROM queue "
                "WHERE id=? AND recipient=?",
                (whisper_id, fold_nick(recipient)),
            ).fetchone()
            if r is None:
                return None
            db.execute("DELETE FROM queue WHERE id=?", (whisper_id,))
        return QueuedWhisper(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), r[6])

    def expire(self, before: float) -> int:
        with self._tx() as db:
            return int(db.execute("DELETE FROM queue WHERE ts < ?", (before,)).rowcount)

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
        with self._lock:
            self._db.close()
