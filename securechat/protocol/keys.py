"""Frames for identity login, the key directory, and end-to-end whispers.

The server only ever sees public keys, signatures and ciphertext here; what they
mean is the e2e layer's business. Sizes are checked so a peer cannot make anyone
store or relay arbitrary amounts of data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .devices import MAX_DEVICES, DeviceListRecord
from .events import FROM_CLIENT, FROM_SERVER, Event, Record, check_device, check_nick, check_str
from .limits import MAX_REF_CHARS

__all__ = [
    "FAILURE_REASONS",
    "MAX_CIPHERTEXT_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_KOPKS_PER_PUBLISH",
    "MAX_OPKS_PER_PUBLISH",
    "OUTCOMES",
    "Ack",
    "Auth",
    "Challenge",
    "Delivery",
    "DeviceKeys",
    "FetchKeys",
    "KeyIdentity",
    "Keys",
    "OneTimeKemPrekeyRecord",
    "OneTimePrekeyRecord",
    "PrekeyCount",
    "PublishKeys",
    "SignedKemPrekeyRecord",
    "SignedPrekeyRecord",
    "Whisper",
    "WhisperStatus",
]


#: A ratchet header with a version-2 (post-quantum) setup is 1,330 bytes (version 1's:
#: 234; docs/e2e.md, "Header"); leave room to grow.
MAX_HEADER_BYTES = 2048
#: 4 KiB of text plus its JSON envelope and the 16-byte tag, with room to spare.
MAX_CIPHERTEXT_BYTES = 8192
#: One publish carries at most this many one-time prekeys (clients keep about 100).
MAX_OPKS_PER_PUBLISH = 200
#: One-time ML-KEM-768 prekeys per publish: each signed record is up to 1,723 bytes of
#: JSON, so 15 of them (a client's whole batch, e2e/bundle.py `KOPK_TARGET`), the most
#: one-time DH prekeys and the last-resort KEM prekey fit one 64 KiB line (65,243 bytes
#: with every id at its longest; test_protocol_events.py checks it).
MAX_KOPKS_PER_PUBLISH = 15
#: ML-KEM-768 encapsulation keys (FIPS 203).
KEM_PUBLIC_BYTES = 1184

_ID_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_STATUSES = frozenset({"stored", "delivered", "failed"})

#: What a recipient's client reports in its `ack`: the whisper was decrypted and kept
#: ("read"), it never can be ("failed", with one of `FAILURE_REASONS`), or it waits for
#: the user to accept its sender's new key ("held": keep it, deliver it again at the next
#: login, and go on with the rest of the queue meanwhile).
OUTCOMES = frozenset({"read", "failed", "held"})
#: Why a whisper could not be decrypted, in classes coarse enough to tell the sender
#: what to do (fetch keys again) and nothing about the recipient's keys beyond that.
FAILURE_REASONS = frozenset({"no-session", "unknown-prekey", "auth-failed", "malformed"})


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name}: must be {size} bytes")


def _check_id(name: str, value: str) -> None:
    if _ID_RE.fullmatch(value) is None:
        raise ValueError(f"{name}: 1-64 of A-Z a-z 0-9 _ -")


def _check_key_id(name: str, value: int) -> None:
    if not 1 <= value < 2**63:
        raise ValueError(f"{name}: must be a positive 63-bit integer")


@dataclass(frozen=True, kw_only=True)
class KeyIdentity(Record):
    """A user's public identity: Ed25519 key, X25519 key, and the binding signature."""

    sig_key: bytes
    dh_key: bytes
    dh_sig: bytes

    def __post_init__(self) -> None:
        _check_len("sig_key", self.sig_key, 32)
        _check_len("dh_key", self.dh_key, 32)
        _check_len("dh_sig", self.dh_sig, 64)


@dataclass(frozen=True, kw_only=True)
class SignedPrekeyRecord(Record):
    id: int
    created: int
    public: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_key_id("id", self.id)
        if not 0 <= self.created < 2**63:
            raise ValueError("created: must be a non-negative Unix time")
        _check_len("public", self.public, 32)
        _check_len("signature", self.signature, 64)


@dataclass(frozen=True, kw_only=True)
class OneTimePrekeyRecord(Record):
    id: int
    public: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_key_id("id", self.id)
        _check_len("public", self.public, 32)
        _check_len("signature", self.signature, 64)


@dataclass(frozen=True, kw_only=True)
class SignedKemPrekeyRecord(Record):
    """A last-resort ML-KEM-768 prekey (protocol version 3)."""

    id: int
    created: int
    public: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_key_id("id", self.id)
        if not 0 <= self.created < 2**63:
            raise ValueError("created: must be a non-negative Unix time")
        _check_len("public", self.public, KEM_PUBLIC_BYTES)
        _check_len("signature", self.signature, 64)


@dataclass(frozen=True, kw_only=True)
class OneTimeKemPrekeyRecord(Record):
    """A one-time ML-KEM-768 prekey (protocol version 3)."""

    id: int
    public: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_key_id("id", self.id)
        _check_len("public", self.public, KEM_PUBLIC_BYTES)
        _check_len("signature", self.signature, 64)


