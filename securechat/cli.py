"""The `securechat` command: server, client, certs.

Every entry point is `main(argv)` returning an exit status, so tests call it directly.
Exit status 2 means the command line or a file it names is wrong.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sqlite3
import ssl
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from .protocol import is_valid_nick
from .server.config import ServerConfig

if TYPE_CHECKING:
    from .client.whispers import WhisperKeys

__all__ = ["main"]

DEFAULT_PORT = 7443
DEFAULT_CERT_DIR = Path("certs")


class UsageError(Exception):
    """A problem with what the user asked for; the message says how to fix it."""


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

    server = sub.add_parser("server", help="run the chat server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    server.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default: %(default)s)")
    server.add_argument(
        "--cert",
        type=Path,
        default=DEFAULT_CERT_DIR / "server.pem",
        help="server certificate chain, PEM (default: %(default)s)",
    )
    server.add_argument(
        "--key",
        type=Path,
        default=DEFAULT_CERT_DIR / "server.key",
        help="server private key, PEM (default: %(default)s)",
    )
    server.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the database lives (default: $XDG_DATA_HOME/securechat/server)",
    )
    server.add_argument(
        "--message-rate",
        type=float,
        default=ServerConfig.message_rate,
        help="requests per second per client, sustained (default: %(default)s; 0 turns the limit off)",
    )
    server.add_argument(
        "--message-burst",
        type=float,
        default=ServerConfig.message_burst,
        help="requests a client may send at once before the rate applies (default: %(default)s)",
    )
    server.add_argument(
        "--max-per-ip",
        type=int,
        default=ServerConfig.max_per_ip,
        help="open connections allowed from one IP address (default: %(default)s)",
    )
    server.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log (default: %(default)s); message texts are never logged",
    )
    server.set_defaults(run=_run_server)

    client = sub.add_parser("client", help="join a chat server in this terminal")
    client.add_argument(
        "--nick",
        default=os.environ.get("USER", ""),
        help="your nick: 1-24 of A-Z a-z 0-9 _ - . (default: $USER)",
    )
    client.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    client.add_argument("--port", type=int, default=DEFAULT_PORT, help="server port (default: %(default)s)")
    client.add_argument(
        "--cafile",
        type=Path,
        default=None,
        help="CA certificate to trust, PEM (default: certs/ca.pem if present, else the system's CAs)",
    )
    client.add_argument(
        "--server-name",
        default=None,
        help="name the server certificate must carry (default: the --host value)",
    )
    client.add_argument(
        "--keys",
        type=Path,
        default=None,
        help="keystore directory (default: $XDG_DATA_HOME/securechat/HOST_PORT/NICK)",
    )
    client.add_argument(
        "--passphrase",
        default=None,
        help="passphrase for the keystore (visible to other local users in `ps`: prefer "
        "SECURECHAT_PASSPHRASE or the prompt)",
    )
    client.add_argument(
        "--guest", action="store_true", help="no identity: chat in public only, under an unregistered nick"
    )
    client.set_defaults(run=_run_client)

    release = sub.add_parser(
        "release-nick", help="operator: unbind a nick from its key (its owner lost the key)"
    )
    release.add_argument("nick")
    release.add_argument("--data-dir", type=Path, default=None, help="the server's data directory")
    release.set_defaults(run=_run_release)

    certs = sub.add_parser("certs", help="make a local CA and a server certificate (for trying it out)")
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
    certs.set_defaults(run=_run_certs)
    return parser


def _check_port(port: int, *, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise UsageError(f"port {port} is out of range 1-65535")


# -- server -------------------------------------------------------------------------


def _run_server(args: argparse.Namespace) -> int:
    from .server import Server
    from .transport import server_context

    _check_port(args.port, allow_zero=True)
    for path, what in ((args.cert, "certificate"), (args.key, "private key")):
        if not path.is_file():
            raise UsageError(f"server {what} {path} not found; run `make certs` (or pass --cert/--key)")
    try:
        context = server_context(args.cert, args.key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load {args.cert} / {args.key}: {exc}") from None
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    data_dir = args.data_dir or _default_data_dir() / "server"
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            data_dir=data_dir,
            message_rate=args.message_rate,
            message_burst=args.message_burst,
            max_per_ip=args.max_per_ip,
        )
        server = Server(config, context)
    except (OSError, ValueError, sqlite3.DatabaseError) as exc:
        raise UsageError(f"cannot open the database in {data_dir}: {exc}") from None
    try:
        server.start()
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    defaults = ServerConfig()
    if (config.message_rate, config.message_burst) != (defaults.message_rate, defaults.message_burst):
        logging.getLogger("securechat.server").warning(
            "rate limit changed from the default: %s",
            "off" if config.message_rate <= 0 else f"{config.message_rate}/s, burst {config.message_burst}",
        )
    host, port = server.address
    print(f"securechat server on {host}:{port} (TLS). Ctrl-C stops it.", flush=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
    print("securechat server stopped.", flush=True)
    return 0


# -- client -------------------------------------------------------------------------


def _run_client(args: argparse.Namespace) -> int:
    from .client import Client, ConnectError, LoginRejected
    from .client.keystore import default_keystore_dir
    from .client.tui import run_tui
    from .e2e.errors import KeystoreError
    from .transport import client_context

    _check_port(args.port)
    if not is_valid_nick(args.nick):
        raise UsageError(
            f"{args.nick!r} is not a valid nick: use 1-24 of A-Z a-z 0-9 _ - . (pass --nick)"
            if args.nick
            else "no nick: pass --nick NAME"
        )
    cafile = args.cafile
    if cafile is None and (DEFAULT_CERT_DIR / "ca.pem").is_file():
        cafile = DEFAULT_CERT_DIR / "ca.pem"
    if cafile is not None and not cafile.is_file():
        raise UsageError(f"CA file {cafile} not found")
    try:
        context = client_context(cafile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load CA file {cafile}: {exc}") from None
    keys = None
    if not args.guest:
        directory = args.keys or default_keystore_dir(args.host, args.port, args.nick)
        try:
            keys = _open_keys(directory, args.nick, args.passphrase)
        except (KeystoreError, ValueError, OSError) as exc:
            raise UsageError(f"cannot open your keys in {directory}: {exc}") from None
    client = Client(
        args.nick,
        context=context,
        host=args.host,
        port=args.port,
        server_hostname=args.server_name,
        keys=keys,
        reconnect=True,
    )
    try:
        client.connect()
    except ConnectError as exc:
        print(f"securechat: {exc}", file=sys.stderr)
        return 1
    except LoginRejected as exc:
        print(f"securechat: the server refused the login: {exc}", file=sys.stderr)
        return 1
    return run_tui(client)


def _open_keys(directory: Path, nick: str, passphrase: str | None) -> WhisperKeys:
    """Open (or create, on first use) the keystore; asks for a passphrase on a terminal."""
    from .client.keystore import Keystore
    from .client.whispers import WhisperKeys

    if passphrase is None:
        passphrase = os.environ.get("SECURECHAT_PASSPHRASE")
    interactive = sys.stdin.isatty()
    if Keystore.exists(directory):
        if passphrase is None and Keystore.needs_passphrase(directory) and interactive:
            passphrase = getpass.getpass(f"Passphrase for {directory}: ")
        store = Keystore.open(directory, passphrase)
    else:
        if passphrase is None and interactive:
            print(f"Creating your identity keys in {directory}.")
            passphrase = getpass.getpass("Passphrase to protect them (Enter for none): ")
            if passphrase and getpass.getpass("Again: ") != passphrase:
                raise ValueError("the passphrases did not match")
        store = Keystore.create(directory, passphrase or None)
    if not store.protected:
        print(
            f"securechat: note: your keys in {directory} are unprotected (no passphrase); "
            "anyone who can read that directory can read your whispers.",
            file=sys.stderr,
        )
    return WhisperKeys.in_keystore(store, nick)


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "securechat"


# -- release-nick -------------------------------------------------------------------


def _run_release(args: argparse.Namespace) -> int:
    from .server.listener import DB_NAME
    from .server.store import SqliteStore

    if not is_valid_nick(args.nick):
        raise UsageError(f"{args.nick!r} is not a valid nick")
    db = (args.data_dir or _default_data_dir() / "server") / DB_NAME
    if not db.is_file():
        raise UsageError(f"no server database at {db} (pass --data-dir)")
    try:
        store = SqliteStore(db)
    except (sqlite3.DatabaseError, ValueError) as exc:
        raise UsageError(f"cannot open {db}: {exc}") from None
    try:
        released = store.release(args.nick)
    finally:
        store.close()
    if not released:
        print(f"{args.nick} was not registered")
        return 1
    print(f"released {args.nick}: the next client to log in with that nick registers its own key")
    return 0


# -- certs --------------------------------------------------------------------------


def _run_certs(args: argparse.Namespace) -> int:
    from .certs import make_certs

    hosts = args.host or ["localhost", "127.0.0.1"]
    try:
        paths, written = make_certs(args.dir, hosts, force=args.force)
    except OSError as exc:
        raise UsageError(f"cannot write certificates to {args.dir}: {exc}") from None
    if written:
        print(
            f"wrote {paths.ca} (trust this in clients), {paths.cert} and {paths.key} (0600) "
            f"for {', '.join(hosts)}"
        )
    else:
        print(f"certificates already in {args.dir}; pass --force to replace them")
    return 0
