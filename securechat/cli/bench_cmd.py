"""`securechat bench`: load a server and report deliveries/s, latency, CPU and memory."""

from __future__ import annotations

import argparse
import dataclasses
import json
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..bench.scenarios import PATTERNS
from .common import UsageError, check_port, raise_open_files_limit

__all__ = ["add_parsers"]

_CLIENTS = 200  # --clients for every scenario but rooms
_ROOMS_CLIENTS = 2000  # rooms: 2,000 clients in 100 rooms, 20 a room (issue 13)
_LOGINS_CLIENTS = 5000  # logins: issue 14's 5,000 one after another
_RELAY_CLIENTS = ("opaque", "real")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser(
        "bench",
        help="benchmark a server (one it starts itself, or --port)",
        description="Scenarios: burst (senders x messages as fast as possible), steady (every client "
        "at --rate for --seconds), whisper (plain vs encrypted round trips, and the crypto's cost), "
        "connect (a storm of new TLS logins), idle (memory per session), rooms (--clients spread "
        "over --rooms rooms, every client at --rate for --seconds; the cost of joining too), relay "
        "(--whispers opaque whispers stored and relayed between --pairs pairs of identity users; "
        "--clients real: real clients encrypting end to end), logins (--clients log in one after "
        "another, all staying, time per login per tenth of the room's growth, and memory per session), "
        "setup (what post-quantum session setup costs: bundle and publish sizes, --rounds setups on "
        "each side, the server's CPU per publish, the store's bytes per user; in this process, no "
        "server). Without --port it starts its own server with the rate limit off (and says so).",
    )
    bench.add_argument(
        "scenario",
        choices=["burst", "steady", "whisper", "connect", "idle", "rooms", "relay", "logins", "setup"],
    )
    bench.add_argument(
        "--clients",
        type=_clients_arg,
        default=None,
        help=f"connected clients (default: {_CLIENTS}; rooms: {_ROOMS_CLIENTS:,}; logins: "
        f"{_LOGINS_CLIENTS:,}); relay: opaque (pre-made whispers, the server's cost) or real "
        "(real clients, keys in memory, end-to-end encryption)",
    )
    bench.add_argument(
        "--procs",
        type=int,
        default=1,
        help="burst: generator processes, the clients split between them, all starting at one "
        "moment (more than one shows whether the generator was the limit) (default: %(default)s)",
    )
    bench.add_argument(
        "--senders", type=int, default=20, help="burst: how many of them send (default: %(default)s)"
    )
    bench.add_argument(
        "--messages", type=int, default=200, help="burst: lines per sender (default: %(default)s)"
    )
    bench.add_argument(
        "--rate", type=float, default=0.5, help="steady/rooms: lines/s per client (default: %(default)s)"
    )
    bench.add_argument(
        "--seconds", type=float, default=10.0, help="steady/rooms: duration (default: %(default)s)"
    )
    bench.add_argument(
        "--pattern",
        choices=PATTERNS,
        default="spread",
        help="steady: when in each period the clients send: at random moments (spread), at "
        "evenly spaced ones (even), or all at the same moment (simultaneous) (default: %(default)s)",
    )
    bench.add_argument(
        "--one-line-per-write",
        action="store_true",
        help="steady/burst: send every line in a write (a TLS record) of its own, as a generator "
        "writing each line when it has it would, instead of a client's queued lines together",
    )
    bench.add_argument("--rooms", type=int, default=100, help="rooms: rooms in all (default: %(default)s)")
    bench.add_argument(
        "--rooms-per-client",
        type=int,
        default=1,
        help="rooms: rooms each client joins; it says its lines in them in turn (default: %(default)s)",
    )
    bench.add_argument(
        "--rounds", type=int, default=300, help="whisper: round trips of each kind (default: %(default)s)"
    )
    bench.add_argument(
        "--keys",
        choices=["memory", "disk"],
        default="memory",
        help="whisper: keep the two users' keys in memory, or in keystores on disk as the "
        "real client does (default: %(default)s)",
    )
    bench.add_argument(
        "--pairs", type=int, default=50, help="relay: sender -> recipient pairs (default: %(default)s)"
    )
    bench.add_argument(
        "--whispers", type=int, default=20000, help="relay: whispers in all (default: %(default)s)"
    )
    bench.add_argument(
        "--sessions", type=int, default=1000, help="connect/idle: sessions (default: %(default)s)"
    )
    bench.add_argument(
        "--port", type=int, default=None, help="benchmark a running server on this port instead"
    )
    bench.add_argument(
        "--ports",
        type=_port_range,
        default=None,
        metavar="LO[-HI]",
        help="without --port: the server the bench starts listens on the first free port of "
        "this range (default: one the kernel picks)",
    )
    bench.add_argument("--host", default="127.0.0.1", help="with --port: its address (default: %(default)s)")
    bench.add_argument("--cafile", type=Path, default=None, help="with --port: the CA to trust")
    bench.add_argument(
        "--server-pid", type=int, default=None, help="with --port: its pid, for CPU and memory"
    )
    bench.add_argument(
        "--dialect",
        choices=["securechat", "irc", "plain"],
        default="securechat",
        help="with --port, burst/steady/connect/logins: what the server speaks (default: %(default)s)",
    )
    bench.add_argument(
        "--no-tls", action="store_true", help="with --port: connect without TLS (for a plaintext relay)"
    )
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )
    bench.set_defaults(run=run_bench)


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def _clients_arg(text: str) -> int | str:
    """A number of clients, or (relay) which clients: `opaque` or `real`."""
    if text in _RELAY_CLIENTS:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: want a number (or, for relay, {' or '.join(_RELAY_CLIENTS)})"
        ) from None


