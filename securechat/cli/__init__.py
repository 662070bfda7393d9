"""The `securechat` command: server, client, send, certs, release-nick.

Every entry point is `main(argv)` returning an exit status, so tests call it directly.
Exit status 2 means the command line or a file it names is wrong.
"""

from __future__ import annotations

import argparse
import sys

from . import certs_cmd, client_cmd, server_cmd
from .common import UsageError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]) and return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        status: int = args.run(args)
    except UsageError as exc:
        print(f"securechat {args.command}: {exc}", file=sys.stderr)
        return 2
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securechat", description="A multi-user chat over TLS with end-to-end encrypted whispers."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    server_cmd.add_parsers(sub)
    client_cmd.add_parsers(sub)
    certs_cmd.add_parsers(sub)
    return parser
