"""TLS policy for both ends: what we accept, in one place.

The server requires TLS 1.2 or newer with forward-secret AEAD suites only (TLS 1.3
suites are all of that kind). The client always verifies the certificate chain and
the host name; there is deliberately no switch to turn that off (HexChat
CVE-2013-7449, WeeChat CVE-2022-28352 were exactly such gaps).
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["TLS12_CIPHERS", "client_context", "server_context"]

#: TLS 1.2 suites: ECDHE key exchange (forward secrecy) with AES-GCM or ChaCha20-Poly1305.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


def server_context(certfile: str | Path, keyfile: str | Path) -> ssl.SSLContext:
    """A server context presenting `certfile` (PEM chain) with `keyfile` (PEM key).

    Raises `OSError` if a file cannot be read and `ssl.SSLError` if they do not hold
    a matching certificate and key.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # No TLS 1.3 session tickets: securechat clients never resume a session, so minting
    # two tickets per connection (OpenSSL's default) was work and bytes for nothing.
    ctx.num_tickets = 0
    ctx.load_cert_chain(str(certfile), str(keyfile))
    return ctx


def client_context(cafile: str | Path | None = None) -> ssl.SSLContext:
    """A client context that trusts `cafile` (PEM), or the system's CAs when None.

    Certificate and host-name verification are always on.
    """
    ctx = ssl.create_default_context(cafile=None if cafile is None else str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    return ctx
