"""PostgresStore's own tests: what only a shared database can get wrong (several
stores, as several server processes, at once), its schema, and the database server
going away. The Store contract itself runs against it in test_server_store.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

psycopg = pytest.importorskip(
    "psycopg", reason="the cluster extra is not installed: pip install -e '.[cluster]'"
)

from pg_server import PgServer  # noqa: E402

from securechat.protocol import KeyIdentity, OneTimePrekeyRecord, SignedPrekeyRecord  # noqa: E402
from securechat.server.pgstore import PG_SCHEMA_VERSION, PostgresStore  # noqa: E402
from securechat.server.store import (  # noqa: E402
    QueueLimits,
    Quota,
    QuotaExceeded,
    StoredBan,
    StoredRoom,
    StoreUnavailable,
)

# Wait limits: generous for a slow CI machine; a passing test never waits this long,
# since every wait ends on the event it waits for.
TIMEOUT = 30.0

IDENT = KeyIdentity(sig_key=b"s" * 32, dh_key=b"d" * 32, dh_sig=b"g" * 64)
SPK = SignedPrekeyRecord(id=1, created=100, public=b"p" * 32, signature=b"x" * 64)


def opks(*ids: int) -> tuple[OneTimePrekeyRecord, ...]:
    return tuple(OneTimePrekeyRecord(id=i, public=i.to_bytes(32, "big"), signature=b"o" * 64) for i in ids)


@pytest.fixture
def stores(pg_dsn: str) -> Iterator[Callable[..., PostgresStore]]:
    """Opens PostgresStores on this test's database (each with a pool of its own, as a
    server process has); closes them at teardown and checks none left a thread behind."""
    baseline = set(threading.enumerate())
    opened: list[PostgresStore] = []

    def open_store(**kwargs: object) -> PostgresStore:
        store = PostgresStore(pg_dsn, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()
    leaked = [t for t in threading.enumerate() if t not in baseline and t.is_alive()]
    assert not leaked, leaked


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run `target(i)` for i in range(count), each on a thread of its own, all started
    together; re-raise the first exception any of them raised."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait(TIMEOUT)
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"pgstore-test-{i}") for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "threads still running"
    if errors:
        raise errors[0]


@dataclass
class Fetches:
    """What concurrent fetches of one bundle got, in the order they returned."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    handed_out: list[int] = field(default_factory=list)
    #: Set when the first fetch that found none left has returned.
    empty_seen: threading.Event = field(default_factory=threading.Event)
    #: Prekeys handed out by fetches that started after `empty_seen` was set.
    after_empty: list[int] = field(default_factory=list)
    #: What `prekey_status` said right after a fetch found none (each should be 0).
    left_when_empty: list[int] = field(default_factory=list)
    declined: int = 0


@pytest.mark.parametrize("declining", [False, True], ids=["all-take", "some-decline"])
def test_one_time_prekeys_go_out_once_each_to_fetches_from_three_processes(
    stores: Callable[..., PostgresStore], declining: bool
) -> None:
    # 3 stores (3 server processes) x 8 threads fetch bob's bundle at once until each
    # finds no one-time prekey left. With `declining`, every other time a fetch is
    # offered one its limits say no (the prekey stays): another fetch must still get
    # it, not be told there is none.
    processes = [stores(max_size=8) for _ in range(3)]
    processes[0].publish("bob", IDENT, SPK, opks(*range(1, 201)))
    assert processes[0].prekey_status("bob").count == 200
    seen = Fetches()

    def fetch_until_empty(i: int) -> None:
        store = processes[i % 3]
        offered = 0
        while True:
            asked = False

            def limits() -> bool:
                nonlocal asked, offered
                asked, offered = True, offered + 1
                return not (declining and offered % 2 == 0)

            started_after_empty = seen.empty_seen.is_set()
            bundle = store.take_bundle("bob", take_opk=limits)
            assert bundle is not None and bundle.spk == SPK and bundle.identity == IDENT
            if bundle.opk is not None:
                assert asked
                with seen.lock:
                    seen.handed_out.append(bundle.opk.id)
                    if started_after_empty:
                        seen.after_empty.append(bundle.opk.id)
                continue
            if asked:  # offered one, and declined it
                with seen.lock:
                    seen.declined += 1
                continue
            # None left: it was not even offered one.
            left = store.prekey_status("bob").count
            with seen.lock:
                seen.left_when_empty.append(left)
            seen.empty_seen.set()
            return

    run_threads(24, fetch_until_empty)
    assert len(seen.handed_out) == len(set(seen.handed_out)), "a one-time prekey was handed out twice"
    assert sorted(seen.handed_out) == list(range(1, 201)), "not every one-time prekey was handed out"
    assert seen.left_when_empty == [0] * 24  # "none" was said only once none was left ...
    assert seen.after_empty == []  # ... and no fetch after it found one
    assert (seen.declined > 0) is declining
    assert processes[1].prekey_status("bob").count == 0


