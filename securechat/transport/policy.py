"""TLS policy for both ends: what we accept, in one place.

The server requires TLS 1.2 or newer with forward-secret AEAD suites only (TLS 1.3
suites are all of that kind), over the key-exchange groups in `GROUPS` only. The client
always verifies the certificate chain and the host name; there is deliberately no switch
to turn that off (HexChat CVE-2013-7449, WeeChat CVE-2022-28352 were exactly such gaps).
"""

from __future__ import annotations

import _ssl
import ctypes
import functools
import logging
import ssl
import sys
from pathlib import Path

__all__ = ["GROUPS", "TLS12_CIPHERS", "client_context", "server_context"]

log = logging.getLogger(__name__)

#: TLS 1.2 suites: ECDHE key exchange (forward secrecy) with AES-GCM or ChaCha20-Poly1305.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"

#: Key-exchange groups both ends offer, best first (OpenSSL names). OpenSSL 3 would also
#: offer X448, P-384, P-521 and, in TLS 1.3, the finite-field groups ffdhe2048 to
#: ffdhe8192: a replayed ClientHello asking for ffdhe8192 costs its sender nothing and
#: the server ~173 ms of CPU (12 a second kept two cores busy). X25519 and P-256 cost
#: well under a millisecond; every TLS 1.2+ client has one of them (P-256 is the one a
#: FIPS-mode OpenSSL, which lacks X25519, offers). Mozilla's profiles allow both.
GROUPS = ("X25519", "P-256")

# OpenSSL's SSL_CTX_set1_groups_list(ctx, list) is this SSL_CTX_ctrl command (ssl.h; the
# same number in OpenSSL 1.1.1 and 3.x).
_SSL_CTRL_SET_GROUPS_LIST = 92


def server_context(certfile: str | Path, keyfile: str | Path) -> ssl.SSLContext:
    """A server context presenting `certfile` (PEM: the certificate, then the
    intermediates up to, not including, the root) with `keyfile` (PEM key).

    Raises `OSError` if a file cannot be read and `ssl.SSLError` if they do not hold
    a matching certificate and key.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # No session tickets: securechat clients never resume a session, so minting them was
    # work and bytes for nothing, and a ticket is only as secret as the ticket key, which
    # lives as long as the process (a stolen key would decrypt every ticketed session).
    # num_tickets covers TLS 1.3 only; OP_NO_TICKET is what stops them in TLS 1.2.
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    # A client-initiated renegotiation is a full handshake on demand, signature included,
    # on a connection that already passed every per-connection limit. OpenSSL 3 refuses
    # it by default; OpenSSL 1.1.1, which this Python may be linked with, does not.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    _offer_only_groups(ctx)
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
    # The same groups as the server: a hostile server picking ffdhe8192 for every
    # reconnect would otherwise cost the client the CPU it costs a server.
    _offer_only_groups(ctx)
    return ctx


def _offer_only_groups(ctx: ssl.SSLContext) -> None:
    """Restrict `ctx` to `GROUPS`, by the best means this Python and OpenSSL have.

    Python 3.15 has `SSLContext.set_groups`. Before it, the ssl module can only set a
    single group (`set_ecdh_curve`, which on OpenSSL 3 replaces the whole list), so the
    list goes to OpenSSL directly, through the libssl the ssl module is linked with.
    OpenSSL 1.1.1 offers no finite-field groups in TLS 1.3, so there is nothing costly to
    remove there. Where the list cannot be set (or is refused: a FIPS build has no
    X25519), one group alone is offered: X25519, else P-256.
    """
    groups = ":".join(GROUPS)
    set_groups = getattr(ctx, "set_groups", None)
    if callable(set_groups):
        set_groups(groups)
        return
    if ssl.OPENSSL_VERSION_INFO < (3, 0):
        return
    if _libssl_set_groups_list(ctx, groups):
        return
    for single in ("X25519", "prime256v1"):
        try:
            ctx.set_ecdh_curve(single)
        except (ssl.SSLError, ValueError):
            continue
        log.warning("could not offer the TLS groups %s; offering %s only", groups, single)
        return
    raise ssl.SSLError(f"this OpenSSL offers none of the TLS groups {groups}")


@functools.cache
def _libssl() -> ctypes.CDLL | None:
    """The libssl the `_ssl` extension uses, with the two functions we call typed; None
    where that cannot be reached (not CPython, `_ssl` built in, or symbols not visible
    through the extension, as on Windows)."""
    path = getattr(_ssl, "__file__", None)
    if sys.implementation.name != "cpython" or path is None:
        return None
    try:
        # dlsym on the extension's handle also searches the libraries it was linked
        # with, so this is the very libssl (and SSL_CTX layout) the ssl module uses.
        lib = ctypes.CDLL(path)
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    except (OSError, AttributeError):
        return None
    return lib


def _libssl_set_groups_list(ctx: ssl.SSLContext, groups: str) -> bool:
    """SSL_CTX_set1_groups_list on `ctx`'s own SSL_CTX; False if it could not be done.

    CPython keeps the SSL_CTX pointer as the first field after the object header of
    every SSLContext (unchanged from 2.7 to 3.14; 3.15 has `set_groups` instead). The
    version and size checks are what make reading it safe; that OpenSSL's options for
    it equal `ctx.options` then confirms it is this context's before anything is written.
    """
    lib = _libssl()
    # Only where that layout is known to hold, and the object is big enough to have it:
    # reading through a wrong pointer would crash, whatever is checked afterwards.
    if (
        lib is None
        or not (3, 11) <= sys.version_info < (3, 15)
        or type(ctx).__basicsize__ < object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
    ):
        return False
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ssl_ctx or lib.SSL_CTX_get_options(ssl_ctx) != ctx.options:
        return False
    return bool(lib.SSL_CTX_ctrl(ssl_ctx, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()) == 1)
