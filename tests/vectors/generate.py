"""Generate the frozen end-to-end test vectors in tests/vectors/*.json.

Every private key, seed, nonce and passphrase below is fixed: a 32-byte value is
SHA-256("securechat-e2e test vectors/" + label), a 64-byte one (ML-KEM seeds) is SHA-512
of the same string, so the whole output is reproducible. Every value is computed with the
repository's own functions (securechat.e2e) and, where the protocol states a formula,
recomputed from that formula and asserted equal before it is written.

The vectors are frozen: this script refuses to overwrite an existing file unless given
--force, which is only for a deliberate protocol change. The one randomised input, the
ML-KEM ciphertexts (encapsulation draws its own randomness), is read back from the frozen
pqxdh.json (see --kem-from) so that a regeneration reproduces every byte; it is
encapsulated afresh only when no frozen ciphertext exists for that public key.

--missing writes only the files that do not exist yet (vectors for a new step), leaving
every frozen one untouched.

    .venv/bin/python tests/vectors/generate.py [--out DIR] [--force | --missing] [--kem-from DIR]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from securechat.client.whispers import _plaintext as client_plaintext
from securechat.e2e import keystore as ks
from securechat.e2e import ratchet as rt
from securechat.e2e.bundle import (
    CLOCK_SKEW,
    MAX_CLOCK_ERROR,
    SPK_MAX_AGE,
    Bundle,
    OneTimeKemPrekey,
    PrekeySecrets,
    SignedKemPrekey,
    StoredKpk,
    StoredSpk,
    kopk_message,
    kpk_message,
    opk_message,
    spk_message,
    verify_bundle,
)
from securechat.e2e.devices import (
    MAX_DEVICES,
    Device,
    DeviceList,
    DeviceListError,
    device_list_message,
    sign_device_list,
)
from securechat.e2e.errors import BundleError, DecryptionError, KeystoreError
from securechat.e2e.identity import Identity, PublicIdentity
from securechat.e2e.login import RENAME_LABEL, login_message, rename_message
from securechat.e2e.pairing import (
    CODE_DIGITS,
    MAX_ATTEMPTS,
    ExistingDevice,
    NewDevice,
    PairingError,
    PairingState,
    WrongCode,
)
from securechat.e2e.primitives import (
    KEM_CIPHERTEXT_BYTES,
    VERSION_LABEL,
    DhKeyPair,
    KemKeyPair,
    aead_encrypt,
    ed25519_public,
    ed25519_sign,
    ed25519_verify,
    hkdf_sha256,
    hmac_sha256,
    kem_encapsulate,
    lp,
    sha256,
    x25519,
)
from securechat.e2e.safety import ITERATIONS, format_safety_number, safety_number, safety_number_half
from securechat.e2e.x3dh import NO_OPK, PQ_LABEL, SessionKeys, Setup, initiate, respond
from securechat.protocol import fold_nick

SOURCE = "tests/vectors/generate.py"
HERE = Path(__file__).resolve().parent
LABEL_PREFIX = "securechat-e2e test vectors/"
PQXDH_FILE = "pqxdh.json"

ALICE = "Alice"  # mixed case on purpose: every signature and AAD holds the folded nick
BOB = "bob"
CREATED = 1_800_000_000  # the signed prekeys' date (seconds since the epoch)


# -- fixed inputs ------------------------------------------------------------------------


def fixed(label: str) -> bytes:
    """A fixed 32-byte value: SHA-256 of the prefixed label."""
    return hashlib.sha256((LABEL_PREFIX + label).encode()).digest()


def fixed64(label: str) -> bytes:
    """A fixed 64-byte value (an ML-KEM-768 seed d || z): SHA-512 of the prefixed label."""
    return hashlib.sha512((LABEL_PREFIX + label).encode()).digest()


class Draws:
    """A `Random` that hands out the given values in order; asking for an unexpected
    draw, or for a length other than the next value's, is an error."""

    def __init__(self, *values: bytes) -> None:
        self._values = list(values)

    def __call__(self, n: int) -> bytes:
        if not self._values:
            raise AssertionError(f"an unexpected draw of {n} bytes")
        value = self._values.pop(0)
        if len(value) != n:
            raise AssertionError(f"a draw of {n} bytes where {len(value)} were fixed")
        return value

    def done(self) -> None:
        if self._values:
            raise AssertionError(f"{len(self._values)} fixed draws not used")


def hx(data: bytes) -> str:
    return data.hex()


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def doc(description: str, **fields: Any) -> dict[str, Any]:
    return {"description": description, "source": SOURCE, **fields}


class Party:
    """A user with fixed identity keys."""

    def __init__(self, user: str, name: str) -> None:
        self.name = name
        self.sig_private = fixed(f"{name} identity ed25519")
        self.dh_private = fixed(f"{name} identity x25519")
        self.identity = Identity(user, self.sig_private, DhKeyPair(self.dh_private))

    @property
    def public(self) -> PublicIdentity:
        return self.identity.public()


def alice() -> Party:
    return Party(ALICE, "alice")


def bob() -> Party:
    return Party(BOB, "bob")


SPK_ID = 1
OPK_ID = 1
KPK_ID = 1  # KEM prekeys share one id counter: the last-resort one was made first ...
KOPK_ID = 2  # ... then the one-time one


def bob_secrets(*, with_kem: bool) -> PrekeySecrets:
    """Bob's prekey private halves: SPK 1 and OPK 1 (and KPK 1, KOPK 2 for version 2)."""
    secrets = PrekeySecrets(
        spks=[StoredSpk(SPK_ID, CREATED, DhKeyPair(fixed("bob spk 1")))],
        opks={OPK_ID: DhKeyPair(fixed("bob opk 1"))},
        next_spk_id=SPK_ID + 1,
        next_opk_id=OPK_ID + 1,
    )
    if with_kem:
        secrets.kpks = [StoredKpk(KPK_ID, CREATED, KemKeyPair(fixed64("bob kpk 1")))]
        secrets.kopks = {KOPK_ID: KemKeyPair(fixed64("bob kopk 2"))}
        secrets.next_kem_id = KOPK_ID + 1
    return secrets


def identity_json(p: Party) -> dict[str, Any]:
    return {
        "user": p.identity.user,
        "sig_private": hx(p.sig_private),
        "sig_private_label": f"{p.name} identity ed25519",
        "dh_private": hx(p.dh_private),
        "dh_private_label": f"{p.name} identity x25519",
    }


# -- primitives.json -------------------------------------------------------------------


def lp_field(value: bytes | str | int) -> dict[str, Any]:
    if isinstance(value, str):
        return {"type": "str", "value": value}
    if isinstance(value, int):
        return {"type": "int", "value": value}
    return {"type": "bytes", "hex": hx(value)}


def gen_primitives() -> dict[str, Any]:
    examples: list[list[bytes | str | int]] = [
        [],
        [b""],
        [""],
        [0],
        ["Zo\u00eb \u2615"],
        [2**64 - 1],
        [VERSION_LABEL, b"spk", "alice", 1, CREATED, fixed("lp example key")],
        [b"ab", "cd", 258],
    ]
    lp_vectors = [{"fields": [lp_field(f) for f in ex], "encoded": hx(lp(*ex))} for ex in examples]

    rk, dh_out, ck, mk = fixed("kdf rk"), fixed("kdf dh output"), fixed("kdf ck"), fixed("kdf mk")
    rk_info = VERSION_LABEL + b" ratchet"
    rk_out = hkdf_sha256(salt=rk, ikm=dh_out, info=rk_info, length=64)
    assert rt._kdf_rk(rk, dh_out) == (rk_out[:32], rk_out[32:])
    ck_next, mk_out = hmac_sha256(ck, b"\x02"), hmac_sha256(ck, b"\x01")
    assert rt._kdf_ck(ck) == (ck_next, mk_out)
    msg_info = VERSION_LABEL + b" msg"
    cipher = hkdf_sha256(salt=bytes(32), ikm=mk, info=msg_info, length=44)
    assert rt._message_cipher(mk) == (cipher[:32], cipher[32:])

    labels = {
        "VERSION_LABEL (V)": VERSION_LABEL,
        "PQ_LABEL (V2)": PQ_LABEL,
        "x3dh info (V || ' x3dh')": VERSION_LABEL + b" x3dh",
        "pqxdh info (V2 || ' pqxdh')": PQ_LABEL + b" pqxdh",
        "ratchet info (V || ' ratchet')": rk_info,
        "message info (V || ' msg')": msg_info,
        "keystore peer-tag info (LP(V, 'keystore-peer-tag'))": lp(VERSION_LABEL, b"keystore-peer-tag"),
        "rename signature label": RENAME_LABEL,
    }
    return doc(
        "Building blocks. LP(fields...): each field as a 4-byte big-endian length then its bytes; str is "
        "UTF-8, int is 8-byte big-endian unsigned (0 <= n < 2**64), bytes as they are "
        "(securechat.e2e.primitives.lp). KDF_RK(rk, dh) = HKDF-SHA256(salt=rk, IKM=dh, info=V' ratchet', "
        "L=64) -> (rk' = out[:32], ck = out[32:]). KDF_CK(ck) = (ck' = HMAC-SHA256(ck, 0x02), "
        "mk = HMAC-SHA256(ck, 0x01)). Message cipher: HKDF-SHA256(salt=0x00*32, IKM=mk, info=V' msg', "
        "L=44) -> (ChaCha20-Poly1305 key = out[:32], nonce = out[32:44]).",
        lp=lp_vectors,
        labels={name: {"text": value.decode(), "hex": hx(value)} for name, value in labels.items()},
        kdf_rk={
            "rk": hx(rk),
            "dh_output": hx(dh_out),
            "info": hx(rk_info),
            "output": hx(rk_out),
            "new_rk": hx(rk_out[:32]),
            "ck": hx(rk_out[32:]),
        },
        kdf_ck={"ck": hx(ck), "next_ck": hx(ck_next), "mk": hx(mk_out)},
        message_cipher={
            "mk": hx(mk),
            "info": hx(msg_info),
            "output": hx(cipher),
            "key": hx(cipher[:32]),
            "nonce": hx(cipher[32:]),
        },
    )


# -- identity.json ---------------------------------------------------------------------


def binding_message(user: str, dh_key: bytes) -> bytes:
    return lp(VERSION_LABEL, b"identity-dh", fold_nick(user), dh_key)


