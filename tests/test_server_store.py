"""The store's contract, run against both engines (the `backend` fixture: "sqlite" and
"postgresql"), and SqliteStore's own tests (files, migrations, group commit), which
take `sqlite_store` or open SqliteStore themselves. PostgreSQL's own tests are in
test_server_pgstore.py."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from disk_helpers import fill, needs_root

from securechat.protocol import (
    KeyIdentity,
    OneTimeKemPrekeyRecord,
    OneTimePrekeyRecord,
    SignedKemPrekeyRecord,
    SignedPrekeyRecord,
)
from securechat.server import store as store_module
from securechat.server.store import (
    SCHEMA_VERSION,
    NewWhisper,
    PrekeyStatus,
    QueueLimits,
    Quota,
    QuotaExceeded,
    RenameResult,
    SqliteStore,
    StoredBan,
    StoredRoom,
    StoreUnavailable,
    UnknownRecipient,
    mailbox,
)

if TYPE_CHECKING:
    from securechat.server.pgstore import PostgresStore

    AnyStore = SqliteStore | PostgresStore

IDENT = KeyIdentity(sig_key=b"s" * 32, dh_key=b"d" * 32, dh_sig=b"g" * 64)
SPK = SignedPrekeyRecord(id=1, created=100, public=b"p" * 32, signature=b"x" * 64)


def opks(*ids: int) -> tuple[OneTimePrekeyRecord, ...]:
    return tuple(OneTimePrekeyRecord(id=i, public=bytes([i]) * 32, signature=b"o" * 64) for i in ids)


def kpk(key_id: int) -> SignedKemPrekeyRecord:
    return SignedKemPrekeyRecord(id=key_id, created=100, public=bytes([key_id]) * 1184, signature=b"k" * 64)


def kopks(*ids: int) -> tuple[OneTimeKemPrekeyRecord, ...]:
    return tuple(OneTimeKemPrekeyRecord(id=i, public=bytes([i]) * 1184, signature=b"q" * 64) for i in ids)


def test_kem_prekeys_one_time_ones_once_and_gone_with_a_publish_without_them(store: AnyStore) -> None:
    store.publish("bob", IDENT, SPK, opks(1), kpk=kpk(10), kopks=kopks(11, 12, 11), max_kem_held=30)
    assert store.prekey_status("bob") == PrekeyStatus(1, 1, 100, 2, 10)  # a repeated id kept once
    first = store.take_bundle("bob", kem=True)
    second = store.take_bundle("bob", kem=True)
    third = store.take_bundle("bob", kem=True)
    assert first and second and third
    assert [b.kopk.id if b.kopk else None for b in (first, second, third)] == [11, 12, None]
    assert [b.kpk.id if b.kpk else None for b in (first, second, third)] == [10, 10, 10]
    assert store.take_bundle("bob") is not None and store.take_bundle("bob").kpk is None  # type: ignore[union-attr]
    store.publish("bob", IDENT, SPK, (), kpk=kpk(20), kopks=kopks(21), max_kem_held=30)  # rotated
    assert store.prekey_status("bob").kpk_id == 20
    store.drop_kem_prekeys("bob")  # an older client logged in
    assert store.prekey_status("bob") == PrekeyStatus(0, 1, 100, 0, 0)
    store.publish("bob", IDENT, SPK, (), kpk=kpk(30), kopks=kopks(31), max_kem_held=30)
    store.publish("bob", IDENT, SPK, ())  # a publish without a KPK: its client makes none
    assert (store.prekey_status("bob").kem_count, store.prekey_status("bob").kpk_id) == (0, 0)


class Clocks:
    """A wall clock and a monotonic clock that tests move by hand."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 1000.0

    def store(self, path: Path) -> SqliteStore:
        return SqliteStore(path, clock=lambda: self.wall, monotonic=lambda: self.mono)


class Backend:
    """One test's database on one engine: the stores opened on it (each `open` is
    another store on the same data: a reopening, or another server process), and plain
    SQL on it for what a test must see or break behind the store's back."""

    def __init__(self, engine: str, path: Path, dsn: str | None) -> None:
        self.engine = engine
        self.path = path  # SQLite's file
        self.dsn = dsn  # PostgreSQL's database
        self.opened: list[AnyStore] = []

    def open(self, clocks: Clocks | None = None) -> AnyStore:
        timing: dict[str, Callable[[], float]] = (
            {} if clocks is None else {"clock": lambda: clocks.wall, "monotonic": lambda: clocks.mono}
        )
        store: AnyStore
        if self.dsn is None:
            store = SqliteStore(self.path, **timing)
        else:
            from securechat.server.pgstore import PostgresStore

            store = PostgresStore(self.dsn, **timing)
        self.opened.append(store)
        return store

    def execute(self, statement: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run `statement` (placeholders "?") on a connection of its own, committed."""
        if self.dsn is None:
            db = sqlite3.connect(self.path, isolation_level=None)
            try:
                return db.execute(statement, params).fetchall()
            finally:
                db.close()
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(statement.replace("?", "%s") if params else statement, params or None)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    @contextmanager
    def failing_updates(self, table: str, message: str) -> Iterator[None]:
        """Every UPDATE of `table` fails with `message` (as an I/O error would) inside."""
        if self.dsn is None:
            self.execute(
                f"CREATE TRIGGER fault BEFORE UPDATE ON {table} BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
        else:
            self.execute(
                "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$"
            )
            self.execute(
                f"CREATE TRIGGER fault BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION fault()"
            )
        try:
            yield
        finally:
            self.execute("DROP TRIGGER fault" if self.dsn is None else f"DROP TRIGGER fault ON {table}")

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    dsn = None
    if request.param == "postgresql":
        pytest.importorskip(
            "psycopg", reason="the cluster extra is not installed: pip install -e '.[cluster]'"
        )
        dsn = request.getfixturevalue("pg_dsn")
    backend = Backend(request.param, tmp_path / "data" / "db.sqlite", dsn)
    yield backend
    backend.close_all()


@pytest.fixture
def store(backend: Backend) -> AnyStore:
    return backend.open()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> SqliteStore:
    """For SQLite's own tests (its group commit, seen through its connection)."""
    return SqliteStore(tmp_path / "data" / "db.sqlite")


def test_files_are_private(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "data" / "db.sqlite").close()
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "data" / "db.sqlite").stat().st_mode & 0o777 == 0o600


def test_registration_binds_a_nick_to_one_key_case_insensitively(store: AnyStore) -> None:
    assert store.register("Alice", b"k" * 32, 1.0)
    assert store.register("alice", b"k" * 32, 2.0)  # the same key again is fine
    assert not store.register("ALICE", b"z" * 32, 3.0)
    assert store.registered_key("aLiCe") == b"k" * 32
    assert store.release("alice") and store.registered_key("alice") is None
    assert not store.release("alice")


