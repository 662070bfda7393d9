"""The live server under hostile load (slowloris, a frame fuzzer, while a pair chats) and
under a wall clock that jumps."""

from __future__ import annotations

import base64
import json
import random
import selectors
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from chat import TIMEOUT, Chatter, next_matching
from conftest import RawTls, StartServer
from whisper_helpers import login, memory_keys

from securechat import Client
from securechat.client.events import WhisperReceived
from securechat.protocol import WhisperStatus
from securechat.server import Server, ServerConfig


def test_hundreds_of_stalled_handshakes_neither_block_a_new_client_nor_outlive_the_deadline(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    server = start_server(handshake_timeout=2.0, max_per_ip=1000)
    stalled = []
    for i in range(300):
        # From three /24s other than the newcomer's, each within its budget of
        # connections not logged in yet (a quarter of max_per_ip).
        s = socket.create_connection(server.address, source_address=(f"127.0.{7 + i % 3}.2", 0))
        if i % 2:
            s.sendall(b"\x16\x03\x01\x02")  # the start of a ClientHello, then nothing
        stalled.append(s)
    assert server.wait_sessions_at_least(300, TIMEOUT)
    newcomer = Client("newcomer", context=client_ctx, port=server.address[1], timeout=1.0)
    newcomer.connect()  # within its 1 s timeout, despite 300 stalled peers
    # Every stalled connection is closed by the server at its deadline.
    with selectors.DefaultSelector() as sel:
        for s in stalled:
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + 2.0 + TIMEOUT
        open_ = set(stalled)
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                assert sock.recv(100) == b""
                sel.unregister(sock)
                open_.discard(sock)
        assert not open_, f"{len(open_)} stalled connections outlived the deadline"
    assert server.wait_sessions(1, TIMEOUT)
    newcomer.say("still fine")
    newcomer.close()
    for s in stalled:
        s.close()


# -- fuzzing ----------------------------------------------------------------------------

B64_32 = base64.b64encode(bytes(32)).decode()
B64_64 = base64.b64encode(bytes(64)).decode()
TEMPLATES: list[dict[str, object]] = [
    {"type": "hello", "version": 1, "nick": "fuzz"},
    {"type": "hello", "version": 1, "nick": "fuzz", "identity": B64_32},
    {"type": "say", "room": "#lobby", "text": "fuzz"},
    {"type": "who", "room": "#lobby"},
    {"type": "ping", "token": "t"},
    {"type": "pong", "token": "t"},
    {"type": "auth", "signature": B64_64},
    {"type": "fetch_keys", "nick": "alice"},
    {"type": "whisper", "to": "alice", "id": "m1", "header": B64_32, "ciphertext": B64_32},
    {"type": "ack", "id": "1"},
    {
        "type": "publish_keys",
        "identity": {"sig_key": B64_32, "dh_key": B64_32, "dh_sig": B64_64},
        "spk": {"id": 1, "created": 1, "public": B64_32, "signature": B64_64},
        "opks": [],
    },
    {"type": "message", "room": "#lobby", "nick": "x", "text": "forged", "ts": 1},
]
ODD_VALUES: list[object] = [
    None,
    True,
    -1,
    2**70,
    1e308,
    "",
    "\u202e\x1b[2J",
    "\ud800",
    [],
    {},
    [[[]]],
    "A" * 5000,
]


def mutate(rng: random.Random) -> bytes:
    """One line: a valid frame, a structurally mutated one, or corrupted bytes."""
    frame = json.loads(json.dumps(rng.choice(TEMPLATES)))
    choice = rng.random()
    if choice < 0.35:
        key = rng.choice(list(frame))
        frame[key] = rng.choice(ODD_VALUES)
    elif choice < 0.45:
        frame[rng.choice(["extra", "type", "nick", "text"])] = rng.choice(ODD_VALUES)
    elif choice < 0.5:
        frame = rng.choice(ODD_VALUES)
    line = json.dumps(frame).encode()
    if rng.random() < 0.25:
        data = bytearray(line)
        for _ in range(rng.randint(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        line = bytes(data).replace(b"\n", b" ")
    elif rng.random() < 0.03:
        line = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))).replace(b"\n", b"")
    return line + b"\n"


def fuzz_worker(
    address: tuple[str, int], ctx: ssl.SSLContext, seed: int, frames: int, sent: list[int]
) -> None:
    rng = random.Random(seed)
    count = 0
    conn: RawTls | None = None
    while count < frames:
        if conn is None:
            conn = RawTls(address, ctx)
        batch = [mutate(rng) for _ in range(min(50, frames - count))]
        token = f"sync{count}"
        try:
            conn.sock.sendall(b"".join(batch) + json.dumps({"type": "ping", "token": token}).encode() + b"\n")
            count += len(batch)
            # Read until our ping is answered or the server closes us (a fatal frame).
            while True:
                line = conn.read_line()
                if b'"pong"' in line and token.encode() in line:
                    break
        except (EOFError, OSError, ssl.SSLError):
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    sent.append(count)


