"""What a client signs to prove it holds a nick's identity key."""

from __future__ import annotations

from ..protocol import fold_nick
from .primitives import VERSION_LABEL, lp

__all__ = ["login_message"]


def login_message(nick: str, nonce: bytes, sig_key: bytes) -> bytes:
    """LP(V, "login", nick, nonce, key): domain-separated from every other signature we make,
    so a login signature can never be replayed as a prekey signature or vice versa."""
    return lp(VERSION_LABEL, b"login", fold_nick(nick), nonce, sig_key)
