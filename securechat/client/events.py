"""Events the client makes itself (not frames): what decrypting whispers produced."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ClientMade",
    "KeyChanged",
    "Reconnected",
    "Reconnecting",
    "ResendPending",
    "StorageFailed",
    "WhisperFailed",
    "WhisperReceived",
]


@dataclass(frozen=True, kw_only=True)
class WhisperReceived:
    """A whisper that decrypted and authenticated. `trust` is "unverified" or "verified".

    `replay` is True for one shown again at start because the last run ended after
    keeping it but before the user or program was known to have it: it may have been
    shown once already (`msg_id` tells).
    """

    sender: str
    text: str
    trust: str
    fingerprint: str
    msg_id: str
    ts: float
    replay: bool = False


@dataclass(frozen=True, kw_only=True)
class WhisperFailed:
    """A whisper from `sender` (as the server claims) could not be authenticated."""

    sender: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class KeyChanged:
    """`peer` presented a different identity key. Nothing is sent to them, and their new
    whispers are held, until the user runs /trust (or /verify) for them.

    `held` counts their whispers waiting to be opened; `unsent` counts ours to them that
    their client could not decrypt, waiting to be sent again once the user decides.
    """

    peer: str
    old_fingerprint: str
    new_fingerprint: str
    held: int
    unsent: int = 0


@dataclass(frozen=True, kw_only=True)
class ResendPending:
    """`count` whispers to `peer` could not be decrypted by their client, and a new
    session with them could not be started yet (`reason`). They are kept; /trust or the
    next whisper to `peer` tries again."""

    peer: str
    count: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class StorageFailed:
    """This client could not write its keystore (`reason`, e.g. a full disk): whispers
    for it stay on the server until it can, and arrive then."""

    reason: str


@dataclass(frozen=True, kw_only=True)
class Reconnecting:
    """The connection was lost; the client tries again after `delay` seconds."""

    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True, kw_only=True)
class Reconnected:
    """The client is back: logged in again, queued whispers on their way."""

    users: tuple[str, ...]


#: Every event the client makes itself (as opposed to the server's frames).
ClientMade = (
    WhisperReceived | WhisperFailed | KeyChanged | ResendPending | StorageFailed | Reconnecting | Reconnected
)
