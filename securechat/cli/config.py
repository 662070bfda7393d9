"""`config.toml`: defaults for the command line, read with tomllib.

    # ~/.config/securechat/config.toml  ($XDG_CONFIG_HOME honoured; or --config PATH)
    [client]
    nick = "alice"
    host = "chat.example.org"
    port = 8443
    cafile = "~/chat-ca.pem"
    color = true
    bell = false

    [server]
    host = "0.0.0.0"
    data_dir = "/var/lib/securechat"
    message_rate = 5.0
    autojoin = ["#lobby", "#help"]

Flags on the command line override the file. Unknown sections or keys, and values of the
wrong type, are errors that name the key: a typo must not be silently ignored.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from pathlib import Path
from typing import Any

from ..server.config import check_setting, settings
from .common import UsageError

__all__ = ["apply_config", "default_config_path", "find_config_arg"]

# key -> (type, argparse dest). Paths are strings with "~" expanded.
_CLIENT: dict[str, tuple[type, str]] = {
    "nick": (str, "nick"),
    "host": (str, "host"),
    "port": (int, "port"),
    "cafile": (Path, "cafile"),
    "server_name": (str, "server_name"),
    "keys": (Path, "keys"),
    "color": (bool, "no_color"),
    "bell": (bool, "no_bell"),
}
#: [server]: every `ServerConfig` setting the file may hold (key and dest: the field's
#: name), and the options of `securechat server` that are not settings of the server.
_SERVER: dict[str, tuple[type, str]] = {
    "cert": (Path, "cert"),
    "key": (Path, "key"),
    "log_level": (str, "log_level"),
    **{s.name: (s.kind, s.name) for s in settings() if s.in_file},
}
_SECTIONS = {"client": (_CLIENT, ("client", "send")), "server": (_SERVER, ("server",))}
_NEGATED = {"no_color", "no_bell"}  # "color = false" sets --no-color


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "securechat" / "config.toml"


def find_config_arg(argv: list[str]) -> tuple[Path | None, list[str]]:
    """Take `--config PATH` (anywhere) out of `argv`: (the path or None, the rest)."""
    rest: list[str] = []
    path: Path | None = None
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            value = next(args, None)
            if value is None:
                raise UsageError("--config needs a file name")
            path = Path(value)
        elif arg.startswith("--config="):
            path = Path(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return path, rest


def apply_config(path: Path | None, parsers: dict[str, argparse.ArgumentParser]) -> None:
    """Set the subcommands' defaults from the file at `path` (or the default file if present).

    Raises `UsageError` for an unreadable file, bad TOML, or an unknown or mistyped key.
    """
    explicit = path is not None
    path = path or default_config_path()
    if not path.is_file():
        if explicit:
            raise UsageError(f"config file {path} not found")
        return
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from None
    for section, values in data.items():
        if section not in _SECTIONS:
            raise UsageError(f"{path}: unknown section [{section}] (known: client, server)")
        if not isinstance(values, dict):
            raise UsageError(f"{path}: {section} must be a [section]")
        schema, commands = _SECTIONS[section]
        defaults = {
            dest: value for dest, value in (_convert(path, section, k, v, schema) for k, v in values.items())
        }
        for command in commands:
            parsers[command].set_defaults(**defaults)


def _convert(
    path: Path, section: str, key: str, value: Any, schema: dict[str, tuple[type, str]]
) -> tuple[str, Any]:
    if key not in schema:
        close = difflib.get_close_matches(key, schema, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(schema)}"
        raise UsageError(f"{path}: unknown setting {key!r} in [{section}] ({hint})")
    kind, dest = schema[key]
    where = f"{path}: [{section}] {key}"
    if kind is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{where} must be true or false")
        return dest, (not value) if dest in _NEGATED else value
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise UsageError(f"{where} must be a whole number")
    if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise UsageError(f"{where} must be a number")
    if kind in (str, Path) and not isinstance(value, str):
        raise UsageError(f"{where} must be a string")
    if kind is tuple and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise UsageError(f'{where} must be a list of strings, e.g. ["#lobby", "#help"]')
    if kind is Path:
        return dest, Path(value).expanduser()
    converted = float(value) if kind is float else tuple(value) if kind is tuple else value
    if section == "server":
        try:
            check_setting(key, converted)
        except ValueError as exc:
            raise UsageError(f"{path}: [{section}] {exc}") from None
    return dest, converted
