"""`Client`: a connection to a securechat server as a Python API. It never prints.

A reader thread turns incoming frames into events on a queue; `next_event` and
iteration hand them out. Sending methods may be called from any thread.
"""

from __future__ import annotations

import logging
import queue
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from ..e2e.errors import BundleError, NotTrusted
from ..protocol import (
    CLOSED,
    DEFAULT_ROOM,
    NEED_DATA,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Away,
    Bye,
    Challenge,
    Code,
    Connection,
    Delivery,
    Error,
    Event,
    FetchKeys,
    Hello,
    Keys,
    Message,
    Ping,
    Pong,
    PrekeyCount,
    ProtocolError,
    Quit,
    RemoteProtocolError,
    Role,
    Say,
    State,
    Welcome,
    Whisper,
    WhisperStatus,
    Who,
    fold_nick,
)
from ..transport import TlsChannel
from .backoff import Backoff
from .events import KeyChanged, Reconnected, Reconnecting, WhisperFailed, WhisperReceived
from .whispers import Incoming, WhisperKeys

__all__ = ["Client", "ConnectError", "Disconnected", "LoginRejected"]

log = logging.getLogger(__name__)

CLIENT_NAME = "securechat-py/0.1"


class ConnectError(Exception):
    """The server could not be reached or could not be trusted. The message is for a person."""


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


ClientEvent = Event | Disconnected | WhisperReceived | WhisperFailed | KeyChanged | Reconnecting | Reconnected

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
    }
)

#: Error codes that answer a `fetch_keys` (routed to the waiting `whisper` call).
_FETCH_ERRORS = frozenset({Code.NO_SUCH_USER, Code.NO_KEYS, Code.RATE_LIMITED, Code.NOT_REGISTERED})


