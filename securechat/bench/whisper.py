"""The `whisper` scenario: what end-to-end encryption adds to a round trip, and what it costs.

Two measurements:

* Round trips through a real server with the real client library: a pair of identity
  users plays ping-pong, first with room lines (plain), then with whispers (encrypted,
  stored, acknowledged). The difference of the medians is what a whisper adds.
* The crypto alone, without a network: one whisper's encryption plus its decryption
  (with the Double Ratchet's DH step a ping-pong causes on every message), against
  the raw `cryptography` primitives that step needs at the very least, timed in the
  same run.
"""

from __future__ import annotations

import os
import secrets
import selectors
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..client import Client
from ..client.events import WhisperReceived
from ..client.inbox import MemoryStorage
from ..client.keystore import Keystore
from ..client.whispers import WhisperKeys
from ..e2e.conversations import Conversations
from ..e2e.identity import Identity
from ..protocol import Message, PrekeyCount
from ..transport import client_context
from .stats import LatencySummary, median_seconds, summarize

__all__ = ["CryptoCost", "WhisperResult", "crypto_cost", "identity_client", "whisper"]

_TEXT = "0123456789 abcdefghij klmnopqrst"  # a short chat line


@dataclass(frozen=True)
class CryptoCost:
    whispers: int
    #: Median microseconds to encrypt one whisper and decrypt it (DH ratchet step included).
    us_per_whisper: float
    #: Median microseconds of one X25519 exchange, measured in the same run.
    x25519_us: float
    #: The least a ping-pong whisper needs: 3 X25519 operations (the receiver's two
    #: exchanges and its new key pair), 4 HKDF (two root-key steps, and a message key
    #: on each side), 4 HMAC (chain steps), one AEAD seal and one open.
    primitives_us: float
    ratio: float


@dataclass(frozen=True)
class WhisperResult:
    rounds: int
    keys: str  # "memory" or "disk"
    plain_rtt: LatencySummary
    whisper_rtt: LatencySummary
    #: Whispered minus plain median round trip: encryption, the durable queue, acks.
    added_p50_ms: float
    #: Of that, the encryption itself: two whispers' encrypt+decrypt (see `crypto`).
    encryption_ms_per_round_trip: float
    crypto: CryptoCost


def _median_us(fn: Callable[[], object], n: int) -> float:
    return median_seconds(fn, n) * 1e6


def crypto_cost(whispers: int = 400) -> CryptoCost:
    """Time the e2e layer's ping-pong against the raw primitives it is built from."""
    alice = Conversations(Identity.generate("alice"))
    bob = Conversations(Identity.generate("bob"))
    bob.bundle_to_publish()
    alice.start_session("bob", bob.secrets.bundle(bob.identity, sorted(bob.secrets.opks)[:1]))
    parties = [(alice, "alice", bob, "bob"), (bob, "bob", alice, "alice")]
    samples = []
    for i in range(whispers):
        sender, sender_name, receiver, receiver_name = parties[i % 2]
        t = time.perf_counter()
        header, ciphertext = sender.encrypt(receiver_name, _TEXT.encode())
        receiver.decrypt(sender_name, header, ciphertext)
        samples.append(time.perf_counter() - t)
    us = statistics.median(samples[10:]) * 1e6  # after the X3DH start

    key = X25519PrivateKey.generate()
    peer = X25519PrivateKey.generate().public_key()
    x25519 = _median_us(lambda: key.exchange(peer), 500)
    keygen = _median_us(lambda: X25519PrivateKey.generate().public_key(), 500)
    secret = os.urandom(32)
    hkdf = _median_us(
        lambda: HKDF(algorithm=hashes.SHA256(), length=64, salt=secret, info=b"x").derive(secret), 500
    )

    def mac() -> bytes:
        h = hmac.HMAC(secret, hashes.SHA256())
        h.update(b"\x01")
        return h.finalize()

    hmac_us = _median_us(mac, 500)
    nonce = os.urandom(12)
    sealed = ChaCha20Poly1305(secret).encrypt(nonce, _TEXT.encode(), b"aad")
    seal = _median_us(lambda: ChaCha20Poly1305(secret).encrypt(nonce, _TEXT.encode(), b"aad"), 500)
    opened = _median_us(lambda: ChaCha20Poly1305(secret).decrypt(nonce, sealed, b"aad"), 500)
    primitives = 2 * x25519 + keygen + 4 * hkdf + 4 * hmac_us + seal + opened
    return CryptoCost(whispers, us, x25519, primitives, us / primitives)


