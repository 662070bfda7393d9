"""Known-answer tests from the RFCs, run through the project's own wrappers."""

from __future__ import annotations

import pytest

from securechat.e2e.primitives import (
    DhKeyPair,
    aead_decrypt,
    aead_encrypt,
    ed25519_public,
    ed25519_sign,
    ed25519_verify,
    hkdf_sha256,
    lp,
    x25519,
)

h = bytes.fromhex


def test_rfc7748_section_5_2_x25519_vector_1() -> None:
    scalar = h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert x25519(scalar, u) == h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")


def test_rfc7748_section_6_1_diffie_hellman() -> None:
    alice = DhKeyPair(h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = DhKeyPair(h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert alice.public == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert bob.public == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert x25519(alice.private, bob.public) == x25519(bob.private, alice.public) == shared
    assert alice.exchange(bob.public) == bob.exchange(alice.public) == shared  # the cached-key path


@pytest.mark.parametrize("low_order", [bytes(32), b"\x01" + bytes(31)])
def test_x25519_refuses_low_order_points(low_order: bytes) -> None:
    pair = DhKeyPair(bytes(range(32)))
    with pytest.raises(ValueError):
        x25519(pair.private, low_order)
    with pytest.raises(ValueError):
        pair.exchange(low_order)


def test_x25519_refuses_wrong_lengths() -> None:
    with pytest.raises(ValueError):
        x25519(bytes(32), bytes(31))
    with pytest.raises(ValueError):
        DhKeyPair(bytes(32)).exchange(bytes(31))
    with pytest.raises(ValueError):
        DhKeyPair(bytes(31))


def test_rfc8439_section_2_8_2_chacha20_poly1305() -> None:
    key = bytes(range(0x80, 0xA0))
    nonce = h("070000004041424344454647")
    aad = h("50515253c0c1c2c3c4c5c6c7")
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
        b"sunscreen would be it."
    )
    expected = h(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
        "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
        "3ff4def08e4b7a9de576d26586cec64b6116"
        "1ae10b594f09e26a7e902ecbd0600691"  # the tag
    )
    assert aead_encrypt(key, nonce, plaintext, aad) == expected
    assert aead_decrypt(key, nonce, expected, aad) == plaintext
    tampered = bytearray(expected)
    tampered[0] ^= 1
    assert aead_decrypt(key, nonce, bytes(tampered), aad) is None
    assert aead_decrypt(key, nonce, expected, aad + b"x") is None


def test_rfc5869_appendix_a1_hkdf_sha256() -> None:
    okm = hkdf_sha256(salt=bytes(range(13)), ikm=b"\x0b" * 22, info=bytes(range(0xF0, 0xFA)), length=42)
    assert okm == h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_rfc8032_section_7_1_ed25519_test_1() -> None:
    secret = h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = h("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    signature = h(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert ed25519_public(secret) == public
    assert ed25519_sign(secret, b"") == signature
    assert ed25519_verify(public, signature, b"")
    assert not ed25519_verify(public, signature, b"x")
    assert not ed25519_verify(public, signature[:-1] + b"\x00", b"")
    assert not ed25519_verify(public[:-1], signature, b"")


def test_lp_prefixes_every_field_so_boundaries_cannot_shift() -> None:
    assert lp(b"ab", "c", 1) == b"\x00\x00\x00\x02ab" + b"\x00\x00\x00\x01c" + b"\x00\x00\x00\x08" + (
        1
    ).to_bytes(8, "big")
    assert lp(b"a", b"bc") != lp(b"ab", b"c")


def test_key_pairs_never_show_their_private_half() -> None:
    pair = DhKeyPair(bytes(range(32)))
    assert bytes(range(32)).hex() not in repr(pair)
