"""`Client`: a connection to a securechat server as a Python API. It never prints.

A reader thread turns incoming frames into events on a queue; `next_event` and
iteration hand them out. Sending methods may be called from any thread.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from ..protocol import (
    CLOSED,
    DEFAULT_ROOM,
    NEED_DATA,
    PROTOCOL_VERSION,
    Bye,
    Connection,
    Error,
    Event,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    Quit,
    RemoteProtocolError,
    Role,
    Say,
    State,
    Welcome,
    Who,
)
from ..transport import TlsChannel

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
    ) -> None:
        self.nick = nick
        self.host = host
        self.port = port
        self._context = context
        self._server_hostname = server_hostname or host
        self._timeout = timeout
        self._conn = Connection(Role.CLIENT)
        self._conn_lock = threading.Lock()
        self._channel: TlsChannel | None = None
        self._events: queue.Queue[Event | Disconnected] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._done = False
        self.welcome: Welcome | None = None

    # -- connecting ---------------------------------------------------------------

    def connect(self) -> Welcome:
        """Connect, verify the server over TLS, log in, and start receiving.

        Raises `ConnectError` (unreachable, certificate not trusted, host name
        mismatch, no answer) or `LoginRejected` (the server refused the nick).
        """
        where = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._timeout)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = TlsChannel(sock, self._context, server_side=False, server_hostname=self._server_hostname)
        try:
            channel.handshake()
            welcome = self._login(channel)
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
        self._channel = channel
        self.welcome = welcome
        self._reader = threading.Thread(
            target=self._read_loop, name=f"securechat-client-{self.nick}", daemon=True
        )
        self._reader.start()
        return welcome

    def _login(self, channel: TlsChannel) -> Welcome:
        channel.send(self._conn.send(Hello(version=PROTOCOL_VERSION, nick=self.nick, client=CLIENT_NAME)))
        while True:
            data = channel.recv()
            self._conn.receive_data(data)
            while (event := self._conn.next_event()) is not NEED_DATA:
                if event is CLOSED:
                    raise ConnectError("the server closed the connection during login")
                if isinstance(event, Welcome):
                    return event
                if isinstance(event, Error):
                    raise LoginRejected(event.code, event.reason)
                if isinstance(event, Bye):
                    raise LoginRejected("bye", event.reason)
                if isinstance(event, Ping):
                    channel.send(self._conn.send(Pong(token=event.token)))

    # -- sending --------------------------------------------------------------------

    def send(self, event: Event) -> None:
        """Send any client event. Raises `ConnectionError` once the connection is gone."""
        channel = self._channel
        if channel is None or self._done:
            raise ConnectionError("not connected")
        with self._conn_lock:
            data = self._conn.send(event)
        try:
            channel.send(data)
        except OSError as exc:
            raise ConnectionError(f"connection lost: {exc}") from None

    def say(self, text: str, room: str = DEFAULT_ROOM) -> None:
        """Post `text` to a room. Raises `ValueError` if empty or over 4 KiB."""
        self.send(Say(room=room, text=text))

    def who(self, room: str = DEFAULT_ROOM) -> None:
        """Ask who is in the room; the answer arrives as a `Names` event."""
        self.send(Who(room=room))

    def quit(self, reason: str = "") -> None:
        """Leave; the server answers `Bye` and the event stream ends."""
        self.send(Quit(reason=reason))

    # -- receiving ------------------------------------------------------------------

    def next_event(self, timeout: float | None = None) -> Event | Disconnected:
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

    def __next__(self) -> Event:
        item = self.next_event()
        if isinstance(item, Disconnected):
            raise StopIteration
        return item

    def wait_for(self, kind: type[Event], timeout: float) -> Event:
        """Skip events until one of type `kind`; raise `TimeoutError` or `ConnectionError`."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.next_event(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(item, Disconnected):
                raise ConnectionError(item.reason)
            if isinstance(item, kind):
                return item

    def _read_loop(self) -> None:
        assert self._channel is not None
        reason = "connection closed by the server"
        try:
            while True:
                # Drain first: frames that came in the same read as the welcome are
                # already buffered and must not wait for the next packet.
                with self._conn_lock:
                    events = self._drain()
                for event in events:
                    if isinstance(event, Ping):
                        self.send(Pong(token=event.token))
                    self._events.put(event)
                    if isinstance(event, Bye):
                        reason = event.reason or "server said goodbye"
                    elif isinstance(event, Error) and event.fatal:
                        reason = event.reason or event.code
                if self._conn.state is State.CLOSED:
                    break
                data = self._channel.recv()
                with self._conn_lock:
                    self._conn.receive_data(data)
        except RemoteProtocolError as exc:
            reason = f"the server broke the protocol: {exc}"
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            reason = "connection closed" if self._done else f"connection lost: {exc}"
        self._done = True
        self._channel.close()
        self._events.put(Disconnected(reason=reason))

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
        """Drop the connection (without a quit) and wait for the reader to end."""
        self._done = True
        if self._channel is not None:
            self._channel.shutdown()
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
