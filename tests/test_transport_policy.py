"""The server's TLS policy seen from outside: real handshakes against a real server.

Each client here offers one thing only (one key-exchange group, one protocol version),
so what the server accepts is what the handshake shows.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable

import pytest
from conftest import TIMEOUT, RawTls

from securechat.server import Server
from securechat.transport import client_context, policy


def handshake(server: Server, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """A completed TLS handshake with `server`; raises `ssl.SSLError` if it refuses."""
    raw = socket.create_connection(server.address, timeout=TIMEOUT)
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def offering_only(cafile: str, group: str) -> ssl.SSLContext:
    """A TLS 1.3 client context whose ClientHello lists `group` as its only group."""
    ctx = client_context(cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # On OpenSSL 3 this sets the supported_groups list to this one group, ffdhe included.
    ctx.set_ecdh_curve(group)
    return ctx


# Finite-field groups: a replayed ClientHello asking for ffdhe8192 cost the attacker
# nothing and the server ~173 ms of CPU per handshake. The other curves are slower than
# X25519 and P-256 and no client needs them.
@pytest.mark.parametrize("group", ["ffdhe2048", "ffdhe8192", "X448", "secp384r1", "secp521r1"])
def test_a_client_hello_offering_only_a_costly_group_is_refused(
    server: Server, cert_files: dict[str, str], client_ctx: ssl.SSLContext, group: str
) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(server, offering_only(cert_files["ca"], group)).close()
    # The refusal cost that one connection only: the server still serves everyone else.
    handshake(server, client_ctx).close()


@pytest.mark.parametrize("group", ["X25519", "prime256v1"])
def test_x25519_and_p256_are_accepted(server: Server, cert_files: dict[str, str], group: str) -> None:
    with handshake(server, offering_only(cert_files["ca"], group)) as tls:
        assert tls.version() == "TLSv1.3"


def tls_version(version: ssl.TLSVersion) -> Callable[[str], ssl.SSLContext]:
    def make(cafile: str) -> ssl.SSLContext:
        ctx = client_context(cafile)
        ctx.minimum_version = ctx.maximum_version = version
        return ctx

    return make


def test_no_session_ticket_is_issued_over_tls_1_2(server: Server, cert_files: dict[str, str]) -> None:
    # A TLS 1.2 ticket arrives within the handshake (NewSessionTicket before Finished).
    with handshake(server, tls_version(ssl.TLSVersion.TLSv1_2)(cert_files["ca"])) as tls:
        assert tls.version() == "TLSv1.2"
        assert tls.session is not None
        assert not tls.session.has_ticket


def test_no_session_ticket_is_issued_over_tls_1_3(server: Server, cert_files: dict[str, str]) -> None:
    raw = RawTls(server.address, tls_version(ssl.TLSVersion.TLSv1_3)(cert_files["ca"]))
    try:
        # TLS 1.3 tickets come after the handshake, ahead of the server's first data:
        # once a line has been read, any ticket would have been read before it.
        raw.send_line("not json")
        raw.read_line()
        assert raw.sock.version() == "TLSv1.3"
        assert raw.sock.session is not None
        assert not raw.sock.session.has_ticket
    finally:
        raw.close()


def handshake_pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str:
    """Handshake over a socket pair; the client's `ssl.SSLError` propagates. Returns the
    version agreed."""
    a, b = socket.socketpair()
    a.settimeout(TIMEOUT)
    b.settimeout(TIMEOUT)
    done = threading.Event()

    def serve() -> None:
        try:
            server_ctx.wrap_socket(a, server_side=True).close()
        except OSError:
            a.close()  # refused: the client sees the alert, or the close
        done.set()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname="localhost") as tls:
            return str(tls.version())
    finally:
        b.close()
        assert done.wait(TIMEOUT)
        thread.join(TIMEOUT)


def test_the_client_refuses_a_server_that_only_does_ffdhe(cert_files: dict[str, str]) -> None:
    # A hostile server choosing ffdhe8192 on every reconnect would cost the client
    # what it cost a server.
    hostile = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    hostile.load_cert_chain(cert_files["cert"], cert_files["key"])
    hostile.set_ecdh_curve("ffdhe8192")
    with pytest.raises(ssl.SSLError):
        handshake_pair(hostile, client_context(cert_files["ca"]))


def test_where_no_group_list_can_be_set_x25519_alone_is_offered(
    cert_files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pythons before 3.15 whose libssl cannot be reached (Windows, say) fall back to
    # the one group set_ecdh_curve can set.
    monkeypatch.setattr(policy, "_libssl_set_groups_list", lambda ctx, groups: False)
    fallback = policy.server_context(cert_files["cert"], cert_files["key"])
    assert handshake_pair(fallback, offering_only(cert_files["ca"], "X25519")) == "TLSv1.3"
    for group in ("prime256v1", "ffdhe2048"):
        with pytest.raises(ssl.SSLError):
            handshake_pair(fallback, offering_only(cert_files["ca"], group))


def test_where_x25519_cannot_be_set_either_p256_alone_is_offered(
    cert_files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A FIPS build of OpenSSL has no X25519: the list is refused as a whole, and so is
    # X25519 alone. Offering nothing would refuse every client; P-256 is what is left.
    monkeypatch.setattr(policy, "_libssl_set_groups_list", lambda ctx, groups: False)
    real = ssl.SSLContext.set_ecdh_curve

    def without_x25519(ctx: ssl.SSLContext, name: str) -> None:
        if name == "X25519":
            raise ssl.SSLError("unknown group X25519")
        real(ctx, name)

    monkeypatch.setattr(ssl.SSLContext, "set_ecdh_curve", without_x25519)
    fallback = policy.server_context(cert_files["cert"], cert_files["key"])
    assert handshake_pair(fallback, offering_only(cert_files["ca"], "prime256v1")) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake_pair(fallback, offering_only(cert_files["ca"], "ffdhe2048"))
