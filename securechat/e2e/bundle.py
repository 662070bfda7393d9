"""Prekey bundles: what the directory hands out so a session can start while the owner is offline."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TypeVar

from ..protocol import (
    DeviceKeys,
    KeyIdentity,
    Keys,
    OneTimeKemPrekeyRecord,
    OneTimePrekeyRecord,
    PublishKeys,
    SignedKemPrekeyRecord,
    SignedPrekeyRecord,
    fold_nick,
)
from ..protocol.keys import MAX_KOPKS_PER_PUBLISH
from .errors import BundleError
from .identity import Identity, PublicIdentity
from .primitives import (
    KEM_PUBLIC_BYTES,
    KEY_BYTES,
    VERSION_LABEL,
    DhKeyPair,
    KemKeyPair,
    Random,
    ed25519_verify,
    lp,
)

__all__ = [
    "CLOCK_SKEW",
    "KOPK_KEEP",
    "KOPK_REFILL_BELOW",
    "KOPK_TARGET",
    "MAX_CLOCK_ERROR",
    "OPK_KEEP",
    "OPK_REFILL_BELOW",
    "OPK_TARGET",
    "SPK_KEEP_OLD",
    "SPK_KEEP_RETIRED",
    "SPK_MAX_AGE",
    "SPK_RETIRED_MAX",
    "SPK_ROTATE_AFTER",
    "Bundle",
    "OneTimeKemPrekey",
    "OneTimePrekey",
    "PrekeySecrets",
    "SignedKemPrekey",
    "SignedPrekey",
    "bundle_from_frame",
    "publication",
    "verify_bundle",
]

DAY = 86_400
#: How far wrong a client's clock may be, either way, without losing a whisper or a
#: session (a year: the requirement; clocks jump when a battery dies, an RTC is reset, a
#: VM is restored, or a user sets the date by hand). The time rules below are built so
#: that a jump of up to this much can only make keys live longer, never shorter.
MAX_CLOCK_ERROR = 365 * DAY
#: A signed prekey is replaced weekly (Signal's rhythm), and also as soon as it is dated
#: in the future: the clock went back, and waiting for it to catch up could keep one SPK
#: (and its private half, which protects every setup made against it) for a year.
SPK_ROTATE_AFTER = 7 * DAY
#: Retired signed prekeys whose private halves are kept whatever the clock says: a setup
#: made against one may be queued on the server until our next login (which is when we
#: rotate), so the last few must survive any reading of the clock. Four weekly rotations
#: cover the month `SPK_KEEP_OLD` gives when the clock is right.
SPK_KEEP_RETIRED = 4
#: Beyond the last `SPK_KEEP_RETIRED`, a retired SPK is still kept until this long after
#: its retirement (by our clock), for sessions started just before a rotation ...
SPK_KEEP_OLD = 30 * DAY
#: ... but never more than this many in all: a clock running behind makes retirement
#: dates look recent for as long as it stays behind, and forward secrecy needs old SPK
#: private keys gone eventually. Three months of weekly rotations.
SPK_RETIRED_MAX = 12
#: A fetched bundle whose signed prekey is older than this (plus `MAX_CLOCK_ERROR`,
#: since our clock or the owner's may be that far off) is refused: its owner has not been
#: online for a month, or the server is replaying an old bundle.
SPK_MAX_AGE = 35 * DAY
#: Clocks differ; a prekey "created" further in the future than this (plus
#: `MAX_CLOCK_ERROR`) is refused. Also the tolerance before our own current SPK counts as
#: dated in the future (see `SPK_ROTATE_AFTER`): ordinary skew must not cause churn.
CLOCK_SKEW = DAY
#: How many one-time prekeys to keep published, and when to top them up.
OPK_TARGET = 100
OPK_REFILL_BELOW = 20
#: One-time prekey private halves kept at most; making more deletes the oldest (lowest
#: ids) first. A prekey is kept after publication until a setup that used it decrypts,
#: but one handed out to a sender who never wrote would otherwise be kept for ever, and
#: a server that keeps saying "none left" would make the keystore grow without end.
#: Four times what is published: the oldest unused one has been out for three refills.
#: Its cost: a setup that used a deleted one fails ("unknown-prekey") and its sender
#: sends again in a new session.
OPK_KEEP = 4 * OPK_TARGET
#: One-time ML-KEM-768 prekeys kept published, and when to top them up. Each is 1,184
#: bytes (1.7 KB as a signed record in base64): 15 of them beside a full batch of
#: one-time DH prekeys fit one 64 KiB line (protocol/keys.py `MAX_KOPKS_PER_PUBLISH`), so
#: a login's top-up is one publish, answered by one `prekey_count` (two publishes would
#: each be answered with a count that misses the other's keys, and make more), and the
#: server holds about 19 KB per user for them (docs/performance.md, "Post-quantum
#: setup"). Fewer than the DH ones: when they run out, the last-resort KEM prekey still
#: gives post-quantum protection, only without a one-time key's extra forward secrecy.
KOPK_TARGET = MAX_KOPKS_PER_PUBLISH
KOPK_REFILL_BELOW = 5
#: One-time KEM prekey seeds kept at most (as `OPK_KEEP`, four batches).
KOPK_KEEP = 4 * KOPK_TARGET


def spk_message(user: str, key_id: int, created: int, public: bytes) -> bytes:
    return lp(VERSION_LABEL, b"spk", fold_nick(user), key_id, created, public)


def opk_message(user: str, key_id: int, public: bytes) -> bytes:
    return lp(VERSION_LABEL, b"opk", fold_nick(user), key_id, public)


def kpk_message(user: str, key_id: int, created: int, public: bytes) -> bytes:
    """What a last-resort KEM prekey's signature covers (docs/e2e.md, "Signatures")."""
    return lp(VERSION_LABEL, b"kpk", fold_nick(user), key_id, created, public)


