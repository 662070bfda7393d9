"""Session setup: a shared secret with a possibly offline peer (docs/e2e.md, "Key agreement").

Version 1 (X3DH-style) and version 2 (PQXDH-style: version 1's DH outputs followed by an
ML-KEM-768 shared secret). A client starts only version-2 sessions and still answers
version-1 setups from older clients (the conversation is then marked not post-quantum).

DH1 = DH(IK_dh_A, SPK_B)  DH2 = DH(EK_A, IK_dh_B)  DH3 = DH(EK_A, SPK_B)  [DH4 = DH(EK_A, OPK_B)]
v1: SK  = HKDF(salt = 0^32, IKM = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4], info = V " x3dh", 32)
    AD0 = LP(V, user_A, IK_A, user_B, IK_B)
    sid = SHA-256(LP(V, "sid", IK_A, IK_B, EK_A, spk_id, opk_id))[:16]
v2: (ct, SS) = ML-KEM-768.Encaps(KEM prekey: the one-time one if handed out, else last-resort)
    SK  = HKDF(salt = 0^32, IKM = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4] || SS, info = V2 " pqxdh", 32)
    AD0 = LP(V2, user_A, IK_A, user_B, IK_B, KEM public key)
    sid = SHA-256(LP(V2, "sid", IK_A, IK_B, EK_A, spk_id, opk_id, kem_id, SHA-256(ct)))[:16]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol import fold_nick
from .bundle import Bundle, PrekeySecrets
from .errors import DecryptionError
from .identity import Identity, PublicIdentity
from .primitives import (
    VERSION_LABEL,
    DhKeyPair,
    Random,
    hkdf_sha256,
    kem_encapsulate,
    lp,
    sha256,
)

__all__ = ["NO_OPK", "PQ_LABEL", "SessionKeys", "Setup", "initiate", "respond"]

#: opk_id when the directory had no one-time prekey left (DH4 is then omitted).
NO_OPK = 0
#: The label of version 2's setup derivations (its KDF, AD0 and session id). Everything
#: else (signatures, the ratchet, the message AAD) keeps `VERSION_LABEL` in both versions.
PQ_LABEL = b"securechat-e2e-v2"

#: Encapsulation: public key -> (ciphertext, shared secret). Tests pass a fixed one.
Encapsulate = Callable[[bytes], tuple[bytes, bytes]]


@dataclass(frozen=True)
class Setup:
    """What the initiator sends (in every message until the peer replies) so the peer can
    compute the same secret: her identity, her ephemeral key, which prekeys she used, and,
    in version 2, the KEM prekey's id and the encapsulation's ciphertext."""

    identity: PublicIdentity
    ephemeral: bytes
    spk_id: int
    opk_id: int
    kem_id: int = 0  # 0: a version-1 setup (then kem_ct is empty)
    kem_ct: bytes = b""

    @property
    def version(self) -> int:
        return 2 if self.kem_id else 1


@dataclass(frozen=True)
class SessionKeys:
    sk: bytes
    ad0: bytes
    sid: bytes


def _derive(
    dhs: list[bytes],
    initiator: PublicIdentity,
    responder: PublicIdentity,
    setup: Setup,
    kem: tuple[bytes, bytes] | None,
) -> SessionKeys:
    """`kem`: (KEM public key used, shared secret) for version 2; None for version 1."""
    a, b = fold_nick(initiator.user), fold_nick(responder.user)
    if kem is None:
        ikm = b"\xff" * 32 + b"".join(dhs)
        sk = hkdf_sha256(salt=bytes(32), ikm=ikm, info=VERSION_LABEL + b" x3dh", length=32)
        ad0 = lp(VERSION_LABEL, a, initiator.key, b, responder.key)
        sid_input = lp(
            VERSION_LABEL, b"sid", initiator.key, responder.key, setup.ephemeral, setup.spk_id, setup.opk_id
        )
    else:
        kem_public, shared = kem
        ikm = b"\xff" * 32 + b"".join(dhs) + shared
        sk = hkdf_sha256(salt=bytes(32), ikm=ikm, info=PQ_LABEL + b" pqxdh", length=32)
        ad0 = lp(PQ_LABEL, a, initiator.key, b, responder.key, kem_public)
        sid_input = lp(
            PQ_LABEL,
            b"sid",
            initiator.key,
            responder.key,
            setup.ephemeral,
            setup.spk_id,
            setup.opk_id,
            setup.kem_id,
            sha256(setup.kem_ct),
        )
    return SessionKeys(sk, ad0, sha256(sid_input)[:16])


def initiate(
    me: Identity,
    bundle: Bundle,
    random: Random = os.urandom,
    encapsulate: Encapsulate = kem_encapsulate,
) -> tuple[SessionKeys, Setup]:
    """Start a version-2 session with the owner of a *verified* bundle (one with a KEM
    prekey: `verify_bundle(..., require_kem=True)`).

    Raises `ValueError` if the bundle has no KEM prekey, or a key in it is low-order (the
    exchange yields zero) or malformed.
    """
    kem_key = bundle.kem_key()
    if kem_key is None:
        raise ValueError("no KEM prekey in the bundle: a version-2 setup needs one")
    kem_id, kem_public = kem_key
    ephemeral = DhKeyPair.generate(random)
    opk = bundle.opks[0] if bundle.opks else None
    dhs = [
        me.dh.exchange(bundle.spk.public),
        ephemeral.exchange(bundle.identity.dh_key),
        ephemeral.exchange(bundle.spk.public),
    ]
    if opk is not None:
        dhs.append(ephemeral.exchange(opk.public))
    kem_ct, shared = encapsulate(kem_public)
    setup = Setup(me.public(), ephemeral.public, bundle.spk.id, opk.id if opk else NO_OPK, kem_id, kem_ct)
    return _derive(dhs, setup.identity, bundle.identity, setup, (kem_public, shared)), setup


def respond(me: Identity, secrets: PrekeySecrets, setup: Setup) -> tuple[SessionKeys, DhKeyPair]:
    """The responder's side, for either version: the same keys, and the signed prekey pair
    used (the first ratchet key). One-time prekeys (DH and KEM) are *not* deleted here: only
    after the first message decrypts (the caller does that), so a forged setup cannot burn
    them.

    Raises `DecryptionError` for an unknown prekey id, a low-order key or a malformed
    KEM ciphertext.
    """
    spk = secrets.spk_pair(setup.spk_id)
    opk = secrets.opks.get(setup.opk_id) if setup.opk_id != NO_OPK else None
    if spk is None or (setup.opk_id != NO_OPK and opk is None):
        raise DecryptionError
    kem_pair = secrets.kem_pair(setup.kem_id) if setup.version == 2 else None
    if setup.version == 2 and kem_pair is None:
        raise DecryptionError
    try:
        dhs = [
            spk.exchange(setup.identity.dh_key),
            me.dh.exchange(setup.ephemeral),
            spk.exchange(setup.ephemeral),
        ]
        if opk is not None:
            dhs.append(opk.exchange(setup.ephemeral))
        kem = None if kem_pair is None else (kem_pair.public, kem_pair.decapsulate(setup.kem_ct))
    except ValueError:
        raise DecryptionError from None
    return _derive(dhs, setup.identity, me.public(), setup, kem), spk
