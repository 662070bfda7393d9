"""Deterministic randomness and ready-made parties for e2e tests."""

from __future__ import annotations

import os
import random as _random

from securechat.e2e import x3dh
from securechat.e2e.bundle import OPK_TARGET, Bundle, PrekeySecrets, StoredSpk, publication
from securechat.e2e.conversations import Conversations
from securechat.e2e.identity import Identity
from securechat.e2e.primitives import DhKeyPair, Random
from securechat.e2e.ratchet import RatchetState
from securechat.e2e.x3dh import NO_OPK, Setup
from securechat.protocol import (
    Keys,
)

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def seeded(seed: int) -> _random.Random:
    return _random.Random(seed)


def party(name: str, seed: int, clock: Clock | None = None) -> Conversations:
    rng = seeded(seed)
    conv = Conversations(Identity.generate(name, rng.randbytes), random=rng.randbytes, clock=clock or Clock())
    conv.bundle_to_publish()
    return conv


def v1_party(name: str, seed: int, clock: Clock | None = None) -> Conversations:
    """`party` as a client before version 2 made it (the same seeded draws, in the same
    order: identity, signed prekey, 100 one-time prekeys; no KEM prekeys), so that what
    such a client sent can be checked against today's code."""
    rng = seeded(seed)
    identity = Identity.generate(name, rng.randbytes)
    secrets = PrekeySecrets(next_spk_id=2)
    secrets.spks.append(StoredSpk(1, int(NOW), DhKeyPair.generate(rng.randbytes)))
    secrets.new_opks(OPK_TARGET, rng.randbytes)
    return Conversations(identity, secrets, random=rng.randbytes, clock=clock or Clock())


def v1_initiate(me: Conversations, bundle: Bundle, random: Random = os.urandom) -> RatchetState:
    """A session started as a client from before version 2 starts one (X3DH, no KEM
    prekey: docs/e2e.md's version-1 formulas), from today's building blocks. Today's
    `initiate` makes only version-2 setups; this is the older peer it must still answer."""
    ephemeral = DhKeyPair.generate(random)
    opk = bundle.opks[0] if bundle.opks else None
    dhs = [
        me.identity.dh.exchange(bundle.spk.public),
        ephemeral.exchange(bundle.identity.dh_key),
        ephemeral.exchange(bundle.spk.public),
        *([ephemeral.exchange(opk.public)] if opk else []),
    ]
    setup = Setup(me.identity.public(), ephemeral.public, bundle.spk.id, opk.id if opk else NO_OPK)
    keys = x3dh._derive(dhs, setup.identity, bundle.identity, setup, None)
    return RatchetState.for_initiator(
        sid=keys.sid,
        ad0=keys.ad0,
        sk=keys.sk,
        me=me.identity.user,
        peer=bundle.identity.user,
        peer_key=bundle.identity.key,
        their_spk=bundle.spk.public,
        setup=setup,
        random=random,
    )


def fetched_bundle(owner: Conversations, opk_id: int | None = None, *, kopk: bool = True) -> Bundle:
    """The bundle a directory would hand out: identity, SPK, at most one OPK, the
    last-resort KEM prekey and (with `kopk`, if any is left) one one-time KEM prekey. The
    directory hands both kinds out in id order, so the n-th OPK comes with the n-th KOPK."""
    ids = sorted(owner.secrets.opks)
    chosen = [] if not ids else [ids[0] if opk_id is None else opk_id]
    rank = ids.index(chosen[0]) if chosen and chosen[0] in ids else 0
    kem_ids = sorted(owner.secrets.kopks)[rank : rank + 1] if kopk else []
    return owner.secrets.bundle(owner.identity, chosen, kem_ids)


def keys_event(bundle: Bundle, nick: str) -> Keys:
    """`bundle` (as fetched: at most one one-time prekey of each kind) as the directory's
    `keys` answer, under `nick` (for a relay substituting keys)."""
    publish = publication(bundle)
    return Keys(
        nick=nick,
        identity=publish.identity,
        spk=publish.spk,
        opks=publish.opks,
        kpk=publish.kpk,
        kopks=publish.kopks,
    )


def genuine_keys_frame(nick: str, ref: str = "") -> dict[str, object]:
    """A `keys` frame for a fresh `nick` from a real bundle (signatures that verify), as a
    server sends it; without `ref`, as a server that echoes none sends it."""
    owner = Conversations(Identity.generate(nick))
    owner.bundle_to_publish()
    frame = keys_event(fetched_bundle(owner), nick).to_dict()
    if ref:
        frame["ref"] = ref
    else:
        del frame["ref"]
    return frame
