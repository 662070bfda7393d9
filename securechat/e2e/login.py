"""What a client signs to prove it holds a nick's identity key."""

from __future__ import annotations

from ..protocol import fold_nick
from .primitives import VERSION_LABEL, lp

__all__ = ["RENAME_LABEL", "login_message", "rename_message"]


def login_message(nick: str, nonce: bytes, sig_key: bytes) -> bytes:
    """LP(V, "login", nick, nonce, key): domain-separated from every other signature we make,
    so a login signature can never be replayed as a prekey signature or vice versa."""
    return lp(VERSION_LABEL, b"login", fold_nick(nick), nonce, sig_key)


#: The label of a rename's signature (docs/protocol.md, "Renaming"), as the rooms design fixed it.
RENAME_LABEL = b"securechat-v1"


def rename_message(old: str, new: str, login_nonce: bytes) -> bytes:
    """LP("securechat-v1", "rename", old, new, nonce): what an identity user signs to take
    `new` in place of `old`. The nonce is the one of this session's login challenge, so a
    signature is good for one session only and cannot be replayed in another."""
    return lp(RENAME_LABEL, b"rename", fold_nick(old), fold_nick(new), login_nonce)
