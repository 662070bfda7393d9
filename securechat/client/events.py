"""Events the client makes itself (not frames): what decrypting whispers produced."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KeyChanged", "Reconnected", "Reconnecting", "WhisperFailed", "WhisperReceived"]


@dataclass(frozen=True, kw_only=True)
class WhisperReceived:
    """A whisper that decrypted and authenticated. `trust` is "unverified" or "verified"."""

    sender: str
    text: str
    trust: str
    fingerprint: str
    msg_id: str
    ts: float


@dataclass(frozen=True, kw_only=True)
class WhisperFailed:
    """A whisper from `sender` (as the server claims) could not be authenticated."""

    sender: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class KeyChanged:
    """`peer` presented a different identity key. Nothing is sent to them, and their new
    whispers are held, until the user runs /trust (or /verify) for them."""

    peer: str
    old_fingerprint: str
    new_fingerprint: str
    held: int


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