def gen_identity() -> dict[str, Any]:
    out = []
    for p in (alice(), bob()):
        pub = p.public
        assert pub.sig_key == ed25519_public(p.sig_private)
        assert pub.dh_key == x25519(p.dh_private, (9).to_bytes(32, "little"))
        message = binding_message(pub.user, pub.dh_key)
        assert pub.dh_sig == ed25519_sign(p.sig_private, message) and pub.binding_valid()
        digest = sha256(pub.key).hex()
        fingerprint = ":".join(digest[i : i + 4] for i in range(0, 32, 4))
        assert pub.fingerprint() == fingerprint
        out.append(
            {
                **identity_json(p),
                "sig_key": hx(pub.sig_key),
                "dh_key": hx(pub.dh_key),
                "ik": hx(pub.key),
                "binding_message": hx(message),
                "dh_sig": hx(pub.dh_sig),
                "fingerprint": fingerprint,
            }
        )
    a = alice().public
    cases: list[tuple[str, str, bytes, bytes, bytes, bool]] = [
        ("as published", a.user, a.sig_key, a.dh_key, a.dh_sig, True),
        ("the nick in another case (folded alike)", a.user.upper(), a.sig_key, a.dh_key, a.dh_sig, True),
        ("another nick", "Mallory", a.sig_key, a.dh_key, a.dh_sig, False),
        ("dh_key bit 0 of byte 0 flipped", a.user, a.sig_key, flip(a.dh_key, 0), a.dh_sig, False),
        ("sig_key bit 0 of byte 0 flipped", a.user, flip(a.sig_key, 0), a.dh_key, a.dh_sig, False),
        ("dh_sig bit 0 of byte 0 (R) flipped", a.user, a.sig_key, a.dh_key, flip(a.dh_sig, 0), False),
        ("dh_sig bit 0 of byte 63 (S) flipped", a.user, a.sig_key, a.dh_key, flip(a.dh_sig, 63), False),
        ("bob's dh_key under alice's signature", a.user, a.sig_key, bob().public.dh_key, a.dh_sig, False),
    ]
    binding_cases = []
    for name, user, sig_key, dh_key, dh_sig, valid in cases:
        assert PublicIdentity(user, sig_key, dh_key, dh_sig).binding_valid() is valid
        binding_cases.append(
            {
                "case": name,
                "user": user,
                "sig_key": hx(sig_key),
                "dh_key": hx(dh_key),
                "dh_sig": hx(dh_sig),
                "valid": valid,
            }
        )
    return doc(
        "Long-term identities. sig_key = Ed25519 public key of the 32-byte seed sig_private (RFC 8032); "
        "dh_key = X25519(dh_private, 9) (RFC 7748); IK = sig_key || dh_key (64 bytes). The X25519 key "
        "is bound to the identity by dh_sig = Ed25519(sig_private, binding_message) with binding_message "
        "= LP(V, 'identity-dh', fold(user), dh_key) (Ed25519 is deterministic, so the signature is exact). "
        "fingerprint = the first 16 bytes of SHA-256(IK) in lower-case hex, in groups of 4 hex digits "
        "joined by ':'. binding_cases: each must verify exactly when 'valid' is true.",
        identities=out,
        binding_cases=binding_cases,
    )


# -- prekeys.json ----------------------------------------------------------------------


def gen_prekeys() -> dict[str, Any]:
    b = bob()
    secrets = bob_secrets(with_kem=True)
    spk_pair = secrets.spks[0].pair
    spk_msg = spk_message(BOB, SPK_ID, CREATED, spk_pair.public)
    spk = secrets.signed_spk(b.identity)
    assert (spk.id, spk.created, spk.public) == (SPK_ID, CREATED, spk_pair.public)
    assert spk_msg == lp(VERSION_LABEL, b"spk", fold_nick(BOB), SPK_ID, CREATED, spk_pair.public)
    assert spk.signature == ed25519_sign(b.sig_private, spk_msg)
    opk_pair = secrets.opks[OPK_ID]
    opk_msg = opk_message(BOB, OPK_ID, opk_pair.public)
    assert opk_msg == lp(VERSION_LABEL, b"opk", fold_nick(BOB), OPK_ID, opk_pair.public)
    (opk,) = secrets.signed_opks(b.identity, [OPK_ID])
    assert opk.signature == ed25519_sign(b.sig_private, opk_msg)

    kpk_pair = secrets.kpks[0].pair
    kpk_msg = kpk_message(BOB, KPK_ID, CREATED, kpk_pair.public)
    assert kpk_msg == lp(VERSION_LABEL, b"kpk", fold_nick(BOB), KPK_ID, CREATED, kpk_pair.public)
    kpk = secrets.signed_kpk(b.identity)
    assert kpk == SignedKemPrekey(KPK_ID, CREATED, kpk_pair.public, ed25519_sign(b.sig_private, kpk_msg))
    kopk_pair = secrets.kopks[KOPK_ID]
    kopk_msg = kopk_message(BOB, KOPK_ID, kopk_pair.public)
    assert kopk_msg == lp(VERSION_LABEL, b"kopk", fold_nick(BOB), KOPK_ID, kopk_pair.public)
    (kopk,) = secrets.signed_kopks(b.identity, [KOPK_ID])
    assert kopk == OneTimeKemPrekey(KOPK_ID, kopk_pair.public, ed25519_sign(b.sig_private, kopk_msg))

    def tampered(
        kind: str,
        message_of: Callable[[str, int, int, bytes], bytes],
        key_id: int,
        created: int,
        public: bytes,
        signature: bytes,
    ) -> list[dict[str, Any]]:
        variants: list[tuple[str, str, int, int, bytes, bytes]] = [
            ("another user", "mallory", key_id, created, public, signature),
            ("id + 1", BOB, key_id + 1, created, public, signature),
            ("public key bit 0 of byte 0 flipped", BOB, key_id, created, flip(public, 0), signature),
            ("signature bit 0 of byte 0 (R) flipped", BOB, key_id, created, public, flip(signature, 0)),
            ("signature bit 0 of byte 63 (S) flipped", BOB, key_id, created, public, flip(signature, 63)),
        ]
        if kind in ("spk", "kpk"):
            variants.insert(2, ("created + 1", BOB, key_id, created + 1, public, signature))
        out = []
        for name, user, i, c, pub, sig in variants:
            message = message_of(user, i, c, pub)
            assert not ed25519_verify(b.public.sig_key, sig, message)
            entry: dict[str, Any] = {"kind": kind, "case": name, "user": user, "id": i}
            if kind in ("spk", "kpk"):
                entry["created"] = c
            entry.update(public=hx(pub), signature=hx(sig), message=hx(message))
            out.append(entry)
        return out

    rejected = [
        *tampered("spk", spk_message, SPK_ID, CREATED, spk.public, spk.signature),
        *tampered("opk", lambda u, i, _c, p: opk_message(u, i, p), OPK_ID, 0, opk.public, opk.signature),
        *tampered("kpk", kpk_message, KPK_ID, CREATED, kpk.public, kpk.signature),
        *tampered("kopk", lambda u, i, _c, p: kopk_message(u, i, p), KOPK_ID, 0, kopk.public, kopk.signature),
    ]
    bundles = bundle_cases(b, secrets)
    return doc(
        "Bob's prekeys and their signatures by his identity key (identity.json, user 'bob'). "
        "spk message = LP(V, 'spk', fold(user), id, created, public); opk message = LP(V, 'opk', "
        "fold(user), id, public); version 2 (ML-KEM-768, FIPS 203): kpk message = LP(V, 'kpk', fold(user), "
        "id, created, public) for the last-resort KEM prekey and kopk message = LP(V, 'kopk', fold(user), "
        "id, public) for a one-time one; KEM prekeys share one id counter. signature = Ed25519(sig_private, "
        "message). An X25519 public key is X25519(private, 9); an ML-KEM-768 public key (1184 bytes) is "
        "ML-KEM.KeyGen from the 64-byte seed d || z. rejected: each (message, signature) must fail to "
        "verify under bob's sig_key. bundle_cases: the bundle as fetched is bob's identity (identity.json) "
        "with the keys named in 'include' (spk always; opk, kpk, kopk as listed; 'dh_sig' or "
        "'kopk_signature' replaced when given), checked when asked for 'user' at time 'now' having seen "
        "SPK ids up to 'min_spk_id' and KPK ids up to 'min_kpk_id' (neither may roll back); "
        "require_kem: the checker is about to start a session (a version-2 "
        "client never starts one without a KEM prekey). The bundle must be accepted exactly when "
        "'accept' is true: signatures as above, the KPK's and SPK's 'created' within "
        "[now - 365 days - 35 days, now + 365 days + 1 day] (clocks may be a year wrong).",
        signer=identity_json(b),
        sig_key=hx(b.public.sig_key),
        spk={
            "id": SPK_ID,
            "created": CREATED,
            "private": hx(spk_pair.private),
            "private_label": "bob spk 1",
            "public": hx(spk.public),
            "message": hx(spk_msg),
            "signature": hx(spk.signature),
        },
        opk={
            "id": OPK_ID,
            "private": hx(opk_pair.private),
            "private_label": "bob opk 1",
            "public": hx(opk.public),
            "message": hx(opk_msg),
            "signature": hx(opk.signature),
        },
        kpk={
            "id": KPK_ID,
            "created": CREATED,
            "seed": hx(kpk_pair.seed),
            "seed_label": "bob kpk 1",
            "public": hx(kpk.public),
            "message": hx(kpk_msg),
            "signature": hx(kpk.signature),
        },
        kopk={
            "id": KOPK_ID,
            "seed": hx(kopk_pair.seed),
            "seed_label": "bob kopk 2",
            "public": hx(kopk.public),
            "message": hx(kopk_msg),
            "signature": hx(kopk.signature),
        },
        rejected=rejected,
        bundle_cases=bundles,
    )


def bundle_cases(b: Party, secrets: PrekeySecrets) -> list[dict[str, Any]]:
    full = secrets.bundle(b.identity, [OPK_ID], [KOPK_ID])
    assert full.kpk is not None
    oldest = CREATED + MAX_CLOCK_ERROR + SPK_MAX_AGE  # the latest 'now' at which CREATED is not stale
    earliest = CREATED - MAX_CLOCK_ERROR - CLOCK_SKEW  # the earliest at which it is not in the future
    all_keys = ["opk", "kpk", "kopk"]
    cases: list[tuple[str, list[str], dict[str, Any], bool]] = [
        ("as fetched: SPK, OPK, KPK, KOPK", all_keys, {}, True),
        ("no one-time keys left: SPK and KPK", ["kpk"], {}, True),
        ("no KEM prekey, about to start a session (refused, not downgraded)", ["opk"], {}, False),
        ("no KEM prekey, checked without starting a session", ["opk"], {"require_kem": False}, True),
        ("asked for another user", all_keys, {"user": "mallory"}, False),
        ("asked for the owner in another case", all_keys, {"user": "BOB"}, True),
        (
            "identity binding signature bit flipped",
            all_keys,
            {"dh_sig": hx(flip(full.identity.dh_sig, 0))},
            False,
        ),
        (
            "KOPK signature bit flipped",
            all_keys,
            {"kopk_signature": hx(flip(full.kopks[0].signature, 0))},
            False,
        ),
        ("SPK id below one already seen (rolled back)", all_keys, {"min_spk_id": SPK_ID + 1}, False),
        ("SPK id equal to the one already seen", all_keys, {"min_spk_id": SPK_ID}, True),
        ("KPK id below one already seen (rolled back)", all_keys, {"min_kpk_id": full.kpk.id + 1}, False),
        ("KPK id equal to the one already seen", all_keys, {"min_kpk_id": full.kpk.id}, True),
        ("SPK and KPK at the age limit", all_keys, {"now": oldest}, True),
        ("SPK and KPK one second too old", all_keys, {"now": oldest + 1}, False),
        ("SPK and KPK at the future limit", all_keys, {"now": earliest}, True),
        ("SPK and KPK one second too far in the future", all_keys, {"now": earliest - 1}, False),
    ]
    out = []
    for name, include, changes, accept in cases:
        case: dict[str, Any] = {
            "case": name,
            "include": include,
            "user": BOB,
            "now": CREATED,
            "min_spk_id": 0,
            "min_kpk_id": 0,
            "require_kem": True,
            **changes,
            "accept": accept,
        }
        identity = full.identity
        if "dh_sig" in case:
            identity = PublicIdentity(
                identity.user, identity.sig_key, identity.dh_key, bytes.fromhex(case["dh_sig"])
            )
        kopks = full.kopks if "kopk" in include else ()
        if "kopk_signature" in case:
            kopks = (OneTimeKemPrekey(KOPK_ID, full.kopks[0].public, bytes.fromhex(case["kopk_signature"])),)
        bundle = Bundle(
            identity,
            full.spk,
            full.opks if "opk" in include else (),
            full.kpk if "kpk" in include else None,
            kopks,
        )
        try:
            verify_bundle(
                bundle,
                user=case["user"],
                now=case["now"],
                min_spk_id=case["min_spk_id"],
                min_kpk_id=case["min_kpk_id"],
                require_kem=case["require_kem"],
            )
        except BundleError:
            assert not accept, name
        else:
            assert accept, name
        out.append(case)
    return out


# -- x3dh.json -------------------------------------------------------------------------


