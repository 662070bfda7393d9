"""Server settings with their defaults and the reasons for them.

Each `ServerConfig` field is declared with `setting(default, help, ...)`: its help text
lives at the field, and the command line of `securechat server` (one flag per field) and
the `[server]` table of config.toml (one key per field) are generated from these fields
(`settings()`), as is the settings table of docs/operations.md. A new field therefore
gets its flag, its file key and its line in the docs without being listed anywhere else.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..ports import DEFAULT_PORT
from ..protocol.events import check_room, fold_room
from ..protocol.limits import MAX_BANS_LISTED

__all__ = ["FieldSetting", "ServerConfig", "Setting", "check_setting", "settings"]

_T = TypeVar("_T")

#: Caps that must be at least 1 (a room nobody may enter or create is no room).
_AT_LEAST_ONE = frozenset(
    {"max_rooms_per_user", "max_rooms", "max_bans_per_room", "max_registered_rooms_per_owner"}
)

#: The key of a field's `Setting` in its `dataclasses.Field.metadata`.
_METADATA_KEY = "securechat.setting"


@dataclass(frozen=True, kw_only=True)
class Setting:
    """How a person sets one `ServerConfig` field."""

    #: What it does and why the default is what it is: `securechat server --help` and
    #: docs/operations.md show it.
    help: str
    #: The command-line flag; "" for "--" and the field's name with dashes.
    flag: str = ""
    #: Why config.toml does not accept it; "" when it does (the key is the field's name).
    not_in_file: str = ""
    #: The command line's default when it is not the field's own (`dataclasses.MISSING`: the same).
    command_line_default: Any = dataclasses.MISSING
    #: How the default is shown where the value itself would mislead ("" shows the value):
    #: a None that the server derives from another setting, a path the command picks.
    shown_default: str = ""


def setting(
    default: _T,
    help: str,
    *,
    flag: str = "",
    not_in_file: str = "",
    command_line_default: Any = dataclasses.MISSING,
    shown_default: str = "",
) -> _T:
    """A `ServerConfig` field with `default`, carrying its `Setting` (see there)."""
    spec = Setting(
        help=help,
        flag=flag,
        not_in_file=not_in_file,
        command_line_default=command_line_default,
        shown_default=shown_default,
    )
    made: _T = field(default=default, metadata={_METADATA_KEY: spec})
    return made


def check_setting(name: str, value: object) -> None:
    """Raise ValueError, naming the setting, if `value` cannot be `name`'s value.

    Types are checked where the value is read (command line, config file); this checks
    what a type cannot say. `ServerConfig` runs it on every field.
    """
    if name == "autojoin":
        assert isinstance(value, tuple)
        seen: set[str] = set()
        for room in value:
            try:
                check_room(room)
            except ValueError:
                raise ValueError(
                    f"autojoin: {room!r} is not a room name ('#' and 1-32 of A-Z a-z 0-9 _ - .)"
                ) from None
            if fold_room(room) in seen:
                raise ValueError(f"autojoin: {room!r} is listed twice")
            seen.add(fold_room(room))
    elif name in _AT_LEAST_ONE:
        assert isinstance(value, int)
        if value < 1:
            raise ValueError(f"{name}: {value} is not allowed, it must be at least 1")
        # One ban_list frame answers `bans`; a longer list could not be encoded, and the
        # session asking would end.
        if name == "max_bans_per_room" and value > MAX_BANS_LISTED:
            raise ValueError(
                f"max_bans_per_room: {value} is not allowed, it must be at most {MAX_BANS_LISTED} "
                "(what one ban list answer holds)"
            )


def _check_together(config: ServerConfig) -> None:
    """Raise ValueError for settings that are each valid but not together."""
    # Autojoin rooms exist from the start and are never removed: a cap below their count
    # could never be met.
    if config.max_rooms < len(config.autojoin):
        raise ValueError(
            f"max_rooms: {config.max_rooms} is fewer than the {len(config.autojoin)} autojoin rooms"
        )
    # Nodes that kept their own SQLite would each have their own users and whispers.
    if config.cluster and not config.store:
        raise ValueError(
            "cluster: the nodes of a cluster must share one store: give --store postgresql://..."
        )
    if config.store and not (
        config.store.startswith(("postgresql://", "postgres://")) or "=" in config.store
    ):
        raise ValueError(
            "store: a PostgreSQL URL (postgresql://...) or connection string (host=... dbname=...)"
        )
    if config.cluster and not config.cluster.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("cluster: a Redis URL (redis://, rediss:// or unix://)")
    if config.node_lease <= 0:
        raise ValueError("node_lease: must be more than 0 seconds")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything a `Server` can be told. All durations in seconds.

    Built once, before the server starts, and never changed (frozen): every thread may
    read it without a lock.
    """

    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0 or :: for every interface)")
    port: int = setting(DEFAULT_PORT, "TCP port to listen on (0: any free port)")
    handshake_timeout: float = setting(
        10.0,
        "seconds the TLS handshake plus the hello may take, in the session's own thread "
        "(ssh-chat allows 20 s; a person's client needs well under one)",
    )
    send_queue_bytes: int = setting(
        1024 * 1024,
        "bytes queued for one client before it counts as not reading and is dropped "
        "(ngIRCd uses 32 KiB, InspIRCd 1 MiB; a paste burst to a busy room fits in 1 MiB)",
    )
    linger: float = setting(
        2.0,
        "seconds a peer gets, once the server decided to close, to read the last frame "
        "and hang up before the connection is cut",
    )
    backlog: int = setting(
        1024,
        "listen backlog: a burst of new clients waits in the kernel (capped by somaxconn). "
        "Too small a backlog drops SYNs in a connect storm, each costing its client a 1 s "
        "retransmission (300 connects took 2.0 s with 128)",
    )
    server_name: str = setting("securechat", "what the welcome frame calls this server")
    # RUF009 takes setting() for a call whose result could be shared; it returns the Field.
    data_dir: Path | None = setting(  # noqa: RUF009
        None,
        "where the SQLite database lives. The library keeps everything in memory when "
        "there is none; the command always uses a directory",
        shown_default="$XDG_DATA_HOME/securechat/server",
    )
    store: str = setting(
        "",
        "a PostgreSQL database to keep everything in instead of SQLite in --data-dir "
        "(postgresql://user:password@host/db?sslmode=require, or libpq's host=... dbname=...): what several "
        "server processes share as one server (with --cluster)",
    )
    cluster: str = setting(
        "",
        "the Redis (or Valkey) that makes several server processes one server: room "
        "fan-out, who serves which nick, node liveness (redis://, rediss:// for TLS; "
        "redis://:password@host for AUTH). Needs --store. Empty: one process",
    )
    reuse_port: bool = setting(
        False,
        "listen with SO_REUSEPORT, so that several server processes (a cluster's nodes on "
        "one host) share --port and the kernel spreads new connections over them; set "
        "net.ipv4.tcp_migrate_req=1 so that a node that stops hands its waiting "
        "connections to the others",
    )
    node_lease: float = setting(
        6.0,
        "seconds a cluster node's lease lasts: a node that cannot refresh it for 60% of "
        "this closes its sessions (retryable) before another may take its nicks; a node "
        "killed outright is noticed as gone within about this long",
    )
    fetch_rate: float = setting(
        1.0,
        "key-bundle fetches per second per requester identity, all its sessions together. "
        "Identities are free, so this alone cannot protect an owner's one-time prekeys "
        "(see --opk-rate-per-owner)",
    )
    fetch_burst: float = setting(20.0, "key-bundle fetches an identity may make at once")
    message_rate: float = setting(
        5.0,
        "room lines, whispers and other requests per second per session, sustained: a "
        "flood is slowed to this (ssh-chat allows 3 lines per 3 s, InspIRCd 1/s; more "
        "generous here for pastes). 0 turns the limit off (the benchmark does, and says so)",
    )
    message_burst: float = setting(
        20.0,
        "requests a session may send at once before the rate applies: a pasted 20-line "
        "snippet goes through at once",
    )
    max_strikes: int = setting(
        50, "requests refused for rate in a row before the session is dropped as abusive"
    )
    max_sessions: int = setting(10_000, "open connections in all")
    max_devices: int = setting(
        5,
        "sessions of one identity online at once, one per device (keystore) it logs in "
        "from; a login of the same device replaces that device's session instead",
    )
    max_per_ip: int = setting(
        64,
        "open connections from one network (an IPv4 /24 or IPv6 /64, see --ipv4-prefix; "
        "the name predates prefixes). A class behind one NAT shares an address, so the cap "
        "is well above ngIRCd's 5 or InspIRCd's 3. Several per-network limits default to "
        "shares of it",
    )
    ping_interval: float = setting(120.0, "seconds of silence before a session gets a ping (ngIRCd: 120 s)")
    ping_timeout: float = setting(
        30.0, "seconds a pinged session may stay silent before it is dropped (ngIRCd: 20 s)"
    )
    history_lines: int = setting(
        50, "room lines a newcomer is shown on joining (InspIRCd's chanhistory: 50); 0: none"
    )
    queue_ttl: float = setting(
        30 * 86_400.0,
        "seconds of service (30 days) after which a queued whisper nobody collected is "
        "deleted. Service time: the time the server ran, measured by a monotonic clock and "
        "kept in the database, so a jump of the wall clock cannot expire (or keep) whispers",
    )
    expire_interval: float = setting(
        3600.0, "how often expired whispers are deleted (and the service clock written down)"
    )
    fault_log_interval: float = setting(
        10.0,
        "a fault that repeats (disk full, out of file descriptors) is logged once, then at "
        "most once per this many seconds with a count, then once when it clears",
    )
    accept_pause: float = setting(
        0.05,
        "seconds the listening socket is left alone when accept() fails for lack of file "
        "descriptors, doubling per failure (polling it meanwhile would spin: the waiting "
        "connection stays ready)",
    )
    accept_pause_max: float = setting(1.0, "the longest such pause")
    datadir_check_interval: float = setting(
        2.0,
        "how often the server checks that its data directory and database are still the "
        "ones it opened (not deleted or replaced underneath it)",
    )
    init_data_dir: bool = setting(
        True,
        "create the data directory if it does not exist: needed once, for a new server. "
        "Without it a missing (or empty, unmounted) directory is refused rather than "
        "started empty. The library allows it by default; the command only with this flag",
        flag="--init",
        not_in_file="a file read at every start would start a lost directory empty every "
        "time, which is what --init exists to prevent",
        command_line_default=False,
    )

    # -- Limits per address prefix (addresses.py; docs/operations.md, "Limits") ---------
    ipv4_prefix: int = setting(
        24,
        "prefix length in bits by which IPv4 connections, accepts, room lines, "
        "registrations and failed logins are counted: one attacker easily has a run of "
        "addresses. 32 counts exact addresses",
    )
    ipv6_prefix: int = setting(
        64, "the same for IPv6: one attacker easily has a whole /64. 128 counts exact addresses"
    )
    max_prelogin_per_prefix: int | None = setting(
        None,
        "connections not logged in yet (TLS handshake, hello, identity proof) per network: "
        "a flood of idle TLS connections is refused at once instead of crowding out people "
        "logging in",
        shown_default="a quarter of --max-per-ip, 16",
    )
    max_prelogin: int = setting(512, "connections not logged in yet, in all")
    accept_rate: float | None = setting(
        None,
        "new connections accepted per second per network; beyond, closed at once, before any TLS work",
        shown_default="half of --max-per-ip, 32",
    )
    accept_burst: float | None = setting(
        None,
        "new connections a network may open at once before --accept-rate applies",
        shown_default="--max-per-ip, 64",
    )
    prefix_say_rate: float | None = setting(
        None,
        "room lines per second that all sessions of one network share (off when "
        "--message-rate is 0; an explicit 0 turns it off)",
        shown_default="half a line per second per connection --max-per-ip allows, 32",
    )
    prefix_say_burst: float | None = setting(
        None,
        "room lines a network may say at once before --prefix-say-rate applies",
        shown_default="half of --max-per-ip, 32",
    )
    registrations_per_hour: float = setting(
        20.0,
        "new nicks registered per hour per network, after the burst. 0: no new "
        "registrations at all (existing nicks still log in)",
    )
    registration_burst: float = setting(
        30.0, "new nicks a network may register at once (a class on its first day)"
    )
    login_failure_burst: float = setting(
        10.0,
        "failed logins (bad proof, a nick registered to another key) a network may make "
        "for one nick; then its claims of that nick without a proof are refused (busy). "
        "A valid proof is never refused",
    )
    login_failure_interval: float = setting(
        30.0, "seconds after which a network that used up its failed logins gets one more try"
    )
    prefix_table_size: int = setting(
        4096, "networks each per-network table remembers (least recently used forgotten first)"
    )
    line_timeout: float = setting(
        30.0,
        "seconds the rest of a line may take once its first byte arrived: a peer trickling "
        "a line byte by byte would otherwise hold its buffers for ever",
    )
    heap_trim_after: int = setting(
        256,
        "sessions ended since the peak (and at least half of them) after which freed heap "
        "memory is handed back to the system (glibc malloc_trim). 0: never",
    )

    # -- Quotas on what a nick can make the server keep (store.py, relay.py) -----------
    # A nick costs nothing, so each quota holds however many nicks an abuser makes.
    queue_max_per_recipient: int = setting(
        1000,
        "whispers waiting for one recipient (a month away in a busy class is a few "
        "hundred). Beyond, the sender gets a non-fatal quota-exceeded and nothing is stored",
    )
    queue_max_bytes_per_recipient: int = setting(
        8 * 1024 * 1024, "bytes (header plus ciphertext) waiting for one recipient"
    )
    queue_max_per_sender: int = setting(1000, "whispers one sender has waiting, across all its recipients")
    queue_max_bytes_per_sender: int = setting(
        8 * 1024 * 1024, "bytes one sender has waiting, across all its recipients"
    )
    queue_max_bytes: int = setting(
        1024 * 1024 * 1024,
        "bytes waiting in the whole queue: bounds the disk a crowd of fresh nicks can fill",
    )
    queue_page: int = setting(
        32,
        "queued whispers sent to a recipient at once at login, more as its acks come back, "
        "so memory holds about a page whatever the queue holds (32 of the largest, ~12 KiB "
        "each, fit well under --send-queue-bytes). Also the failures told at one login",
    )
    opk_max_held: int = setting(
        200,
        "one-time prekeys the server holds per user (clients keep 100 published); a "
        "publish beyond it is trimmed",
    )
    kopk_max_held: int = setting(
        30,
        "one-time post-quantum (ML-KEM-768) prekeys the server holds per user (clients keep "
        "15 published; 1.2 KB each); a publish beyond it is trimmed",
    )
    opks_per_request_token: int = setting(
        20,
        "one-time prekeys per extra request token a publish costs (each is a signature "
        "check, ~0.2 ms): 200 cost 10, and must fit in --message-burst with the frame's own",
    )
    opk_rate_per_owner: float = setting(
        1 / 60,
        "one-time prekeys handed out per second for one owner, after the burst; beyond, "
        "and once they run out, a bundle carries none and the setup uses the signed prekey",
    )
    opk_burst_per_owner: float = setting(
        20.0, "one-time prekeys handed out at once for one owner (a class contacting its teacher)"
    )
    opk_rate_total: float = setting(
        20.0,
        "one-time prekeys handed out per second across all owners: bounds how fast fresh "
        "nicks drain everyone",
    )
    opk_burst_total: float = setting(200.0, "one-time prekeys handed out at once across all owners")
    fetch_limits_tracked: int = setting(
        10_000,
        "requester identities and owners the fetch limits remember (each table; refilled "
        "buckets forgotten first, then the least recently used). Forgetting an owner takes "
        "this many other owners' prekeys, which --opk-rate-total paces",
    )
    nick_ttl: float = setting(
        180 * 86_400.0,
        "seconds of service (180 days) without a login after which a registered nick is "
        "released with its keys, queue and failures; each login starts it again. Service "
        "time, like --queue-ttl: time the server was stopped does not count",
    )

    # -- Rooms (rooms.py; docs/operations.md, "Limits") ---------------------------------
    autojoin: tuple[str, ...] = setting(
        ("#lobby",),
        "rooms every session is put in after logging in, comma-separated ('' for none). "
        "Never removed when empty. Version-1 clients get #lobby only, and only if it is here",
    )
    max_rooms_per_user: int = setting(
        20,
        "rooms one session may be in at once: each room costs its members a share of every "
        "line said there. IRC servers cap it too (ngIRCd's MaxJoins defaults to 10, "
        "InspIRCd's maxchans to 20); beyond, join is refused with quota-exceeded",
    )
    max_rooms: int = setting(
        1000,
        "rooms existing at once, registered ones included: bounds the memory and the list "
        "answer a crowd of fresh nicks can make the server keep",
    )
    max_bans_per_room: int = setting(
        200,
        "bans one room holds: each is checked at every join, and an operator with a long "
        "list should register users instead (a ban by key holds under any nick)",
    )
    max_registered_rooms_per_owner: int = setting(
        5,
        "registered rooms one identity key may own: registered rooms outlive their members "
        "and count towards --max-rooms, so without a cap one identity could join, register "
        "and part until no room could be created. Each registration also costs one of its "
        "network's registrations (--registrations-per-hour), and a room whose owner key has "
        "not logged in for --nick-ttl of service is released",
    )

    def __post_init__(self) -> None:
        for name in _NAMES:
            check_setting(name, getattr(self, name))
        _check_together(self)