def test_each_one_time_prekey_is_handed_out_once(store: AnyStore) -> None:
    store.publish("bob", IDENT, SPK, opks(1, 2))
    first, second, third = (store.take_bundle("bob") for _ in range(3))
    assert first and second and third
    assert [b.opk.id if b.opk else None for b in (first, second, third)] == [1, 2, None]
    assert third.spk == SPK and third.identity == IDENT
    assert store.take_bundle("nobody") is None


def test_concurrent_fetches_never_share_a_prekey(store: AnyStore) -> None:
    store.publish("bob", IDENT, SPK, opks(*range(1, 101)))
    got: list[int] = []
    lock = threading.Lock()

    def fetch() -> None:
        for _ in range(25):
            bundle = store.take_bundle("bob")
            assert bundle is not None and bundle.opk is not None
            with lock:
                got.append(bundle.opk.id)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == list(range(1, 101))


def test_publish_adds_prekeys_and_a_new_identity_clears_old_ones(store: AnyStore) -> None:
    store.publish("bob", IDENT, SPK, opks(1))
    store.publish("bob", IDENT, SPK, opks(2, 3))
    assert store.prekey_status("bob") == PrekeyStatus(3, 1, 100)
    other = KeyIdentity(sig_key=b"s" * 32, dh_key=b"e" * 32, dh_sig=b"g" * 64)
    store.publish("bob", other, SPK, opks(9))
    assert store.prekey_status("bob").count == 1
    assert store.prekey_status("nobody") == PrekeyStatus()


def test_queue_is_idempotent_per_sender_message_and_acked_only_by_its_recipient(store: AnyStore) -> None:
    a = store.enqueue("bob", "m1", "alice", b"h", b"c", 1.0)
    assert store.enqueue("Bob", "m1", "ALICE", b"h", b"c", 2.0) == a  # a resend
    b = store.enqueue("bob", "m2", "alice", b"h2", b"c2", 3.0)
    assert [q.id for q in store.pending("bob")] == [a, b]
    assert store.ack("carol", a) is None  # not carol's
    done = store.ack("bob", a)
    assert done is not None and done.msg_id == "m1" and done.sender == "alice"
    assert store.ack("bob", a) is None
    assert [q.msg_id for q in store.pending("bob")] == ["m2"]


def test_everything_survives_reopening(backend: Backend) -> None:
    s = backend.open()
    s.register("alice", b"k" * 32, 1.0)
    s.publish("alice", IDENT, SPK, opks(1))
    s.enqueue("alice", "m", "bob", b"h", b"c", 1.0)
    s.close()
    s = backend.open()
    assert s.registered_key("alice") == b"k" * 32
    assert s.prekey_status("alice") == PrekeyStatus(1, 1, 100)
    assert len(s.pending("alice")) == 1


def test_a_newer_schema_or_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(ValueError, match="newer"):
        SqliteStore(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match="not a database"):
        SqliteStore(junk)


def test_expire_deletes_only_whispers_older_than_the_age_in_service_time(backend: Backend) -> None:
    clocks = Clocks()
    store = backend.open(clocks)
    store.enqueue("bob", "old", "alice", b"h", b"c", clocks.wall)
    clocks.mono += 100
    store.enqueue("bob", "new", "alice", b"h", b"c", clocks.wall)
    clocks.mono += 60
    assert store.expire(150.0) == 1  # "old" is 160 s old, "new" 60 s
    assert [q.msg_id for q in store.pending("bob")] == ["new"]
    assert store.expire(150.0) == 0


@pytest.mark.parametrize("jump", [31 * 86_400.0, 365 * 86_400.0, -365 * 86_400.0])
def test_a_wall_clock_jump_neither_expires_nor_keeps_queued_whispers(backend: Backend, jump: float) -> None:
    clocks = Clocks()
    ttl = 30 * 86_400.0
    store = backend.open(clocks)
    store.enqueue("bob", "w", "alice", b"h", b"c", clocks.wall)
    clocks.wall += jump  # the wall clock jumps; no time passes
    assert store.expire(ttl) == 0
    assert [q.msg_id for q in store.pending("bob")] == ["w"]
    clocks.mono += ttl + 1  # a queue_ttl of service passes
    assert store.expire(ttl) == 1


def test_the_service_clock_goes_on_across_restarts_and_not_while_stopped(backend: Backend) -> None:
    clocks = Clocks()
    store = backend.open(clocks)
    store.enqueue("bob", "w", "alice", b"h", b"c", clocks.wall)
    clocks.mono += 100
    store.close()
    clocks.wall += 86_400.0  # a day stopped: the machine rebooted, monotonic starts again
    clocks.mono = 5.0
    store = backend.open(clocks)
    assert store.service_clock() == pytest.approx(100.0)
    clocks.mono += 60
    assert store.expire(200.0) == 0  # 160 s of service, though a day and more went by
    clocks.mono += 41
    assert store.expire(200.0) == 1


def test_the_service_clock_survives_a_crash_at_least_up_to_the_newest_whisper(backend: Backend) -> None:
    clocks = Clocks()
    store = backend.open(clocks)
    clocks.mono += 500
    store.enqueue("bob", "w", "alice", b"h", b"c", clocks.wall)  # no close: as if killed
    clocks.mono = 0.0
    again = backend.open(clocks)
    assert again.service_clock() == pytest.approx(500.0)
    store.close()
    again.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for `condition` (checked every few milliseconds); fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        threading.Event().wait(0.002)


def in_groups(store: SqliteStore, calls: list[Callable[[], object]]) -> tuple[list[object], list[int]]:
    """Run each of `calls` on a thread of its own: the first alone, its commit held until
    every other call has queued behind it, so that those share the next commit. What
    each returned or raised, and for each COMMIT the store ran, how many calls had
    returned by then."""
    results: list[object] = [None] * len(calls)
    returned_at_commit: list[int] = []
    release = threading.Event()

    def trace(statement: str) -> None:  # runs on the committing thread, as SQLite goes
        if statement == "COMMIT":
            returned_at_commit.append(sum(r is not None for r in results))
            if len(returned_at_commit) == 1:
                release.wait(10)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    store._db.set_trace_callback(trace)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    threads[0].start()
    wait_until(lambda: len(returned_at_commit) == 1)  # the first is in its commit
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: len(store._group) == len(calls) - 1)  # the others queued behind it
    release.set()
    for thread in threads:
        thread.join(10)
    store._db.set_trace_callback(None)
    return results, returned_at_commit


def test_whispers_from_many_threads_share_one_commit_and_each_returns_after_it(
    sqlite_store: SqliteStore,
) -> None:
    store = sqlite_store
    senders = [f"s{i}" for i in range(8)]
    calls: list[Callable[[], object]] = [
        lambda s=s: store.enqueue("bob", "m", s, b"h", b"c", 1.0)  # type: ignore[misc]
        for s in senders
    ]
    ids, returned_at_commit = in_groups(store, calls)
    # One commit for the first, one for the seven queued meanwhile (not one each), and
    # none of them returned before its commit.
    assert returned_at_commit == [0, 1]
    assert sorted(q.sender for q in store.pending("bob")) == senders
    assert sorted(q.id for q in store.pending("bob")) == sorted(ids)  # type: ignore[type-var]


