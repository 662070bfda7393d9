"""Deterministic randomness and ready-made parties for e2e tests."""

from __future__ import annotations

import random as _random

from securechat.e2e.conversations import Conversations
from securechat.e2e.identity import Identity

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


def fetched_bundle(owner: Conversations, opk_id: int | None = None):  # type: ignore[no-untyped-def]
    """The bundle a directory would hand out: identity, SPK, and at most one OPK."""
    ids = sorted(owner.secrets.opks)
    chosen = [] if not ids else [ids[0] if opk_id is None else opk_id]
    return owner.secrets.bundle(owner.identity, chosen)
