"""`securechat backup`: a consistent copy of the server's database, safe while it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, default_data_dir

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = sub.add_parser(
        "backup",
        help="operator: copy the server's database consistently (safe while the server runs)",
        description="Copy the server's database with SQLite's online backup API into DEST, a new "
        "file (mode 0600). The copy is one consistent snapshot, even while the server writes; "
        "a server starts from it after it is put in place as securechat.db (docs/operations.md).",
    )
    backup.add_argument("dest", type=Path, metavar="DEST", help="the file to create (must not exist)")
    backup.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the server's data directory (default: $XDG_DATA_HOME/securechat/server)",
    )
    backup.set_defaults(run=run_backup)


def run_backup(args: argparse.Namespace) -> int:
    from ..server.datadir import DB_NAME, DataDirRefused, check_db
    from ..server.store import StoreUnavailable, backup

    data_dir = args.data_dir or default_data_dir() / "server"
    try:
        check_db(data_dir)  # a missing, empty or foreign database is not worth a backup
    except DataDirRefused as exc:
        raise UsageError(str(exc)) from None
    try:
        backup(data_dir / DB_NAME, args.dest)
    except FileExistsError:
        raise UsageError(
            f"{args.dest} already exists; choose a new name (backups are not overwritten)"
        ) from None
    except StoreUnavailable as exc:
        raise UsageError(f"cannot read the database: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.dest}: {exc.strerror or exc}") from None
    print(f"backed up {data_dir / DB_NAME} to {args.dest}")
    return 0
