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
it for ever; time the server was stopped does not count towards a whisper's age. Nicks
nobody logs in to expire by the same clock.

Nicks are free, so what one can make the store keep is bounded: the queue by quotas per
recipient, per sender and in all (`QueueLimits`, checked in the transaction that would
insert), one-time prekeys per user (`publish`'s `max_held`), failures per sender.

Registered rooms (`StoredRoom`) are kept with their settings, operators and bans; owners
and operators are identity keys, not nicks, so a nick that expires, is released or is
renamed changes nothing about who runs a room. Rooms and room history are keyed by the
folded room name (`fold_room`).
"""

from __future__ import annotations

import enum
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

from ..protocol import (
    KeyIdentity,
    OneTimeKemPrekeyRecord,
    OneTimePrekeyRecord,
    SignedKemPrekeyRecord,
    SignedPrekeyRecord,
    fold_nick,
    fold_room,
)
from .config import ServerConfig
from .faultlog import FaultLog

__all__ = [
    "SCHEMA_VERSION",
    "DbFacts",
    "NewWhisper",
    "PrekeyStatus",
    "QueueLimits",
    "QueuedWhisper",
    "Quota",
    "QuotaExceeded",
    "RenameResult",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "StoredBan",
    "StoredBundle",
    "StoredRoom",
    "UnknownRecipient",
    "backup",
    "inspect",
    "mailbox",
]

SCHEMA_VERSION = 10

_C = TypeVar("_C")

log = logging.getLogger(__name__)


class RenameResult(enum.Enum):
    """What `rename_user` did: moved the registration, or why not (nothing changed)."""

    DONE = "done"
    NEW_REGISTERED = "new-registered"  # `new` (folded) is registered, to anyone
    NOT_YOURS = "not-yours"  # `old` is not registered to the key
    QUEUED = "queued"  # whispers still wait for `old`
    LINKED = "linked"  # `old` has linked devices (the relay's check: they know it by its nick)


class StoreUnavailable(Exception):
    """The store could not do what was asked (disk full, I/O error, database gone or closed).

    Nothing of the failed operation took effect. The message says why, for the log; it
    may name files, so it is not meant for clients.
    """


class Quota(enum.Enum):
    """Which quota of the offline queue a whisper would exceed."""

    SENDER_COUNT = "whispers waiting from one sender"
    SENDER_BYTES = "bytes waiting from one sender"
    RECIPIENT_COUNT = "whispers waiting for one recipient"
    RECIPIENT_BYTES = "bytes waiting for one recipient"
    TOTAL_BYTES = "bytes waiting in all"


class QuotaExceeded(Exception):
    """`enqueue` refused a whisper: queuing it would exceed `quota`. Nothing was stored."""

    def __init__(self, quota: Quota) -> None:
        super().__init__(quota.value)
        self.quota = quota


class UnknownRecipient(Exception):
    """`enqueue(..., registered_only=True)` refused a whisper: nobody is registered as its
    recipient. Nothing was stored."""


@dataclass(frozen=True, kw_only=True)
class QueueLimits:
    """Quotas on the offline queue; bytes count a whisper's header and ciphertext."""

    per_recipient: int
    bytes_per_recipient: int
    per_sender: int
    bytes_per_sender: int
    total_bytes: int


@dataclass(frozen=True)
class StoredBundle:
    identity: KeyIdentity
    spk: SignedPrekeyRecord
    opk: OneTimePrekeyRecord | None
    #: Only when asked for (`take_bundle(kem=True)`); None when the owner has none.
    kpk: SignedKemPrekeyRecord | None = None
    kopk: OneTimeKemPrekeyRecord | None = None


@dataclass(frozen=True)
class PrekeyStatus:
    """What `prekey_status` reports: one-time prekeys held, the signed prekey's id and
    date (0 for none), one-time KEM prekeys held, the last-resort KEM prekey's id (0)."""

    count: int = 0
    spk_id: int = 0
    spk_created: int = 0
    kem_count: int = 0
    kpk_id: int = 0


@dataclass(frozen=True)
class NewWhisper:
    """A whisper to queue (`enqueue_many`): as the sender sent it, with the server's time."""

    recipient: str
    msg_id: str
    sender: str
    header: bytes
    ciphertext: bytes
    ts: float


@dataclass(frozen=True)
class QueuedWhisper:
    id: int
    recipient: str
    msg_id: str
    sender: str
    header: bytes
    ciphertext: bytes
    ts: float


@dataclass(frozen=True)
class StoredBan:
    """One ban of a registered room, stored as the rooms logic made it.

    `kind` is the ban list's wire name ("key" or "pattern"); `value` is what the ban
    matches: an identity key (bytes) or a folded nick pattern (str), given back with the
    type it was saved with. `shown` is the mask as the ban list shows it, `by` the nick
    that set it.
    """

    kind: str
    value: str | bytes
    shown: str
    by: str


@dataclass(frozen=True)
class StoredRoom:
    """A registered room: its name as registered (case kept; found by `fold_room`), its
    owner's identity key, settings, operators' identity keys and bans (in the order given)."""

    name: str
    owner_key: bytes
    topic: str = ""
    invite_only: bool = False
    operators: frozenset[bytes] = frozenset()
    bans: tuple[StoredBan, ...] = ()


class Store(Protocol):
    """Contract: every method is thread-safe, and returns only after its change is durable.

    Every method raises `StoreUnavailable` (and nothing else from the backend) when it
    cannot do its work; the operation then had no effect.
    """

    def registered_key(self, nick: str) -> bytes | None:
        """The Ed25519 key `nick` is bound to, or None."""

    def register(self, nick: str, sig_key: bytes, now: float) -> bool:
        """Bind `nick` to `sig_key` unless bound to another key; True if bound to `sig_key` now.

        Called at every login with an identity: it also marks `nick` as used now (by the
        service clock), which keeps it from expiring (see `expire_nicks`).
        """

    def release(self, nick: str) -> bool:
        """Forget `nick`'s binding, keys, whispers queued for it and by it, and failures;
        True if it was registered.

        Registered rooms are untouched: they are owned and run by identity keys, so the
        key stays owner (or operator) and gets that back under whatever nick it logs in as.
        """

    def release_if_idle(self, nick: str, max_idle: float) -> bool:
        """`release` `nick` if nobody logged in to it for more than `max_idle` seconds of
        service time; True if it was released."""

    def expire_nicks(self, max_idle: float, keep: Collection[str] = ()) -> list[str]:
        """`release` every nick (but those in `keep`) nobody logged in to for more than
        `max_idle` seconds of service time; the nicks released.

        A nick that owns a registered room expires like any other: rooms are by key, so
        its key stays the room's owner (and operators stay operators), and whoever holds
        that key runs the room again under any nick.
        """

    def rename_user(self, old: str, new: str, sig_key: bytes, now: float) -> RenameResult:
        """Move the registration of `old` to `new` in one transaction; `DONE` if it moved.

        `new` gets the same key, registered at `now` (wall time) and used now (service
        clock, see `expire_nicks`); `old` is free at once. The bundle and one-time
        prekeys of `old` are deleted (they bind the old nick: the client publishes new
        ones); what `old` sent is moved to `new`: its queued whispers (and their share of
        the sender quota), so that their acks reach the renamer and no later holder of
        `old`, and the failures it is to be told. Otherwise, with nothing changed, the
        reason: `new` (folded) is registered (to anyone, `old` itself included), `old` is
        not registered to `sig_key`, or whispers are still queued for `old` (they would
        be stranded under a nick nobody holds).
        """

    def has_queued(self, recipient: str) -> bool:
        """True if any whisper is queued for `recipient`."""

    def registered_rooms(self) -> list[StoredRoom]:
        """Every registered room with its operators and bans (sorted by folded name);
        loaded once at start."""

    def register_room(self, room: StoredRoom, *, drop_history: bool = False) -> bool:
        """Register `room` with its settings, operators and bans; False, and nothing
        changed, if a room of that (folded) name is registered already. `drop_history`:
        in the same transaction, delete the lines stored under that name (left by an
        older room of that name: an autojoin room since dropped from the configuration)."""

    def save_room(self, room: StoredRoom) -> None:
        """Replace a registered room's name, owner, settings, operators and bans, all in
        one transaction. Raises `KeyError` if no room of that (folded) name is registered
        (a caller's mistake: registered rooms are never unregistered)."""

    def drop_room_history(self, room: str) -> None:
        """Delete every stored history line of `room` (folded)."""

    def release_room(self, name: str, *, drop_history: bool = True) -> bool:
        """Forget registered room `name` (its settings, operators and bans, and with
        `drop_history` its stored lines), in one transaction; False if it was not
        registered (then nothing changed)."""

    def expire_rooms(
        self, max_idle: float, keep_owners: Collection[bytes] = (), keep_history: Collection[str] = ()
    ) -> list[str]:
        """`release_room` every registered room whose owner key no nick registered to it
        has logged in with for more than `max_idle` seconds of service time, but those
        owned by a key in `keep_owners` (online now); the stored lines go too, but for the
        rooms named in `keep_history` (autojoin rooms, whose lines are kept anyway).
        Their names as registered."""

    def publish(
        self,
        nick: str,
        identity: KeyIdentity,
        spk: SignedPrekeyRecord,
        opks: tuple[OneTimePrekeyRecord, ...],
        *,
        max_held: int | None = None,
        kpk: SignedKemPrekeyRecord | None = None,
        kopks: tuple[OneTimeKemPrekeyRecord, ...] = (),
        max_kem_held: int | None = None,
    ) -> None:
        """Set the identity and signed prekey; add `opks` (all of them replaced if the identity
        changed), the first of them only while `nick` holds fewer than `max_held`. Set
        the last-resort KEM prekey `kpk` and add `kopks` likewise (`max_kem_held`); with
        no `kpk`, every KEM prekey of `nick` is removed (its client no longer makes them)."""

    def take_bundle(
        self, nick: str, *, take_opk: Callable[[], bool] | None = None, kem: bool = False
    ) -> StoredBundle | None:
        """The bundle with one one-time prekey, which is removed in the same transaction;
        with `kem`, also the last-resort KEM prekey and one one-time KEM prekey, removed
        likewise.

        With `take_opk`, a one-time prekey (of either kind) is handed out only if it says
        so; it is asked once, only when there is one, in the transaction (under the
        store's lock: it must not use the store).
        """

    def device_list(self, nick: str) -> tuple[int, bytes] | None:
        """`nick`'s device list: (version, the record as `set_device_list` was given it),
        or None if it has none."""

    def set_device_list(self, nick: str, version: int, record: bytes, removed: Sequence[str]) -> bool:
        """Replace `nick`'s device list by `record` at `version`, if that is above the one
        held (False, nothing changed, otherwise), and forget the mailboxes of the `removed`
        device ids (their keys, their queued whispers), all in one durable transaction."""

    def prekey_status(self, nick: str) -> PrekeyStatus:
        """What the directory holds of `nick`'s prekeys."""

    def drop_kem_prekeys(self, nick: str) -> None:
        """Remove every KEM prekey of `nick` (its client cannot use them)."""

    def enqueue(
        self,
        recipient: str,
        msg_id: str,
        sender: str,
        header: bytes,
        ciphertext: bytes,
        ts: float,
        *,
        limits: QueueLimits | None = None,
        registered_only: bool = False,
    ) -> int:
        """Queue a whisper durably; returns its id once the commit holding it is on disk.
        Queuing the same (sender, msg_id, recipient) again returns the first id and
        stores nothing new.

        With `registered_only`, raises `UnknownRecipient` if nobody is registered as
        `recipient`, checked in the inserting transaction (the relay's check, without a
        transaction of its own). Raises `QuotaExceeded` if a new whisper would exceed one
        of `limits` (a resend of one already queued is never refused): checked there too.
        Whispers from many threads may share one commit (see `SqliteStore`'s group
        commit): each caller returns only after the commit that holds its row.
        """

    def enqueue_many(
        self,
        whispers: Sequence[NewWhisper],
        *,
        limits: QueueLimits | None = None,
        registered_only: bool = False,
    ) -> list[int | QuotaExceeded | UnknownRecipient]:
        """`enqueue` each of `whispers` (one sender's, read together), in order and all in
        one commit; for each, its id or the refusal `enqueue` would raise for it (that one
        alone is not stored). Returns once that commit is on disk. Raises
        `StoreUnavailable` if it failed: then none of them was stored.
        """

    def pending(
        self, recipient: str, *, after: int = 0, upto: int | None = None, limit: int | None = None
    ) -> list[QueuedWhisper]:
        """What is queued for `recipient` with an id above `after` (and at most `upto`),
        oldest first; at most `limit` of them."""

    def newest_queued(self, recipient: str) -> int:
        """The id of the newest whisper queued for `recipient`; 0 if none."""

    def ack(
        self, recipient: str, whisper_id: int, failed: str = "", *, keep_failures: int | None = None
    ) -> QueuedWhisper | None:
        """Delete a whisper `recipient` has dealt with (only they may); the deleted row, or None.

        Read (`failed` empty): not flushed to disk at once: if power fails, the whisper is
        delivered again, and the recipient's client drops it by its message id. Could not
        be decrypted (`failed` is the reason): the failure is kept for its sender in the
        same, flushed, transaction (see `failures`), with at most `keep_failures` (the
        newest) per sender.
        """

    def ack_many(
        self, recipient: str, acks: Sequence[tuple[int, str]], *, keep_failures: int | None = None
    ) -> list[QueuedWhisper | None]:
        """`ack` each (whisper id, failure reason or "") of `acks` (one recipient's, read
        together), in order and in one commit; for each, the deleted row or None. Raises
        `StoreUnavailable` if the commit failed: then none was deleted."""

    def failures(self, sender: str, limit: int | None = None) -> list[tuple[str, str, str]]:
        """(recipient, message id, reason) of `sender`'s whispers their recipients could
        not decrypt and `sender` has not sent again since, oldest first, at most `limit`;
        told at each login, so a sender who was offline when it happened still learns it."""

    def expire(self, max_age: float) -> int:
        """Delete queued whispers older than `max_age` seconds of service time (time the
        server was running, see the module docstring); how many went."""

    def append_history(self, lines: list[tuple[str, str, str, float]], keep: int) -> None:
        """Add (room, nick, text, ts) lines; keep only the newest `keep` per room (folded)."""

    def recent_history(self, room: str, count: int) -> list[tuple[str, str, float]]:
        """The newest `count` (nick, text, ts) lines of `room` (folded), oldest first."""

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

#: `queue_usage` keys, as migration 5's triggers write them: the whole queue, a
#: recipient's part, a sender's part (each followed by the folded nick). A whisper
#: counts its header's and ciphertext's bytes.
_TOTAL, _TO, _FROM = "*", "to:", "from:"

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
    # What the queue holds per recipient ('to:' nick), per sender ('from:' nick) and in
    # all ('*'), kept by triggers so that every delete (ack, expiry, release) counts:
    # the quotas are checked against it in the inserting transaction, without a scan.
    5: """
CREATE TABLE IF NOT EXISTS queue_usage (
    who TEXT PRIMARY KEY, count INTEGER NOT NULL, bytes INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS queue_usage_add AFTER INSERT ON queue BEGIN
    INSERT INTO queue_usage (who, count, bytes) VALUES
        ('*', 1, length(NEW.header) + length(NEW.ciphertext)),
        ('to:' || NEW.recipient, 1, length(NEW.header) + length(NEW.ciphertext)),
        ('from:' || NEW.sender, 1, length(NEW.header) + length(NEW.ciphertext))
    ON CONFLICT (who) DO UPDATE SET count = count + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS queue_usage_remove AFTER DELETE ON queue BEGIN
    UPDATE queue_usage SET count = count - 1, bytes = bytes - (length(OLD.header) + length(OLD.ciphertext))
        WHERE who IN ('*', 'to:' || OLD.recipient, 'from:' || OLD.sender);
    DELETE FROM queue_usage WHERE count <= 0 AND who IN ('to:' || OLD.recipient, 'from:' || OLD.sender);
END;
INSERT INTO queue_usage SELECT '*', COUNT(*), COALESCE(SUM(length(header) + length(ciphertext)), 0)
    FROM queue;
INSERT INTO queue_usage SELECT 'to:' || recipient, COUNT(*), SUM(length(header) + length(ciphertext))
    FROM queue GROUP BY recipient;
INSERT INTO queue_usage SELECT 'from:' || sender, COUNT(*), SUM(length(header) + length(ciphertext))
    FROM queue GROUP BY sender;
""",
    # When each nick was last logged in to, by the service clock (see `expire_nicks`).
    6: """
ALTER TABLE users ADD COLUMN seen REAL NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS users_by_seen ON users (seen);
""",
    # Releasing a nick deletes its failures as recipient too: without an index, a scan per nick.
    7: """
CREATE INDEX IF NOT EXISTS failures_by_recipient ON failures (recipient);
""",
    # Registered rooms (keyed by the folded name), their operators and bans, all by
    # identity key where there is one. A ban's `value` has no declared type, so it keeps
    # the one it was saved with: a key (BLOB) or a nick pattern (TEXT). History is keyed
    # by the folded room name from now on (room names compare case-insensitively).
    8: """
CREATE TABLE IF NOT EXISTS rooms (
    name_key TEXT PRIMARY KEY, name TEXT NOT NULL, owner_key BLOB NOT NULL, topic TEXT NOT NULL,
    invite_only INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS room_operators (
    name_key TEXT NOT NULL, sig_key BLOB NOT NULL, PRIMARY KEY (name_key, sig_key));
CREATE TABLE IF NOT EXISTS room_bans (
    name_key TEXT NOT NULL, kind TEXT NOT NULL, value NOT NULL, shown TEXT NOT NULL, by TEXT NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS room_bans_by_room ON room_bans (name_key);
UPDATE history SET room = lower(room);
""",
    # ML-KEM-768 prekeys (protocol version 3): per nick one last-resort row (last_resort 1,
    # replaced at each publish) and one-time rows, each handed out at most once.
    9: """
CREATE TABLE IF NOT EXISTS kem_prekeys (
    nick_key TEXT NOT NULL, id INTEGER NOT NULL, last_resort INTEGER NOT NULL, created INTEGER NOT NULL,
    pub BLOB NOT NULL, sig BLOB NOT NULL, PRIMARY KEY (nick_key, id));
""",
    # Linked devices (protocol version 4): each person's signed device list, as the
    # `publish_devices` line that set it. A linked device's keys and queue rows are kept
    # under its mailbox, "nick/device" (see `mailbox`), in the tables above.
    10: """
CREATE TABLE IF NOT EXISTS device_lists (
    nick_key TEXT PRIMARY KEY, version INTEGER NOT NULL, record BLOB NOT NULL);
""",
}

