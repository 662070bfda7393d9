"""A real `securechat server` process for tests that need one (crash, soak)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from chat import TIMEOUT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_argv(
    port: int,
    data: Path,
    cert_files: dict[str, str],
    *extra: str,
    host: str = "127.0.0.1",
    init: bool = False,
) -> list[str]:
    """The command line of a `securechat server` on `host`:`port` with `data` (and
    `--init`, when asked, for a new server); `extra` options last."""
    return [
        sys.executable,
        "-m",
        "securechat",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--data-dir",
        str(data),
        *(["--init"] if init else []),
        "--cert",
        cert_files["cert"],
        "--key",
        cert_files["key"],
        *extra,
    ]


class ServerProcess:
    """`python -m securechat server` on 127.0.0.1:`port`; ready when the constructor returns."""

    def __init__(self, port: int, data: Path, cert_files: dict[str, str], *extra: str) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            server_argv(port, data, cert_files, "--log-level", "warning", *extra, init=not data.exists()),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        banner = self.proc.stdout.readline()
        if not re.search(rf":{port} \(TLS\)", banner):
            self.proc.kill()
            raise AssertionError(banner + (self.proc.stderr.read() if self.proc.stderr else ""))

    def status(self, field: str) -> int:
        """A number from /proc/PID/status, e.g. "Threads" or "VmRSS" (KiB)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def kill9(self) -> None:
        self.proc.kill()  # SIGKILL: no shutdown code runs at all
        self.proc.wait(TIMEOUT)

    def stop(self) -> str:
        """SIGTERM, wait, and return what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        _, err = self.proc.communicate(timeout=TIMEOUT)
        return err
