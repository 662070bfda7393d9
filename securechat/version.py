"""This release's version: one source, the `version` in pyproject.toml, read at run time.

The installed package's metadata is what pyproject.toml said when it was installed
(`pip install -e .` again after changing it). The server names its version in the
welcome (`SOFTWARE`), so a client and a server that do not match are easy to tell apart.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["SOFTWARE", "UNKNOWN_VERSION", "VERSION"]

#: What `VERSION` is when the code runs without being installed (a copied source tree):
#: a PEP 440 local version that sorts before every release.
UNKNOWN_VERSION = "0+unknown"


def _installed_version() -> str:
    try:
        return metadata.version("securechat")
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


#: "0.2.0": the installed package's version.
VERSION = _installed_version()
#: "securechat 0.2.0": what `securechat --version` prints and the welcome's `software`.
SOFTWARE = f"securechat {VERSION}"
