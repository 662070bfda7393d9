"""The `relay` scenario: whispers stored durably and relayed between many pairs.

It measures the server, not the clients' cryptography. The relay cannot read a whisper,
so the generator sends well-formed opaque ones (random header and ciphertext of a real
whisper's size, each with its own message id) and its recipients acknowledge each
delivery as read without decrypting it. Every pair is two identity users (a whisper
needs a registered recipient), logged in with their own keys.

Each sender keeps `window` whispers waiting for their `stored`, and sends the next one
as each `stored` arrives; a whisper is done when its sender hears `delivered` (the
recipient's ack reached the server, which deleted it from the queue). One thread drives
every socket with a selector, as the other scenarios do, and frames are pre-encoded
before the clock starts. Nothing here prints.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..e2e.identity import Identity
from ..e2e.login import login_message
from ..protocol import (
    NEED_DATA,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Challenge,
    Connection,
    Error,
    Event,
    Hello,
    PrekeyCount,
    Role,
    Whisper,
    encode,
)
from .dialects import LoginRefused, connect_socket
from .procfs import loadavg, sample
from .stats import LatencySummary, summarize

__all__ = ["RelayResult", "relay"]

#: A whisper's header and ciphertext as the real client makes them for a short chat line
#: (bytes before base64): the ratchet header with its DH key, and the sealed JSON text.
HEADER_BYTES = 72
CIPHERTEXT_BYTES = 64

_CHUNK = 256 * 1024


@dataclass(frozen=True)
class RelayResult:
    pairs: int
    whispers: int  # asked for in all
    stored: int  # `stored` answers received
    delivered: int  # `delivered` statuses received (the recipient's ack went through)
    refused: int  # whispers refused (store-unavailable, a quota): none in a good run
    seconds: float  # from the first whisper sent to the last `delivered`
    whispers_per_s: float  # delivered / seconds
    #: Server CPU (user + system, from /proc) per delivered whisper, when its pid is known.
    server_cpu_us_per_whisper: float | None
    #: The generator's own CPU over the same time: near `seconds` means it was the limit.
    generator_cpu_s: float
    stored_latency: LatencySummary  # whisper sent -> its `stored` answer
    delivered_latency: LatencySummary  # whisper sent -> its `delivered` status
    load_before: float | None
    load_after: float | None


@dataclass
class _Peer:
    nick: str
    sock: ssl.SSLSocket | socket.socket
    out: bytearray = field(default_factory=bytearray)
    tail: bytes = b""
    closed: bool = False
    # A sender's side: its pre-encoded whispers, the next to send, and when each went.
    frames: list[bytes] = field(default_factory=list)
    next: int = 0
    in_flight: int = 0
    sent_at: dict[str, int] = field(default_factory=dict)  # until `delivered`
    unstored: dict[str, int] = field(default_factory=dict)  # the same, until `stored`


def _login(host: str, port: int, ctx: ssl.SSLContext | None, nick: str, timeout: float) -> _Peer:
    """An identity user logged in with a new key, switched to non-blocking. Raises
    `LoginRefused`, `OSError` or `ssl.SSLError`."""
    identity = Identity.generate(nick)
    sock = connect_socket(host, port, ctx, timeout)
    conn = Connection(Role.CLIENT)

    def expect(kind: type[Event]) -> Event:
        while True:
            event = conn.next_event()
            if isinstance(event, Error):
                raise LoginRefused(f"{nick}: login refused: {event.code}: {event.reason}")
            if isinstance(event, kind):
                return event
            if isinstance(event, Event):
                continue
            if event is not NEED_DATA:
                raise LoginRefused(f"{nick}: the server closed the connection during login")
            data = sock.recv(65536)
            if not data:
                raise LoginRefused(f"{nick}: the server closed the connection during login")
            conn.receive_data(data)

    try:
        sock.sendall(conn.send(Hello(version=PROTOCOL_VERSION, nick=nick, identity=identity.sig_key)))
        challenge = expect(Challenge)
        assert isinstance(challenge, Challenge)
        proof = identity.sign(login_message(nick, challenge.nonce, identity.sig_key))
        sock.sendall(conn.send(Auth(signature=proof)))
        expect(PrekeyCount)  # after the welcome: the login is complete
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return _Peer(nick, sock)


def relay(
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    *,
    pairs: int,
    whispers: int,
    window: int = 8,
    server_pid: int | None = None,
    timeout: float = 120.0,
    progress: Callable[[int, int], None] | None = None,
) -> RelayResult:
    """`whispers` opaque whispers in all, spread evenly over `pairs` sender -> recipient
    pairs of new identity users (`rbench-...` nicks, registered on the server), each
    sender keeping `window` waiting for `stored`. `progress(done, total)` is called about
    twice a second. Raises `LoginRefused`, `OSError`, `ssl.SSLError`, or `TimeoutError`
    when not every whisper is delivered within `timeout` of the first.
    """
    tag = os.urandom(3).hex()
    senders = [_login(host, port, ctx, f"rbench-s{i}-{tag}", 30.0) for i in range(pairs)]
    recipients = [_login(host, port, ctx, f"rbench-r{i}-{tag}", 30.0) for i in range(pairs)]
    try:
        return _run(senders, recipients, whispers, window, server_pid, timeout, progress)
    finally:
        for peer in senders + recipients:
            peer.sock.close()


def _run(
    senders: list[_Peer],
    recipients: list[_Peer],
    whispers: int,
    window: int,
    server_pid: int | None,
    timeout: float,
    progress: Callable[[int, int], None] | None,
) -> RelayResult:
    pairs = len(senders)
    for i, (sender, recipient) in enumerate(zip(senders, recipients, strict=True)):
        count = whispers // pairs + (1 if i < whispers % pairs else 0)
        sender.frames = [
            encode(
                Whisper(
                    to=recipient.nick,
                    id=f"r{n}",
                    header=os.urandom(HEADER_BYTES),
                    ciphertext=os.urandom(CIPHERTEXT_BYTES),
                )
            )
            for n in range(count)
        ]
    total = sum(len(s.frames) for s in senders)
    role = {id(p.sock): p for p in senders + recipients}
    is_sender = {id(s) for s in senders}
    stored_lat: list[float] = []
    delivered_lat: list[float] = []
    counts = {"stored": 0, "delivered": 0, "refused": 0}
    sel = selectors.DefaultSelector()
    writing: set[int] = set()
    for peer in senders + recipients:
        sel.register(peer.sock, selectors.EVENT_READ, peer)

    def top_up(s: _Peer) -> None:
        now = time.perf_counter_ns()
        while s.in_flight < window and s.next < len(s.frames):
            s.out += s.frames[s.next]
            s.sent_at[f"r{s.next}"] = now
            s.unstored[f"r{s.next}"] = now
            s.next += 1
            s.in_flight += 1

    def handle(peer: _Peer, lines: bytes) -> None:
        now = time.perf_counter_ns()
        for line in lines.splitlines():
            if b'"whisper_status"' in line and id(peer) in is_sender:
                frame = json.loads(line)
                msg_id = frame["id"]
                # "delivered" may overtake "stored": the push to the recipient, its ack
                # and the status run on other threads than the sender's answer.
                if frame["status"] == "stored" and msg_id in peer.unstored:
                    counts["stored"] += 1
                    stored_lat.append((now - peer.unstored.pop(msg_id)) / 1e9)
                    peer.in_flight -= 1
                    top_up(peer)
                elif frame["status"] == "delivered" and msg_id in peer.sent_at:
                    counts["delivered"] += 1
                    delivered_lat.append((now - peer.sent_at.pop(msg_id)) / 1e9)
            elif b'"delivery"' in line:
                frame = json.loads(line)
                peer.out += encode(Ack(id=frame["id"]))
            elif b'"error"' in line:
                # A refused whisper (store-unavailable, a quota) names itself in `ref`: it is
                # done, and a good run has none.
                frame = json.loads(line)
                counts["refused"] += 1
                if peer.unstored.pop(frame.get("ref", ""), None) is not None:
                    peer.sent_at.pop(frame["ref"], None)
                    peer.in_flight -= 1
                    top_up(peer)

    def read(peer: _Peer) -> None:
        chunks = [peer.tail]
        while True:
            try:
                data = peer.sock.recv(_CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            except OSError:
                data = b""
            if not data:
                peer.closed = True
                sel.unregister(peer.sock)
                break
            chunks.append(data)
            if not isinstance(peer.sock, ssl.SSLSocket) or not peer.sock.pending():
                break
        buf = b"".join(chunks)
        end = buf.rfind(b"\n") + 1
        peer.tail = buf[end:]
        if end:
            handle(peer, buf[:end])

    def write(peer: _Peer) -> None:
        try:
            sent = peer.sock.send(peer.out[:65536])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            return
        except OSError:
            peer.closed = True
            return
        del peer.out[:sent]

    load_before = loadavg()
    cpu_before = sample(server_pid).cpu_seconds if server_pid is not None else None
    own_before = time.process_time()
    start = time.monotonic()
    deadline = start + timeout
    next_progress = start
    for s in senders:
        top_up(s)
    while counts["delivered"] + counts["refused"] < total:
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"only {counts['delivered']} of {total} whispers delivered in {timeout:.0f} s")
        if progress is not None and now >= next_progress:
            progress(counts["delivered"], total)
            next_progress = now + 0.5
        for peer in senders + recipients:
            if peer.out and not peer.closed:
                write(peer)
                if peer.out and id(peer.sock) not in writing:
                    writing.add(id(peer.sock))
                    sel.modify(peer.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, peer)
                elif not peer.out and id(peer.sock) in writing:
                    writing.discard(id(peer.sock))
                    sel.modify(peer.sock, selectors.EVENT_READ, peer)
        if all(p.closed for p in senders + recipients):
            break
        for key, mask in sel.select(timeout=min(0.25, deadline - now)):
            peer = role[id(key.fileobj)]
            if mask & selectors.EVENT_READ:
                read(peer)
    seconds = time.monotonic() - start
    cpu_after = sample(server_pid).cpu_seconds if server_pid is not None else None
    own = time.process_time() - own_before
    sel.close()
    if progress is not None:
        progress(counts["delivered"], total)
    delivered = counts["delivered"]
    return RelayResult(
        pairs=pairs,
        whispers=total,
        stored=counts["stored"],
        delivered=delivered,
        refused=counts["refused"],
        seconds=seconds,
        whispers_per_s=delivered / seconds if seconds > 0 else 0.0,
        server_cpu_us_per_whisper=(
            (cpu_after - cpu_before) / max(1, delivered) * 1e6
            if cpu_before is not None and cpu_after is not None
            else None
        ),
        generator_cpu_s=own,
        stored_latency=summarize(stored_lat or [0.0]),
        delivered_latency=summarize(delivered_lat or [0.0]),
        load_before=load_before,
        load_after=loadavg(),
    )