#: `meta` keys besides the schema version.
_STORE_ID = "store_id"  # random, also in the data directory's marker: which store this is
_SERVICE_CLOCK = "service_clock"  # seconds of service, as of the last write of it
_BACKUP_TAKEN = "backup_taken"  # set only in copies made by `backup`: when

#: Nicks released per transaction by `expire_nicks`.
_EXPIRE_BATCH = 100

#: Above every queue id (SQLite's largest integer): `pending` with no upper bound.
_NO_ID_ABOVE = 2**63 - 1

#: Values bound to one statement at most: SQLite's limit before 3.32 (32,766 since).
_MAX_VARIABLES = 999


class _Turn(enum.Enum):
    """Where one operation waiting for a group commit stands."""

    WAITING = "waiting"  # queued; another thread will commit it
    LEADING = "leading"  # this operation's thread commits the group it is in
    DONE = "done"  # committed, or failed: `result` or `error` is set


class _Grouped:
    """One caller's part of a group commit (`_Enqueue` or `_Ack`).

    `turn`, `result` and `error` are written by the leading thread before it sets `wake`
    and read by the caller's thread after `wake` is set (the event orders them).
    """

    __slots__ = ("durable", "error", "turn", "wake")

    def __init__(self, durable: bool) -> None:
        self.durable = durable  # its commit must be flushed to disk
        self.turn = _Turn.WAITING
        self.error: BaseException | None = None
        self.wake = threading.Event()


