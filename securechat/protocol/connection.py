"""The sans-I/O connection: bytes in, events out; events in, bytes out.

It knows the order of a session (hello, welcome, then chat) and which side may send
what, and nothing about sockets, threads or clocks. Both the server and the client
drive one per connection.
"""

from __future__ import annotations

from enum import Enum

from .codec import decode_line, encode
from .errors import Code, LocalProtocolError, RemoteProtocolError
from .events import Bye, Error, Event, Hello, Ping, Pong, Quit, Role, Welcome
from .framing import LineBuffer
from .keys import Auth, Challenge
from .limits import MAX_LINE_BYTES, SUPPORTED_VERSIONS

__all__ = ["CLOSED", "NEED_DATA", "Closed", "Connection", "NeedData", "State"]


class State(Enum):
    """Where a connection is in its life."""

    HANDSHAKE = "handshake"  # before the welcome
    READY = "ready"  # chatting
    CLOSED = "closed"  # after bye, a fatal error, or end of stream


class NeedData:
    """Sentinel type: feed more bytes before asking for the next event."""

    def __repr__(self) -> str:
        return "NEED_DATA"


class Closed:
    """Sentinel type: the peer ended the stream; no more events will come."""

    def __repr__(self) -> str:
        return "CLOSED"


NEED_DATA = NeedData()
CLOSED = Closed()

# "1 and 2", for the error a hello of another version gets.
_VERSIONS_SPOKEN = ", ".join(str(v) for v in SUPPORTED_VERSIONS[:-1]) + f" and {SUPPORTED_VERSIONS[-1]}"

# Frames either side may exchange before the welcome.
_ANYTIME: frozenset[type[Event]] = frozenset({Ping, Pong, Error, Bye, Quit})
# The identity proof, which happens only between the hello and the welcome.
_LOGIN_ONLY: frozenset[type[Event]] = frozenset[type[Event]]((Challenge, Auth))


class Connection:
    """Protocol state for one end of one connection.

    Call `receive_data` with what the socket read (b"" at end of stream), then
    `next_event` until it returns `NEED_DATA` or `CLOSED`. Call `send` to turn an
    event into bytes for the socket.
    """

    def __init__(self, role: Role, *, max_line: int = MAX_LINE_BYTES) -> None:
        self.role = role
        self._peer = Role.SERVER if role is Role.CLIENT else Role.CLIENT
        self._lines = LineBuffer(max_line)
        self._state = State.HANDSHAKE
        self._eof = False
        self._hello_seen = False
        self._fatal: RemoteProtocolError | None = None

    @property
    def state(self) -> State:
        return self._state

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; an empty `data` means the stream ended."""
        if data:
            self._lines.feed(data)
        else:
            self._eof = True

    def next_event(self) -> Event | NeedData | Closed:
        """The next event from the peer, `NEED_DATA`, or `CLOSED` at end of stream.

        Raises `RemoteProtocolError`. After a fatal one the connection is closed and
        every later call raises the same error again; after a non-fatal one the
        offending line is consumed and the next call continues with the next line.
        """
        if self._fatal is not None:
            raise self._fatal
        try:
            line = self._lines.next_line()
            while line == b"":  # blank lines are allowed as keepalive noise
                line = self._lines.next_line()
            if line is None:
                if self._eof:
                    self._state = State.CLOSED
                    return CLOSED
                return NEED_DATA
            event = decode_line(line)
            self._check_incoming(event)
        except RemoteProtocolError as exc:
            if exc.fatal:
                self._fatal = exc
                self._state = State.CLOSED
            raise
        return event

    def _check_incoming(self, event: Event) -> None:
        if self._peer not in event.SENDERS:
            raise RemoteProtocolError(
                Code.UNEXPECTED, f"a {self._peer.value} does not send {event.TYPE!r}", fatal=False
            )
        if self._state is State.HANDSHAKE:
            self._check_handshake_incoming(event)
        elif isinstance(event, Hello) or type(event) in _LOGIN_ONLY:
            raise RemoteProtocolError(Code.UNEXPECTED, "already logged in", fatal=False)

    def _check_handshake_incoming(self, event: Event) -> None:
        if self.role is Role.SERVER:
            if isinstance(event, Hello):
                if self._hello_seen:
                    raise RemoteProtocolError(Code.UNEXPECTED, "hello sent twice", fatal=True)
                # The session reads hello.version to know which version it serves.
                if event.version not in SUPPORTED_VERSIONS:
                    raise RemoteProtocolError(
                        Code.UNSUPPORTED_VERSION,
                        f"this server speaks protocol versions {_VERSIONS_SPOKEN}",
                        fatal=True,
                    )
                self._hello_seen = True
            elif isinstance(event, Auth):
                if not self._hello_seen:
                    raise RemoteProtocolError(Code.HELLO_REQUIRED, "auth before hello", fatal=True)
            elif type(event) not in _ANYTIME:
                raise RemoteProtocolError(Code.HELLO_REQUIRED, f"{event.TYPE!r} before hello", fatal=True)
        elif isinstance(event, Welcome):
            self._state = State.READY
        elif type(event) not in _ANYTIME and type(event) not in _LOGIN_ONLY:
            raise RemoteProtocolError(Code.UNEXPECTED, f"{event.TYPE!r} before welcome", fatal=True)

    def send(self, event: Event) -> bytes:
        """The bytes that carry `event` to the peer.

        Raises `LocalProtocolError` if our role may not send this event now.
        """
        if self._state is State.CLOSED:
            raise LocalProtocolError(Code.UNEXPECTED, "connection is closed")
        if self.role not in event.SENDERS:
            raise LocalProtocolError(Code.UNEXPECTED, f"a {self.role.value} does not send {event.TYPE!r}")
        if self._state is State.HANDSHAKE:
            if self.role is Role.SERVER and isinstance(event, Welcome):
                self._state = State.READY
            elif self.role is Role.CLIENT and isinstance(event, Hello):
                if self._hello_seen:
                    raise LocalProtocolError(Code.UNEXPECTED, "hello already sent")
                self._hello_seen = True
            elif type(event) not in _ANYTIME and type(event) not in _LOGIN_ONLY:
                raise LocalProtocolError(Code.UNEXPECTED, f"{event.TYPE!r} before the welcome")
        elif isinstance(event, Hello) or type(event) in _LOGIN_ONLY:
            raise LocalProtocolError(Code.UNEXPECTED, f"{event.TYPE!r} after the welcome")
        data = encode(event)
        if isinstance(event, Bye) or (isinstance(event, Error) and event.fatal):
            self._state = State.CLOSED
        return data
