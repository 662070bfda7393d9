"""Events the client makes itself (not frames): what decrypting whispers produced."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ClientMade",
    "DeviceUnreachable",
    "KeyChanged",
    "KnownKeyRenamed",
    "NotPostQuantum",
    "Reconnected",
    "Reconnecting",
    "RenameUnconfirmed",
    "ResendPending",
    "StorageFailed",
    "WhisperCopied",
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
class WhisperCopied:
    """A whisper you sent to `to` from another of your devices (`device`), as that device
    sealed a copy of it for this one: shown with what you sent from here."""

    to: str
    text: str
    msg_id: str
    ts: float
    #: The device that sent it; "" on a replay (not kept).
    device: str
    #: As for `WhisperReceived`: kept before the client last stopped and maybe shown then.
    replay: bool = False


@dataclass(frozen=True, kw_only=True)
class DeviceUnreachable:
    """A device `peer`'s device list names got no copy of a whisper: the server gave no
    keys for it (it has not published any yet, or the server is keeping it out). The
    whisper went to their other devices."""

    peer: str
    device: str


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

    `renamed_from` is set when the server said `renamed_from` is now `peer` but `peer`'s
    keys are not the ones pinned for `renamed_from` (`old_fingerprint`): the claim is
    not believed, and `peer` is treated as `renamed_from` with a changed key.
    """

    peer: str
    old_fingerprint: str
    new_fingerprint: str
    held: int
    unsent: int = 0
    renamed_from: str = ""


@dataclass(frozen=True, kw_only=True)
class KnownKeyRenamed:
    """`new` holds the identity key you know as `old` (someone renamed: the key stays),
    and `new`'s pin took its `trust` ("unverified" or "verified") from `old`'s. Made
    when the server's `renamed` about `old` was checked against `new`'s keys, or at a
    first whisper to or from `new`. Until this event a window or conversation should
    stay with `old`: only now is `new` known to be the same person."""

    old: str
    new: str
    trust: str


@dataclass(frozen=True, kw_only=True)
class NotPostQuantum:
    """`peer`'s client started a conversation with a version-1 setup (X3DH, before
    post-quantum setup existed): it works, but recorded traffic of it is not protected
    against a future quantum computer. Told once per such session, before its first
    whisper; `/whois` says it for as long as the session lasts. (This client never
    starts one: it refuses keys without a post-quantum prekey.)"""

    peer: str


@dataclass(frozen=True, kw_only=True)
class RenameUnconfirmed:
    """The server said contact `old` is now `new`, and that could not be confirmed
    (`reason`: `new` is someone else you know, their keys could not be fetched,
    or too many renames were being checked at once).
    Nothing changed: whispers to `new` go to whoever holds that nick, as usual."""

    old: str
    new: str
    reason: str


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
    WhisperReceived
    | WhisperCopied
    | DeviceUnreachable
    | WhisperFailed
    | KeyChanged
    | KnownKeyRenamed
    | NotPostQuantum
    | RenameUnconfirmed
    | ResendPending
    | StorageFailed
    | Reconnecting
    | Reconnected
)
