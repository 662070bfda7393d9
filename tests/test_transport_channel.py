from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import pytest
import trustme

from securechat.transport import TlsChannel, client_context

WAIT = 10.0


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


@pytest.fixture
def pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Iterator[tuple[TlsChannel, TlsChannel]]:
    a, b = socket.socketpair()
    server = TlsChannel(a, server_ctx, server_side=True)
    client = TlsChannel(b, client_ctx, server_side=False, server_hostname="localhost")
    thread, result = in_thread(server.handshake)
    client.handshake()
    thread.join(WAIT)
    assert result == [None]
    yield server, client
    server.close()
    client.close()


def recv_exactly(channel: TlsChannel, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = channel.recv()
        assert chunk, "closed early"
        data += chunk
    return data


def test_handshake_negotiates_tls13_and_moves_data(pair: tuple[TlsChannel, TlsChannel]) -> None:
    server, client = pair
    assert server.version() == client.version() == "TLSv1.3"
    client.send(b"ping\n")
    assert recv_exactly(server, 5) == b"ping\n"
    server.send(b"pong\n")
    assert recv_exactly(client, 5) == b"pong\n"


def test_full_duplex_from_two_threads_per_side_keeps_every_byte(pair: tuple[TlsChannel, TlsChannel]) -> None:
    # The point of TlsChannel: one thread reads while another writes, both ways at
    # once. Corrupted ordering would show up as a TLS MAC failure or a wrong digest.
    server, client = pair
    size = 4 * 1024 * 1024
    payload_c, payload_s = os.urandom(size), os.urandom(size)

    def send_chunks(channel: TlsChannel, payload: bytes) -> None:
        for i in range(0, size, 50_000):
            channel.send(payload[i : i + 50_000])

    readers = [
        in_thread(lambda ch=ch: hashlib.sha256(recv_exactly(ch, size)).digest()) for ch in (server, client)
    ]
    writers = [
        in_thread(lambda: send_chunks(client, payload_c)),
        in_thread(lambda: send_chunks(server, payload_s)),
    ]
    for thread, _ in readers + writers:
        thread.join(60)
    assert readers[0][1] == [hashlib.sha256(payload_c).digest()]
    assert readers[1][1] == [hashlib.sha256(payload_s).digest()]


def test_finish_sending_gives_the_peer_a_clean_end(pair: tuple[TlsChannel, TlsChannel]) -> None:
    server, client = pair
    server.send(b"last words\n")
    server.finish_sending()
    assert recv_exactly(client, 11) == b"last words\n"
    assert client.recv() == b""
    client.send(b"still heard\n")  # half-closed: the server can still read
    assert recv_exactly(server, 12) == b"still heard\n"


def test_shutdown_wakes_a_blocked_recv(pair: tuple[TlsChannel, TlsChannel]) -> None:
    server, _ = pair
    thread, result = in_thread(server.recv)
    server.shutdown()
    thread.join(WAIT)
    assert result == [b""]


def test_peer_hanging_up_without_close_notify_reads_as_end_of_stream(
    pair: tuple[TlsChannel, TlsChannel],
) -> None:
    server, client = pair
    client.socket.shutdown(socket.SHUT_WR)  # a TCP FIN with no TLS close_notify
    assert server.recv() == b""


def handshake_both(
    server_ctx: ssl.SSLContext, client: ssl.SSLContext, hostname: str
) -> tuple[object, object]:
    a, b = socket.socketpair()
    s = TlsChannel(a, server_ctx, server_side=True)
    c = TlsChannel(b, client, server_side=False, server_hostname=hostname)

    def serve() -> None:
        try:
            s.handshake()
        finally:
            s.shutdown()  # as the server's session does, so the client is not left waiting

    thread, server_result = in_thread(serve)
    try:
        c.handshake()
        client_result: object = None
    except Exception as exc:
        client_result = exc
        c.close()
    thread.join(WAIT)
    s.close()
    c.close()
    return client_result, server_result[0]


def test_client_refuses_a_server_signed_by_another_ca(server_ctx: ssl.SSLContext, tmp_path: object) -> None:
    other = trustme.CA()
    ctx = ssl.create_default_context()
    other.configure_trust(ctx)
    client_err, _ = handshake_both(server_ctx, ctx, "localhost")
    assert isinstance(client_err, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in client_err.verify_message


def test_client_refuses_a_certificate_for_another_host(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    client_err, _ = handshake_both(server_ctx, client_ctx, "evil.example")
    assert isinstance(client_err, ssl.SSLCertVerificationError)
    assert "mismatch" in client_err.verify_message.lower()


def test_server_refuses_tls_older_than_1_2(server_ctx: ssl.SSLContext, cert_files: dict[str, str]) -> None:
    old = ssl.create_default_context(cafile=cert_files["ca"])
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with pytest.warns(DeprecationWarning):
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    client_err, server_err = handshake_both(server_ctx, old, "localhost")
    assert isinstance(client_err, ssl.SSLError)
    assert isinstance(server_err, (ssl.SSLError, ConnectionError))


def test_server_refuses_cbc_and_non_forward_secret_tls12_suites(
    server_ctx: ssl.SSLContext, cert_files: dict[str, str]
) -> None:
    weak = ssl.create_default_context(cafile=cert_files["ca"])
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-SHA:AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA")
    client_err, server_err = handshake_both(server_ctx, weak, "localhost")
    assert isinstance(client_err, (ssl.SSLError, ConnectionError))  # refused: no alert, just closed
    assert isinstance(server_err, ssl.SSLError) and "NO_SHARED_CIPHER" in str(server_err)


def test_tls12_with_a_modern_suite_still_works(
    server_ctx: ssl.SSLContext, cert_files: dict[str, str]
) -> None:
    ctx = client_context(cert_files["ca"])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client_err, server_err = handshake_both(server_ctx, ctx, "localhost")
    assert client_err is None and server_err is None


def test_plaintext_peer_gets_nothing_back(server_ctx: ssl.SSLContext) -> None:
    a, b = socket.socketpair()
    server = TlsChannel(a, server_ctx, server_side=True)
    b.sendall(b'{"type":"hello","version":1,"nick":"alice"}\n')
    with pytest.raises(ssl.SSLError):
        server.handshake()
    server.close()
    b.settimeout(WAIT)
    assert b.recv(100) == b""  # no alert, no bytes: just a closed connection
    b.close()


def test_client_context_always_verifies() -> None:
    ctx = client_context(None)
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2


def test_send_now_keeps_order_when_the_socket_fills_up(pair: tuple[TlsChannel, TlsChannel]) -> None:
    # The peer reads nothing at first, so the socket buffers fill: send_now must keep
    # the part the kernel refused as a backlog, refuse further sends while it waits,
    # and a blocking send must push the backlog out first. The peer then sees every
    # byte in order (a reordered TLS record would fail its authentication).
    server, client = pair
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    chunk = os.urandom(32 * 1024)
    sent_now = []
    while True:
        accepted = server.send_now(chunk)
        if not accepted:
            break
        sent_now.append(chunk)
        assert len(sent_now) < 10_000, "the socket never filled"
    assert server.backlogged and sent_now
    assert not server.send_now(b"refused while backlogged")
    expected = b"".join(sent_now) + b"tail"
    reader, got = in_thread(lambda: recv_exactly(client, len(expected)))
    server.send(b"tail")  # blocks until the peer reads; sends the backlog first
    assert not server.backlogged
    reader.join(WAIT)
    assert got and hashlib.sha256(got[0]).digest() == hashlib.sha256(expected).digest()  # type: ignore[arg-type]


def test_send_nowait_answers_sent_backlogged_or_refused(pair: tuple[TlsChannel, TlsChannel]) -> None:
    # The outbox reads its one answer instead of asking `backlogged` after each send:
    # True (all went), False (part waits), None (refused, nothing done).
    server, client = pair
    assert server.send_nowait(b"a\n") is True and not server.backlogged
    assert recv_exactly(client, 2) == b"a\n"
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    chunk = os.urandom(32 * 1024)
    answers = []
    while (answer := server.send_nowait(chunk)) is True:
        answers.append(answer)
        assert len(answers) < 10_000, "the socket never filled"
    assert answer is False and server.backlogged  # accepted; part of it waits
    assert server.send_nowait(b"refused while backlogged") is None
    with server._send_lock:
        assert server.send_nowait(b"refused while another sends") is None


def test_send_now_steps_aside_while_another_thread_sends(pair: tuple[TlsChannel, TlsChannel]) -> None:
    server, client = pair
    with server._send_lock:  # as if a writer were inside a blocking send
        assert not server.send_now(b"x")
    assert server.send_now(b"y\n") and not server.backlogged
    assert recv_exactly(client, 2) == b"y\n"


def test_finish_now_ends_the_stream_cleanly_or_leaves_it_to_finish_sending(
    pair: tuple[TlsChannel, TlsChannel],
) -> None:
    server, client = pair
    assert server.send_now(b"last words\n")
    with server._send_lock:  # another sender busy: finish_now must not wait
        assert not server.finish_now()
    assert server.finish_now()
    assert recv_exactly(client, 11) == b"last words\n"
    assert client.recv() == b""  # close_notify, then the half-close


class RecordingSocket:
    """A socket that notes how many bytes each `recv` asks for."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.asked: list[int] = []

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.asked.append(size)
        return self._sock.recv(size, flags)

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


def test_reads_the_socket_in_small_chunks(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    # A 256 KiB read buffer grew the incoming memory BIO to 256 KiB for good; a
    # connection parked on a half line then held ~209 KiB. One TLS record at a time.
    a, b = socket.socketpair()
    recording = RecordingSocket(a)
    server = TlsChannel(recording, server_ctx, server_side=True)  # type: ignore[arg-type]
    client = TlsChannel(b, client_ctx, server_side=False, server_hostname="localhost")
    thread, result = in_thread(server.handshake)
    client.handshake()
    thread.join(WAIT)
    assert result == [None]
    payload = os.urandom(256 * 1024)
    sender, _ = in_thread(lambda: client.send(payload))
    assert recv_exactly(server, len(payload)) == payload
    sender.join(WAIT)
    assert max(recording.asked) <= 17 * 1024
    server.close()
    client.close()


def test_send_now_refuses_on_a_broken_tls_session_and_send_raises_it(
    pair: tuple[TlsChannel, TlsChannel],
) -> None:
    # A broadcast calls send_now for one recipient after another: an error here must not
    # escape into the loop (the later recipients would be left unsent), but the blocking
    # send the refusal leads to must raise it, so the writer ends the session.
    server, _client = pair
    server.finish_sending()  # close_notify sent: the TLS session takes no more data
    assert not server.send_now(b"after the end\n")
    with pytest.raises(ssl.SSLError):
        server.send(b"after the end\n")
