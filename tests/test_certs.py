from __future__ import annotations

from pathlib import Path

import pytest

from securechat.certs import CertPaths, make_certs


def test_needs_at_least_one_host(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="host"):
        make_certs(tmp_path, [])


def test_writes_three_files_and_never_the_ca_key(tmp_path: Path) -> None:
    paths, written = make_certs(tmp_path / "c", ["localhost"])
    assert written and paths == CertPaths.under(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["ca.pem", "server.key", "server.pem"]
    assert "PRIVATE KEY" in paths.key.read_text()


def test_a_partial_set_is_completed_not_kept(tmp_path: Path) -> None:
    paths, _ = make_certs(tmp_path, ["localhost"])
    paths.key.unlink()
    _, written = make_certs(tmp_path, ["localhost"])
    assert written and paths.all_exist()