def kopk_message(user: str, key_id: int, public: bytes) -> bytes:
    """What a one-time KEM prekey's signature covers."""
    return lp(VERSION_LABEL, b"kopk", fold_nick(user), key_id, public)


@dataclass(frozen=True)
class SignedPrekey:
    id: int
    created: int
    public: bytes
    signature: bytes


@dataclass(frozen=True)
class OneTimePrekey:
    id: int
    public: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedKemPrekey:
    """A last-resort ML-KEM-768 prekey: always in the bundle, rotated with the signed prekey."""

    id: int
    created: int
    public: bytes
    signature: bytes


@dataclass(frozen=True)
class OneTimeKemPrekey:
    id: int
    public: bytes
    signature: bytes


@dataclass(frozen=True)
class Bundle:
    """A user's published keys. As fetched, it carries at most one one-time prekey of
    each kind; `kpk` is None only for a user whose client predates post-quantum setup."""

    identity: PublicIdentity
    spk: SignedPrekey
    opks: tuple[OneTimePrekey, ...] = ()
    kpk: SignedKemPrekey | None = None
    kopks: tuple[OneTimeKemPrekey, ...] = ()

    def kem_key(self) -> tuple[int, bytes] | None:
        """(id, public key) of the KEM prekey a setup encapsulates to: the one-time one if
        the bundle has one, else the last-resort one; None without either."""
        if self.kopks:
            return self.kopks[0].id, self.kopks[0].public
        return None if self.kpk is None else (self.kpk.id, self.kpk.public)


