"""Server settings with their defaults and the reasons for them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerConfig"]


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything a `Server` can be told. All durations in seconds."""

    host: str = "127.0.0.1"
    port: int = 7443
    #: TLS handshake plus hello must finish within this, in the session's own thread
    #: (ssh-chat allows 20 s; a person's client needs well under one).
    handshake_timeout: float = 10.0
    #: Bytes queued for one client before it counts as not reading and is dropped.
    #: ngIRCd uses 32 KiB, InspIRCd 1 MiB; a paste burst to a busy room fits in 1 MiB.
    send_queue_bytes: int = 1024 * 1024
    #: After we decide to close, how long the peer gets to read our last frame and
    #: hang up before we cut the connection.
    linger: float = 2.0
    #: Listen backlog: a burst of new clients waits in the kernel. Too small a backlog
    #: drops SYNs during a connect storm, and each dropped SYN costs the client a 1 s
    #: retransmission (measured: 300 connects took 2.0 s with 128, see the slowloris test).
    backlog: int = 1024
    #: What the welcome frame calls this server.
    server_name: str = "securechat"
    #: Where the SQLite database lives; None keeps everything in memory (lost at exit).
    data_dir: Path | None = None
    #: Key-bundle fetches per second, and the burst, per requester identity (all its
    #: sessions together). Identities are free, so this alone cannot protect an owner's
    #: one-time prekeys: see `opk_rate_per_owner` below.
    fetch_rate: float = 1.0
    fetch_burst: float = 20.0
    #: Room messages, whispers and other requests per second per session, and the burst:
    #: a pasted 20-line snippet goes through at once; a flood is slowed to the rate
    #: (ssh-chat allows 3 lines per 3 s, InspIRCd 1/s; we are more generous for pastes).
    #: 0 turns the limit off (the benchmark does so, and says so).
    message_rate: float = 5.0
    message_burst: float = 20.0
    #: Frames refused for rate in a row before the session is dropped as abusive.
    max_strikes: int = 50
    #: Open connections in all, and from one address prefix (an IPv4 /24 or IPv6 /64:
    #: see `ipv4_prefix`; the name predates prefixes, `--max-per-ip` sets it). A class
    #: behind one NAT shares an address, so the cap is well above ngIRCd's 5 or
    #: InspIRCd's 3. Several per-prefix limits below default to shares of it.
    max_sessions: int = 10_000
    max_per_ip: int = 64
    #: A session silent this long gets a ping; silent `ping_timeout` longer, it is dropped
    #: (ngIRCd: ping after 120 s, drop 20 s later).
    ping_interval: float = 120.0
    ping_timeout: float = 30.0
    #: Room lines a newcomer is shown on joining (InspIRCd's chanhistory: 50). 0: none.
    history_lines: int = 50
    #: Queued whispers nobody collected are deleted after this long (30 days) of service:
    #: time the server was running, measured by a monotonic clock and kept in the
    #: database, so a jump of the wall clock cannot expire (or keep) whispers wrongly.
    queue_ttl: float = 30 * 86_400.0
    #: How often expired whispers are deleted (and the service clock written down).
    expire_interval: float = 3600.0
    #: A fault that repeats (disk full, out of file descriptors) is logged once, then at
    #: most once per this many seconds with a count, then once when it clears.
    fault_log_interval: float = 10.0
    #: When accept() fails for lack of file descriptors (EMFILE/ENFILE), the listening
    #: socket is left alone this long, doubling per failure up to the maximum; polling
    #: it meanwhile would spin, since the waiting connection stays ready.
    accept_pause: float = 0.05
    accept_pause_max: float = 1.0
    #: How often the server checks that its data directory and database are still the
    #: ones it opened (not deleted or replaced underneath it).
    datadir_check_interval: float = 2.0
    #: Whether a data directory holding no securechat data (missing, or empty: a volume
    #: that is not mounted) may be initialised as a new server. The library allows it;
    #: `securechat server` only with --init, so a lost directory is never started empty.
    init_data_dir: bool = True

    # -- Limits per address prefix (addresses.py; docs/operations.md, "Limits") ---------
    #: Connections, accepts, room lines, registrations and failed logins are counted by
    #: network, not by exact address: one attacker easily has a run of IPv4 addresses and
    #: a whole IPv6 /64. Prefix lengths in bits; 32 and 128 count exact addresses.
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    #: Connections not logged in yet (TLS handshake, hello, identity proof), per prefix
    #: (None: a quarter of `max_per_ip`, 16) and in all: a flood of idle TLS connections
    #: is refused at once instead of crowding out people logging in.
    max_prelogin_per_prefix: int | None = None
    max_prelogin: int = 512
    #: New connections accepted per second per prefix, and the burst (None: half of
    #: `max_per_ip` per second after a burst of `max_per_ip`). Beyond, closed at once,
    #: before any TLS work.
    accept_rate: float | None = None
    accept_burst: float | None = None
    #: Room lines per second that all sessions of one prefix share, and the burst (None:
    #: half a line per second per connection `max_per_ip` allows, 32/s after a burst of
    #: 32; off when `message_rate` is 0; an explicit 0 turns it off).
    prefix_say_rate: float | None = None
    prefix_say_burst: float | None = None
    #: New nicks registered per hour per prefix, after a burst (a class registering on
    #: its first day). 0: no new registrations at all (existing nicks still log in).
    registrations_per_hour: float = 20.0
    registration_burst: float = 30.0
    #: Failed logins (bad proof, a nick registered to another key) a prefix may make for
    #: one nick; then its claims of that nick without a proof are refused (`busy`) except
    #: one more try per interval. A valid proof is never refused.
    login_failure_burst: float = 10.0
    login_failure_interval: float = 30.0
    #: Prefixes each per-prefix table remembers (least recently used forgotten first).
    prefix_table_size: int = 4096
    #: Once the first byte of a line arrived, the rest must follow within this: a peer
    #: trickling a line byte by byte would otherwise hold its buffers for ever.
    line_timeout: float = 30.0
    #: After this many sessions ended since the peak (and at least half of them), the
    #: server hands freed heap memory back to the system (glibc `malloc_trim`). 0: never.
    heap_trim_after: int = 256

    # -- Quotas on what a nick can make the server keep (store.py, relay.py) -----------
    #: A nick costs nothing, so each quota holds however many nicks an abuser makes.
    #: Offline queue: whispers waiting for one recipient, and their bytes (header plus
    #: ciphertext); a month away in a busy class is a few hundred. Beyond, the sender gets
    #: a non-fatal `quota-exceeded` naming the whisper, and nothing is stored.
    queue_max_per_recipient: int = 1000
    queue_max_bytes_per_recipient: int = 8 * 1024 * 1024
    #: Whispers one sender has waiting, across all its recipients, and their bytes.
    queue_max_per_sender: int = 1000
    queue_max_bytes_per_sender: int = 8 * 1024 * 1024
    #: Bytes waiting in the whole queue: bounds the disk a crowd of fresh nicks can fill.
    queue_max_bytes: int = 1024 * 1024 * 1024
    #: Queued whispers sent to a recipient at once at login; more follow as its acks come
    #: back, so memory and its outbox hold about a page whatever the queue holds (32
    #: deliveries of the largest size, ~12 KiB each, fill well under `send_queue_bytes`).
    #: Also the number of failures told at one login.
    queue_page: int = 32
    #: One-time prekeys the server holds per user (clients keep 100 published). A
    #: publish beyond it is trimmed: the identity and signed prekey are still taken.
    opk_max_held: int = 200
    #: A publish costs one extra request token per this many one-time prekeys in it
    #: (each is a signature check, ~0.2 ms): 200 cost 10, and must fit in
    #: `message_burst` together with the frame's own token.
    opks_per_request_token: int = 20
    #: One-time prekeys handed out per second for one owner, and the burst (a class
    #: contacting its teacher on day one); beyond, and once they run out, a fetched
    #: bundle carries none and the setup falls back to the signed prekey.
    opk_rate_per_owner: float = 1 / 60
    opk_burst_per_owner: float = 20.0
    #: The same in all, across owners: bounds how fast fresh nicks drain everyone.
    opk_rate_total: float = 20.0
    opk_burst_total: float = 200.0
    #: Requester identities and owners the fetch limits remember (each table; a bucket
    #: that has refilled is forgotten first, else the least recently used). A forgotten
    #: owner starts again with a full burst, but forgetting one takes this many other
    #: owners' prekeys, which the total rate paces.
    fetch_limits_tracked: int = 10_000
    #: A registered nick nobody logged in to for this long (180 days) of service is
    #: released with its keys, queue and failures; each login starts the period again.
    #: Service time, like `queue_ttl`: time the server was stopped does not count.
    nick_ttl: float = 180 * 86_400.0

    # -- Rooms (rooms.py; docs/operations.md, "Limits") ---------------------------------
    #: Rooms every session is put in after its welcome (version-1 clients: "#lobby" only,
    #: and only if it is here). Never removed when empty, like registered rooms.
    autojoin: tuple[str, ...] = ("#lobby",)
    #: Rooms one session may be in at once. IRC servers cap this too (ngIRCd's MaxJoins
    #: defaults to 10, InspIRCd's maxchans to 20): each room costs its members a share of
    #: every line said there. Beyond: `quota-exceeded` on `join`.
    max_rooms_per_user: int = 20
    #: Rooms existing at once, registered ones included: bounds the memory and the `list`
    #: answer a crowd of fresh nicks can make the server keep.
    max_rooms: int = 1000
    #: Bans one room holds: each one is checked at every join.
    max_bans_per_room: int = 200
