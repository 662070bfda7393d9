"""serverkey.py: a server's certificate key, learnt from a real, verified TLS handshake."""

from __future__ import annotations

import hashlib
import socket
import ssl

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securechat.client.serverkey import server_key
from securechat.server import Server


def _spki_hash(pem: bytes) -> str:
    key = x509.load_pem_x509_certificate(pem).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def test_the_key_is_the_certificates_public_key_hash(
    server: Server, cert_files: dict[str, str], client_ctx: ssl.SSLContext
) -> None:
    with open(cert_files["cert"], "rb") as f:
        expected = _spki_hash(f.read())
    port = server.address[1]
    assert server_key("127.0.0.1", port, client_ctx) == expected
    assert server_key("localhost", port, client_ctx) == expected


def test_an_untrusted_server_or_none_at_all_gives_no_key(server: Server) -> None:
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)  # trusts another CA only, not the test server's
    assert server_key("127.0.0.1", server.address[1], stranger) is None
    with socket.socket() as free:  # a port with nothing listening once this closes
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert server_key("127.0.0.1", port, stranger, timeout=2.0) is None