def verify_bundle(
    bundle: Bundle,
    *,
    user: str,
    now: float,
    min_spk_id: int = 0,
    min_kpk_id: int = 0,
    require_kem: bool = False,
) -> None:
    """Check a fetched bundle before any key in it is used.

    Raises `BundleError` if it is for another user, any signature fails, the signed
    prekey is stale or from the future, or its id is older than one already seen for
    this identity (`min_spk_id`: a server rolling back to an old prekey; `min_kpk_id`
    likewise for the last-resort KEM prekey). With
    `require_kem` (a client about to start a session: it never starts one without
    post-quantum protection), also if the bundle has no last-resort KEM prekey, so a
    server that strips it gets a refusal, not a downgrade. The last-resort KEM prekey's
    date is checked as the signed prekey's is.

    `now` is the checker's clock, which may be up to `MAX_CLOCK_ERROR` wrong, and so may
    the owner's, which dated the prekey: the date is therefore only a coarse check
    (more than a year and a month old, or a year and a day ahead, is refused). The id
    check does not depend on any clock and is what stops a rollback to a peer who has
    seen newer keys.
    """
    ident = bundle.identity
    if fold_nick(ident.user) != fold_nick(user):
        raise BundleError(f"the server sent keys for {ident.user!r} when asked for {user!r}")
    if not ident.binding_valid():
        raise BundleError(f"{user}'s identity keys are not bound by a valid signature")

    def check(public: bytes, size: int, signature: bytes, message: bytes, what: str) -> None:
        if len(public) != size or not ed25519_verify(ident.sig_key, signature, message):
            raise BundleError(f"{user}'s {what} has an invalid signature")

    spk = bundle.spk
    check(
        spk.public,
        KEY_BYTES,
        spk.signature,
        spk_message(ident.user, spk.id, spk.created, spk.public),
        "signed prekey",
    )
    if spk.created < now - MAX_CLOCK_ERROR - SPK_MAX_AGE:
        days = (MAX_CLOCK_ERROR + SPK_MAX_AGE) // DAY
        raise BundleError(f"{user}'s signed prekey is stale (older than {days} days)")
    if spk.created > now + MAX_CLOCK_ERROR + CLOCK_SKEW:
        raise BundleError(f"{user}'s signed prekey is dated in the future")
    if spk.id < min_spk_id:
        raise BundleError(f"{user}'s signed prekey was rolled back to an older one")
    for opk in bundle.opks:
        check(
            opk.public,
            KEY_BYTES,
            opk.signature,
            opk_message(ident.user, opk.id, opk.public),
            "one-time prekey",
        )
    kpk = bundle.kpk
    if kpk is None:
        if require_kem:
            raise BundleError(
                f"{user}'s keys have no post-quantum prekey: their client is older than "
                "version 2 of the end-to-end protocol, or the server withheld it; "
                "no session is started without one"
            )
    else:
        message = kpk_message(ident.user, kpk.id, kpk.created, kpk.public)
        check(kpk.public, KEM_PUBLIC_BYTES, kpk.signature, message, "post-quantum prekey")
        if not now - MAX_CLOCK_ERROR - SPK_MAX_AGE <= kpk.created <= now + MAX_CLOCK_ERROR + CLOCK_SKEW:
            raise BundleError(f"{user}'s post-quantum prekey is stale or dated in the future")
        if kpk.id < min_kpk_id:
            raise BundleError(f"{user}'s post-quantum prekey was rolled back to an older one")
    for kopk in bundle.kopks:
        message = kopk_message(ident.user, kopk.id, kopk.public)
        check(kopk.public, KEM_PUBLIC_BYTES, kopk.signature, message, "one-time post-quantum prekey")


@dataclass
class StoredSpk:
    id: int
    created: int
    pair: DhKeyPair


@dataclass
class StoredKpk:
    id: int
    created: int
    pair: KemKeyPair


