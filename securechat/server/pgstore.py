"""`Store` on PostgreSQL, for a cluster of servers sharing one database.

`PostgresStore` has the observable semantics of `SqliteStore` (store.py) behind the same
interface: every method of the `Store` Protocol, plus the methods and attributes code
outside store.py calls on a store, which are `SqliteStore`'s and mean the same here:

- `store_id()` and `set_store_id(id)` (datadir.py): the random id kept in `meta`;
- `take_backup_mark()` (datadir.py): reads and deletes `meta`'s backup mark;
- `watch(check)` (datadir.py): a check run after every durable commit;
- `fail(reason)` (server.py, when the data directory is lost): refuse everything after;
- `failed` (the reason `fail` gave, or None) and `service_clock()`: the rest of
  `SqliteStore`'s public surface, which the tests and the store's own contract use.

Where `SqliteStore` leans on SQLite having one writer (BEGIN IMMEDIATE), this module makes
the same transactions safe when several processes write at once:

- Transaction-scoped advisory locks (`_lock`), all taken in one statement at the start
  of a transaction, in one global order (by their 64-bit key), before any row lock: a
  transaction never waits for one while holding a row lock, so they cannot deadlock.
  `_QUEUE_LOCK` serializes every transaction that writes the queue: the quotas are
  then checked against usage no other writer is changing, and whisper ids are handed
  out and committed in order, so a reader paging with `pending(after=...)` never finds
  a lower id appearing behind it. One lock per (folded) nick serializes what changes
  one person's registration, keys and device list; one per (folded) room name, a
  room's registration and history.
- One-time prekeys are not under any advisory lock: `take_bundle` locks the first one
  with `FOR UPDATE SKIP LOCKED`, so concurrent fetches take different ones, and waits
  for a locked one only when no other is left (its fetch may keep it), so "none" is
  answered only once every one is gone. Each is handed out at most once.

Differences that remain (see each method): no group commit across threads (each call
is a transaction; PostgreSQL flushes concurrent commits together by itself); the
service clock is shared through the database by the processes using it; and a
connection lost *while committing* leaves it unknown whether that commit took effect
(reported as `StoreUnavailable`, like any failure: every write here is idempotent or
refused the same way when retried, but "had no effect" cannot be promised then).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import suppress
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

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
from .store import (
    _BACKUP_TAKEN,
    _EXPIRE_BATCH,
    _FROM,
    _NO_ID_ABOVE,
    _SERVICE_CLOCK,
    _STORE_ID,
    _TO,
    _TOTAL,
    NewWhisper,
    OneAtATime,
    PrekeyStatus,
    QueuedWhisper,
    QueueLimits,
    QuotaExceeded,
    RenameResult,
    StoredBan,
    StoredBundle,
    StoredRoom,
    StoreUnavailable,
    UnknownRecipient,
    _kem_opks_added,
    _opks_kept,
    _over_quota,
    _owner,
    mailbox,
)

__all__ = ["PG_SCHEMA_VERSION", "PostgresStore"]

log = logging.getLogger(__name__)

#: The version of the PostgreSQL schema below (its own numbering: SQLite's migrations
#: carry a history this schema never had).
PG_SCHEMA_VERSION = 1

_T = TypeVar("_T")
_Row = tuple[Any, ...]
_Cursor = psycopg.Cursor[_Row]
_Connection = psycopg.Connection[_Row]

#: How long an operation waits for a pooled connection while the database answers: all
#: of them busy is load, and waiting is better than refusing.
_CONNECTION_WAIT = 10.0
#: ... and while it does not (a connection was lost, or none could be had): fail fast, as
#: SQLite does on a full disk, rather than hold every session's thread for seconds.
_UNREACHABLE_WAIT = 0.5
#: How long the pool keeps retrying (with a doubling backoff, from 1 s) to replace one lost
#: connection before giving up on it; the next operation that waits starts a new attempt.
#: Short, because it bounds the backoff and so how late the pool notices that a database
#: which was down is back (measured: within 0.4 s of its restart, after outages of 0.5-8 s;
#: with 10 s it took up to 13 s).
_RECONNECT_TIMEOUT = 2.0
#: libpq's connect_timeout (whole seconds) unless the DSN sets one: a host that drops
#: packets would otherwise hold a pool worker for minutes.
_CONNECT_TIMEOUT = "5"
#: Tries of one operation that lost a deadlock or a serialization check (PostgreSQL
#: aborted it: nothing took effect), or that found its pooled connection dead.
_ATTEMPTS = 3

_NO_ID_BELOW = -(2**63)

# Each migration takes the schema from version N-1 to N, in one transaction.
#
# Keys (nicks, mailboxes, room names, who) are compared bytewise (COLLATE "C"), as
# SQLite compares them: `_release_all` finds a nick's device mailboxes as the range
# between "nick/" and "nick0", which only holds in byte order, and `registered_rooms`
# sorts by bytes. Free text a client chose (room lines, topics, ban masks) is kept as
# UTF-8 in BYTEA: the protocol allows NUL there, which PostgreSQL's text cannot hold.
_MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (
    nick_key TEXT COLLATE "C" PRIMARY KEY, nick TEXT NOT NULL, sig_key BYTEA NOT NULL,
    registered DOUBLE PRECISION NOT NULL, seen DOUBLE PRECISION NOT NULL);
CREATE INDEX users_by_seen ON users (seen);
-- `expire_rooms` looks up the newest login of each room owner's key.
CREATE INDEX users_by_sig_key ON users (sig_key);
CREATE TABLE bundles (
    nick_key TEXT COLLATE "C" PRIMARY KEY, sig_key BYTEA NOT NULL, dh_key BYTEA NOT NULL,
    dh_sig BYTEA NOT NULL, spk_id BIGINT NOT NULL, spk_created BIGINT NOT NULL, spk_pub BYTEA NOT NULL,
    spk_sig BYTEA NOT NULL);
CREATE TABLE opks (
    nick_key TEXT COLLATE "C" NOT NULL, id BIGINT NOT NULL, pub BYTEA NOT NULL, sig BYTEA NOT NULL,
    PRIMARY KEY (nick_key, id));
CREATE TABLE kem_prekeys (
    nick_key TEXT COLLATE "C" NOT NULL, id BIGINT NOT NULL, last_resort BOOLEAN NOT NULL,
    created BIGINT NOT NULL, pub BYTEA NOT NULL, sig BYTEA NOT NULL, PRIMARY KEY (nick_key, id));
CREATE TABLE device_lists (
    nick_key TEXT COLLATE "C" PRIMARY KEY, version BIGINT NOT NULL, record BYTEA NOT NULL);

-- Ids are never reused (SQLite's AUTOINCREMENT); `_enqueue_all` takes them itself, in
-- order, under the queue lock.
CREATE SEQUENCE queue_ids;
CREATE TABLE queue (
    id BIGINT PRIMARY KEY DEFAULT nextval('queue_ids'), recipient TEXT COLLATE "C" NOT NULL,
    msg_id TEXT COLLATE "C" NOT NULL, sender TEXT COLLATE "C" NOT NULL, header BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL, ts DOUBLE PRECISION NOT NULL, svc DOUBLE PRECISION NOT NULL DEFAULT 0,
    UNIQUE (sender, msg_id, recipient));
CREATE INDEX queue_by_recipient ON queue (recipient, id);

-- What the queue holds in all ('*'), per recipient ('to:' nick) and per sender
-- ('from:' nick), kept by the triggers below so that every way out of the queue gives
-- its quota back; the quotas are checked against it without a scan.
CREATE TABLE queue_usage (who TEXT COLLATE "C" PRIMARY KEY, count BIGINT NOT NULL, bytes BIGINT NOT NULL);
INSERT INTO queue_usage VALUES ('*', 0, 0);
CREATE FUNCTION securechat_queue_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE queue_usage AS u SET count = u.count - d.n, bytes = u.bytes - d.b
        FROM (
            SELECT '*' AS who, count(*) AS n, sum(length(header) + length(ciphertext)) AS b FROM old_rows
            UNION ALL
            SELECT 'to:' || recipient, count(*), sum(length(header) + length(ciphertext))
                FROM old_rows GROUP BY recipient
            UNION ALL
            SELECT 'from:' || sender, count(*), sum(length(header) + length(ciphertext))
                FROM old_rows GROUP BY sender
        ) AS d
        WHERE u.who = d.who AND d.n > 0;
        DELETE FROM queue_usage AS u WHERE u.who <> '*' AND u.count <= 0 AND u.who IN (
            SELECT 'to:' || recipient FROM old_rows UNION SELECT 'from:' || sender FROM old_rows);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO queue_usage AS u (who, count, bytes)
        SELECT who, n, b FROM (
            SELECT '*' AS who, count(*) AS n, sum(length(header) + length(ciphertext)) AS b FROM new_rows
            UNION ALL
            SELECT 'to:' || recipient, count(*), sum(length(header) + length(ciphertext))
                FROM new_rows GROUP BY recipient
            UNION ALL
            SELECT 'from:' || sender, count(*), sum(length(header) + length(ciphertext))
                FROM new_rows GROUP BY sender
        ) AS d
        WHERE d.n > 0
        ON CONFLICT (who) DO UPDATE SET count = u.count + EXCLUDED.count, bytes = u.bytes + EXCLUDED.bytes;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER queue_usage_insert AFTER INSERT ON queue REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION securechat_queue_usage();
CREATE TRIGGER queue_usage_delete AFTER DELETE ON queue REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION securechat_queue_usage();
CREATE TRIGGER queue_usage_update AFTER UPDATE ON queue
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION securechat_queue_usage();

-- Whispers a recipient could not decrypt, kept for the sender until it sends them
-- again; `seq` orders them (SQLite's rowid: a failure reported again is newest).
CREATE SEQUENCE failure_order;
CREATE TABLE failures (
    sender TEXT COLLATE "C" NOT NULL, msg_id TEXT COLLATE "C" NOT NULL, recipient TEXT COLLATE "C" NOT NULL,
    reason TEXT NOT NULL, seq BIGINT NOT NULL DEFAULT nextval('failure_order'),
    PRIMARY KEY (sender, msg_id, recipient));
CREATE INDEX failures_by_recipient ON failures (recipient);
CREATE INDEX failures_by_sender ON failures (sender, seq);

CREATE SEQUENCE history_ids;
CREATE TABLE history (
    id BIGINT PRIMARY KEY DEFAULT nextval('history_ids'), room TEXT COLLATE "C" NOT NULL,
    nick TEXT NOT NULL, text BYTEA NOT NULL, ts DOUBLE PRECISION NOT NULL);
CREATE INDEX history_by_room ON history (room, id);

-- Registered rooms by folded name; owners, operators and key bans are identity keys.
-- A ban's value is a key (key_value) or a nick pattern (text_value), given back with
-- the type it was saved with; `pos` keeps the bans in the order given.
CREATE TABLE rooms (
    name_key TEXT COLLATE "C" PRIMARY KEY, name TEXT NOT NULL, owner_key BYTEA NOT NULL,
    topic BYTEA NOT NULL, invite_only BOOLEAN NOT NULL, created DOUBLE PRECISION NOT NULL);
CREATE TABLE room_operators (
    name_key TEXT COLLATE "C" NOT NULL, sig_key BYTEA NOT NULL, PRIMARY KEY (name_key, sig_key));
CREATE TABLE room_bans (
    name_key TEXT COLLATE "C" NOT NULL, pos INTEGER NOT NULL, kind TEXT NOT NULL, key_value BYTEA,
    text_value BYTEA, shown BYTEA NOT NULL, set_by TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (name_key, pos), CHECK ((key_value IS NULL) <> (text_value IS NULL)));

-- Takes the advisory locks `keys` in the order given (sorted by the caller): one round
-- trip, and an order a single SELECT over several of them would not promise.
CREATE FUNCTION securechat_lock(keys BIGINT[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k BIGINT;
BEGIN
    FOREACH k IN ARRAY keys LOOP
        PERFORM pg_advisory_xact_lock(k);
    END LOOP;
END
$$;
""",
}