def v1_agreement(ek_label: str, with_opk: bool) -> tuple[dict[str, Any], SessionKeys, Setup]:
    """A version-1 agreement between alice and bob, computed by formula from alice's side
    and by `respond` (the code) from bob's; asserted equal."""
    a, b = alice(), bob()
    secrets = bob_secrets(with_kem=False)
    spk = secrets.spks[0].pair
    opk = secrets.opks[OPK_ID]
    ek = DhKeyPair(fixed(ek_label))
    dhs = [
        x25519(a.dh_private, spk.public),
        x25519(ek.private, b.public.dh_key),
        x25519(ek.private, spk.public),
    ]
    if with_opk:
        dhs.append(x25519(ek.private, opk.public))
    opk_id = OPK_ID if with_opk else NO_OPK
    ikm = b"\xff" * 32 + b"".join(dhs)
    info = VERSION_LABEL + b" x3dh"
    sk = hkdf_sha256(salt=bytes(32), ikm=ikm, info=info, length=32)
    ad0 = lp(VERSION_LABEL, fold_nick(ALICE), a.public.key, fold_nick(BOB), b.public.key)
    sid_input = lp(VERSION_LABEL, b"sid", a.public.key, b.public.key, ek.public, SPK_ID, opk_id)
    sid = sha256(sid_input)[:16]
    setup = Setup(a.public, ek.public, SPK_ID, opk_id)
    keys, spk_used = respond(b.identity, secrets, setup)
    assert keys == SessionKeys(sk, ad0, sid) and spk_used == spk
    case = {
        "name": "with one-time prekey" if with_opk else "without one-time prekey (opk_id 0, no DH4)",
        "ek_private": hx(ek.private),
        "ek_private_label": ek_label,
        "ek_public": hx(ek.public),
        "spk_id": SPK_ID,
        "opk_id": opk_id,
        "dh1": hx(dhs[0]),
        "dh2": hx(dhs[1]),
        "dh3": hx(dhs[2]),
        "dh4": hx(dhs[3]) if with_opk else None,
        "salt": hx(bytes(32)),
        "ikm": hx(ikm),
        "info": hx(info),
        "sk": hx(sk),
        "ad0": hx(ad0),
        "sid_input": hx(sid_input),
        "sid": hx(sid),
    }
    return case, keys, setup


def prekey_inputs(*, with_kem: bool) -> dict[str, Any]:
    secrets = bob_secrets(with_kem=with_kem)
    out: dict[str, Any] = {
        "spk": {"id": SPK_ID, "created": CREATED, "private": hx(secrets.spks[0].pair.private)},
        "opk": {"id": OPK_ID, "private": hx(secrets.opks[OPK_ID].private)},
    }
    if with_kem:
        out["kpk"] = {"id": KPK_ID, "created": CREATED, "seed": hx(secrets.kpks[0].pair.seed)}
        out["kopk"] = {"id": KOPK_ID, "seed": hx(secrets.kopks[KOPK_ID].seed)}
    return out


def gen_x3dh() -> dict[str, Any]:
    cases = [v1_agreement("alice ek 1", True)[0], v1_agreement("alice ek 2", False)[0]]
    return doc(
        "Version-1 session setup (X3DH-style), initiator alice, responder bob, with bob's SPK 1 and "
        "OPK 1 (prekeys.json). DH1 = X25519(IK_dh_A, SPK_B), DH2 = X25519(EK_A, IK_dh_B), DH3 = "
        "X25519(EK_A, SPK_B), DH4 = X25519(EK_A, OPK_B) only with a one-time prekey. SK = "
        "HKDF-SHA256(salt = 0x00*32, IKM = 0xFF*32 || DH1 || DH2 || DH3 [|| DH4], info = V ' x3dh', L = 32); "
        "AD0 = LP(V, fold(user_A), IK_A, fold(user_B), IK_B); sid = SHA-256(LP(V, 'sid', IK_A, IK_B, EK_A, "
        "spk_id, opk_id))[:16], opk_id 0 meaning none. The responder computes the same from its private "
        "keys and the setup (identity, EK, spk_id, opk_id) carried in the header (headers.json).",
        initiator=identity_json(alice()),
        responder=identity_json(bob()),
        responder_prekeys=prekey_inputs(with_kem=False),
        cases=cases,
    )


# -- pqxdh.json ------------------------------------------------------------------------


def load_frozen_kem(directory: Path | None) -> dict[str, str]:
    """public key hex -> frozen ciphertext hex, from `directory`/pqxdh.json if it exists."""
    if directory is None or not (directory / PQXDH_FILE).is_file():
        return {}
    data = json.loads((directory / PQXDH_FILE).read_text(encoding="utf-8"))
    return {v["public"]: v["ciphertext"] for v in data["kem"]}


class KemInputs:
    """The ML-KEM-768 key pairs used, with one frozen encapsulation each."""

    def __init__(self, frozen: dict[str, str]) -> None:
        self.entries: dict[bytes, tuple[str, KemKeyPair, bytes, bytes]] = {}
        for label in ("bob kpk 1", "bob kopk 2"):
            pair = KemKeyPair(fixed64(label))
            if pair.public.hex() in frozen:
                ct = bytes.fromhex(frozen[pair.public.hex()])
                ss = pair.decapsulate(ct)
            else:
                ct, ss = kem_encapsulate(pair.public)
                assert pair.decapsulate(ct) == ss
            self.entries[pair.public] = (label, pair, ct, ss)

    def encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        _, _, ct, ss = self.entries[public]
        return ct, ss


def gen_pqxdh(kem: KemInputs) -> dict[str, Any]:
    kem_vectors = []
    for label, pair, ct, ss in kem.entries.values():
        bad_ct = flip(ct, 0)
        implicit = pair.decapsulate(bad_ct)
        assert implicit != ss
        kem_vectors.append(
            {
                "seed_label": label,
                "seed": hx(pair.seed),
                "public": hx(pair.public),
                "ciphertext": hx(ct),
                "shared_secret": hx(ss),
                "ciphertext_bit_flipped": hx(bad_ct),
                "implicit_rejection_secret": hx(implicit),
            }
        )
    cases = [
        v2_agreement(kem, "alice ek 3", with_opk=True, with_kopk=True)[0],
        v2_agreement(kem, "alice ek 4", with_opk=False, with_kopk=False)[0],
    ]
    return doc(
        "Version-2 session setup (PQXDH-style). kem: ML-KEM-768 (FIPS 203) decapsulation vectors: the "
        "64-byte seed (d || z) gives 'public' (1184 bytes); Decaps(seed, ciphertext) = shared_secret. "
        "The ciphertexts were made once by a randomised encapsulation and frozen (an input, not a "
        "recomputable output); flipping bit 0 of byte 0 of a ciphertext must decapsulate, without "
        "error, to implicit_rejection_secret (FIPS 203 implicit rejection). cases: DH1..DH4 as in "
        "x3dh.json; (ct, SS) = Encaps(KOPK_B if the bundle has one, else KPK_B), kem_id = that key's "
        "id; SK = HKDF-SHA256(salt = 0x00*32, IKM = 0xFF*32 || DH1 || DH2 || DH3 [|| DH4] || SS, info = "
        "V2 ' pqxdh', L = 32); AD0 = LP(V2, fold(user_A), IK_A, fold(user_B), IK_B, KEM public key used); "
        "sid = SHA-256(LP(V2, 'sid', IK_A, IK_B, EK_A, spk_id, opk_id, kem_id, SHA-256(ct)))[:16]. "
        "V2 = 'securechat-e2e-v2'.",
        kem=kem_vectors,
        initiator=identity_json(alice()),
        responder=identity_json(bob()),
        responder_prekeys=prekey_inputs(with_kem=True),
        cases=cases,
    )


def v2_bundle(with_opk: bool, with_kopk: bool) -> tuple[PrekeySecrets, Bundle]:
    b = bob()
    secrets = bob_secrets(with_kem=True)
    return secrets, secrets.bundle(b.identity, [OPK_ID] if with_opk else [], [KOPK_ID] if with_kopk else [])


def v2_agreement(
    kem: KemInputs, ek_label: str, *, with_opk: bool, with_kopk: bool
) -> tuple[dict[str, Any], SessionKeys, Setup]:
    a, b = alice(), bob()
    secrets, bundle = v2_bundle(with_opk, with_kopk)
    spk = secrets.spks[0].pair
    ek = DhKeyPair(fixed(ek_label))
    kem_id = KOPK_ID if with_kopk else KPK_ID
    kem_pair = secrets.kopks[KOPK_ID] if with_kopk else secrets.kpks[0].pair
    ct, ss = kem.encapsulate(kem_pair.public)
    draws = Draws(ek.private)
    keys, setup = initiate(a.identity, bundle, draws, kem.encapsulate)
    draws.done()
    dhs = [
        x25519(a.dh_private, spk.public),
        x25519(ek.private, b.public.dh_key),
        x25519(ek.private, spk.public),
    ]
    if with_opk:
        dhs.append(x25519(ek.private, secrets.opks[OPK_ID].public))
    opk_id = OPK_ID if with_opk else NO_OPK
    ikm = b"\xff" * 32 + b"".join(dhs) + ss
    info = PQ_LABEL + b" pqxdh"
    sk = hkdf_sha256(salt=bytes(32), ikm=ikm, info=info, length=32)
    ad0 = lp(PQ_LABEL, fold_nick(ALICE), a.public.key, fold_nick(BOB), b.public.key, kem_pair.public)
    sid_input = lp(
        PQ_LABEL, b"sid", a.public.key, b.public.key, ek.public, SPK_ID, opk_id, kem_id, sha256(ct)
    )
    sid = sha256(sid_input)[:16]
    assert keys == SessionKeys(sk, ad0, sid)
    assert setup == Setup(a.public, ek.public, SPK_ID, opk_id, kem_id, ct)
    responder_keys, spk_used = respond(b.identity, secrets, setup)
    assert responder_keys == keys and spk_used == spk
    case = {
        "name": ("with" if with_opk else "without")
        + " one-time prekey, "
        + ("one-time KEM prekey (KOPK)" if with_kopk else "last-resort KEM prekey (KPK)"),
        "ek_private": hx(ek.private),
        "ek_private_label": ek_label,
        "ek_public": hx(ek.public),
        "spk_id": SPK_ID,
        "opk_id": opk_id,
        "kem_id": kem_id,
        "kem_public": hx(kem_pair.public),
        "kem_ciphertext": hx(ct),
        "kem_shared_secret": hx(ss),
        "dh1": hx(dhs[0]),
        "dh2": hx(dhs[1]),
        "dh3": hx(dhs[2]),
        "dh4": hx(dhs[3]) if with_opk else None,
        "salt": hx(bytes(32)),
        "ikm": hx(ikm),
        "info": hx(info),
        "sk": hx(sk),
        "ad0": hx(ad0),
        "sid_input": hx(sid_input),
        "sid": hx(sid),
    }
    return case, keys, setup


# -- headers.json ----------------------------------------------------------------------

_FIELDS_V1 = [
    ("version", 0, 1),
    ("flags", 1, 1),
    ("sid", 2, 16),
    ("dh", 18, 32),
    ("pn", 50, 4),
    ("n", 54, 4),
]
_FIELDS_SETUP = [
    ("setup.sig_key", 58, 32),
    ("setup.dh_key", 90, 32),
    ("setup.dh_sig", 122, 64),
    ("setup.ephemeral", 186, 32),
    ("setup.spk_id", 218, 8),
    ("setup.opk_id", 226, 8),
]
_FIELDS_PQ = [("setup.kem_id", 234, 8), ("setup.kem_ct", 242, KEM_CIPHERTEXT_BYTES)]


def header_layout(header: bytes) -> list[tuple[str, int, int]]:
    fields = list(_FIELDS_V1)
    if len(header) > rt.HEADER_LEN:
        fields += _FIELDS_SETUP
        if header[0] == 2:
            fields += _FIELDS_PQ
    assert sum(size for _, _, size in fields) == len(header)
    return fields