@dataclass
class PrekeySecrets:
    """The private halves of a user's prekeys, and the counters that name them.

    KEM prekeys (last-resort and one-time) share one id counter, `next_kem_id`, so a
    setup names its KEM prekey by id alone.
    """

    spks: list[StoredSpk] = field(default_factory=list)  # newest last
    opks: dict[int, DhKeyPair] = field(default_factory=dict)
    next_spk_id: int = 1
    next_opk_id: int = 1
    kpks: list[StoredKpk] = field(default_factory=list)  # newest last, kept as `spks` are
    kopks: dict[int, KemKeyPair] = field(default_factory=dict)
    next_kem_id: int = 1

    def current_spk(self) -> StoredSpk | None:
        return self.spks[-1] if self.spks else None

    def needs_rotation(self, now: float) -> bool:
        """True if there is no signed prekey, or the current one is `SPK_ROTATE_AFTER` old
        or dated more than `CLOCK_SKEW` in the future, by `now` (our clock, however wrong)."""
        spk = self.current_spk()
        return spk is None or now - spk.created >= SPK_ROTATE_AFTER or spk.created - now > CLOCK_SKEW

    def rotate_spk(self, now: float, random: Random = os.urandom) -> None:
        """Make a new signed prekey, dated `now`, and forget retired ones no longer needed.

        The last `SPK_KEEP_RETIRED` retired SPKs are always kept; older ones while they
        were retired less than `SPK_KEEP_OLD` ago by `now`, up to `SPK_RETIRED_MAX` in all.
        A clock jump can therefore delete no retired SPK that a count of rotations keeps.
        """
        self.spks.append(StoredSpk(self.next_spk_id, int(now), DhKeyPair.generate(random)))
        self.next_spk_id += 1
        self.spks = _keep_retired(self.spks, now)
        self.rotate_kpk(now, random)

    def rotate_kpk(self, now: float, random: Random = os.urandom) -> None:
        """A new last-resort KEM prekey, dated `now`; retired ones kept by `rotate_spk`'s rules."""
        self.kpks.append(StoredKpk(self.next_kem_id, int(now), KemKeyPair.generate(random)))
        self.next_kem_id += 1
        self.kpks = _keep_retired(self.kpks, now)

    def current_kpk(self) -> StoredKpk | None:
        return self.kpks[-1] if self.kpks else None

    def kem_pair(self, key_id: int) -> KemKeyPair | None:
        """The KEM prekey `key_id`, one-time or last-resort, if still kept."""
        found = self.kopks.get(key_id)
        if found is not None:
            return found
        return next((k.pair for k in self.kpks if k.id == key_id), None)

    def new_kopks(self, count: int, random: Random = os.urandom) -> list[int]:
        """Make `count` (at most `KOPK_KEEP`) one-time KEM prekeys; returns their ids, and
        deletes the oldest so that no more than `KOPK_KEEP` are kept (as `new_opks`)."""
        if not 0 <= count <= KOPK_KEEP:
            raise ValueError(f"one-time KEM prekeys are made {KOPK_KEEP} at most at a time")
        ids = []
        for _ in range(count):
            self.kopks[self.next_kem_id] = KemKeyPair.generate(random)
            ids.append(self.next_kem_id)
            self.next_kem_id += 1
        for old in sorted(self.kopks)[: max(0, len(self.kopks) - KOPK_KEEP)]:
            del self.kopks[old]
        return ids

    def spk_pair(self, key_id: int) -> DhKeyPair | None:
        for spk in self.spks:
            if spk.id == key_id:
                return spk.pair
        return None

    def new_opks(self, count: int, random: Random = os.urandom) -> list[int]:
        """Make `count` (at most `OPK_KEEP`) one-time prekeys; returns their ids. The
        oldest unused ones are deleted so that no more than `OPK_KEEP` are kept."""
        if not 0 <= count <= OPK_KEEP:
            raise ValueError(f"one-time prekeys are made {OPK_KEEP} at most at a time")
        ids = []
        for _ in range(count):
            self.opks[self.next_opk_id] = DhKeyPair.generate(random)
            ids.append(self.next_opk_id)
            self.next_opk_id += 1
        excess = len(self.opks) - OPK_KEEP
        if excess > 0:
            for old in sorted(self.opks)[:excess]:  # the new ones have the highest ids
                del self.opks[old]
        return ids

    def signed_spk(self, identity: Identity) -> SignedPrekey:
        spk = self.current_spk()
        if spk is None:
            raise ValueError("no signed prekey yet: call rotate_spk first")
        return SignedPrekey(
            spk.id,
            spk.created,
            spk.pair.public,
            identity.sign(spk_message(identity.user, spk.id, spk.created, spk.pair.public)),
        )

    def signed_kpk(self, identity: Identity) -> SignedKemPrekey:
        kpk = self.current_kpk()
        if kpk is None:
            raise ValueError("no KEM prekey yet: call rotate_spk first")
        public = kpk.pair.public
        return SignedKemPrekey(
            kpk.id,
            kpk.created,
            public,
            identity.sign(kpk_message(identity.user, kpk.id, kpk.created, public)),
        )

    def signed_kopks(self, identity: Identity, ids: list[int]) -> tuple[OneTimeKemPrekey, ...]:
        return tuple(
            OneTimeKemPrekey(
                i, self.kopks[i].public, identity.sign(kopk_message(identity.user, i, self.kopks[i].public))
            )
            for i in ids
        )

    def signed_opks(self, identity: Identity, ids: list[int]) -> tuple[OneTimePrekey, ...]:
        return tuple(
            OneTimePrekey(
                i, self.opks[i].public, identity.sign(opk_message(identity.user, i, self.opks[i].public))
            )
            for i in ids
        )

    def bundle(
        self, identity: Identity, opk_ids: list[int] | None = None, kopk_ids: list[int] | None = None
    ) -> Bundle:
        """The bundle to publish: identity, current signed prekey and last-resort KEM
        prekey (if made yet), and the given (or all) one-time prekeys of both kinds."""
        ids = sorted(self.opks) if opk_ids is None else opk_ids
        kem_ids = sorted(self.kopks) if kopk_ids is None else kopk_ids
        return Bundle(
            identity.public(),
            self.signed_spk(identity),
            self.signed_opks(identity, ids),
            self.signed_kpk(identity) if self.kpks else None,
            self.signed_kopks(identity, kem_ids),
        )