def _lock_key(kind: str, name: str = "") -> int:
    """The advisory lock (a signed 64-bit key) for `name` of `kind`; the same in every
    process. Two names sharing a key only serialize more than needed."""
    digest = hashlib.blake2b(f"{kind}\0{name}".encode(), digest_size=8, person=b"securechat-lock").digest()
    return int.from_bytes(digest, "big", signed=True)


_QUEUE_LOCK = _lock_key("queue")
_SCHEMA_LOCK = _lock_key("schema")


def _nick_lock(key: str) -> int:
    """The lock of a person: `key` is a folded nick or one of its mailboxes."""
    return _lock_key("nick", _owner(key))


def _room_lock(key: str) -> int:
    return _lock_key("room", key)


def _text_in(value: str) -> bytes:
    return value.encode("utf-8")


def _text_out(value: bytes) -> str:
    return bytes(value).decode("utf-8")


def _bigint(value: int) -> int:
    """`value` clamped to bigint's range: an id beyond it names no row, as one within."""
    return min(max(value, _NO_ID_BELOW), _NO_ID_ABOVE)


def _lock(cur: _Cursor, keys: Iterable[int]) -> None:
    """Take the advisory locks `keys` until the transaction ends. Called at most once
    per transaction, before it locks or writes any row (see the module docstring)."""
    ordered = sorted(set(keys))
    if ordered:
        cur.execute("SELECT securechat_lock(%s::bigint[])", (ordered,))


class _Mode(enum.Enum):
    """How `PostgresStore._run` runs an operation."""

    READ = "read"  # one statement, no transaction of its own (autocommit)
    SNAPSHOT = "snapshot"  # several reads from one snapshot (read-only, repeatable read)
    WRITE = "write"  # a read-committed transaction whose commit is flushed to disk
    WRITE_LAZY = "write-lazy"  # the same, its commit not waited for on disk


#: PostgreSQL aborted the transaction to let another go on; nothing of it took effect.
_RETRY = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.TransactionRollback)


def _connection_options(dsn: str) -> dict[str, Any]:
    """Keyword arguments for each pooled connection: autocommit (the store opens its
    transactions itself), and defaults for what the DSN leaves out. Raises
    `StoreUnavailable` for a DSN that does not parse."""
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        # Not the parser's words: they quote the part that did not parse, which can be
        # the password.
        raise StoreUnavailable(f"the database DSN does not parse ({type(exc).__name__})") from None
    options: dict[str, Any] = {"autocommit": True}
    defaults = {
        "connect_timeout": _CONNECT_TIMEOUT,
        "application_name": "securechat-server",
        # A server that vanishes without closing (a crashed host) is noticed in about
        # half a minute, not the kernel's two hours.
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
    }
    options.update({name: value for name, value in defaults.items() if name not in given})
    return options


