"""`securechat server`, `securechat release-nick` and `securechat release-room`."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..protocol import is_valid_nick
from ..server.cluster import ClusterUnavailable
from ..server.datadir import DataDirRefused
from ..server.store import StoreUnavailable

if TYPE_CHECKING:
    from ..server import Server
    from ..server.store import SqliteStore
from ..server.config import FieldSetting, ServerConfig, check_setting, settings
from .common import (
    DEFAULT_CERT_DIR,
    UsageError,
    check_port,
    default_data_dir,
    raise_open_files_limit,
)

__all__ = ["add_parsers", "server_config", "settings_table", "show_default"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    server = sub.add_parser("server", help="run the chat server")
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
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log (default: %(default)s); message texts are never logged",
    )
    _add_setting_flags(server)
    server.set_defaults(run=run_server)

    release = sub.add_parser(
        "release-nick", help="operator: unbind a nick from its key (its owner lost the key)"
    )
    release.add_argument("nick")
    release.add_argument("--data-dir", type=Path, default=None, help="the server's data directory")
    release.set_defaults(run=run_release)

    release_room = sub.add_parser(
        "release-room",
        help="operator: unregister a room (its owner is gone); run it while the server is stopped",
    )
    release_room.add_argument("room")
    release_room.add_argument("--data-dir", type=Path, default=None, help="the server's data directory")
    release_room.set_defaults(run=run_release_room)


#: The metavar each kind of setting shows in --help.
_METAVARS: dict[type, str] = {str: "TEXT", int: "N", float: "NUM", Path: "DIR", tuple: "LIST"}


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `ServerConfig` field (its `Setting` says the spelling, help and default)."""
    group = parser.add_argument_group(
        "server settings",
        "each also a key of config.toml's [server] table, spelt with underscores "
        "(docs/operations.md lists them with their defaults)",
    )
    for setting in settings():
        default = setting.command_line_default
        text = f"{setting.spec.help} (default: {show_default(setting)})".replace("%", "%%")
        if setting.kind is bool:
            action = "store_true" if default is False else argparse.BooleanOptionalAction
            group.add_argument(setting.flag, dest=setting.name, action=action, default=default, help=text)
            continue
        group.add_argument(
            setting.flag,
            dest=setting.name,
            type=_parser_of(setting),
            default=default,
            metavar=_METAVARS[setting.kind],
            help=text,
        )


