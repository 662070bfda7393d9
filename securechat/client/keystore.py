"""The keystore on disk: one directory per server and nick, one file per record.

`$XDG_DATA_HOME/securechat/<server>/<nick>/` (default `~/.local/share/...`), directory
0700 and files 0600; a keystore that others can read is refused rather than used.
Each write is atomic (temp file, fsync, rename, fsync the directory), so a crash
leaves every record either old or new, never torn.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ..e2e import keystore as sealing
from ..e2e.errors import KeystoreError
from ..files import write_private, write_private_files

__all__ = ["Keystore", "default_keystore_dir"]

_HEADER = "keystore.json"
_SUFFIX = ".rec"
_NAME_RE = re.compile(r"[a-z]+(:[0-9a-f]{1,64})?")


def default_keystore_dir(host: str, port: int, nick: str) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    server = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{host}_{port}")
    return Path(base) / "securechat" / server / nick.lower()


def _file_for(name: str) -> str:
    if _NAME_RE.fullmatch(name) is None:
        raise ValueError(f"bad record name {name!r}")
    return name.replace(":", "-") + _SUFFIX


def _name_for(filename: str) -> str:
    return filename.removesuffix(_SUFFIX).replace("-", ":")


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise KeystoreError(
            f"{path} can be read by other users (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod {'700' if stat.S_ISDIR(mode) else '600'} {path}"
        )


class Keystore:
    """Records (name -> bytes) in a directory, sealed when a passphrase protects them."""

    def __init__(self, directory: Path, data_key: bytes | None) -> None:
        self.directory = directory
        self._data_key = data_key

    @property
    def protected(self) -> bool:
        return self._data_key is not None

    @classmethod
    def exists(cls, directory: Path) -> bool:
        return (directory / _HEADER).is_file()

    @classmethod
    def create(
        cls, directory: Path, passphrase: str | None, params: sealing.KdfParams | None = None
    ) -> Keystore:
        """A new, empty keystore. Raises `KeystoreError` if one exists, `OSError` on I/O errors."""
        if cls.exists(directory):
            raise KeystoreError(f"a keystore already exists in {directory}")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        header, key = sealing.new_header(passphrase, params=params or sealing.KdfParams())
        write_private(directory / _HEADER, header)
        return cls(directory, key)

    @classmethod
    def open(cls, directory: Path, passphrase: str | None) -> Keystore:
        """Open an existing keystore. Raises `KeystoreError` (permissions, passphrase, format)."""
        _check_private(directory)
        header_path = directory / _HEADER
        _check_private(header_path)
        return cls(directory, sealing.unlock(header_path.read_bytes(), passphrase))

    @classmethod
    def needs_passphrase(cls, directory: Path) -> bool:
        return sealing.is_protected((directory / _HEADER).read_bytes())

    def load(self) -> dict[str, bytes]:
        """Every record. Raises `KeystoreError` for a readable-by-others or damaged file."""
        records: dict[str, bytes] = {}
        for path in sorted(self.directory.iterdir()):
            if not path.name.endswith(_SUFFIX):
                continue
            _check_private(path)
            name = _name_for(path.name)
            blob = path.read_bytes()
            records[name] = blob if self._data_key is None else sealing.unseal(self._data_key, name, blob)
        return records

    def save(self, records: dict[str, bytes | None]) -> None:
        """Write (or, for None, delete) records, each atomically and durably."""
        key = self._data_key
        write_private_files(
            self.directory,
            {
                _file_for(name): data if data is None or key is None else sealing.seal(key, name, data)
                for name, data in records.items()
            },
        )