class _Enqueue(_Grouped):
    """Whispers to queue (one caller's batch); `result`: for each, its id or its refusal."""

    __slots__ = ("limits", "registered_only", "result", "svc", "whispers")

    def __init__(
        self, whispers: Sequence[NewWhisper], svc: float, limits: QueueLimits | None, registered_only: bool
    ) -> None:
        super().__init__(durable=True)
        self.whispers = whispers
        self.svc = svc  # the service clock when they were queued
        self.limits = limits
        self.registered_only = registered_only
        self.result: list[int | QuotaExceeded | UnknownRecipient] = []


class _Ack(_Grouped):
    """Acks of one recipient (folded) to apply; `result`: what each removed, or None."""

    __slots__ = ("acks", "keep_failures", "recipient", "result")

    def __init__(self, recipient: str, acks: Sequence[tuple[int, str]], keep_failures: int | None) -> None:
        # A failure is kept for its sender, so its commit is flushed; a plain ack's need
        # not wait for the disk (it shares one that does when whispers are queued).
        super().__init__(durable=any(failed for _, failed in acks))
        self.recipient = recipient
        self.acks = acks
        self.keep_failures = keep_failures
        self.result: list[QueuedWhisper | None] = []


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


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of `script`, one by one (a trigger's body holds semicolons)."""
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \n;"):
                yield statement
            statement = ""


def _opks_kept(
    offered: tuple[OneTimePrekeyRecord, ...], held: set[int], max_held: int
) -> tuple[OneTimePrekeyRecord, ...]:
    """The one-time prekeys a publish writes (both engines' rule): those offered that are
    held already, then new ones while fewer than `max_held` are held."""
    fresh = [opk for opk in offered if opk.id not in held][: max(0, max_held - len(held))]
    return tuple(opk for opk in offered if opk.id in held) + tuple(fresh)


def _kem_opks_added(
    offered: tuple[OneTimeKemPrekeyRecord, ...], held: set[int], last_resort: int, max_held: int | None
) -> list[OneTimeKemPrekeyRecord]:
    """The KEM one-time prekeys a publish adds (both engines' rule): new ids only (not
    held, not the last-resort key's; a repeated id once), while fewer than `max_held` are
    held."""
    fresh = list({k.id: k for k in offered if k.id not in held and k.id != last_resort}.values())
    return fresh if max_held is None else fresh[: max(0, max_held - len(held))]


def _publish_kem(
    db: sqlite3.Connection,
    key: str,
    kpk: SignedKemPrekeyRecord | None,
    kopks: tuple[OneTimeKemPrekeyRecord, ...],
    max_held: int | None,
) -> None:
    """`publish`'s KEM part, in its transaction: the last-resort row replaced (or, with no
    `kpk`, every KEM row of `key` deleted); `kopks` added, new ids only, up to `max_held`."""
    if kpk is None:
        db.execute("DELETE FROM kem_prekeys WHERE nick_key=?", (key,))
        return
    db.execute("DELETE FROM kem_prekeys WHERE nick_key=? AND (last_resort=1 OR id=?)", (key, kpk.id))
    db.execute(
        "INSERT INTO kem_prekeys VALUES (?, ?, 1, ?, ?, ?)",
        (key, kpk.id, kpk.created, kpk.public, kpk.signature),
    )
    held = {
        row[0] for row in db.execute("SELECT id FROM kem_prekeys WHERE nick_key=? AND last_resort=0", (key,))
    }
    fresh = _kem_opks_added(kopks, held, kpk.id, max_held)
    db.executemany(
        "INSERT OR IGNORE INTO kem_prekeys VALUES (?, ?, 0, 0, ?, ?)",
        [(key, k.id, k.public, k.signature) for k in fresh],
    )


def mailbox(nick: str, device: str = "") -> str:
    """Where a device's keys and whispers are kept: the folded nick for the device holding
    the identity key (or a person with no device list), "nick/device" for a linked one
    (neither a nick nor a device id can hold a "/")."""
    return fold_nick(f"{nick}/{device}" if device else nick)


def _owner(box: str) -> str:
    """The folded nick a mailbox belongs to."""
    return box.partition("/")[0]


def _forget_mailbox(db: sqlite3.Connection, box: str) -> None:
    """Delete a linked device's keys, the whispers queued for it and the failures it
    reported. In a write transaction."""
    for table in ("bundles", "opks", "kem_prekeys"):
        db.execute(f"DELETE FROM {table} WHERE nick_key=?", (box,))  # noqa: S608
    db.execute("DELETE FROM queue WHERE recipient=?", (box,))
    db.execute("DELETE FROM failures WHERE recipient=?", (box,))


def _release(db: sqlite3.Connection, key: str) -> bool:
    """Forget the nick `key` (folded): binding, device list, keys, queue, failures, and
    those of its linked devices' mailboxes. In a write transaction."""
    # Every "key/..." mailbox: the strings from "key/" up to "key0" ("0" follows "/").
    boxes = [
        row[0]
        for row in db.execute(
            "SELECT nick_key FROM bundles WHERE nick_key > ? AND nick_key < ? "
            "UNION SELECT recipient FROM queue WHERE recipient > ? AND recipient < ?",
            (key + "/", key + "0", key + "/", key + "0"),
        )
    ]
    for box in boxes:
        _forget_mailbox(db, box)
        db.execute("DELETE FROM queue WHERE sender=?", (box,))
        db.execute("DELETE FROM failures WHERE sender=?", (box,))
    db.execute("DELETE FROM device_lists WHERE nick_key=?", (key,))
    gone = db.execute("DELETE FROM users WHERE nick_key=?", (key,)).rowcount > 0
    db.execute("DELETE FROM bundles WHERE nick_key=?", (key,))
    db.execute("DELETE FROM opks WHERE nick_key=?", (key,))
    db.execute("DELETE FROM kem_prekeys WHERE nick_key=?", (key,))
    db.execute("DELETE FROM queue WHERE recipient=?", (key,))
    # And what it sent: their acks would otherwise be told to whoever registers the nick
    # next (the triggers give the quotas back for both deletes).
    db.execute("DELETE FROM queue WHERE sender=?", (key,))
    db.execute("DELETE FROM failures WHERE sender=?", (key,))
    db.execute("DELETE FROM failures WHERE recipient=?", (key,))
    return gone


def _release_room(db: sqlite3.Connection, key: str, *, drop_history: bool) -> bool:
    """Forget the registered room `key` (folded). In a write transaction."""
    gone = db.execute("DELETE FROM rooms WHERE name_key=?", (key,)).rowcount > 0
    db.execute("DELETE FROM room_operators WHERE name_key=?", (key,))
    db.execute("DELETE FROM room_bans WHERE name_key=?", (key,))
    if gone and drop_history:
        db.execute("DELETE FROM history WHERE room=?", (key,))
    return gone


def _put_room_members(db: sqlite3.Connection, key: str, room: StoredRoom, now: float) -> None:
    """Replace the operators and bans of the room `key` (folded) by `room`'s. A ban kept
    from before keeps when it was set. In a write transaction."""
    created = {
        (kind, value): when
        for kind, value, when in db.execute(
            "SELECT kind, value, created FROM room_bans WHERE name_key=?", (key,)
        )
    }
    db.execute("DELETE FROM room_operators WHERE name_key=?", (key,))
    db.execute("DELETE FROM room_bans WHERE name_key=?", (key,))
    db.executemany(
        "INSERT INTO room_operators (name_key, sig_key) VALUES (?, ?)", [(key, op) for op in room.operators]
    )
    db.executemany(
        "INSERT INTO room_bans (name_key, kind, value, shown, by, created) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (key, ban.kind, ban.value, ban.shown, ban.by, created.get((ban.kind, ban.value), now))
            for ban in room.bans
        ],
    )


