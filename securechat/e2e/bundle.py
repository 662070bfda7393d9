"""Prekey bundles: what the directory hands out so a session can start while the owner is offline."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..protocol import fold_nick
from .errors import BundleError
from .identity import Identity, PublicIdentity
from .primitives import KEY_BYTES, VERSION_LABEL, DhKeyPair, Random, ed25519_verify, lp

__all__ = [
    "OPK_REFILL_BELOW",
    "OPK_TARGET",
    "SPK_KEEP_OLD",
    "SPK_MAX_AGE",
    "SPK_ROTATE_AFTER",
    "Bundle",
    "OneTimePrekey",
    "PrekeySecrets",
    "SignedPrekey",
    "verify_bundle",
]

DAY = 86_400
#: A signed prekey is replaced weekly (Signal's rhythm) ...
SPK_ROTATE_AFTER = 7 * DAY
#: ... and its private half kept this long, for sessions started just before a rotation.
SPK_KEEP_OLD = 30 * DAY
#: A fetched bundle whose signed prekey is older than this is refused: its owner has not
#: been online for a month, or the server is replaying an old bundle.
SPK_MAX_AGE = 35 * DAY
#: Clocks differ; a prekey "created" further in the future than this is refused.
CLOCK_SKEW = DAY
#: How many one-time prekeys to keep published, and when to top them up.
OPK_TARGET = 100
OPK_REFILL_BELOW = 20


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
    if spk.created < now - SPK_MAX_AGE:
        raise BundleError(f"{user}'s signed prekey is stale (older than {SPK_MAX_AGE // DAY} days)")
    if spk.created > now + CLOCK_SKEW:
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
        spk = self.current_spk()
        return spk is None or now - spk.created >= SPK_ROTATE_AFTER

    def rotate_spk(self, now: float, random: Random = os.urandom) -> None:
        """Make a new signed prekey; forget old ones past `SPK_KEEP_OLD`."""
        self.spks.append(StoredSpk(self.next_spk_id, int(now), DhKeyPair.generate(random)))
        self.next_spk_id += 1
        newest = self.spks[-1]
        self.spks = [s for s in self.spks if s is newest or now - s.created < SPK_KEEP_OLD]

    def spk_pair(self, key_id: int) -> DhKeyPair | None:
        for spk in self.spks:
            if spk.id == key_id:
                return spk.pair
        return None

    def new_opks(self, count: int, random: Random = os.urandom) -> list[int]:
        """Make `count` one-time prekeys; returns their ids."""
        ids = []
        for _ in range(count):
            self.opks[self.next_opk_id] = DhKeyPair.generate(random)
            ids.append(self.next_opk_id)
            self.next_opk_id += 1
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