@dataclass(frozen=True, kw_only=True)
class Challenge(Event):
    """The server asks a client that claimed an identity to prove it holds the key."""

    TYPE = "challenge"
    SENDERS = FROM_SERVER
    nonce: bytes

    def __post_init__(self) -> None:
        _check_len("nonce", self.nonce, 32)


@dataclass(frozen=True, kw_only=True)
class Auth(Event):
    """The client's Ed25519 signature over the login message (see docs/protocol.md)."""

    TYPE = "auth"
    SENDERS = FROM_CLIENT
    signature: bytes

    def __post_init__(self) -> None:
        _check_len("signature", self.signature, 64)


@dataclass(frozen=True, kw_only=True)
class PublishKeys(Event):
    """Publish (or re-publish) the identity and current signed prekey; `opks` are added.

    Protocol version 3: `kpk` is the current last-resort KEM prekey (at most one; a
    publish without one removes the one held, and every one-time KEM prekey: a client
    that no longer makes them must not be sent post-quantum setups), and `kopks` are
    one-time KEM prekeys, added.
    """

    TYPE = "publish_keys"
    SENDERS = FROM_CLIENT
    identity: KeyIdentity
    spk: SignedPrekeyRecord
    opks: tuple[OneTimePrekeyRecord, ...] = ()
    kpk: tuple[SignedKemPrekeyRecord, ...] = ()
    kopks: tuple[OneTimeKemPrekeyRecord, ...] = ()

    def __post_init__(self) -> None:
        if len(self.opks) > MAX_OPKS_PER_PUBLISH:
            raise ValueError(f"opks: at most {MAX_OPKS_PER_PUBLISH} per publish")
        if len(self.kpk) > 1:
            raise ValueError("kpk: at most one")
        if len(self.kopks) > MAX_KOPKS_PER_PUBLISH:
            raise ValueError(f"kopks: at most {MAX_KOPKS_PER_PUBLISH} per publish")
        if self.kopks and not self.kpk:
            raise ValueError("kopks: only with a kpk")
        for name, ids in (("opks", [o.id for o in self.opks]), ("kopks", [k.id for k in self.kopks])):
            if len(set(ids)) != len(ids):
                raise ValueError(f"{name}: an id appears twice")


@dataclass(frozen=True, kw_only=True)
class PrekeyCount(Event):
    """How many of your one-time prekeys the server holds, and your signed prekey's id
    (0: none); in protocol version 3 also your one-time KEM prekeys held and your
    last-resort KEM prekey's id (0: none)."""

    TYPE = "prekey_count"
    SENDERS = FROM_SERVER
    count: int
    spk_id: int = 0
    spk_created: int = 0
    kem_count: int = 0
    kpk_id: int = 0

    def __post_init__(self) -> None:
        if min(self.count, self.spk_id, self.spk_created, self.kem_count, self.kpk_id) < 0:
            raise ValueError("prekey_count: negative numbers")


@dataclass(frozen=True, kw_only=True)
class FetchKeys(Event):
    """Ask for a user's bundle, to start a session with them."""

    TYPE = "fetch_keys"
    SENDERS = FROM_CLIENT
    nick: str
    #: Chosen by the client (1-64 characters; "" for none): the server echoes it in the
    #: answer's `keys.ref` or `error.ref`, so the client matches a fetch to its answer by
    #: it. With no ref the server's error names the nick (what version-1 clients expect).
    ref: str = ""

    def __post_init__(self) -> None:
        check_nick("nick", self.nick)
        check_str("ref", self.ref, max_chars=MAX_REF_CHARS)


@dataclass(frozen=True, kw_only=True)
class DeviceKeys(Record):
    """Another device's bundle in a `keys` answer (protocol version 4): as `Keys`'s own
    fields, for device `device`."""

    device: str
    identity: KeyIdentity
    spk: SignedPrekeyRecord
    opks: tuple[OneTimePrekeyRecord, ...] = ()
    kpk: tuple[SignedKemPrekeyRecord, ...] = ()
    kopks: tuple[OneTimeKemPrekeyRecord, ...] = ()

    def __post_init__(self) -> None:
        if not self.device:
            raise ValueError("device: empty")
        check_device("device", self.device)
        if len(self.opks) > 1 or len(self.kpk) > 1 or len(self.kopks) > 1:
            raise ValueError("opks, kpk, kopks: a fetched bundle carries at most one of each")


