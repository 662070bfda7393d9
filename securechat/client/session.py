"""`Client`: a connection to a securechat server as a Python API. It never prints.

A reader thread turns incoming frames into events on a queue; `next_event` and
iteration hand them out. Sending methods may be called from any thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from types import TracebackType

from ..e2e.errors import BundleError, E2EError, IdentityChanged, KeystoreError, NotTrusted
from ..ports import DEFAULT_PORT
from ..protocol import (
    CLOSED,
    DEFAULT_ROOM,
    KEM_VERSION,
    NEED_DATA,
    PROTOCOL_VERSION,
    Auth,
    Away,
    Ban,
    Bans,
    Bye,
    Challenge,
    Code,
    Connection,
    Delivery,
    Deop,
    Devices,
    Entered,
    Error,
    Event,
    FetchKeys,
    Hello,
    Invite,
    Join,
    Keys,
    Kick,
    Left,
    ListRooms,
    Message,
    Names,
    Op,
    Part,
    Ping,
    Pong,
    PrekeyCount,
    ProtocolError,
    Quit,
    RegisterRoom,
    RemoteProtocolError,
    Rename,
    Renamed,
    Role,
    Say,
    SetMode,
    SetTopic,
    State,
    Transfer,
    Unban,
    Welcome,
    Whisper,
    WhisperStatus,
    Who,
    fold_nick,
    fold_room,
)
from ..protocol.rooms import Members
from ..transport import TlsChannel
from .backoff import Backoff
from .events import (
    ClientMade,
    DeviceUnreachable,
    KeyChanged,
    Reconnected,
    Reconnecting,
    RenameUnconfirmed,
    ResendPending,
    StorageFailed,
    WhisperCopied,
    WhisperReceived,
)
from .inbox import HISTORY_SHOWN, MessageState, StoredMessage
from .keystore import RoomsFile
from .rooms import MemberPages, Refusal, RejoinQueue, RememberedRooms, RoomStore
from .serverkey import key_of_certificate
from .whispers import Incoming, WhisperKeys

__all__ = ["Client", "ConnectError", "Disconnected", "LoginRejected"]

log = logging.getLogger(__name__)

CLIENT_NAME = "securechat-py/0.1"

#: The first protocol version with rooms beyond #lobby: a server that welcomes us with an
#: older one gets no room requests (it would refuse them as unknown frames).
_ROOMS_VERSION = 2

#: What a refused hello's `unsupported-version` means to a person: this client speaks
#: version 2, and the only servers that refuse it are the older ones.
#: What a refused hello's version means; the server's own words follow ("this server
#: speaks protocol versions 1 and 2").
_OLDER_SERVER = (
    f"the server is older than this client, which speaks protocol {PROTOCOL_VERSION}; "
    "ask its operator to upgrade"
)


class ConnectError(Exception):
    """The server could not be reached or could not be trusted. The message is for a person.

    `retryable` is False when trying again cannot help (the certificate is not trusted).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class LoginRejected(Exception):
    """The server refused the hello (nick in use, bad nick, ...)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{reason} ({code})" if reason else code)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class Disconnected:
    """Last item from `next_event`: the connection is over, and why."""

    reason: str


ClientEvent = Event | Disconnected | ClientMade

#: Resending a whisper refused for a quota (its recipient's mailbox is full until they
#: read): a minute, doubling to a quarter of an hour.
_QUOTA_BACKOFF = Backoff(base=60.0, cap=900.0)

#: Put in the key-fetch answers by `close`, so a fetch waiting for keys ends at once.
_CLOSED = Error(code="closed", reason="the client was closed")

#: How often a whisper the recipient could not decrypt is sent again, in a new session,
#: without the user asking: once covers a lost prekey or new keys under the same identity.
_AUTO_RESENDS = 1

#: A peer's rename (the server's `renamed`) is believed only once the new nick's keys,
#: fetched, hold the old nick's pinned key. Their client publishes those keys just after
#: the rename, so a fetch that finds none yet is tried again: this many times in all,
#: the first wait this long, doubling (about 4 s in all).
_FOLLOW_TRIES = 5
_FOLLOW_RETRY = 0.25
#: Renames of contacts being checked at once at most (each costs a key fetch and a
#: thread); one more is not checked, and told as `RenameUnconfirmed`.
_MAX_FOLLOWING = 4

#: Keepalive defaults: ping after this long without hearing from the server, and
#: reconnect when the ping goes unanswered this long (docs/operations.md).
DEFAULT_PING_INTERVAL = 60.0
DEFAULT_PING_TIMEOUT = 15.0

#: A fatal error with one of these codes ends the client for good: trying again would
#: only repeat it. Anything else (a restart, a timeout, a lost network) is retried.
_FINAL_CODES = frozenset(
    {
        Code.NICK_REGISTERED,
        Code.AUTH_FAILED,
        Code.RATE_LIMITED,
        Code.UNSUPPORTED_VERSION,
        Code.NICK_TAKEN,
        Code.REPLACED,  # reconnecting would displace the newer login in turn
        Code.UNLINKED,  # this device's key is no longer its person's
    }
)

#: Error codes that answer a `fetch_keys`: only these, naming the nick in `ref`, are taken
#: as a fetch's answer from an old server (one that echoes no fetch ref).
_FETCH_ERRORS = frozenset({Code.NO_SUCH_USER, Code.NO_KEYS, Code.RATE_LIMITED, Code.NOT_REGISTERED})

#: What a key fetch's `ref` starts with: ":" is not allowed in a nick, so a fetch's ref can
#: never be mistaken for the nick an old server puts in `error.ref`.
_FETCH_REF_PREFIX = "keys:"


@dataclass(frozen=True)
class _PendingFetch:
    """The key fetch a whisper waits for: its `ref` and the folded nick it asked about."""

    ref: str
    nick: str

    def answered_by(self, event: Keys | Error) -> bool:
        """True if `event` is this fetch's answer: it carries this fetch's ref, or, from
        an old server that echoes no ref, it names this fetch's nick (keys for it, or a
        fetch refusal whose `ref` is the nick)."""
        if event.ref == self.ref:
            return True
        if isinstance(event, Keys):
            return not event.ref and fold_nick(event.nick) == self.nick
        return event.code in _FETCH_ERRORS and fold_nick(event.ref) == self.nick


#: Events waiting for the program (`next_event`) at most. A server can send far faster
#: than a program reads: beyond this the connection is dropped (and tried again, as
#: after a malformed frame) rather than memory growing without end. A terminal user
#: reading normally never comes near it; ~1 KB each, so about 10 MB at most.
DEFAULT_MAX_EVENTS = 10_000

#: Connections in a row that end broken (a malformed or oversized frame, an event flood,
#: a failure of ours while handling a frame) before the client gives up: one bad frame
#: must not stop a bot, and a server that sends nothing else must not keep it looping.
_BROKEN_IN_A_ROW = 3
#: A connection that stayed up this long before breaking starts a new count: a rare bad
#: frame on a long-lived connection is not "in a row" with one from days before.
_HEALTHY_AFTER = 60.0


class Ending(Enum):
    """How a connection ended, which decides what the reader does next."""

    LOST = "lost"  # the network or the server went away: reconnect
    BEHIND = "behind"  # the program left too many events unread: reconnect once it has caught up
    BROKEN = "broken"  # a bad frame, a flood, a failure of ours: reconnect, a few in a row at most
    FINAL = "final"  # quit, close, or a refusal that would only repeat: stop


class _Overflow(Exception):
    """More events wait for the program than `max_events`: the reader drops the connection."""


class _BrokenLogin(ConnectError):
    """The server broke the protocol during the login (counted like a broken connection)."""


def _key_changed(nick: str, exc: IdentityChanged, unsent: int = 0) -> KeyChanged:
    """What the program is told when a fetch of `nick`'s keys found another identity key
    (`unsent`: whispers to them waiting to be sent again)."""
    return KeyChanged(
        peer=nick,
        old_fingerprint=exc.pinned_fingerprint,
        new_fingerprint=exc.new_fingerprint,
        held=0,
        unsent=unsent,
    )


def _copy_key(frame: Whisper) -> tuple[str, str, str]:
    """Which copy of which whisper `frame` is: (folded recipient, device, id)."""
    return (fold_nick(frame.to), frame.device, frame.id)


class Client:
    """One user's connection.

    Call `connect()` (or use `with`), then `say`/`who`/`quit`, and read events with
    `next_event(timeout)` or by iterating, which stops after `Disconnected`.

    `timeout` bounds each whole login (TCP, TLS, hello to welcome) and each key fetch.
    `max_events` bounds the events waiting for the program: a program that leaves more
    unread is disconnected (and, with `reconnect`, tried again), saying so. Whatever a
    server sends, the reader thread never dies silently: a malformed frame, a flood or
    a failure while handling a frame ends the connection like a lost one, and after
    `_BROKEN_IN_A_ROW` such endings in a row the client gives up with `Disconnected`.
    """

    def __init__(
        self,
        nick: str,
        *,
        context: ssl.SSLContext,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        server_hostname: str | None = None,
        timeout: float = 10.0,
        keys: WhisperKeys | None = None,
        reconnect: bool = False,
        backoff: Backoff | None = None,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        ping_timeout: float = DEFAULT_PING_TIMEOUT,
        max_events: int = DEFAULT_MAX_EVENTS,
        rooms_store: RoomStore | None = None,
    ) -> None:
        # Changed by the reader when the server renames us; read by any thread (one
        # attribute assignment: atomic).
        self.nick = nick
        self.keys = keys
        self.host = host
        self.port = port
        self._context = context
        self._server_hostname = server_hostname or host
        #: The server's certificate key (serverkey.py) from the last login's handshake;
        #: None before one. Written by whichever thread logs in (connect, or the reader on
        #: a reconnect), read by the program after `connect` returned.
        self.server_key: str | None = None
        self._timeout = timeout
        self._reconnect = reconnect
        self._backoff = backoff or Backoff()
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._max_events = max_events
        # Set by the program's thread in `next_event` once fewer than half of
        # `max_events` wait; the reader waits for it after an overflow.
        self._caught_up = threading.Event()
        self._conn = Connection(Role.CLIENT)  # guarded by _conn_lock
        self._conn_lock = threading.Lock()
        self._online = False  # guarded by _conn_lock (read without it only as a hint)
        self._quitting = False  # set by quit() (any thread), read by the reader; a bool is atomic
        self._closing = threading.Event()
        # Sent, not yet reported stored, by message id; guarded by _whisper_lock for
        # additions and resends, popped by the reader (dict operations are atomic).
        # Each copy of a whisper (one per device) by (folded recipient, device, id).
        self._unconfirmed: dict[tuple[str, str, str], Whisper] = {}
        self._store_retries = 0  # store-unavailable rounds in a row; guarded by _timer_lock
        # Set by the reader when unconfirmed whispers must go out again (after a
        # reconnect); cleared by whoever holds _whisper_lock and sends them, so that no
        # new whisper overtakes them and the reader never waits for that lock.
        self._needs_resend = threading.Event()
        self._storage_failed = False  # our keystore failed a write on this connection; reader only
        self._resend_timer: threading.Timer | None = None  # guarded by _timer_lock
        self._timer_lock = threading.Lock()
        self._newest_line = float("-inf")  # server time of the newest room line seen; reader only
        self._channel: TlsChannel | None = None  # guarded by _conn_lock
        self._last_heard = time.monotonic()  # when the server last sent anything; reader writes
        # Unbounded underneath so that the last `Disconnected` always fits; the reader
        # keeps it to `max_events` (see `_check_room`). Thread-safe by itself.
        self._events: queue.Queue[ClientEvent] = queue.Queue()
        # returned by next_event, not yet marked shown
        self._handed: list[WhisperReceived | WhisperCopied] = []
        self._handed_lock = threading.Lock()  # guards _handed and _helpers
        self._whisper_lock = threading.Lock()  # one whisper (and its key fetch) at a time
        # The fetch a whisper waits for, None when none waits: set by the thread holding
        # _whisper_lock, taken (back to None) by the reader with the one answer it
        # routes, so `keys` frames nobody asked for, or answers to an earlier fetch, are
        # dropped instead of piling up or answering the wrong fetch. Guarded by _fetch_lock.
        self._fetch_pending: _PendingFetch | None = None
        self._fetch_lock = threading.Lock()
        self._fetch_replies: queue.Queue[Keys | Error] = queue.Queue()
        # Queues that get a copy of every status of a whisper of ours (`watch_statuses`:
        # the handoff of another process's whisper). Guarded by _watch_lock; the reader puts.
        self._status_watchers: list[queue.Queue[WhisperStatus]] = []
        # Queues that get a copy of every event the program takes (`watch_events`: a
        # JSON program attached through the handoff). Guarded by _watch_lock; filled by
        # whichever thread takes events.
        self._event_watchers: list[queue.Queue[ClientEvent]] = []
        # Senders whose keys a `_learn_devices` thread is fetching (folded nicks): a
        # backlog from a new device starts one fetch, not one per whisper. Guarded by
        # `_learning_lock`, a leaf.
        self._learning: set[str] = set()
        self._learning_lock = threading.Lock()
        self._watch_lock = threading.Lock()
        # Connections in a row that ended `Ending.BROKEN`; reader only.
        self._broken_in_a_row = 0
        # (nick, fingerprint) for /r: written by whichever thread hands out a whisper,
        # read by reply(); one tuple assignment, atomic.
        self.last_whisperer: tuple[str, str] | None = None
        self._reader: threading.Thread | None = None
        self._keepalive: threading.Thread | None = None
        self._helpers: list[threading.Thread] = []  # see _spawn; guarded by _handed_lock
        self._done = False  # the reader has ended for good; written once, by the reader
        self.welcome: Welcome | None = None  # guarded by _conn_lock
        # The nonce of this connection's login challenge (b"" for a guest): what a rename
        # is signed over. Guarded by _conn_lock.
        self._login_nonce = b""
        # Where the rooms to join again are kept between runs (None: in memory only).
        # Used by the thread that connects, then by the reader only.
        self._rooms_store = rooms_store
        # The rooms to join again after a reconnect or a restart: loaded by `connect`,
        # then changed by the reader only (on `entered` and on our own `left`).
        self._remembered = RememberedRooms()
        self._remembered_loaded = False  # owned like _remembered
        # Member lists arriving in `members` pages, each until the `entered` or `names`
        # that ends it; the reader only (cleared at each connection's start).
        self._pages = MemberPages()
        # The rooms we are in now, as the server named them: replaced whole by the reader
        # (a tuple assignment is atomic), read by any thread through `rooms`.
        self._in_rooms: tuple[str, ...] = ()
        # The remembered rooms still to join on this connection, paced: filled by
        # `_rejoin` (the connecting thread, or the reader after a reconnect), sent from by
        # the reader (the first burst) and the keepalive thread (the rest), told of
        # entered rooms and refusals by the reader. Guarded by _rejoin_lock, a leaf lock
        # never held while sending.
        self._rejoins = RejoinQueue()
        self._rejoin_lock = threading.Lock()
        # Set by the reader once the first joins after a login are sent (or the connection
        # ended): `connect` waits for it, so a request the program makes next reaches the
        # server after them.
        self._rejoined = threading.Event()
        # Wakes the keepalive thread early: joins to pace, or the client closing. Set by
        # any thread, cleared by the keepalive thread.
        self._wake = threading.Event()
        # (old, new) while `connect` finishes a rename an earlier run left unanswered;
        # the connecting thread only.
        self._finish_rename: tuple[str, str] | None = None
        # A guest's rename sent and not yet answered: the nick asked for (an identity
        # user's is the keystore's record, `WhisperKeys.renaming`). Set by `rename` (any
        # thread), cleared by the reader; guarded by _conn_lock.
        self._guest_renaming: str | None = None
        # Folded new nicks of peers' renames being checked (`_follow_rename`): added by the
        # reader, removed by the helper checking it. Guarded by _follow_lock, a leaf lock.
        self._following: set[str] = set()
        self._follow_lock = threading.Lock()

    # -- connecting ---------------------------------------------------------------

    def connect(self) -> Welcome:
        """Connect, verify the server over TLS, log in, and start receiving.

        Raises `ConnectError` (unreachable, certificate not trusted, host name
        mismatch, no answer) or `LoginRejected` (the server refused the nick).
        With `reconnect`, later losses of the connection are retried by themselves.

        If the keystore records a rename to NEW that an earlier run sent without hearing
        the answer (it stopped in between), the first login is as NEW: welcomed there
        (NEW is registered to our key: the server did rename us), the rename is finished
        here (a `Renamed` event, the keystore moved, a fresh bundle); refused because NEW
        is someone else's or in use, the rename did not happen: an `Error` naming NEW
        says so, and the login is as our nick.
        """
        channel, conn, welcome, nonce = self._first_login()
        with self._conn_lock:
            self._channel, self._conn, self.welcome, self._online = channel, conn, welcome, True
            self._login_nonce = nonce
        if self._finish_rename is not None:
            # Logged in under the new nick: the server had renamed us. What `renamed`
            # would have done, done now (the keystore moves, so before anything reads it).
            old, new = self._finish_rename
            self._finish_rename = None
            self.nick = old  # `_renamed` moves the keystore from the old nick's place
            self._renamed(new)
            self._events.put(Renamed(old=old, new=new))
        if not self._remembered_loaded:
            self._remembered_loaded = True
            if self._rooms_store is not None:
                try:
                    self._remembered = RememberedRooms(self._rooms_store.load_rooms())
                except KeystoreError as exc:
                    self._events.put(StorageFailed(reason=str(exc)))
        self._rejoin(welcome)
        if self.keys is not None:
            # What the last run kept but did not finish: whispers received but not known
            # to have been shown come first, and whispers never confirmed go out again.
            for item in self.keys.unshown():
                self._events.put(item)
            with self._whisper_lock:
                for frame in self.keys.unsent():
                    self._unconfirmed[_copy_key(frame)] = frame
                self._resend_unconfirmed()
        self._last_heard = time.monotonic()
        self._reader = threading.Thread(target=self._run, name=f"securechat-client-{self.nick}", daemon=True)
        self._reader.start()
        self._keepalive = threading.Thread(
            target=self._keep_alive, name=f"securechat-keepalive-{self.nick}", daemon=True
        )
        self._keepalive.start()
        # The reader sends the first rejoins once it has read what came with the welcome
        # (the autojoin rooms' `entered`), before it waits for the network.
        self._rejoined.wait(self._timeout)
        return welcome

    def _first_login(self) -> tuple[TlsChannel, Connection, Welcome, bytes]:
        """`_establish`, finishing a rename an earlier run left unanswered (see `connect`).
        The connecting thread, before the reader exists."""
        new = self.keys.renaming() if self.keys is not None and not self._remembered_loaded else None
        if new is None:
            return self._establish()
        assert self.keys is not None
        old = self.nick
        self.nick = new
        try:
            channel, conn, welcome, nonce = self._establish()
        except LoginRejected as exc:
            self.nick = old
            if exc.code not in (Code.NICK_REGISTERED, Code.NICK_TAKEN):
                raise  # busy, say: the next connect tries again
            try:
                self.keys.rename_refused()
            except KeystoreError as kept:
                self._events.put(StorageFailed(reason=str(kept)))
            reason = f"your rename to {new} did not happen: {exc.reason or exc.code}"
            self._events.put(Error(code=exc.code, reason=reason, ref=new))
            return self._establish()
        self._finish_rename = (old, new)
        return channel, conn, welcome, nonce

    def _establish(self) -> tuple[TlsChannel, Connection, Welcome, bytes]:
        """Connect, run TLS and log in, all of it within `timeout` seconds.

        A per-read timeout cannot bound the whole: a server that pings (or trickles a
        byte) before each read times out would keep the login going for ever. So the
        deadline is a timer that shuts the socket down from outside, which wakes
        whichever read is blocked (the same pattern as the server's watchdog).
        """
        where = f"{self.host}:{self.port}"
        started = time.monotonic()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._timeout)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = TlsChannel(sock, self._context, server_side=False, server_hostname=self._server_hostname)
        conn = Connection(Role.CLIENT)
        expired = threading.Event()

        def expire() -> None:  # the timer's thread
            expired.set()
            channel.shutdown()

        deadline = threading.Timer(max(0.0, started + self._timeout - time.monotonic()), expire)
        deadline.daemon = True
        deadline.start()
        try:
            channel.handshake()
            welcome, nonce = self._login(channel, conn)
        except ssl.SSLCertVerificationError as exc:
            channel.close()
            raise ConnectError(
                f"refusing {where}: its certificate cannot be trusted ({exc.verify_message}). "
                "Check --cafile and --host.",
                retryable=False,
            ) from None
        except (ssl.SSLError, OSError, ProtocolError, ConnectError) as exc:
            channel.close()
            if expired.is_set():
                raise ConnectError(f"{where} did not complete the login within {self._timeout:g} s") from None
            if isinstance(exc, ProtocolError):
                raise _BrokenLogin(
                    f"the server at {where} broke the protocol during the login: {exc}"
                ) from None
            if isinstance(exc, ConnectError):
                raise
            raise ConnectError(f"TLS connection to {where} failed: {exc}") from None
        except LoginRejected:
            channel.close()
            raise
        finally:
            deadline.cancel()
            deadline.join()
        if expired.is_set():  # it fired just as the welcome came: the socket is shut already
            channel.close()
            raise ConnectError(f"{where} did not complete the login within {self._timeout:g} s")
        sock.settimeout(None)
        der = channel.peer_certificate()
        self.server_key = key_of_certificate(der) if der else None
        return channel, conn, welcome, nonce

    def _login(self, channel: TlsChannel, conn: Connection) -> tuple[Welcome, bytes]:
        """The welcome, and the challenge's nonce (b"" if none came: a guest)."""
        identity, device = (
            (self.keys.identity.sig_key, self.keys.device) if self.keys is not None else (b"", "")
        )
        nonce = b""
        hello = Hello(
            version=PROTOCOL_VERSION, nick=self.nick, client=CLIENT_NAME, identity=identity, device=device
        )
        channel.send(conn.send(hello))
        while True:
            data = channel.recv()
            conn.receive_data(data)
            while (event := conn.next_event()) is not NEED_DATA:
                if event is CLOSED:
                    raise ConnectError("the server closed the connection during login")
                if isinstance(event, Welcome):
                    if self.keys is not None:  # before this login's `prekey_count` is read
                        self.keys.serve_kem(event.version >= KEM_VERSION)
                    return event, nonce
                if isinstance(event, Error) and event.code == Code.UNSUPPORTED_VERSION:
                    raise LoginRejected(event.code, f"{_OLDER_SERVER} ({event.reason})")
                if isinstance(event, Error):
                    raise LoginRejected(event.code, event.reason)
                if isinstance(event, Bye):
                    raise LoginRejected("bye", event.reason)
                if isinstance(event, Ping):
                    channel.send(conn.send(Pong(token=event.token)))
                if isinstance(event, Challenge) and self.keys is not None:
                    nonce = event.nonce
                    proof = self.keys.login_proof(self.nick, event.nonce)
                    channel.send(conn.send(Auth(signature=proof)))

    # -- sending --------------------------------------------------------------------

    def send(self, event: Event) -> None:
        """Send any client event. Raises `ConnectionError` while not connected."""
        with self._conn_lock:
            channel = self._channel
            if channel is None or not self._online:
                raise self._offline()
            data = self._conn.send(event)
        try:
            channel.send(data)
        except OSError as exc:
            raise ConnectionError(f"connection lost: {exc}") from None

    def _offline(self) -> ConnectionError:
        return ConnectionError("reconnecting" if self._reconnect and not self._done else "not connected")

    def say(self, text: str, room: str = DEFAULT_ROOM, *, action: bool = False) -> None:
        """Post `text` to a room (as an action: "/me"). Raises `ValueError` if empty or over 4 KiB."""
        self.send(Say(room=room, text=text, action=action))

    def set_away(self, message: str) -> None:
        """Mark yourself away (whisperers are told `message`); "" means you are back."""
        self.send(Away(message=message))

    def who(self, room: str = DEFAULT_ROOM) -> None:
        """Ask who is in the room; the answer arrives as a `Names` event."""
        self.send(Who(room=room))

    # -- rooms ------------------------------------------------------------------------
    # Each sends one request and returns; the answer arrives as an event (`Entered`,
    # `Left`, `RoomChanged`, `Rooms`, `Invited`, `BanList`, `Renamed`, `Names`), and a
    # refusal as an `Error` whose `ref` is the room as sent. Each raises `ValueError`
    # for a malformed room name, nick, mask or topic (nothing is sent then) and
    # `ConnectionError` while not connected. Any thread may call them.

    @property
    def rooms(self) -> tuple[str, ...]:
        """The rooms this client is in now, in the order it entered them (none while offline)."""
        return self._in_rooms

    def join(self, room: str) -> None:
        """Enter `room`, creating it if it does not exist. Remembered once entered: joined
        again by itself after a reconnect (and after a restart, with a `rooms_store`)."""
        self.send(Join(room=room))

    def part(self, room: str, reason: str = "") -> None:
        """Leave `room` (and stop remembering it)."""
        self.send(Part(room=room, reason=reason))

    def names(self, room: str = DEFAULT_ROOM) -> None:
        """Ask who is in `room` (with who is away, the owner and operators): a `Names` event."""
        self.who(room)

    def set_topic(self, room: str, topic: str) -> None:
        """Set `room`'s topic ("" clears it); everyone in it gets `RoomChanged`."""
        self.send(SetTopic(room=room, topic=topic))

    def list_rooms(self, pattern: str = "") -> None:
        """Ask for the rooms whose names match `pattern` (`*`, `?`; "" for all): a `Rooms` event."""
        self.send(ListRooms(pattern=pattern))

    def invite(self, room: str, nick: str) -> None:
        """Invite `nick` (online) into `room`; both get `Invited`."""
        self.send(Invite(room=room, nick=nick))

    def kick(self, room: str, nick: str, reason: str = "") -> None:
        """Remove `nick` from a registered room (operators): everyone gets `Left` with `by`."""
        self.send(Kick(room=room, nick=nick, reason=reason))

    def ban(self, room: str, mask: str) -> None:
        """Ban a nick (by its key if registered) or a guest nick pattern (`*`, `?`) (operators)."""
        self.send(Ban(room=room, mask=mask))

    def unban(self, room: str, mask: str) -> None:
        """Lift a ban, named as `bans` shows it (operators)."""
        self.send(Unban(room=room, mask=mask))

    def bans(self, room: str) -> None:
        """Ask for `room`'s bans (operators): a `BanList` event."""
        self.send(Bans(room=room))

    def set_mode(self, room: str, invite_only: bool) -> None:
        """Make a registered room invite-only, or open again (operators)."""
        self.send(SetMode(room=room, invite_only=invite_only))

    def register_room(self, room: str) -> None:
        """Register `room`, which you created and are in (identity users): you own it."""
        self.send(RegisterRoom(room=room))

    def op(self, room: str, nick: str) -> None:
        """Make `nick` (a registered nick) an operator of `room` (the owner only)."""
        self.send(Op(room=room, nick=nick))

    def deop(self, room: str, nick: str) -> None:
        """Take `nick`'s operator status in `room` away (the owner only)."""
        self.send(Deop(room=room, nick=nick))

    def transfer(self, room: str, nick: str) -> None:
        """Hand `room` to `nick` (a registered nick); you stay an operator (the owner only)."""
        self.send(Transfer(room=room, nick=nick))

    def rename(self, nick: str) -> None:
        """Ask to be known as `nick` from now on. An identity user signs the change with
        its identity key over this connection's login nonce; a guest sends no signature.

        The answer is a `Renamed` event (then `self.nick` is the new nick, the identity
        is bound to it, the keystore has moved to its place and a fresh bundle is
        published) or an `Error` (`nick-taken`, `nick-registered`, ...). Your own nick,
        in any case, is a no-op: nothing is sent. Raises `ValueError` (not a nick, or
        another keystore sits where ours would move: nothing is sent) and
        `ConnectionError`. An identity user's keystore records the rename before it is
        sent: if this process stops before the answer, the next `connect` finishes it.
        """
        old = self.nick
        if fold_nick(nick) == fold_nick(old):
            return
        signature = b""
        if self.keys is not None:
            with self._conn_lock:
                nonce = self._login_nonce
            if not nonce:
                raise self._offline()
            signature = self.keys.rename_proof(old, nick, nonce)
            try:
                self.keys.begin_rename(nick)  # so a crash before the answer is finished at the next start
            except KeystoreError as exc:
                self._events.put(StorageFailed(reason=str(exc)))  # the rename itself still works
        else:
            with self._conn_lock:
                self._guest_renaming = nick  # only a `renamed` to it is obeyed
        self.send(Rename(nick=nick, signature=signature))

    def _rejoin(self, welcome: Welcome) -> None:
        """After a login (the connecting thread, or the reader after a reconnect): queue the
        remembered rooms to be joined again. Not those the server put us in itself: the
        welcome's room if the welcome lists us in it, and (see `_send_rejoins`) every room
        whose `entered` came with the welcome. A server older than rooms gets no joins."""
        self._in_rooms = (welcome.room,) if welcome.version < _ROOMS_VERSION else ()
        rooms: list[str] = []
        if welcome.version >= _ROOMS_VERSION:
            in_welcome = any(fold_nick(user) == fold_nick(self.nick) for user in welcome.users)
            for room in self._remembered:
                if in_welcome and fold_room(room) == fold_room(welcome.room):
                    continue
                try:
                    Join(room=room)
                except ValueError:
                    self._remembered.discard(room)  # not a room name any more: never sent again
                    continue
                rooms.append(room)
        with self._rejoin_lock:
            self._rejoins.start(rooms, time.monotonic())
        self._rejoined.clear()

    def _send_rejoins(self) -> bool:
        """Send the joins that are due (the reader, for the first burst after a login; the
        keepalive thread for the rest); True if more wait. A lost connection ends it: the
        next login queues the rooms again."""
        with self._rejoin_lock:
            rooms = self._rejoins.due(time.monotonic())
            more = len(self._rejoins) > 0
        for room in rooms:
            try:
                self.send(Join(room=room))
            except ConnectionError:
                return False
        return more

    def _rejoin_refused(self, event: Error) -> bool:
        """The reader, for an error naming a room: False if it is a rejoin refused for rate
        that will be sent again (the program need not hear of it)."""
        with self._rejoin_lock:
            refusal = self._rejoins.refused(
                event.ref, for_rate=event.code == Code.RATE_LIMITED, now=time.monotonic()
            )
        if refusal is Refusal.RETRYING:
            self._wake.set()
            return False
        return True

    def _room_event(self, event: Entered | Left | Renamed) -> bool:
        """The reader's bookkeeping of the rooms we are in and remember, and of our nick.
        True if `event` goes on to the program; False for a `renamed` of us to a nick we
        did not ask for, which changes nothing and is reported as an `Error` instead."""
        if isinstance(event, Entered):
            with self._rejoin_lock:
                self._rejoins.entered(event.room)
            if fold_room(event.room) not in {fold_room(r) for r in self._in_rooms}:
                self._in_rooms = (*self._in_rooms, event.room)
            self._remember(self._remembered.add(event.room))
        elif isinstance(event, Left):
            if fold_nick(event.nick) != fold_nick(self.nick):
                return True
            self._in_rooms = tuple(r for r in self._in_rooms if fold_room(r) != fold_room(event.room))
            self._remember(self._remembered.discard(event.room))  # parted, kicked or banned
        elif fold_nick(event.old) == fold_nick(self.nick):
            if fold_nick(event.new) != fold_nick(self.nick):
                return self._own_rename(event.new)
        elif (
            fold_nick(event.new) != fold_nick(self.nick)
            and self.keys is not None
            and self.keys.is_contact(event.old)
        ):
            self._check_rename_claim(event.old, event.new)  # a claim about a contact: checked
        return True

    def _check_rename_claim(self, old: str, new: str) -> None:
        """The reader, for a `renamed` of contact `old` to `new`: check it on a helper thread
        (it waits for the reader to bring `new`'s keys). At most `_MAX_FOLLOWING` at once."""
        with self._follow_lock:
            if fold_nick(new) in self._following:
                return  # being checked already: that check tells the program
            crowded = len(self._following) >= _MAX_FOLLOWING
            if not crowded:
                self._following.add(fold_nick(new))
        if crowded:
            # Not checked, but never silently: the user was told it would be.
            log.info("too many renames to check at once: one is not checked")
            self._events.put(
                RenameUnconfirmed(
                    old=old, new=new, reason=f"too many renames at once; /query {new} to check their key"
                )
            )
            return
        self._spawn(lambda: self._follow_rename(old, new), f"securechat-rename-{new}")

    def _follow_rename(self, old: str, new: str) -> None:
        """A helper thread: the server says contact `old` is now `new`, which is only a
        claim (a server may say it of anyone). Fetch `new`'s keys and let the keystore
        judge (`WhisperKeys.follow_rename`): the event it makes tells the program whether
        to follow (`KnownKeyRenamed`), or that `new` is treated as `old` with a changed
        key (`KeyChanged`), or that nothing could be confirmed (`RenameUnconfirmed`)."""
        try:
            keys = self._require_keys()  # inside: however it ends, `new` is no longer counted
            reply: Keys | None = None
            reason = ""
            for attempt in range(_FOLLOW_TRIES):
                try:
                    with self._whisper_lock:
                        reply = self._fetch(new, self._timeout)
                    break
                except LookupError as exc:  # no keys yet: their client publishes them after the rename
                    reason = str(exc)
                    if attempt + 1 < _FOLLOW_TRIES and self._closing.wait(_FOLLOW_RETRY * 2**attempt):
                        return
                except (E2EError, TimeoutError, ConnectionError, ProtocolError) as exc:
                    reason = str(exc)
                    break
            if reply is None:
                if not self._closing.is_set():
                    self._events.put(
                        RenameUnconfirmed(old=old, new=new, reason=f"no keys for {new}: {reason}")
                    )
                return
            try:
                with self._whisper_lock:
                    told = keys.follow_rename(old, reply)
            except KeystoreError as exc:
                self._events.put(StorageFailed(reason=str(exc)))
                return
            except E2EError as exc:  # keys that do not verify: nothing changed
                self._events.put(RenameUnconfirmed(old=old, new=new, reason=str(exc)))
                return
            for item in told:
                self._events.put(item)
        finally:
            with self._follow_lock:
                self._following.discard(fold_nick(new))

    def _own_rename(self, new: str) -> bool:
        """The reader, for a `renamed` of us to `new`: obeyed only if `new` is the nick
        `rename` asked for. Otherwise the server is renaming us on its own (or to another
        nick than asked): following it would bind our identity to a nick we never chose,
        sign a bundle for it and move the keystore, so nothing changes and the program
        gets an `Error` naming what the server did. False then (the `Renamed` is dropped)."""
        asked = self._asked_rename()
        if asked is not None and fold_nick(asked) == fold_nick(new):
            with self._conn_lock:
                self._guest_renaming = None
            self._renamed(new)
            return True
        wanted = f"you asked for {asked}" if asked is not None else "you did not ask to be renamed"
        log.warning("the server renamed us to a nick we did not ask for: ignored")
        self._events.put(
            Error(
                code=Code.UNEXPECTED,
                reason=f"the server renamed you to {new}, but {wanted}: ignored, you are still {self.nick} "
                "(the server is misbehaving)",
            )
        )
        return False

    def _asked_rename(self) -> str | None:
        """The nick our unanswered `rename` asked for, None if none waits: an identity
        user's keystore record (the one a restart finishes), a guest's `_guest_renaming`."""
        if self.keys is not None:
            return self.keys.renaming()
        with self._conn_lock:
            return self._guest_renaming

    def _remember(self, changed: bool) -> None:
        if changed and self._rooms_store is not None:
            try:
                self._rooms_store.save_rooms(self._remembered.names())
            except KeystoreError as exc:
                self._storage_trouble(exc)

    def _renamed(self, new: str) -> None:
        """The server renamed us (reader thread): take the new nick, rebind our identity to
        it, move the keystore (or a guest's rooms file) to its place, publish a fresh bundle."""
        self.nick = new
        if isinstance(self._rooms_store, RoomsFile):
            try:
                self._rooms_store.move_to(self._rooms_store.directory.with_name(fold_nick(new)))
            except KeystoreError as exc:
                self._storage_trouble(exc)
        if self.keys is None:
            return
        try:
            frames = self.keys.renamed(new)
        except KeystoreError as exc:
            # Rebound in memory all the same; the next login's prekey count (none: the
            # server dropped them with the old nick) brings the publication.
            self._storage_trouble(exc)
            return
        for frame in frames:
            try:
                self.send(frame)
            except ConnectionError:
                return

    def whisper(self, nick: str, text: str, timeout: float = 10.0) -> str:
        """Encrypt `text` for `nick` and send it; returns the message id (for its status).

        Fetches and verifies `nick`'s keys first if there is no session yet. With
        `reconnect`, a whisper whose connection drops before the server confirms it is
        sent again after reconnecting (watch for its `WhisperStatus`). Raises
        `IdentityChanged` (their key changed: nothing was sent), `BundleError` (the keys
        the server gave are not acceptable), `LookupError` (no such user, or no keys),
        `TimeoutError`, `ConnectionError`, and `ValueError` (empty or too long text).
        Must not be called from the thread that reads events.
        """
        keys = self._require_keys()
        if not text:
            raise ValueError("text: empty")
        if fold_nick(nick) == fold_nick(self.nick):
            raise ValueError("you cannot whisper yourself: whispers go to someone else")
        with self._whisper_lock:
            if not self._online:  # refuse before the ratchet moves: nothing half-sent
                raise self._offline()
            self._flush_resends()  # older unconfirmed whispers first
            if not keys.has_session(nick):
                # Theirs (every device in their list), and ours if another device of ours
                # has no session yet (it gets a copy).
                for who in keys.devices_to_fetch(nick) or [nick]:
                    for told in keys.start_session(self._fetch(who, timeout)):
                        self._events.put(told)
                for failed in keys.failed_to(nick):  # older ones first, in the new session
                    self._send_kept(keys.reseal(failed))
                # A device the list names that the server gave no keys for gets nothing:
                # said, so that a server keeping a device out is noticed.
                for who, device in keys.unreachable(nick):
                    if device:
                        self._events.put(DeviceUnreachable(peer=who, device=device))
            # Kept in the outbox with the ratchet steps, and sent again after a reconnect
            # or a restart until the server says "stored": the ratchet has moved on, so
            # these exact bytes are the only way to get this text to the peer (the
            # server drops a repeat of the same id). One copy per device.
            frames = keys.seal_all(nick, text, secrets.token_hex(8))
            for frame in frames:
                self._send_kept(frame)
        return frames[0].id

    def _send_kept(self, frame: Whisper) -> None:
        """Send a whisper kept in the outbox; under `_whisper_lock`. A lost connection is
        not an error: it goes out again as soon as the client is back."""
        self._unconfirmed[_copy_key(frame)] = frame
        with contextlib.suppress(ConnectionError):
            self.send(frame)

    def _flush_resends(self) -> None:
        """If the reader asked for it, send the unconfirmed whispers again; under `_whisper_lock`."""
        if self._needs_resend.is_set():
            self._needs_resend.clear()
            self._resend_unconfirmed()

    def _resend_soon(self) -> None:
        """Called by the reader: have the unconfirmed whispers sent again, by a short-lived
        thread (the reader must not wait for `_whisper_lock`: a whisper holding it may be
        waiting for the reader to bring keys). A whisper sent meanwhile sends them first."""
        self._needs_resend.set()

        def flush() -> None:
            with self._whisper_lock:
                self._flush_resends()

        self._spawn(flush, f"securechat-resend-{self.nick}")

    def _resend_unconfirmed(self) -> None:
        """Send every unconfirmed whisper again, oldest first; under `_whisper_lock`."""
        for frame in list(self._unconfirmed.values()):
            try:
                self.send(frame)
            except ConnectionError:
                return  # lost again; the read loop notices and reconnects

    def reply(self, text: str, timeout: float = 10.0) -> tuple[str, str]:
        """Whisper the last person who whispered us, if their key is still the one that did.

        Returns (nick, message id). Raises `LookupError` if nobody has whispered us or the
        nick now belongs to another key, plus what `whisper` raises.
        """
        keys = self._require_keys()
        if self.last_whisperer is None:
            raise LookupError("nobody has whispered you yet")
        nick, fingerprint = self.last_whisperer
        info = keys.peer_info(nick)
        if info is None or info.identity.fingerprint() != fingerprint or info.pending is not None:
            raise LookupError(
                f"{nick}'s key has changed since they whispered you; use /msg {nick} to be sure"
            )
        return nick, self.whisper(nick, text, timeout)

    def reset_session(self, nick: str) -> None:
        """Start over with `nick`: the next whisper fetches their keys again (their pin is kept)."""
        self._require_keys().forget_sessions(nick)

    def trust(self, nick: str) -> None:
        """Accept `nick`'s changed key, show whispers held meanwhile, and send again (in a
        new session) whispers their client could not decrypt. Raises `NotTrusted`."""
        keys = self._require_keys()
        self._deliver(keys.trust(nick))
        if keys.failed_to(nick):
            self._start_recovery(nick, decided=True)

    def history(self, nick: str, last: int = HISTORY_SHOWN) -> list[StoredMessage]:
        """The newest `last` whispers with `nick`, both ways, oldest first (from the inbox)."""
        return self._require_keys().history(nick, last)

    def _start_recovery(self, nick: str, *, decided: bool = False) -> None:
        """Start `_recover` on its own thread (called by the reader, or by `trust`)."""
        self._spawn(lambda: self._recover(nick, decided), f"securechat-recover-{nick}")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        """Run `target` on a short-lived helper thread that `close` waits for; none once
        the client is closing (any thread)."""
        with self._handed_lock:
            if self._closing.is_set():
                return
            self._helpers = [t for t in self._helpers if t.is_alive()]
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._helpers.append(thread)
            thread.start()

    def _recover(self, nick: str, decided: bool = False) -> None:
        """After `nick`'s client could not decrypt our whispers: start a new session from
        freshly fetched keys and send those whispers again in it. Runs on its own thread
        (it waits for the reader to bring the keys). If their identity changed, the user
        is told (`KeyChanged`) and the whispers wait for `trust`. A whisper is sent again
        by itself only `_AUTO_RESENDS` times; after that only when the user `decided`
        (/trust), so a recipient whose published keys keep failing causes no loop. Every
        failure ends in an event, never in a dead thread."""
        keys = self._require_keys()
        try:
            with self._whisper_lock:
                failed = keys.failed_to(nick)
                again = [m for m in failed if m.resends < _AUTO_RESENDS or decided]
                if len(again) < len(failed):
                    self._events.put(
                        ResendPending(
                            peer=nick,
                            count=len(failed) - len(again),
                            reason="their client could not decrypt it in a new session either; "
                            f"check with them, then /trust {nick} to send it again",
                        )
                    )
                if not again:
                    return  # nothing to send: no session dropped, no prekey used up
                keys.forget_sessions(nick)
                try:
                    for told in keys.start_session(self._fetch(nick, self._timeout)):
                        self._events.put(told)
                except IdentityChanged as exc:
                    self._events.put(_key_changed(nick, exc, unsent=len(failed)))
                    return
                self._flush_resends()
                for message in again:
                    self._send_kept(keys.reseal(message))
        except KeystoreError as exc:
            self._events.put(StorageFailed(reason=str(exc)))
        except (E2EError, LookupError, TimeoutError, ConnectionError, ProtocolError) as exc:
            self._events.put(ResendPending(peer=nick, count=len(keys.failed_to(nick)), reason=str(exc)))

    def verify(self, nick: str, number: str) -> bool:
        """Mark `nick` verified if `number` is your safety number with them."""
        ok, incoming = self._require_keys().verify(nick, number)
        self._deliver(incoming)
        return ok

    def _require_keys(self) -> WhisperKeys:
        if self.keys is None:
            raise NotTrusted("this client has no identity keys (guest): it cannot whisper")
        return self.keys

    def _fetch(self, nick: str, timeout: float) -> Keys:
        while not self._fetch_replies.empty():  # stale answers from a fetch that timed out
            self._fetch_replies.get_nowait()
        if self._closing.is_set():  # checked after the drain: close() sets it, then wakes us
            raise ConnectionError("the client was closed")
        ref = _FETCH_REF_PREFIX + secrets.token_hex(8)
        with self._fetch_lock:
            self._fetch_pending = _PendingFetch(ref, fold_nick(nick))
        try:
            self.send(FetchKeys(nick=nick, ref=ref))
            reply = self._fetch_replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no keys for {nick} from the server within {timeout} s") from None
        finally:
            with self._fetch_lock:
                self._fetch_pending = None
        if isinstance(reply, Error):
            raise LookupError(reply.reason or reply.code)
        if fold_nick(reply.nick) != fold_nick(nick):
            raise BundleError(f"asked for {nick}'s keys, got {reply.nick}'s")
        return reply

    def quit(self, reason: str = "") -> None:
        """Leave; the server answers `Bye` and the event stream ends (no reconnect)."""
        self._quitting = True
        self.send(Quit(reason=reason))

    # -- receiving ------------------------------------------------------------------

    def next_event(self, timeout: float | None = None) -> ClientEvent:
        """The next event. Raises `TimeoutError` if none came within `timeout` seconds.

        A `WhisperReceived` (or `WhisperCopied`) counts as shown once the program asks
        for the next event (or closes the client): one it was handling when it died is
        handed out again at the next start, as a replay. After the `Disconnected` item, every call returns
        it again at once.
        """
        self._mark_handed()
        item = self._get(timeout)
        if isinstance(item, (WhisperReceived, WhisperCopied)):
            with self._handed_lock:
                self._handed.append(item)
        return item

    def _get(self, timeout: float | None) -> ClientEvent:
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event within {timeout} s") from None
        if isinstance(item, Disconnected):
            self._events.put(item)
        if self._events.qsize() < self._max_events // 2:
            self._caught_up.set()
        with self._watch_lock:
            for watcher in self._event_watchers:
                watcher.put(item)
        return item

    def _mark_handed(self) -> None:
        with self._handed_lock:
            handed, self._handed = self._handed, []
        if handed and self.keys is not None:
            try:
                self.keys.mark_shown(handed)
            except KeystoreError as exc:  # a lost mark costs only a replay at the next start
                log.info("could not mark whispers shown: %s", exc)

    def __iter__(self) -> Client:
        return self

    def __next__(self) -> ClientEvent:
        item = self.next_event()
        if isinstance(item, Disconnected):
            raise StopIteration
        return item

    def wait_for(self, kind: type[Event], timeout: float) -> Event:
        """Skip events until one of type `kind`; raise `TimeoutError` or `ConnectionError`."""
        item = self.wait_for_any(kind, timeout)
        assert isinstance(item, Event)
        return item

    def wait_for_any(self, kind: type[object], timeout: float) -> ClientEvent:
        """Like `wait_for`, for client-made events too (e.g. `WhisperReceived`). A whisper
        skipped on the way is not handed out: it stays unshown, for the next start."""
        self._mark_handed()
        deadline = time.monotonic() + timeout
        while True:
            item = self._get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(item, Disconnected):
                raise ConnectionError(item.reason)
            if isinstance(item, kind):
                if isinstance(item, WhisperReceived):
                    with self._handed_lock:
                        self._handed.append(item)
                return item

    def _run(self) -> None:
        """The reader thread: read until the connection ends, reconnect if asked to. Whatever
        happens, it ends with `Disconnected`: a program never waits on a dead reader.

        A connection that ends broken (a malformed frame, a flood, an exception while
        handling a frame) is tried again like a lost one, up to `_BROKEN_IN_A_ROW` in a
        row; then the client gives up, saying why."""
        try:
            while True:
                started = time.monotonic()
                reason, ending = self._read_until_closed()
                if ending is Ending.BROKEN:
                    lasted = time.monotonic() - started
                    self._broken_in_a_row = 1 if lasted >= _HEALTHY_AFTER else self._broken_in_a_row + 1
                    if self._broken_in_a_row >= _BROKEN_IN_A_ROW:
                        reason = f"{reason} ({self._broken_in_a_row} times in a row: giving up)"
                        break
                else:
                    self._broken_in_a_row = 0
                if ending is Ending.BEHIND:
                    self._wait_caught_up()
                if ending is Ending.FINAL or not self._reconnect or self._closing.is_set():
                    break
                gave_up = self._reconnect_loop(reason)
                if gave_up is not None:
                    reason = gave_up
                    break
        except Exception as exc:  # a bug of ours outside a connection: end visibly, never silently
            log.debug("the client's reader failed", exc_info=True)
            reason = f"the client failed: {type(exc).__name__}: {exc}"
            with self._conn_lock:
                self._online = False
                channel = self._channel
            if channel is not None:
                channel.close()
        self._done = True
        self._closing.set()  # for good: the keepalive thread ends too
        self._wake.set()
        self._events.put(Disconnected(reason=reason))

    def _read_until_closed(self) -> tuple[str, Ending]:
        """Why the connection ended, and what that means for the client."""
        channel = self._channel
        assert channel is not None
        reason, ending = "connection closed by the server", Ending.LOST
        self._storage_failed = False
        self._pages.clear()  # a list the last connection left unfinished is never completed
        first = True
        try:
            while True:
                # Drain first: frames that came in the same read as the welcome are
                # already buffered and must not wait for the next packet.
                with self._conn_lock:
                    events = self._drain()
                for event in events:
                    self._check_room()
                    if not self._dispatch(event):
                        continue
                    if isinstance(event, Bye):
                        reason = event.reason or "server said goodbye"
                    elif isinstance(event, Error) and event.fatal:
                        reason = event.reason or event.code
                        ending = Ending.FINAL if event.code in _FINAL_CODES else Ending.LOST
                if self._conn.state is State.CLOSED:
                    break
                if first:
                    # What came with the welcome is handled, the autojoin rooms' `entered`
                    # among it: the remembered rooms still missing are joined now.
                    first = False
                    with self._rejoin_lock:
                        self._rejoins.release()
                    if self._send_rejoins():
                        self._wake.set()  # the keepalive thread paces the rest
                    self._rejoined.set()
                data = channel.recv()
                self._last_heard = time.monotonic()
                with self._conn_lock:
                    self._conn.receive_data(data)
        except RemoteProtocolError as exc:
            reason, ending = f"the server broke the protocol: {exc}", Ending.BROKEN
        except _Overflow as exc:
            reason, ending = str(exc), Ending.BEHIND
        except (OSError, ssl.SSLError) as exc:  # ConnectionError is an OSError
            reason = "connection closed" if self._closing.is_set() else f"connection lost: {exc}"
        except Exception as exc:  # a frame we could not handle, or a bug: never a dead reader
            log.debug("the client's reader failed", exc_info=True)
            reason, ending = f"the client failed: {type(exc).__name__}: {exc}", Ending.BROKEN
        with self._conn_lock:
            self._online = False
        self._in_rooms = ()  # until the next login's `entered` frames
        with self._rejoin_lock:
            self._rejoins.clear()  # the next login queues them again
        self._rejoined.set()
        channel.close()
        if self._quitting or self._closing.is_set():
            ending = Ending.FINAL
        return reason, ending

    def _wait_caught_up(self) -> None:
        """After an overflow, wait (reader thread) until the program has read half of what
        waits, or the client closes: a slow program is not a broken server, so the client
        comes back when it can keep up instead of giving up."""
        while self._events.qsize() >= self._max_events // 2 and not self._closing.is_set():
            self._caught_up.clear()
            if self._events.qsize() < self._max_events // 2:
                break
            self._caught_up.wait(1.0)  # woken by next_event; the timeout re-checks `_closing`

    def _check_room(self) -> None:
        """Called by the reader before each frame: raise `_Overflow` if the program has
        left `max_events` events unread. Checked before the frame is handled, so a
        whisper is neither decrypted nor acknowledged then: the server keeps it."""
        waiting = self._events.qsize()
        if waiting >= self._max_events:
            raise _Overflow(
                f"{waiting} events are waiting for the program: it is not reading them, "
                "or the server sends more than it can read"
            )

    def _reconnect_loop(self, reason: str) -> str | None:
        """Try to log in again with growing delays. None once back; otherwise why the
        client stops (closed meanwhile, refused for good, or a server that breaks the
        protocol during every login)."""
        attempt = 0
        while True:
            delay = self._backoff.delay(attempt)
            attempt += 1
            self._events.put(Reconnecting(attempt=attempt, delay=delay, reason=reason))
            if self._closing.wait(delay):
                return reason
            try:
                channel, conn, welcome, nonce = self._establish()
            except LoginRejected as exc:
                if exc.code in _FINAL_CODES - {Code.NICK_TAKEN}:  # our old session may linger: retry
                    return f"the server refused the login: {exc}"
                reason = str(exc)
                continue
            except _BrokenLogin as exc:
                self._broken_in_a_row += 1
                if self._broken_in_a_row >= _BROKEN_IN_A_ROW:
                    return f"{exc} ({self._broken_in_a_row} times in a row: giving up)"
                reason = str(exc)
                continue
            except ConnectError as exc:
                reason = str(exc)
                continue
            with self._conn_lock:
                self._channel, self._conn, self.welcome, self._online = channel, conn, welcome, True
                self._login_nonce = nonce
            if self._closing.is_set():
                channel.shutdown()
            self._last_heard = time.monotonic()
            self._rejoin(welcome)
            self._resend_soon()
            self._events.put(Reconnected(users=welcome.users))
            return None

    def _keep_alive(self) -> None:
        """The keepalive thread: ping a quiet server, and cut a connection whose ping
        goes unanswered for `ping_timeout`, so that the reader reconnects. Quiet means
        nothing heard for `ping_interval`, or for `ping_timeout` while a whisper waits
        for the server's confirmation. It also sends the rejoins after a login's first
        burst, at their pace (`RejoinQueue`), woken by `_wake` when there are some."""
        period = max(0.05, min(self._ping_interval, self._ping_timeout) / 4)
        pinged_at: float | None = None  # when the unanswered ping went out
        while True:
            with self._rejoin_lock:
                next_join = self._rejoins.next_due()
            wait = period if next_join is None else min(period, max(0.0, next_join - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()
            if self._closing.is_set():
                return
            self._send_rejoins()
            now, heard = time.monotonic(), self._last_heard
            if not self._online or (pinged_at is not None and heard >= pinged_at):
                pinged_at = None  # offline (the reader deals with it), or answered
            elif pinged_at is not None:
                if now - pinged_at > self._ping_timeout:
                    log.info("no answer from the server for %.1f s: reconnecting", now - heard)
                    pinged_at = None
                    with self._conn_lock:
                        channel = self._channel
                    if channel is not None:
                        channel.shutdown()  # wakes the reader, which reconnects
            elif now - heard > self._ping_interval or (
                self._unconfirmed and now - heard > self._ping_timeout
            ):
                pinged_at = now
                with contextlib.suppress(ConnectionError):
                    self.send(Ping(token=f"{now:.0f}"))

    def _dispatch(self, event: Event) -> bool:
        """Handle frames the client answers itself; True if `event` is also for the user.

        Raises `RemoteProtocolError` (fatal) for a sequence of `members` pages no server
        may send: the connection ends as broken, saying so."""
        try:
            if isinstance(event, Members):
                self._pages.add(event)
                return False  # the program gets the whole list with the frame that ends it
            if isinstance(event, (Entered, Names)):
                event = self._pages.complete(event)
        except ValueError as exc:
            raise RemoteProtocolError(Code.INVALID, f"{event.TYPE}: {exc}", fatal=True) from None
        if isinstance(event, Error) and event.ref.startswith("#") and not self._rejoin_refused(event):
            return False  # a rejoin refused for rate: sent again later, nothing to show
        if isinstance(event, WhisperStatus):
            if not self._whisper_status(event):
                return False  # not a whisper of ours (or old news): nothing to show
        elif isinstance(event, Error) and any(key[2] == event.ref for key in list(self._unconfirmed)):
            copies = [k for k in list(self._unconfirmed) if k[2] == event.ref]
            refused = [k for k in copies if k[1]]
            # All copies share the whisper's id: the refusal is taken as a device copy's
            # only when the whisper's own copy is not waiting for an answer too.
            if (
                event.code == Code.NO_SUCH_USER
                and refused
                and len(refused) == len(copies)
                and self.keys is not None
            ):
                # A copy for a device the server no longer has (unlinked): learn their list.
                keys, (to, device, _) = self.keys, refused[0]
                self._spawn(
                    functools.partial(
                        self._refresh_devices, to, "", lambda: device in keys.linked_devices(to)
                    ),
                    f"securechat-devices-{to}",
                )
                return False
            if event.code == Code.STORE_UNAVAILABLE:
                self._store_unavailable(self._backoff)
            elif event.code == Code.QUOTA:  # the recipient's mailbox (or ours) is full: hours, not seconds
                self._store_unavailable(_QUOTA_BACKOFF)
        if isinstance(event, (Entered, Left, Renamed)) and not self._room_event(event):
            return False  # a rename of us we did not ask for: reported instead, nothing changed
        if isinstance(event, Message):
            if event.history and event.ts <= self._newest_line:
                return False  # replayed after a reconnect: this client showed it already
            self._newest_line = max(self._newest_line, event.ts)
        if isinstance(event, Ping):
            self.send(Pong(token=event.token))
        elif isinstance(event, PrekeyCount):
            # Also passed on: it tells a program when its keys are published.
            try:
                publish = self.keys.publications(event) if self.keys is not None else []
            except KeystoreError as exc:  # new prekeys could not be kept: publish none
                self._storage_trouble(exc)
                publish = []
            for frame in publish:
                self.send(frame)
        elif isinstance(event, Keys):
            if self._take_fetch(event):
                self._fetch_replies.put(event)
            else:  # nobody asked, or not this fetch: kept, they would pile up
                log.debug("dropping keys nobody asked for")
            return False
        elif isinstance(event, Error) and event.ref and self._take_fetch(event):
            # Matched by the fetch's ref (or, from an old server, the nick in `ref`): a
            # "rate-limited" for a room line arriving meanwhile (ref "" or a room) is not
            # the fetch's answer, nor is a late refusal of an earlier fetch.
            self._fetch_replies.put(event)
            return False
        elif isinstance(event, Delivery):
            # A whisper delivered twice (pushed live while also queued at login, or after a
            # crash) is recognised by its message id inside WhisperKeys and only acked.
            if self.keys is not None:
                try:
                    incoming = self.keys.receive(event)
                except KeystoreError as exc:
                    # Not acked: the server keeps it and delivers it again at the next login.
                    self._storage_trouble(exc)
                    return False
                self._deliver(incoming)
            return False
        own_list = isinstance(event, Devices) and fold_nick(event.nick) == fold_nick(self.nick)
        if isinstance(event, Devices) and own_list and self.keys is not None:
            try:
                self.keys.accept_own_devices(event.devices)
            except (E2EError, KeystoreError) as exc:
                # Not ours, or older than one we saw: the server is wrong or lying.
                log.warning("refused our device list from the server: %s", exc)
                self._events.put(StorageFailed(reason=f"refused our device list from the server: {exc}"))
                return False
        if isinstance(event, Error) and not event.fatal:
            self._forget_refused_rename(event)
        self._events.put(event)
        return True

    def _forget_refused_rename(self, event: Error) -> None:
        """The reader, for a non-fatal error no key fetch took: if it refuses our pending
        rename (its `ref` is the nick asked for), the keystore forgets the rename."""
        if not event.ref:
            return
        if self.keys is None:
            with self._conn_lock:
                asked = self._guest_renaming
                if asked is not None and fold_nick(asked) == fold_nick(event.ref):
                    self._guest_renaming = None
            return
        renaming = self.keys.renaming()
        if renaming is not None and fold_nick(renaming) == fold_nick(event.ref):
            try:
                self.keys.rename_refused()
            except KeystoreError as exc:
                self._storage_trouble(exc)

    def _take_fetch(self, event: Keys | Error) -> bool:
        """Called by the reader with what may answer a key fetch: True (and the fetch is
        no longer pending) if the fetch waiting is answered by it."""
        with self._fetch_lock:
            pending = self._fetch_pending
            if pending is None or not pending.answered_by(event):
                return False
            self._fetch_pending = None
            return True

    def _deliver(self, incoming: Incoming) -> None:
        # The whispers are in the inbox already: hand them on first, then ack. An ack
        # lost with the connection is harmless (the server delivers again, and the
        # inbox recognises the message id); an event lost after its ack would not be.
        for item in incoming.events:
            if isinstance(item, WhisperReceived):
                self.last_whisperer = (item.sender, item.fingerprint)
            self._events.put(item)
        for ack in incoming.acks:
            try:
                self.send(ack)
            except ConnectionError:
                return
        for sender in incoming.fetch:
            with self._learning_lock:
                if fold_nick(sender) in self._learning:
                    continue  # one fetch at a time per sender: it reads every held whisper
                self._learning.add(fold_nick(sender))
            self._spawn(functools.partial(self._learn_devices, sender), f"securechat-devices-{sender}")

    def _refresh_devices(self, nick: str, msg_id: str, stale: Callable[[], bool]) -> None:
        """`nick`'s device list changed: if it is still `stale` once this thread has the
        whisper lock (another refresh may have fetched it meanwhile), fetch their keys;
        then drop the unconfirmed copies for devices the list no longer names, and send
        whisper `msg_id` (if any) to the devices it did not reach. On its own thread (it
        waits for the reader to bring the keys)."""

        def refresh(keys: WhisperKeys) -> None:
            with self._whisper_lock:
                if stale():
                    self._start_sessions(keys, nick)
                for frame in keys.drop_unlisted(nick):
                    self._unconfirmed.pop(_copy_key(frame), None)
                if msg_id:
                    for frame in keys.seal_missing(nick, msg_id):
                        self._send_kept(frame)

        self._keys_task(nick, "refresh the devices of", refresh)

    def _learn_devices(self, sender: str) -> None:
        """A whisper came from a device of `sender` no list we have names: fetch their
        keys (their list with them), then read the whispers held meanwhile. On its own
        thread (it waits for the reader to bring the keys)."""

        def learn(keys: WhisperKeys) -> None:
            with self._whisper_lock:
                self._start_sessions(keys, sender)
            with self._learning_lock:  # whispers held from now on start a fetch of their own
                self._learning.discard(fold_nick(sender))
            self._deliver(keys.retry_unknown(sender))

        try:
            self._keys_task(sender, "learn the devices of", learn)
        finally:
            with self._learning_lock:
                self._learning.discard(fold_nick(sender))

    def _start_sessions(self, keys: WhisperKeys, nick: str) -> None:
        """Fetch `nick`'s keys and start the sessions they allow; under `_whisper_lock`."""
        for told in keys.start_session(self._fetch(nick, self._timeout)):
            self._events.put(told)

    def _keys_task(self, nick: str, what: str, body: Callable[[WhisperKeys], None]) -> None:
        """Run `body` (a helper thread's work with `nick`'s keys), telling the program
        what failed instead of letting the thread die."""
        keys = self._require_keys()
        try:
            body(keys)
        except KeystoreError as exc:
            self._events.put(StorageFailed(reason=str(exc)))
        except IdentityChanged as exc:
            self._events.put(_key_changed(nick, exc))
        except (E2EError, LookupError, TimeoutError, ConnectionError, ProtocolError) as exc:
            log.info("could not %s %s: %s", what, nick, exc)

    def _storage_trouble(self, exc: KeystoreError) -> None:
        """Tell the program our keystore failed a write: once per connection, not per whisper."""
        if not self._storage_failed:
            self._storage_failed = True
            self._events.put(StorageFailed(reason=str(exc)))

    def _whisper_status(self, status: WhisperStatus) -> bool:
        """The reader's part of a status: the outbox learns it, and a failure starts a
        new session and a resend (on another thread: it needs the reader). False if it
        is not about a whisper of ours the outbox still waits to hear of (an id we never
        sent, or a late "stored" after "delivered"): not to be shown."""
        if self.keys is None:
            return False  # a guest sends no whispers
        try:
            key = (fold_nick(status.to), self.keys.device_of(status.to, status.device), status.id)
            kept = self.keys.sent_status(status)
        except KeystoreError as exc:  # a lost mark costs a resend, which the server drops
            log.info("could not record a whisper's status: %s", exc)
            kept = None
            ours = key in self._unconfirmed  # the outbox cannot tell: go by what we sent
        else:
            ours = kept is not None
        self._unconfirmed.pop(key, None)  # every status means the server has that copy
        if not ours:
            return False
        if status.status == "stored":
            with self._timer_lock:
                self._store_retries = 0
            if self.keys.list_behind(status.to, status.devices):
                # They linked or unlinked a device since we last fetched their keys.
                keys, to, version = self.keys, status.to, status.devices
                self._spawn(
                    functools.partial(
                        self._refresh_devices, to, status.id, lambda: keys.list_behind(to, version)
                    ),
                    f"securechat-devices-{status.to}",
                )
        if kept is not None and kept.state is MessageState.FAILED:
            self._start_recovery(status.to)
        if kept is not None and ("/" in kept.peer or fold_nick(kept.peer) == fold_nick(self.nick)):
            # About a copy for another device (theirs, or one of ours: the only whispers
            # to our own nick) only: the status of the whisper's own copy is shown.
            return False
        with self._watch_lock:
            for watcher in self._status_watchers:
                watcher.put(status)
        return True

    def _store_unavailable(self, backoff: Backoff) -> None:
        """The server could not store a whisper (`store-unavailable`, or `quota-exceeded`
        with a longer `backoff`): send the unconfirmed ones again later, after a delay that
        grows with each round refused in a row, instead of at once (a full disk or a full
        mailbox stays full for a while). Called by the reader; one timer at a time."""
        with self._timer_lock:
            if self._resend_timer is not None:
                return  # a round is already scheduled: the refusals of one round count once
            delay = backoff.delay(self._store_retries)
            self._store_retries += 1
            self._resend_timer = threading.Timer(delay, self._resend_later)
            self._resend_timer.daemon = True
            self._resend_timer.start()

    def _resend_later(self) -> None:
        """The resend timer's thread: one round of resends."""
        with self._timer_lock:
            self._resend_timer = None
        if self._closing.is_set():
            return
        with self._whisper_lock:
            self._resend_unconfirmed()  # send() raises nothing here: a lost connection returns

    def _drain(self) -> list[Event]:
        events: list[Event] = []
        while True:
            try:
                event = self._conn.next_event()
            except RemoteProtocolError as exc:
                if exc.fatal:
                    raise
                # A frame type or field from a newer server: skip it, stay connected.
                log.debug("ignoring a frame from the server: %s", exc)
                continue
            if event is NEED_DATA or event is CLOSED:
                return events
            assert isinstance(event, Event)
            events.append(event)

    # -- closing --------------------------------------------------------------------

    @contextlib.contextmanager
    def watch_statuses(self) -> Iterator[queue.Queue[WhisperStatus]]:
        """A queue that gets a copy of every status of a whisper of ours while the block
        runs (as well as `next_event`, which still gets them): a way to follow a whisper
        sent from another thread without taking events from the program. Start it before
        the whisper is sent, so no status can come first. Any thread."""
        watcher: queue.Queue[WhisperStatus] = queue.Queue()
        with self._watch_lock:
            self._status_watchers.append(watcher)
        try:
            yield watcher
        finally:
            with self._watch_lock:
                self._status_watchers.remove(watcher)

    @contextlib.contextmanager
    def watch_events(self) -> Iterator[queue.Queue[ClientEvent]]:
        """A queue that gets a copy of every event the program takes (`next_event`,
        `wait_for_any`) while the block runs, in the order it takes them: a second view
        of this client for another program (client/handoff.py). Any thread."""
        watcher: queue.Queue[ClientEvent] = queue.Queue()
        with self._watch_lock:
            self._event_watchers.append(watcher)
        try:
            yield watcher
        finally:
            with self._watch_lock:
                self._event_watchers.remove(watcher)

    def close(self) -> None:
        """Drop the connection (without a quit), stop reconnecting, and wait for the
        reader. Whispers handed out by `next_event` count as shown."""
        self._closing.set()
        self._wake.set()
        with self._conn_lock:
            channel = self._channel
        if channel is not None:
            channel.shutdown()
        # First: a whisper waiting for keys holds the whisper lock the resend timer waits
        # for, and only this answer ends its wait.
        self._fetch_replies.put(_CLOSED)
        with self._timer_lock:
            timer = self._resend_timer
        if timer is not None:
            timer.cancel()
            if timer is not threading.current_thread():
                timer.join()  # a cancelled timer's thread still takes a moment to end
        for thread in (self._reader, self._keepalive):
            if thread is not None and thread is not threading.current_thread():
                thread.join()
        with self._handed_lock:  # after the reader: it starts no more helpers once closing
            helpers = list(self._helpers)
        for thread in helpers:
            if thread is not threading.current_thread():
                thread.join()
        with contextlib.suppress(KeystoreError):
            self._mark_handed()

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