def header_fields(data: bytes, sender: str) -> dict[str, Any]:
    """The fields of an encoded header, as parse_header reads them (and as the layout says)."""
    header = rt.parse_header(data, sender)
    out: dict[str, Any] = {
        "version": data[0],
        "flags": data[1],
        "sid": hx(header.sid),
        "dh": hx(header.dh),
        "pn": header.pn,
        "n": header.n,
        "setup": None,
    }
    if header.setup is not None:
        s = header.setup
        out["setup"] = {
            "sig_key": hx(s.identity.sig_key),
            "dh_key": hx(s.identity.dh_key),
            "dh_sig": hx(s.identity.dh_sig),
            "ephemeral": hx(s.ephemeral),
            "spk_id": s.spk_id,
            "opk_id": s.opk_id,
        }
        if data[0] == 2:
            out["setup"].update(kem_id=s.kem_id, kem_ct=hx(s.kem_ct))
    for name, offset, size in header_layout(data):
        raw = data[offset : offset + size]
        parts = name.split(".")
        value = out[parts[0]] if len(parts) == 1 else out["setup"][parts[1]]
        assert (value if isinstance(value, str) else hx(value.to_bytes(size, "big"))) == hx(raw), name
    return out


def gen_headers(kem: KemInputs) -> dict[str, Any]:
    a = alice()
    sid, dh = fixed("header sid")[:16], DhKeyPair(fixed("header ratchet key")).public
    ek = DhKeyPair(fixed("header ek")).public
    setup_v1 = Setup(a.public, ek, 7, 0x0102030405060708)
    kopk_public = KemKeyPair(fixed64("bob kopk 2")).public
    kem_ct, _ = kem.encapsulate(kopk_public)
    setup_v2 = Setup(a.public, ek, 7, 9, KOPK_ID, kem_ct)
    examples = [
        ("v1 without setup", rt.Header(sid, dh, 3, 0x01020304)),
        ("v1 with setup", rt.Header(sid, dh, 0, 1, setup_v1)),
        ("v2 without setup", rt.Header(sid, dh, 3, 0x01020304, None, 2)),
        ("v2 with setup", rt.Header(sid, dh, 0, 1, setup_v2, 2)),
    ]
    out = []
    for name, header in examples:
        data = header.encode()
        out.append(
            {
                "name": name,
                "sender": ALICE,
                "fields": header_fields(data, ALICE),
                "encoded": hx(data),
                "length": len(data),
            }
        )
    base = examples[0][1].encode()
    with_setup = examples[1][1].encode()
    v2_setup = examples[3][1].encode()
    malformed: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("one byte short", base[:-1]),
        ("one byte long", base + b"\x00"),
        ("with setup, one byte short", with_setup[:-1]),
        ("version 0", flip(base, 0)),
        ("version 255", b"\xff" + base[1:]),
        ("unknown flag bit 1", flip(base, 1, 0x02)),
        ("setup flag without the setup", flip(base, 1)),
        ("a setup without the setup flag", flip(with_setup, 1)),
        ("v1 setup labelled version 2", b"\x02" + with_setup[1:]),
        ("v2 setup labelled version 1", b"\x01" + v2_setup[1:]),
        ("v2 setup naming KEM prekey 0", v2_setup[:234] + bytes(8) + v2_setup[242:]),
    ]
    rejected = []
    for name, data in malformed:
        try:
            rt.parse_header(data, ALICE)
        except DecryptionError:
            rejected.append({"case": name, "encoded": hx(data)})
        else:
            raise AssertionError(f"parse_header accepted {name}")
    return doc(
        "Message header encodings, fields -> bytes (all integers big-endian). Base (58 bytes): "
        "version u8 | flags u8 (bit 0: a setup follows) | sid 16 | dh (the sender's ratchet public key) 32 "
        "| pn u32 | n u32. Setup (flag bit 0), version 1 (176 bytes): sig_key 32 | dh_key 32 | dh_sig 64 | "
        "ephemeral 32 | spk_id u64 | opk_id u64; version 2 adds kem_id u64 | kem_ct 1088 (1272 bytes; "
        "a v2 setup header is 1330 bytes). The setup's identity belongs to the sender the relay names "
        "('sender'). A session sends its setup's version in every header. rejected: each encoding "
        "must be refused as malformed.",
        layout={
            "base": [{"field": n, "offset": o, "size": s} for n, o, s in _FIELDS_V1],
            "setup_v1": [{"field": n, "offset": o, "size": s} for n, o, s in _FIELDS_SETUP],
            "setup_v2_extra": [{"field": n, "offset": o, "size": s} for n, o, s in _FIELDS_PQ],
        },
        headers=out,
        rejected=rejected,
    )


# -- ratchet.json ----------------------------------------------------------------------


def snapshot(state: rt.RatchetState) -> dict[str, Any]:
    def opt(x: bytes | None) -> str | None:
        return None if x is None else hx(x)

    return {
        "rk": hx(state.rk),
        "dhs_private": hx(state.dhs.private),
        "dhs_public": hx(state.dhs.public),
        "dhr": opt(state.dhr),
        "cks": opt(state.cks),
        "ckr": opt(state.ckr),
        "ns": state.ns,
        "nr": state.nr,
        "pn": state.pn,
        "skipped": [{"dh": hx(dh), "n": n, "mk": hx(mk)} for (dh, n), (mk, _) in state.skipped.items()],
        "old_dhr": [hx(x) for x in state.old_dhr],
        "sends_setup": state.setup is not None,
    }


def aad_of(state: rt.RatchetState, sender: str, recipient: str, header: bytes) -> bytes:
    return lp(VERSION_LABEL, b"msg", state.sid, fold_nick(sender), fold_nick(recipient), state.ad0, header)


