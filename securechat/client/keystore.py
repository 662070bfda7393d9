"""The keystore on disk: one directory per server and nick, a header and one SQLite database.

`$XDG_DATA_HOME/securechat/<server>/<nick>/` (default `~/.local/share/...`), directory
0700; `keystore.json` (the header: how the passphrase unlocks the data key) and
`keystore.db` (with SQLite's `-wal` and `-shm` beside it) 0600. A keystore that others
can read is refused rather than used.

The database has two tables: `records` (identity, prekeys, pins, ratchet sessions, by
name) and `messages` (the inbox and outbox, see inbox.py). With a passphrase every
record and message body is sealed under the data key with its name in the AAD, so
nothing can be swapped between rows, and messages are filed under a keyed tag of the
peer's nick rather than the nick. One `commit` is one SQLite transaction: a ratchet step
and the whisper it encrypted or decrypted reach the disk together or not at all.

Keystores written before the database (one `NAME.rec` file per record) are moved into
it the first time they are opened, in one transaction, and the files removed after.

**One process at a time.** A ratchet state must have one writer: two processes advancing
the same session would reuse a chain position (a key and nonce) or lose a step. A
keystore is therefore held with an OS lock (`flock` on its `lock` file, which names the
holder's pid) from open to close; another process that opens it gets `KeystoreBusy`
(and `securechat send` hands its whisper to the holder instead: handoff.py). Within one
process, keystore objects of the same directory share the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import re
import sqlite3
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..e2e import keystore as sealing
from ..e2e.errors import KeystoreError
from ..files import write_private
from ..protocol import fold_nick, is_valid_nick
from .inbox import Direction, MessageState, StoredMessage
from .rooms import decode_rooms, encode_rooms

__all__ = [
    "Keystore",
    "KeystoreBusy",
    "RoomsFile",
    "default_keystore_dir",
    "remember_server",
    "remembers_servers",
    "renamed_to",
    "server_places",
]

log = logging.getLogger(__name__)

_HEADER = "keystore.json"
_DB = "keystore.db"
#: The file whose `flock` says which process holds the keystore (it holds that pid).
_LOCK = "lock"
#: The record that holds the rooms to join again at the next start (see rooms.py).
_ROOMS_RECORD = "rooms"
#: A guest's remembered rooms: a file in the directory its nick's keystore would have.
_GUEST_ROOMS = "rooms.json"
_LEGACY_SUFFIX = ".rec"
#: Beside a nick's keystore place, once a rename moved the keystore away: a small file
#: (0600) naming the new nick, so that starting with the old nick is refused with what to
#: do instead of silently making a new identity there. "~" is in no nick, so the marker
#: can never be another nick's place.
_RENAMED_SUFFIX = "~renamed"
#: Beside the servers' places: one file per server certificate key and port, naming
#: that server's place (`remember_server`). Every place ends in "_PORT", so none can
#: be this directory.
_BY_KEY = "by-key"
_KEY_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[a-z]+(:[0-9a-f]{1,64})?")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, direction TEXT NOT NULL, peer_tag TEXT NOT NULL,
    msg_id TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL, body BLOB NOT NULL,
    UNIQUE (direction, peer_tag, msg_id));
CREATE INDEX IF NOT EXISTS messages_by_state ON messages (state, seq);
CREATE INDEX IF NOT EXISTS messages_by_peer ON messages (peer_tag, seq);
"""


def default_keystore_dir(host: str, port: int, nick: str, server_key: str | None = None) -> Path:
    """Where `nick`'s keystore for the server at `host`:`port` lives: under the server's
    place (`server_places`), or under another place of it where a keystore already is,
    so that an identity made before is found whichever way the host is typed."""
    places = server_places(host, port, server_key)
    for place in places:
        if Keystore.exists(place / nick.lower()):
            return place / nick.lower()
    return places[0] / nick.lower()


def server_places(host: str, port: int, server_key: str | None = None) -> list[Path]:
    """The directories a server's keystores are filed under, the current one first.

    With the server's certificate key known (serverkey.py), the place remembered for
    that key comes first: whatever the host was typed as, one server is one place. Then
    the host taken as the user means it, so two spellings of one server do not make two
    identities even before the key is known: lower-cased (names are case-insensitive),
    and every loopback name or address (localhost, 127.0.0.1, ::1) as "localhost". Then
    the spellings keystores were filed under before (the host exactly as typed)."""
    base = _base()
    places: list[Path] = []
    remembered = _remembered(base, server_key, port)
    if remembered is not None:
        places.append(remembered)
    spellings = [_server_host(host), host]
    if spellings[0] == "localhost":
        spellings += ["127.0.0.1", "::1", "localhost"]
    for spelling in spellings:
        place = base / re.sub(r"[^A-Za-z0-9_.-]", "_", f"{spelling}_{port}")
        if place not in places:
            places.append(place)
    return places