def test_a_database_with_a_newer_schema_is_refused_and_left_as_it_is(
    stores: Callable[..., PostgresStore], pg_dsn: str
) -> None:
    stores().close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(PG_SCHEMA_VERSION + 1),))
    with pytest.raises(ValueError, match="newer"):
        stores()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert row == (str(PG_SCHEMA_VERSION + 1),)  # nothing migrated, nothing rewritten
    # (The `stores` fixture checks at teardown that the refused store left no thread.)


def test_stores_opening_an_empty_database_at_once_create_the_schema_once(
    stores: Callable[..., PostgresStore], pg_dsn: str
) -> None:
    opened: list[PostgresStore] = []
    lock = threading.Lock()

    def open_one(_: int) -> None:
        store = stores(min_size=1, max_size=2)
        with lock:
            opened.append(store)

    run_threads(4, open_one)
    assert len(opened) == 4
    assert opened[0].register("alice", b"k" * 32, 1.0) and opened[3].registered_key("ALICE") == b"k" * 32
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    assert rows == [(str(PG_SCHEMA_VERSION),)]


def test_quotas_hold_against_writers_in_three_processes(stores: Callable[..., PostgresStore]) -> None:
    # Without one lock over the check and the insert, concurrent writers would each see
    # room for one more and together queue far beyond the quota.
    limits = QueueLimits(
        per_recipient=50,
        bytes_per_recipient=10**6,
        per_sender=10**6,
        bytes_per_sender=10**6,
        total_bytes=10**6,
    )
    processes = [stores() for _ in range(3)]
    outcomes: list[object] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        store = processes[i % 3]
        for n in range(10):
            try:
                result: object = store.enqueue("bob", f"m{n}", f"s{i}", b"h", b"c", 1.0, limits=limits)
            except QuotaExceeded as exc:
                result = exc.quota
            with lock:
                outcomes.append(result)

    run_threads(24, write)
    accepted = [o for o in outcomes if isinstance(o, int)]
    assert len(accepted) == 50 and len(set(accepted)) == 50
    assert outcomes.count(Quota.RECIPIENT_COUNT) == 240 - 50
    assert sorted(q.id for q in processes[0].pending("bob")) == sorted(accepted)


def test_a_reader_paging_while_three_processes_write_misses_no_whisper(
    stores: Callable[..., PostgresStore],
) -> None:
    # Ids are committed in the order they are given out: a reader that has seen id N
    # never finds a whisper below N appear later (its `pending(after=N)` would skip it).
    writers = [stores() for _ in range(3)]
    reader = stores()
    done = threading.Event()
    read: list[int] = []
    pages_while_writing = 0  # non-empty pages read before the writers finished

    def write(i: int) -> None:
        for n in range(40):
            writers[i % 3].enqueue("bob", f"m{n}", f"s{i}", b"h", b"c", 1.0)

    def read_pages() -> None:
        nonlocal pages_while_writing
        last = 0
        while True:
            finished = done.is_set()  # read once more after the writers are done
            page = reader.pending("bob", after=last)
            if page and not finished:
                pages_while_writing += 1
            read.extend(q.id for q in page)
            last = max([last, *(q.id for q in page)])
            if finished:
                return

    paging = threading.Thread(target=read_pages)
    paging.start()
    try:
        run_threads(12, write)
    finally:
        done.set()
        paging.join(TIMEOUT)
    assert not paging.is_alive()
    everything = [q.id for q in reader.pending("bob")]
    assert len(everything) == 12 * 40
    assert read == everything  # each once, in order, none skipped
    # Not a run where the reader only read after the writes: it paged while they went on.
    assert pages_while_writing >= 2, pages_while_writing