def _over_quota(
    usage: dict[str, list[int]], recipient: str, sender: str, size: int, limits: QueueLimits
) -> Quota | None:
    """Which quota one more whisper of `size` bytes from `sender` (folded) to `recipient`
    would exceed, given the queue's `usage` ([count, bytes] per `queue_usage` key), or
    None. The sender's own quotas are named first: those are the ones it can do
    something about."""
    sent, sent_bytes = usage.get(_FROM + sender, _NOTHING)
    waiting, waiting_bytes = usage.get(_TO + recipient, _NOTHING)
    total_bytes = usage.get(_TOTAL, _NOTHING)[1]
    if sent + 1 > limits.per_sender:
        return Quota.SENDER_COUNT
    if sent_bytes + size > limits.bytes_per_sender:
        return Quota.SENDER_BYTES
    if waiting + 1 > limits.per_recipient:
        return Quota.RECIPIENT_COUNT
    if waiting_bytes + size > limits.bytes_per_recipient:
        return Quota.RECIPIENT_BYTES
    if total_bytes + size > limits.total_bytes:
        return Quota.TOTAL_BYTES
    return None


_NOTHING = [0, 0]  # the usage of a `queue_usage` key with no row (never changed)


def _rows(width: int, count: int) -> str:
    """`count` rows of `width` placeholders for a VALUES list or an IN list:
    "(?,?),(?,?)". Only placeholders go into a statement's text; values are bound."""
    row = "(" + ",".join("?" * width) + ")"
    return ",".join([row] * count)