def remember_server(server_key: str, port: int, place: Path) -> None:
    """File `place` (a directory `server_places` gave) as the place of the server whose
    certificate key is `server_key`, unless one is filed already: the first place a
    server's identities were found or made in stays its place. A file in `by-key/`
    (0600) naming the place. Raises `OSError`."""
    base = _base()
    if not _KEY_RE.fullmatch(server_key) or place.parent != base or _remembered(base, server_key, port):
        return
    (base / _BY_KEY).mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(base / _BY_KEY / f"{server_key}_{port}", place.name.encode())


def remembers_servers(port: int) -> bool:
    """Whether any server on `port` has its place filed by key (`remember_server`): only
    then can asking a server for its key find a keystore the host spelling did not."""
    with contextlib.suppress(OSError):
        return any(p.name.endswith(f"_{port}") for p in (_base() / _BY_KEY).iterdir())
    return False


def _base() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")) / "securechat"


def _remembered(base: Path, server_key: str | None, port: int) -> Path | None:
    """The place filed for `server_key` by `remember_server`, if any (and sound)."""
    if server_key is None or not _KEY_RE.fullmatch(server_key):
        return None
    try:
        name = (base / _BY_KEY / f"{server_key}_{port}").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    # A name, never a path: the file cannot send a keystore outside the base.
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in {".", "..", _BY_KEY}:
        return None
    return base / name


def _server_host(host: str) -> str:
    name = host.strip().strip("[]").lower().rstrip(".")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
            return "localhost"
        return name
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return "localhost" if address.is_loopback else address.compressed  # one spelling per address


def _marker(directory: Path) -> Path:
    """Where a rename away from `directory` leaves its marker (see `_RENAMED_SUFFIX`)."""
    return directory.with_name(directory.name + _RENAMED_SUFFIX)


def renamed_to(directory: Path) -> str | None:
    """The nick whose place the keystore that was in `directory` moved to by renames
    (followed through several), or None: a keystore is there, or none ever moved away.
    A marker that cannot be read or names no nick counts as none (it holds no secret
    and guards nothing: it only saves the user a second identity by mistake)."""
    nick = None
    seen: set[str] = set()
    place = directory
    while not Keystore.exists(place) and place.name not in seen:
        seen.add(place.name)
        try:
            text = _marker(place).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError):
            break
        if not is_valid_nick(text):
            break
        nick, place = text, place.with_name(fold_nick(text))
    return nick


class KeystoreBusy(KeystoreError):
    """Another process holds the keystore (a chat client, a bot, `securechat send`)."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"your keystore {directory} is in use by {holder} (a securechat client or bot): "
            "one process at a time keeps your sessions; use that one, or stop it"
        )
        self.directory = directory
        self.pid = pid


class _Hold:
    """This process's lock on one keystore directory, shared by its keystore objects.
    Both fields are guarded by `_holds_lock`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 1


#: (device, inode) of a keystore directory -> this process's hold on it. A rename moves
#: the directory, not the inode, so the key stays. Guarded by `_holds_lock`.
_holds: dict[tuple[int, int], _Hold] = {}
_holds_lock = threading.Lock()


def _acquire(directory: Path) -> tuple[int, int]:
    """Take the keystore's lock for this process (or join the hold this process has).
    Raises `KeystoreBusy` if another process holds it, `OSError` on I/O errors."""
    info = directory.stat()
    key = (info.st_dev, info.st_ino)
    with _holds_lock:
        hold = _holds.get(key)
        if hold is not None:
            hold.users += 1
            return key
        # Never through a link (a directory others could write to might point `lock` at a
        # file of ours, which the pid would overwrite), and only a file of ours.
        fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            lock_info = os.fstat(fd)
            if not stat.S_ISREG(lock_info.st_mode) or lock_info.st_uid != os.getuid():
                raise KeystoreError(f"{directory / _LOCK} is not a file of yours: not using this keystore")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise KeystoreBusy(directory, pid) from None
        except (OSError, KeystoreError):
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _holds[key] = _Hold(fd)
        return key


def _release(key: tuple[int, int]) -> None:
    with _holds_lock:
        hold = _holds.get(key)
        if hold is None:
            return
        hold.users -= 1
        if hold.users == 0:
            del _holds[key]
            os.close(hold.fd)  # closing the last descriptor releases the flock


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeError):
        return None
    return int(text) if text.isdigit() else None