@dataclass(frozen=True, kw_only=True)
class Keys(Event):
    """A user's bundle, with at most one one-time prekey of each kind (removed from the
    directory). `kpk` and `kopks` (protocol version 3) are sent only to version-3
    sessions: an older client would use up a one-time KEM prekey it cannot use."""

    TYPE = "keys"
    SENDERS = FROM_SERVER
    nick: str
    identity: KeyIdentity
    spk: SignedPrekeyRecord
    opks: tuple[OneTimePrekeyRecord, ...] = ()
    #: The `ref` of the `fetch_keys` this answers ("" when it carried none).
    ref: str = ""
    kpk: tuple[SignedKemPrekeyRecord, ...] = ()
    kopks: tuple[OneTimeKemPrekeyRecord, ...] = ()
    #: Protocol version 4, for a person with a device list: the list (one, or none),
    #: the device whose bundle the fields above are (the one holding the identity key),
    #: and the bundles of the other devices it names that have published one.
    devices: tuple[DeviceListRecord, ...] = ()
    device: str = ""
    others: tuple[DeviceKeys, ...] = ()

    def __post_init__(self) -> None:
        check_nick("nick", self.nick)
        check_str("ref", self.ref, max_chars=MAX_REF_CHARS)
        check_device("device", self.device)
        if len(self.opks) > 1 or len(self.kpk) > 1 or len(self.kopks) > 1:
            raise ValueError("opks, kpk, kopks: a fetched bundle carries at most one of each")
        if len(self.devices) > 1:
            raise ValueError("devices: at most one list")
        if len(self.others) >= MAX_DEVICES:
            raise ValueError(f"others: at most {MAX_DEVICES - 1}")


@dataclass(frozen=True, kw_only=True)
class Whisper(Event):
    """An end-to-end encrypted message for `to`. `id` is chosen by the sender, unique per sender."""

    TYPE = "whisper"
    SENDERS = FROM_CLIENT
    to: str
    id: str
    header: bytes
    ciphertext: bytes
    #: Protocol version 4: which of `to`'s devices it is encrypted for ("" for the one
    #: holding their identity key, or a person with no device list). Whispers to your
    #: own nick are the copies for your other devices, and must name one.
    device: str = ""

    def __post_init__(self) -> None:
        check_nick("to", self.to)
        check_device("device", self.device)
        _check_id("id", self.id)
        _check_blob("header", self.header, MAX_HEADER_BYTES)
        _check_blob("ciphertext", self.ciphertext, MAX_CIPHERTEXT_BYTES)


def _check_blob(name: str, value: bytes, limit: int) -> None:
    if not value or len(value) > limit:
        raise ValueError(f"{name}: 1 to {limit} bytes")


@dataclass(frozen=True, kw_only=True)
class WhisperStatus(Event):
    """What became of a whisper you sent: `stored` (durably queued), `delivered` (the
    recipient's client decrypted it), or `failed` (it could not: `reason` says why)."""

    TYPE = "whisper_status"
    SENDERS = FROM_SERVER
    id: str
    to: str
    status: str
    #: The recipient's away message, if they set one ("" otherwise).
    away: str = ""
    #: With `failed`: one of `FAILURE_REASONS`.
    reason: str = ""
    #: The recipient's device it is about (the whisper's `device`).
    device: str = ""
    #: With `stored` (protocol version 4): the version of the recipient's device list
    #: the server holds (0: none). A sender that knows an older one fetches their keys
    #: again, and sends the whisper to the devices it did not know.
    devices: int = 0

    def __post_init__(self) -> None:
        _check_id("id", self.id)
        check_nick("to", self.to)
        check_device("device", self.device)
        if self.devices < 0:
            raise ValueError("devices: a list version is not negative")
        if self.status not in _STATUSES:
            raise ValueError(f"status: one of {sorted(_STATUSES)}")
        _check_outcome_reason(self.status == "failed", self.reason)


@dataclass(frozen=True, kw_only=True)
class Delivery(Event):
    """A whisper for you. `id` is the server's, for `ack`; `msg_id` is the sender's.

    `sender` is what the server says; only decryption proves it (the AAD binds it).
    """

    TYPE = "delivery"
    SENDERS = FROM_SERVER
    id: str
    msg_id: str
    sender: str
    header: bytes
    ciphertext: bytes
    ts: float
    #: Protocol version 4: which of `sender`'s devices sent it ("" for the one holding
    #: their identity key, or a person with no device list).
    device: str = ""

    def __post_init__(self) -> None:
        _check_id("id", self.id)
        _check_id("msg_id", self.msg_id)
        check_nick("sender", self.sender)
        check_device("device", self.device)
        _check_blob("header", self.header, MAX_HEADER_BYTES)
        _check_blob("ciphertext", self.ciphertext, MAX_CIPHERTEXT_BYTES)


@dataclass(frozen=True, kw_only=True)
class Ack(Event):
    """The client has the delivery `id` safely; the server may forget it.

    `outcome` tells the sender what became of it: "read" (decrypted and kept), or
    "failed" (it never can be decrypted; `reason` is one of `FAILURE_REASONS`). "held"
    is not an end: the server keeps the whisper and tells the sender nothing.
    """

    TYPE = "ack"
    SENDERS = FROM_CLIENT
    id: str
    outcome: str = "read"
    reason: str = ""

    def __post_init__(self) -> None:
        _check_id("id", self.id)
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome: one of {sorted(OUTCOMES)}")
        _check_outcome_reason(self.outcome == "failed", self.reason)


def _check_outcome_reason(failed: bool, reason: str) -> None:
    if failed and reason not in FAILURE_REASONS:
        raise ValueError(f"reason: one of {sorted(FAILURE_REASONS)}")
    if not failed and reason:
        raise ValueError("reason: only with a failure")
