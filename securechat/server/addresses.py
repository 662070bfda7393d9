"""Address prefixes, and what the server counts and limits per prefix.

One attacker easily has many addresses: a host usually gets a whole IPv6 /64, and a
rented server or a small network a run of IPv4 addresses. Counting exact addresses
let 160 loopback addresses open ~4,900 sessions. So connections, accepts, room lines,
registrations and failed logins are counted per *prefix*: the address with its low
bits cleared (an IPv4 /24 and an IPv6 /64 by default, `ServerConfig.ipv4_prefix` and
`ipv6_prefix`).

`PrefixLimits` is the one place where the limits' defaults are worked out from the
settings; `ConnectionCounts` counts open and not-yet-logged-in connections (no lock of
its own: the server's lock guards it); `PrefixGuards` holds the per-prefix token
buckets that sessions share (thread-safe, bounded memory).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from ..protocol import fold_nick
from .config import ServerConfig
from .ratelimit import KeyedBuckets

__all__ = ["ConnectionCounts", "PrefixGuards", "PrefixLimits", "prefix_of", "shown_address"]


#: How many addresses' prefixes `prefix_of` remembers. The listener asks once per accepted
#: connection, and working it out with `ipaddress` took ~8 % of the listener's time in a
#: storm of new connections (`bench connect`); most connections come from an address seen
#: recently. Bounded: the least recently used is forgotten.
_PREFIX_CACHE = 4096


@functools.lru_cache(maxsize=_PREFIX_CACHE)
def prefix_of(address: str, ipv4_bits: int = 24, ipv6_bits: int = 64) -> str:
    """The network `address` belongs to, as text: "192.0.2.0/24", "2001:db8::/64".

    An IPv4-mapped IPv6 address (a dual-stack listener) counts as its IPv4 address,
    and a scope ("%eth0") is ignored. Something that is not an IP address (a Unix
    socket's name) is its own prefix. Remembered per (address, lengths) for the
    `_PREFIX_CACHE` most recent; thread-safe.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = ipv4_bits if isinstance(ip, ipaddress.IPv4Address) else ipv6_bits
    return str(ipaddress.ip_network((ip, bits), strict=False))


@dataclass(frozen=True, kw_only=True)
class PrefixLimits:
    """Every per-prefix limit, resolved: the settings left at None take their defaults
    from `max_per_ip`, the operator's word on how many connections one network may
    hold (tools that run everyone from one address lift them all with it)."""

    ipv4_bits: int
    ipv6_bits: int
    max_sessions: int
    per_prefix: int
    prelogin_per_prefix: int
    prelogin: int
    accept_rate: float
    accept_burst: float
    say_rate: float | None  # None: no shared limit on room lines
    say_burst: float
    registrations_per_second: float  # 0: no new registrations
    registration_burst: float
    login_failure_burst: float
    login_failure_interval: float
    table_size: int

    @classmethod
    def from_config(cls, config: ServerConfig) -> PrefixLimits:
        """The limits `config` sets, defaults worked out. Raises `ValueError` for a prefix
        length out of range (it would fail on every connection otherwise)."""
        if not 0 <= config.ipv4_prefix <= 32 or not 0 <= config.ipv6_prefix <= 128:
            raise ValueError("ipv4_prefix must be 0-32 and ipv6_prefix 0-128")
        per_prefix = max(1, config.max_per_ip)
        if config.prefix_say_rate is not None:
            say_rate: float | None = config.prefix_say_rate if config.prefix_say_rate > 0 else None
        else:
            # Half a line per second for each connection the prefix may hold (32/s at the
            # default 64): a lively class behind one NAT stays well under it, while 40
            # nicks flooding from one network share it instead of getting 40 x 5/s.
            say_rate = per_prefix * 0.5 if config.message_rate > 0 else None
        return cls(
            ipv4_bits=config.ipv4_prefix,
            ipv6_bits=config.ipv6_prefix,
            max_sessions=config.max_sessions,
            per_prefix=per_prefix,
            # A quarter of the prefix's connections may be logging in at once.
            prelogin_per_prefix=(
                max(1, per_prefix // 4)
                if config.max_prelogin_per_prefix is None
                else config.max_prelogin_per_prefix
            ),
            prelogin=config.max_prelogin,
            # A prefix may open all its connections at once, and half as many again per second.
            accept_rate=_given(config.accept_rate, per_prefix / 2),
            accept_burst=_given(config.accept_burst, float(per_prefix)),
            say_rate=say_rate,
            say_burst=_given(config.prefix_say_burst, max(config.message_burst, per_prefix / 2)),
            registrations_per_second=max(0.0, config.registrations_per_hour) / 3600,
            registration_burst=max(1.0, config.registration_burst),
            login_failure_burst=max(1.0, config.login_failure_burst),
            login_failure_interval=config.login_failure_interval,
            table_size=config.prefix_table_size,
        )

    def prefix(self, address: str) -> str:
        return prefix_of(address, self.ipv4_bits, self.ipv6_bits)


class ConnectionCounts:
    """Open connections, and those not logged in yet, per prefix and in all.

    Not thread-safe: the server guards it with its own lock (`Server._lock`). A prefix
    is forgotten when its last connection closes, so memory follows open connections.
    """

    def __init__(self, limits: PrefixLimits) -> None:
        self._limits = limits
        self._open: dict[str, int] = {}
        self._prelogin: dict[str, int] = {}
        self.total = 0
        self.prelogin = 0

    def refusal(self, prefix: str) -> str | None:
        """Why one more connection from `prefix` must be refused, or None if it may come."""
        limits = self._limits
        if self.total >= limits.max_sessions:
            return "server full"
        if self._open.get(prefix, 0) >= limits.per_prefix:
            return "too many connections from its network"
        if self._prelogin.get(prefix, 0) >= limits.prelogin_per_prefix:
            return "too many connections from its network not logged in"
        if self.prelogin >= limits.prelogin:
            return "too many connections not logged in"
        return None

    def opened(self, prefix: str) -> None:
        """A connection from `prefix` was accepted; it counts as not logged in."""
        self._open[prefix] = self._open.get(prefix, 0) + 1
        self._prelogin[prefix] = self._prelogin.get(prefix, 0) + 1
        self.total += 1
        self.prelogin += 1

    def logged_in(self, prefix: str) -> None:
        """A connection from `prefix` logged in: it leaves the not-logged-in budget."""
        self._drop(self._prelogin, prefix)
        self.prelogin -= 1

    def closed(self, prefix: str, *, logged_in: bool) -> None:
        """A connection from `prefix` ended (`logged_in` says whether `logged_in` was called)."""
        self._drop(self._open, prefix)
        self.total -= 1
        if not logged_in:
            self._drop(self._prelogin, prefix)
            self.prelogin -= 1

    def open_from(self, prefix: str) -> int:
        return self._open.get(prefix, 0)

    @staticmethod
    def _drop(counts: dict[str, int], prefix: str) -> None:
        left = counts[prefix] - 1
        if left:
            counts[prefix] = left
        else:
            del counts[prefix]


class PrefixGuards:
    """The token buckets every session of a prefix shares. Thread-safe; each kind keeps
    at most `table_size` prefixes (the least recently used is forgotten)."""

    def __init__(self, limits: PrefixLimits) -> None:
        size = limits.table_size
        self.limits = limits
        self._accepts = KeyedBuckets(limits.accept_rate, limits.accept_burst, size=size)
        self._says = (
            None if limits.say_rate is None else KeyedBuckets(limits.say_rate, limits.say_burst, size=size)
        )
        self._registrations = (
            None
            if limits.registrations_per_second <= 0
            else KeyedBuckets(limits.registrations_per_second, limits.registration_burst, size=size)
        )
        self._failures = KeyedBuckets(
            1 / limits.login_failure_interval, limits.login_failure_burst, size=size
        )

    def accept(self, prefix: str) -> bool:
        """Take a token for a new connection from `prefix` (the listener thread)."""
        return self._accepts.allow(prefix)

    def say(self, prefix: str) -> bool:
        """Take a token for a room line from `prefix` (any session's reader thread)."""
        return self._says is None or self._says.allow(prefix)

    @property
    def registrations_closed(self) -> bool:
        """The operator allows no new registrations at all."""
        return self._registrations is None

    def register(self, prefix: str) -> bool:
        """Take a token for registering a new nick from `prefix`; False if refused."""
        return self._registrations is not None and self._registrations.allow(prefix)

    def login_failed(self, prefix: str, nick: str) -> None:
        """Count a failed login for `nick` from `prefix` against their budget of failures."""
        self._failures.allow(_failure_key(prefix, nick))

    def login_backoff(self, prefix: str, nick: str) -> float:
        """Seconds before `prefix` may claim `nick` again without a proof (0: now): once
        its failures for that nick have used the budget, one more try each
        `login_failure_interval`. Per nick, so that someone inside a network who keeps
        failing blocks neither its other users nor anyone from other networks."""
        return self._failures.wait(_failure_key(prefix, nick))


def _given(value: float | None, default: float) -> float:
    """A setting, or its worked-out default when not set (None; 0 is a setting)."""
    return default if value is None else value


def _failure_key(prefix: str, nick: str) -> str:
    return f"{prefix} {fold_nick(nick)}"


def shown_address(address: str) -> str:
    """`address` as a firewall sees it: an IPv4-mapped IPv6 address (a dual-stack
    listener's view of an IPv4 client) as plain IPv4, so that a ban acts on it."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped) if mapped is not None else address
