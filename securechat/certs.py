"""`securechat certs`: a local CA and a server certificate for trying securechat out.

Made with trustme. The CA's private key is never written: it is only needed to sign
the server certificate, and a CA key left on disk would let anyone who reads it
impersonate the server. To renew, run again with `force`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

from .files import write_private

__all__ = ["CertPaths", "make_certs"]


@dataclass(frozen=True)
class CertPaths:
    """Where the three files live in a certificate directory."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def under(cls, directory: Path) -> CertPaths:
        return cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")

    def all_exist(self) -> bool:
        return self.ca.is_file() and self.cert.is_file() and self.key.is_file()


def make_certs(directory: Path, hosts: Sequence[str], *, force: bool = False) -> tuple[CertPaths, bool]:
    """Create ca.pem, server.pem and server.key (0600) in `directory` for `hosts`.

    Returns the paths and whether new files were written: with `force` False and all
    three files present, nothing is touched. Raises `ValueError` for no hosts and
    `OSError` when the directory is not writable.
    """
    if not hosts:
        raise ValueError("at least one host name or IP address is needed")
    paths = CertPaths.under(directory)
    if paths.all_exist() and not force:
        return paths, False
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="securechat local CA")
    server = ca.issue_cert(*hosts)
    write_private(paths.key, server.private_key_pem.bytes())
    write_private(paths.cert, b"".join(blob.bytes() for blob in server.cert_chain_pems), mode=0o644)
    write_private(paths.ca, ca.cert_pem.bytes(), mode=0o644)
    return paths, True