def test_a_quota_refusal_in_a_group_is_undone_alone(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    limits = QueueLimits(
        per_recipient=3, bytes_per_recipient=10**6, per_sender=10, bytes_per_sender=10**6, total_bytes=10**6
    )
    calls: list[Callable[[], object]] = [
        lambda i=i: store.enqueue("bob", f"m{i}", f"s{i}", b"h", b"c", 1.0, limits=limits)  # type: ignore[misc]
        for i in range(5)
    ]
    results, _ = in_groups(store, calls)
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(refused) == 2 and all(r.quota is Quota.RECIPIENT_COUNT for r in refused)
    kept = [f"m{i}" for i, r in enumerate(results) if isinstance(r, int)]
    assert sorted(q.msg_id for q in store.pending("bob")) == kept and len(kept) == 3
    # The refused were not counted either: once one is read, exactly one more fits.
    store.ack("bob", store.pending("bob")[0].id)
    store.enqueue("bob", "later", "s9", b"h", b"c", 2.0, limits=limits)
    with pytest.raises(QuotaExceeded):
        store.enqueue("bob", "too-many", "s9", b"h", b"c", 2.0, limits=limits)


def test_a_failed_group_commit_fails_every_whisper_in_it_and_keeps_none(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = SqliteStore(path)
    db = sqlite3.connect(path)  # a failure in the middle of the group's transaction
    db.execute(
        "CREATE TRIGGER poison BEFORE INSERT ON queue WHEN NEW.msg_id = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    )
    db.commit()
    db.close()
    calls: list[Callable[[], object]] = [
        lambda m=m, s=s: store.enqueue("bob", m, s, b"h", b"c", 1.0)  # type: ignore[misc]
        for m, s in [("first", "s0"), ("m1", "s1"), ("poison", "s2"), ("m3", "s3")]
    ]
    results, _ = in_groups(store, calls)
    assert isinstance(results[0], int)
    assert all(isinstance(r, StoreUnavailable) for r in results[1:])
    assert [q.msg_id for q in store.pending("bob")] == ["first"]  # nothing of the failed group
    store.enqueue("bob", "m1", "s1", b"h", b"c", 1.0)  # and the next one goes through
    assert [q.msg_id for q in store.pending("bob")] == ["first", "m1"]
    store.close()


def test_a_failed_or_closed_store_raises_store_unavailable_from_every_operation(backend: Backend) -> None:
    failed = backend.open()
    failed.fail("the data directory was deleted")
    closed = backend.open()
    closed.close()
    operations: list[Callable[[AnyStore], object]] = [
        lambda s: s.registered_key("bob"),
        lambda s: s.register("bob", b"k" * 32, 1.0),
        lambda s: s.publish("bob", IDENT, SPK, opks(1)),
        lambda s: s.take_bundle("bob"),
        lambda s: s.prekey_status("bob"),
        lambda s: s.enqueue("bob", "m", "alice", b"h", b"c", 1.0),
        lambda s: s.pending("bob"),
        lambda s: s.ack("bob", 1),
        lambda s: s.expire(1.0),
        lambda s: s.append_history([("#lobby", "a", "x", 1.0)], keep=5),
        lambda s: s.recent_history("#lobby", 5),
        lambda s: s.registered_rooms(),
        lambda s: s.register_room(StoredRoom("#dev", b"k" * 32)),
        lambda s: s.save_room(StoredRoom("#dev", b"k" * 32)),
        lambda s: s.drop_room_history("#dev"),
        lambda s: s.rename_user("bob", "bob2", b"k" * 32, 1.0),
        lambda s: s.has_queued("bob"),
    ]
    for store in (failed, closed):
        for operation in operations:
            with pytest.raises(StoreUnavailable):
                operation(store)
    failed.close()


def test_history_keeps_the_newest_lines_per_room(store: AnyStore) -> None:
    store.append_history([("#lobby", "a", f"l{i}", float(i)) for i in range(5)], keep=3)
    store.append_history([("#other", "b", "x", 9.0)], keep=3)
    assert store.recent_history("#lobby", 10) == [("a", "l2", 2.0), ("a", "l3", 3.0), ("a", "l4", 4.0)]
    assert store.recent_history("#lobby", 2) == [("a", "l3", 3.0), ("a", "l4", 4.0)]
    assert store.recent_history("#other", 10) == [("b", "x", 9.0)]
    store.append_history([], keep=3)


def test_a_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    from securechat.server.store import _MIGRATIONS

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(_MIGRATIONS[1])
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO users VALUES ('alice', 'alice', ?, 1.0)", (b"k" * 32,))
    db.commit()
    db.close()
    store = SqliteStore(path)
    assert store.registered_key("alice") == b"k" * 32  # old data kept
    store.append_history([("#lobby", "alice", "hi", 1.0)], keep=5)  # the new table exists
    store.close()
    version = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)


def test_whispers_queued_before_the_service_clock_keep_the_age_they_had(tmp_path: Path) -> None:
    from securechat.server.store import _MIGRATIONS

    path = tmp_path / "v2.sqlite"
    db = sqlite3.connect(path)
    db.executescript(_MIGRATIONS[1] + _MIGRATIONS[2])
    db.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    for msg_id, ts in (("older", 1000.0), ("newer", 1000.0 + 20 * 86_400)):
        db.execute(
            "INSERT INTO queue (recipient, msg_id, sender, header, ciphertext, ts) VALUES (?, ?, ?, ?, ?, ?)",
            ("bob", msg_id, "alice", b"h", b"c", ts),
        )
    db.commit()
    db.close()
    clocks = Clocks()
    clocks.wall = 1000.0 + 25 * 86_400  # "older" is 25 days old, "newer" 5 days
    store = clocks.store(path)
    clocks.mono += 6 * 86_400
    assert store.expire(30 * 86_400.0) == 1
    assert [q.msg_id for q in store.pending("bob")] == ["newer"]
    store.close()


LIMITS = QueueLimits(
    per_recipient=3, bytes_per_recipient=100, per_sender=4, bytes_per_sender=150, total_bytes=200
)


def refused(store: AnyStore, recipient: str, msg_id: str, sender: str, size: int) -> Quota | None:
    """The quota that refuses this whisper (of `size` bytes in all), or None if it was queued."""
    try:
        store.enqueue(recipient, msg_id, sender, b"h", b"c" * (size - 1), 1.0, limits=LIMITS)
    except QuotaExceeded as exc:
        return exc.quota
    return None


def test_queue_quotas_per_recipient_per_sender_and_in_total(store: AnyStore) -> None:
    assert [refused(store, "bob", f"a{n}", "alice", 10) for n in range(3)] == [None] * 3
    assert refused(store, "BOB", "a3", "alice", 10) is Quota.RECIPIENT_COUNT
    assert refused(store, "carol", "a4", "alice", 10) is None  # alice's 4th, to another recipient
    assert refused(store, "dave", "a5", "Alice", 10) is Quota.SENDER_COUNT  # across recipients
    assert refused(store, "carol", "m1", "mallory", 95) is Quota.RECIPIENT_BYTES  # 10 + 95 > 100
    assert refused(store, "dave", "m1", "mallory", 151) is Quota.SENDER_BYTES
    assert refused(store, "dave", "m1", "mallory", 100) is None
    assert refused(store, "erin", "t1", "trent", 61) is Quota.TOTAL_BYTES  # 140 + 61 > 200
    assert refused(store, "bob", "a0", "alice", 10) is None  # a resend is never refused
    assert len(store.pending("bob")) == 3 and store.pending("erin") == []
    store.ack("bob", store.pending("bob")[0].id)  # read: room again, for bob and for alice
    assert refused(store, "bob", "a6", "alice", 10) is None


def test_every_way_out_of_the_queue_gives_its_quota_back(backend: Backend) -> None:
    clocks = Clocks()
    store = backend.open(clocks)
    limits = QueueLimits(
        per_recipient=2, bytes_per_recipient=10**6, per_sender=10, bytes_per_sender=10**6, total_bytes=10**6
    )
    for n in range(2):
        store.enqueue("bob", f"m{n}", "alice", b"h", b"c", 1.0, limits=limits)
    store.ack("bob", store.pending("bob")[0].id, "no-session")  # failed
    clocks.mono += 100
    store.expire(50.0)  # expired
    store.register("bob", b"k" * 32, 1.0)
    for n in range(2):
        store.enqueue("bob", f"n{n}", "alice", b"h", b"c", 1.0, limits=limits)
    store.release("bob")  # released
    for n in range(2):
        store.enqueue("bob", f"o{n}", "alice", b"h", b"c", 1.0, limits=limits)
    with pytest.raises(QuotaExceeded):
        store.enqueue("bob", "o2", "alice", b"h", b"c", 1.0, limits=limits)


def test_whispers_queued_before_the_quotas_count_towards_them(tmp_path: Path) -> None:
    from securechat.server.store import _MIGRATIONS

    path = tmp_path / "v4.sqlite"
    db = sqlite3.connect(path)
    db.executescript("".join(_MIGRATIONS[v] for v in range(1, 5)))
    db.execute("INSERT INTO meta VALUES ('schema_version', '4')")
    for n in range(3):
        db.execute(
            "INSERT INTO queue (recipient, msg_id, sender, header, ciphertext, ts) VALUES (?, ?, ?, ?, ?, ?)",
            ("bob", f"m{n}", "alice", b"h", b"c" * 59, 1.0),
        )
    db.commit()
    db.close()
    store = SqliteStore(path)
    assert refused(store, "bob", "new", "carol", 10) is Quota.RECIPIENT_COUNT
    assert refused(store, "erin", "new", "carol", 30) is Quota.TOTAL_BYTES  # 180 + 30 > 200
    store.close()


def test_pending_pages_through_the_queue(store: AnyStore) -> None:
    ids = [store.enqueue("bob", f"m{n}", "alice", b"h", b"c", 1.0) for n in range(5)]
    store.enqueue("carol", "x", "alice", b"h", b"c", 1.0)
    assert store.newest_queued("Bob") == ids[-1] and store.newest_queued("nobody") == 0
    assert [q.id for q in store.pending("bob", limit=2)] == ids[:2]
    assert [q.id for q in store.pending("bob", after=ids[1], limit=2)] == ids[2:4]
    assert [q.id for q in store.pending("bob", after=ids[1], upto=ids[2])] == ids[2:3]
    assert [q.id for q in store.pending("bob", after=ids[3])] == ids[4:]


def test_one_time_prekeys_beyond_the_cap_are_dropped_but_the_signed_prekey_is_taken(
    store: AnyStore,
) -> None:
    store.publish("bob", IDENT, SPK, opks(1, 2, 3), max_held=4)
    newer = SignedPrekeyRecord(id=2, created=200, public=b"q" * 32, signature=b"y" * 64)
    store.publish("bob", IDENT, newer, opks(3, 4, 5, 6), max_held=4)  # 3 is held already
    assert store.prekey_status("bob") == PrekeyStatus(4, 2, 200)
    taken = [b.opk.id for b in (store.take_bundle("bob") for _ in range(4)) if b and b.opk]
    assert taken == [1, 2, 3, 4]


def test_a_bundle_can_be_taken_without_its_one_time_prekey(store: AnyStore) -> None:
    store.publish("bob", IDENT, SPK, opks(1))
    asked: list[bool] = []

    def no() -> bool:
        asked.append(False)
        return False

    bundle = store.take_bundle("bob", take_opk=no)
    assert bundle is not None and bundle.opk is None and bundle.spk == SPK and asked == [False]
    bundle = store.take_bundle("bob", take_opk=lambda: True)
    assert bundle is not None and bundle.opk is not None and bundle.opk.id == 1
    assert store.take_bundle("bob", take_opk=no) is not None and asked == [False]  # none left: not asked


def test_nicks_nobody_logs_in_to_expire_by_service_time_with_everything_they_held(backend: Backend) -> None:
    clocks = Clocks()
    store = backend.open(clocks)
    for nick in ("idle", "active", "online"):
        assert store.register(nick, nick.encode() * 8, clocks.wall)
    store.publish("idle", IDENT, SPK, opks(1))
    store.enqueue("idle", "m1", "active", b"h", b"c", 1.0)
    store.enqueue("active", "m2", "idle", b"h", b"c", 1.0)
    store.ack("active", store.pending("active")[0].id, "no-session")  # a failure for idle
    clocks.mono += 60
    assert store.register("active", b"active" * 8, clocks.wall)  # a login: used again
    clocks.wall += 10 * 86_400  # the wall clock decides nothing
    assert store.expire_nicks(100.0) == []
    clocks.mono += 50
    assert store.expire_nicks(100.0, keep=["Online"]) == ["idle"]  # 110 s; "active" 50 s
    assert store.registered_key("idle") is None and store.prekey_status("idle") == PrekeyStatus()
    assert store.pending("idle") == [] and store.failures("idle") == []
    assert store.registered_key("online") is not None
    clocks.mono += 60
    assert not store.release_if_idle("active", 200.0)
    assert store.release_if_idle("active", 100.0) and store.registered_key("active") is None
    assert not store.release_if_idle("active", 100.0)


def test_nicks_registered_before_logins_were_recorded_get_a_whole_period_from_the_upgrade(
    tmp_path: Path,
) -> None:
    from securechat.server.store import _MIGRATIONS

    path = tmp_path / "v4.sqlite"
    db = sqlite3.connect(path)
    db.executescript("".join(_MIGRATIONS[v] for v in range(1, 5)))
    db.execute("INSERT INTO meta VALUES ('schema_version', '4')")
    db.execute("INSERT INTO meta VALUES ('service_clock', '5000.0')")
    db.execute("INSERT INTO users VALUES ('alice', 'alice', ?, 1.0)", (b"k" * 32,))
    db.commit()
    db.close()
    clocks = Clocks()
    store = clocks.store(path)
    assert store.expire_nicks(100.0) == []
    clocks.mono += 101
    assert store.expire_nicks(100.0) == ["alice"]
    store.close()


def test_failures_told_at_a_login_and_kept_per_sender_are_bounded(store: AnyStore) -> None:
    for n in range(5):
        store.enqueue("bob", f"m{n}", "alice", b"h", b"c", 1.0)
        store.ack("bob", store.pending("bob")[0].id, "no-session", keep_failures=3)
    assert [f[1] for f in store.failures("alice")] == ["m2", "m3", "m4"]  # the newest kept
    assert [f[1] for f in store.failures("alice", limit=2)] == ["m2", "m3"]  # oldest first


def test_many_idle_nicks_expire_in_batches_all_of_them(backend: Backend) -> None:
    from securechat.server.store import _EXPIRE_BATCH

    clocks = Clocks()
    store = backend.open(clocks)
    nicks = [f"n{i}" for i in range(2 * _EXPIRE_BATCH + 7)]
    for nick in nicks:
        assert store.register(nick, nick.encode().ljust(32, b"."), clocks.wall)
    clocks.mono += 200
    assert sorted(store.expire_nicks(100.0, keep=["n3"])) == sorted(n for n in nicks if n != "n3")
    assert store.registered_key("n3") is not None


ALICE, BOB, CAROL = b"a" * 32, b"b" * 32, b"c" * 32
DEV = StoredRoom(
    name="#Dev",
    owner_key=ALICE,
    topic="builds and breakage",
    invite_only=True,
    operators=frozenset({BOB, CAROL}),
    bans=(
        StoredBan(kind="key", value=b"m" * 32, shown="mallory", by="alice"),
        StoredBan(kind="pattern", value="troll*", shown="Troll*", by="bob"),
    ),
)


def test_a_registered_room_with_its_operators_and_bans_survives_reopening(backend: Backend) -> None:
    store = backend.open()
    assert store.registered_rooms() == []
    assert store.register_room(DEV)
    assert store.register_room(StoredRoom("#ops", BOB))
    store.close()
    store = backend.open()
    dev, ops = store.registered_rooms()
    assert dev == DEV  # name as registered, key bans as bytes, pattern bans as text, in order
    assert ops == StoredRoom("#ops", BOB, topic="", invite_only=False, operators=frozenset(), bans=())
    store.close()


def test_a_room_is_registered_once_whatever_the_case_of_its_name(store: AnyStore) -> None:
    assert store.register_room(DEV)
    assert not store.register_room(StoredRoom("#dEV", BOB, topic="mine now"))
    assert store.registered_rooms() == [DEV]


def test_save_room_replaces_settings_operators_and_bans_together(backend: Backend) -> None:
    clocks = Clocks()
    store = backend.open(clocks)
    store.register_room(DEV)
    clocks.wall += 3600
    kept, _ = DEV.bans  # the other ban is lifted
    new_ban = StoredBan(kind="pattern", value="spam?", shown="spam?", by="carol")
    changed = StoredRoom(
        name="#dev",  # any case names the same room
        owner_key=BOB,  # handed over
        topic="",
        invite_only=False,
        operators=frozenset({ALICE}),
        bans=(new_ban, kept),
    )
    store.save_room(changed)
    store.close()
    store = backend.open(clocks)
    assert store.registered_rooms() == [changed]
    store.close()
    set_at = {
        # PostgreSQL keeps a ban's mask as UTF-8 bytes (text cannot hold every string).
        bytes(shown).decode() if isinstance(shown, (bytes, memoryview)) else shown: created
        for shown, created in backend.execute("SELECT shown, created FROM room_bans")
    }
    assert set_at == {"mallory": clocks.wall - 3600, "spam?": clocks.wall}  # a kept ban keeps its time


def test_saving_a_room_that_is_not_registered_is_refused(store: AnyStore) -> None:
    with pytest.raises(KeyError):
        store.save_room(DEV)
    assert store.registered_rooms() == []


def test_history_is_per_room_case_insensitively_and_can_be_dropped(store: AnyStore) -> None:
    store.append_history([("#Dev", "a", "one", 1.0), ("#ops", "b", "two", 2.0)], keep=5)
    store.append_history([("#dev", "a", "three", 3.0)], keep=5)
    assert store.recent_history("#DEV", 5) == [("a", "one", 1.0), ("a", "three", 3.0)]
    store.drop_room_history("#dEv")
    assert store.recent_history("#dev", 5) == []
    assert store.recent_history("#ops", 5) == [("b", "two", 2.0)]


def test_has_queued_says_whether_anything_waits_for_a_recipient(store: AnyStore) -> None:
    assert not store.has_queued("bob")
    whisper_id = store.enqueue("bob", "m1", "alice", b"h", b"c", 1.0)
    assert store.has_queued("Bob") and not store.has_queued("alice")
    store.ack("bob", whisper_id)
    assert not store.has_queued("bob")


def registered_alice(store: AnyStore) -> None:
    """alice registered to ALICE, with a bundle, one-time prekeys and a failure to be told."""
    assert store.register("alice", ALICE, 1.0)
    store.publish("alice", IDENT, SPK, opks(1, 2))
    store.enqueue("bob", "m1", "alice", b"h", b"c", 1.0)
    store.ack("bob", store.pending("bob")[0].id, "no-session")


def test_a_rename_moves_the_registration_and_failures_and_drops_the_old_keys(backend: Backend) -> None:
    clocks = Clocks()
    store = backend.open(clocks)
    registered_alice(store)
    store.publish("alice", IDENT, SPK, (), kpk=kpk(5), kopks=kopks(6, 7))
    assert store.prekey_status("alice").kem_count == 2
    store.register("carol", CAROL, 1.0)
    clocks.mono += 80
    assert store.rename_user("Alice", "Alice2", ALICE, clocks.wall) is RenameResult.DONE
    assert store.registered_key("alice") is None and store.registered_key("alice2") == ALICE
    assert store.prekey_status("alice") == PrekeyStatus() and store.take_bundle("alice") is None
    assert store.failures("alice2") == [("bob", "m1", "no-session")] and store.failures("alice") == []
    assert store.register("alice", BOB, clocks.wall)  # the old nick is free at once
    clocks.mono += 80  # 160 s since carol's login, 80 s since the rename
    assert store.expire_nicks(100.0) == ["carol"]  # the rename counts as a use of the new nick
    store.close()
    assert backend.execute("SELECT nick, registered FROM users WHERE nick_key='alice2'") == [
        ("Alice2", clocks.wall)
    ]


def alice_state(store: AnyStore) -> tuple[object, ...]:
    return (
        store.registered_key("alice"),
        store.registered_key("alice2"),
        store.prekey_status("alice"),
        store.failures("alice"),
        store.failures("alice2"),
    )


@pytest.mark.parametrize(
    ("old", "new", "key", "why"),
    [
        ("alice", "alice2", ALICE, RenameResult.NEW_REGISTERED),  # to carol
        ("alice", "dave", BOB, RenameResult.NOT_YOURS),  # alice is not registered to that key
        ("nobody", "dave", ALICE, RenameResult.NOT_YOURS),  # nobody is not registered
        ("alice", "ALICE", ALICE, RenameResult.NEW_REGISTERED),  # the same nick
    ],
)
def test_a_refused_rename_changes_nothing(
    store: AnyStore, old: str, new: str, key: bytes, why: RenameResult
) -> None:
    registered_alice(store)
    store.register("alice2", CAROL, 1.0)
    before = alice_state(store)
    assert store.rename_user(old, new, key, 2.0) is why
    assert alice_state(store) == before
    assert store.registered_key("dave") is None and store.registered_key("ALICE") == ALICE


def test_a_rename_is_refused_while_whispers_wait_for_the_old_nick(store: AnyStore) -> None:
    registered_alice(store)
    store.enqueue("alice", "w", "bob", b"h", b"c", 1.0)
    assert store.rename_user("alice", "alice2", ALICE, 2.0) is RenameResult.QUEUED
    assert store.registered_key("alice") == ALICE and store.registered_key("alice2") is None
    assert store.pending("alice")[0].msg_id == "w"


def test_a_rename_that_fails_half_way_leaves_everything_as_it_was(backend: Backend, store: AnyStore) -> None:
    registered_alice(store)
    before = alice_state(store)
    # A fault at the last step, after the registration moved and the keys were deleted.
    with backend.failing_updates("failures", "I/O error"), pytest.raises(StoreUnavailable, match="I/O error"):
        store.rename_user("alice", "alice2", ALICE, 2.0)
    assert alice_state(store) == before
    assert store.rename_user("alice", "alice2", ALICE, 2.0) is RenameResult.DONE  # nothing left in the way


def test_a_room_stays_its_owners_and_operators_when_their_nicks_go(backend: Backend) -> None:
    clocks = Clocks()
    store = backend.open(clocks)
    store.register("alice", ALICE, clocks.wall)
    store.register("bob", BOB, clocks.wall)
    store.register_room(DEV)
    assert store.rename_user("bob", "robert", BOB, clocks.wall) is RenameResult.DONE
    clocks.mono += 200
    assert sorted(store.expire_nicks(100.0)) == ["alice", "robert"]
    assert store.registered_rooms() == [DEV]  # rooms are by key


def test_a_version_7_database_is_migrated_to_rooms_with_nothing_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v7.sqlite"
    with monkeypatch.context() as patch:  # the current code, stopping at schema 7
        patch.setattr(store_module, "SCHEMA_VERSION", 7)
        patch.setattr(store_module, "_publish_kem", lambda *args: None)  # schema 7 had no KEM prekeys
        old = SqliteStore(path)
        registered_alice(old)
        old.enqueue("alice", "w", "bob", b"h", b"c", 1.0)
        old.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("7",)
    assert db.execute("SELECT name FROM sqlite_master WHERE name='rooms'").fetchone() is None
    # Before rooms, history kept the room name as configured.
    db.execute("INSERT INTO history (room, nick, text, ts) VALUES ('#Lobby', 'bob', 'hi', 5.0)")
    db.commit()
    db.close()

    store = SqliteStore(path)
    assert store.registered_key("alice") == ALICE
    assert store.prekey_status("alice") == PrekeyStatus(2, 1, 100)
    assert [q.msg_id for q in store.pending("alice")] == ["w"]
    assert store.failures("alice") == [("bob", "m1", "no-session")]
    assert store.recent_history("#lobby", 5) == [("bob", "hi", 5.0)]
    assert store.registered_rooms() == []
    assert store.register_room(DEV) and store.registered_rooms() == [DEV]
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    db.close()


@needs_root
def test_saving_a_room_on_a_full_disk_raises_store_unavailable_and_changes_nothing(small_disk: Path) -> None:
    store = SqliteStore(small_disk / "data" / "db.sqlite")
    store.register_room(DEV)
    bans = tuple(StoredBan("pattern", f"guest{n}*", f"guest{n}*" + "." * 200, "alice") for n in range(200))
    bigger = StoredRoom("#Dev", ALICE, topic="more bans", bans=bans)
    filler = fill(small_disk)
    with pytest.raises(StoreUnavailable, match="full"):
        store.save_room(bigger)
    assert store.registered_rooms() == [DEV]
    filler.unlink()
    store.save_room(bigger)  # space is back: the next try works, nothing to reopen
    store.close()
    store = SqliteStore(small_disk / "data" / "db.sqlite")
    assert store.registered_rooms() == [bigger]
    store.close()


def usage(backend: Backend) -> dict[str, int]:
    """The queue's per-sender counts as the quotas see them."""
    return dict(backend.execute("SELECT who, count FROM queue_usage WHERE who LIKE 'from:%'"))


def test_a_rename_moves_the_renamers_outgoing_whispers_and_their_quota(
    backend: Backend, store: AnyStore
) -> None:
    # dave whispers erin, who is offline; dave renames; a stranger then registers `dave`.
    assert store.register("dave", BOB, 1.0) and store.register("erin", CAROL, 1.0)
    whisper_id = store.enqueue("erin", "m1", "dave", b"h", b"c", 1.0)
    assert store.rename_user("dave", "dave2", BOB, 2.0) is RenameResult.DONE
    assert usage(backend) == {"from:dave2": 1}
    assert store.register("dave", ALICE, 3.0)
    done = store.ack("erin", whisper_id, "no-session")
    assert done is not None and done.sender == "dave2"  # told to dave2, not to the new `dave`
    assert store.failures("dave2") == [("erin", "m1", "no-session")] and store.failures("dave") == []
    assert usage(backend) == {}


def test_a_rename_drops_whispers_left_under_the_new_nick(backend: Backend, store: AnyStore) -> None:
    # Rows sent as `dave2` by nobody registered now (a guest cannot whisper; an old
    # release could have left them): they are not the renamer's, and would collide.
    assert store.register("dave", BOB, 1.0) and store.register("erin", CAROL, 1.0)
    store.enqueue("erin", "m1", "dave", b"h", b"c", 1.0)
    backend.execute(
        "INSERT INTO queue (recipient, msg_id, sender, header, ciphertext, ts) "
        "VALUES ('erin', 'm1', 'dave2', ?, ?, 1.0)",
        (b"\x00", b"\x00"),
    )
    assert store.rename_user("dave", "dave2", BOB, 2.0) is RenameResult.DONE
    assert [(q.sender, q.header) for q in store.pending("erin")] == [("dave2", b"h")]
    assert usage(backend) == {"from:dave2": 1}


def test_releasing_a_nick_drops_its_outgoing_whispers_too(backend: Backend, store: AnyStore) -> None:
    # Else the next identity to register `dave` would be told what became of them.
    assert store.register("dave", BOB, 1.0) and store.register("erin", CAROL, 1.0)
    store.enqueue("erin", "m1", "dave", b"h", b"c", 1.0)
    assert store.release("dave")
    assert store.pending("erin") == [] and usage(backend) == {}


def test_registering_a_room_can_drop_an_older_rooms_lines_in_the_same_transaction(store: AnyStore) -> None:
    store.append_history([("#dev", "a", "an older #dev's line", 1.0), ("#ops", "b", "kept", 2.0)], keep=5)
    assert store.register_room(DEV, drop_history=True)
    assert store.recent_history("#dev", 5) == [] and store.recent_history("#ops", 5) == [("b", "kept", 2.0)]
    store.append_history([("#dev", "a", "its own", 3.0)], keep=5)
    assert not store.register_room(DEV, drop_history=True)  # registered already: nothing dropped
    assert store.recent_history("#dev", 5) == [("a", "its own", 3.0)]


def test_rooms_whose_owner_key_has_not_logged_in_for_the_ttl_are_released(backend: Backend) -> None:
    clocks = Clocks()
    store = backend.open(clocks)
    owners = {"#idle": b"i" * 32, "#used": b"u" * 32, "#online": b"o" * 32, "#lobby": b"l" * 32}
    for room, key in owners.items():
        store.register(room[1:], key, clocks.wall)  # a nick registered to each owner key
        assert store.register_room(StoredRoom(room, key))
    store.append_history([("#idle", "idle", "a line", 1.0), ("#lobby", "lobby", "kept", 1.0)], keep=10)
    assert store.register_room(StoredRoom("#orphan", b"x" * 32))  # no nick holds its key any more
    clocks.mono += 60
    store.register("used2", owners["#used"], clocks.wall)  # another nick of the same key logs in
    clocks.wall += 10 * 86_400  # the wall clock decides nothing
    assert store.expire_rooms(100.0) == ["#orphan"]
    clocks.mono += 50
    released = store.expire_rooms(100.0, keep_owners=[owners["#online"]], keep_history=["#LOBBY"])
    assert sorted(released) == ["#idle", "#lobby"]
    assert sorted(r.name for r in store.registered_rooms()) == ["#online", "#used"]
    assert store.recent_history("#idle", 10) == [] and len(store.recent_history("#lobby", 10)) == 1
    assert store.release_room("#USED") and not store.release_room("#used")
    assert [r.name for r in store.registered_rooms()] == ["#online"]


def test_whispers_and_acks_read_together_take_one_commit_each_with_a_refusal_of_their_own(
    store: AnyStore,
) -> None:
    limits = QueueLimits(
        per_recipient=10, bytes_per_recipient=10**6, per_sender=2, bytes_per_sender=10**6, total_bytes=10**6
    )
    store.register("bob", b"b" * 32, 1.0)
    # One commit each: seen in SQLite's statements. (PostgresStore runs each call as one
    # transaction of its own, with no group commit to count.)
    statements: list[str] = []
    sqlite = isinstance(store, SqliteStore)
    if sqlite:
        store._db.set_trace_callback(statements.append)
    outcomes = store.enqueue_many(
        [
            NewWhisper("bob", "m1", "alice", b"h", b"c", 1.0),
            NewWhisper("ghost", "m2", "alice", b"h", b"c", 1.0),  # nobody is registered as ghost
            NewWhisper("bob", "m1", "alice", b"h", b"c", 1.0),  # the same again: the same id
            NewWhisper("bob", "m3", "alice", b"h", b"c", 1.0),
            NewWhisper("bob", "m4", "alice", b"h", b"c", 1.0),  # a third from alice: over her quota
        ],
        limits=limits,
        registered_only=True,
    )
    assert statements.count("COMMIT") == (1 if sqlite else 0)
    first, unknown, again, third, over = outcomes
    assert isinstance(first, int) and again == first and isinstance(third, int)
    assert isinstance(unknown, UnknownRecipient)
    assert isinstance(over, QuotaExceeded) and over.quota is Quota.SENDER_COUNT
    assert [q.msg_id for q in store.pending("bob")] == ["m1", "m3"]
    statements.clear()
    done = store.ack_many("bob", [(first, ""), (12345, ""), (third, "undecryptable")])
    assert statements.count("COMMIT") == (1 if sqlite else 0)
    assert [d.msg_id if d else None for d in done] == ["m1", None, "m3"]
    assert store.pending("bob") == [] and store.failures("alice") == [("bob", "m3", "undecryptable")]
    if isinstance(store, SqliteStore):
        store._db.set_trace_callback(None)


def test_a_group_of_many_callers_takes_a_fixed_number_of_statements(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    # The leading thread gives up the GIL at every statement; under load each one cost
    # it a wait far longer than SQLite's work, so a group's statements must not grow
    # with its whispers and acks.
    for nick in ("bob", "carol"):
        store.register(nick, nick[0].encode() * 32, 1.0)
    acked = [store.enqueue("bob", f"old{i}", "alice", b"h", b"c", 1.0) for i in range(6)]
    statements: list[str] = []

    def trace(statement: str) -> None:
        if statement == "BEGIN IMMEDIATE":
            statements.clear()
        statements.append(statement)

    limits = QueueLimits(
        per_recipient=100,
        bytes_per_recipient=10**6,
        per_sender=100,
        bytes_per_sender=10**6,
        total_bytes=10**6,
    )
    calls: list[Callable[[], object]] = [lambda: store.enqueue("carol", "first", "dave", b"h", b"c", 1.0)]
    calls += [
        lambda s=s: store.enqueue_many(  # type: ignore[misc]
            [NewWhisper(to, f"m{n}", s, b"h", b"c", 2.0) for to in ("bob", "carol") for n in range(5)],
            limits=limits,
            registered_only=True,
        )
        for s in ("erin", "frank", "gina")
    ]
    calls += [lambda: store.ack_many("bob", [(i, "") for i in acked])]
    store._db.set_trace_callback(trace)
    results, returned_at_commit = in_groups(store, calls)
    store._db.set_trace_callback(None)
    assert returned_at_commit == [0, 1]  # the first alone, then everything else in one
    # 30 whispers and 6 acks in the second group, in a handful of statements.
    assert len(statements) <= 10, statements
    assert all(isinstance(r, list) and all(isinstance(i, int) for i in r) for r in results[1:4])
    acks = results[4]
    assert isinstance(acks, list) and len(acks) == 6 and all(q is not None for q in acks)
    assert len(store.pending("bob")) == 15 and len(store.pending("carol")) == 16


def test_a_group_keeps_each_senders_order_and_never_reuses_an_id(store: AnyStore) -> None:
    store.register("bob", b"b" * 32, 1.0)
    top = store.enqueue("bob", "top", "alice", b"h", b"c", 1.0)
    store.ack("bob", top)  # the highest id is gone: AUTOINCREMENT never gives it again
    outcomes = store.enqueue_many([NewWhisper("bob", f"m{n}", "alice", b"h", b"c", 1.0) for n in range(5)])
    ids = [i for i in outcomes if isinstance(i, int)]
    assert len(ids) == 5 and min(ids) > top and ids == sorted(ids)
    assert [q.msg_id for q in store.pending("bob")] == [f"m{n}" for n in range(5)]
    assert store.enqueue("bob", "later", "alice", b"h", b"c", 1.0) > max(ids)


def test_a_resend_in_a_batch_is_not_counted_against_the_quota(store: AnyStore) -> None:
    limits = QueueLimits(
        per_recipient=10, bytes_per_recipient=10**6, per_sender=2, bytes_per_sender=10**6, total_bytes=10**6
    )
    first = store.enqueue("bob", "m1", "alice", b"h", b"c", 1.0, limits=limits)
    outcomes = store.enqueue_many(
        [
            NewWhisper("bob", "m1", "alice", b"h", b"c", 1.0),  # queued already: its id, free
            NewWhisper("bob", "m1", "alice", b"h", b"c", 1.0),  # and again in the same batch
            NewWhisper("bob", "m2", "alice", b"h", b"c", 1.0),  # the second of two allowed
            NewWhisper("bob", "m2", "alice", b"h", b"c", 1.0),  # a repeat of a new one: its id
            NewWhisper("bob", "m3", "alice", b"h", b"c", 1.0),  # the third: over the quota
        ],
        limits=limits,
    )
    assert outcomes[:2] == [first, first]
    assert isinstance(outcomes[2], int) and outcomes[3] == outcomes[2]
    assert isinstance(outcomes[4], QuotaExceeded) and outcomes[4].quota is Quota.SENDER_COUNT
    assert [q.msg_id for q in store.pending("bob")] == ["m1", "m2"]


def test_an_ack_in_a_group_removes_only_its_own_recipients_whispers(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    to_bob = store.enqueue("bob", "m1", "alice", b"h", b"c", 1.0)
    to_carol = store.enqueue("carol", "m1", "alice", b"h", b"c", 1.0)
    calls: list[Callable[[], object]] = [
        lambda: store.enqueue("dave", "x", "erin", b"h", b"c", 1.0),
        lambda: store.ack_many("carol", [(to_bob, ""), (to_carol, "")]),  # one is bob's
        lambda: store.ack_many("bob", [(to_bob, "no-session"), (to_bob, "")]),  # acked twice
    ]
    results, _ = in_groups(store, calls)
    carols, bobs = results[1], results[2]
    assert isinstance(carols, list) and carols[0] is None and carols[1] is not None
    assert isinstance(bobs, list) and bobs[0] is not None and bobs[1] is None
    assert store.pending("bob") == [] and store.pending("carol") == []
    assert store.failures("alice") == [("bob", "m1", "no-session")]


# -- linked devices ----------------------------------------------------------------------


def test_a_device_list_only_goes_forward(store: AnyStore) -> None:
    assert store.device_list("alice") is None
    assert store.set_device_list("Alice", 2, b"list v2", ())
    assert store.device_list("alice") == (2, b"list v2")
    assert not store.set_device_list("alice", 2, b"another v2", ())  # same version: refused
    assert not store.set_device_list("alice", 1, b"list v1", ())  # older: refused
    assert store.device_list("ALICE") == (2, b"list v2")
    assert store.set_device_list("alice", 3, b"list v3", ())


def test_a_linked_devices_mailbox_holds_its_keys_and_whispers_apart(store: AnyStore) -> None:
    assert store.register("bob", b"k" * 32, 1.0)
    phone = mailbox("bob", "Phone")
    assert phone == "bob/phone"
    store.publish(phone, IDENT, SPK, opks(1))
    store.publish("bob", IDENT, SPK, opks(2))
    # Queued for a registered person's device: accepted (the owner is registered).
    store.enqueue(phone, "m1", "alice", b"h", b"c", 1.0, registered_only=True)
    store.enqueue("bob", "m1", "alice", b"h", b"c", 1.0, registered_only=True)
    with pytest.raises(UnknownRecipient):
        store.enqueue(mailbox("nobody", "x"), "m1", "alice", b"h", b"c", 1.0, registered_only=True)
    assert [q.recipient for q in store.pending(phone)] == ["bob/phone"]
    assert [q.recipient for q in store.pending("bob")] == ["bob"]
    taken = store.take_bundle(phone)
    assert taken is not None and taken.opk is not None and taken.opk.id == 1


def test_removing_a_device_forgets_its_keys_and_queue_and_nothing_else(store: AnyStore) -> None:
    assert store.register("bob", b"k" * 32, 1.0)
    for box in (mailbox("bob", "phone"), mailbox("bob", "tablet"), "bob"):
        store.publish(box, IDENT, SPK, opks(1))
        store.enqueue(box, "m1", "alice", b"h", b"c", 1.0)
    assert store.set_device_list("bob", 2, b"without the phone", ["phone"])
    assert store.pending(mailbox("bob", "phone")) == [] and store.take_bundle(mailbox("bob", "phone")) is None
    assert len(store.pending(mailbox("bob", "tablet"))) == 1 and len(store.pending("bob")) == 1


def test_releasing_a_nick_forgets_its_linked_devices_too(store: AnyStore) -> None:
    assert store.register("a_b", b"k" * 32, 1.0)
    assert store.register("axb", b"j" * 32, 1.0)  # "_" is no wildcard: left alone
    for box in (mailbox("a_b", "phone"), mailbox("axb", "phone")):
        store.publish(box, IDENT, SPK, opks(1))
        store.enqueue(box, "m1", "carol", b"h", b"c", 1.0)
    store.enqueue("carol", "m2", mailbox("a_b", "phone"), b"h", b"c", 1.0)  # sent by the device
    assert store.set_device_list("a_b", 1, b"list", ())
    assert store.release("a_b")
    assert store.device_list("a_b") is None
    assert store.pending(mailbox("a_b", "phone")) == [] and store.pending("carol") == []
    assert store.take_bundle(mailbox("a_b", "phone")) is None
    assert len(store.pending(mailbox("axb", "phone"))) == 1
