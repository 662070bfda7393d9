"""`securechat certs`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import DEFAULT_CERT_DIR, UsageError

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = sub.add_parser(
        "certs",
        help="make a throwaway CA and a server certificate for a year (for trying it out)",
        description="Writes ca.pem (the root clients trust), server.pem (the server certificate "
        "followed by its intermediate) and server.key (0600). The CA keys are never saved. "
        "For real use, give the server a certificate from a CA (Let's Encrypt, your "
        "organisation's) with its full chain instead.",
    )
    certs.add_argument(
        "--dir", type=Path, default=DEFAULT_CERT_DIR, help="where to write (default: %(default)s)"
    )
    certs.add_argument(
        "--host",
        action="append",
        default=None,
        help="a name or IP the certificate is for; repeatable (default: localhost and 127.0.0.1)",
    )
    certs.add_argument("--force", action="store_true", help="replace existing files")
    certs.set_defaults(run=run_certs)


def run_certs(args: argparse.Namespace) -> int:
    from ..certs import SERVER_CERT_LIFETIME, make_certs

    hosts = args.host or ["localhost", "127.0.0.1"]
    try:
        paths, written = make_certs(args.dir, hosts, force=args.force)
    except ValueError as exc:
        raise UsageError(f"--host: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot write certificates to {args.dir}: {exc}") from None
    if written:
        print(
            f"wrote {paths.ca} (trust this in clients), {paths.cert} (certificate and intermediate) "
            f"and {paths.key} (0600) for {', '.join(hosts)}, valid for {SERVER_CERT_LIFETIME.days} "
            "days: renew with --force"
        )
    else:
        print(f"certificates already in {args.dir}; pass --force to replace them")
    return 0
