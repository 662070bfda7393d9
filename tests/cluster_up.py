"""`make cluster`: a 3-node securechat cluster on this machine, to try one out.

Starts a throwaway PostgreSQL (initdb + pg_ctl, as the tests do: pg_server.py) and a
`redis-server` (redis_server.py), then three `securechat server` nodes on 127.0.0.1 at
ports BASE, BASE+1, BASE+2 (BASE: $CLUSTER_PORT, default 7001) sharing them; prints how
to connect; Ctrl-C stops everything and removes the engines' files. For a real
deployment (your own PostgreSQL and Redis, one node per machine), see
docs/operations.md, "A cluster".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # the engines' helpers skip through pytest when a binary is missing
from pg_server import PgServer, fresh_database
from redis_server import RedisServer

NODES = 3


def main() -> int:
    base = int(os.environ.get("CLUSTER_PORT", "7001"))
    certs = Path("certs")
    if not (certs / "server.pem").is_file():
        print("no certs/server.pem: run `make certs` first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="securechat-cluster-"))
    try:
        pg = PgServer.start()
        redis = RedisServer.start(work / "redis")
    except pytest.skip.Exception as exc:
        print(f"cannot start the engines: {exc}", file=sys.stderr)
        return 2
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        dsn = fresh_database(pg, "securechat")
        for n in range(NODES):
            nodes.append(
                subprocess.Popen(
                    [
                        sys.executable, "-m", "securechat", "server",
                        "--host", "127.0.0.1", "--port", str(base + n),
                        "--cert", str(certs / "server.pem"), "--key", str(certs / "server.key"),
                        "--data-dir", str(work / f"node{n + 1}"), "--init",
                        "--store", dsn, "--cluster", redis.url,
                    ]
                )
            )  # fmt: skip
        print(
            f"\nA {NODES}-node cluster: PostgreSQL ({dsn}), Redis ({redis.url}), nodes on "
            f"127.0.0.1:{base}-{base + NODES - 1}. Connect to any, e.g.\n"
            f"  .venv/bin/securechat client --nick alice --port {base}\n"
            f"  .venv/bin/securechat client --nick bob --port {base + 1}\n"
            "Ctrl-C stops it all.\n",
            flush=True,
        )
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(30)
        redis.stop()
        pg.close()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
