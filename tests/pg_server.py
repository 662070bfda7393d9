"""A throwaway PostgreSQL server for tests: `PgServer.start()` makes a cluster in a
temporary directory and runs it on 127.0.0.1 at a free port (and on a unix socket in
that directory); `fresh_database` makes an empty database in it for one test.

The binaries (initdb, pg_ctl) come from `pg_config --bindir`, else the newest
/usr/lib/postgresql/*/bin; without them `PgServer.start` skips the calling test (Debian:
`apt-get install postgresql`). PostgreSQL refuses to run as root, so as root every
binary runs as the `postgres` user (runuser), in a directory chowned to it.

The cluster is for tests only: `fsync=off` (a crash of this machine may lose it, a
crash of the server does not, since commits still reach the OS before they return),
`synchronous_commit=on` (so a commit that returned is in the WAL the server replays
after `kill9` or an immediate stop).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

__all__ = ["PgServer", "drop_database", "find_bindir", "fresh_database"]

#: How long pg_ctl may take to start or stop the server before a test fails.
_PG_CTL_WAIT = 60


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are, or None if PostgreSQL is not installed."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    # Debian's server binaries live here, off PATH; the client package's pg_config may
    # point at /usr/bin, which has no initdb.
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0), reverse=True
    )
    candidates += [Path(p) for p in versions]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


def _free_port() -> int:
    # Bound and closed at once: another process could take it before the server does,
    # which fails `start` loudly (pg_ctl reports it), never silently.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One running test cluster. `dsn` reaches its `postgres` database over TCP as the
    superuser `postgres` (trust authentication); `dsn_for` names another database."""

    def __init__(self, bindir: Path, root: Path, port: int, as_postgres: bool) -> None:
        self.bindir = bindir
        self.root = root  # the temporary directory: data/ and the unix socket
        self.data = root / "data"
        self.port = port
        self._as_postgres = as_postgres
        #: Whether databases get an ICU collation (`fresh_database`); None until tried.
        self.icu: bool | None = None

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    @classmethod
    def start(cls) -> PgServer:
        """initdb a new cluster in a temporary directory and start it (pg_ctl -w).
        Skips the calling test if PostgreSQL is not installed."""
        bindir = find_bindir()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries not found (initdb, pg_ctl): apt-get install postgresql")
        as_postgres = os.geteuid() == 0
        root = Path(tempfile.mkdtemp(prefix="securechat-pg-"))
        if as_postgres:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(root, ignore_errors=True)
                pytest.skip("running as root, and there is no postgres user to run PostgreSQL as")
            os.chown(root, user.pw_uid, user.pw_gid)
        os.chmod(root, 0o700)
        server = cls(bindir, root, _free_port(), as_postgres)
        try:
            server._run(
                "initdb", "-D", str(server.data), "-A", "trust", "-U", "postgres", "--no-sync",
                "-E", "UTF8", "--locale=C",
            )  # fmt: skip
            with open(server.data / "postgresql.conf", "a", encoding="utf-8") as conf:
                conf.write(
                    "\n# securechat tests\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"port = {server.port}\n"
                    f"unix_socket_directories = '{root}'\n"
                    "fsync = off\n"
                    "synchronous_commit = on\n"
                    "full_page_writes = off\n"
                    "max_connections = 200\n"
                    "shared_buffers = 32MB\n"
                    "log_min_messages = warning\n"
                )
            server._pg_ctl_start()
        except BaseException:
            server._cleanup()
            raise
        return server

    def _command(self, program: str, *args: str) -> Sequence[str]:
        argv = [str(self.bindir / program), *args]
        return ["runuser", "-u", "postgres", "--", *argv] if self._as_postgres else argv

    def _run(self, program: str, *args: str) -> None:
        out = subprocess.run(
            self._command(program, *args),
            capture_output=True,
            text=True,
            timeout=_PG_CTL_WAIT + 30,
            cwd=self.root,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({out.returncode}): {out.stderr or out.stdout}"
            )

    def _pg_ctl_start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
            "-t", str(_PG_CTL_WAIT), "start",
        )  # fmt: skip

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid, or None if it is not running."""
        try:
            first = (self.data / "postmaster.pid").read_text().splitlines()[0]
        except (OSError, IndexError):
            return None
        return int(first)

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m `mode` ("smart", "fast" or "immediate": the last is a crash as
        far as the database is concerned; the next start replays the WAL)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(_PG_CTL_WAIT), "stop")

    def start_again(self) -> None:
        """Start the stopped (or killed) server again on the same port and directory."""
        self._pg_ctl_start()

    def kill9(self) -> None:
        """SIGKILL the postmaster, as a crash would, and wait until its backends have
        noticed and exited too (they watch the postmaster; a new one cannot start while
        they hold the shared memory). `start_again` then recovers from the WAL. Raises
        `RuntimeError` if it is not running, or if they outlive `_PG_CTL_WAIT`."""
        pid = self.postmaster_pid()
        if pid is None:
            raise RuntimeError("the PostgreSQL server is not running")
        family = [pid, *_children(pid)]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + _PG_CTL_WAIT
        while any(_alive(p) for p in family):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL processes {family} still alive after SIGKILL")
            time.sleep(0.01)  # polling /proc: there is nothing to wait on for a non-child
        # The postmaster was reparented (pg_ctl daemonizes it), so whoever reaps orphans
        # here reaps it, maybe late: until then its zombie keeps its pid, and a new
        # postmaster takes the stale lock files for a live server. They belong to a dead
        # one: remove them once it is certainly dead (above).
        reaped_by = time.monotonic() + 2.0
        while Path(f"/proc/{pid}").exists() and time.monotonic() < reaped_by:
            time.sleep(0.01)
        if Path(f"/proc/{pid}").exists():
            (self.data / "postmaster.pid").unlink(missing_ok=True)
            (self.root / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the server (immediate: nothing in it is kept) and delete its directory."""
        try:
            if self.postmaster_pid() is not None:
                self.stop("immediate")
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for status in glob.glob("/proc/[0-9]*/status"):
        try:
            text = Path(status).read_text()
        except OSError:
            continue  # gone meanwhile
        for line in text.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == pid:
                found.append(int(Path(status).parent.name))
                break
    return found


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not any(line.startswith("State:") and "Z" in line.split()[1] for line in text.splitlines())


def _admin_execute(server: PgServer, statement: str) -> None:
    import psycopg  # imported here: without the driver, only the tests that need it fail

    with psycopg.connect(server.dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(statement)  # type: ignore[arg-type]  # names are ours, quoted below


def fresh_database(server: PgServer, prefix: str = "t") -> str:
    """Create an empty database with a unique name in `server`; its DSN.

    Its default collation is ICU's en-US where the server has ICU (Debian's does): an
    order unlike bytes, so a query that forgets to compare keys bytewise (as SQLite
    does) shows up in the tests. Without ICU, the cluster's C collation.
    """
    name = f"{prefix}_{secrets.token_hex(6)}"
    if server.icu is not False:
        try:
            _admin_execute(
                server,
                f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                "LOCALE 'C'",
            )
            server.icu = True
            return server.dsn_for(name)
        except Exception:
            if server.icu:
                raise  # it worked before: this failure is something else
            server.icu = False
    _admin_execute(server, f'CREATE DATABASE "{name}"')
    return server.dsn_for(name)


def drop_database(server: PgServer, dsn: str) -> None:
    """Drop the database `dsn` names (made by `fresh_database`), closing whatever is
    still connected to it."""
    import psycopg

    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    _admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
