from __future__ import annotations

from securechat.e2e.safety import format_safety_number, parse_safety_number, safety_number, same_number

h = bytes.fromhex


def test_libsignal_published_fingerprint_vector() -> None:
    # libsignal's NumericFingerprintGeneratorTest: 5200 iterations, keys with 0x05 type byte.
    alice = h("0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868")
    bob = h("05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b")
    expected = "300354477692869396892869876765458257569162576843440918079131"
    assert safety_number(alice, b"+14152222222", bob, b"+14153333333") == expected
    assert safety_number(bob, b"+14153333333", alice, b"+14152222222") == expected


def test_format_and_parse() -> None:
    digits = "300354477692869396892869876765458257569162576843440918079131"
    shown = format_safety_number(digits)
    assert shown.split() == [digits[i : i + 5] for i in range(0, 60, 5)]
    assert parse_safety_number(shown) == digits
    assert parse_safety_number(digits[:-1]) is None
    assert parse_safety_number("x" * 60) is None
    assert parse_safety_number("\u0661" * 60) is None  # Arabic-Indic digits are not ours
    assert same_number(digits, digits) and not same_number(digits, digits[::-1])