def _check_name(name: str) -> str:
    if _NAME_RE.fullmatch(name) is None:
        raise ValueError(f"bad record name {name!r}")
    return name


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise KeystoreError(
            f"{path} can be read by other users (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod {'700' if stat.S_ISDIR(mode) else '600'} {path}"
        )


class Keystore:
    """Records and messages in a directory, sealed when a passphrase protects them.

    Thread-safe: one SQLite connection behind `_lock`. Every method that reads or
    writes raises `KeystoreError`, naming the file, when the database is damaged or
    cannot be written (a full disk, say).
    """

    def __init__(self, directory: Path, data_key: bytes | None) -> None:
        """Takes the keystore's process lock (`_acquire`); raises `KeystoreBusy`."""
        self._hold: tuple[int, int] | None = _acquire(directory)  # guarded by _lock after this
        self.directory = directory
        self._data_key = data_key
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None  # opened on first use; guarded by _lock
        self._tags: dict[str, str] = {}  # folded nick -> peer tag; guarded by _lock

    @property
    def protected(self) -> bool:
        return self._data_key is not None

    @property
    def path(self) -> Path:
        """The database file."""
        return self.directory / _DB

    @classmethod
    def exists(cls, directory: Path) -> bool:
        return (directory / _HEADER).is_file()

    @classmethod
    def create(
        cls, directory: Path, passphrase: str | None, params: sealing.KdfParams | None = None
    ) -> Keystore:
        """A new, empty keystore. Raises `KeystoreError` if one exists, `OSError` on I/O errors."""
        if cls.exists(directory):
            raise KeystoreError(f"a keystore already exists in {directory}")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        header, key = sealing.new_header(passphrase, params=params or sealing.KdfParams())
        write_private(directory / _HEADER, header)
        return cls(directory, key)

    @classmethod
    def open(cls, directory: Path, passphrase: str | None) -> Keystore:
        """Open an existing keystore. Raises `KeystoreError` (permissions, passphrase, format)."""
        _check_private(directory)
        header_path = directory / _HEADER
        _check_private(header_path)
        return cls(directory, sealing.unlock(header_path.read_bytes(), passphrase))

    @classmethod
    def holder(cls, directory: Path) -> int | None:
        """The pid of another process holding the keystore in `directory`, or None (it is
        free, or this process holds it, or the directory is not private to us: then
        opening it is what says why). 0 if the holder's pid cannot be read."""
        try:
            _check_private(directory)
            if directory.stat().st_uid != os.getuid():
                return None
            _release(_acquire(directory))  # free, or this process's own hold
        except KeystoreBusy as busy:
            return busy.pid or 0
        except (OSError, KeystoreError):
            return None
        return None

    @classmethod
    def needs_passphrase(cls, directory: Path) -> bool:
        return sealing.is_protected((directory / _HEADER).read_bytes())

    # -- the database -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """The connection, opened (and legacy files imported) on first use; under `_lock`."""
        if self._db is not None:
            return self._db
        if self._hold is None:  # used again after `close`: hold it again first
            self._hold = _acquire(self.directory)
        path = self.path
        for name in (_DB, f"{_DB}-wal", f"{_DB}-shm"):
            if (self.directory / name).exists():
                _check_private(self.directory / name)
        # Created 0600 before SQLite opens it: SQLite gives the -wal and -shm files the
        # database file's permissions.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            db.close()
            raise self._damaged(exc) from None
        self._db = db
        self._import_legacy(db)
        return db

    def _import_legacy(self, db: sqlite3.Connection) -> None:
        legacy = sorted(p for p in self.directory.iterdir() if p.name.endswith(_LEGACY_SUFFIX))
        if not legacy:
            return
        rows = []
        for path in legacy:
            _check_private(path)
            name = path.name.removesuffix(_LEGACY_SUFFIX).replace("-", ":")
            rows.append((_check_name(name), path.read_bytes()))  # already sealed as this name
        with self._tx(db):
            db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?)", rows)
        for path in legacy:
            path.unlink()

    @contextmanager
    def _tx(self, db: sqlite3.Connection, *, durable: bool = True) -> Iterator[None]:
        """One transaction. Whatever fails (the work, or the COMMIT itself on a full disk),
        it is rolled back, so the connection is usable again once the fault clears."""
        if not durable:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        finally:
            if not durable:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA synchronous=FULL")

    def _damaged(self, exc: sqlite3.Error) -> KeystoreError:
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
            return KeystoreError(f"cannot write your keystore {self.path}: the disk is full")
        return KeystoreError(f"your keystore {self.path} cannot be read or written: {exc}")

    def _seal(self, name: str, data: bytes) -> bytes:
        return data if self._data_key is None else sealing.seal(self._data_key, name, data)

    def _unseal(self, name: str, blob: bytes) -> bytes:
        if self._data_key is None:
            return blob
        try:
            return sealing.unseal(self._data_key, name, blob)
        except KeystoreError as exc:
            raise KeystoreError(f"{self.path}: {exc}") from None

    def _tag(self, peer: str) -> str:
        folded = fold_nick(peer)
        if self._data_key is None:
            return folded
        tag = self._tags.get(folded)
        if tag is None:
            tag = self._tags[folded] = sealing.peer_tag(self._data_key, folded)
        return tag

    @staticmethod
    def _message_name(direction: str, tag: str, msg_id: str) -> str:
        return f"message:{direction}:{tag}:{msg_id}"

    # -- records and messages (the `Storage` contract) ------------------------------------

    def load(self) -> dict[str, bytes]:
        """Every record. Raises `KeystoreError` for a readable-by-others or damaged keystore."""
        with self._lock:
            db = self._connect()
            try:
                rows = db.execute("SELECT name, value FROM records").fetchall()
            except sqlite3.Error as exc:
                raise self._damaged(exc) from None
            return {name: self._unseal(name, bytes(value)) for name, value in rows}

    def save(self, records: Mapping[str, bytes | None]) -> None:
        """Write (or, for None, delete) records, in one durable transaction."""
        self.commit(records)

    def commit(
        self,
        records: Mapping[str, bytes | None],
        messages: Sequence[StoredMessage] = (),
        *,
        durable: bool = True,
    ) -> None:
        with self._lock:
            db = self._connect()
            try:
                with self._tx(db, durable=durable):
                    for name, data in records.items():
                        if data is None:
                            db.execute("DELETE FROM records WHERE name=?", (_check_name(name),))
                        else:
                            db.execute(
                                "INSERT OR REPLACE INTO records VALUES (?, ?)",
                                (_check_name(name), self._seal(name, data)),
                            )
                    for m in messages:
                        tag = self._tag(m.peer)
                        body = self._seal(self._message_name(m.direction.value, tag, m.msg_id), m.body())
                        # Upsert in place: a message keeps its position when its state changes.
                        db.execute(
                            "INSERT INTO messages (direction, peer_tag, msg_id, state, reason, body) "
                            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (direction, peer_tag, msg_id) DO UPDATE "
                            "SET state=excluded.state, reason=excluded.reason, body=excluded.body",
                            (m.direction.value, tag, m.msg_id, m.state.value, m.reason, body),
                        )
            except sqlite3.Error as exc:
                raise self._damaged(exc) from None

    def message(self, direction: Direction, peer: str, msg_id: str) -> StoredMessage | None:
        with self._lock:
            db = self._connect()
            tag = self._tag(peer)
            try:
                row = db.execute(
                    "SELECT direction, peer_tag, msg_id, state, reason, body FROM messages "
                    "WHERE direction=? AND peer_tag=? AND msg_id=?",
                    (direction.value, tag, msg_id),
                ).fetchone()
            except sqlite3.Error as exc:
                raise self._damaged(exc) from None
            return None if row is None else self._message_from(row)

    def messages(
        self,
        *,
        direction: Direction | None = None,
        states: frozenset[MessageState] | None = None,
        peer: str | None = None,
        last: int | None = None,
    ) -> list[StoredMessage]:
        where: list[str] = []
        args: list[object] = []
        with self._lock:
            db = self._connect()
            if direction is not None:
                where.append("direction=?")
                args.append(direction.value)
            if states is not None:
                where.append(f"state IN ({','.join('?' * len(states))})")
                args.extend(sorted(s.value for s in states))
            if peer is not None:
                where.append("peer_tag=?")
                args.append(self._tag(peer))
            sql = "SELECT direction, peer_tag, msg_id, state, reason, body FROM messages"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY seq DESC"
            if last is not None:
                sql += " LIMIT ?"
                args.append(max(0, last))
            try:
                rows = db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._damaged(exc) from None
            return [self._message_from(row) for row in reversed(rows)]

    def _message_from(self, row: tuple[str, str, str, str, str, bytes]) -> StoredMessage:
        direction, tag, msg_id, state, reason, blob = row
        body = self._unseal(self._message_name(direction, tag, msg_id), bytes(blob))
        try:
            return StoredMessage.from_row(direction, msg_id, state, reason, body)
        except ValueError as exc:
            raise KeystoreError(f"{self.path}: {exc}") from None

    # -- remembered rooms (the `RoomStore` contract) -------------------------------------

    def load_rooms(self) -> list[str]:
        """The rooms saved by `save_rooms`, [] if none. Raises `KeystoreError`."""
        with self._lock:
            db = self._connect()
            try:
                row = db.execute("SELECT value FROM records WHERE name=?", (_ROOMS_RECORD,)).fetchone()
            except sqlite3.Error as exc:
                raise self._damaged(exc) from None
        if row is None:
            return []
        try:
            return decode_rooms(self._unseal(_ROOMS_RECORD, bytes(row[0])))
        except ValueError as exc:
            raise KeystoreError(f"{self.path}: the remembered rooms are damaged: {exc}") from None

    def save_rooms(self, rooms: Sequence[str]) -> None:
        """Remember `rooms` (sealed like every record: which rooms you use is yours).
        Not flushed: a lost change costs only a room not joined again by itself."""
        self.commit({_ROOMS_RECORD: encode_rooms(rooms)}, durable=False)

    # -- moving -------------------------------------------------------------------------

    def move_to(self, directory: Path, nick: str = "") -> None:
        """Move the whole keystore to `directory` (a rename: the new nick's place), and
        leave a marker where it was naming `nick` (default: the directory's name), so that
        starting with the old nick is refused (`renamed_to`); a marker of an earlier
        rename away from `directory` is removed (the keystore is back).

        One `rename` of the directory, so a crash leaves it whole in one place or the
        other. Raises `KeystoreError` if something is in the way or the move fails; the
        keystore is then usable where it was.
        """
        old = self.directory
        with self._lock:
            if directory.exists():
                raise KeystoreError(f"cannot move your keystore to {directory}: something is there already")
            if self._db is not None:  # reopened at the new place on next use
                self._db.close()
                self._db = None
            try:
                directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.rename(self.directory, directory)
                fd = os.open(directory.parent, os.O_RDONLY)  # the rename itself reaches the disk
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise KeystoreError(
                    f"cannot move your keystore {self.directory} to {directory}: {exc}"
                ) from None
            self.directory = directory
        try:
            _marker(directory).unlink(missing_ok=True)
            write_private(_marker(old), f"{nick or directory.name}\n".encode())
        except OSError as exc:  # the move is done; without the marker only the reminder is lost
            log.info("could not leave a rename marker beside %s: %s", old, exc)

    def close(self) -> None:
        """Close the database and let go of the keystore (another process may open it)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._hold is not None:
                _release(self._hold)
                self._hold = None

    def remove(self) -> None:
        """Delete this keystore: its files, then its directory if nothing else is in it.
        Only for one made in this very run that never served (the login it was made for
        was refused): anything else would be someone's keys. Raises `KeystoreError`."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            try:
                # The lock file last, and while still held: nobody opens it half-deleted.
                for name in (_DB + "-wal", _DB + "-shm", _DB + "-journal", _DB, _HEADER, _LOCK):
                    (self.directory / name).unlink(missing_ok=True)
                if self._hold is not None:
                    _release(self._hold)
                    self._hold = None
                if not any(self.directory.iterdir()):
                    self.directory.rmdir()
            except OSError as exc:
                raise KeystoreError(f"cannot remove the keystore in {self.directory}: {exc}") from None


class RoomsFile:
    """A guest's remembered rooms (a guest has no keystore): `rooms.json`, 0600, in the
    directory its nick's keystore would have (`default_keystore_dir`), created on the
    first save. Implements `RoomStore`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def path(self) -> Path:
        return self.directory / _GUEST_ROOMS

    def load_rooms(self) -> list[str]:
        """The saved rooms, [] if none yet. Raises `KeystoreError` (damaged, or others can read it)."""
        try:
            _check_private(self.path)
            return decode_rooms(self.path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise KeystoreError(f"{self.path}: cannot read your remembered rooms: {exc}") from None

    def save_rooms(self, rooms: Sequence[str]) -> None:
        """Write them atomically. Raises `KeystoreError`."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(self.path, encode_rooms(rooms))
        except OSError as exc:
            raise KeystoreError(f"cannot save your remembered rooms in {self.path}: {exc}") from None

    def move_to(self, directory: Path) -> None:
        """After a rename: the rooms belong to the new nick's place. Raises `KeystoreError`."""
        rooms = self.load_rooms()
        old = self.path
        self.directory = directory
        self.save_rooms(rooms)
        old.unlink(missing_ok=True)