_Dated = TypeVar("_Dated", StoredSpk, StoredKpk)


def _keep_retired(keys: list[_Dated], now: float) -> list[_Dated]:
    """`keys` (newest last, the newest just made) without the retired ones no longer needed:
    the last `SPK_KEEP_RETIRED` always stay; older ones while retired less than
    `SPK_KEEP_OLD` ago by `now`, up to `SPK_RETIRED_MAX` in all."""
    retired, newest = keys[:-1], keys[-1]
    kept: list[_Dated] = []
    for i, key in enumerate(retired):
        rank = len(retired) - 1 - i  # 0: retired by this rotation
        retired_at = keys[i + 1].created  # when its successor was made
        if rank < SPK_KEEP_RETIRED or (rank < SPK_RETIRED_MAX and now - retired_at < SPK_KEEP_OLD):
            kept.append(key)
    kept.append(newest)
    return kept


def bundle_from_frame(nick: str, frame: PublishKeys | Keys | DeviceKeys) -> Bundle:
    """The bundle a `publish_keys` (from `nick`) or `keys` (for `nick`) frame carries, or
    one of the other devices' bundles in a `keys`, as `verify_bundle` checks it and a
    session starts from it."""
    ident, spk = frame.identity, frame.spk
    return Bundle(
        PublicIdentity(nick, ident.sig_key, ident.dh_key, ident.dh_sig),
        SignedPrekey(spk.id, spk.created, spk.public, spk.signature),
        tuple(OneTimePrekey(o.id, o.public, o.signature) for o in frame.opks),
        next((SignedKemPrekey(k.id, k.created, k.public, k.signature) for k in frame.kpk), None),
        tuple(OneTimeKemPrekey(k.id, k.public, k.signature) for k in frame.kopks),
    )


def publication(bundle: Bundle) -> PublishKeys:
    """`bundle` as a `publish_keys` frame, with the one-time prekeys it carries."""
    ident, spk, kpk = bundle.identity, bundle.spk, bundle.kpk
    return PublishKeys(
        identity=KeyIdentity(sig_key=ident.sig_key, dh_key=ident.dh_key, dh_sig=ident.dh_sig),
        spk=SignedPrekeyRecord(id=spk.id, created=spk.created, public=spk.public, signature=spk.signature),
        opks=tuple(OneTimePrekeyRecord(id=o.id, public=o.public, signature=o.signature) for o in bundle.opks),
        kpk=()
        if kpk is None
        else (
            SignedKemPrekeyRecord(id=kpk.id, created=kpk.created, public=kpk.public, signature=kpk.signature),
        ),
        kopks=tuple(
            OneTimeKemPrekeyRecord(id=k.id, public=k.public, signature=k.signature) for k in bundle.kopks
        ),
    )