class Conversation:
    """Runs a scripted conversation between alice and bob through the ratchet, recording
    every intermediate value."""

    def __init__(self, version: int, kem: KemInputs | None) -> None:
        self.version = version
        self.a, self.b = alice(), bob()
        self.secrets = bob_secrets(with_kem=version == 2)
        self.states: dict[str, rt.RatchetState] = {}
        self.sent: dict[str, tuple[str, str, bytes, bytes, str]] = {}  # id -> (from, to, header, ct, text)
        self.events: list[dict[str, Any]] = []
        self.setup_info: dict[str, Any] = {}
        if version == 1:
            _, keys, setup = v1_agreement("alice ek 1", True)
        else:
            assert kem is not None
            _, keys, setup = v2_agreement(kem, "alice ek 3", with_opk=True, with_kopk=True)
        self.setup = setup
        self.keys = keys
        label = f"alice ratchet 1 (v{version})"
        draws = Draws(fixed(label))
        spk_public = self.secrets.spks[0].pair.public
        state = rt.RatchetState.for_initiator(
            sid=keys.sid,
            ad0=keys.ad0,
            sk=keys.sk,
            me=ALICE,
            peer=BOB,
            peer_key=self.b.public.key,
            their_spk=spk_public,
            setup=setup,
            random=draws,
        )
        draws.done()
        rk_out = hkdf_sha256(
            salt=keys.sk, ikm=x25519(fixed(label), spk_public), info=VERSION_LABEL + b" ratchet", length=64
        )
        assert (state.rk, state.cks) == (rk_out[:32], rk_out[32:])
        self.states[ALICE] = state
        self.events.append(
            {
                "event": "init_initiator",
                "party": ALICE,
                "peer": BOB,
                "random_draws": [hx(fixed(label))],
                "random_draw_labels": [label],
                "their_spk": hx(spk_public),
                "dh_output": hx(x25519(fixed(label), spk_public)),
                "formula": "dhs = the drawn key; (rk, cks) = KDF_RK(SK, X25519(dhs, SPK_B)); dhr = SPK_B",
                "state_after": snapshot(state),
            }
        )

    def send(self, msg_id: str, sender: str, text: str) -> None:
        recipient = BOB if sender == ALICE else ALICE
        state = self.states[sender]
        before = snapshot(state)
        assert state.cks is not None
        ck_before = state.cks
        ck_after, mk = hmac_sha256(ck_before, b"\x02"), hmac_sha256(ck_before, b"\x01")
        cipher = hkdf_sha256(salt=bytes(32), ikm=mk, info=VERSION_LABEL + b" msg", length=44)
        key, nonce = cipher[:32], cipher[32:]
        plaintext = client_plaintext(text)
        assert plaintext == json.dumps({"text": text}, ensure_ascii=False).encode("utf-8")
        header, ciphertext = rt.encrypt(state, plaintext)
        padded = rt.pad(plaintext) if self.version == 2 else plaintext
        aad = aad_of(state, sender, recipient, header)
        assert ciphertext == aead_encrypt(key, nonce, padded, aad)
        assert state.cks == ck_after
        event = {
            "event": "send",
            "message": msg_id,
            "sender": sender,
            "recipient": recipient,
            "text": text,
            "plaintext": hx(plaintext),
            "padded_plaintext": hx(padded) if self.version == 2 else None,
            "state_before": before,
            "chain_key_before": hx(ck_before),
            "chain_key_after": hx(ck_after),
            "message_key": hx(mk),
            "aead_key": hx(key),
            "nonce": hx(nonce),
            "header": hx(header),
            "header_fields": header_fields(header, sender),
            "aad": hx(aad),
            "ciphertext": hx(ciphertext),
            "tag": hx(ciphertext[-16:]),
            "state_after": snapshot(state),
        }
        self.sent[msg_id] = (sender, recipient, header, ciphertext, text)
        self.events.append(event)

    def _receiver_state(self, receiver: str, header: rt.Header, recipient_nick: str) -> rt.RatchetState:
        """The receiver's state, or (for bob's first message) a new one from the setup."""
        existing = self.states.get(receiver)
        if existing is not None:
            return existing
        assert header.setup is not None
        ident = Identity(recipient_nick, self.b.sig_private, DhKeyPair(self.b.dh_private))
        keys, spk = respond(ident, self.secrets, header.setup)
        return rt.RatchetState.for_responder(
            sid=keys.sid,
            ad0=keys.ad0,
            sk=keys.sk,
            me=recipient_nick,
            peer=header.setup.identity.user,
            peer_key=header.setup.identity.key,
            spk=spk,
            opk_id=header.setup.opk_id,
            **({"kem_id": header.setup.kem_id, "version": 2} if self.version == 2 else {}),
        )

    def _tampered(self, msg_id: str, cases: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        sender, recipient, header, ciphertext, _ = self.sent[msg_id]
        out = []
        for field_name, how in cases:
            h, c, s, r = header, ciphertext, sender, recipient
            if field_name == "ciphertext":
                c = flip(c, 0)
            elif field_name == "tag":
                c = flip(c, len(c) - 1)
            elif field_name == "aad.sender":
                s = s[:-1] + chr(ord(s[-1]) ^ 1)
            elif field_name == "aad.recipient":
                r = r[:-1] + chr(ord(r[-1]) ^ 1)
            else:
                (offset, size) = next((o, n) for f, o, n in header_layout(header) if f == field_name)
                h = flip(h, offset + (0 if how == "first" else size - 1), 0x02 if how == "bit1" else 0x01)
            try:
                parsed = rt.parse_header(h, s)
                state = self._receiver_state(recipient, parsed, r).copy()
                state.me, state.peer = r, s
                state._aad_prefix = {}
                rt.decrypt(state, h, parsed, c, now=0.0, random=Draws(fixed("unused draw")))
            except DecryptionError:
                pass
            else:
                raise AssertionError(f"{msg_id}: tampered {field_name} was accepted")
            out.append(
                {
                    "field": field_name,
                    "change": {
                        "first": "bit 0 of the field's first byte flipped",
                        "last": "bit 0 of the field's last byte flipped",
                        "bit1": "bit 1 of the field's first byte flipped",
                    }.get(how, "bit 0 of the last character flipped"),
                    "sender": s,
                    "recipient": r,
                    "header": hx(h),
                    "ciphertext": hx(c),
                }
            )
        return out

    def receive(
        self, msg_id: str, draw_labels: Sequence[str] = (), tamper: Sequence[tuple[str, str]] = ()
    ) -> None:
        sender, recipient, header_bytes, ciphertext, text = self.sent[msg_id]
        header = rt.parse_header(header_bytes, sender)
        tampered = self._tampered(msg_id, tamper)
        fresh = recipient not in self.states
        state = self._receiver_state(recipient, header, recipient)
        before = None if fresh else snapshot(state)
        if fresh:
            self.events.append(
                {
                    "event": "init_responder",
                    "party": recipient,
                    "peer": sender,
                    "from_setup_in": msg_id,
                    "formula": "(SK, AD0, sid) from the setup as in x3dh.json/pqxdh.json; rk = SK; "
                    "dhs = SPK_B (the signed prekey named by spk_id); dhr, cks, ckr = none",
                    "state_after": snapshot(state),
                }
            )
            before = snapshot(state)
        skipped_key = state.skipped.get((header.dh, header.n))
        draws = Draws(*(fixed(label) for label in draw_labels))
        new, plaintext = rt.decrypt(state, header_bytes, header, ciphertext, now=0.0, random=draws)
        draws.done()
        assert plaintext == client_plaintext(text)
        self.states[recipient] = new
        self.events.append(
            {
                "event": "receive",
                "message": msg_id,
                "receiver": recipient,
                "sender": sender,
                "random_draws": [hx(fixed(label)) for label in draw_labels],
                "random_draw_labels": list(draw_labels),
                "from_skipped_key": skipped_key is not None,
                "state_before": before,
                "aad": hx(aad_of(new, sender, recipient, header_bytes)),
                "plaintext": hx(plaintext),
                "state_after": snapshot(new),
                "tampered_must_fail": tampered,
            }
        )

    def replay(self, msg_id: str, why: str) -> None:
        sender, recipient, header_bytes, ciphertext, _ = self.sent[msg_id]
        state = self.states[recipient]
        before = snapshot(state)
        try:
            rt.decrypt(
                state,
                header_bytes,
                rt.parse_header(header_bytes, sender),
                ciphertext,
                now=0.0,
                random=Draws(),
            )
        except DecryptionError:
            pass
        else:
            raise AssertionError(f"replay of {msg_id} accepted")
        assert snapshot(state) == before
        self.events.append(
            {"event": "replay_must_fail", "message": msg_id, "receiver": recipient, "why": why}
        )


_SETUP_TAMPER = [
    ("version", "last"),
    ("flags", "last"),
    ("flags", "bit1"),
    ("sid", "last"),
    ("dh", "first"),
    ("pn", "last"),
    ("n", "last"),
    ("setup.sig_key", "first"),
    ("setup.dh_key", "first"),
    ("setup.dh_sig", "first"),
    ("setup.ephemeral", "first"),
    ("setup.spk_id", "last"),
    ("setup.opk_id", "last"),
    ("ciphertext", ""),
    ("tag", ""),
    ("aad.sender", ""),
    ("aad.recipient", ""),
]
_PLAIN_TAMPER = [
    ("version", "last"),
    ("flags", "last"),
    ("flags", "bit1"),
    ("sid", "last"),
    ("dh", "first"),
    ("pn", "last"),
    ("n", "last"),
    ("ciphertext", ""),
    ("tag", ""),
    ("aad.sender", ""),
    ("aad.recipient", ""),
]
_SKIPPED_TAMPER = [("n", "last"), ("ciphertext", ""), ("tag", ""), ("aad.sender", "")]


def run_conversation(version: int, kem: KemInputs | None) -> Conversation:
    v = f" (v{version})"
    conv = Conversation(version, kem)
    setup_tamper = list(_SETUP_TAMPER)
    if version == 2:
        setup_tamper[13:13] = [("setup.kem_id", "last"), ("setup.kem_ct", "first")]
    conv.send("m1", ALICE, "hi bob")
    conv.send("m2", ALICE, "second, delayed")
    conv.receive("m1", ["bob ratchet 1" + v], setup_tamper)
    conv.send("m3", BOB, "hello Alice")
    conv.receive("m3", ["alice ratchet 2" + v], _PLAIN_TAMPER)
    conv.send("m4", ALICE, "caf\u00e9 \u2615, skipped then delivered late")
    conv.send("m5", ALICE, "arrives before m4")
    conv.send("m6", ALICE, "in order after m5")
    conv.receive("m5", ["bob ratchet 2" + v])
    conv.receive("m4", [], _SKIPPED_TAMPER)
    conv.receive("m2")
    conv.receive("m6")
    conv.send("m7", BOB, "got them all")
    conv.receive("m7", ["alice ratchet 3" + v])
    conv.replay("m6", "a duplicate: same ratchet key, n below the receiving counter")
    conv.replay("m4", "its skipped key was used and deleted")
    conv.replay("m2", "from a finished chain (its key was skipped, used and deleted)")
    conv.replay("m1", "the setup message again, from a finished chain")
    conv.replay("m3", "a duplicate at alice")
    return conv


def ratchet_doc(conv: Conversation, version: int, setup_file: str) -> dict[str, Any]:
    extra = (
        " Version 2: the plaintext is padded before encryption to P || 0x80 || 0x00* up to the next "
        "multiple of 160 bytes (padded_plaintext); the receiver strips it."
        if version == 2
        else ""
    )
    return doc(
        f"A version-{version} double-ratchet conversation between alice (initiator) and bob, from the "
        f"setup of {setup_file} (case 'with one-time prekey'{', KOPK' if version == 2 else ''}) and fixed "
        "ratchet keys (random_draws: the 32-byte X25519 private keys the receiver draws at each DH "
        "ratchet step, in order). KDF_RK, KDF_CK and the message cipher are in primitives.json. Send: "
        "(cks', mk) = KDF_CK(cks); (key, nonce) from mk; header = version|flags|sid|dhs|pn|n[|setup] "
        "(headers.json; the setup is sent until the first reply); AAD = LP(V, 'msg', sid, fold(sender), "
        "fold(recipient), AD0, header); ciphertext = ChaCha20-Poly1305(key, nonce, plaintext, AAD) with "
        "its 16-byte tag appended. The plaintext is what the client encrypts: the UTF-8 JSON object "
        '{"text": ...} (json.dumps, ensure_ascii=False).' + extra + " Receive (Signal's double "
        "ratchet): a key stored for (dh, n) is used and deleted; else a duplicate (dh = dhr, n < nr) or "
        "a ratchet key from a finished chain (old_dhr) is refused; else, for a new ratchet key, keys up "
        "to pn are skipped (stored) in the current receiving chain, then (rk, ckr) = KDF_RK(rk, "
        "X25519(dhs, dh)), dhs = next draw, (rk, cks) = KDF_RK(rk, X25519(dhs, dh)), pn = ns, ns = nr = "
        "0; keys up to n are skipped; (ckr', mk) = KDF_CK(ckr). Events run in order; every state is "
        "the full receiving/sending state ('skipped' in insertion order). tampered_must_fail: each "
        "(sender, recipient, header, ciphertext) must be refused by the receiver in its state_before "
        "(with the recipient's own nick replaced by 'recipient' where that changed; for the first "
        "message the receiver builds its state from the header's setup), leaving the state unchanged. "
        "replay_must_fail: the message delivered again to the receiver's current state must be refused.",
        version=version,
        alice=identity_json(conv.a),
        bob=identity_json(conv.b),
        bob_prekeys=prekey_inputs(with_kem=version == 2),
        setup={
            "ek_private": hx(fixed("alice ek 1" if version == 1 else "alice ek 3")),
            "spk_id": conv.setup.spk_id,
            "opk_id": conv.setup.opk_id,
            **(
                {"kem_id": conv.setup.kem_id, "kem_ciphertext": hx(conv.setup.kem_ct)} if version == 2 else {}
            ),
            "sk": hx(conv.keys.sk),
            "ad0": hx(conv.keys.ad0),
            "sid": hx(conv.keys.sid),
        },
        events=conv.events,
    )


def gen_ratchet() -> dict[str, Any]:
    return ratchet_doc(run_conversation(1, None), 1, "x3dh.json")


def gen_ratchet_v2(kem: KemInputs) -> dict[str, Any]:
    return ratchet_doc(run_conversation(2, kem), 2, "pqxdh.json")


def gen_padding() -> dict[str, Any]:
    cases = []
    for n in (0, 1, 14, 158, 159, 160, 161, 319, 320):
        plaintext = b"x" * n
        padded = rt.pad(plaintext)
        assert len(padded) % 160 == 0 and padded.rstrip(b"\x00") == plaintext + b"\x80"
        assert rt.unpad(padded) == plaintext
        cases.append({"plaintext": hx(plaintext), "padded": hx(padded), "padded_length": len(padded)})
    bad: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("all zeros", bytes(160)),
        ("no 0x80 marker", b"x" * 160),
        ("marker followed by a non-zero byte", b"x" * 10 + b"\x80" + b"\x01" + bytes(148)),
        ("not a multiple of 160", b"x" * 10 + b"\x80" + bytes(10)),
        ("marker 0x81", b"x" * 10 + b"\x81" + bytes(149)),
    ]
    rejected = []
    for name, data in bad:
        try:
            rt.unpad(data)
        except DecryptionError:
            rejected.append({"case": name, "padded": hx(data)})
        else:
            raise AssertionError(f"unpad accepted {name}")
    return doc(
        "Version-2 plaintext padding: pad(P) = P || 0x80 || 0x00* up to the next multiple of 160 bytes "
        "(at least the 0x80 byte is added, so a 160-byte P becomes 320 bytes). unpad strips trailing "
        "0x00 bytes and requires a final 0x80 and a length that is a non-zero multiple of 160; "
        "rejected: each must be refused (the message is malformed).",
        block=rt.PAD_BLOCK,
        cases=cases,
        rejected=rejected,
    )


# -- login.json ------------------------------------------------------------------------


def gen_login() -> dict[str, Any]:
    a, b = alice(), bob()
    nonce = fixed("login nonce")
    sig_key = a.public.sig_key
    message = login_message(ALICE, nonce, sig_key)
    assert message == lp(VERSION_LABEL, b"login", fold_nick(ALICE), nonce, sig_key)
    assert login_message(ALICE.upper(), nonce, sig_key) == message
    signature = a.identity.sign(message)
    assert signature == ed25519_sign(a.sig_private, message)
    login_bad = [
        ("another nick", login_message("Mallory", nonce, sig_key), signature, sig_key),
        ("nonce bit 0 of byte 0 flipped", login_message(ALICE, flip(nonce, 0), sig_key), signature, sig_key),
        ("signature bit 0 of byte 0 flipped", message, flip(signature, 0), sig_key),
        ("signature bit 0 of byte 63 flipped", message, flip(signature, 63), sig_key),
        (
            "verified under bob's key",
            login_message(ALICE, nonce, b.public.sig_key),
            signature,
            b.public.sig_key,
        ),
    ]
    new = "Alice.2"
    rename = rename_message(ALICE, new, nonce)
    assert rename == lp(RENAME_LABEL, b"rename", fold_nick(ALICE), fold_nick(new), nonce)
    rename_sig = a.identity.sign(rename)
    rename_bad = [
        ("old and new swapped", rename_message(new, ALICE, nonce), rename_sig, sig_key),
        ("another new nick", rename_message(ALICE, "Alice.3", nonce), rename_sig, sig_key),
        ("another session's nonce", rename_message(ALICE, new, fixed("other nonce")), rename_sig, sig_key),
        ("signature bit 0 of byte 0 flipped", rename, flip(rename_sig, 0), sig_key),
    ]

    def bad(cases: list[tuple[str, bytes, bytes, bytes]]) -> list[dict[str, str]]:
        for _, m, s, k in cases:
            assert not ed25519_verify(k, s, m)
        return [{"case": c, "message": hx(m), "signature": hx(s), "sig_key": hx(k)} for c, m, s, k in cases]

    return doc(
        "What a client signs with its identity key (Ed25519, identity.json's alice). Login: message = "
        "LP(V, 'login', fold(nick), nonce, sig_key), nonce being the server's 32-byte challenge. Rename: "
        "message = LP('securechat-v1', 'rename', fold(old), fold(new), nonce), nonce being this session's "
        "login challenge. rejected: each (message, signature, sig_key) must fail to verify.",
        signer=identity_json(a),
        login={
            "nick": ALICE,
            "nonce": hx(nonce),
            "sig_key": hx(sig_key),
            "message": hx(message),
            "signature": hx(signature),
            "rejected": bad(login_bad),
        },
        rename={
            "old": ALICE,
            "new": new,
            "nonce": hx(nonce),
            "message": hx(rename),
            "signature": hx(rename_sig),
            "rejected": bad(rename_bad),
        },
    )


