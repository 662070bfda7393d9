"""A securechat server started for a benchmark run, in its own process."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ..certs import make_certs

__all__ = ["BenchServer"]


class BenchServer:
    """`securechat server` on 127.0.0.1 with fresh certificates and data in `workdir`.

    The rate limit is turned off and the per-IP cap lifted (every simulated client comes
    from 127.0.0.1); the server logs both, so this is never silent. Raises `RuntimeError`
    if it does not start. `extra_args` are more `securechat server` flags (the rooms
    scenario lifts the room caps with them).
    """

    def __init__(self, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        paths, _ = make_certs(workdir / "certs", ["localhost", "127.0.0.1"])
        self.cafile = paths.ca
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc = subprocess.Popen(  # noqa: S603 -- our own interpreter and arguments
            [
                sys.executable,
                "-m",
                "securechat",
                "server",
                "--port",
                str(self.port),
                "--data-dir",
                str(workdir / "data"),
                "--init",  # a new, throwaway server for the run
                "--cert",
                str(paths.cert),
                "--key",
                str(paths.key),
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
        banner = self.proc.stdout.readline()
        if not re.search(rf":{self.port} \(TLS\)", banner):
            self.proc.kill()
            raise RuntimeError(f"the benchmark server did not start: {banner!r}")

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