def test_ten_thousand_fuzzed_frames_from_several_connections(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    # The fuzzers reconnect after every fatal frame and fail logins on purpose: this test is
    # about frames, so the per-prefix limits on connecting and failing are lifted.
    server = start_server(max_per_ip=100_000, login_failure_burst=1e9)
    alice = Client("alice", context=client_ctx, port=server.address[1])
    bob = Client("bob", context=client_ctx, port=server.address[1])
    alice.connect()
    bob.connect()
    baseline = threading.active_count()
    sent: list[int] = []
    with Chatter(alice, bob) as chatter:
        workers = [
            threading.Thread(target=fuzz_worker, args=(server.address, client_ctx, seed, 2500, sent))
            for seed in range(4)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert not any(w.is_alive() for w in workers)
        rounds_during = chatter.rounds
    assert sum(sent) == 10_000
    assert rounds_during > 0  # the pair kept talking throughout (Chatter raises if disturbed)
    assert server.wait_sessions(2, TIMEOUT)  # only alice and bob remain
    assert threading.active_count() == baseline  # every fuzz session's threads ended
    alice.close()
    bob.close()


@pytest.mark.parametrize("jump_days", [31, 365, -365])
def test_a_wall_clock_jump_of_up_to_a_year_neither_expires_queued_whispers_nor_keeps_them(
    jump_days: int, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    wall = [time.time()]
    mono = [0.0]  # the service clock's source: only moved by the test
    config = ServerConfig(port=0, linger=1.0, message_rate=0, data_dir=tmp_path / "data")
    server = Server(config, server_ctx, clock=lambda: wall[0], monotonic=lambda: mono[0])
    server.start()
    try:
        bob_keys = memory_keys("bob")
        login(server, client_ctx, "bob", bob_keys).close()  # registered, offline
        alice = login(server, client_ctx, "alice", memory_keys("alice"))
        kept = alice.whisper("bob", "wait for me")
        assert next_matching(alice, WhisperStatus, id=kept)
        wall[0] += jump_days * 86_400.0  # NTP step, a VM snapshot restored, a wrong RTC
        assert server.expire_queue() == 0
        mono[0] += config.queue_ttl - 1
        assert server.expire_queue() == 0
        mono[0] += 2  # now a queue_ttl of service has passed since it was queued
        assert server.expire_queue() == 1
        late = alice.whisper("bob", "queued after the jump")
        assert next_matching(alice, WhisperStatus, id=late)
        alice.close()
        bob = login(server, client_ctx, "bob", bob_keys, wait_published=False)
        got = bob.wait_for_any(WhisperReceived, TIMEOUT)
        assert isinstance(got, WhisperReceived) and got.msg_id == late
        bob.close()
    finally:
        server.stop()


# -- half lines ---------------------------------------------------------------------------


class Trickler:
    """Keeps a line from ever ending: one byte of it every `every` seconds, in a thread,
    until the server closes the connection. `frames` are what the server sent."""

    def __init__(self, conn: RawTls, every: float) -> None:
        self.conn = conn
        self.frames: list[dict[str, object]] = []
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def __enter__(self) -> Trickler:
        self.conn.sock.sendall(b'{"type":"say","text":"')  # the line begins, and never ends
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)

    def _trickle(self) -> None:
        # Pacing, not a hope about timing: each byte keeps the line alive a little longer.
        while not self._stop.wait(self._every):
            try:
                self.conn.sock.sendall(b"x")
            except OSError:
                return

    def frames_until_closed(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.conn.read_until_closed()]


def guest(server: Server, ctx: ssl.SSLContext, nick: str) -> RawTls:
    conn = RawTls(server.address, ctx)
    conn.send_line(json.dumps({"type": "hello", "version": 1, "nick": nick}))
    assert conn.read_json()["type"] == "welcome"
    return conn


def test_a_line_trickled_byte_by_byte_is_cut_off_at_the_line_timeout(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    # Reproduced: a connection parked on an incomplete line stayed up for ever by sending
    # a byte now and then, holding its buffers. Now the line must end within `line_timeout`.
    server = start_server(line_timeout=0.5)
    with Trickler(guest(server, client_ctx, "slow"), every=0.05) as trickler:
        frames = trickler.frames_until_closed()
    assert frames[-1] == {
        "type": "error",
        "code": "timeout",
        "reason": "a line took too long to arrive",
        "fatal": True,
        "ref": "",
    }
    assert server.wait_sessions(0, TIMEOUT)
    trickler.conn.close()


def test_keepalive_counts_only_complete_frames(start_server: StartServer, client_ctx: ssl.SSLContext) -> None:
    # Bytes of a line that never ends are not a sign of life: the peer is pinged, and
    # dropped when no answer (a complete frame) comes.
    server = start_server(ping_interval=0.3, ping_timeout=0.3, line_timeout=3600)
    with Trickler(guest(server, client_ctx, "mute"), every=0.05) as trickler:
        frames = trickler.frames_until_closed()
    assert [f["type"] for f in frames] == ["ping", "error"]
    assert frames[-1]["reason"] == "no answer to ping"
    trickler.conn.close()


def test_the_expiry_sweep_releases_rooms_whose_owner_was_away_for_the_nick_ttl(
    server_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    from securechat.server.store import StoredRoom

    mono = [0.0]  # the service clock's source: only moved by the test
    config = ServerConfig(port=0, data_dir=tmp_path / "data", autojoin=("#lobby",))
    first = Server(config, server_ctx, monotonic=lambda: mono[0])
    first.start()
    first.store.register("alice", b"a" * 32, time.time())
    for name in ("#dev", "#lobby"):
        first.store.register_room(StoredRoom(name, b"a" * 32))
    first.store.append_history([("#dev", "alice", "old", 1.0), ("#lobby", "alice", "kept", 1.0)], keep=5)
    first.stop()
    server = Server(config, server_ctx, monotonic=lambda: mono[0])  # loads the registered rooms
    server.start()
    try:
        assert server.expire_rooms() == []
        mono[0] += config.nick_ttl + 1
        assert sorted(server.expire_rooms()) == ["#dev", "#lobby"]
        assert server.store.registered_rooms() == []
        assert [r.room for r in server.hub.list_rooms("").rooms] == ["#lobby"]  # #dev was empty: gone
        assert server.store.recent_history("#dev", 5) == []
        assert [text for _, text, _ in server.store.recent_history("#lobby", 5)] == ["kept"]
    finally:
        server.stop()