def _chunks(items: Sequence[_C], width: int) -> Iterator[Sequence[_C]]:
    """`items` in pieces of at most `_MAX_VARIABLES` bound values, `width` per item."""
    step = max(1, _MAX_VARIABLES // width)
    for start in range(0, len(items), step):
        yield items[start : start + step]


def _enqueue_all(db: sqlite3.Connection, ops: Sequence[_Enqueue]) -> None:
    """Queue every whisper of `ops` (a group's, in order) in the group's transaction, and
    set each op's `result`. A refusal writes nothing.

    The whole group takes a fixed number of statements, not a few per whisper: the
    leading thread gives up the GIL at every statement, and under load it waited far
    longer for it back than SQLite took (10.8 s of a run's 13 s of group work, for 2 s
    of its CPU). One read each of the recipients' registrations, the whispers already
    queued (a resend keeps its id and is never refused), the queue's usage and the
    senders with failures kept; then one insert of every new whisper with ids chosen
    here, in order (AUTOINCREMENT's: above any id ever used), so a sender's whispers
    keep their order.
    """
    # (op, whisper, recipient, sender) for every whisper, folded.
    items = [(op, w, fold_nick(w.recipient), fold_nick(w.sender)) for op in ops for w in op.whispers]
    check = sorted({_owner(r) for op, _, r, _ in items if op.registered_only})
    registered: set[str] = set()
    for part in _chunks(check, 1):
        sql = f"SELECT nick_key FROM users WHERE nick_key IN ({_rows(1, len(part))})"  # noqa: S608
        registered.update(row[0] for row in db.execute(sql, part))
    keys = list(dict.fromkeys((s, w.msg_id, r) for _, w, r, s in items))
    queued: dict[tuple[str, str, str], int] = {}
    for some_keys in _chunks(keys, 3):
        sql = (
            f"SELECT q.sender, q.msg_id, q.recipient, q.id FROM (VALUES {_rows(3, len(some_keys))}) AS v "  # noqa: S608
            "JOIN queue AS q ON q.sender = v.column1 AND q.msg_id = v.column2 AND q.recipient = v.column3"
        )
        queued.update(
            ((s, m, r), int(i)) for s, m, r, i in db.execute(sql, [x for k in some_keys for x in k])
        )
    usage: dict[str, list[int]] = {}
    if any(op.limits is not None for op in ops):
        whos = list(dict.fromkeys([_TOTAL, *(w for _, _, r, s in items for w in (_FROM + s, _TO + r))]))
        for part in _chunks(whos, 1):
            sql = f"SELECT who, count, bytes FROM queue_usage WHERE who IN ({_rows(1, len(part))})"  # noqa: S608
            usage.update((who, [int(count), int(size)]) for who, count, size in db.execute(sql, part))
    senders = sorted({s for _, _, _, s in items})
    failing: set[str] = set()
    for part in _chunks(senders, 1):
        sql = f"SELECT DISTINCT sender FROM failures WHERE sender IN ({_rows(1, len(part))})"  # noqa: S608
        failing.update(row[0] for row in db.execute(sql, part))
    (last_id,) = db.execute(
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'queue'), 0),"
        " COALESCE((SELECT MAX(id) FROM queue), 0))"
    ).fetchone()
    new: list[tuple[object, ...]] = []
    answered: list[tuple[str, str, str]] = []  # failures the whispers sent again answer
    for op, w, recipient, sender in items:
        if op.registered_only and _owner(recipient) not in registered:
            op.result.append(UnknownRecipient(w.recipient))
            continue
        key = (sender, w.msg_id, recipient)
        whisper_id = queued.get(key)
        if whisper_id is None:
            size = len(w.header) + len(w.ciphertext)
            refused = None if op.limits is None else _over_quota(usage, recipient, sender, size, op.limits)
            if refused is not None:
                op.result.append(QuotaExceeded(refused))
                continue
            last_id += 1
            whisper_id = queued[key] = last_id
            new.append((whisper_id, recipient, w.msg_id, sender, w.header, w.ciphertext, w.ts, op.svc))
            for who in (_FROM + sender, _TO + recipient, _TOTAL):  # as the insert trigger counts it
                counted = usage.setdefault(who, [0, 0])
                counted[0] += 1
                counted[1] += size
        if sender in failing:
            # Sent again (after a failure, in a new session): that failure is answered.
            answered.append((recipient, w.msg_id, sender))
        op.result.append(whisper_id)
    for rows in _chunks(new, 8):
        sql = (
            "INSERT INTO queue (id, recipient, msg_id, sender, header, ciphertext, ts, svc) "  # noqa: S608
            f"VALUES {_rows(8, len(rows))}"
        )
        db.execute(sql, [x for row in rows for x in row])
    if answered:
        db.executemany("DELETE FROM failures WHERE recipient=? AND msg_id=? AND sender=?", answered)


def _ack_all(db: sqlite3.Connection, ops: Sequence[_Ack]) -> None:
    """Apply every ack of `ops` (a group's) in the group's transaction, and set each op's
    `result`: what the ack removed from its recipient's queue, or None (not queued, not
    that recipient's, or acked already). As `_enqueue_all`, a fixed number of statements
    for the whole group (one read, one delete), and more only for failed ones."""
    pairs = list(dict.fromkeys((whisper_id, op.recipient) for op in ops for whisper_id, _ in op.acks))
    found: dict[tuple[int, str], QueuedWhisper] = {}
    for some_pairs in _chunks(pairs, 2):
        sql = (
            "SELECT q.id, q.recipient, q.msg_id, q.sender, q.header, q.ciphertext, q.ts "  # noqa: S608
            f"FROM (VALUES {_rows(2, len(some_pairs))}) AS v "
            "JOIN queue AS q ON q.id = v.column1 AND q.recipient = v.column2"
        )
        for r in db.execute(sql, [x for pair in some_pairs for x in pair]):
            found[(r[0], r[1])] = QueuedWhisper(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), r[6])
    ids = [q.id for q in found.values()]
    for some_ids in _chunks(ids, 1):
        db.execute(f"DELETE FROM queue WHERE id IN ({_rows(1, len(some_ids))})", some_ids)  # noqa: S608
    for op in ops:
        for whisper_id, failed in op.acks:
            q = found.pop((whisper_id, op.recipient), None)  # a second ack of it finds nothing
            op.result.append(q)
            if q is None or not failed:
                continue
            db.execute(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
                (q.sender, q.msg_id, q.recipient, failed),
            )
            if op.keep_failures is not None:
                # A sender and a recipient working together could otherwise grow the
                # sender's failures without bound, the queue quotas notwithstanding.
                db.execute(
                    "DELETE FROM failures WHERE sender=? AND rowid <= (SELECT rowid FROM "
                    "failures WHERE sender=? ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
                    (q.sender, q.sender, op.keep_failures),
                )


def _stored_service_clock(db: sqlite3.Connection) -> float:
    """The service clock as the database knows it: where it was last written down, or a
    whisper queued after that write (and before a crash) with a later reading."""
    row = db.execute("SELECT value FROM meta WHERE key=?", (_SERVICE_CLOCK,)).fetchone()
    (newest,) = db.execute("SELECT MAX(svc) FROM queue").fetchone()
    return max(float(row[0]) if row else 0.0, float(newest or 0.0))


