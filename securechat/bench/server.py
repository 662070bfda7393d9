"""A securechat server started for a benchmark run, in its own process."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ..certs import make_certs
from .ports import free_port

__all__ = ["BenchServer", "scenario_args"]


class BenchServer:
    """`securechat server` on 127.0.0.1 with fresh certificates and data in `workdir`.

    The rate limit is turned off and the per-IP cap lifted (every simulated client comes
    from 127.0.0.1); the server logs both, so this is never silent. Raises `RuntimeError`
    if it does not start. `extra_args` are more `securechat server` flags (the rooms
    scenario lifts the room caps with them). It listens on a free port of `ports` (trying the
    next one if another process takes it first), or on one the kernel picks. `launcher` is
    what runs after the interpreter instead of `-m securechat` (a profiling wrapper).
    """

    def __init__(
        self,
        workdir: Path,
        extra_args: Sequence[str] = (),
        ports: range | None = None,
        launcher: Sequence[str] = ("-m", "securechat"),
    ) -> None:
        paths, _ = make_certs(workdir / "certs", ["localhost", "127.0.0.1"])
        self.cafile = paths.ca
        tried: set[int] = set()
        while True:
            # Raises OSError once every port of `ports` was tried or is taken.
            self.port = free_port(ports, skip=tried)
            tried.add(self.port)
            banner = self._start(workdir, paths.cert, paths.key, extra_args, launcher)
            if re.search(rf":{self.port} \(TLS\)", banner):
                return
            self.proc.kill()
            self.proc.wait()
            if ports is None or banner:
                raise RuntimeError(f"the benchmark server did not start: {banner!r}")
            # It exited without a word (its error went to stderr): most likely another
            # process took the port between our probe and its bind; the next one, then,
            # with a fresh data directory (--init wants one).
            shutil.rmtree(workdir / "data", ignore_errors=True)

    def _start(
        self, workdir: Path, cert: Path, key: Path, extra_args: Sequence[str], launcher: Sequence[str]
    ) -> str:
        """Start the server on `self.port`; its first line of output (the banner, or why not)."""
        self.proc = subprocess.Popen(  # noqa: S603 -- our own interpreter and arguments
            [
                sys.executable,
                *launcher,
                "server",
                "--port",
                str(self.port),
                "--data-dir",
                str(workdir / "data"),
                "--init",  # a new, throwaway server for the run
                "--cert",
                str(cert),
                "--key",
                str(key),
                "--message-rate",
                "0",
                "--max-per-ip",
                "1000000",
                "--log-level",
                "warning",
                *extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def scenario_args(scenario: str, *, rooms: int = 0, rooms_per_client: int = 1, pairs: int = 0) -> list[str]:
    """The `securechat server` flags a scenario's server needs beyond `BenchServer`'s:
    rooms lifts the room caps only as far as the run needs (+1: #lobby); relay lets every
    pair's two new identities register from 127.0.0.1 at once (one network's burst)."""
    if scenario == "rooms":
        return [
            "--max-rooms",
            str(max(1000, rooms + 1)),
            "--max-rooms-per-user",
            str(max(20, rooms_per_client + 1)),
        ]
    if scenario == "relay":
        return ["--registration-burst", str(max(30, 2 * pairs))]
    return []
