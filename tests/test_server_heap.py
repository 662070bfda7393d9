from __future__ import annotations

import platform
import sys

from securechat.server import heap
from securechat.server.heap import TrimAfterDrop


def test_trim_after_a_flood_ends() -> None:
    trim = TrimAfterDrop(drop=100)
    trim.seen(50)
    trim.seen(1000)
    assert not trim.due(950)  # not enough gone
    assert not trim.due(600)  # more than half still here
    assert trim.due(400)
    assert not trim.due(400)  # once per flood: the peak starts again from here
    assert not TrimAfterDrop(drop=0).due(0)


def test_trim_works_on_glibc_and_rss_is_known_on_linux() -> None:
    assert heap.trim() == (platform.libc_ver()[0] == "glibc")
    rss = heap.rss_kib()
    if sys.platform.startswith("linux"):  # read from /proc
        assert rss is not None and rss > 0
    else:
        assert rss is None
