"""Full-duplex TLS over a blocking socket, for one reader thread and any writers.

OpenSSL forbids calling SSL_read and SSL_write on the same `SSL` object from two
threads at once (openssl/openssl#20446), yet a thread-per-session server wants a
reader blocked in recv while a writer sends. So the TLS state lives in an
`ssl.SSLObject` over memory BIOs, guarded by a lock that is never held during
socket I/O; the kernel socket itself is safe to recv and send concurrently.
Encrypted bytes leave in the order they were produced because every drain of the
outgoing BIO happens under `_send_lock`, which is held through the `sendall`.

`send_now` is the cheap path for a server fanning a line out to many sessions: it
encrypts and offers the bytes to the kernel without blocking, from the caller's thread,
so an idle writer thread need not be woken for every line. Whatever the kernel does not
take stays in `_backlog`, and every later send starts with it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from collections.abc import Callable

__all__ = ["TlsChannel"]

#: Ciphertext is read from the socket at most this much at a time: one full TLS record
#: (16 KiB of plaintext plus its overhead). The incoming memory BIO keeps the largest size
#: it ever held, and a 256 KiB read made every connection that once received a burst (or
#: sits on half a line) hold ~209 KiB for good; reading more per call barely helps
#: throughput, since `recv` loops until the socket is drained anyway.
_RECV_CHUNK = 17 * 1024
#: Plaintext is taken from OpenSSL at most this much per call (one record's worth).
_READ_SLICE = 16 * 1024
#: One `recv` returns at most about this much plaintext when more is already waiting: a
#: read is what the server batches room lines by, so it should not shrink with the chunk.
_RECV_BATCH = 256 * 1024
#: Plaintext is handed to OpenSSL at most this much at a time (one TLS record's worth).
#: A memory BIO never gives back the room it once needed, so writing a 50 KiB frame
#: at once would leave every session holding 50 KiB of empty buffer afterwards.
_WRITE_SLICE = 16 * 1024
#: Read once: the fast path sends with it for every recipient of every broadcast.
_DONTWAIT = socket.MSG_DONTWAIT


class TlsChannel:
    """A TLS session on a connected socket.

    Contract: `handshake` first, from one thread; then `recv` from exactly one
    reader thread, and `send` from any number of threads (sends are serialised).
    `shutdown` may be called from any thread at any time and wakes a blocked
    `recv` or `send`. Socket errors surface as `OSError`; TLS errors as `ssl.SSLError`.
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._tls_lock = threading.Lock()  # guards _tls and both BIOs
        # `_tls.write` without `ssl.SSLObject.write`'s Python frame, which only forwards
        # to the C object's method: it runs once per recipient of every broadcast.
        # Called under `_tls_lock`, like `_tls`.
        self._write: Callable[[bytes], int] = getattr(self._tls, "_sslobj", self._tls).write
        self._send_lock = threading.Lock()  # orders drains of _outgoing with their sendall
        self._backlog = b""  # ciphertext send_now could not hand over; guarded by _send_lock
        # Set once (False -> True) by `shutdown`, from any thread; read bare by the reader
        # after a failed recv, only to tell a shutdown from a real error (one reference
        # write and read: a stale False just reports the error the recv raised).
        self._closed = False
        self._poll: select.poll | None = None  # created by the first read that finds nothing waiting

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def version(self) -> str | None:
        """The negotiated TLS version, e.g. 'TLSv1.3' (None before the handshake)."""
        with self._tls_lock:
            return self._tls.version()

    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER) once the handshake is done, else None."""
        with self._tls_lock:
            return self._tls.getpeercert(binary_form=True)

    def handshake(self) -> None:
        """Run the TLS handshake to completion.

        Raises `ssl.SSLError` (including `ssl.SSLCertVerificationError`) when the peer
        is refused, `ConnectionError` when it closes first, `OSError` on socket errors.
        On failure nothing more is sent: a peer that is not speaking TLS gets only a
        closed connection.
        """
        while True:
            with self._tls_lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                pending = self._outgoing.read()
            if pending:
                self._sock.sendall(pending)
            if done:
                return
            data = self._sock.recv(_RECV_CHUNK)
            if not data:
                raise ConnectionError("peer closed the connection during the TLS handshake")
            with self._tls_lock:
                self._incoming.write(data)

    def recv(self) -> bytes:
        """Block until plaintext arrives and return all that is available; b"" at end.

        End of stream is a close_notify or the peer closing the socket (a TLS
        "ragged EOF" is treated as a close: the protocol above has its own framing).

        The socket is read one TLS record (`_RECV_CHUNK`) at a time, decrypting after
        each, so the incoming BIO never grows past a record; what the kernel already
        holds is still taken in the same call (without blocking, up to `_RECV_BATCH`),
        so a burst reaches the caller in one piece, as the server's line batching wants.
        """
        chunks: list[bytes] = []
        size = 0
        while True:
            with self._tls_lock:
                eof = False
                while True:
                    try:
                        chunk = self._tls.read(_READ_SLICE)
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        eof = True
                        break
                    if not chunk:
                        eof = True
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                reply_pending = self._outgoing.pending > 0
            if reply_pending:  # e.g. a TLS 1.3 KeyUpdate answer produced by the read
                self._flush()
            if chunks and (eof or size >= _RECV_BATCH):
                return b"".join(chunks)  # the end of stream, if any, comes with the next call
            if eof:
                return b""
            try:
                data = self._recv_more() if chunks else self._recv_raw()
            except OSError:
                if chunks:
                    return b"".join(chunks)  # the error surfaces at the next call
                if self._closed:
                    return b""
                raise
            if not data:
                return b"".join(chunks)
            with self._tls_lock:
                self._incoming.write(data)

    def _recv_more(self) -> bytes:
        """Bytes the socket holds already, without waiting; b"" if none.

        Asked with a zero-timeout poll: on a socket with a timeout (the client's), Python
        waits for data before `recv` even with MSG_DONTWAIT.
        """
        if not self._poller().poll(0):
            return b""
        try:
            return self._sock.recv(_RECV_CHUNK, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return b""

    def _poller(self) -> select.poll:
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self._sock, select.POLLIN)
        return self._poll

    def _recv_raw(self) -> bytes:
        """The next bytes from the socket, blocking until there are some.

        `recv(n)` allocates its n-byte buffer before it blocks, so thousands of idle
        sessions would each hold one for as long as they are idle. Ask without waiting
        first (the common case under load), and otherwise wait for data with no buffer
        allocated.
        """
        try:
            return self._sock.recv(_RECV_CHUNK, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            pass
        self._poller().poll()  # woken by data, by the peer closing, or by `shutdown`
        return self._sock.recv(_RECV_CHUNK)

    def send(self, data: bytes) -> None:
        """Encrypt and send all of `data` (after any backlog). Thread-safe; blocks while the
        peer is slow. `data` may be empty, to push out the backlog."""
        with self._send_lock:
            with self._tls_lock:
                pending = self._take_backlog() + self._encrypt(data)
            if pending:
                self._sock.sendall(pending)

    def send_now(self, data: bytes) -> bool:
        """Encrypt `data` and give the socket as much as it takes without blocking.

        Returns False, having done nothing, when another thread is sending, earlier
        ciphertext is still waiting or the TLS session is broken: the caller must then
        queue `data` for `send` (which raises the error, if any).
        After True, `backlogged` says whether part of it still waits for a `send`.
        A socket error leaves the bytes in the backlog, for `send` to raise it.
        """
        return self.send_nowait(data) is not None

    def send_nowait(self, data: bytes) -> bool | None:
        """`send_now` answering in one call what the fan-out needs to know: None when
        refused (nothing done; as `send_now`'s False), True when the kernel took all of
        it, False when part of it waits in the backlog for the next `send`.

        Thread-safe; never blocks. This runs once per recipient of every broadcast, so
        it is written flat: no closure, no property read after it (`backlogged`), no
        keyword arguments (parsed at each call), the SSL object's own `write`.
        """
        send_lock = self._send_lock
        if not send_lock.acquire(False):
            return None
        try:
            if self._backlog:
                return None
            with self._tls_lock:
                try:
                    if len(data) <= _WRITE_SLICE:
                        if data:
                            self._write(data)
                        pending = self._outgoing.read()
                    else:
                        pending = self._encrypt(data)
                except ssl.SSLError:
                    # The TLS session is broken: refused, so the caller queues it for a
                    # blocking `send`, which raises this to whoever can end the session.
                    # Raising here would leave a broadcast's later recipients unsent.
                    return None
            if not pending:
                return True
            try:
                sent = self._sock.send(pending, _DONTWAIT)
            except OSError:  # EAGAIN, or broken: either way a blocking send deals with it
                sent = 0
            if sent == len(pending):
                return True
            self._backlog = pending[sent:]
            return False
        finally:
            send_lock.release()

    def _offer(self, produce: Callable[[], bytes]) -> bool | None:
        """Offer the ciphertext `produce()` makes (under `_tls_lock`) to the socket without
        blocking; keep what it does not take as the backlog. True if all of it went.

        None, with nothing done, when another thread is sending or a backlog waits.
        """
        if not self._send_lock.acquire(False):
            return None
        try:
            if self._backlog:
                return None
            with self._tls_lock:
                pending = produce()
            try:
                sent = self._sock.send(pending, _DONTWAIT) if pending else 0
            except OSError:  # EAGAIN, or broken: either way a blocking send deals with it
                sent = 0
            self._backlog = pending[sent:]
            return not self._backlog
        finally:
            self._send_lock.release()

    def _encrypt(self, data: bytes) -> bytes:
        """Everything waiting in the outgoing BIO plus `data` encrypted. Hold `_tls_lock`."""
        if len(data) <= _WRITE_SLICE:
            if data:
                self._tls.write(data)
            return self._outgoing.read()
        parts = [self._outgoing.read()]
        view = memoryview(data)
        for start in range(0, len(data), _WRITE_SLICE):
            self._tls.write(view[start : start + _WRITE_SLICE])
            parts.append(self._outgoing.read())
        return b"".join(parts)

    @property
    def backlogged(self) -> bool:
        """Whether ciphertext from `send_now` waits for the next `send`."""
        return bool(self._backlog)

    def _take_backlog(self) -> bytes:
        backlog, self._backlog = self._backlog, b""
        return backlog

    def _flush(self) -> None:
        with self._send_lock:
            with self._tls_lock:
                pending = self._take_backlog() + self._outgoing.read()
            if pending:
                self._sock.sendall(pending)

    def finish_now(self) -> bool:
        """Like `finish_sending`, if it can be done without blocking; False if not done.

        On False nothing is lost: what the socket did not take waits in the backlog,
        and a later `finish_sending` sends it and completes the half-close.
        """
        if not self._offer(self._close_notify):
            return False
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        return True

    def _close_notify(self) -> bytes:
        """Our TLS close_notify, and anything before it still in the outgoing BIO."""
        # WantRead: the peer's close_notify has not come; we don't wait for it.
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        return self._outgoing.read()

    def finish_sending(self) -> None:
        """Send TLS close_notify and half-close the socket; `recv` keeps working.

        Errors are ignored: the peer may already be gone, which is what we wanted.
        """
        with self._send_lock:
            with self._tls_lock:
                pending = self._take_backlog() + self._close_notify()
            try:
                if pending:
                    self._sock.sendall(pending)
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def shutdown(self) -> None:
        """Stop both directions now: wakes blocked `recv`/`send` calls. Idempotent."""
        self._closed = True
        with contextlib.suppress(OSError):  # already disconnected
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Shut down and release the socket. Idempotent."""
        self.shutdown()
        self._sock.close()