def identity_client(host: str, port: int, ctx: ssl.SSLContext, nick: str, keys_dir: str) -> Client:
    """A logged-in identity user whose keys live in memory, or (with `keys_dir`) in a new
    keystore there, written to disk at every ratchet step as a real client's are."""
    if keys_dir:
        keys = WhisperKeys.in_keystore(Keystore.create(Path(keys_dir) / nick, None), nick)
    else:
        keys = WhisperKeys(Conversations(Identity.generate(nick)), MemoryStorage())
    client = Client(nick, host=host, port=port, context=ctx, keys=keys, timeout=30.0)
    client.connect()
    while True:  # until the server holds our prekeys, so the peer can start a session
        status = client.wait_for(PrekeyCount, 30.0)
        assert isinstance(status, PrekeyCount)
        if status.count > 0 and status.spk_id > 0:
            return client


def _respond(host: str, port: int, cafile: str | None, nick: str, peer: str, keys_dir: str) -> None:
    """The other end (run as `python -m securechat.bench.whisper`): log in, print "ready",
    then echo each ping from `peer` back the way it came, until terminated."""
    client = identity_client(host, port, client_context(cafile), nick, keys_dir)
    print("ready", flush=True)
    while True:
        item = client.next_event()
        if isinstance(item, Message) and item.nick == peer and item.text.startswith("ping"):
            client.say("pong" + item.text[4:])
        elif isinstance(item, WhisperReceived) and item.text.startswith("ping"):
            client.whisper(peer, "pong" + item.text[4:])


def whisper(
    host: str, port: int, cafile: str | None, *, rounds: int, keys_on_disk: bool = False, warmup: int = 10
) -> WhisperResult:
    """`rounds` plain and `rounds` whispered round trips between two new identity users.

    The answering user runs in a process of its own, as it would on another machine
    (in one process the two clients would contend for one interpreter lock). Keys are
    kept in memory, or with `keys_on_disk` in keystores in a temporary directory (every
    ratchet step then waits for the disk, as in the real client). Registers two fresh
    nicks (`wbench-...`) on the server. Raises `TimeoutError`, `ConnectionError` or
    `RuntimeError` if a round trip or the other end fails.
    """
    with tempfile.TemporaryDirectory(prefix="securechat-whisper-") as tmp:
        return _whisper(host, port, cafile, rounds, tmp if keys_on_disk else "", warmup)


def _whisper(
    host: str, port: int, cafile: str | None, rounds: int, keys_dir: str, warmup: int
) -> WhisperResult:
    tag = secrets.token_hex(3)
    nick_a, nick_b = f"wbench-a-{tag}", f"wbench-b-{tag}"
    a = identity_client(host, port, client_context(cafile), nick_a, keys_dir)
    other = subprocess.Popen(  # noqa: S603 -- our own interpreter and module
        [sys.executable, "-m", __name__, host, str(port), cafile or "", nick_b, nick_a, keys_dir],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(other.stdout, selectors.EVENT_READ)
            if not sel.select(60) or other.stdout.readline().strip() != "ready":
                raise RuntimeError("the answering client did not log in")
        n = rounds + warmup
        plain = _round_trips(a, n, lambda text: a.say(text), Message, nick_b)
        private = _round_trips(a, n, lambda text: a.whisper(nick_b, text), WhisperReceived, nick_b)
    finally:
        other.terminate()
        other.wait(10)
        a.close()
    plain_s = summarize(plain[warmup:])
    whisper_s = summarize(private[warmup:])
    crypto = crypto_cost()
    return WhisperResult(
        rounds,
        "disk" if keys_dir else "memory",
        plain_s,
        whisper_s,
        (whisper_s.p50 - plain_s.p50) * 1e3,
        2 * crypto.us_per_whisper / 1e3,
        crypto,
    )


def _round_trips(
    client: Client, count: int, send: Callable[[str], object], answer: type[object], peer: str
) -> list[float]:
    times = []
    for i in range(count):
        expected = f"pong {i} {_TEXT}"
        start = time.perf_counter()
        send(f"ping {i} {_TEXT}")
        while True:
            item = client.wait_for_any(answer, 30.0)
            sender = item.nick if isinstance(item, Message) else getattr(item, "sender", "")
            if sender == peer and getattr(item, "text", None) == expected:
                break
        times.append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    _host, _port, _cafile, _nick, _peer, _keys_dir = sys.argv[1:7]
    _respond(_host, int(_port), _cafile or None, _nick, _peer, _keys_dir)
