"""Session setup (X3DH-style, E2E.md): a shared secret with a possibly offline peer.

DH1 = DH(IK_dh_A, SPK_B)  DH2 = DH(EK_A, IK_dh_B)  DH3 = DH(EK_A, SPK_B)  [DH4 = DH(EK_A, OPK_B)]
SK  = HKDF(salt = 0^32, IKM = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4], info = V " x3dh", 32)
AD0 = LP(V, user_A, IK_A, user_B, IK_B)
sid = SHA-256(LP(V, "sid", IK_A, IK_B, EK_A, spk_id, opk_id))[:16]
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..protocol import fold_nick
from .bundle import Bundle, PrekeySecrets
from .errors import DecryptionError
from .identity import Identity, PublicIdentity
from .primitives import VERSION_LABEL, DhKeyPair, Random, hkdf_sha256, lp, sha256

__all__ = ["NO_OPK", "SessionKeys", "Setup", "initiate", "respond"]

#: opk_id when the directory had no one-time prekey left (DH4 is then omitted).
NO_OPK = 0


@dataclass(frozen=True)
class Setup:
    """What the initiator sends (in every message until the peer replies) so the peer can
    compute the same secret: her identity, her ephemeral key, and which prekeys she used."""

    identity: PublicIdentity
    ephemeral: bytes
    spk_id: int
    opk_id: int


@dataclass(frozen=True)
class SessionKeys:
    sk: bytes
    ad0: bytes
    sid: bytes


def _derive(
    dhs: list[bytes], initiator: PublicIdentity, responder: PublicIdentity, setup: Setup
) -> SessionKeys:
    sk = hkdf_sha256(
        salt=bytes(32), ikm=b"\xff" * 32 + b"".join(dhs), info=VERSION_LABEL + b" x3dh", length=32
    )
    ad0 = lp(
        VERSION_LABEL, fold_nick(initiator.user), initiator.key, fold_nick(responder.user), responder.key
    )
    sid = sha256(
        lp(VERSION_LABEL, b"sid", initiator.key, responder.key, setup.ephemeral, setup.spk_id, setup.opk_id)
    )[:16]
    return SessionKeys(sk, ad0, sid)


def initiate(me: Identity, bundle: Bundle, random: Random = os.urandom) -> tuple[SessionKeys, Setup]:
    """Start a session with the owner of a *verified* bundle.

    Raises `ValueError` if a key in the bundle is low-order (the exchange yields zero).
    """
    ephemeral = DhKeyPair.generate(random)
    opk = bundle.opks[0] if bundle.opks else None
    dhs = [
        me.dh.exchange(bundle.spk.public),
        ephemeral.exchange(bundle.identity.dh_key),
        ephemeral.exchange(bundle.spk.public),
    ]
    if opk is not None:
        dhs.append(ephemeral.exchange(opk.public))
    setup = Setup(me.public(), ephemeral.public, bundle.spk.id, opk.id if opk else NO_OPK)
    return _derive(dhs, setup.identity, bundle.identity, setup), setup


def respond(me: Identity, secrets: PrekeySecrets, setup: Setup) -> tuple[SessionKeys, DhKeyPair]:
    """The responder's side: the same keys, and the signed prekey pair used (the first
    ratchet key). The one-time prekey is *not* deleted here: only after the first message
    decrypts (the caller does that), so a forged setup cannot burn it.

    Raises `DecryptionError` for an unknown prekey id or a low-order key.
    """
    spk = secrets.spk_pair(setup.spk_id)
    opk = secrets.opks.get(setup.opk_id) if setup.opk_id != NO_OPK else None
    if spk is None or (setup.opk_id != NO_OPK and opk is None):
        raise DecryptionError
    try:
        dhs = [
            spk.exchange(setup.identity.dh_key),
            me.dh.exchange(setup.ephemeral),
            spk.exchange(setup.ephemeral),
        ]
        if opk is not None:
            dhs.append(opk.exchange(setup.ephemeral))
    except ValueError:
        raise DecryptionError from None
    return _derive(dhs, setup.identity, me.public(), setup), spk
