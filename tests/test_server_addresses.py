from __future__ import annotations

from dataclasses import replace

import pytest

from securechat.server import ServerConfig
from securechat.server.addresses import ConnectionCounts, PrefixLimits, prefix_of


def test_addresses_are_counted_by_network() -> None:
    assert prefix_of("192.0.2.77") == "192.0.2.0/24"
    assert prefix_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert prefix_of("::ffff:192.0.2.77") == "192.0.2.0/24"  # a dual-stack listener's IPv4 peer
    assert prefix_of("fe80::1%eth0") == "fe80::/64"
    assert prefix_of("192.0.2.77", ipv4_bits=32) == "192.0.2.77/32"  # exact addresses, if wanted
    assert prefix_of("not an address") == "not an address"


def limits(**overrides: object) -> PrefixLimits:
    return PrefixLimits.from_config(replace(ServerConfig(), **overrides))  # type: ignore[arg-type]


def test_limits_left_unset_follow_max_per_ip() -> None:
    default = limits()
    assert (default.per_prefix, default.prelogin_per_prefix) == (64, 16)
    assert (default.accept_rate, default.accept_burst) == (32.0, 64.0)
    assert (default.say_rate, default.say_burst) == (32.0, 32.0)
    lifted = limits(max_per_ip=1000)  # what tools running everyone from 127.0.0.1 pass
    assert (lifted.prelogin_per_prefix, lifted.accept_burst, lifted.say_rate) == (250, 1000.0, 500.0)
    assert limits(message_rate=0).say_rate is None  # the benchmark's "rate limits off"
    explicit = limits(max_prelogin_per_prefix=3, accept_rate=1.0, prefix_say_rate=2.0, prefix_say_burst=4.0)
    assert (explicit.prelogin_per_prefix, explicit.accept_rate, explicit.say_rate, explicit.say_burst) == (
        3,
        1.0,
        2.0,
        4.0,
    )
    assert limits(registrations_per_hour=0).registrations_per_second == 0


def test_connection_counts_per_prefix_and_not_logged_in() -> None:
    counts = ConnectionCounts(limits(max_sessions=5, max_per_ip=3, max_prelogin_per_prefix=2, max_prelogin=3))
    a, b, c = "10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"
    counts.opened(a)
    counts.opened(a)
    assert counts.refusal(a) == "too many connections from its network not logged in"
    counts.logged_in(a)
    counts.opened(a)  # a: three open, one logged in
    assert counts.refusal(a) == "too many connections from its network"
    counts.opened(b)  # three not logged in, in all
    assert counts.refusal(c) == "too many connections not logged in"
    counts.logged_in(b)
    counts.opened(c)
    assert counts.refusal(b) == "server full"
    for prefix, logged_in in ((a, True), (a, False), (a, False), (b, True), (c, False)):
        counts.closed(prefix, logged_in=logged_in)
    assert (counts.total, counts.prelogin, counts.open_from(a)) == (0, 0, 0)
    assert counts.refusal(a) is None


@pytest.mark.parametrize("bits", [24, 32])
def test_prefix_lengths_come_from_the_config(bits: int) -> None:
    assert limits(ipv4_prefix=bits).prefix("10.1.2.3") == f"10.1.2.{0 if bits == 24 else 3}/{bits}"


def test_an_explicit_zero_is_a_setting_and_a_bad_prefix_length_is_refused_up_front() -> None:
    from dataclasses import replace

    from securechat.server.addresses import PrefixLimits
    from securechat.server.config import ServerConfig

    limits = PrefixLimits.from_config(replace(ServerConfig(), accept_burst=0, prefix_say_burst=0))
    assert (limits.accept_burst, limits.say_burst) == (0, 0)  # was: the default (64, 32)
    with pytest.raises(ValueError, match="ipv4_prefix"):
        PrefixLimits.from_config(replace(ServerConfig(), ipv4_prefix=40))