# -- safety_number.json ----------------------------------------------------------------


def gen_safety() -> dict[str, Any]:
    a, b = alice(), bob()
    pa, pb = a.public, b.public
    ida, idb = fold_nick(pa.user).encode(), fold_nick(pb.user).encode()
    half_a, half_b = safety_number_half(pa.key, ida), safety_number_half(pb.key, idb)
    digits = safety_number(pa.key, ida, pb.key, idb)
    assert digits == "".join(sorted((half_a, half_b)))
    formatted = format_safety_number(digits)
    assert a.identity.safety_number_with(pb) == b.identity.safety_number_with(pa) == formatted
    return doc(
        "Safety numbers (libsignal's numeric fingerprint). Per party: h = 0x0000 || key || stable_id, "
        "then 5200 times h = SHA-512(h || key); the first 30 bytes of h as six 5-byte big-endian "
        "integers, each mod 100000, zero-padded to 5 digits (30 digits). key = IK (64 bytes: sig_key "
        "|| dh_key); stable_id = the UTF-8 of the folded (lower-case) nick. The number is the two "
        "halves sorted and concatenated (60 digits, the same for both sides); formatted as 12 groups "
        "of 5 digits separated by single spaces.",
        iterations=ITERATIONS,
        parties=[
            {"user": pa.user, "ik": hx(pa.key), "stable_id": hx(ida), "half": half_a},
            {"user": pb.user, "ik": hx(pb.key), "stable_id": hx(idb), "half": half_b},
        ],
        digits=digits,
        formatted=formatted,
    )


# -- keystore.json ---------------------------------------------------------------------


def gen_keystore() -> dict[str, Any]:
    passphrase = "correct horse battery staple \u2713"
    headers: list[dict[str, Any]] = []
    for label, params in (("fast", ks.KdfParams(n=2**10, r=8, p=1)), ("default", ks.KdfParams())):
        salt, nonce, data_key = (
            fixed(f"keystore {label} salt")[:16],
            fixed(f"keystore {label} nonce")[:12],
            fixed(f"keystore {label} data key"),
        )
        draws = Draws(salt, nonce, data_key)
        header, key = ks.new_header(passphrase, params=params, random=draws)
        draws.done()
        assert key == data_key
        kek = ks._kek(passphrase, salt, params)
        header_aad = lp("securechat-keystore", 1, b"scrypt", params.n, params.r, params.p, salt)
        assert header_aad == ks._header_aad(params, salt)
        wrapped = aead_encrypt(kek, nonce, data_key, header_aad)
        assert json.loads(header)["wrapped_key"] == base64.b64encode(wrapped).decode()
        if label == "fast":  # (each scrypt with the default parameters takes about 0.6 s)
            assert ks.unlock(header, passphrase) == data_key
        headers.append(
            {
                "name": label,
                "passphrase": passphrase,
                "kdf": {"name": "scrypt", "n": params.n, "r": params.r, "p": params.p, "length": 32},
                "salt": hx(salt),
                "nonce": hx(nonce),
                "data_key": hx(data_key),
                "random_draws": [hx(salt), hx(nonce), hx(data_key)],
                "kek": hx(kek),
                "header_aad": hx(header_aad),
                "wrapped_key": hx(wrapped),
                "header_json": header.decode(),
            }
        )
    data_key = bytes.fromhex(headers[0]["data_key"])
    folded = fold_nick(BOB)
    tag_key = hkdf_sha256(salt=b"", ikm=data_key, info=lp(VERSION_LABEL, b"keystore-peer-tag"), length=32)
    tag = hmac_sha256(tag_key, folded.encode()).hex()[:32]
    assert ks.peer_tag(data_key, folded) == tag
    records = []
    for name, plaintext in (
        ("identity", b'{"example": "any record bytes"}'),
        (f"message:out:{tag}:0001", client_plaintext("a kept whisper")),
    ):
        nonce = fixed(f"keystore record nonce {name}")[:12]
        blob = ks.seal(data_key, name, plaintext, Draws(nonce))
        aad = lp(VERSION_LABEL, b"keystore-record", name)
        assert blob == nonce + aead_encrypt(data_key, nonce, plaintext, aad)
        assert ks.unseal(data_key, name, blob) == plaintext
        records.append(
            {"name": name, "plaintext": hx(plaintext), "nonce": hx(nonce), "aad": hx(aad), "sealed": hx(blob)}
        )
    fast = headers[0]
    obj = json.loads(fast["header_json"])

    def altered(**changes: Any) -> str:
        new = json.loads(fast["header_json"])
        for path, value in changes.items():
            if "__" in path:
                outer, inner = path.split("__")
                new[outer][inner] = value
            else:
                new[path] = value
        return json.dumps(new)

    salt_b = base64.b64decode(obj["kdf"]["salt"])
    nonce_b = base64.b64decode(obj["nonce"])
    wrapped_b = base64.b64decode(obj["wrapped_key"])
    header_rejected = [
        ("wrong passphrase", fast["header_json"], passphrase + "!"),
        ("no passphrase", fast["header_json"], ""),
        ("kdf n doubled", altered(kdf__n=2**11), passphrase),
        ("kdf r + 1", altered(kdf__r=9), passphrase),
        ("salt bit 0 flipped", altered(kdf__salt=base64.b64encode(flip(salt_b, 0)).decode()), passphrase),
        ("nonce bit 0 flipped", altered(nonce=base64.b64encode(flip(nonce_b, 0)).decode()), passphrase),
        (
            "wrapped key bit 0 flipped",
            altered(wrapped_key=base64.b64encode(flip(wrapped_b, 0)).decode()),
            passphrase,
        ),
        ("kdf n out of range (2**21)", altered(kdf__n=2**21), passphrase),
    ]
    for name, header_text, phrase in header_rejected:
        try:
            ks.unlock(header_text.encode(), phrase)
        except KeystoreError:
            continue
        raise AssertionError(f"unlock accepted {name}")
    sealed = bytes.fromhex(records[0]["sealed"])
    record_rejected = [
        ("sealed bit 0 of the nonce flipped", records[0]["name"], flip(sealed, 0)),
        ("sealed bit 0 of the ciphertext flipped", records[0]["name"], flip(sealed, 12)),
        ("sealed bit 0 of the tag's last byte flipped", records[0]["name"], flip(sealed, len(sealed) - 1)),
        ("under another record name", "pins", sealed),
        ("truncated to the nonce", records[0]["name"], sealed[:12]),
    ]
    for name, record_name, blob in record_rejected:
        try:
            ks.unseal(data_key, record_name, blob)
        except KeystoreError:
            continue
        raise AssertionError(f"unseal accepted {name}")
    unprotected, none_key = ks.new_header(None)
    assert none_key is None
    return doc(
        "The keystore's sealing (securechat.e2e.keystore). Header: kek = scrypt(passphrase UTF-8, salt "
        "(16 bytes), n, r, p, length 32); wrapped_key = ChaCha20-Poly1305(kek, nonce (12), data_key (32), "
        "header_aad) with header_aad = LP('securechat-keystore', 1, 'scrypt', n, r, p, salt); header_json "
        "is keystore.json as written (base64 salt, nonce and wrapped key); a reader needs its fields, "
        "not its exact bytes. random_draws: salt, nonce, data_key in the order drawn. Records (with "
        "the 'fast' header's data_key): sealed = nonce (12) || ChaCha20-Poly1305(data_key, nonce, "
        "plaintext, LP(V, 'keystore-record', name)). Messages are filed under peer_tag = the first 32 hex "
        "digits of HMAC-SHA256(tag_key, folded nick) with tag_key = HKDF-SHA256(salt = empty, IKM = "
        "data_key, info = LP(V, 'keystore-peer-tag'), L = 32). Without a passphrase the keystore is "
        "not encrypted: the header is 'unprotected_header_json' and records are stored as they are. "
        "header_rejected / record_rejected must fail to unlock / unseal.",
        headers=headers,
        peer_tag={"data_key": fast["data_key"], "folded_nick": folded, "tag_key": hx(tag_key), "tag": tag},
        records=records,
        unprotected_header_json=unprotected.decode(),
        header_rejected=[{"case": c, "header_json": h, "passphrase": p} for c, h, p in header_rejected],
        record_rejected=[{"case": c, "name": n, "sealed": hx(b)} for c, n, b in record_rejected],
    )


# -- device_list.json ------------------------------------------------------------------


DEVICE_PHONE = "phone"
DEVICE_LAPTOP = "laptop"  # alice's first device, whose device key is her identity key


def device_json(device: Device) -> dict[str, Any]:
    return {"device": device.device, "sig_key": hx(device.sig_key)}


def device_list_formula(user: str, version: int, devices: Sequence[Device]) -> bytes:
    fields: list[bytes | str | int] = [VERSION_LABEL, b"devices", fold_nick(user), version, len(devices)]
    for device in devices:
        fields += [device.device, device.sig_key]
    return lp(*fields)


