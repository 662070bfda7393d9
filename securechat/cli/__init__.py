"""The `securechat` command: server, client, send, certs, release-nick, release-room.

Every entry point is `main(argv)` returning an exit status, so tests call it directly.
Exit status 2 means the command line or a file it names is wrong.
"""

from __future__ import annotations

import argparse
import sys

from ..version import SOFTWARE
from . import backup_cmd, bench_cmd, certs_cmd, client_cmd, server_cmd
from .common import UsageError
from .config import apply_config, default_config_path, find_config_arg

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]) and return the exit status."""
    parser, commands = build_parser()
    try:
        config, rest = find_config_arg(sys.argv[1:] if argv is None else argv)
        apply_config(config, commands)
    except UsageError as exc:
        print(f"securechat: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(rest)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        status: int = args.run(args)
    except UsageError as exc:
        print(f"securechat {args.command}: {exc}", file=sys.stderr)
        return 2
    return status


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `securechat` parser and its subcommands' parsers by name (config.toml sets their defaults)."""
    parser = argparse.ArgumentParser(
        prog="securechat",
        description="A multi-user chat over TLS with end-to-end encrypted whispers.",
        epilog=f"Defaults can be set in {default_config_path()} ([client] and [server] sections), "
        "or in the file given with --config PATH; flags override it.",
    )
    parser.add_argument("--version", action="version", version=SOFTWARE, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    server_cmd.add_parsers(sub)
    client_cmd.add_parsers(sub)
    certs_cmd.add_parsers(sub)
    bench_cmd.add_parsers(sub)
    backup_cmd.add_parsers(sub)
    return parser, dict(sub.choices)
