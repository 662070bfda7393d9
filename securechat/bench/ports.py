"""Which TCP ports the servers a benchmark starts listen on.

By default the kernel picks an ephemeral port, which may collide with whatever else runs on
the machine (a client's outgoing connection takes ephemeral ports too). `--ports LO-HI`
confines the benchmark's servers to a range the operator keeps free.
"""

from __future__ import annotations

import socket
from collections.abc import Collection

__all__ = ["free_port", "parse_port_range"]


def parse_port_range(text: str) -> range:
    """`"9000-9010"` as range(9000, 9011); `"9000"` as range(9000, 9001).

    Raises `ValueError` for anything else, a port outside 1-65535 or an empty range.
    """
    lo_text, sep, hi_text = text.partition("-")
    lo = int(lo_text)
    hi = int(hi_text) if sep else lo
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(f"{text!r} is not a port range within 1-65535 (LO-HI, LO <= HI)")
    return range(lo, hi + 1)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        # As the servers bind (SO_REUSEADDR): a port whose old connections linger in
        # TIME_WAIT after the previous run is free for them, and must be for us.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(ports: range | None = None, skip: Collection[int] = ()) -> int:
    """A port on 127.0.0.1 nothing listens on now: the first in `ports` not in `skip`.

    Without `ports`, one the kernel picks. Raises `OSError` when the whole range is taken.
    Another process may take the port before the caller's server binds it: a server that
    then fails to start should ask again with the port in `skip`.
    """
    if ports is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for port in ports:
        if port not in skip and _bindable(port):
            return port
    raise OSError(f"no free port in {ports.start}-{ports.stop - 1} on 127.0.0.1")