def gen_device_list() -> dict[str, Any]:
    a = alice()
    ident = a.identity
    phone_private = fixed("alice device phone ed25519")
    laptop = Device(DEVICE_LAPTOP, ident.sig_key)
    phone = Device(DEVICE_PHONE, ed25519_public(phone_private))
    lists = []
    signed: dict[int, DeviceList] = {}
    for version, devices in ((1, (laptop,)), (2, (laptop, phone))):
        message = device_list_message(ident.user, version, devices)
        assert message == device_list_formula(ident.user, version, devices)
        listed = sign_device_list(ident, version, devices)
        assert listed.signature == ed25519_sign(a.sig_private, message)
        assert ed25519_verify(ident.sig_key, listed.signature, message)
        listed.check(ident.sig_key, at_least=version)
        signed[version] = listed
        lists.append(
            {
                "user": ident.user,
                "version": version,
                "devices": [device_json(d) for d in devices],
                "message": hx(message),
                "signature": hx(listed.signature),
            }
        )
    current = signed[2]
    other_key = ed25519_public(fixed("device list server's own device ed25519"))

    def resigned(version: int, devices: tuple[Device, ...]) -> bytes:
        """Signed by alice's identity key: a list refused for a rule, not its signature."""
        return ident.sign(device_list_formula(ident.user, version, devices))

    out: list[dict[str, Any]] = []

    def case(
        name: str,
        accept: bool,
        *,
        user: str = ident.user,
        version: int = current.version,
        devices: tuple[Device, ...] = current.devices,
        signature: bytes = current.signature,
        at_least: int = 0,
        identity_key: bytes = ident.sig_key,
        rollback: bool = False,
    ) -> None:
        assert not (accept and rollback), name
        try:
            DeviceList(user, version, devices, signature).check(identity_key, at_least=at_least)
        except DeviceListError as refused:
            assert not accept, name
            # Refused as a rollback exactly when signed and only older than one seen.
            assert ("went back" in str(refused)) is rollback, name
        else:
            assert accept, name
        if rollback:
            DeviceList(user, version, devices, signature).check(identity_key, at_least=version)
        out.append(
            {
                "case": name,
                "user": user,
                "version": version,
                "devices": [device_json(d) for d in devices],
                "signature": hx(signature),
                "identity_key": hx(identity_key),
                "at_least": at_least,
                "accept": accept,
                "rollback": rollback,
            }
        )

    sig, v1 = current.signature, signed[1]
    case("as signed", True, at_least=2)
    case("as signed, nothing seen before", True)
    case("a newer version than the one seen", True, at_least=1)
    case("checked under the nick in another case (folded alike)", True, user="ALICE", at_least=2)
    case("the only device is the identity's", True, version=1, devices=v1.devices, signature=v1.signature)
    case(
        "an older version than the one seen (rolled back)",
        False,
        version=1,
        devices=v1.devices,
        signature=v1.signature,
        at_least=2,
        rollback=True,
    )
    # The signature is checked before the version: a forged list is refused as forged,
    # however old, never reported as a rollback.
    case(
        "an older version than the one seen, its signature bit 0 of byte 0 flipped (forged)",
        False,
        version=1,
        devices=v1.devices,
        signature=flip(v1.signature, 0),
        at_least=2,
    )
    case(
        "an older version than the one seen, with a device the server added (forged)",
        False,
        version=1,
        devices=(laptop, Device("added", other_key)),
        signature=v1.signature,
        at_least=2,
    )
    case("version + 1 under the same signature", False, version=3)
    case("checked under another nick", False, user="mallory")
    case("checked under another identity key", False, identity_key=bob().identity.sig_key)
    case("signature bit 0 of byte 0 (R) flipped", False, signature=flip(sig, 0))
    case("signature bit 0 of byte 63 (S) flipped", False, signature=flip(sig, 63))
    case("signature truncated to 63 bytes", False, signature=sig[:63])
    case(
        "phone key bit 0 of byte 0 flipped",
        False,
        devices=(laptop, Device(DEVICE_PHONE, flip(phone.sig_key, 0))),
    )
    case("phone renamed 'tablet'", False, devices=(laptop, Device("tablet", phone.sig_key)))
    case("devices in another order", False, devices=(phone, laptop))
    case("a device the server added", False, devices=(laptop, phone, Device("added", other_key)))
    case("a device the server removed", False, devices=(laptop,))

    # Signed by the identity key, each accepted or refused by one rule of the check.
    many = tuple(
        Device(f"d{n}", ed25519_public(fixed(f"device list d{n} ed25519"))) for n in range(1, MAX_DEVICES)
    )
    full = (laptop, *many)  # MAX_DEVICES devices, the identity's among them
    over = (*full, Device("one-too-many", ed25519_public(fixed("device list one too many ed25519"))))
    signed_cases: list[tuple[str, bool, int, tuple[Device, ...]]] = [
        ("MAX_DEVICES devices", True, 3, full),
        (
            "a device id of 32 characters of a-z 0-9 _ -",
            True,
            3,
            (laptop, Device("a-z_09" + "x" * 26, phone.sig_key)),
        ),
        ("version 2**63 - 1", True, 2**63 - 1, (laptop,)),
        ("version 0", False, 0, (laptop,)),
        ("version 2**63", False, 2**63, (laptop,)),
        ("no devices", False, 3, ()),
        ("MAX_DEVICES + 1 devices", False, 3, over),
        ("the identity's own device missing", False, 3, (phone,)),
        ("a device id twice", False, 3, (laptop, Device(DEVICE_LAPTOP, phone.sig_key))),
        ("a device key twice", False, 3, (laptop, Device(DEVICE_PHONE, laptop.sig_key))),
        ("an empty device id", False, 3, (laptop, Device("", phone.sig_key))),
        ("a device id of 33 characters", False, 3, (laptop, Device("p" * 33, phone.sig_key))),
        ("a device id with a space", False, 3, (laptop, Device("my phone", phone.sig_key))),
        ("a device id with a dot", False, 3, (laptop, Device("phone.2", phone.sig_key))),
        ("a non-ASCII device id", False, 3, (laptop, Device("t\u00e9l\u00e9phone", phone.sig_key))),
        ("an upper-case letter in a device id", False, 3, (laptop, Device("Phone", phone.sig_key))),
        ("a device key of 31 bytes", False, 3, (laptop, Device(DEVICE_PHONE, phone.sig_key[:31]))),
    ]
    for name, accept, version, named in signed_cases:
        signature = resigned(version, named)
        assert ed25519_verify(ident.sig_key, signature, device_list_formula(ident.user, version, named))
        case(f"{name} (signed)", accept, version=version, devices=named, signature=signature)
    return doc(
        "A person's device list, signed by their identity key (docs/e2e.md, 'Device lists'). "
        "message = LP(V, 'devices', fold(user), version, n, id_1, key_1, ..., id_n, key_n): version and "
        "n (the number of devices) are integers, each id a string, each key a 32-byte Ed25519 public key, "
        "in the list's order; signature = Ed25519(the identity's sig_private, message). The signer is "
        "alice (identity.json); her first device, 'laptop', has her identity key as its device key; "
        "'phone' has the Ed25519 key of phone_private. lists: version 1 (laptop) and version 2 (laptop, "
        "phone). cases: a list (user, version, devices, signature) checked under the pinned identity_key "
        "having seen versions up to at_least; it must be accepted exactly when 'accept' is true. A reader "
        "accepts a list only if 1 <= version <= 2**63 - 1, 1 <= n <= max_devices, no id and no key is "
        "listed twice, every id is 1-32 characters of a-z 0-9 _ - (lower case only), every key is 32 "
        "bytes, identity_key is one of the keys, the signature (64 bytes) verifies under identity_key "
        "over the message built with fold(user), and, checked last, version >= at_least. rollback: "
        "true for a list refused only for being older than at_least (reported as a rollback: the "
        "server may be hiding a device); a list whose signature does not verify is refused as forged, "
        "never as a rollback, whatever its version.",
        signer=identity_json(a),
        identity_key=hx(ident.sig_key),
        phone_private=hx(phone_private),
        phone_private_label="alice device phone ed25519",
        max_devices=MAX_DEVICES,
        lists=lists,
        cases=out,
    )


# -- pairing.json ----------------------------------------------------------------------


def must_refuse(what: str, step: Callable[..., object], *args: Any) -> None:
    """`step(*args)` raises `PairingError`, and not `WrongCode` (a refusal, not a typo)."""
    try:
        step(*args)
    except WrongCode:
        raise AssertionError(f"a wrong code, not a refusal: {what}") from None
    except PairingError:
        return
    raise AssertionError(what)


#: Low-order X25519 public keys (u as 32 bytes little-endian, as sent; the last two are
#: not reduced mod p): X25519 of any private key with one of them is 32 zero bytes.
LOW_ORDER_KEYS = (
    ("u = 0", 0),
    ("u = 1", 1),
    (
        "u = 325606250916557431795983626356110631294008115727848805560023387167927233504 (order 8)",
        325606250916557431795983626356110631294008115727848805560023387167927233504,
    ),
    (
        "u = 39382357235489614581723060781553021112529911719440698176882885853963445705823 (order 8)",
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    ),
    ("u = p - 1", 2**255 - 20),
    ("u = p", 2**255 - 19),
    ("u = p + 1", 2**255 - 18),
)


def confirm_input_formula(commit: bytes, b_public: bytes, a_public: bytes) -> bytes:
    """The second code's hash input: LP(V, "link-confirm", commit, B, A) (docs/e2e.md,
    "Linking a device")."""
    return lp(VERSION_LABEL, b"link-confirm", commit, b_public, a_public)


