"""Long-term identities: an Ed25519 signing key and an X25519 key bound to it.

`cryptography` has no XEdDSA, so, as Olm does, the X25519 identity key is a separate
key signed by the Ed25519 one; peers must check that binding (the 2022 Matrix attacks
came from keys that were not bound to a pinned identity).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..protocol import fold_nick
from .primitives import (
    KEY_BYTES,
    VERSION_LABEL,
    DhKeyPair,
    Random,
    ed25519_public,
    ed25519_sign,
    ed25519_verify,
    lp,
    sha256,
)
from .safety import format_safety_number, safety_number

__all__ = ["Identity", "PublicIdentity"]


@dataclass(frozen=True)
class PublicIdentity:
    """What peers learn about a user: both public keys and the binding signature."""

    user: str
    sig_key: bytes
    dh_key: bytes
    dh_sig: bytes

    @property
    def key(self) -> bytes:
        """IK = IK_sig || IK_dh: what is pinned, fingerprinted, and bound into every AAD."""
        return self.sig_key + self.dh_key

    def binding_valid(self) -> bool:
        """True if `dh_sig` is `sig_key`'s signature over `dh_key` for this user."""
        return (
            len(self.sig_key) == KEY_BYTES
            and len(self.dh_key) == KEY_BYTES
            and ed25519_verify(self.sig_key, self.dh_sig, _binding_message(self.user, self.dh_key))
        )

    def fingerprint(self) -> str:
        """A short hex digest of the identity key, for /whois and logs."""
        digest = sha256(self.key).hex()
        return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def _binding_message(user: str, dh_key: bytes) -> bytes:
    return lp(VERSION_LABEL, b"identity-dh", fold_nick(user), dh_key)


class Identity:
    """A user's own long-term keys. The private halves never leave the client."""

    def __init__(self, user: str, sig_private: bytes, dh: DhKeyPair) -> None:
        self.user = user
        self._sig_private = sig_private
        self.dh = dh
        self.sig_key = ed25519_public(sig_private)

    @classmethod
    def generate(cls, user: str, random: Random = os.urandom) -> Identity:
        return cls(user, random(KEY_BYTES), DhKeyPair.generate(random))

    @property
    def sig_private(self) -> bytes:
        return self._sig_private

    def sign(self, message: bytes) -> bytes:
        return ed25519_sign(self._sig_private, message)

    def public(self) -> PublicIdentity:
        return PublicIdentity(
            user=self.user,
            sig_key=self.sig_key,
            dh_key=self.dh.public,
            dh_sig=self.sign(_binding_message(self.user, self.dh.public)),
        )

    def safety_number_with(self, peer: PublicIdentity) -> str:
        """The 60 digits both users see, grouped for reading aloud."""
        me = self.public()
        return format_safety_number(
            safety_number(me.key, fold_nick(me.user).encode(), peer.key, fold_nick(peer.user).encode())
        )

    def __repr__(self) -> str:
        return f"Identity(user={self.user!r}, sig_key={self.sig_key.hex()[:16]}...)"
