"""Which server this is, whatever its address was typed as: the key of its certificate.

Keystores are filed per server (keystore.py). A host string is a poor name for a server:
`chat.example.org`, its address and an alias in /etc/hosts are one server, and an
identity made under one spelling was a stranger under another (refused as "registered to
another key"). The server's certificate key is its name: it is what TLS proves, it does
not change with the spelling, and it stays across certificate renewals that keep the key.

Every chat connection learns it from its own verified handshake (`key_of_certificate`,
`Client.server_key`), and the place the keystore in use lives is remembered under it
(`remember_server` in keystore.py). A later start under a spelling that finds no keystore
asks `server_key`, one extra handshake (no login) verified exactly as the chat connection
is, and looks the key up: the same identity, whatever the spelling. A start that finds
its keystore by the spelling makes no extra connection.
"""

from __future__ import annotations

import hashlib
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["PROBE_TIMEOUT", "key_of_certificate", "server_key"]

#: How long learning the key may take before the start goes on without it (the host
#: spelling then files the keystore, as before keys were known).
PROBE_TIMEOUT = 5.0


def server_key(host: str, port: int, context: ssl.SSLContext, timeout: float = PROBE_TIMEOUT) -> str | None:
    """The id of the server at `host`:`port`: SHA-256 of its certificate's public key
    (SubjectPublicKeyInfo, DER), hex. None when it cannot be reached or its certificate
    is not trusted by `context`: the caller then files by the host spelling, and the
    chat connection reports why it failed. Called on the caller's thread; blocks up to
    about `timeout` seconds. The connection ends after the handshake, before any login."""
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return None
    return key_of_certificate(der) if der else None


def key_of_certificate(der: bytes) -> str | None:
    """A server's id from its certificate (DER): SHA-256 of its SubjectPublicKeyInfo, hex.
    None if the certificate cannot be parsed."""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError:
        return None
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()
