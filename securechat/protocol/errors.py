"""Protocol errors: one base class, split by whose fault the error is.

`RemoteProtocolError` means the peer sent something we cannot accept; its `code` is
what goes into the error frame we answer with, and `fatal` says whether the stream
can continue (a bad field in a well-formed line) or must be closed (broken framing).
`LocalProtocolError` means our own code tried to send something the protocol does
not allow in the current state; it is a bug on our side, never the peer's.
"""

from __future__ import annotations

__all__ = ["Code", "LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class Code:
    """Error codes used on the wire (the `code` field of an `error` frame)."""

    BAD_UTF8 = "bad-utf8"
    BAD_JSON = "bad-json"
    BAD_FRAME = "bad-frame"
    TOO_LONG = "too-long"
    UNKNOWN_TYPE = "unknown-type"
    UNEXPECTED = "unexpected"
    INVALID = "invalid"
    HELLO_REQUIRED = "hello-required"
    UNSUPPORTED_VERSION = "unsupported-version"
    NICK_TAKEN = "nick-taken"
    NO_SUCH_ROOM = "no-such-room"
    NICK_REGISTERED = "nick-registered"
    AUTH_FAILED = "auth-failed"
    NO_SUCH_USER = "no-such-user"
    NO_KEYS = "no-keys"
    NOT_REGISTERED = "not-registered"
    RATE_LIMITED = "rate-limited"
    REPLACED = "replaced"
    #: This device was removed from its person's device list: it may not log in again.
    UNLINKED = "unlinked"
    TIMEOUT = "timeout"
    #: The server could not write to its database (disk full, I/O error): nothing was
    #: stored, the session stays up, and the same request may be sent again later.
    STORE_UNAVAILABLE = "store-unavailable"
    #: A quota would be exceeded (a recipient's offline queue is full, a sender has queued
    #: too much, prekeys held, registrations): nothing was stored; `reason` says which.
    QUOTA = "quota-exceeded"
    #: Too much is coming from the client's network (its address prefix) right now:
    #: refused for now, not for good; try again later, with backoff.
    BUSY = "busy"
    # Rooms (protocol version 2). Each refuses a request about a room; `ref` names it.
    #: The request needs you to be in the room, and you are not.
    NOT_IN_ROOM = "not-in-room"
    #: Only the room's operators (or, for op/deop/transfer, its owner) may do that; an
    #: unregistered room has none.
    NOT_OPERATOR = "not-operator"
    #: The room is invite-only and you have no invitation.
    INVITE_ONLY = "invite-only"
    #: You are banned from the room.
    BANNED = "banned"
    #: `register_room` of a room that is registered already.
    ROOM_REGISTERED = "room-registered"
    #: Only the room's creator, an identity user, may register it.
    NOT_CREATOR = "not-creator"


class ProtocolError(Exception):
    """Base of every protocol error; carries a wire `code` and a human `reason`."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """We tried to send an event the protocol does not allow now (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or an event we reject.

    `fatal` is True when the byte stream can no longer be trusted (framing,
    encoding, state); the connection must then be closed after an error frame.
    """

    def __init__(self, code: str, reason: str, *, fatal: bool) -> None:
        super().__init__(code, reason)
        self.fatal = fatal