@dataclass(frozen=True)
class FieldSetting:
    """One `ServerConfig` field as a setting: what the command line and the file need."""

    name: str
    #: str, int, float, bool, Path or tuple (a tuple of strings).
    kind: type
    #: Whether None is a value (the server then derives it: see `Setting.shown_default`).
    optional: bool
    default: Any
    spec: Setting

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")

    @property
    def command_line_default(self) -> Any:
        given = self.spec.command_line_default
        return self.default if given is dataclasses.MISSING else given

    @property
    def in_file(self) -> bool:
        return not self.spec.not_in_file


_KINDS = (str, int, float, bool, Path)


def _kind(hint: Any) -> tuple[type, bool]:
    """(base type, whether None is allowed) of a field's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args == (str, Ellipsis):
        return tuple, False
    if type(None) in args and len(args) == 2:
        base = next(a for a in args if a is not type(None))
        return _kind(base)[0], True
    if hint in _KINDS:
        kind: type = hint
        return kind, False
    raise TypeError(f"ServerConfig: no command line or file form for the type {hint!r}")


def settings() -> tuple[FieldSetting, ...]:
    """Every `ServerConfig` field with its type and `Setting`, in declaration order.

    Raises TypeError if a field lacks a `Setting` (declare it with `setting(...)`) or has a
    type the command line and the file cannot express.
    """
    hints = typing.get_type_hints(ServerConfig)
    result = []
    for f in dataclasses.fields(ServerConfig):
        spec = f.metadata.get(_METADATA_KEY)
        if not isinstance(spec, Setting):
            raise TypeError(f"ServerConfig.{f.name} is not declared with setting(...)")
        kind, optional = _kind(hints[f.name])
        result.append(FieldSetting(f.name, kind, optional, f.default, spec))
    return tuple(result)


_NAMES = tuple(f.name for f in dataclasses.fields(ServerConfig))
