"""The securechat wire protocol, sans-I/O: JSON Lines frames <-> events.

No sockets, threads, clocks or files live in this package (the h11 rule), so the
server, the client and the fuzz tests all drive the same code.
"""

from __future__ import annotations

from .codec import decode_line, encode
from .connection import CLOSED, NEED_DATA, Closed, Connection, NeedData, State
from .errors import Code, LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import (
    Away,
    Bye,
    Error,
    Event,
    Hello,
    Joined,
    Left,
    Message,
    Names,
    Ping,
    Pong,
    Quit,
    Role,
    Say,
    Welcome,
    Who,
    fold_nick,
    is_valid_nick,
)
from .keys import (
    FAILURE_REASONS,
    OUTCOMES,
    Ack,
    Auth,
    Challenge,
    Delivery,
    FetchKeys,
    KeyIdentity,
    Keys,
    OneTimePrekeyRecord,
    PrekeyCount,
    PublishKeys,
    SignedPrekeyRecord,
    Whisper,
    WhisperStatus,
)
from .limits import DEFAULT_ROOM, MAX_LINE_BYTES, MAX_TEXT_BYTES, PROTOCOL_VERSION
from .registry import EVENT_TYPES

__all__ = [
    "CLOSED",
    "DEFAULT_ROOM",
    "EVENT_TYPES",
    "FAILURE_REASONS",
    "MAX_LINE_BYTES",
    "MAX_TEXT_BYTES",
    "NEED_DATA",
    "OUTCOMES",
    "PROTOCOL_VERSION",
    "Ack",
    "Auth",
    "Away",
    "Bye",
    "Challenge",
    "Closed",
    "Code",
    "Connection",
    "Delivery",
    "Error",
    "Event",
    "FetchKeys",
    "Hello",
    "Joined",
    "KeyIdentity",
    "Keys",
    "Left",
    "LocalProtocolError",
    "Message",
    "Names",
    "NeedData",
    "OneTimePrekeyRecord",
    "Ping",
    "Pong",
    "PrekeyCount",
    "ProtocolError",
    "PublishKeys",
    "Quit",
    "RemoteProtocolError",
    "Role",
    "Say",
    "SignedPrekeyRecord",
    "State",
    "Welcome",
    "Whisper",
    "WhisperStatus",
    "Who",
    "decode_line",
    "encode",
    "fold_nick",
    "is_valid_nick",
]
