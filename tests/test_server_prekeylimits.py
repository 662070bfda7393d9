"""Limits on handing out one-time prekeys: per requester identity, per owner, in all."""

from __future__ import annotations

import ssl

from raw_identity import RawIdentity

from securechat.protocol import FetchKeys, Keys, PrekeyCount
from securechat.server import Server, ServerConfig
from securechat.server.prekeylimits import PrekeyLimits


def test_fresh_nicks_cannot_drain_someones_one_time_prekeys(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    # 5 nicks once drained all 100 of a victim's one-time prekeys in 0.12 s.
    bob = RawIdentity(server, client_ctx, "bob")
    bob.send(bob.publication(100))
    published = bob.round_trip()
    assert isinstance(published[0], PrekeyCount) and published[0].count == 100
    handed_out = 0
    bundles = 0
    for n in range(5):
        drainer = RawIdentity(server, client_ctx, f"drainer{n}")
        for _ in range(20):
            drainer.send(FetchKeys(nick="bob"))
        frames = drainer.round_trip()
        keys = [f for f in frames if isinstance(f, Keys)]
        bundles += len(keys)
        handed_out += sum(len(k.opks) for k in keys)
        drainer.close()
    assert bundles == 100  # each still got a bundle: setups fall back to the signed prekey
    assert handed_out == ServerConfig().opk_burst_per_owner
    assert server.store.prekey_status("bob").count == 100 - handed_out
    bob.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_owner_gets_a_burst_then_one_a_minute_whoever_asks() -> None:
    clock = Clock()
    config = ServerConfig(opk_burst_per_owner=3, opk_rate_per_owner=1 / 60)
    limits = PrekeyLimits(config, clock)
    assert [limits.may_hand_out("bob") for _ in range(4)] == [True, True, True, False]
    assert limits.may_hand_out("carol")  # another owner has its own
    clock.now += 59
    assert not limits.may_hand_out("BOB")
    clock.now += 1
    assert limits.may_hand_out("bob") and not limits.may_hand_out("bob")


def test_all_owners_together_get_the_total_and_a_refused_owner_costs_the_total_nothing() -> None:
    clock = Clock()
    config = ServerConfig(opk_burst_per_owner=2, opk_burst_total=5, opk_rate_total=1.0)
    limits = PrekeyLimits(config, clock)
    assert [limits.may_hand_out("bob") for _ in range(10)].count(True) == 2
    assert [limits.may_hand_out(f"owner{n}") for n in range(4)] == [True, True, True, False]
    clock.now += 1
    assert limits.may_hand_out("owner9")


def test_fetches_are_limited_per_requester_identity_not_per_session() -> None:
    clock = Clock()
    limits = PrekeyLimits(ServerConfig(fetch_burst=3, fetch_rate=1.0), clock)
    assert [limits.may_fetch(b"a" * 32) for _ in range(4)] == [True, True, True, False]
    assert limits.may_fetch(b"b" * 32)
    clock.now += 1
    assert limits.may_fetch(b"a" * 32)


def test_the_tables_stay_bounded() -> None:
    clock = Clock()
    limits = PrekeyLimits(ServerConfig(fetch_limits_tracked=100, opk_burst_total=10_000), clock)
    for n in range(1000):
        assert limits.may_fetch(n.to_bytes(32, "big"))
        assert limits.may_hand_out(f"owner{n}")
    assert len(limits._requesters) <= 100 and len(limits._owners) <= 100
