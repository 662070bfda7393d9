"""Which server this is, whatever its address was typed as: the key of its certificate.

Keystores are filed per server (keystore.py). A host string is a poor name for a server:
`chat.example.org`, its address and an alias in /etc/hosts are one server, and an
identity made under one spelling was a stranger under another (refused as "registered to
another key"). The server's certificate key is its name: it is what TLS proves, it does
not change with the spelling, and it stays across certificate renewals that keep the key.

`server_key` learns it from a TLS handshake verified exactly as the chat connection is
(same context, same server name): a key learnt here is one the user trusts already. The
place a server's keystores live is then remembered per key (`remember` in keystore.py),
so the next start under any spelling finds the same identity.
"""

from __future__ import annotations

import hashlib
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["PROBE_TIMEOUT", "server_key"]

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
    if not der:
        return None
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError:
        return None
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()