def gen_pairing() -> dict[str, Any]:
    a_private, b_private = fixed("pairing new device ephemeral"), fixed("pairing existing device ephemeral")
    other_b_private = fixed("pairing another existing device ephemeral")
    payload_to_existing = b"example payload to the existing device: the new device's id and Ed25519 key"
    payload_to_new = (
        b"example answer to the new device: the identity's public keys and its signed device list"
    )
    basepoint = (9).to_bytes(32, "little")

    draws_new, draws_existing = Draws(a_private), Draws(b_private)
    new = NewDevice(draws_new)
    existing = ExistingDevice(new.commitment, draws_existing)
    draws_new.done()
    draws_existing.done()
    states_new, states_existing = [new.state], [existing.state]
    a_public, b_public = new._ephemeral.public, existing.answer
    assert a_public == x25519(a_private, basepoint)
    assert b_public == x25519(b_private, basepoint)
    commit_input = lp(VERSION_LABEL, b"link-commit", a_public)
    commit = sha256(commit_input)
    assert new.commitment == commit

    revealed, sealed = new.reveal(b_public, payload_to_existing)
    states_new.append(new.state)
    assert revealed == a_public
    shared = x25519(a_private, b_public)
    assert shared == x25519(b_private, a_public)
    key_info = lp(VERSION_LABEL, b"link-key", commit, b_public, a_public)
    k = hkdf_sha256(salt=bytes(32), ikm=shared, info=key_info, length=32)
    code_input = lp(VERSION_LABEL, b"link-code", commit, b_public, a_public)
    code_hash = sha256(code_input)
    code_int = int.from_bytes(code_hash[:8], "big")
    code = f"{code_int % 10**CODE_DIGITS:06d}"
    assert new.code == code
    confirm_input = confirm_input_formula(commit, b_public, a_public)
    confirm_hash = sha256(confirm_input)
    confirm_int = int.from_bytes(confirm_hash[:8], "big")
    confirmation = f"{confirm_int % 10**CODE_DIGITS:06d}"
    assert confirmation != code
    nonce_to_existing, nonce_to_new = bytes(12), bytes(11) + b"\x01"
    aad_to_existing = lp(VERSION_LABEL, b"link", commit, b_public, a_public, b"to-existing")
    aad_to_new = lp(VERSION_LABEL, b"link", commit, b_public, a_public, b"to-new")
    assert sealed == aead_encrypt(k, nonce_to_existing, payload_to_existing, aad_to_existing)

    existing.receive_reveal(a_public, sealed)
    states_existing.append(existing.state)
    assert existing.confirmation == ""  # shown only once the first code was right
    assert existing.confirm(code[:3] + " " + code[3:]) == payload_to_existing
    states_existing.append(existing.state)
    assert existing.confirmation == confirmation
    answer = existing.seal_answer(payload_to_new)
    states_existing.append(existing.state)
    assert answer == aead_encrypt(k, nonce_to_new, payload_to_new, aad_to_new)
    must_refuse("a second answer sealed", existing.seal_answer, payload_to_new)
    must_refuse("the answer opened before the second code", new.open_answer, answer)
    assert new.state is PairingState.REVEALED
    new.confirm(confirmation)
    states_new.append(new.state)
    assert new.open_answer(answer) == payload_to_new
    states_new.append(new.state)
    must_refuse("the answer opened twice", new.open_answer, answer)
    states = [PairingState.ANSWERED, PairingState.REVEALED, PairingState.CONFIRMED, PairingState.DONE]
    assert states_new == states_existing == states

    def fresh_new() -> NewDevice:
        return NewDevice(Draws(a_private))

    def revealed_new() -> NewDevice:
        side = fresh_new()
        assert side.reveal(b_public, payload_to_existing) == (a_public, sealed)
        return side

    def revealed_existing() -> ExistingDevice:
        side = ExistingDevice(commit, Draws(b_private))
        side.receive_reveal(a_public, sealed)
        return side

    wrong = f"{(code_int + 1) % 10**CODE_DIGITS:06d}"
    typed = [
        (code, True),
        (f"{code[:3]} {code[3:]}", True),
        (f" {code}\n", True),
        (f"{code[:2]}\t{code[2:4]} {code[4:]}", True),
        (wrong, False),
        (f"{code[:3]}-{code[3:]}", False),
        (code[:5], False),
        (code + "0", False),
        ("", False),
    ]
    for text, right in typed:
        side = revealed_existing()
        try:
            opened = side.confirm(text)
        except WrongCode as refused:
            assert not right and refused.attempts_left == MAX_ATTEMPTS - 1, text
            assert side.confirmation == "" and side.state is PairingState.REVEALED, text
        else:
            assert right and opened == payload_to_existing, text
            assert side.confirmation == confirmation, text

    wrong_confirmation = f"{(confirm_int + 1) % 10**CODE_DIGITS:06d}"
    assert len({code, confirmation, wrong_confirmation}) == 3
    typed_on_new = [
        (confirmation, True),
        (f"{confirmation[:3]} {confirmation[3:]}", True),
        (f"\t{confirmation}\r\n", True),
        (code, False),  # the first code, the one the new device shows itself
        (wrong_confirmation, False),
        (f"{confirmation[:3]}-{confirmation[3:]}", False),
        (confirmation[:5], False),
        (confirmation + "0", False),
        ("", False),
    ]
    for text, right in typed_on_new:
        new_side = revealed_new()
        try:
            new_side.confirm(text)
        except WrongCode as refused:
            assert not right and refused.attempts_left == MAX_ATTEMPTS - 1, text
            assert new_side.state is PairingState.REVEALED, text
        else:
            assert right and new_side.state is PairingState.CONFIRMED, text
            assert new_side.open_answer(answer) == payload_to_new

    reveal_rejected = [
        ("A bit 0 of byte 0 flipped (not the key committed to)", flip(a_public, 0)),
        ("A truncated to 31 bytes", a_public[:31]),
        ("B sent back as A", b_public),
    ]
    for name, candidate in reveal_rejected:
        side = ExistingDevice(commit, Draws(b_private))
        must_refuse(f"a reveal accepted: {name}", side.receive_reveal, candidate, sealed)
        assert side.state is PairingState.FAILED, name

    b_rejected = [
        ("B truncated to 31 bytes", b_public[:31]),
        ("B with a 33rd byte", b_public + b"\x00"),
        ("empty", b""),
    ]
    for name, candidate in b_rejected:
        new_side = fresh_new()
        must_refuse(f"a B accepted: {name}", new_side.reveal, candidate, payload_to_existing)
        assert new_side.state is PairingState.FAILED and new_side.code == "", name

    other_b_public = x25519(other_b_private, basepoint)
    second_b_rejected = [
        ("the same B again", b_public),
        ("the B of another existing device", other_b_public),
    ]
    for name, candidate in second_b_rejected:
        for confirmed in (False, True):
            new_side = revealed_new()
            if confirmed:
                new_side.confirm(confirmation)
            must_refuse(f"a second B: {name}", new_side.reveal, candidate, payload_to_existing)
            assert new_side.state is PairingState.FAILED, name
            must_refuse(f"a code after a second B: {name}", new_side.confirm, confirmation)
            must_refuse(f"an answer after a second B: {name}", new_side.open_answer, answer)

    low_order_rejected = []
    for name, u in LOW_ORDER_KEYS:
        key = u.to_bytes(32, "little")
        try:
            x25519(a_private, key)
        except ValueError:
            pass
        else:
            raise AssertionError(f"a low-order key gave a shared secret: {name}")
        key_commitment = sha256(lp(VERSION_LABEL, b"link-commit", key))
        new_side = fresh_new()
        must_refuse(f"a low-order B: {name}", new_side.reveal, key, payload_to_existing)
        assert new_side.state is PairingState.FAILED, name
        existing_side = ExistingDevice(key_commitment, Draws(b_private))
        must_refuse(f"a low-order A: {name}", existing_side.receive_reveal, key, sealed)
        assert existing_side.state is PairingState.FAILED, name
        low_order_rejected.append({"case": name, "key": hx(key), "commitment": hx(key_commitment)})

    sealed_rejected = [
        ("bit 0 of byte 0 of the ciphertext flipped", flip(sealed, 0)),
        ("bit 0 of the tag's last byte flipped", flip(sealed, len(sealed) - 1)),
        ("the tag removed", sealed[:-16]),
        ("the answer to the new device in its place", answer),
    ]
    for name, candidate in sealed_rejected:
        side = ExistingDevice(commit, Draws(b_private))
        side.receive_reveal(a_public, candidate)
        try:
            side.confirm(code)
        except WrongCode:
            raise AssertionError(f"the right code refused: {name}") from None
        except PairingError:
            assert side.state is PairingState.FAILED and side.confirmation == "", name
            continue
        raise AssertionError(f"a sealed payload accepted: {name}")
    answer_rejected = [
        ("bit 0 of byte 0 of the ciphertext flipped", flip(answer, 0)),
        ("bit 0 of the tag's last byte flipped", flip(answer, len(answer) - 1)),
        ("the sealed payload to the existing device sent back", sealed),
        ("empty", b""),
    ]
    for name, candidate in answer_rejected:
        new_side = revealed_new()
        new_side.confirm(confirmation)
        must_refuse(f"an answer accepted: {name}", new_side.open_answer, candidate)
        assert new_side.state is PairingState.FAILED, name
    return doc(
        "Linking a device (docs/e2e.md, 'Linking a device'). The new device draws a (a_private) and "
        "commits: commitment = SHA-256(commit_input), commit_input = LP(V, 'link-commit', A), A = "
        "X25519(a, 9). The existing device, given the commitment, draws b (b_private) and answers B = "
        "X25519(b, 9). The new device reveals A and sealed_to_existing = ChaCha20-Poly1305(k, "
        "nonce_to_existing, payload_to_existing, aad_to_existing), where shared = X25519(a, B) = "
        "X25519(b, A), k = HKDF-SHA256(salt = 0x00*32, IKM = shared, info = key_info, L = 32), key_info = "
        "LP(V, 'link-key', commitment, B, A), aad_to_existing = LP(V, 'link', commitment, B, A, "
        "'to-existing'), and shows code = the first 8 bytes of SHA-256(code_input) as a big-endian "
        "integer (code_int) mod 10**6, written as 6 digits; code_input = LP(V, 'link-code', commitment, "
        "B, A). Once that code is typed on it, the existing device opens the payload, shows the second "
        "code, confirmation, made from confirm_input as code from code_input (confirm_hash, confirm_int); "
        "confirm_input is LP(V, 'link-confirm', commit, B, A). It answers sealed_to_new = "
        "ChaCha20-Poly1305(k, nonce_to_new, payload_to_new, aad_to_new), aad_to_new = LP(V, 'link', "
        "commitment, B, A, 'to-new'), which the new device opens only once confirmation is typed on it. "
        "states: the states each device goes through, in order, when all goes well. The payloads are "
        "opaque to the pairing: these two are example bytes, not a format. typed: what a person types "
        "on the existing device (for code), typed_on_new: on the new device (for confirmation), each "
        "accepted exactly when 'right' (whitespace is ignored, nothing else; a wrong one leaves "
        "max_attempts - 1 more tries). reveal_rejected: an A the existing device must refuse (the "
        "pairing is then over); b_rejected: a B the new device must refuse (the pairing is then over); "
        "second_b_rejected: a B sent to the new device after it revealed A, which it must refuse, the "
        "pairing then over; low_order_rejected: low-order X25519 keys, each refused as B by the new "
        "device and, given its commitment, as A by the existing device, the pairing then over; "
        "sealed_rejected: a sealed_to_existing that must not open although the right code is typed "
        "(the pairing is then over); answer_rejected: a sealed_to_new the new device must refuse "
        "although confirmation was typed (the pairing is then over).",
        max_attempts=MAX_ATTEMPTS,
        code_digits=CODE_DIGITS,
        new_device={
            "a_private": hx(a_private),
            "a_private_label": "pairing new device ephemeral",
            "a_public": hx(a_public),
        },
        existing_device={
            "b_private": hx(b_private),
            "b_private_label": "pairing existing device ephemeral",
            "b_public": hx(b_public),
        },
        commit_input=hx(commit_input),
        commitment=hx(commit),
        shared=hx(shared),
        key_info=hx(key_info),
        k=hx(k),
        code_input=hx(code_input),
        code_hash=hx(code_hash),
        code_int=code_int,
        code=code,
        confirm_input=hx(confirm_input),
        confirm_hash=hx(confirm_hash),
        confirm_int=confirm_int,
        confirmation=confirmation,
        payload_to_existing=hx(payload_to_existing),
        nonce_to_existing=hx(nonce_to_existing),
        aad_to_existing=hx(aad_to_existing),
        sealed_to_existing=hx(sealed),
        payload_to_new=hx(payload_to_new),
        nonce_to_new=hx(nonce_to_new),
        aad_to_new=hx(aad_to_new),
        sealed_to_new=hx(answer),
        states=[state.value for state in states],
        typed=[{"typed": t, "right": r} for t, r in typed],
        typed_on_new=[{"typed": t, "right": r} for t, r in typed_on_new],
        reveal_rejected=[{"case": c, "a_public": hx(v)} for c, v in reveal_rejected],
        b_rejected=[{"case": c, "b_public": hx(v)} for c, v in b_rejected],
        second_b_rejected=[{"case": c, "b_public": hx(v)} for c, v in second_b_rejected],
        low_order_rejected=low_order_rejected,
        sealed_rejected=[{"case": c, "sealed_to_existing": hx(v)} for c, v in sealed_rejected],
        answer_rejected=[{"case": c, "sealed_to_new": hx(v)} for c, v in answer_rejected],
    )


# -- main ------------------------------------------------------------------------------


#: The files written, in the order they are made.
FILES = (
    "primitives.json",
    "identity.json",
    "prekeys.json",
    "x3dh.json",
    "pqxdh.json",
    "headers.json",
    "padding.json",
    "ratchet.json",
    "ratchet_v2.json",
    "login.json",
    "safety_number.json",
    "keystore.json",
    "device_list.json",
    "pairing.json",
)


def build(kem_from: Path | None = HERE) -> dict[str, str]:
    """Every file's name and exact contents."""
    kem = KemInputs(load_frozen_kem(kem_from))
    docs = {
        "primitives.json": gen_primitives(),
        "identity.json": gen_identity(),
        "prekeys.json": gen_prekeys(),
        "x3dh.json": gen_x3dh(),
        "pqxdh.json": gen_pqxdh(kem),
        "headers.json": gen_headers(kem),
        "padding.json": gen_padding(),
        "ratchet.json": gen_ratchet(),
        "ratchet_v2.json": gen_ratchet_v2(kem),
        "login.json": gen_login(),
        "safety_number.json": gen_safety(),
        "keystore.json": gen_keystore(),
        "device_list.json": gen_device_list(),
        "pairing.json": gen_pairing(),
    }
    return {name: json.dumps(d, indent=2, ensure_ascii=False) + "\n" for name, d in docs.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: tests/vectors)")
    overwrite = parser.add_mutually_exclusive_group()
    overwrite.add_argument(
        "--force", action="store_true", help="overwrite existing files (a protocol change)"
    )
    overwrite.add_argument(
        "--missing",
        action="store_true",
        help="write only the files that do not exist yet (a new step's vectors), leave the others alone",
    )
    parser.add_argument(
        "--kem-from",
        type=Path,
        default=HERE,
        help="directory whose pqxdh.json supplies the frozen ML-KEM ciphertexts (default: tests/vectors)",
    )
    args = parser.parse_args(argv)
    existing = [name for name in FILES if (args.out / name).exists()]
    if existing and not (args.force or args.missing):
        print(
            f"refusing to overwrite frozen vectors in {args.out}: {', '.join(existing)} "
            "(they are frozen; pass --force only for a deliberate protocol change)",
            file=sys.stderr,
        )
        return 1
    files = build(args.kem_from)
    assert sorted(files) == sorted(FILES)
    if args.missing:
        files = {name: text for name, text in files.items() if name not in existing}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