class Client:
    """One user's connection.

    Call `connect()` (or use `with`), then `say`/`who`/`quit`, and read events with
    `next_event(timeout)` or by iterating, which stops after `Disconnected`.
    """

    def __init__(
        self,
        nick: str,
        *,
        context: ssl.SSLContext,
        host: str = "127.0.0.1",
        port: int = 7443,
        server_hostname: str | None = None,
        timeout: float = 10.0,
        keys: WhisperKeys | None = None,
        reconnect: bool = False,
        backoff: Backoff | None = None,
    ) -> None:
        self.nick = nick
        self.keys = keys
        self.host = host
        self.port = port
        self._context = context
        self._server_hostname = server_hostname or host
        self._timeout = timeout
        self._reconnect = reconnect
        self._backoff = backoff or Backoff()
        self._conn = Connection(Role.CLIENT)
        self._conn_lock = threading.Lock()
        self._online = False
        self._quitting = False
        self._closing = threading.Event()
        self._unconfirmed: dict[str, Whisper] = {}  # sent, not yet reported stored
        self._newest_line = float("-inf")  # server time of the newest room line seen
        self._channel: TlsChannel | None = None
        self._events: queue.Queue[ClientEvent] = queue.Queue()
        self._whisper_lock = threading.Lock()  # one whisper (and its key fetch) at a time
        self._fetch_pending = False
        self._fetch_replies: queue.Queue[Keys | Error] = queue.Queue()
        self.last_whisperer: tuple[str, str] | None = None  # (nick, fingerprint) for /r
        self._reader: threading.Thread | None = None
        self._done = False
        self.welcome: Welcome | None = None

    # -- connecting ---------------------------------------------------------------

    def connect(self) -> Welcome:
        """Connect, verify the server over TLS, log in, and start receiving.

        Raises `ConnectError` (unreachable, certificate not trusted, host name
        mismatch, no answer) or `LoginRejected` (the server refused the nick).
        With `reconnect`, later losses of the connection are retried by themselves.
        """
        channel, conn, welcome = self._establish()
        with self._conn_lock:
            self._channel, self._conn, self.welcome, self._online = channel, conn, welcome, True
        self._reader = threading.Thread(target=self._run, name=f"securechat-client-{self.nick}", daemon=True)
        self._reader.start()
        return welcome

    def _establish(self) -> tuple[TlsChannel, Connection, Welcome]:
        where = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._timeout)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = TlsChannel(sock, self._context, server_side=False, server_hostname=self._server_hostname)
        conn = Connection(Role.CLIENT)
        try:
            channel.handshake()
            welcome = self._login(channel, conn)
        except ssl.SSLCertVerificationError as exc:
            channel.close()
            raise ConnectError(
                f"refusing {where}: its certificate cannot be trusted ({exc.verify_message}). "
                "Check --cafile and --host."
            ) from None
        except (ssl.SSLError, OSError, ProtocolError) as exc:
            channel.close()
            raise ConnectError(f"TLS connection to {where} failed: {exc}") from None
        except LoginRejected:
            channel.close()
            raise
        sock.settimeout(None)
        return channel, conn, welcome

    def _login(self, channel: TlsChannel, conn: Connection) -> Welcome:
        identity = self.keys.identity.sig_key if self.keys is not None else b""
        hello = Hello(version=PROTOCOL_VERSION, nick=self.nick, client=CLIENT_NAME, identity=identity)
        channel.send(conn.send(hello))
        while True:
            data = channel.recv()
            conn.receive_data(data)
            while (event := conn.next_event()) is not NEED_DATA:
                if event is CLOSED:
                    raise ConnectError("the server closed the connection during login")
                if isinstance(event, Welcome):
                    return event
                if isinstance(event, Error):
                    raise LoginRejected(event.code, event.reason)
                if isinstance(event, Bye):
                    raise LoginRejected("bye", event.reason)
                if isinstance(event, Ping):
                    channel.send(conn.send(Pong(token=event.token)))
                if isinstance(event, Challenge) and self.keys is not None:
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
        with self._whisper_lock:
            if not self._online:  # refuse before the ratchet moves: nothing half-sent
                raise self._offline()
            if not keys.has_session(nick):
                keys.start_session(self._fetch(nick, timeout))
            header, ciphertext = keys.encrypt(nick, text)
            msg_id = secrets.token_hex(8)
            frame = Whisper(to=nick, id=msg_id, header=header, ciphertext=ciphertext)
            # Kept until the server says "stored", and sent again after a reconnect: the
            # ratchet has already moved on, so these exact bytes are the only way to get
            # this text to the peer (the server drops a repeat of the same id).
            self._unconfirmed[msg_id] = frame
            try:
                self.send(frame)
            except ConnectionError:
                if not self._reconnect:
                    del self._unconfirmed[msg_id]
                    raise
                # Lost mid-send: it goes out again as soon as the client is back.
        return msg_id

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
        if info is None or info[0].fingerprint() != fingerprint or info[2] is not None:
            raise LookupError(
                f"{nick}'s key has changed since they whispered you; use /msg {nick} to be sure"
            )
        return nick, self.whisper(nick, text, timeout)

    def reset_session(self, nick: str) -> None:
        """Start over with `nick`: the next whisper fetches their keys again (their pin is kept)."""
        self._require_keys().forget_sessions(nick)

    def trust(self, nick: str) -> None:
        """Accept `nick`'s changed key and show whispers held meanwhile. Raises `NotTrusted`."""
        self._deliver(self._require_keys().trust(nick))

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
        self._fetch_pending = True
        try:
            self.send(FetchKeys(nick=nick))
            reply = self._fetch_replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no keys for {nick} from the server within {timeout} s") from None
        finally:
            self._fetch_pending = False
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

        After the `Disconnected` item, every call returns it again at once.
        """
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event within {timeout} s") from None
        if isinstance(item, Disconnected):
            self._events.put(item)
        return item

    def __iter__(self) -> Client:
        return self

    def __next__(self) -> Event | WhisperReceived | WhisperFailed | KeyChanged | Reconnecting | Reconnected:
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
        """Like `wait_for`, for client-made events too (e.g. `WhisperReceived`)."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.next_event(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(item, Disconnected):
                raise ConnectionError(item.reason)
            if isinstance(item, kind):
                return item

    def _run(self) -> None:
        """The reader thread: read until the connection ends, reconnect if asked to."""
        while True:
            reason, final = self._read_until_closed()
            if final or not self._reconnect or self._closing.is_set() or not self._reconnect_loop(reason):
                break
        self._done = True
        self._events.put(Disconnected(reason=reason))

    def _read_until_closed(self) -> tuple[str, bool]:
        """(why the connection ended, whether that ends the client for good)."""
        channel = self._channel
        assert channel is not None
        reason, final = "connection closed by the server", False
        try:
            while True:
                # Drain first: frames that came in the same read as the welcome are
                # already buffered and must not wait for the next packet.
                with self._conn_lock:
                    events = self._drain()
                for event in events:
                    if not self._dispatch(event):
                        continue
                    if isinstance(event, Bye):
                        reason = event.reason or "server said goodbye"
                    elif isinstance(event, Error) and event.fatal:
                        reason, final = event.reason or event.code, event.code in _FINAL_CODES
                if self._conn.state is State.CLOSED:
                    break
                data = channel.recv()
                with self._conn_lock:
                    self._conn.receive_data(data)
        except RemoteProtocolError as exc:
            reason, final = f"the server broke the protocol: {exc}", True
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            reason = "connection closed" if self._closing.is_set() else f"connection lost: {exc}"
        with self._conn_lock:
            self._online = False
        channel.close()
        return reason, final or self._quitting or self._closing.is_set()

    def _reconnect_loop(self, reason: str) -> bool:
        """Try to log in again with growing delays; False if closed meanwhile or refused for good."""
        attempt = 0
        while True:
            delay = self._backoff.delay(attempt)
            attempt += 1
            self._events.put(Reconnecting(attempt=attempt, delay=delay, reason=reason))
            if self._closing.wait(delay):
                return False
            try:
                channel, conn, welcome = self._establish()
            except LoginRejected as exc:
                if exc.code in _FINAL_CODES - {Code.NICK_TAKEN}:  # our old session may linger: retry
                    return False
                reason = str(exc)
                continue
            except ConnectError as exc:
                reason = str(exc)
                continue
            with self._conn_lock:
                self._channel, self._conn, self.welcome, self._online = channel, conn, welcome, True
            if self._closing.is_set():
                channel.shutdown()
            # Unconfirmed whispers go out again first, under the whisper lock, so that no
            # new whisper overtakes an older one.
            with self._whisper_lock:
                for frame in list(self._unconfirmed.values()):
                    try:
                        self.send(frame)
                    except ConnectionError:
                        break  # lost again; the read loop notices and we come back here
            self._events.put(Reconnected(users=welcome.users))
            return True

    def _dispatch(self, event: Event) -> bool:
        """Handle frames the client answers itself; True if `event` is also for the user."""
        if isinstance(event, WhisperStatus):
            self._unconfirmed.pop(event.id, None)
        if isinstance(event, Message):
            if event.history and event.ts <= self._newest_line:
                return False  # replayed after a reconnect: this client showed it already
            self._newest_line = max(self._newest_line, event.ts)
        if isinstance(event, Ping):
            self.send(Pong(token=event.token))
        elif isinstance(event, PrekeyCount):
            # Also passed on: it tells a program when its keys are published.
            if self.keys is not None and (publish := self.keys.publication(event)) is not None:
                self.send(publish)
        elif isinstance(event, Keys) or (
            isinstance(event, Error) and self._fetch_pending and event.code in _FETCH_ERRORS
        ):
            self._fetch_replies.put(event)
            return False
        elif isinstance(event, Delivery):
            # A whisper delivered twice (pushed live while also queued at login, or after a
            # crash) is recognised by its message id inside WhisperKeys and only acked.
            if self.keys is not None:
                self._deliver(self.keys.receive(event))
            return False
        self._events.put(event)
        return True

    def _deliver(self, incoming: Incoming) -> None:
        # Acks first: the server can forget the whisper sooner, and the ack is not
        # slowed by an application thread that wakes up for the event and answers it.
        for delivery_id in incoming.acks:
            self.send(Ack(id=delivery_id))
        for item in incoming.events:
            if isinstance(item, WhisperReceived):
                self.last_whisperer = (item.sender, item.fingerprint)
            self._events.put(item)

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

    def close(self) -> None:
        """Drop the connection (without a quit), stop reconnecting, and wait for the reader."""
        self._closing.set()
        with self._conn_lock:
            channel = self._channel
        if channel is not None:
            channel.shutdown()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join()

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