def test_free_text_with_nul_characters_is_kept(stores: Callable[..., PostgresStore]) -> None:
    # The protocol allows NUL in a line, a topic or a ban mask; PostgreSQL's text type
    # cannot hold it, so a store keeping them as text would fail every later history
    # write of that room.
    store = stores()
    store.append_history([("#Dev", "alice", "a\x00b", 1.0)], keep=5)
    assert store.recent_history("#dev", 5) == [("alice", "a\x00b", 1.0)]
    room = StoredRoom(
        "#Dev", b"o" * 32, topic="t\x00pic", bans=(StoredBan("pattern", "x\x00*", "x\x00*", "alice"),)
    )
    assert store.register_room(room)
    assert store.registered_rooms() == [room]


@dataclass
class Writer:
    """One writer thread's record: which whispers were stored (their ids), and what the
    store raised."""

    stored: dict[str, int] = field(default_factory=dict)
    unavailable: int = 0
    unexpected: list[BaseException] = field(default_factory=list)
    #: Set once this writer has stored a few (before the outage), seen the outage, and
    #: stored again (after it).
    warmed_up: threading.Event = field(default_factory=threading.Event)
    saw_outage: threading.Event = field(default_factory=threading.Event)
    recovered: threading.Event = field(default_factory=threading.Event)


@pytest.mark.parametrize("how", ["immediate", "kill9"])
def test_the_database_server_going_down_mid_use_fails_calls_until_it_is_back_and_loses_nothing(
    stores: Callable[..., PostgresStore], postgres_server: PgServer, how: str
) -> None:
    store = stores()
    store.register("bob", b"b" * 32, 1.0)
    stop = threading.Event()
    outage = threading.Event()  # set once the server is down
    back = threading.Event()  # set once it is running again
    writers = [Writer() for _ in range(4)]

    def write(i: int) -> None:
        me = writers[i]
        n = 0
        while not stop.is_set():
            msg_id = f"w{i}-{n}"
            try:
                # A whisper that failed is sent again with the same id, as a client does:
                # if its commit was kept after all, the store gives its id back.
                me.stored[msg_id] = store.enqueue("bob", msg_id, f"s{i}", b"h", b"c", 1.0)
            except StoreUnavailable:
                me.unavailable += 1
                if outage.is_set():
                    me.saw_outage.set()
                continue
            except BaseException as exc:
                me.unexpected.append(exc)
                return
            n += 1
            if n >= 5:
                me.warmed_up.set()
            if back.is_set() and me.saw_outage.is_set():
                me.recovered.set()

    threads = [threading.Thread(target=write, args=(i,), name=f"pgstore-writer-{i}") for i in range(4)]
    for t in threads:
        t.start()
    try:
        assert all(w.warmed_up.wait(TIMEOUT) for w in writers)
        if how == "immediate":
            postgres_server.stop("immediate")
        else:
            postgres_server.kill9()
        outage.set()
        assert all(w.saw_outage.wait(TIMEOUT) for w in writers)
        # Every kind of call fails the same way, and promptly: no thread is held long.
        for call in (lambda: store.pending("bob"), lambda: store.register("carol", b"c" * 32, 1.0)):
            began = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - began < 5.0
        postgres_server.start_again()
        back.set()
        assert all(w.recovered.wait(TIMEOUT) for w in writers), [w.unexpected for w in writers]
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
    assert [w.unexpected for w in writers] == [[]] * 4  # nothing but StoreUnavailable
    assert all(w.unavailable > 0 for w in writers)
    queued = {q.msg_id: q.id for q in store.pending("bob")}
    for w in writers:
        for msg_id, whisper_id in w.stored.items():
            assert queued.get(msg_id) == whisper_id, (
                f"{msg_id}: stored as {whisper_id}, now {queued.get(msg_id)}"
            )
    assert store.registered_key("bob") == b"b" * 32
    assert store.register("carol", b"c" * 32, 2.0)  # and writes work again