class OneAtATime:
    """`enqueue` and `ack` as one-element `enqueue_many` and `ack_many`: the one way both
    stores (SQLite here, PostgreSQL in pgstore.py) do them. A store overrides the two
    batch methods; these two follow."""

    def enqueue_many(
        self,
        whispers: Sequence[NewWhisper],
        *,
        limits: QueueLimits | None = None,
        registered_only: bool = False,
    ) -> list[int | QuotaExceeded | UnknownRecipient]:
        raise NotImplementedError

    def ack_many(
        self, recipient: str, acks: Sequence[tuple[int, str]], *, keep_failures: int | None = None
    ) -> list[QueuedWhisper | None]:
        raise NotImplementedError

    def enqueue(
        self,
        recipient: str,
        msg_id: str,
        sender: str,
        header: bytes,
        ciphertext: bytes,
        ts: float,
        *,
        limits: QueueLimits | None = None,
        registered_only: bool = False,
    ) -> int:
        """As `Store.enqueue`: raises what the one-element batch answered instead of an id."""
        whisper = NewWhisper(recipient, msg_id, sender, header, ciphertext, ts)
        (outcome,) = self.enqueue_many([whisper], limits=limits, registered_only=registered_only)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def ack(
        self, recipient: str, whisper_id: int, failed: str = "", *, keep_failures: int | None = None
    ) -> QueuedWhisper | None:
        """As `Store.ack`."""
        (done,) = self.ack_many(recipient, [(whisper_id, failed)], keep_failures=keep_failures)
        return done