class PostgresStore(OneAtATime):
    """`Store` on a PostgreSQL database that several server processes may share.

    `dsn` is a libpq connection string or URI; the database (or the first schema of its
    search_path) should be securechat's alone: the schema is created there on first open,
    in one transaction, with its version in `meta`. A database with a newer schema
    version is refused with `ValueError` (as `SqliteStore` refuses a newer file), one
    that cannot be reached or set up with `StoreUnavailable`.

    Thread-safe: a `psycopg_pool.ConnectionPool` of `min_size`..`max_size` connections;
    each call takes one for itself (and a cursor of its own) and gives it back.

    **Faults.** Every psycopg error — a lost or refused connection, a server shut down,
    no connection free within the wait, a failed statement — surfaces as
    `StoreUnavailable`, never as a psycopg exception, and is logged at a bounded rate
    (`log_every`, as `SqliteStore` does). It is retryable: the next call tries again,
    on a connection the pool has replaced, so the store recovers by itself once the
    database is back. A failure before the commit had no effect (PostgreSQL aborts an
    unfinished transaction); a connection lost during the commit itself leaves the
    outcome unknown (see the module docstring). Calls that find the pool's connections
    dead fail within about `_UNREACHABLE_WAIT` seconds rather than waiting for the pool.

    **Durability.** Every write commits before returning; PostgreSQL's commit is
    flushed to its WAL (with the server's `synchronous_commit` on, its default). Only a
    plain `ack` (no failure to keep) commits without waiting for the flush, as
    `SqliteStore`'s does: if the database crashes, that whisper is delivered again.

    `clock` is wall time (registration and ban times); `monotonic` advances the service
    clock (see `service_clock`).
    """

    def __init__(
        self,
        dsn: str,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        log_every: float = ServerConfig.fault_log_interval,
        min_size: int = 1,
        max_size: int = 8,
    ) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._faults = FaultLog(log, "database", log_every, clock=monotonic)
        #: Guards `_failed`, and the compare-and-set of `_origin` in `_catch_up`.
        self._state_lock = threading.Lock()
        #: Why every operation is refused (`fail`, `close`); None while usable.
        self._failed: str | None = None
        #: Set once by `watch`, before use; run after every durable commit.
        self._still_here: Callable[[], str | None] | None = None
        #: Whether the last operation found the database unreachable: then the next ones
        #: wait only briefly for a connection. A hint, read without a lock.
        self._unreachable = False
        #: (service clock, monotonic reading) at one instant: see `service_clock`.
        #: Replaced whole (an atomic assignment), never mutated.
        self._origin = (0.0, monotonic())
        options = _connection_options(dsn)
        # The schema on a connection of its own, before the pool exists: a database that
        # cannot be reached is refused at once with libpq's reason (the pool would only
        # say it had no connection after `_CONNECTION_WAIT`), and a refused one leaves no
        # pool threads behind.
        try:
            with psycopg.connect(dsn, **options) as conn, conn.transaction(), conn.cursor() as cur:
                base = self._migrate(cur)
        except psycopg.Error as exc:
            detail = str(exc).strip() or type(exc).__name__
            self._faults.failed(detail)
            raise StoreUnavailable(f"cannot open the database: {detail}") from exc
        self._origin = (base, monotonic())
        self._pool: ConnectionPool[_Connection] = ConnectionPool(
            dsn,
            kwargs=options,
            min_size=min_size,
            max_size=max_size,
            open=False,
            name="securechat",
            timeout=_CONNECTION_WAIT,
            reconnect_timeout=_RECONNECT_TIMEOUT,
        )
        self._pool.open(wait=False)

    # -- running operations -----------------------------------------------------------

    def _run(self, work: Callable[[_Cursor], _T], mode: _Mode, locks: Iterable[int] = ()) -> _T:
        """Run `work` on a pooled connection as `mode` says, with the advisory `locks`
        taken first (writes only), and return what it returned once committed.

        Raises `StoreUnavailable` for every psycopg failure (and while the store is
        failed or closed); an exception of `work`'s own (a `KeyError`, a `ValueError`)
        rolls the transaction back and propagates as it is. A transaction PostgreSQL
        aborted for a deadlock or a serialization conflict is run again, and so is one
        whose connection turned out dead before its commit (after the pool's idle
        connections are checked): neither had any effect.
        """
        keys = sorted(set(locks))
        for attempt in range(1, _ATTEMPTS + 1):
            with self._state_lock:
                if self._failed is not None:
                    raise StoreUnavailable(self._failed)
            conn: _Connection | None = None
            committing = False
            try:
                with self._pool.connection(
                    timeout=_UNREACHABLE_WAIT if self._unreachable else _CONNECTION_WAIT
                ) as conn:
                    if mode is _Mode.READ:
                        with conn.cursor() as cur:
                            result = work(cur)
                    else:
                        with conn.transaction(), conn.cursor() as cur:
                            if mode is _Mode.SNAPSHOT:
                                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                            elif mode is _Mode.WRITE_LAZY:
                                cur.execute("SET LOCAL synchronous_commit TO off")
                            _lock(cur, keys)
                            result = work(cur)
                            committing = True  # whatever fails from here on is the COMMIT
            except _RETRY as exc:
                if attempt < _ATTEMPTS and not committing:
                    log.debug("transaction aborted by the database, trying again: %s", exc)
                    continue
                raise self._fault(exc, committing=committing) from exc
            except PoolTimeout as exc:
                self._unreachable = True
                raise self._fault(exc, committing=False) from exc
            except psycopg.Error as exc:
                lost = conn is not None and (conn.closed or conn.broken)
                if lost:
                    self._unreachable = True
                if lost and not committing and attempt == 1:
                    # Most likely a connection the server dropped while it sat in the
                    # pool (a restart): this transaction never reached a commit. Test
                    # the other idle ones too, so the retry does not meet another.
                    with suppress(psycopg.Error):  # then the retry fails, and says why
                        self._pool.check()
                    continue
                raise self._fault(exc, committing=committing and lost) from exc
            if mode is _Mode.WRITE and self._still_here is not None:
                gone = self._still_here()
                if gone is not None:
                    with self._state_lock:
                        self._failed = gone
                    self._faults.failed(gone)
                    raise StoreUnavailable(gone)
            self._unreachable = False
            self._faults.recovered()
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _fault(self, exc: psycopg.Error, *, committing: bool) -> StoreUnavailable:
        """Log a failure (at a bounded rate) and make the `StoreUnavailable` to raise."""
        detail = str(exc).strip() or type(exc).__name__
        if committing:
            detail += " (the connection was lost while committing: the change may have been kept)"
        self._faults.failed(detail)
        return StoreUnavailable(detail)

    def _migrate(self, cur: _Cursor) -> float:
        """Create or upgrade the schema (one transaction, one process at a time), refuse a
        newer one; the service clock as the database knows it."""
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        version = 0
        row = cur.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
        if row is not None and row[0]:
            found = cur.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(found[0]) if found else 0
        if version > PG_SCHEMA_VERSION:
            raise ValueError(f"database schema {version} is newer than this server ({PG_SCHEMA_VERSION})")
        for step in range(version + 1, PG_SCHEMA_VERSION + 1):
            cur.execute(_MIGRATIONS[step])  # several statements: sent as one simple query
            cur.execute(
                "INSERT INTO meta VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(step),),
            )
        return _stored_service_clock(cur)

    # -- the service clock, and SqliteStore's other public methods ---------------------

    def service_clock(self) -> float:
        """Seconds of service; never goes back.

        As `SqliteStore`'s: the clock kept in the database, advanced by `monotonic` while
        this store is open, so whispers age (and nicks and rooms go idle) only while a
        server runs. Shared by every process using the database: each starts from what
        the database holds (the clock written down by `expire` or `close`, or a later
        whisper's reading) and `expire` moves it forward to the largest any process wrote
        down, so the processes of a cluster keep one clock, within an expiry interval.
        """
        base, since = self._origin
        return base + max(0.0, self._monotonic() - since)

    def _catch_up(self, stored: float) -> float:
        """Move the service clock forward to `stored` (another process's) if it is ahead;
        the clock now."""
        with self._state_lock:
            now = self.service_clock()
            if stored <= now:
                return now
            self._origin = (stored, self._monotonic())
            return stored

    def fail(self, reason: str) -> None:
        """Refuse every later operation with `StoreUnavailable(reason)` (any thread).

        `SqliteStore` needs it for a data directory deleted or replaced while open; here
        it is the same switch, for whatever makes the database untrustworthy to the caller.
        """
        with self._state_lock:
            self._failed = reason
        self._faults.failed(reason)

    def watch(self, check: Callable[[], str | None]) -> None:
        """Run `check` after every durable commit; when it names a reason, the commit is
        reported as failed and the store refuses everything from then on, as after `fail`.

        As `SqliteStore`'s. Its use there (is the data directory still the one opened?)
        has no counterpart for a database server, but a caller's check works the same.
        """
        self._still_here = check

    @property
    def failed(self) -> str | None:
        """Why the store refuses everything (see `fail`, `close`), or None."""
        with self._state_lock:
            return self._failed

    def store_id(self) -> str | None:
        """The random id this database is known by (`set_store_id`), or None."""
        row = self._run(
            lambda cur: cur.execute("SELECT value FROM meta WHERE key = %s", (_STORE_ID,)).fetchone(),
            _Mode.READ,
        )
        return None if row is None else str(row[0])

    def set_store_id(self, store_id: str) -> None:
        self._run(lambda cur: _put_meta(cur, _STORE_ID, store_id), _Mode.WRITE)

    def take_backup_mark(self) -> str | None:
        """If the database is marked as a copy made by a backup, forget that it is and say
        when it was taken; None otherwise.

        As `SqliteStore`'s, on the same `meta` row. Nothing here sets the mark:
        PostgreSQL's backups (pg_dump, base backups) are made by its own tools, so an
        operator who wants a restored copy reported inserts the row ('backup_taken').
        """

        def work(cur: _Cursor) -> str | None:
            row = cur.execute("DELETE FROM meta WHERE key = %s RETURNING value", (_BACKUP_TAKEN,)).fetchone()
            return None if row is None else str(row[0])

        return self._run(work, _Mode.WRITE)

    def close(self) -> None:
        """Write the service clock down (if the database answers), refuse everything from
        now on, and close the pool."""
        try:
            now = self.service_clock()
            self._run(lambda cur: _advance_service_clock(cur, now), _Mode.WRITE)
        except StoreUnavailable:
            pass  # already logged; the clock goes on from the newest whisper's reading
        with self._state_lock:
            self._failed = self._failed or "the database is closed"
        self._pool.close()

    # -- nicks -------------------------------------------------------------------------

    def registered_key(self, nick: str) -> bytes | None:
        key = fold_nick(nick)
        row = self._run(
            lambda cur: cur.execute("SELECT sig_key FROM users WHERE nick_key = %s", (key,)).fetchone(),
            _Mode.READ,
        )
        return None if row is None else bytes(row[0])

    def register(self, nick: str, sig_key: bytes, now: float) -> bool:
        key, seen = fold_nick(nick), self.service_clock()

        def work(cur: _Cursor) -> bool:
            row = cur.execute("SELECT sig_key FROM users WHERE nick_key = %s", (key,)).fetchone()
            if row is not None:
                if bytes(row[0]) != sig_key:
                    return False
                # GREATEST: another process's clock may be a little behind this one's.
                cur.execute("UPDATE users SET seen = GREATEST(seen, %s) WHERE nick_key = %s", (seen, key))
                return True
            cur.execute(
                "INSERT INTO users (nick_key, nick, sig_key, registered, seen) VALUES (%s, %s, %s, %s, %s)",
                (key, nick, sig_key, now, seen),
            )
            return True

        return self._run(work, _Mode.WRITE, [_nick_lock(key)])

    def release(self, nick: str) -> bool:
        key = fold_nick(nick)
        return self._run(
            lambda cur: key in _release_all(cur, [key]), _Mode.WRITE, [_nick_lock(key), _QUEUE_LOCK]
        )

    def release_if_idle(self, nick: str, max_idle: float) -> bool:
        key, since = fold_nick(nick), self.service_clock() - max_idle

        def work(cur: _Cursor) -> bool:
            row = cur.execute("SELECT seen FROM users WHERE nick_key = %s", (key,)).fetchone()
            return row is not None and float(row[0]) < since and key in _release_all(cur, [key])

        return self._run(work, _Mode.WRITE, [_nick_lock(key), _QUEUE_LOCK])

    def expire_nicks(self, max_idle: float, keep: Collection[str] = ()) -> list[str]:
        since, kept = self.service_clock() - max_idle, {fold_nick(n) for n in keep}

        def work(cur: _Cursor) -> tuple[int, list[str]]:
            idle = cur.execute(
                "SELECT nick_key FROM users WHERE seen < %s ORDER BY seen LIMIT %s",
                (since, _EXPIRE_BATCH + len(kept)),
            ).fetchall()
            batch = [str(key) for (key,) in idle if key not in kept][:_EXPIRE_BATCH]
            if not batch:
                return 0, []
            _lock(cur, [*map(_nick_lock, batch), _QUEUE_LOCK])
            # Under the locks: a login since the read above made its nick used again.
            still = cur.execute(
                "SELECT nick_key, nick FROM users WHERE nick_key = ANY(%s::text[]) AND seen < %s "
                "ORDER BY seen",
                (batch, since),
            ).fetchall()
            _release_all(cur, [str(key) for key, _ in still])
            return len(batch), [str(nick) for _, nick in still]

        gone: list[str] = []
        while True:  # in batches: one long transaction would hold the queue lock too long
            found, released = self._run(work, _Mode.WRITE)
            gone += released
            if found < _EXPIRE_BATCH:
                return gone

    def rename_user(self, old: str, new: str, sig_key: bytes, now: float) -> RenameResult:
        old_key, new_key, seen = fold_nick(old), fold_nick(new), self.service_clock()

        def work(cur: _Cursor) -> RenameResult:
            if cur.execute("SELECT 1 FROM users WHERE nick_key = %s", (new_key,)).fetchone() is not None:
                return RenameResult.NEW_REGISTERED
            row = cur.execute("SELECT sig_key FROM users WHERE nick_key = %s", (old_key,)).fetchone()
            if row is None or bytes(row[0]) != sig_key:
                return RenameResult.NOT_YOURS
            if cur.execute("SELECT 1 FROM queue WHERE recipient = %s LIMIT 1", (old_key,)).fetchone():
                return RenameResult.QUEUED
            cur.execute(
                "UPDATE users SET nick_key = %s, nick = %s, registered = %s, seen = GREATEST(seen, %s) "
                "WHERE nick_key = %s",
                (new_key, new, now, seen, old_key),
            )
            both = [old_key, new_key]
            # The old nick's keys and device list bind that nick (and any under `new`,
            # unregistered, another key): the client publishes fresh ones.
            cur.execute("DELETE FROM bundles WHERE nick_key = ANY(%s::text[])", (both,))
            cur.execute("DELETE FROM opks WHERE nick_key = ANY(%s::text[])", (both,))
            cur.execute("DELETE FROM kem_prekeys WHERE nick_key = ANY(%s::text[])", (both,))
            cur.execute("DELETE FROM device_lists WHERE nick_key = ANY(%s::text[])", (both,))
            # The failures `old` is to be told move with it; a leftover under `new` for
            # the same whisper gives way (SQLite's UPDATE OR REPLACE). Failures of
            # whispers sent *to* `old` stay: their senders know them by that nick.
            cur.execute(
                "DELETE FROM failures AS f WHERE f.sender = %(new)s AND EXISTS (SELECT 1 FROM failures AS o "
                "WHERE o.sender = %(old)s AND o.msg_id = f.msg_id AND o.recipient = f.recipient)",
                {"new": new_key, "old": old_key},
            )
            cur.execute("UPDATE failures SET sender = %s WHERE sender = %s", (new_key, old_key))
            # Whispers `old` sent and still queued are the renamer's, so their acks reach
            # it. Rows under `new` are nobody's (it is not registered) and would collide.
            # The usage triggers move the sender's share of the quota with the rows.
            cur.execute("DELETE FROM queue WHERE sender = %s", (new_key,))
            cur.execute("UPDATE queue SET sender = %s WHERE sender = %s", (new_key, old_key))
            return RenameResult.DONE

        return self._run(work, _Mode.WRITE, [_nick_lock(old_key), _nick_lock(new_key), _QUEUE_LOCK])

    # -- keys --------------------------------------------------------------------------

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

        def work(cur: _Cursor) -> None:
            old = cur.execute("SELECT sig_key, dh_key FROM bundles WHERE nick_key = %s", (key,)).fetchone()
            changed = old is not None and (bytes(old[0]), bytes(old[1])) != (
                identity.sig_key,
                identity.dh_key,
            )
            # One-time prekeys first, KEM ones after: every transaction here locks rows of
            # opks before rows of kem_prekeys, as `take_bundle` does, so none waits for
            # the other in a circle.
            if changed:
                cur.execute("DELETE FROM opks WHERE nick_key = %s", (key,))  # of a former identity
            chosen = opks
            if max_held is not None:
                held = {int(r[0]) for r in cur.execute("SELECT id FROM opks WHERE nick_key = %s", (key,))}
                chosen = _opks_kept(opks, held, max_held)
            cur.execute(
                "INSERT INTO bundles VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (nick_key) DO UPDATE SET "
                "sig_key = EXCLUDED.sig_key, dh_key = EXCLUDED.dh_key, dh_sig = EXCLUDED.dh_sig, "
                "spk_id = EXCLUDED.spk_id, spk_created = EXCLUDED.spk_created, spk_pub = EXCLUDED.spk_pub, "
                "spk_sig = EXCLUDED.spk_sig",
                (key, identity.sig_key, identity.dh_key, identity.dh_sig, spk.id, spk.created, spk.public,
                 spk.signature),
            )  # fmt: skip
            unique = list({opk.id: opk for opk in chosen}.values())  # a repeated id: the last one
            if unique:
                cur.execute(
                    "INSERT INTO opks (nick_key, id, pub, sig) "
                    "SELECT %s, * FROM unnest(%s::bigint[], %s::bytea[], %s::bytea[]) "
                    "ON CONFLICT (nick_key, id) DO UPDATE SET pub = EXCLUDED.pub, sig = EXCLUDED.sig",
                    (key, [o.id for o in unique], [o.public for o in unique], [o.signature for o in unique]),
                )
            if changed:
                cur.execute("DELETE FROM kem_prekeys WHERE nick_key = %s", (key,))
            _publish_kem(cur, key, kpk, kopks, max_kem_held)

        self._run(work, _Mode.WRITE, [_nick_lock(key)])

    def take_bundle(
        self, nick: str, *, take_opk: Callable[[], bool] | None = None, kem: bool = False
    ) -> StoredBundle | None:
        """As `Store.take_bundle`. One-time prekeys are locked `FOR UPDATE SKIP LOCKED`
        and deleted in this transaction, so concurrent fetches (from any process) each
        take a different one, none twice; a fetch that finds every remaining one locked
        waits for the first (its fetch may keep it: its limits said no), so none is
        answered only when none is left. `take_opk` is asked while that lock is held; it
        may be asked again if the database aborts the transaction (a deadlock) and it
        is run again."""
        key = fold_nick(nick)

        def work(cur: _Cursor) -> StoredBundle | None:
            row = cur.execute(
                "SELECT sig_key, dh_key, dh_sig, spk_id, spk_created, spk_pub, spk_sig FROM bundles "
                "WHERE nick_key = %s",
                (key,),
            ).fetchone()
            if row is None:
                return None
            opk_row = _lock_first(
                cur, "SELECT id, pub, sig FROM opks WHERE nick_key = %s ORDER BY id LIMIT 1 FOR UPDATE", key
            )
            kpk_row = kopk_row = None
            if kem:
                kpk_row = cur.execute(
                    "SELECT id, created, pub, sig FROM kem_prekeys WHERE nick_key = %s AND last_resort",
                    (key,),
                ).fetchone()
                kopk_row = _lock_first(
                    cur,
                    "SELECT id, pub, sig FROM kem_prekeys WHERE nick_key = %s AND NOT last_resort "
                    "ORDER BY id LIMIT 1 FOR UPDATE",
                    key,
                )
            opk = kopk = None
            # One answer from the limits for both kinds: they are handed out together.
            if (opk_row is not None or kopk_row is not None) and (take_opk is None or take_opk()):
                if opk_row is not None:
                    cur.execute("DELETE FROM opks WHERE nick_key = %s AND id = %s", (key, opk_row[0]))
                    opk = OneTimePrekeyRecord(
                        id=int(opk_row[0]), public=bytes(opk_row[1]), signature=bytes(opk_row[2])
                    )
                if kopk_row is not None:
                    cur.execute("DELETE FROM kem_prekeys WHERE nick_key = %s AND id = %s", (key, kopk_row[0]))
                    kopk = OneTimeKemPrekeyRecord(
                        id=int(kopk_row[0]), public=bytes(kopk_row[1]), signature=bytes(kopk_row[2])
                    )
            return StoredBundle(
                KeyIdentity(sig_key=bytes(row[0]), dh_key=bytes(row[1]), dh_sig=bytes(row[2])),
                SignedPrekeyRecord(
                    id=int(row[3]), created=int(row[4]), public=bytes(row[5]), signature=bytes(row[6])
                ),
                opk,
                None
                if kpk_row is None
                else SignedKemPrekeyRecord(
                    id=int(kpk_row[0]),
                    created=int(kpk_row[1]),
                    public=bytes(kpk_row[2]),
                    signature=bytes(kpk_row[3]),
                ),
                kopk,
            )

        return self._run(work, _Mode.WRITE)

    def drop_kem_prekeys(self, nick: str) -> None:
        key = fold_nick(nick)
        held = self._run(
            lambda cur: cur.execute(
                "SELECT 1 FROM kem_prekeys WHERE nick_key = %s LIMIT 1", (key,)
            ).fetchone(),
            _Mode.READ,
        )
        if held is not None:  # most logins have none to drop: no write transaction then
            self._run(
                lambda cur: cur.execute("DELETE FROM kem_prekeys WHERE nick_key = %s", (key,)),
                _Mode.WRITE,
                [_nick_lock(key)],
            )

    def prekey_status(self, nick: str) -> PrekeyStatus:
        key = fold_nick(nick)
        # One statement: one snapshot.
        row = self._run(
            lambda cur: cur.execute(
                "SELECT (SELECT COUNT(*) FROM opks WHERE nick_key = %(k)s), "
                "(SELECT spk_id FROM bundles WHERE nick_key = %(k)s), "
                "(SELECT spk_created FROM bundles WHERE nick_key = %(k)s), "
                "(SELECT COUNT(*) FROM kem_prekeys WHERE nick_key = %(k)s AND NOT last_resort), "
                "(SELECT id FROM kem_prekeys WHERE nick_key = %(k)s AND last_resort)",
                {"k": key},
            ).fetchone(),
            _Mode.READ,
        )
        assert row is not None  # a SELECT without FROM has its one row
        count, spk_id, created, kem_count, kpk_id = row
        return PrekeyStatus(int(count), int(spk_id or 0), int(created or 0), int(kem_count), int(kpk_id or 0))

    def device_list(self, nick: str) -> tuple[int, bytes] | None:
        key = fold_nick(nick)
        row = self._run(
            lambda cur: cur.execute(
                "SELECT version, record FROM device_lists WHERE nick_key = %s", (key,)
            ).fetchone(),
            _Mode.READ,
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    def set_device_list(self, nick: str, version: int, record: bytes, removed: Sequence[str]) -> bool:
        key = fold_nick(nick)

        def work(cur: _Cursor) -> bool:
            # Compare-and-set in one statement: only above the version held.
            row = cur.execute(
                "INSERT INTO device_lists VALUES (%s, %s, %s) ON CONFLICT (nick_key) DO UPDATE SET "
                "version = EXCLUDED.version, record = EXCLUDED.record "
                "WHERE device_lists.version < EXCLUDED.version "
                "RETURNING 1",
                (key, version, record),
            ).fetchone()
            if row is None:
                return False
            if removed:
                _forget_mailboxes(cur, [mailbox(key, device) for device in removed])
            return True

        locks = [_nick_lock(key), _QUEUE_LOCK] if removed else [_nick_lock(key)]
        return self._run(work, _Mode.WRITE, locks)

    # -- the queue ---------------------------------------------------------------------

    def enqueue_many(
        self,
        whispers: Sequence[NewWhisper],
        *,
        limits: QueueLimits | None = None,
        registered_only: bool = False,
    ) -> list[int | QuotaExceeded | UnknownRecipient]:
        """As `Store.enqueue_many`, in one transaction of its own (no group commit with
        other threads' calls); the quotas are checked under the queue lock, so they hold
        across every process sharing the database."""
        if not whispers:
            return []
        svc = self.service_clock()
        return self._run(
            lambda cur: _enqueue_all(cur, whispers, svc, limits, registered_only), _Mode.WRITE, [_QUEUE_LOCK]
        )

    def pending(
        self, recipient: str, *, after: int = 0, upto: int | None = None, limit: int | None = None
    ) -> list[QueuedWhisper]:
        key = fold_nick(recipient)
        rows = self._run(
            lambda cur: cur.execute(
                "SELECT id, recipient, msg_id, sender, header, ciphertext, ts FROM queue "
                "WHERE recipient = %s AND id > %s AND id <= %s ORDER BY id LIMIT %s",
                (key, _bigint(after), _NO_ID_ABOVE if upto is None else _bigint(upto), limit),
            ).fetchall(),
            _Mode.READ,
        )
        return [_queued(r) for r in rows]

    def newest_queued(self, recipient: str) -> int:
        key = fold_nick(recipient)
        row = self._run(
            lambda cur: cur.execute(
                "SELECT COALESCE(MAX(id), 0) FROM queue WHERE recipient = %s", (key,)
            ).fetchone(),
            _Mode.READ,
        )
        return 0 if row is None else int(row[0])

    def has_queued(self, recipient: str) -> bool:
        key = fold_nick(recipient)
        row = self._run(
            lambda cur: cur.execute("SELECT 1 FROM queue WHERE recipient = %s LIMIT 1", (key,)).fetchone(),
            _Mode.READ,
        )
        return row is not None

    def ack_many(
        self, recipient: str, acks: Sequence[tuple[int, str]], *, keep_failures: int | None = None
    ) -> list[QueuedWhisper | None]:
        """As `Store.ack_many`, in one transaction. With no failure to keep, its commit is
        not waited for on disk (`synchronous_commit` off for it), as `SqliteStore`'s plain
        acks: a crash of the database may deliver those whispers again."""
        if not acks:
            return []
        key = fold_nick(recipient)
        mode = _Mode.WRITE if any(failed for _, failed in acks) else _Mode.WRITE_LAZY
        return self._run(lambda cur: _ack_all(cur, key, acks, keep_failures), mode, [_QUEUE_LOCK])

    def failures(self, sender: str, limit: int | None = None) -> list[tuple[str, str, str]]:
        key = fold_nick(sender)
        rows = self._run(
            lambda cur: cur.execute(
                "SELECT recipient, msg_id, reason FROM failures WHERE sender = %s ORDER BY seq LIMIT %s",
                (key, limit),
            ).fetchall(),
            _Mode.READ,
        )
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def expire(self, max_age: float) -> int:
        """As `Store.expire`. Writes the service clock down as `SqliteStore`'s does, and
        adopts a later one another process wrote (see `service_clock`)."""
        mine = self.service_clock()

        def work(cur: _Cursor) -> int:
            now = self._catch_up(_advance_service_clock(cur, mine))
            return int(cur.execute("DELETE FROM queue WHERE svc < %s", (now - max_age,)).rowcount)

        return self._run(work, _Mode.WRITE, [_QUEUE_LOCK])

    # -- rooms and history -------------------------------------------------------------

    def append_history(self, lines: list[tuple[str, str, str, float]], keep: int) -> None:
        if not lines:
            return
        folded = [(fold_room(room), nick, text, ts) for room, nick, text, ts in lines]
        rooms = sorted({line[0] for line in folded})

        def work(cur: _Cursor) -> None:
            # Ids taken here, in order, under the rooms' locks: each room's lines keep
            # the order they were said in, across processes too.
            ids = sorted(
                int(r[0])
                for r in cur.execute(
                    "SELECT nextval('history_ids') FROM generate_series(1, %s)", (len(folded),)
                )
            )
            cur.execute(
                "INSERT INTO history (id, room, nick, text, ts) "
                "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bytea[], %s::float8[])",
                (
                    ids,
                    [line[0] for line in folded],
                    [line[1] for line in folded],
                    [_text_in(line[2]) for line in folded],
                    [line[3] for line in folded],
                ),
            )
            cur.execute(
                "DELETE FROM history AS h USING (SELECT id, "
                "row_number() OVER (PARTITION BY room ORDER BY id DESC) "
                "AS newer FROM history WHERE room = ANY(%s::text[])) AS n WHERE h.id = n.id AND n.newer > %s",
                (rooms, keep),
            )

        self._run(work, _Mode.WRITE, map(_room_lock, rooms))

    def recent_history(self, room: str, count: int) -> list[tuple[str, str, float]]:
        key = fold_room(room)
        rows = self._run(
            lambda cur: cur.execute(
                "SELECT nick, text, ts FROM history WHERE room = %s ORDER BY id DESC LIMIT %s", (key, count)
            ).fetchall(),
            _Mode.READ,
        )
        return [(str(r[0]), _text_out(r[1]), float(r[2])) for r in reversed(rows)]

    def drop_room_history(self, room: str) -> None:
        key = fold_room(room)
        self._run(
            lambda cur: cur.execute("DELETE FROM history WHERE room = %s", (key,)),
            _Mode.WRITE,
            [_room_lock(key)],
        )

    def registered_rooms(self) -> list[StoredRoom]:
        def work(cur: _Cursor) -> list[StoredRoom]:
            rooms = cur.execute(
                "SELECT name_key, name, owner_key, topic, invite_only FROM rooms ORDER BY name_key"
            ).fetchall()
            operators: dict[str, set[bytes]] = {}
            for key, sig_key in cur.execute("SELECT name_key, sig_key FROM room_operators"):
                operators.setdefault(key, set()).add(bytes(sig_key))
            bans: dict[str, list[StoredBan]] = {}
            for key, kind, key_value, text_value, shown, by in cur.execute(
                "SELECT name_key, kind, key_value, text_value, shown, set_by FROM room_bans "
                "ORDER BY name_key, pos"
            ):
                value = bytes(key_value) if key_value is not None else _text_out(text_value)
                bans.setdefault(key, []).append(StoredBan(str(kind), value, _text_out(shown), str(by)))
            return [
                StoredRoom(
                    name=str(name),
                    owner_key=bytes(owner_key),
                    topic=_text_out(topic),
                    invite_only=bool(invite_only),
                    operators=frozenset(operators.get(key, ())),
                    bans=tuple(bans.get(key, ())),
                )
                for key, name, owner_key, topic, invite_only in rooms
            ]

        return self._run(work, _Mode.SNAPSHOT)

    def register_room(self, room: StoredRoom, *, drop_history: bool = False) -> bool:
        key, now = fold_room(room.name), self._clock()

        def work(cur: _Cursor) -> bool:
            if cur.execute("SELECT 1 FROM rooms WHERE name_key = %s", (key,)).fetchone() is not None:
                return False
            if drop_history:
                cur.execute("DELETE FROM history WHERE room = %s", (key,))
            cur.execute(
                "INSERT INTO rooms (name_key, name, owner_key, topic, invite_only, created) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (key, room.name, room.owner_key, _text_in(room.topic), room.invite_only, now),
            )
            _put_room_members(cur, key, room, now)
            return True

        return self._run(work, _Mode.WRITE, [_room_lock(key)])

    def save_room(self, room: StoredRoom) -> None:
        key, now = fold_room(room.name), self._clock()

        def work(cur: _Cursor) -> None:
            updated = cur.execute(
                "UPDATE rooms SET name = %s, owner_key = %s, topic = %s, invite_only = %s "
                "WHERE name_key = %s",
                (room.name, room.owner_key, _text_in(room.topic), room.invite_only, key),
            ).rowcount
            if not updated:
                raise KeyError(f"{room.name} is not a registered room")
            _put_room_members(cur, key, room, now)

        self._run(work, _Mode.WRITE, [_room_lock(key)])

    def release_room(self, name: str, *, drop_history: bool = True) -> bool:
        key = fold_room(name)
        return self._run(
            lambda cur: bool(_release_rooms(cur, [key], [key] if drop_history else [])),
            _Mode.WRITE,
            [_room_lock(key)],
        )

    def expire_rooms(
        self, max_idle: float, keep_owners: Collection[bytes] = (), keep_history: Collection[str] = ()
    ) -> list[str]:
        since, kept = self.service_clock() - max_idle, set(keep_owners)
        lines_kept = {fold_room(name) for name in keep_history}
        query = (
            "SELECT r.name_key, r.name, r.owner_key, u.seen FROM rooms AS r LEFT JOIN LATERAL "
            "(SELECT MAX(seen) AS seen FROM users WHERE sig_key = r.owner_key) AS u ON true "
            "WHERE %(all)s OR r.name_key = ANY(%(keys)s::text[]) ORDER BY r.name_key"
        )

        def idle(cur: _Cursor, keys: list[str] | None) -> list[tuple[str, str]]:
            rows = cur.execute(query, {"all": keys is None, "keys": keys or []}).fetchall()
            return [
                (str(key), str(name))
                for key, name, owner, seen in rows
                if (seen is None or float(seen) < since) and bytes(owner) not in kept
            ]

        def work(cur: _Cursor) -> list[str]:
            candidates = idle(cur, None)
            if not candidates:
                return []
            _lock(cur, [_room_lock(key) for key, _ in candidates])
            # Under the rooms' locks: one saved meanwhile may have a new owner.
            confirmed = idle(cur, [key for key, _ in candidates])
            keys = [key for key, _ in confirmed]
            _release_rooms(cur, keys, [key for key in keys if key not in lines_kept])
            return [name for _, name in confirmed]

        return self._run(work, _Mode.WRITE)


# -- what the operations do inside their transactions ----------------------------------


def _put_meta(cur: _Cursor, key: str, value: str) -> None:
    cur.execute(
        "INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        (key, value),
    )


def _advance_service_clock(cur: _Cursor, now: float) -> float:
    """Write the service clock `now` down unless a larger one is (another process's); the
    one written down."""
    row = cur.execute(
        "INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
        "SET value = GREATEST(meta.value::float8, EXCLUDED.value::float8)::text RETURNING value",
        (_SERVICE_CLOCK, repr(now)),
    ).fetchone()
    return now if row is None else float(row[0])


def _stored_service_clock(cur: _Cursor) -> float:
    """The service clock as the database knows it: where it was last written down, or a
    whisper queued after that (and before a crash) with a later reading."""
    row = cur.execute(
        "SELECT GREATEST(COALESCE((SELECT value::float8 FROM meta WHERE key = %s), 0), "
        "COALESCE((SELECT MAX(svc) FROM queue), 0))",
        (_SERVICE_CLOCK,),
    ).fetchone()
    return 0.0 if row is None else float(row[0])


def _lock_first(cur: _Cursor, locking_query: str, key: str) -> _Row | None:
    """The first row `locking_query` (a `... LIMIT 1 FOR UPDATE` of `key`'s prekeys)
    finds, locked until the transaction ends; None if there is none.

    Rows other fetches have locked are skipped. If every remaining one is, wait for the
    first instead: its fetch may yet keep it, and "none" must mean none is left.
    (Waiting, PostgreSQL moves on to the next row if that one is deleted meanwhile.)
    """
    row = cur.execute(locking_query + " SKIP LOCKED", (key,)).fetchone()
    if row is None:
        row = cur.execute(locking_query, (key,)).fetchone()
    return row


def _publish_kem(
    cur: _Cursor,
    key: str,
    kpk: SignedKemPrekeyRecord | None,
    kopks: tuple[OneTimeKemPrekeyRecord, ...],
    max_held: int | None,
) -> None:
    """`publish`'s KEM part: the last-resort row replaced (or, with no `kpk`, every KEM
    row of `key` deleted); `kopks` added, new ids only, up to `max_held`."""
    if kpk is None:
        cur.execute("DELETE FROM kem_prekeys WHERE nick_key = %s", (key,))
        return
    cur.execute("DELETE FROM kem_prekeys WHERE nick_key = %s AND (last_resort OR id = %s)", (key, kpk.id))
    cur.execute(
        "INSERT INTO kem_prekeys VALUES (%s, %s, true, %s, %s, %s)",
        (key, kpk.id, kpk.created, kpk.public, kpk.signature),
    )
    held = {
        int(r[0])
        for r in cur.execute("SELECT id FROM kem_prekeys WHERE nick_key = %s AND NOT last_resort", (key,))
    }
    fresh = _kem_opks_added(kopks, held, kpk.id, max_held)
    if fresh:
        cur.execute(
            "INSERT INTO kem_prekeys SELECT %s, id, false, 0, pub, sig "
            "FROM unnest(%s::bigint[], %s::bytea[], %s::bytea[]) AS k(id, pub, sig) ON CONFLICT DO NOTHING",
            (key, [k.id for k in fresh], [k.public for k in fresh], [k.signature for k in fresh]),
        )


def _forget_mailboxes(cur: _Cursor, boxes: list[str]) -> None:
    """Delete linked devices' keys, the whispers queued for them and the failures they
    reported. Under the owner's lock and the queue lock."""
    cur.execute("DELETE FROM bundles WHERE nick_key = ANY(%s::text[])", (boxes,))
    cur.execute("DELETE FROM opks WHERE nick_key = ANY(%s::text[])", (boxes,))
    cur.execute("DELETE FROM kem_prekeys WHERE nick_key = ANY(%s::text[])", (boxes,))
    cur.execute("DELETE FROM queue WHERE recipient = ANY(%s::text[])", (boxes,))
    cur.execute("DELETE FROM failures WHERE recipient = ANY(%s::text[])", (boxes,))


def _release_all(cur: _Cursor, keys: list[str]) -> set[str]:
    """Forget the nicks `keys` (folded): binding, device list, keys, queue (to and from),
    failures (of and for), and those of their linked devices' mailboxes (found as
    `SqliteStore` finds them: by a bundle or a queued whisper). Which of `keys` were
    registered. Under the nicks' locks and the queue lock."""
    if not keys:
        return set()
    # Every "key/..." mailbox: the strings from "key/" up to "key0" ("0" follows "/"),
    # in byte order (the columns' collation).
    boxes = [
        str(row[0])
        for row in cur.execute(
            "SELECT b.nick_key FROM bundles AS b JOIN unnest(%(keys)s::text[]) AS k(key) "
            "ON b.nick_key > k.key || '/' AND b.nick_key < k.key || '0' "
            "UNION SELECT q.recipient FROM queue AS q JOIN unnest(%(keys)s::text[]) AS k(key) "
            "ON q.recipient > k.key || '/' AND q.recipient < k.key || '0'",
            {"keys": keys},
        )
    ]
    everything = [*keys, *boxes]
    cur.execute("DELETE FROM device_lists WHERE nick_key = ANY(%s::text[])", (keys,))
    gone = {
        str(row[0])
        for row in cur.execute(
            "DELETE FROM users WHERE nick_key = ANY(%s::text[]) RETURNING nick_key", (keys,)
        )
    }
    cur.execute("DELETE FROM bundles WHERE nick_key = ANY(%s::text[])", (everything,))
    cur.execute("DELETE FROM opks WHERE nick_key = ANY(%s::text[])", (everything,))
    cur.execute("DELETE FROM kem_prekeys WHERE nick_key = ANY(%s::text[])", (everything,))
    # What they sent goes too: its acks would otherwise be told to whoever registers the
    # nick next (the triggers give the quotas back).
    cur.execute(
        "DELETE FROM queue WHERE recipient = ANY(%(all)s::text[]) OR sender = ANY(%(all)s::text[])",
        {"all": everything},
    )
    cur.execute(
        "DELETE FROM failures WHERE sender = ANY(%(all)s::text[]) OR recipient = ANY(%(all)s::text[])",
        {"all": everything},
    )
    return gone


def _release_rooms(cur: _Cursor, keys: list[str], drop_history: list[str]) -> set[str]:
    """Forget the registered rooms `keys` (folded), and the stored lines of those of them
    in `drop_history` that were registered; which were. Under the rooms' locks."""
    if not keys:
        return set()
    gone = {
        str(row[0])
        for row in cur.execute(
            "DELETE FROM rooms WHERE name_key = ANY(%s::text[]) RETURNING name_key", (keys,)
        )
    }
    cur.execute("DELETE FROM room_operators WHERE name_key = ANY(%s::text[])", (keys,))
    cur.execute("DELETE FROM room_bans WHERE name_key = ANY(%s::text[])", (keys,))
    lines = [key for key in drop_history if key in gone]
    if lines:
        cur.execute("DELETE FROM history WHERE room = ANY(%s::text[])", (lines,))
    return gone


def _put_room_members(cur: _Cursor, key: str, room: StoredRoom, now: float) -> None:
    """Replace the operators and bans of the room `key` (folded) by `room`'s. A ban kept
    from before keeps when it was set. Under the room's lock."""
    created: dict[tuple[str, str | bytes], float] = {}
    for kind, key_value, text_value, when in cur.execute(
        "SELECT kind, key_value, text_value, created FROM room_bans WHERE name_key = %s", (key,)
    ):
        value = bytes(key_value) if key_value is not None else _text_out(text_value)
        created[(str(kind), value)] = float(when)
    cur.execute("DELETE FROM room_operators WHERE name_key = %s", (key,))
    cur.execute("DELETE FROM room_bans WHERE name_key = %s", (key,))
    if room.operators:
        cur.execute(
            "INSERT INTO room_operators SELECT %s, unnest(%s::bytea[])", (key, sorted(room.operators))
        )
    if room.bans:
        bans = room.bans
        cur.execute(
            "INSERT INTO room_bans (name_key, pos, kind, key_value, text_value, shown, set_by, created) "
            "SELECT %s, * FROM unnest(%s::int[], %s::text[], %s::bytea[], %s::bytea[], %s::bytea[], "
            "%s::text[], "
            "%s::float8[])",
            (
                key,
                list(range(len(bans))),
                [ban.kind for ban in bans],
                [ban.value if isinstance(ban.value, bytes) else None for ban in bans],
                [None if isinstance(ban.value, bytes) else _text_in(ban.value) for ban in bans],
                [_text_in(ban.shown) for ban in bans],
                [ban.by for ban in bans],
                [created.get((ban.kind, ban.value), now) for ban in bans],
            ),
        )


def _queued(r: _Row) -> QueuedWhisper:
    return QueuedWhisper(int(r[0]), str(r[1]), str(r[2]), str(r[3]), bytes(r[4]), bytes(r[5]), float(r[6]))


def _enqueue_all(
    cur: _Cursor,
    whispers: Sequence[NewWhisper],
    svc: float,
    limits: QueueLimits | None,
    registered_only: bool,
) -> list[int | QuotaExceeded | UnknownRecipient]:
    """Queue `whispers` (one call's, in order) under the queue lock; for each, its id or
    its refusal (which writes nothing). As `SqliteStore`'s group: a fixed number of
    statements whatever their count — reads of the recipients' registrations, of the
    whispers already queued (a resend keeps its id and is never refused), of the
    queue's usage and of the senders with failures kept; then one insert, with ids
    taken here in order, so a sender's whispers keep their order."""
    items = [(w, fold_nick(w.recipient), fold_nick(w.sender)) for w in whispers]
    registered: set[str] = set()
    if registered_only:
        owners = sorted({_owner(r) for _, r, _ in items})
        registered = {
            str(row[0])
            for row in cur.execute("SELECT nick_key FROM users WHERE nick_key = ANY(%s::text[])", (owners,))
        }
    keys = list(dict.fromkeys((s, w.msg_id, r) for w, r, s in items))
    queued: dict[tuple[str, str, str], int] = {
        (str(s), str(m), str(r)): int(i)
        for s, m, r, i in cur.execute(
            "SELECT q.sender, q.msg_id, q.recipient, q.id FROM unnest(%s::text[], %s::text[], %s::text[]) "
            "AS v(s, m, r) JOIN queue AS q ON q.sender = v.s AND q.msg_id = v.m AND q.recipient = v.r",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
        )
    }
    usage: dict[str, list[int]] = {}
    if limits is not None:
        whos = list(dict.fromkeys([_TOTAL, *(who for _, r, s in items for who in (_FROM + s, _TO + r))]))
        usage = {
            str(who): [int(count), int(size)]
            for who, count, size in cur.execute(
                "SELECT who, count, bytes FROM queue_usage WHERE who = ANY(%s::text[])", (whos,)
            )
        }
    senders = sorted({s for _, _, s in items})
    failing = {
        str(row[0])
        for row in cur.execute(
            "SELECT DISTINCT sender FROM failures WHERE sender = ANY(%s::text[])", (senders,)
        )
    }
    # A new whisper's id is known only once all are counted: until then the n-th new
    # one stands as -n.
    results: list[int | QuotaExceeded | UnknownRecipient] = []
    new: list[tuple[str, str, str, bytes, bytes, float]] = []
    answered: list[tuple[str, str, str]] = []  # failures the whispers sent again answer
    for w, recipient, sender in items:
        if registered_only and _owner(recipient) not in registered:
            results.append(UnknownRecipient(w.recipient))
            continue
        key = (sender, w.msg_id, recipient)
        whisper_id = queued.get(key)
        if whisper_id is None:
            size = len(w.header) + len(w.ciphertext)
            refused = None if limits is None else _over_quota(usage, recipient, sender, size, limits)
            if refused is not None:
                results.append(QuotaExceeded(refused))
                continue
            new.append((recipient, w.msg_id, sender, w.header, w.ciphertext, w.ts))
            whisper_id = queued[key] = -len(new)
            for who in (_FROM + sender, _TO + recipient, _TOTAL):  # as the insert trigger counts it
                counted = usage.setdefault(who, [0, 0])
                counted[0] += 1
                counted[1] += size
        if sender in failing:
            # Sent again (after a failure, in a new session): that failure is answered.
            answered.append((recipient, w.msg_id, sender))
        results.append(whisper_id)
    if new:
        ids = sorted(
            int(r[0])
            for r in cur.execute("SELECT nextval('queue_ids') FROM generate_series(1, %s)", (len(new),))
        )
        cur.execute(
            "INSERT INTO queue (id, recipient, msg_id, sender, header, ciphertext, ts, svc) "
            "SELECT *, %s FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::bytea[], "
            "%s::bytea[], %s::float8[])",
            (svc, ids, *([row[i] for row in new] for i in range(6))),
        )
        results = [ids[-r - 1] if isinstance(r, int) and r < 0 else r for r in results]
    if answered:
        cur.execute(
            "DELETE FROM failures AS f USING unnest(%s::text[], %s::text[], %s::text[]) AS v(r, m, s) "
            "WHERE f.recipient = v.r AND f.msg_id = v.m AND f.sender = v.s",
            tuple([a[i] for a in answered] for i in range(3)),
        )
    return results


def _ack_all(
    cur: _Cursor, recipient: str, acks: Sequence[tuple[int, str]], keep_failures: int | None
) -> list[QueuedWhisper | None]:
    """Apply `acks` of `recipient` (folded) under the queue lock; for each, what it
    removed from that recipient's queue, or None (not queued, not theirs, or acked
    already). One delete for all; more statements only for failed ones."""
    ids = list(dict.fromkeys(_bigint(whisper_id) for whisper_id, _ in acks))
    found = {
        int(r[0]): _queued(r)
        for r in cur.execute(
            "DELETE FROM queue WHERE recipient = %s AND id = ANY(%s::bigint[]) "
            "RETURNING id, recipient, msg_id, sender, header, ciphertext, ts",
            (recipient, ids),
        )
    }
    results: list[QueuedWhisper | None] = []
    for whisper_id, failed in acks:
        q = found.pop(whisper_id, None)  # a second ack of it finds nothing
        results.append(q)
        if q is None or not failed:
            continue
        cur.execute(
            "INSERT INTO failures (sender, msg_id, recipient, reason) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (sender, msg_id, recipient) "
            "DO UPDATE SET reason = EXCLUDED.reason, seq = EXCLUDED.seq",
            (q.sender, q.msg_id, q.recipient, failed),
        )
        if keep_failures is not None:
            # A sender and a recipient working together could otherwise grow the
            # sender's failures without bound, the queue quotas notwithstanding.
            cur.execute(
                "DELETE FROM failures WHERE sender = %(s)s AND seq <= "
                "(SELECT seq FROM failures WHERE sender = %(s)s ORDER BY seq DESC LIMIT 1 OFFSET %(keep)s)",
                {"s": q.sender, "keep": keep_failures},
            )
    return results