def _parser_of(setting: FieldSetting) -> Callable[[str], object]:
    def parse(text: str) -> object:
        value: object
        if setting.kind is tuple:  # "#lobby,#help"; "" is the empty list
            value = tuple(part.strip() for part in text.split(",") if part.strip())
        else:
            value = setting.kind(text)  # ValueError: argparse says "invalid <type> value"
        try:
            check_setting(setting.name, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    parse.__name__ = {int: "int", float: "float"}.get(setting.kind, "value")  # argparse's message
    return parse


def show_default(setting: FieldSetting) -> str:
    """The default of `setting` as --help and docs/operations.md show it."""
    if setting.spec.shown_default:
        return setting.spec.shown_default
    value = setting.command_line_default
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    return str(value)


def settings_table() -> str:
    """The settings table of docs/operations.md, in Markdown (a test keeps the two equal)."""
    lines = [
        "| setting (config.toml key) | flag | default | what it does |",
        "|---|---|---|---|",
    ]
    for setting in settings():
        key = f"`{setting.name}`" if setting.in_file else f"`{setting.name}` (flag only)"
        lines.append(f"| {key} | `{setting.flag}` | {show_default(setting)} | {setting.spec.help} |")
    return "\n".join(lines) + "\n"


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The `ServerConfig` that `securechat server` ARGS (after config.toml) asks for."""
    values = {setting.name: getattr(args, setting.name) for setting in settings()}
    values["data_dir"] = args.data_dir or default_data_dir() / "server"
    try:
        return ServerConfig(**values)
    except ValueError as exc:  # what no flag type refuses (check_setting): the flag parsers ran it
        raise UsageError(str(exc)) from None


#: Stack size for session threads (see run_server).
SESSION_THREAD_STACK = 512 * 1024


def run_server(args: argparse.Namespace) -> int:
    from ..server import Server
    from ..transport import server_context

    check_port(args.port, allow_zero=True)
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
    # psycopg's pool logs every reconnect attempt (a few a second while PostgreSQL is
    # down); the store logs the outage itself, at a bounded rate (faultlog.py).
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    config = server_config(args)
    try:
        server = Server(config, context)
    except StoreUnavailable as exc:
        raise UsageError(
            f"refusing to start: cannot use the store {_redacted(config.store)}: "
            f"{_without_secrets(str(exc), config.store)}"
        ) from None
    except DataDirRefused as exc:
        # Says what is wrong with the data directory and how to restore it.
        raise UsageError(f"refusing to start: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot open the data directory {config.data_dir}: {exc.strerror or exc}") from None
    # Two threads per session: their stacks are sized deliberately (the default is 8 MiB
    # of address space each; frames are parsed iteratively and JSON nesting is bounded,
    # so 512 KiB leaves a wide margin), and every session needs a file descriptor.
    threading.stack_size(SESSION_THREAD_STACK)
    files = raise_open_files_limit()
    if files < config.max_sessions + 64:
        logging.getLogger("securechat.server").warning(
            "the open-file limit (%d) allows fewer sessions than max_sessions (%d)",
            files,
            config.max_sessions,
        )
    # Ctrl-C and SIGTERM are taken with sigwait by this thread. Blocked first, so every
    # server thread inherits the block: a handler would only run once the main thread
    # executes Python again, and a signal the kernel hands to another thread would never
    # wake a main thread asleep in a lock (seen: a SIGTERM ignored until SIGKILL).
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        return _serve(server, config, stop_signals)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _serve(server: Server, config: ServerConfig, stop_signals: set[signal.Signals]) -> int:
    try:
        server.start()
    except OSError as exc:
        server.stop()  # closes the database cleanly and marks the data directory stopped
        raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    except ClusterUnavailable as exc:
        server.stop()
        raise UsageError(
            f"refusing to start: {_without_secrets(str(exc), config.cluster)} "
            f"(--cluster {_redacted(config.cluster)})"
        ) from None
    defaults = ServerConfig()
    if (config.message_rate, config.message_burst) != (defaults.message_rate, defaults.message_burst):
        logging.getLogger("securechat.server").warning(
            "rate limit changed from the default: %s",
            "off" if config.message_rate <= 0 else f"{config.message_rate}/s, burst {config.message_burst}",
        )
    host, port = server.address
    print(f"securechat server on {host}:{port} (TLS). Ctrl-C stops it.", flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        server.stop()
    print("securechat server stopped.", flush=True)
    return 0


def run_release(args: argparse.Namespace) -> int:
    from ..server.store import StoreUnavailable

    if not is_valid_nick(args.nick):
        raise UsageError(f"{args.nick!r} is not a valid nick")
    store, db = _open_store(args.data_dir)
    try:
        released = store.release(args.nick)
    except StoreUnavailable as exc:
        raise UsageError(f"cannot write to {db}: {exc}") from None
    finally:
        store.close()
    if not released:
        print(f"{args.nick} was not registered")
        return 1
    print(f"released {args.nick}: the next client to log in with that nick registers its own key")
    return 0


def run_release_room(args: argparse.Namespace) -> int:
    """Forget a registered room: its settings, operators, bans and stored lines.

    For the server stopped, like `release-nick`: a running server does not see the change
    (it keeps the room registered in memory until it stops, and refuses that room's next
    settings change with no-such-room)."""
    from ..protocol.events import check_room
    from ..server.store import StoreUnavailable

    try:
        check_room(args.room)
    except ValueError:
        raise UsageError(f"{args.room!r} is not a room name ('#' and 1-32 of A-Z a-z 0-9 _ - .)") from None
    store, db = _open_store(args.data_dir)
    try:
        released = store.release_room(args.room)
    except StoreUnavailable as exc:
        raise UsageError(f"cannot write to {db}: {exc}") from None
    finally:
        store.close()
    if not released:
        print(f"{args.room} was not registered")
        return 1
    print(f"released {args.room}: it is an ordinary room again, and its first creator may register it")
    return 0


def _open_store(data_dir: Path | None) -> tuple[SqliteStore, Path]:
    """The server's database in `data_dir` (the default one if None), opened for a tool:
    nothing is created, migrated or adopted. Raises `UsageError`."""
    from ..server.datadir import DB_NAME, check_db
    from ..server.store import SqliteStore, StoreUnavailable

    directory = data_dir or default_data_dir() / "server"
    db = directory / DB_NAME
    try:
        check_db(directory)  # never creates, migrates or adopts anything
    except DataDirRefused as exc:
        raise UsageError(f"{exc} (pass --data-dir)" if not db.exists() else str(exc)) from None
    try:
        return SqliteStore(db), db
    except (StoreUnavailable, ValueError) as exc:
        raise UsageError(f"cannot open {db}: {exc}") from None


def _redacted(url: str) -> str:
    """`url` with any password replaced, for a message (secrets are never printed)."""
    for secret in _secrets(url):
        url = url.replace(secret, "***")
    return url


def _secrets(url: str) -> list[str]:
    """The passwords in a PostgreSQL or Redis URL or libpq string, as written and decoded,
    longest first (so that no part of one is left when another is replaced)."""
    from urllib.parse import unquote, urlsplit

    found = [q or bare for q, bare in re.findall(r"password\s*=\s*(?:'([^']*)'|(\S+))", url)]
    try:
        password = urlsplit(url).password if "://" in url else None
    except ValueError:
        password = None
    if not password and "://" in url:
        # urlsplit takes the last "@" as the end of the credentials: a password with an
        # "@" in it is all that lies between the first ":" after the scheme and it.
        rest = url.split("://", 1)[1]
        password = rest.rpartition("@")[0].partition(":")[2] if "@" in rest else None
    if password:
        found += [password, unquote(password)]
    return sorted({s for s in found if s}, key=len, reverse=True)


def _without_secrets(text: str, *urls: str) -> str:
    """`text` (an error's message, which may quote a URL's parts) with the passwords of
    `urls` replaced."""
    for url in urls:
        for secret in _secrets(url):
            text = text.replace(secret, "***")
    return text