class SqliteStore(OneAtATime):
    """`Store` on one SQLite database in WAL mode, one connection behind a lock.

    `path` None keeps everything in memory (tests, or a server that should forget).
    The data directory is created 0700 and the database file 0600. Raises
    `StoreUnavailable` for a file that is not a database of ours or cannot be opened,
    and `ValueError` for one with a newer schema than this code knows.

    `clock` is wall time (for migrating old rows); `monotonic` advances the service
    clock by which whispers expire. `log_every` is how often a run of failures is
    logged (one line with a count per interval).

    **Group commit.** `enqueue` and `ack` are the hot path (every whisper is one of each),
    and a durable commit waits for the disk. So they do not commit one by one: each call
    (a batch: `enqueue_many`, `ack_many`) queues itself, and the first caller to find no
    commit under way leads: it takes everything queued so far, applies all of it in one
    transaction with a fixed number of statements for the whole group (`_ack_all`, then
    `_enqueue_all`), commits once for all (flushed if any part asked for it), then wakes
    each caller with its own result and hands the lead to one that queued meanwhile. A
    refusal (a quota, an unknown recipient) is a result, decided before anything is
    written; a failed statement or commit fails every caller with `StoreUnavailable`, and
    none of the group took effect. Callers still return only after the commit that holds
    their change.
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
        #: Operations waiting for the next group commit, and whether a thread leads one
        #: (is committing, or has been handed the lead). Guarded by `_group_lock`, a leaf
        #: lock: taken alone, never while holding `_lock` or taking another.
        self._group_lock = threading.Lock()
        self._group: list[_Grouped] = []
        self._leading = False
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
                base = _stored_service_clock(db)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {target}: {exc}") from exc
        # Guarded by nothing: set here, read-only afterwards.
        self._service_base = base
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
                for statement in _statements(_MIGRATIONS[step]):
                    db.execute(statement)
                if step == 3 and version >= 1:
                    # Whispers queued before the service clock existed: their age so far by
                    # the wall clock (the best there is), with the service clock at 0 now.
                    db.execute("UPDATE queue SET svc = MIN(0.0, ts - ?)", (self._clock(),))
                if step == 6 and version >= 1:
                    # Nicks registered before logins were recorded: counted as used now, so
                    # each gets a whole `nick_ttl` from the upgrade.
                    db.execute("UPDATE users SET seen = ?", (_stored_service_clock(db),))
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

    def _in_group(self, op: _Grouped) -> None:
        """Queue `op` for the next group commit (see the class docstring) and return once
        that commit is done: `op` then has its result, or its `error` (`StoreUnavailable`:
        none of the group took effect). Any thread."""
        with self._group_lock:
            self._group.append(op)
            lead = not self._leading
            if lead:
                self._leading = True
                op.turn = _Turn.LEADING
        if not lead:
            # Woken done, or handed the lead: the group it leads takes every operation
            # queued meanwhile.
            op.wake.wait()
            lead = op.turn is _Turn.LEADING
        if lead:
            self._lead()

    def _lead(self) -> None:
        """Commit everything queued as one group, wake its callers, and hand the lead to
        an operation queued meanwhile (or give it up). The leading thread only."""
        with self._group_lock:
            batch, self._group = self._group, []
        try:
            self._commit_group(batch)
        finally:
            for op in batch:
                if op.turn is not _Turn.DONE and op.error is None:
                    # Not reached by `_commit_group` (interrupted): never leave a caller
                    # waiting, nor tell it its change was kept.
                    op.error = StoreUnavailable("the commit was interrupted")
                op.turn = _Turn.DONE
            with self._group_lock:
                successor = self._group[0] if self._group else None
                if successor is None:
                    self._leading = False
                else:
                    successor.turn = _Turn.LEADING
            for op in batch:
                op.wake.set()
            if successor is not None:
                successor.wake.set()

    def _commit_group(self, batch: list[_Grouped]) -> None:
        """One transaction for `batch`, one commit, flushed if any operation is durable.
        Sets each one's result, or every one's error. Acks go first: they can only make
        room under the quotas, and none can be for a whisper of the same group (it is
        pushed after the commit)."""
        durable = any(op.durable for op in batch)
        with self._lock:
            if self._failed is not None:
                for op in batch:
                    op.error = StoreUnavailable(self._failed)
                return
            try:
                if not durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        acks = [op for op in batch if isinstance(op, _Ack)]
                        if acks:
                            _ack_all(self._db, acks)
                        enqueues = [op for op in batch if isinstance(op, _Enqueue)]
                        if enqueues:
                            _enqueue_all(self._db, enqueues)
                    except BaseException:
                        if self._db.in_transaction:
                            self._db.execute("ROLLBACK")
                        raise
                    self._db.execute("COMMIT")
                finally:
                    if not durable:
                        self._db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                self._fault(exc)  # logs it once for the group, as for one operation
                for op in batch:
                    op.error = StoreUnavailable(str(exc))  # one each: raised in many threads
                return
            except Exception as exc:  # a bug: never tell a caller its change was kept
                log.exception("a group commit failed; none of it took effect")
                for op in batch:
                    op.error = StoreUnavailable(f"the transaction failed: {exc}")
                return
            gone = self._still_here() if durable and self._still_here is not None else None
            if gone is not None:
                # Committed, but into files nobody will open again: not durable at all.
                self._failed = gone
                self._faults.failed(gone)
                for op in batch:
                    op.error = StoreUnavailable(gone)
                return
            self._faults.recovered()
        for op in batch:
            op.turn = _Turn.DONE

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
        key, seen = fold_nick(nick), self.service_clock()
        with self._tx() as db:
            row = db.execute("SELECT sig_key FROM users WHERE nick_key=?", (key,)).fetchone()
            if row is not None:
                if bytes(row[0]) != sig_key:
                    return False
                db.execute("UPDATE users SET seen=? WHERE nick_key=?", (seen, key))
                return True
            db.execute(
                "INSERT INTO users (nick_key, nick, sig_key, registered, seen) VALUES (?, ?, ?, ?, ?)",
                (key, nick, sig_key, now, seen),
            )
            return True

    def release(self, nick: str) -> bool:
        with self._tx() as db:
            return _release(db, fold_nick(nick))

    def release_if_idle(self, nick: str, max_idle: float) -> bool:
        key, since = fold_nick(nick), self.service_clock() - max_idle
        with self._tx() as db:
            row = db.execute("SELECT seen FROM users WHERE nick_key=?", (key,)).fetchone()
            return row is not None and float(row[0]) < since and _release(db, key)

    def expire_nicks(self, max_idle: float, keep: Collection[str] = ()) -> list[str]:
        since, kept = self.service_clock() - max_idle, {fold_nick(n) for n in keep}
        gone: list[tuple[str, str]] = []
        while True:  # in batches: one long transaction would hold up every session's writes
            with self._tx() as db:
                idle = db.execute(
                    "SELECT nick_key, nick FROM users WHERE seen < ? ORDER BY seen LIMIT ?",
                    (since, _EXPIRE_BATCH + len(kept)),
                ).fetchall()
                batch = [(key, nick) for key, nick in idle if key not in kept][:_EXPIRE_BATCH]
                for key, _ in batch:
                    _release(db, key)
            gone += batch
            if len(batch) < _EXPIRE_BATCH:
                return [nick for _, nick in gone]

    def publish(
        self,
        nick: str,
        identity: KeyIdentity,
        spk: SignedPrekeyRecord,
        opks: tuple[OneTimePrekeyRecord, ...],
        *,
        max_held: int | None = None,
        kpk: SignedKemPrekeyRecord | None = None,
        kopks: tuple[OneTimeKemPrekeyRecord, ...] = (),
        max_kem_held: int | None = None,
    ) -> None:
        key = fold_nick(nick)
        with self._tx() as db:
            old = db.execute("SELECT sig_key, dh_key FROM bundles WHERE nick_key=?", (key,)).fetchone()
            if old is not None and (bytes(old[0]), bytes(old[1])) != (identity.sig_key, identity.dh_key):
                db.execute("DELETE FROM opks WHERE nick_key=?", (key,))  # prekeys of a former identity
                db.execute("DELETE FROM kem_prekeys WHERE nick_key=?", (key,))
            if max_held is not None:
                held = {row[0] for row in db.execute("SELECT id FROM opks WHERE nick_key=?", (key,))}
                opks = _opks_kept(opks, held, max_held)
            _publish_kem(db, key, kpk, kopks, max_kem_held)
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

    def take_bundle(
        self, nick: str, *, take_opk: Callable[[], bool] | None = None, kem: bool = False
    ) -> StoredBundle | None:
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
            kpk_row = kopk_row = None
            if kem:
                kpk_row = db.execute(
                    "SELECT id, created, pub, sig FROM kem_prekeys WHERE nick_key=? AND last_resort=1", (key,)
                ).fetchone()
                kopk_row = db.execute(
                    "SELECT id, pub, sig FROM kem_prekeys WHERE nick_key=? AND last_resort=0 "
                    "ORDER BY id LIMIT 1",
                    (key,),
                ).fetchone()
            opk = kopk = None
            # One answer from the limits for both kinds: they are handed out together.
            if (opk_row is not None or kopk_row is not None) and (take_opk is None or take_opk()):
                if opk_row is not None:
                    db.execute("DELETE FROM opks WHERE nick_key=? AND id=?", (key, opk_row[0]))
                    opk = OneTimePrekeyRecord(
                        id=opk_row[0], public=bytes(opk_row[1]), signature=bytes(opk_row[2])
                    )
                if kopk_row is not None:
                    db.execute("DELETE FROM kem_prekeys WHERE nick_key=? AND id=?", (key, kopk_row[0]))
                    kopk = OneTimeKemPrekeyRecord(
                        id=kopk_row[0], public=bytes(kopk_row[1]), signature=bytes(kopk_row[2])
                    )
        return StoredBundle(
            KeyIdentity(sig_key=bytes(row[0]), dh_key=bytes(row[1]), dh_sig=bytes(row[2])),
            SignedPrekeyRecord(id=row[3], created=row[4], public=bytes(row[5]), signature=bytes(row[6])),
            opk,
            None
            if kpk_row is None
            else SignedKemPrekeyRecord(
                id=kpk_row[0], created=kpk_row[1], public=bytes(kpk_row[2]), signature=bytes(kpk_row[3])
            ),
            kopk,
        )

    def drop_kem_prekeys(self, nick: str) -> None:
        key = fold_nick(nick)
        with self._read() as db:  # most logins have none to drop: no write transaction then
            held = db.execute("SELECT 1 FROM kem_prekeys WHERE nick_key=? LIMIT 1", (key,)).fetchone()
        if held is not None:
            with self._tx() as db:
                db.execute("DELETE FROM kem_prekeys WHERE nick_key=?", (key,))

    def device_list(self, nick: str) -> tuple[int, bytes] | None:
        with self._read() as db:
            row = db.execute(
                "SELECT version, record FROM device_lists WHERE nick_key=?", (fold_nick(nick),)
            ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def set_device_list(self, nick: str, version: int, record: bytes, removed: Sequence[str]) -> bool:
        key = fold_nick(nick)
        with self._tx() as db:
            row = db.execute("SELECT version FROM device_lists WHERE nick_key=?", (key,)).fetchone()
            if row is not None and int(row[0]) >= version:
                return False
            db.execute("INSERT OR REPLACE INTO device_lists VALUES (?, ?, ?)", (key, version, record))
            for device in removed:
                _forget_mailbox(db, mailbox(key, device))
        return True

    def prekey_status(self, nick: str) -> PrekeyStatus:
        key = fold_nick(nick)
        with self._read() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM opks WHERE nick_key=?", (key,)).fetchone()
            row = db.execute("SELECT spk_id, spk_created FROM bundles WHERE nick_key=?", (key,)).fetchone()
            (kem_count,) = db.execute(
                "SELECT COUNT(*) FROM kem_prekeys WHERE nick_key=? AND last_resort=0", (key,)
            ).fetchone()
            kpk = db.execute(
                "SELECT id FROM kem_prekeys WHERE nick_key=? AND last_resort=1", (key,)
            ).fetchone()
        spk_id, created = row if row else (0, 0)
        return PrekeyStatus(int(count), spk_id, created, int(kem_count), kpk[0] if kpk else 0)

    def enqueue_many(
        self,
        whispers: Sequence[NewWhisper],
        *,
        limits: QueueLimits | None = None,
        registered_only: bool = False,
    ) -> list[int | QuotaExceeded | UnknownRecipient]:
        if not whispers:
            return []
        op = _Enqueue(whispers, self.service_clock(), limits, registered_only)
        self._in_group(op)
        if op.error is not None:
            raise op.error  # the commit failed: for all of them alike
        return op.result

    def pending(
        self, recipient: str, *, after: int = 0, upto: int | None = None, limit: int | None = None
    ) -> list[QueuedWhisper]:
        with self._read() as db:
            rows = db.execute(
                "SELECT id, recipient, msg_id, sender, header, ciphertext, ts FROM queue "
                "WHERE recipient=? AND id > ? AND id <= ? ORDER BY id LIMIT ?",
                (
                    fold_nick(recipient),
                    after,
                    _NO_ID_ABOVE if upto is None else upto,
                    -1 if limit is None else limit,
                ),
            ).fetchall()
        return [QueuedWhisper(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), r[6]) for r in rows]

    def newest_queued(self, recipient: str) -> int:
        with self._read() as db:
            (newest,) = db.execute(
                "SELECT MAX(id) FROM queue WHERE recipient=?", (fold_nick(recipient),)
            ).fetchone()
        return int(newest or 0)

    def ack_many(
        self, recipient: str, acks: Sequence[tuple[int, str]], *, keep_failures: int | None = None
    ) -> list[QueuedWhisper | None]:
        if not acks:
            return []
        op = _Ack(fold_nick(recipient), acks, keep_failures)
        self._in_group(op)
        if op.error is not None:
            raise op.error  # the commit failed (nothing else raises here)
        return op.result

    def failures(self, sender: str, limit: int | None = None) -> list[tuple[str, str, str]]:
        with self._read() as db:
            rows = db.execute(
                "SELECT recipient, msg_id, reason FROM failures WHERE sender=? ORDER BY rowid LIMIT ?",
                (fold_nick(sender), -1 if limit is None else limit),
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
        lines = [(fold_room(room), nick, text, ts) for room, nick, text, ts in lines]
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
                "SELECT nick, text, ts FROM history WHERE room=? ORDER BY id DESC LIMIT ?",
                (fold_room(room), count),
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in reversed(rows)]

    def drop_room_history(self, room: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM history WHERE room=?", (fold_room(room),))

    def release_room(self, name: str, *, drop_history: bool = True) -> bool:
        with self._tx() as db:
            return _release_room(db, fold_room(name), drop_history=drop_history)

    def expire_rooms(
        self, max_idle: float, keep_owners: Collection[bytes] = (), keep_history: Collection[str] = ()
    ) -> list[str]:
        since, kept = self.service_clock() - max_idle, set(keep_owners)
        lines_kept = {fold_room(name) for name in keep_history}
        with self._tx() as db:
            # One pass over the users (not one per room): the newest login of each owner key.
            idle = [
                (key, name)
                for key, name, owner, seen in db.execute(
                    "SELECT r.name_key, r.name, r.owner_key, u.seen FROM rooms r LEFT JOIN "
                    "(SELECT sig_key, MAX(seen) AS seen FROM users "
                    "WHERE sig_key IN (SELECT owner_key FROM rooms) GROUP BY sig_key) u "
                    "ON u.sig_key = r.owner_key"
                ).fetchall()
                if (seen is None or float(seen) < since) and bytes(owner) not in kept
            ]
            for key, _ in idle:
                _release_room(db, key, drop_history=key not in lines_kept)
        return [name for _, name in idle]

    def registered_rooms(self) -> list[StoredRoom]:
        with self._read() as db:
            rooms = db.execute(
                "SELECT name_key, name, owner_key, topic, invite_only FROM rooms ORDER BY name_key"
            ).fetchall()
            operators: dict[str, set[bytes]] = {}
            for key, sig_key in db.execute("SELECT name_key, sig_key FROM room_operators"):
                operators.setdefault(key, set()).add(bytes(sig_key))
            bans: dict[str, list[StoredBan]] = {}
            for key, kind, value, shown, by in db.execute(
                "SELECT name_key, kind, value, shown, by FROM room_bans ORDER BY rowid"
            ):
                bans.setdefault(key, []).append(
                    StoredBan(kind, bytes(value) if isinstance(value, bytes) else str(value), shown, by)
                )
        return [
            StoredRoom(
                name=name,
                owner_key=bytes(owner_key),
                topic=topic,
                invite_only=bool(invite_only),
                operators=frozenset(operators.get(key, ())),
                bans=tuple(bans.get(key, ())),
            )
            for key, name, owner_key, topic, invite_only in rooms
        ]

    def register_room(self, room: StoredRoom, *, drop_history: bool = False) -> bool:
        key, now = fold_room(room.name), self._clock()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM rooms WHERE name_key=?", (key,)).fetchone() is not None:
                return False
            if drop_history:
                db.execute("DELETE FROM history WHERE room=?", (key,))
            db.execute(
                "INSERT INTO rooms (name_key, name, owner_key, topic, invite_only, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key, room.name, room.owner_key, room.topic, int(room.invite_only), now),
            )
            _put_room_members(db, key, room, now)
            return True

    def save_room(self, room: StoredRoom) -> None:
        key, now = fold_room(room.name), self._clock()
        with self._tx() as db:
            updated = db.execute(
                "UPDATE rooms SET name=?, owner_key=?, topic=?, invite_only=? WHERE name_key=?",
                (room.name, room.owner_key, room.topic, int(room.invite_only), key),
            ).rowcount
            if not updated:
                raise KeyError(f"{room.name} is not a registered room")
            _put_room_members(db, key, room, now)

    def rename_user(self, old: str, new: str, sig_key: bytes, now: float) -> RenameResult:
        old_key, new_key, seen = fold_nick(old), fold_nick(new), self.service_clock()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE nick_key=?", (new_key,)).fetchone() is not None:
                return RenameResult.NEW_REGISTERED
            row = db.execute("SELECT sig_key FROM users WHERE nick_key=?", (old_key,)).fetchone()
            if row is None or bytes(row[0]) != sig_key:
                return RenameResult.NOT_YOURS
            if db.execute("SELECT 1 FROM queue WHERE recipient=? LIMIT 1", (old_key,)).fetchone():
                return RenameResult.QUEUED
            db.execute(
                "UPDATE users SET nick_key=?, nick=?, registered=?, seen=? WHERE nick_key=?",
                (new_key, new, now, seen, old_key),
            )
            # The old nick's keys bind that nick; any under `new` (unregistered, so there
            # should be none) bind another key. The client publishes fresh ones.
            db.execute("DELETE FROM bundles WHERE nick_key IN (?, ?)", (old_key, new_key))
            db.execute("DELETE FROM opks WHERE nick_key IN (?, ?)", (old_key, new_key))
            db.execute("DELETE FROM kem_prekeys WHERE nick_key IN (?, ?)", (old_key, new_key))
            # A device list names the nick it was signed for (and a rename is allowed only
            # without linked devices): the client signs a new one for `new` if it wants one.
            db.execute("DELETE FROM device_lists WHERE nick_key IN (?, ?)", (old_key, new_key))
            # Failures of whispers sent *to* `old` stay as they are: their senders know
            # those whispers by the nick they sent them to. Leftovers under `new` (it is
            # not registered, and a released nick's are deleted) give way to the renamer's.
            db.execute("UPDATE OR REPLACE failures SET sender=? WHERE sender=?", (new_key, old_key))
            # Whispers `old` sent and still queued are the renamer's: their acks must reach
            # it, not a later holder of `old`. Rows under `new` are nobody's now (it is not
            # registered) and would collide; deleting them fires the quota trigger. An
            # UPDATE fires none, so the sender's usage row moves by hand.
            db.execute("DELETE FROM queue WHERE sender=?", (new_key,))
            db.execute("UPDATE queue SET sender=? WHERE sender=?", (new_key, old_key))
            db.execute("DELETE FROM queue_usage WHERE who=?", (_FROM + new_key,))
            db.execute("UPDATE queue_usage SET who=? WHERE who=?", (_FROM + new_key, _FROM + old_key))
            return RenameResult.DONE

    def has_queued(self, recipient: str) -> bool:
        with self._read() as db:
            row = db.execute(
                "SELECT 1 FROM queue WHERE recipient=? LIMIT 1", (fold_nick(recipient),)
            ).fetchone()
        return row is not None

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
