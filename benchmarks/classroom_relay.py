"""The floor: a chat relay of the classic classroom kind, kept for comparison only.

A thread per client; each thread does `recv(1024)` and sends whatever came to every
other client, under one lock. No TLS, no framing, no limits, no names: it shows what
moving bytes between Python threads costs when nothing else is done. Because it relays
arbitrary 1024-byte chunks, a line from one sender can be cut in two and another
sender's bytes land in the middle; the benchmark counts only intact lines.

    python benchmarks/classroom_relay.py PORT
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading

clients: list[socket.socket] = []
lock = threading.Lock()


def serve(conn: socket.socket) -> None:
    try:
        while data := conn.recv(1024):
            with lock:
                for other in clients:
                    if other is not conn:
                        with contextlib.suppress(OSError):  # that client's own thread will notice
                            other.sendall(data)
    except OSError:
        pass
    finally:
        with lock:
            clients.remove(conn)
        conn.close()


def main() -> None:
    port = int(sys.argv[1])
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    print(f"relay listening on 127.0.0.1:{port}", flush=True)
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # a connection aborted while queued: the next one
            continue
        with lock:  # no relayed bytes can reach `conn` before the greeting
            try:
                conn.sendall(b"* welcome\n")  # tells the client it is now among the recipients
            except OSError:
                # Gone before its greeting (reset while it waited in the backlog). Before,
                # this ended the accept loop, and every later client was refused.
                conn.close()
                continue
            clients.append(conn)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
