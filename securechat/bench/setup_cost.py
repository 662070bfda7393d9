"""What post-quantum session setup costs (`securechat bench setup`), in one process, no network.

- the bundle a sender fetches (the `keys` frame) with and without the KEM prekeys, and a
  whole top-up publish (`publish_keys`: 100 one-time DH prekeys, 15 one-time KEM prekeys,
  the last-resort one);
- the setup on each side (`initiate`, `respond`: medians of `rounds`), and of that the
  ML-KEM-768 encapsulation and decapsulation alone;
- the server's side of a publish: its CPU to check every signature and store the keys
  (`Relay.publish` into an in-memory SQLite store, as `securechat server` does), with and
  without the KEM prekeys, and the bytes a user's KEM prekeys take in the store.

The KEM prekey batch (e2e/bundle.py `KOPK_TARGET`) is sized from these numbers
(docs/performance.md, "Post-quantum setup").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..e2e.bundle import OneTimeKemPrekey, SignedKemPrekey, publication
from ..e2e.conversations import Conversations
from ..e2e.identity import Identity
from ..e2e.primitives import KemKeyPair, kem_encapsulate
from ..e2e.x3dh import initiate, respond
from ..protocol import (
    Keys,
    PublishKeys,
    encode,
)
from ..server.hub import Hub
from ..server.relay import Relay
from ..server.store import SqliteStore
from .stats import median_seconds

__all__ = ["SetupCost", "setup_cost"]


@dataclass(frozen=True)
class SetupCost:
    rounds: int
    #: The `keys` frame (JSON line) as a version-3 session gets it, and as a version-2 one.
    bundle_bytes: int
    bundle_bytes_without_kem: int
    #: A whole top-up `publish_keys` (100 OPKs, 15 KOPKs, the KPK), and without KEM prekeys.
    publish_bytes: int
    publish_bytes_without_kem: int
    #: Median milliseconds of a version-2 setup: the initiator's, the responder's.
    initiator_ms: float
    responder_ms: float
    #: Of those, ML-KEM-768 alone.
    encapsulate_ms: float
    decapsulate_ms: float
    #: Server CPU (process time) per publish, median: with and without the KEM prekeys.
    publish_server_ms: float
    publish_server_ms_without_kem: float
    #: Bytes a user's KEM prekeys (the KPK and 15 KOPKs) take in the store's rows.
    kem_store_bytes: int


def _median_ms(
    fn: Callable[[], object], rounds: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    return median_seconds(fn, rounds, clock) * 1e3


def setup_cost(rounds: int = 100) -> SetupCost:
    """Measure; `rounds` setups (and publishes) of each kind, medians."""
    bob = Conversations(Identity.generate("bob"))
    full = bob.bundle_to_publish()
    alice = Identity.generate("alice")
    fetched = bob.secrets.bundle(bob.identity, sorted(bob.secrets.opks)[:1], sorted(bob.secrets.kopks)[:1])
    publish = publication(full)
    classic = replace(publish, kpk=(), kopks=())
    keys = Keys(nick="bob", identity=publish.identity, spk=publish.spk, opks=publish.opks[:1])
    with_kem = replace(keys, kpk=publish.kpk, kopks=publish.kopks[:1])

    setups = [initiate(alice, fetched) for _ in range(rounds)]
    initiator = _median_ms(lambda: initiate(alice, fetched), rounds)
    pending = iter(setups)
    responder = _median_ms(lambda: respond(bob.identity, bob.secrets, next(pending)[1]), rounds)
    kem_pair = KemKeyPair.generate()
    ciphertext, _ = kem_encapsulate(kem_pair.public)
    encapsulate = _median_ms(lambda: kem_encapsulate(kem_pair.public), rounds)
    decapsulate = _median_ms(lambda: kem_pair.decapsulate(ciphertext), rounds)

    def server_ms(event: PublishKeys) -> float:
        store = SqliteStore(None)
        relay = Relay(store, Hub())
        relay.register("bob", bob.identity.sig_key)
        try:
            # The same keys again each time: the store keeps them once, the checks all run.
            return _median_ms(
                lambda: relay.publish("bob", bob.identity.sig_key, event, kem=True), rounds, time.process_time
            )
        finally:
            store.close()

    publish_ms, classic_ms = server_ms(publish), server_ms(classic)
    kpk, kopks = full.kpk, full.kopks
    assert kpk is not None
    kem_bytes = _kem_row_bytes(kpk, kopks)
    return SetupCost(
        rounds=rounds,
        bundle_bytes=len(encode(with_kem)),
        bundle_bytes_without_kem=len(encode(keys)),
        publish_bytes=len(encode(publish)),
        publish_bytes_without_kem=len(encode(classic)),
        initiator_ms=round(initiator, 3),
        responder_ms=round(responder, 3),
        encapsulate_ms=round(encapsulate, 3),
        decapsulate_ms=round(decapsulate, 3),
        publish_server_ms=round(publish_ms, 3),
        publish_server_ms_without_kem=round(classic_ms, 3),
        kem_store_bytes=kem_bytes,
    )


def _kem_row_bytes(kpk: SignedKemPrekey, kopks: tuple[OneTimeKemPrekey, ...]) -> int:
    """The key and signature bytes of the rows a user's KEM prekeys take (plus 16 bytes of
    ids and dates per row); SQLite's own overhead per row is a few bytes more."""
    keys: list[SignedKemPrekey | OneTimeKemPrekey] = [kpk, *kopks]
    return sum(len(k.public) + len(k.signature) + 16 for k in keys)
