"""Safety numbers: libsignal's numeric fingerprint, so users can compare keys by voice.

Per party: h = key's SHA-512 chain over `0x0000 || key || id`, 5200 rounds of
h = SHA-512(h || key); the first 30 bytes as six 5-byte big-endian integers, each
mod 100000, zero-padded. The two 30-digit halves are sorted and joined, so both sides
compute the same 60 digits. Reproduces libsignal's published test vector.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = [
    "ITERATIONS",
    "format_safety_number",
    "parse_safety_number",
    "safety_number",
    "safety_number_half",
    "same_number",
]

#: libsignal's iteration count; makes finding a key with a chosen number expensive.
ITERATIONS = 5200

_VERSION = b"\x00\x00"


def safety_number_half(key: bytes, stable_id: bytes, iterations: int = ITERATIONS) -> str:
    """One party's 30 digits."""
    digest = _VERSION + key + stable_id
    for _ in range(iterations):
        digest = hashlib.sha512(digest + key).digest()
    return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(key_a: bytes, id_a: bytes, key_b: bytes, id_b: bytes, iterations: int = ITERATIONS) -> str:
    """The 60-digit safety number of two parties; the same whichever is `a`."""
    halves = sorted(
        (safety_number_half(key_a, id_a, iterations), safety_number_half(key_b, id_b, iterations))
    )
    return "".join(halves)


def format_safety_number(digits: str) -> str:
    """12 groups of 5 digits, as people read them out."""
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))


def parse_safety_number(text: str) -> str | None:
    """The 60 digits in `text` (spaces and dashes ignored), or None if it is not one."""
    digits = "".join(ch for ch in text if ch not in " -\t")
    return digits if len(digits) == 60 and digits.isascii() and digits.isdigit() else None


def same_number(a: str, b: str) -> bool:
    """Constant-time comparison of two digit strings."""
    return hmac.compare_digest(a.encode(), b.encode())
