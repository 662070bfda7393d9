from __future__ import annotations

import os
from pathlib import Path

from securechat.files import write_private


def test_written_files_are_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private(tmp_path / "secret", b"key material")
    finally:
        os.umask(old)
    assert (tmp_path / "secret").read_bytes() == b"key material"
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


def test_replacing_a_wider_file_narrows_it(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o600


def test_no_temporary_file_is_left_behind(tmp_path: Path) -> None:
    write_private(tmp_path / "a", b"1")
    write_private(tmp_path / "a", b"2", mode=0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o644


def test_several_files_are_replaced_or_deleted_in_one_call(tmp_path: Path) -> None:
    from securechat.files import write_private_files

    (tmp_path / "gone").write_bytes(b"old")
    (tmp_path / "kept").write_bytes(b"old")
    write_private_files(tmp_path, {"kept": b"new", "fresh": b"x" * 200_000, "gone": None})
    assert (tmp_path / "kept").read_bytes() == b"new"
    assert (tmp_path / "fresh").read_bytes() == b"x" * 200_000
    assert not (tmp_path / "gone").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "kept"]  # no temporaries left
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in tmp_path.iterdir())
