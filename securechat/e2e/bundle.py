"""Prekey bundles: what the directory hands out so a session can start while the owner is offline."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..protocol import fold_nick
from .errors import BundleError
from .identity import Identity, PublicIdentity
from .primitives import KEY_BYTES, VERSION_LABEL, DhKeyPair, Random, ed25519_verify, lp

__all__ = [
    "CLOCK_SKEW",
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
    "OneTimePrekey",
    "PrekeySecrets",
    "SignedPrekey",
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


def spk_message(user: str, key_id: int, created: int, public: bytes) -> bytes:
    return lp(VERSION_LABEL, b"spk", fold_nick(user), key_id, created, public)


def opk_message(user: str, key_id: int, public: bytes) -> bytes:
    return lp(VERSION_LABEL, b"opk", fold_nick(user), key_id, public)


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
class Bundle:
    """A user's published keys. As fetched, it carries at most one one-time prekey."""

    identity: PublicIdentity
    spk: SignedPrekey
    opks: tuple[OneTimePrekey, ...] = ()


def verify_bundle(bundle: Bundle, *, user: str, now: float, min_spk_id: int = 0) -> None:
    """Check a fetched bundle before any key in it is used.

    Raises `BundleError` if it is for another user, any signature fails, the signed
    prekey is stale or from the future, or its id is older than one already seen for
    this identity (`min_spk_id`: a server rolling back to an old prekey).

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
    spk = bundle.spk
    if len(spk.public) != KEY_BYTES or not ed25519_verify(
        ident.sig_key, spk.signature, spk_message(ident.user, spk.id, spk.created, spk.public)
    ):
        raise BundleError(f"{user}'s signed prekey has an invalid signature")
    if spk.created < now - MAX_CLOCK_ERROR - SPK_MAX_AGE:
        days = (MAX_CLOCK_ERROR + SPK_MAX_AGE) // DAY
        raise BundleError(f"{user}'s signed prekey is stale (older than {days} days)")
    if spk.created > now + MAX_CLOCK_ERROR + CLOCK_SKEW:
        raise BundleError(f"{user}'s signed prekey is dated in the future")
    if spk.id < min_spk_id:
        raise BundleError(f"{user}'s signed prekey was rolled back to an older one")
    for opk in bundle.opks:
        if len(opk.public) != KEY_BYTES or not ed25519_verify(
            ident.sig_key, opk.signature, opk_message(ident.user, opk.id, opk.public)
        ):
            raise BundleError(f"{user}'s one-time prekey has an invalid signature")


@dataclass
class StoredSpk:
    id: int
    created: int
    pair: DhKeyPair


@dataclass
class PrekeySecrets:
    """The private halves of a user's prekeys, and the counters that name them."""

    spks: list[StoredSpk] = field(default_factory=list)  # newest last
    opks: dict[int, DhKeyPair] = field(default_factory=dict)
    next_spk_id: int = 1
    next_opk_id: int = 1

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
        *retired, newest = self.spks
        kept: list[StoredSpk] = []
        for i, spk in enumerate(retired):
            rank = len(retired) - 1 - i  # 0: retired by this rotation
            retired_at = self.spks[i + 1].created  # when its successor was made
            if rank < SPK_KEEP_RETIRED or (rank < SPK_RETIRED_MAX and now - retired_at < SPK_KEEP_OLD):
                kept.append(spk)
        self.spks = [*kept, newest]

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

    def signed_opks(self, identity: Identity, ids: list[int]) -> tuple[OneTimePrekey, ...]:
        return tuple(
            OneTimePrekey(
                i, self.opks[i].public, identity.sign(opk_message(identity.user, i, self.opks[i].public))
            )
            for i in ids
        )

    def bundle(self, identity: Identity, opk_ids: list[int] | None = None) -> Bundle:
        """The bundle to publish: identity, current signed prekey, and the given (or all) OPKs."""
        ids = sorted(self.opks) if opk_ids is None else opk_ids
        return Bundle(identity.public(), self.signed_spk(identity), self.signed_opks(identity, ids))
