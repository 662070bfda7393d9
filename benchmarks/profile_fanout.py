"""Where a room line's fan-out spends its time: the server's hot path under cProfile.

Starts a server in this process, connects CLIENTS benchmark clients from a child
process (they only read), then broadcasts LINES room lines one at a time, as the
`steady` scenario does, and reports the broadcasting thread's CPU per delivery and
the functions it spent it in.

    python benchmarks/profile_fanout.py [--clients 200] [--lines 200] [--no-profile]

`--no-profile` measures only, without cProfile: the quickest before/after comparison of
a change to the fan-out (run the old code with PYTHONPATH pointing at a worktree of it).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from securechat.certs import make_certs
from securechat.server import Server
from securechat.server.config import ServerConfig
from securechat.transport import server_context

_READERS = """
import sys
from securechat.bench.dialects import SecureChat
from securechat.bench.loadgen import Loop, Marker, connect
from securechat.transport import client_context
host, port, cafile, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
loop = Loop([], Marker())
for i in range(count):
    loop.add(connect(host, port, client_context(cafile), SecureChat(), i, f"reader{i}"))
    loop.pump()
print("ready", flush=True)
while True:
    loop.pump(0.5)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--no-profile", action="store_true", help="measure only, without cProfile")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="securechat-profile-") as tmp:
        work = Path(tmp)
        paths, _ = make_certs(work / "certs", ["localhost", "127.0.0.1"])
        config = ServerConfig(
            host="127.0.0.1", port=0, data_dir=work / "data", message_rate=0, max_per_ip=10**6
        )
        server = Server(config, server_context(paths.cert, paths.key))
        server.start()
        host, port = server.address
        readers = subprocess.Popen(  # noqa: S603 -- our own interpreter and code
            [sys.executable, "-c", _READERS, host, str(port), str(paths.ca), str(args.clients)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert readers.stdout is not None
            if readers.stdout.readline().strip() != "ready":
                raise RuntimeError("the reading clients did not connect")
            server.hub.flush_presence()
            cpu = 0.0
            for i in range(args.lines):  # first measured without the profiler
                start = time.thread_time()
                server.hub.say("reader0", "#lobby", f"line {i} of the profile, about as long as a chat line")
                cpu += time.thread_time() - start
                threading.Event().wait(0.01)  # lines spaced out, as in `steady`
            profile = cProfile.Profile()
            for i in range(0 if args.no_profile else args.lines):  # then again under it
                profile.enable()
                server.hub.say("reader0", "#lobby", f"line {i} of the profile, about as long as a chat line")
                profile.disable()
                threading.Event().wait(0.01)
        finally:
            readers.kill()
            readers.wait()
            server.stop()
    deliveries = args.lines * args.clients
    print(f"{args.clients} clients, {args.lines} lines: {cpu / deliveries * 1e6:.2f} us of CPU per delivery")
    if args.no_profile:
        return 0
    print("Under cProfile (its overhead inflates the times; the split is what matters):")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(12)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