def _port_range(text: str) -> range:
    from ..bench.ports import parse_port_range

    try:
        return parse_port_range(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want a port or LO-HI within 1-65535") from None


def _report(args: argparse.Namespace, result: Any) -> dict[str, Any]:
    """Print a scenario's result (as JSON with --json); returns it as a dict."""
    data: dict[str, Any] = dataclasses.asdict(result)
    if args.json:
        print(json.dumps({"scenario": args.scenario, **data}))
        return data
    width = max(20, *map(len, data))
    for key, value in data.items():
        if isinstance(value, dict) and "p50" in value:  # a latency summary, in seconds
            value = ", ".join(
                f"{k} {v * 1000:.2f} ms" if k != "count" else f"{k} {v}" for k, v in value.items()
            )
        elif isinstance(value, dict):
            value = _pairs(value)
        elif isinstance(value, list):  # logins' deciles: a line each
            value = "".join(f"\n{'':>{width}}  {_pairs(item)}" for item in value)
        elif isinstance(value, float):
            value = f"{value:,.3f}"
        print(f"{key:>{width}}: {value}")
    return data


def run_bench(args: argparse.Namespace) -> int:
    from ..bench import relay as relay_scenario
    from ..bench import relay_real, scenarios, whisper
    from ..bench import rooms as rooms_scenario
    from ..bench.dialects import DIALECTS, LoginRefused
    from ..bench.progress import ProgressBar
    from ..bench.server import BenchServer, scenario_args
    from ..transport import client_context

    relay_clients = "opaque"
    if args.scenario == "relay":
        if args.clients not in (None, *_RELAY_CLIENTS):
            raise UsageError(f"relay: --clients is {' or '.join(_RELAY_CLIENTS)}")
        relay_clients = args.clients or "opaque"
        args.clients = 2 * args.pairs
    elif isinstance(args.clients, str):
        raise UsageError(f"--clients {args.clients} is for relay; {args.scenario} wants a number")
    if args.clients is None:
        args.clients = {"rooms": _ROOMS_CLIENTS, "logins": _LOGINS_CLIENTS}.get(args.scenario, _CLIENTS)
    for name in (
        "clients",
        "procs",
        "senders",
        "messages",
        "sessions",
        "rounds",
        "rooms",
        "rooms_per_client",
        "pairs",
        "whispers",
    ):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.scenario in ("steady", "rooms") and not (args.rate > 0 and args.seconds > 0):
        raise UsageError("--rate and --seconds must be positive")
    if args.scenario == "rooms":
        if args.rooms_per_client > args.rooms:
            raise UsageError("--rooms-per-client cannot exceed --rooms")
        if args.clients * args.rooms_per_client < 2 * args.rooms:
            raise UsageError(
                "every room needs two members to hear each other: "
                "--clients x --rooms-per-client must be at least 2 x --rooms"
            )
    if args.scenario == "burst" and args.senders > args.clients:
        raise UsageError("--senders cannot exceed --clients")
    if args.port is not None and args.ports is not None:
        raise UsageError("--ports is for the server the bench starts; with --port it starts none")
    if args.port is None and (args.dialect != "securechat" or args.no_tls):
        raise UsageError("--dialect and --no-tls need --port (the bench starts only securechat itself)")
    if args.procs > 1 and args.scenario != "burst":
        raise UsageError("--procs is for burst")
    if args.dialect != "securechat" and args.scenario not in ("burst", "steady", "connect", "logins"):
        raise UsageError(f"{args.scenario} measures securechat only")
    if args.scenario == "setup":
        from ..bench.setup_cost import setup_cost

        _report(args, setup_cost(args.rounds))
        return 0
    dialect = DIALECTS[args.dialect]()
    show = (
        ProgressBar(sys.stderr)
        if (args.progress or (args.progress is None and sys.stderr.isatty()))
        else None
    )
    raise_open_files_limit()  # one socket per simulated client
    with tempfile.TemporaryDirectory(prefix="securechat-bench-") as work:
        server = None
        if args.port is None:
            extra = scenario_args(
                args.scenario, rooms=args.rooms, rooms_per_client=args.rooms_per_client, pairs=args.pairs
            )
            try:
                server = BenchServer(Path(work), extra, args.ports)
            except OSError as exc:  # every port of --ports taken
                raise UsageError(str(exc)) from None
            host, port, cafile, pid = "127.0.0.1", server.port, server.cafile, server.pid
            print(f"started a server on 127.0.0.1:{port} (pid {pid}) with the rate limit off")
        else:
            check_port(args.port)
            host, port, cafile, pid = args.host, args.port, args.cafile, args.server_pid
        try:
            ctx = None if args.no_tls else client_context(cafile)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load CA file {cafile}: {exc}") from None
        try:
            result: Any
            if args.scenario == "burst":
                result = scenarios.burst(
                    host,
                    port,
                    ctx,
                    clients=args.clients,
                    senders=args.senders,
                    messages=args.messages,
                    dialect=dialect,
                    server_pid=pid,
                    one_line_per_write=args.one_line_per_write,
                    procs=args.procs,
                    progress=show,
                )
            elif args.scenario == "steady":
                result = scenarios.steady(
                    host,
                    port,
                    ctx,
                    clients=args.clients,
                    rate=args.rate,
                    seconds=args.seconds,
                    dialect=dialect,
                    server_pid=pid,
                    pattern=args.pattern,
                    one_line_per_write=args.one_line_per_write,
                    progress=show,
                )
            elif args.scenario == "whisper":
                if ctx is None:
                    raise UsageError("whisper needs TLS")
                result = whisper.whisper(
                    host,
                    port,
                    None if cafile is None else str(cafile),
                    rounds=args.rounds,
                    keys_on_disk=args.keys == "disk",
                )
            elif args.scenario == "rooms":
                result = rooms_scenario.many_rooms(
                    host,
                    port,
                    ctx,
                    clients=args.clients,
                    rooms=args.rooms,
                    rooms_per_client=args.rooms_per_client,
                    rate=args.rate,
                    seconds=args.seconds,
                    server_pid=pid,
                    progress=show,
                )
            elif args.scenario == "relay" and relay_clients == "real":
                if ctx is None:
                    raise UsageError("relay with real clients needs TLS")
                result = relay_real.relay_real(
                    host,
                    port,
                    ctx,
                    pairs=args.pairs,
                    whispers=args.whispers,
                    server_pid=pid,
                    progress=show,
                )
            elif args.scenario == "relay":
                result = relay_scenario.relay(
                    host,
                    port,
                    ctx,
                    pairs=args.pairs,
                    whispers=args.whispers,
                    server_pid=pid,
                    progress=show,
                )
            elif args.scenario == "logins":
                result = scenarios.logins(
                    host, port, ctx, clients=args.clients, dialect=dialect, server_pid=pid, progress=show
                )
            elif args.scenario == "connect":
                result = scenarios.connect_storm(
                    host, port, ctx, sessions=args.sessions, dialect=dialect, server_pid=pid
                )
            else:
                if pid is None:
                    raise UsageError("idle needs the server's pid (--server-pid) to read its memory")
                result = scenarios.idle(
                    host, port, ctx, sessions=args.sessions, server_pid=pid, progress=show
                )
        except scenarios.DescriptorLimit as exc:
            raise UsageError(str(exc)) from None
        except (LoginRefused, rooms_scenario.JoinRefused) as exc:
            # The server said no (a cap, an older server, a crash): a result, not a bug here.
            print(f"FAILED: {exc}")
            return 1
        finally:
            if show is not None:
                show.finish()
            if server is not None:
                server.stop()
    data = _report(args, result)
    if args.scenario == "relay" and (data.get("refused") or data["delivered"] < data["whispers"]):
        print(
            f"FAILED: {data.get('refused', 0)} whispers refused, "
            f"{data['delivered']} of {data['whispers']} delivered"
        )
        return 1
    lost = data.get("expected", 0) - data.get("deliveries", 0)
    if lost or data.get("out_of_order") or data.get("wrong_room") or data.get("duplicates"):
        wrong = (
            f", {data['wrong_room']} in a room the receiver is not in, {data['duplicates']} duplicated"
            if args.scenario == "rooms"
            else ""
        )
        print(f"FAILED: {lost} deliveries missing, {data.get('out_of_order')} out of order{wrong}")
        return 1
    return 0
