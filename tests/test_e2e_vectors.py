"""The frozen end-to-end vectors (tests/vectors/*.json) against this implementation.

Every value in the files is recomputed here from the inputs they give, with the
repository's functions (and, where the protocol states a formula, from the formula), and
compared exactly; every negative vector must be refused. A change in any output of the
protocol code fails here: the vectors are frozen (tests/vectors/README.md).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from securechat.client.whispers import _plaintext as client_plaintext
from securechat.e2e import keystore as ks
from securechat.e2e import ratchet as rt
from securechat.e2e.bundle import (
    Bundle,
    OneTimeKemPrekey,
    OneTimePrekey,
    PrekeySecrets,
    SignedKemPrekey,
    SignedPrekey,
    StoredKpk,
    StoredSpk,
    kopk_message,
    kpk_message,
    opk_message,
    spk_message,
    verify_bundle,
)
from securechat.e2e.conversations import Conversations
from securechat.e2e.devices import (
    MAX_DEVICES,
    Device,
    DeviceList,
    DeviceListError,
    device_list_message,
    sign_device_list,
)
from securechat.e2e.errors import BundleError, DecryptionError, E2EError, KeystoreError
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
    VERSION_LABEL,
    DhKeyPair,
    KemKeyPair,
    aead_decrypt,
    aead_encrypt,
    ed25519_public,
    ed25519_sign,
    ed25519_verify,
    hkdf_sha256,
    hmac_sha256,
    lp,
    sha256,
    x25519,
)
from securechat.e2e.safety import ITERATIONS, format_safety_number, safety_number, safety_number_half
from securechat.e2e.x3dh import NO_OPK, PQ_LABEL, SessionKeys, Setup, initiate, respond
from securechat.protocol import fold_nick

VECTORS = Path(__file__).resolve().parent / "vectors"
SOURCE = "tests/vectors/generate.py"


@functools.cache
def load(name: str) -> dict[str, Any]:
    data = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def b(value: str) -> bytes:
    return bytes.fromhex(value)


class Draws:
    """A `Random` handing out fixed values in order, each of exactly the length asked for."""

    def __init__(self, *values: bytes) -> None:
        self._values = list(values)

    def __call__(self, n: int) -> bytes:
        assert self._values, f"an unexpected draw of {n} bytes"
        value = self._values.pop(0)
        assert len(value) == n
        return value

    def done(self) -> None:
        assert not self._values, "fixed draws left unused"


def identity_of(d: dict[str, Any]) -> Identity:
    return Identity(d["user"], b(d["sig_private"]), DhKeyPair(b(d["dh_private"])))


def secrets_of(d: dict[str, Any]) -> PrekeySecrets:
    spk, opk = d["spk"], d["opk"]
    secrets = PrekeySecrets(
        spks=[StoredSpk(spk["id"], spk["created"], DhKeyPair(b(spk["private"])))],
        opks={opk["id"]: DhKeyPair(b(opk["private"]))},
        next_spk_id=spk["id"] + 1,
        next_opk_id=opk["id"] + 1,
    )
    if "kpk" in d:
        kpk, kopk = d["kpk"], d["kopk"]
        secrets.kpks = [StoredKpk(kpk["id"], kpk["created"], KemKeyPair(b(kpk["seed"])))]
        secrets.kopks = {kopk["id"]: KemKeyPair(b(kopk["seed"]))}
        secrets.next_kem_id = max(kpk["id"], kopk["id"]) + 1
    return secrets


def hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return hkdf_sha256(salt=salt, ikm=ikm, info=info, length=length)


# -- the files ---------------------------------------------------------------------------


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("securechat_vectors_generate", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_file_says_what_it_holds_and_where_it_comes_from() -> None:
    names = sorted(p.name for p in VECTORS.glob("*.json"))
    assert names == sorted(_generator().FILES)
    for name in names:
        data = load(name)
        assert isinstance(data["description"], str) and len(data["description"]) > 80, name
        assert data["source"] == SOURCE, name


def test_the_generator_reproduces_the_frozen_files_byte_for_byte(tmp_path: Path) -> None:
    """The files come from the script: run into a fresh directory, it writes the same bytes.
    (The ML-KEM ciphertexts, the one randomised input, are read from the frozen pqxdh.json.)"""
    generator = _generator()
    assert generator.main(["--out", str(tmp_path), "--kem-from", str(VECTORS)]) == 0
    for name in generator.FILES:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), name
    # Frozen: a second run refuses to overwrite, and leaves the files alone.
    (tmp_path / "x3dh.json").write_text("{}")
    assert generator.main(["--out", str(tmp_path)]) == 1
    assert (tmp_path / "x3dh.json").read_text() == "{}"
    # --missing adds the files not there yet (a new step's vectors) and touches no other.
    (tmp_path / "pairing.json").unlink()
    assert generator.main(["--out", str(tmp_path), "--missing", "--kem-from", str(VECTORS)]) == 0
    assert (tmp_path / "pairing.json").read_bytes() == (VECTORS / "pairing.json").read_bytes()
    assert (tmp_path / "x3dh.json").read_text() == "{}"


# -- primitives.json ---------------------------------------------------------------------


def test_length_prefixed_encoding() -> None:
    for example in load("primitives.json")["lp"]:
        fields: list[bytes | str | int] = []
        for f in example["fields"]:
            assert f["type"] in ("bytes", "str", "int")
            if f["type"] != "bytes":  # a str field is a JSON string, an int one a JSON number
                assert isinstance(f["value"], int if f["type"] == "int" else str)
            fields.append(b(f["hex"]) if f["type"] == "bytes" else f["value"])
        assert lp(*fields).hex() == example["encoded"]


def test_labels_and_ratchet_kdfs() -> None:
    d = load("primitives.json")
    labels = {name: b(v["hex"]) for name, v in d["labels"].items()}
    assert labels["VERSION_LABEL (V)"] == VERSION_LABEL == b"securechat-e2e-v1"
    assert labels["PQ_LABEL (V2)"] == PQ_LABEL == b"securechat-e2e-v2"
    assert labels["rename signature label"] == RENAME_LABEL
    for v in d["labels"].values():
        assert v["text"].encode() == b(v["hex"])

    k = d["kdf_rk"]
    out = hkdf(b(k["rk"]), b(k["dh_output"]), VERSION_LABEL + b" ratchet", 64)
    assert b(k["info"]) == VERSION_LABEL + b" ratchet"
    assert (out.hex(), out[:32].hex(), out[32:].hex()) == (k["output"], k["new_rk"], k["ck"])
    assert rt._kdf_rk(b(k["rk"]), b(k["dh_output"])) == (b(k["new_rk"]), b(k["ck"]))

    c = d["kdf_ck"]
    assert hmac_sha256(b(c["ck"]), b"\x02").hex() == c["next_ck"]
    assert hmac_sha256(b(c["ck"]), b"\x01").hex() == c["mk"]
    assert rt._kdf_ck(b(c["ck"])) == (b(c["next_ck"]), b(c["mk"]))

    m = d["message_cipher"]
    out = hkdf(bytes(32), b(m["mk"]), VERSION_LABEL + b" msg", 44)
    assert b(m["info"]) == VERSION_LABEL + b" msg"
    assert (out.hex(), out[:32].hex(), out[32:].hex()) == (m["output"], m["key"], m["nonce"])
    assert rt._message_cipher(b(m["mk"])) == (b(m["key"]), b(m["nonce"]))


# -- identity.json -----------------------------------------------------------------------


def test_identities() -> None:
    d = load("identity.json")
    for v in d["identities"]:
        ident = identity_of(v)
        pub = ident.public()
        assert (pub.sig_key.hex(), pub.dh_key.hex(), pub.key.hex()) == (v["sig_key"], v["dh_key"], v["ik"])
        assert pub.dh_key == x25519(b(v["dh_private"]), (9).to_bytes(32, "little"))
        message = lp(VERSION_LABEL, b"identity-dh", fold_nick(v["user"]), pub.dh_key)
        assert message.hex() == v["binding_message"]
        assert pub.dh_sig.hex() == v["dh_sig"] == ed25519_sign(b(v["sig_private"]), message).hex()
        assert pub.binding_valid()
        assert pub.fingerprint() == v["fingerprint"]
        digest = sha256(pub.key).hex()
        assert v["fingerprint"] == ":".join(digest[i : i + 4] for i in range(0, 32, 4))
    for case in d["binding_cases"]:
        claimed = PublicIdentity(case["user"], b(case["sig_key"]), b(case["dh_key"]), b(case["dh_sig"]))
        assert claimed.binding_valid() is case["valid"], case["case"]


# -- prekeys.json ------------------------------------------------------------------------


def test_prekeys_and_their_signatures() -> None:
    d = load("prekeys.json")
    bob = identity_of(d["signer"])
    assert bob.sig_key.hex() == d["sig_key"]
    secrets = secrets_of(d)
    spk, opk, kpk, kopk = d["spk"], d["opk"], d["kpk"], d["kopk"]
    user = bob.user

    assert spk_message(user, spk["id"], spk["created"], b(spk["public"])).hex() == spk["message"]
    assert b(spk["message"]) == lp(
        VERSION_LABEL, b"spk", fold_nick(user), spk["id"], spk["created"], b(spk["public"])
    )
    assert secrets.signed_spk(bob) == SignedPrekey(
        spk["id"], spk["created"], b(spk["public"]), b(spk["signature"])
    )

    assert opk_message(user, opk["id"], b(opk["public"])).hex() == opk["message"]
    assert b(opk["message"]) == lp(VERSION_LABEL, b"opk", fold_nick(user), opk["id"], b(opk["public"]))
    assert secrets.signed_opks(bob, [opk["id"]]) == (
        OneTimePrekey(opk["id"], b(opk["public"]), b(opk["signature"])),
    )

    assert kpk_message(user, kpk["id"], kpk["created"], b(kpk["public"])).hex() == kpk["message"]
    assert b(kpk["message"]) == lp(
        VERSION_LABEL, b"kpk", fold_nick(user), kpk["id"], kpk["created"], b(kpk["public"])
    )
    assert secrets.signed_kpk(bob) == SignedKemPrekey(
        kpk["id"], kpk["created"], b(kpk["public"]), b(kpk["signature"])
    )

    assert kopk_message(user, kopk["id"], b(kopk["public"])).hex() == kopk["message"]
    assert b(kopk["message"]) == lp(VERSION_LABEL, b"kopk", fold_nick(user), kopk["id"], b(kopk["public"]))
    assert secrets.signed_kopks(bob, [kopk["id"]]) == (
        OneTimeKemPrekey(kopk["id"], b(kopk["public"]), b(kopk["signature"])),
    )

    for key in (spk, opk, kpk, kopk):
        assert ed25519_verify(bob.sig_key, b(key["signature"]), b(key["message"]))
        assert ed25519_sign(bob.sig_private, b(key["message"])).hex() == key["signature"]

    bundle = secrets.bundle(bob, [opk["id"]], [kopk["id"]])
    verify_bundle(bundle, user=user, now=spk["created"], require_kem=True)


def test_tampered_prekey_signatures_are_refused() -> None:
    d = load("prekeys.json")
    bob = identity_of(d["signer"])
    good = secrets_of(d).bundle(bob, [d["opk"]["id"]], [d["kopk"]["id"]])
    now = d["spk"]["created"]
    for case in d["rejected"]:
        kind, public, signature = case["kind"], b(case["public"]), b(case["signature"])
        message = {
            "spk": lambda c=case, p=public: spk_message(c["user"], c["id"], c["created"], p),
            "opk": lambda c=case, p=public: opk_message(c["user"], c["id"], p),
            "kpk": lambda c=case, p=public: kpk_message(c["user"], c["id"], c["created"], p),
            "kopk": lambda c=case, p=public: kopk_message(c["user"], c["id"], p),
        }[kind]()
        assert message.hex() == case["message"], case
        assert not ed25519_verify(bob.sig_key, signature, message), case
        if case["user"] != bob.user:
            continue  # a bundle is always checked under its owner's nick
        if kind == "spk":
            bad = Bundle(
                good.identity, SignedPrekey(case["id"], case["created"], public, signature), good.opks
            )
        elif kind == "opk":
            bad = Bundle(good.identity, good.spk, (OneTimePrekey(case["id"], public, signature),))
        elif kind == "kpk":
            bad = Bundle(
                good.identity, good.spk, (), SignedKemPrekey(case["id"], case["created"], public, signature)
            )
        else:
            bad = Bundle(
                good.identity, good.spk, (), good.kpk, (OneTimeKemPrekey(case["id"], public, signature),)
            )
        with pytest.raises(BundleError):
            verify_bundle(bad, user=bob.user, now=now)


def test_bundles_accepted_and_refused() -> None:
    d = load("prekeys.json")
    bob = identity_of(d["signer"])
    full = secrets_of(d).bundle(bob, [d["opk"]["id"]], [d["kopk"]["id"]])
    assert full.kpk is not None
    assert {c["accept"] for c in d["bundle_cases"]} == {True, False}
    for case in d["bundle_cases"]:
        include = case["include"]
        identity = full.identity
        if "dh_sig" in case:
            identity = PublicIdentity(identity.user, identity.sig_key, identity.dh_key, b(case["dh_sig"]))
        kopks = full.kopks if "kopk" in include else ()
        if "kopk_signature" in case:
            kopks = (OneTimeKemPrekey(full.kopks[0].id, full.kopks[0].public, b(case["kopk_signature"])),)
        bundle = Bundle(
            identity,
            full.spk,
            full.opks if "opk" in include else (),
            full.kpk if "kpk" in include else None,
            kopks,
        )

        def check(bundle: Bundle = bundle, case: dict[str, Any] = case) -> None:
            verify_bundle(
                bundle,
                user=case["user"],
                now=case["now"],
                min_spk_id=case["min_spk_id"],
                min_kpk_id=case["min_kpk_id"],
                require_kem=case["require_kem"],
            )

        if case["accept"]:
            check()
        else:
            with pytest.raises(BundleError):
                check()


# -- x3dh.json and pqxdh.json ------------------------------------------------------------


def _check_agreement(
    case: dict[str, Any], alice: Identity, bob: Identity, secrets: PrekeySecrets, *, version: int
) -> tuple[bytes, bytes]:
    """Recompute DH1..DH4, IKM, SK, AD0 and sid by formula; returns (ikm, EK public)."""
    spk = secrets.spk_pair(case["spk_id"])
    assert spk is not None
    ek = DhKeyPair(b(case["ek_private"]))
    assert ek.public.hex() == case["ek_public"]
    dhs = [x25519(alice.dh.private, spk.public), ek.exchange(bob.dh.public), ek.exchange(spk.public)]
    if case["opk_id"] != NO_OPK:
        dhs.append(ek.exchange(secrets.opks[case["opk_id"]].public))
        assert case["dh4"] == dhs[3].hex()
    else:
        assert case["dh4"] is None
    assert [case["dh1"], case["dh2"], case["dh3"]] == [x.hex() for x in dhs[:3]]
    ikm = b"\xff" * 32 + b"".join(dhs)
    label = VERSION_LABEL if version == 1 else PQ_LABEL
    info = label + (b" x3dh" if version == 1 else b" pqxdh")
    ad0_fields: list[bytes | str | int] = [label, fold_nick(alice.user), alice.public().key]
    ad0_fields += [fold_nick(bob.user), bob.public().key]
    sid_fields: list[bytes | str | int] = [label, b"sid", alice.public().key, bob.public().key, ek.public]
    sid_fields += [case["spk_id"], case["opk_id"]]
    if version == 2:
        ikm += b(case["kem_shared_secret"])
        ad0_fields.append(b(case["kem_public"]))
        sid_fields += [case["kem_id"], sha256(b(case["kem_ciphertext"]))]
    assert (case["salt"], case["ikm"], case["info"]) == (bytes(32).hex(), ikm.hex(), info.hex())
    assert hkdf(bytes(32), ikm, info, 32).hex() == case["sk"]
    assert lp(*ad0_fields).hex() == case["ad0"]
    assert lp(*sid_fields).hex() == case["sid_input"]
    assert sha256(lp(*sid_fields))[:16].hex() == case["sid"]
    return ikm, ek.public


def _keys(case: dict[str, Any]) -> SessionKeys:
    return SessionKeys(b(case["sk"]), b(case["ad0"]), b(case["sid"]))


def test_x3dh_version_1() -> None:
    d = load("x3dh.json")
    alice, bob = identity_of(d["initiator"]), identity_of(d["responder"])
    secrets = secrets_of(d["responder_prekeys"])
    assert len(d["cases"]) == 2
    for case in d["cases"]:
        _, ek_public = _check_agreement(case, alice, bob, secrets, version=1)
        setup = Setup(alice.public(), ek_public, case["spk_id"], case["opk_id"])
        keys, spk = respond(bob, secrets, setup)
        assert keys == _keys(case)
        assert spk == secrets.spk_pair(case["spk_id"])


def test_ml_kem_768_decapsulation() -> None:
    for v in load("pqxdh.json")["kem"]:
        pair = KemKeyPair(b(v["seed"]))
        assert pair.public.hex() == v["public"]
        assert pair.decapsulate(b(v["ciphertext"])).hex() == v["shared_secret"]
        # Implicit rejection: a changed ciphertext yields another secret, without an error.
        assert pair.decapsulate(b(v["ciphertext_bit_flipped"])).hex() == v["implicit_rejection_secret"]
        assert v["implicit_rejection_secret"] != v["shared_secret"]
        with pytest.raises(ValueError):
            pair.decapsulate(b(v["ciphertext"])[:-1])


def test_pqxdh_version_2() -> None:
    d = load("pqxdh.json")
    alice, bob = identity_of(d["initiator"]), identity_of(d["responder"])
    frozen = {b(v["public"]): (b(v["ciphertext"]), b(v["shared_secret"])) for v in d["kem"]}
    assert len(d["cases"]) == 2
    for case in d["cases"]:
        secrets = secrets_of(d["responder_prekeys"])
        _, ek_public = _check_agreement(case, alice, bob, secrets, version=2)
        assert frozen[b(case["kem_public"])] == (b(case["kem_ciphertext"]), b(case["kem_shared_secret"]))
        one_time_kem = case["kem_id"] in secrets.kopks
        bundle = secrets.bundle(
            bob,
            [] if case["opk_id"] == NO_OPK else [case["opk_id"]],
            [case["kem_id"]] if one_time_kem else [],
        )
        assert bundle.kem_key() == (case["kem_id"], b(case["kem_public"]))
        draws = Draws(b(case["ek_private"]))
        keys, setup = initiate(alice, bundle, draws, frozen.__getitem__)
        draws.done()
        assert keys == _keys(case)
        assert setup == Setup(
            alice.public(),
            ek_public,
            case["spk_id"],
            case["opk_id"],
            case["kem_id"],
            b(case["kem_ciphertext"]),
        )
        assert setup.version == 2
        responder_keys, _ = respond(bob, secrets, setup)
        assert responder_keys == _keys(case)


# -- headers.json and padding.json -------------------------------------------------------


def _setup_of(fields: dict[str, Any], sender: str) -> Setup:
    ident = PublicIdentity(sender, b(fields["sig_key"]), b(fields["dh_key"]), b(fields["dh_sig"]))
    if "kem_id" in fields:
        return Setup(
            ident,
            b(fields["ephemeral"]),
            fields["spk_id"],
            fields["opk_id"],
            fields["kem_id"],
            b(fields["kem_ct"]),
        )
    return Setup(ident, b(fields["ephemeral"]), fields["spk_id"], fields["opk_id"])


def test_header_encodings() -> None:
    d = load("headers.json")
    names = [h["name"] for h in d["headers"]]
    assert names == ["v1 without setup", "v1 with setup", "v2 without setup", "v2 with setup"]
    for h in d["headers"]:
        f, data = h["fields"], b(h["encoded"])
        setup = None if f["setup"] is None else _setup_of(f["setup"], h["sender"])
        header = rt.Header(b(f["sid"]), b(f["dh"]), f["pn"], f["n"], setup, version=f["version"])
        assert header.encode().hex() == h["encoded"], h["name"]
        assert (
            len(data)
            == h["length"]
            == {"v1": 58, "v2": 58}[h["name"][:2]]
            + (0 if setup is None else (176 if f["version"] == 1 else 1272))
        )
        assert rt.parse_header(data, h["sender"]) == header
        assert (data[0], data[1]) == (f["version"], f["flags"]) == (f["version"], int(setup is not None))
        # The layout table, field by field.
        layout = d["layout"]["base"] + (
            []
            if setup is None
            else d["layout"]["setup_v1"] + (d["layout"]["setup_v2_extra"] if f["version"] == 2 else [])
        )
        for entry in layout:
            name, offset, size = entry["field"], entry["offset"], entry["size"]
            value = f[name] if "." not in name else f["setup"][name.split(".")[1]]
            raw = data[offset : offset + size]
            assert raw == (b(value) if isinstance(value, str) else value.to_bytes(size, "big")), name
        assert sum(entry["size"] for entry in layout) == len(data)
    for case in d["rejected"]:
        with pytest.raises(DecryptionError):
            rt.parse_header(b(case["encoded"]), "Alice")


def test_padding() -> None:
    d = load("padding.json")
    assert d["block"] == rt.PAD_BLOCK == 160
    for case in d["cases"]:
        plaintext, padded = b(case["plaintext"]), b(case["padded"])
        assert rt.pad(plaintext) == padded
        assert len(padded) == case["padded_length"] == (len(plaintext) // 160 + 1) * 160
        assert padded == plaintext + b"\x80" + bytes(len(padded) - len(plaintext) - 1)
        assert rt.unpad(padded) == plaintext
    for case in d["rejected"]:
        with pytest.raises(DecryptionError):
            rt.unpad(b(case["padded"]))


# -- ratchet.json and ratchet_v2.json ----------------------------------------------------


def snapshot(state: rt.RatchetState) -> dict[str, Any]:
    def opt(x: bytes | None) -> str | None:
        return None if x is None else x.hex()

    return {
        "rk": state.rk.hex(),
        "dhs_private": state.dhs.private.hex(),
        "dhs_public": state.dhs.public.hex(),
        "dhr": opt(state.dhr),
        "cks": opt(state.cks),
        "ckr": opt(state.ckr),
        "ns": state.ns,
        "nr": state.nr,
        "pn": state.pn,
        "skipped": [{"dh": dh.hex(), "n": n, "mk": mk.hex()} for (dh, n), (mk, _) in state.skipped.items()],
        "old_dhr": [x.hex() for x in state.old_dhr],
        "sends_setup": state.setup is not None,
    }


class Replay:
    """Runs one ratchet file's events, checking every value on the way."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.d = d
        self.version: int = d["version"]
        self.alice, self.bob = identity_of(d["alice"]), identity_of(d["bob"])
        self.secrets = secrets_of(d["bob_prekeys"])
        self.states: dict[str, rt.RatchetState] = {}
        self.sent: dict[str, dict[str, Any]] = {}
        self.fresh: set[str] = set()  # messages whose receiver starts from their setup
        s = d["setup"]
        ek = DhKeyPair(b(s["ek_private"]))
        kem: tuple[int, bytes] = (s["kem_id"], b(s["kem_ciphertext"])) if self.version == 2 else (0, b"")
        self.setup = Setup(self.alice.public(), ek.public, s["spk_id"], s["opk_id"], *kem)
        self.keys = SessionKeys(b(s["sk"]), b(s["ad0"]), b(s["sid"]))
        assert respond(self.bob, self.secrets, self.setup)[0] == self.keys

    def responder_state(self, header: rt.Header, me: str) -> rt.RatchetState:
        assert header.setup is not None
        ident = Identity(me, self.bob.sig_private, self.bob.dh)
        keys, spk = respond(ident, self.secrets, header.setup)
        extra: dict[str, Any] = {"kem_id": header.setup.kem_id, "version": 2} if self.version == 2 else {}
        return rt.RatchetState.for_responder(
            sid=keys.sid,
            ad0=keys.ad0,
            sk=keys.sk,
            me=me,
            peer=header.setup.identity.user,
            peer_key=header.setup.identity.key,
            spk=spk,
            opk_id=header.setup.opk_id,
            **extra,
        )

    def run(self) -> None:
        for event in self.d["events"]:
            getattr(self, event["event"])(event)
        assert {e["event"] for e in self.d["events"]} == {
            "init_initiator",
            "init_responder",
            "send",
            "receive",
            "replay_must_fail",
        }

    def init_initiator(self, e: dict[str, Any]) -> None:
        draws = Draws(*map(b, e["random_draws"]))
        spk_public = b(e["their_spk"])
        assert spk_public == self.secrets.spks[0].pair.public
        state = rt.RatchetState.for_initiator(
            sid=self.keys.sid,
            ad0=self.keys.ad0,
            sk=self.keys.sk,
            me=self.alice.user,
            peer=self.bob.user,
            peer_key=self.bob.public().key,
            their_spk=spk_public,
            setup=self.setup,
            random=draws,
        )
        draws.done()
        dh = x25519(b(e["random_draws"][0]), spk_public)
        assert dh.hex() == e["dh_output"]
        out = hkdf(self.keys.sk, dh, VERSION_LABEL + b" ratchet", 64)
        assert (out[:32], out[32:]) == (state.rk, state.cks)
        assert snapshot(state) == e["state_after"]
        self.states[e["party"]] = state

    def init_responder(self, e: dict[str, Any]) -> None:
        m = self.sent[e["from_setup_in"]]
        header = rt.parse_header(b(m["header"]), m["sender"])
        state = self.responder_state(header, e["party"])
        assert (state.sid, state.ad0, state.rk) == (self.keys.sid, self.keys.ad0, self.keys.sk)
        assert snapshot(state) == e["state_after"]
        self.states[e["party"]] = state
        self.fresh.add(e["from_setup_in"])

    def send(self, e: dict[str, Any]) -> None:
        state = self.states[e["sender"]]
        assert snapshot(state) == e["state_before"]
        ck = b(e["chain_key_before"])
        assert state.cks == ck
        assert hmac_sha256(ck, b"\x02").hex() == e["chain_key_after"]
        mk = hmac_sha256(ck, b"\x01")
        assert mk.hex() == e["message_key"]
        cipher = hkdf(bytes(32), mk, VERSION_LABEL + b" msg", 44)
        assert (cipher[:32].hex(), cipher[32:].hex()) == (e["aead_key"], e["nonce"])
        plaintext = client_plaintext(e["text"])
        assert plaintext.hex() == e["plaintext"]
        assert json.loads(plaintext) == {"text": e["text"]}
        header, ciphertext = rt.encrypt(state, plaintext)
        assert (header.hex(), ciphertext.hex()) == (e["header"], e["ciphertext"]), e["message"]
        assert ciphertext[-16:].hex() == e["tag"]
        aad = lp(
            VERSION_LABEL,
            b"msg",
            state.sid,
            fold_nick(e["sender"]),
            fold_nick(e["recipient"]),
            state.ad0,
            header,
        )
        assert aad.hex() == e["aad"]
        if self.version == 2:
            padded = b(e["padded_plaintext"])
            assert padded == rt.pad(plaintext) and len(padded) % 160 == 0
        else:
            assert e["padded_plaintext"] is None
            padded = plaintext
        assert aead_encrypt(cipher[:32], cipher[32:], padded, aad) == ciphertext
        self._check_fields(header, e["sender"], e["header_fields"])
        assert snapshot(state) == e["state_after"]
        self.sent[e["message"]] = e

    def _check_fields(self, header: bytes, sender: str, f: dict[str, Any]) -> None:
        setup = None if f["setup"] is None else _setup_of(f["setup"], sender)
        expected = rt.Header(b(f["sid"]), b(f["dh"]), f["pn"], f["n"], setup, version=f["version"])
        assert rt.parse_header(header, sender) == expected
        assert expected.encode() == header
        assert (header[0], header[1]) == (self.version, f["flags"])

    def receive(self, e: dict[str, Any]) -> None:
        m = self.sent[e["message"]]
        assert (e["sender"], e["receiver"]) == (m["sender"], m["recipient"])
        state = self.states[e["receiver"]]
        assert snapshot(state) == e["state_before"]
        for case in e["tampered_must_fail"]:
            self._must_fail(e["message"], state, case)
            assert snapshot(state) == e["state_before"], case["field"]
        header_bytes, ciphertext = b(m["header"]), b(m["ciphertext"])
        header = rt.parse_header(header_bytes, m["sender"])
        assert ((header.dh, header.n) in state.skipped) is e["from_skipped_key"]
        draws = Draws(*map(b, e["random_draws"]))
        new, plaintext = rt.decrypt(state, header_bytes, header, ciphertext, now=0.0, random=draws)
        draws.done()
        assert plaintext.hex() == e["plaintext"] == m["plaintext"]
        aad = lp(
            VERSION_LABEL,
            b"msg",
            new.sid,
            fold_nick(e["sender"]),
            fold_nick(e["receiver"]),
            new.ad0,
            header_bytes,
        )
        assert aad.hex() == e["aad"] == m["aad"]
        assert snapshot(new) == e["state_after"]
        assert snapshot(state) == e["state_before"]  # decryption never touches the old state
        self.states[e["receiver"]] = new

    def _attempt(
        self,
        msg_id: str,
        state: rt.RatchetState,
        header_bytes: bytes,
        ciphertext: bytes,
        sender: str,
        recipient: str,
    ) -> bytes:
        """Decrypt as `recipient`, told by the relay that `sender` sent it, from `state` (or,
        for a first message, from the header's setup); `state` itself is left as it was."""
        header = rt.parse_header(header_bytes, sender)
        if msg_id in self.fresh:
            receiver = self.responder_state(header, recipient)
        else:
            receiver = state.copy()
            receiver._aad_prefix = {}
            receiver.me, receiver.peer = recipient, sender
        return rt.decrypt(
            receiver, header_bytes, header, ciphertext, now=0.0, random=Draws(bytes(range(32)))
        )[1]

    def _must_fail(self, msg_id: str, state: rt.RatchetState, case: dict[str, Any]) -> None:
        m = self.sent[msg_id]
        # The same path with the message as sent succeeds: the refusal is the tampering's.
        plaintext = self._attempt(
            msg_id, state, b(m["header"]), b(m["ciphertext"]), m["sender"], m["recipient"]
        )
        assert plaintext.hex() == m["plaintext"]
        with pytest.raises(DecryptionError):
            self._attempt(
                msg_id, state, b(case["header"]), b(case["ciphertext"]), case["sender"], case["recipient"]
            )

    def replay_must_fail(self, e: dict[str, Any]) -> None:
        m = self.sent[e["message"]]
        assert m["recipient"] == e["receiver"]
        state = self.states[e["receiver"]]
        before = snapshot(state)
        header = rt.parse_header(b(m["header"]), m["sender"])
        with pytest.raises(DecryptionError):
            rt.decrypt(state, b(m["header"]), header, b(m["ciphertext"]), now=0.0, random=Draws())
        assert snapshot(state) == before


@pytest.mark.parametrize("name", ["ratchet.json", "ratchet_v2.json"])
def test_ratchet_conversation(name: str) -> None:
    d = load(name)
    replay = Replay(d)
    replay.run()
    # What the file promises to cover: out-of-order, skipped-then-late (across a DH step),
    # every header field and the AAD's nicks tampered, and replays.
    receives = [e for e in d["events"] if e["event"] == "receive"]
    assert sum(e["from_skipped_key"] for e in receives) == 2
    tampered = {c["field"] for e in receives for c in e["tampered_must_fail"]}
    assert {
        "version",
        "flags",
        "sid",
        "dh",
        "pn",
        "n",
        "ciphertext",
        "tag",
        "aad.sender",
        "aad.recipient",
    } <= tampered
    assert {
        f"setup.{x}" for x in ("sig_key", "dh_key", "dh_sig", "ephemeral", "spk_id", "opk_id")
    } <= tampered
    if d["version"] == 2:
        assert {"setup.kem_id", "setup.kem_ct"} <= tampered
    assert len([e for e in d["events"] if e["event"] == "replay_must_fail"]) == 5


@pytest.mark.parametrize("name", ["ratchet.json", "ratchet_v2.json"])
def test_a_setup_message_is_refused_once_decrypted_even_after_its_session_is_gone(name: str) -> None:
    """The replay cache of `Conversations`: the first message again, to a client that has
    since forgotten the session, must not start a second session."""
    d = load(name)
    m1 = next(e for e in d["events"] if e["event"] == "send" and e["message"] == "m1")
    first = next(e for e in d["events"] if e["event"] == "receive" and e["message"] == "m1")
    conv = Conversations(
        identity_of(d["bob"]),
        secrets_of(d["bob_prekeys"]),
        random=Draws(*map(b, first["random_draws"])),
        clock=lambda: 1_800_000_000.0,
    )
    whisper = conv.decrypt(m1["sender"], b(m1["header"]), b(m1["ciphertext"]))
    assert whisper.plaintext.hex() == m1["plaintext"]
    conv.forget_sessions(m1["sender"])
    with pytest.raises(DecryptionError):
        conv.decrypt(m1["sender"], b(m1["header"]), b(m1["ciphertext"]))


# -- login.json --------------------------------------------------------------------------


def test_login_and_rename_signatures() -> None:
    d = load("login.json")
    alice = identity_of(d["signer"])
    login = d["login"]
    nonce, sig_key = b(login["nonce"]), b(login["sig_key"])
    assert sig_key == alice.sig_key and len(nonce) == 32
    message = login_message(login["nick"], nonce, sig_key)
    assert message.hex() == login["message"]
    assert message == lp(VERSION_LABEL, b"login", fold_nick(login["nick"]), nonce, sig_key)
    assert login_message(login["nick"].upper(), nonce, sig_key) == message
    assert alice.sign(message).hex() == login["signature"]
    assert ed25519_verify(sig_key, b(login["signature"]), message)

    rename = d["rename"]
    message = rename_message(rename["old"], rename["new"], b(rename["nonce"]))
    assert message.hex() == rename["message"]
    assert message == lp(
        b"securechat-v1", b"rename", fold_nick(rename["old"]), fold_nick(rename["new"]), b(rename["nonce"])
    )
    assert alice.sign(message).hex() == rename["signature"]
    assert ed25519_verify(alice.sig_key, b(rename["signature"]), message)

    for case in login["rejected"] + rename["rejected"]:
        assert not ed25519_verify(b(case["sig_key"]), b(case["signature"]), b(case["message"])), case["case"]


# -- safety_number.json ------------------------------------------------------------------


def test_safety_number() -> None:
    d = load("safety_number.json")
    assert d["iterations"] == ITERATIONS == 5200
    alice, bob = (
        identity_of(load("identity.json")["identities"][0]),
        identity_of(load("identity.json")["identities"][1]),
    )
    parties = d["parties"]
    for party, ident in zip(parties, (alice, bob), strict=True):
        assert party["user"] == ident.user and party["ik"] == ident.public().key.hex()
        assert b(party["stable_id"]) == fold_nick(ident.user).encode()
        assert safety_number_half(b(party["ik"]), b(party["stable_id"])) == party["half"]
    a, bb = parties
    digits = safety_number(b(a["ik"]), b(a["stable_id"]), b(bb["ik"]), b(bb["stable_id"]))
    assert digits == d["digits"] == "".join(sorted((a["half"], bb["half"])))
    assert len(digits) == 60 and digits.isdigit()
    assert format_safety_number(digits) == d["formatted"]
    assert alice.safety_number_with(bob.public()) == bob.safety_number_with(alice.public()) == d["formatted"]


# -- keystore.json -----------------------------------------------------------------------


def test_keystore_sealing() -> None:
    d = load("keystore.json")
    for h in d["headers"]:
        kdf = h["kdf"]
        params = ks.KdfParams(kdf["n"], kdf["r"], kdf["p"])
        salt, nonce, data_key = b(h["salt"]), b(h["nonce"]), b(h["data_key"])
        assert h["random_draws"] == [h["salt"], h["nonce"], h["data_key"]]
        header_aad = lp("securechat-keystore", 1, b"scrypt", params.n, params.r, params.p, salt)
        assert header_aad.hex() == h["header_aad"] == ks._header_aad(params, salt).hex()
        kek = ks._kek(h["passphrase"], salt, params)  # scrypt
        assert kek.hex() == h["kek"]
        assert aead_encrypt(kek, nonce, data_key, header_aad).hex() == h["wrapped_key"]
        if h["name"] == "default":
            assert params == ks.KdfParams()  # what clients use; one scrypt of it is enough here
            continue
        draws = Draws(salt, nonce, data_key)
        header, key = ks.new_header(h["passphrase"], params=params, random=draws)
        draws.done()
        assert (header.decode(), key) == (h["header_json"], data_key)
        assert ks.unlock(header, h["passphrase"]) == data_key
    fast = next(h for h in d["headers"] if h["name"] == "fast")
    data_key = b(fast["data_key"])

    tag = d["peer_tag"]
    assert tag["data_key"] == fast["data_key"]
    tag_key = hkdf(b"", data_key, lp(VERSION_LABEL, b"keystore-peer-tag"), 32)
    assert tag_key.hex() == tag["tag_key"]
    assert hmac_sha256(tag_key, tag["folded_nick"].encode()).hex()[:32] == tag["tag"]
    assert ks.peer_tag(data_key, tag["folded_nick"]) == tag["tag"]

    for r in d["records"]:
        aad = lp(VERSION_LABEL, b"keystore-record", r["name"])
        assert aad.hex() == r["aad"]
        nonce, plaintext = b(r["nonce"]), b(r["plaintext"])
        assert ks.seal(data_key, r["name"], plaintext, Draws(nonce)).hex() == r["sealed"]
        assert (nonce + aead_encrypt(data_key, nonce, plaintext, aad)).hex() == r["sealed"]
        assert ks.unseal(data_key, r["name"], b(r["sealed"])) == plaintext

    header, key = ks.new_header(None)
    assert (header.decode(), key) == (d["unprotected_header_json"], None)
    assert ks.unlock(header, None) is None and not ks.is_protected(header)

    for case in d["header_rejected"]:
        with pytest.raises(KeystoreError):
            ks.unlock(case["header_json"].encode(), case["passphrase"])
    for case in d["record_rejected"]:
        with pytest.raises(KeystoreError):
            ks.unseal(data_key, case["name"], b(case["sealed"]))


# -- device_list.json --------------------------------------------------------------------


def _devices(entries: list[dict[str, Any]]) -> tuple[Device, ...]:
    return tuple(Device(e["device"], b(e["sig_key"])) for e in entries)


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def _check_labels(d: dict[str, Any]) -> None:
    """Each `*_label` names the fixed value beside it: SHA-256 of the prefixed label."""
    for key, value in d.items():
        if key.endswith("_label"):
            assert sha256(("securechat-e2e test vectors/" + value).encode()).hex() == d[key[: -len("_label")]]


def check_device_list(d: dict[str, Any]) -> None:
    alice = identity_of(d["signer"])
    _check_labels(d)
    _check_labels(d["signer"])
    assert alice.sig_key.hex() == d["identity_key"]
    assert d["max_devices"] == MAX_DEVICES
    laptop, phone = Device("laptop", alice.sig_key), Device("phone", ed25519_public(b(d["phone_private"])))
    assert [(x["version"], _devices(x["devices"])) for x in d["lists"]] == [
        (1, (laptop,)),
        (2, (laptop, phone)),
    ]
    for listed in d["lists"]:
        user, version, devices, signature = (
            listed["user"],
            listed["version"],
            _devices(listed["devices"]),
            b(listed["signature"]),
        )
        assert user == alice.user
        # The message by its formula, and by the implementation.
        fields: list[bytes | str | int] = [VERSION_LABEL, b"devices", fold_nick(user), version, len(devices)]
        for device in devices:
            fields += [device.device, device.sig_key]
        message = device_list_message(user, version, devices)
        assert message.hex() == listed["message"] == lp(*fields).hex()
        # Ed25519 is deterministic: the signature is exact.
        assert ed25519_sign(alice.sig_private, message) == signature
        assert sign_device_list(alice, version, devices) == DeviceList(user, version, devices, signature)
        DeviceList(user, version, devices, signature).check(alice.sig_key, at_least=version)
        # Any one byte of the message or of the signature changed: it no longer verifies.
        assert ed25519_verify(alice.sig_key, signature, message)
        for i in range(len(message)):
            assert not ed25519_verify(alice.sig_key, signature, _flip(message, i)), i
        for i in range(len(signature)):
            assert not ed25519_verify(alice.sig_key, _flip(signature, i), message), i
    assert {c["accept"] for c in d["cases"]} == {True, False}
    for case in d["cases"]:
        devices = _devices(case["devices"])
        listed = DeviceList(case["user"], case["version"], devices, b(case["signature"]))
        if case["case"].endswith("(signed)"):
            # Validly signed by the identity key: accepted or refused by a rule, not the signature.
            message = device_list_message(case["user"], case["version"], devices)
            assert ed25519_verify(alice.sig_key, listed.signature, message), case["case"]
        if case["accept"]:
            assert not case["rollback"], case["case"]
            listed.check(b(case["identity_key"]), at_least=case["at_least"])
            continue
        with pytest.raises(DeviceListError) as refused:
            listed.check(b(case["identity_key"]), at_least=case["at_least"])
        # A rollback is reported as one (the server may be hiding a device) only for a list
        # refused for its version alone: the signature is checked first, so a forged list
        # is refused as forged, however old.
        assert ("went back" in str(refused.value)) is case["rollback"], case["case"]
        if case["rollback"]:
            listed.check(b(case["identity_key"]), at_least=case["version"])


def test_device_list() -> None:
    check_device_list(load("device_list.json"))


def test_device_list_cases_cover_every_rule() -> None:
    names = {c["case"] for c in load("device_list.json")["cases"]}
    for rule in (
        "rolled back",
        "version 0",
        "version 2**63 (signed)",
        "no devices",
        "MAX_DEVICES + 1",
        "own device missing",
        "id twice",
        "key twice",
        "33 characters",
        "upper-case",
        "31 bytes",
        "another identity key",
        "another nick",
        "added",
        "removed",
        "another order",
        "older version than the one seen, its signature",
        "older version than the one seen, with a device the server added",
    ):
        assert any(rule in name for name in names), rule
    cases = load("device_list.json")["cases"]
    assert [c["case"] for c in cases if c["rollback"]] == ["an older version than the one seen (rolled back)"]
    assert sum(not c["accept"] and c["at_least"] > c["version"] and not c["rollback"] for c in cases) >= 2


# -- pairing.json ------------------------------------------------------------------------


def _refused(step: Any, *args: Any) -> PairingError:
    """`step(*args)` is refused with a `PairingError` that is not a `WrongCode`."""
    with pytest.raises(PairingError) as refused:
        step(*args)
    assert not isinstance(refused.value, WrongCode), refused.value
    return refused.value


def check_pairing(d: dict[str, Any]) -> None:
    assert (d["max_attempts"], d["code_digits"]) == (MAX_ATTEMPTS, CODE_DIGITS) == (3, 6)
    new_d, existing_d = d["new_device"], d["existing_device"]
    _check_labels(new_d)
    _check_labels(existing_d)
    a_private, b_private = b(new_d["a_private"]), b(existing_d["b_private"])
    payload_to_existing, payload_to_new = b(d["payload_to_existing"]), b(d["payload_to_new"])

    # By the formulas.
    basepoint = (9).to_bytes(32, "little")
    a_public, b_public = x25519(a_private, basepoint), x25519(b_private, basepoint)
    assert (a_public.hex(), b_public.hex()) == (new_d["a_public"], existing_d["b_public"])
    commit_input = lp(VERSION_LABEL, b"link-commit", a_public)
    commitment = sha256(commit_input)
    assert (commit_input.hex(), commitment.hex()) == (d["commit_input"], d["commitment"])
    shared = x25519(a_private, b_public)
    assert shared == x25519(b_private, a_public)
    assert shared.hex() == d["shared"]
    key_info = lp(VERSION_LABEL, b"link-key", commitment, b_public, a_public)
    k = hkdf(bytes(32), shared, key_info, 32)
    assert (key_info.hex(), k.hex()) == (d["key_info"], d["k"])
    code_input = lp(VERSION_LABEL, b"link-code", commitment, b_public, a_public)
    code_hash = sha256(code_input)
    code_int = int.from_bytes(code_hash[:8], "big")
    code = f"{code_int % 10**6:06d}"
    assert (code_input.hex(), code_hash.hex(), code_int, code) == (
        d["code_input"],
        d["code_hash"],
        d["code_int"],
        d["code"],
    )
    # The second code: as the first, from LP(V, "link-confirm", commit, B, A) (docs/e2e.md,
    # section 6).
    confirm_input = lp(VERSION_LABEL, b"link-confirm", commitment, b_public, a_public)
    confirm_hash = sha256(confirm_input)
    confirm_int = int.from_bytes(confirm_hash[:8], "big")
    confirmation = f"{confirm_int % 10**6:06d}"
    assert (confirm_input.hex(), confirm_hash.hex(), confirm_int, confirmation) == (
        d["confirm_input"],
        d["confirm_hash"],
        d["confirm_int"],
        d["confirmation"],
    )
    assert confirmation != code
    nonce_to_existing, nonce_to_new = bytes(12), bytes(11) + b"\x01"
    assert (nonce_to_existing.hex(), nonce_to_new.hex()) == (d["nonce_to_existing"], d["nonce_to_new"])
    aad_to_existing = lp(VERSION_LABEL, b"link", commitment, b_public, a_public, b"to-existing")
    aad_to_new = lp(VERSION_LABEL, b"link", commitment, b_public, a_public, b"to-new")
    assert (aad_to_existing.hex(), aad_to_new.hex()) == (d["aad_to_existing"], d["aad_to_new"])
    sealed = aead_encrypt(k, nonce_to_existing, payload_to_existing, aad_to_existing)
    answer = aead_encrypt(k, nonce_to_new, payload_to_new, aad_to_new)
    assert (sealed.hex(), answer.hex()) == (d["sealed_to_existing"], d["sealed_to_new"])
    states = [PairingState.ANSWERED, PairingState.REVEALED, PairingState.CONFIRMED, PairingState.DONE]
    assert d["states"] == [state.value for state in states] == ["answered", "revealed", "confirmed", "done"]

    # By the implementation, drawing the vector's ephemeral keys.
    draws = Draws(a_private)
    new = NewDevice(draws)
    draws.done()
    assert new.commitment == commitment
    draws = Draws(b_private)
    existing = ExistingDevice(new.commitment, draws)
    draws.done()
    assert existing.answer == b_public
    new_states, existing_states = [new.state], [existing.state]
    assert new.reveal(existing.answer, payload_to_existing) == (a_public, sealed)
    new_states.append(new.state)
    assert new.code == code
    existing.receive_reveal(a_public, sealed)
    existing_states.append(existing.state)
    assert existing.confirmation == ""  # shown only once the first code is right
    assert existing.confirm(code) == payload_to_existing
    existing_states.append(existing.state)
    assert existing.confirmation == confirmation
    assert existing.seal_answer(payload_to_new) == answer
    existing_states.append(existing.state)
    _refused(existing.seal_answer, payload_to_new)  # once: k seals one message each way
    _refused(new.open_answer, answer)  # not before the second code is typed on it
    assert new.state is PairingState.REVEALED
    new.confirm(confirmation)
    new_states.append(new.state)
    assert new.open_answer(answer) == payload_to_new
    new_states.append(new.state)
    _refused(new.open_answer, answer)  # once
    assert new_states == existing_states == states

    # Any one byte of a sealed message, or of its AAD, changed: it does not open.
    for ciphertext, nonce, aad in (
        (sealed, nonce_to_existing, aad_to_existing),
        (answer, nonce_to_new, aad_to_new),
    ):
        assert aead_decrypt(k, nonce, ciphertext, aad) is not None
        for i in range(len(ciphertext)):
            assert aead_decrypt(k, nonce, _flip(ciphertext, i), aad) is None, i
        for i in range(len(aad)):
            assert aead_decrypt(k, nonce, ciphertext, _flip(aad, i)) is None, i

    def revealed(sealed_payload: bytes = sealed) -> ExistingDevice:
        side = ExistingDevice(commitment, Draws(b_private))
        side.receive_reveal(a_public, sealed_payload)
        return side

    def new_device() -> NewDevice:
        return NewDevice(Draws(a_private))

    def revealed_new() -> NewDevice:
        side = new_device()
        assert side.reveal(b_public, payload_to_existing) == (a_public, sealed)
        return side

    # The first code, typed on the existing device.
    assert {t["right"] for t in d["typed"]} == {True, False}
    for t in d["typed"]:
        side = revealed()
        if t["right"]:
            assert side.confirm(t["typed"]) == payload_to_existing, t
            assert side.confirmation == confirmation
        else:
            with pytest.raises(WrongCode) as refused:
                side.confirm(t["typed"])
            assert refused.value.attempts_left == MAX_ATTEMPTS - 1
            assert side.state is PairingState.REVEALED
            assert side.confirmation == ""
    # MAX_ATTEMPTS wrong codes end the pairing: then even the right one is refused.
    side = revealed()
    wrong = next(t["typed"] for t in d["typed"] if not t["right"])
    for left in range(MAX_ATTEMPTS - 1, -1, -1):
        with pytest.raises(WrongCode) as refused:
            side.confirm(wrong)
        assert refused.value.attempts_left == left
    assert side.state is PairingState.FAILED
    _refused(side.confirm, code)
    assert side.confirmation == ""

    # The second code, typed on the new device.
    assert {t["right"] for t in d["typed_on_new"]} == {True, False}
    assert {"typed": code, "right": False} in d["typed_on_new"]  # its own code is not the second
    for t in d["typed_on_new"]:
        new_side = revealed_new()
        if t["right"]:
            new_side.confirm(t["typed"])
            assert new_side.state is PairingState.CONFIRMED, t
            assert new_side.open_answer(answer) == payload_to_new
        else:
            with pytest.raises(WrongCode) as refused:
                new_side.confirm(t["typed"])
            assert refused.value.attempts_left == MAX_ATTEMPTS - 1
            assert new_side.state is PairingState.REVEALED
            _refused(new_side.open_answer, answer)
    new_side = revealed_new()
    wrong = next(t["typed"] for t in d["typed_on_new"] if not t["right"])
    for left in range(MAX_ATTEMPTS - 1, -1, -1):
        with pytest.raises(WrongCode) as refused:
            new_side.confirm(wrong)
        assert refused.value.attempts_left == left
    assert new_side.state is PairingState.FAILED
    _refused(new_side.confirm, confirmation)
    _refused(new_side.open_answer, answer)

    negative = (
        "reveal_rejected",
        "b_rejected",
        "second_b_rejected",
        "low_order_rejected",
        "sealed_rejected",
        "answer_rejected",
    )
    assert all(d[name] for name in negative)
    for case in d["reveal_rejected"]:
        side = ExistingDevice(commitment, Draws(b_private))
        _refused(side.receive_reveal, b(case["a_public"]), sealed)
        assert side.state is PairingState.FAILED, case["case"]
    for case in d["b_rejected"]:
        new_side = new_device()
        _refused(new_side.reveal, b(case["b_public"]), payload_to_existing)
        assert new_side.state is PairingState.FAILED and new_side.code == "", case["case"]
    # The new device reveals once: a second B, before or after the second code was typed,
    # ends the pairing.
    for case in d["second_b_rejected"]:
        for confirmed in (False, True):
            new_side = revealed_new()
            if confirmed:
                new_side.confirm(confirmation)
            _refused(new_side.reveal, b(case["b_public"]), payload_to_existing)
            assert new_side.state is PairingState.FAILED, case["case"]
            _refused(new_side.confirm, confirmation)
            _refused(new_side.open_answer, answer)
    assert {c["b_public"] for c in d["second_b_rejected"]} >= {b_public.hex()}
    for case in d["low_order_rejected"]:
        key = b(case["key"])
        assert sha256(lp(VERSION_LABEL, b"link-commit", key)).hex() == case["commitment"]
        with pytest.raises(ValueError):
            x25519(a_private, key)  # an all-zero DH
        new_side = new_device()
        _refused(new_side.reveal, key, payload_to_existing)
        assert new_side.state is PairingState.FAILED, case["case"]
        side = ExistingDevice(b(case["commitment"]), Draws(b_private))
        _refused(side.receive_reveal, key, sealed)  # the commitment is kept, the key is not usable
        assert side.state is PairingState.FAILED, case["case"]
    for case in d["sealed_rejected"]:
        side = revealed(b(case["sealed_to_existing"]))
        _refused(side.confirm, code)
        assert side.state is PairingState.FAILED and side.confirmation == "", case["case"]
    for case in d["answer_rejected"]:
        new_side = revealed_new()
        new_side.confirm(confirmation)
        _refused(new_side.open_answer, b(case["sealed_to_new"]))
        assert new_side.state is PairingState.FAILED, case["case"]
        _refused(new_side.open_answer, answer)  # the pairing is over: not even the real one


def test_pairing() -> None:
    check_pairing(load("pairing.json"))


# -- the checks above can fail -----------------------------------------------------------


def _changed(value: Any) -> Any:
    """`value` with one thing changed: a hex digit, a digit of a code, a number, a flag."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    assert isinstance(value, str) and value
    if value.isdigit() and len(value) == CODE_DIGITS:  # the pairing code
        return value[:-1] + str((int(value[-1]) + 1) % 10)
    if all(c in "0123456789abcdef" for c in value):
        return value[:-1] + format(int(value[-1], 16) ^ 1, "x")
    return value[:-1] + chr(ord(value[-1]) ^ 1)


def _leaves(d: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(d, dict):
        return [p for k, v in d.items() for p in _leaves(v, (*path, k))]
    if isinstance(d, list):
        return [p for i, v in enumerate(d) for p in _leaves(v, (*path, i))]
    return [path]


def _mutations(name: str) -> list[tuple[Any, ...]]:
    """Every value of the file's positive vectors, and the verdict of every negative one."""
    d = load(name)
    if name == "device_list.json":
        positive = [
            p
            for p in _leaves(d)
            if p[0] in ("signer", "identity_key", "phone_private", "max_devices", "lists")
        ]
        verdicts = [
            ("cases", i, verdict) for i in range(len(d["cases"])) for verdict in ("accept", "rollback")
        ]
        return positive + verdicts
    typed = ("typed", "typed_on_new")
    negative = (
        *typed,
        "reveal_rejected",
        "b_rejected",
        "second_b_rejected",
        "low_order_rejected",
        "sealed_rejected",
        "answer_rejected",
    )
    positive = [p for p in _leaves(d) if p[0] not in ("description", "source", *negative)]
    return positive + [(name, i, "right") for name in typed for i in range(len(d[name]))]


@pytest.mark.parametrize("name", ["device_list.json", "pairing.json"])
def test_every_device_and_pairing_value_is_checked(name: str) -> None:
    """Change any one value of a positive vector, or any verdict of a negative one, and the
    check above fails: nothing in these files is carried along unchecked."""
    check = check_device_list if name == "device_list.json" else check_pairing
    mutations = _mutations(name)
    assert len(mutations) > 30
    for path in mutations:
        d = copy.deepcopy(load(name))
        parent = functools.reduce(lambda node, key: node[key], path[:-1], d)
        parent[path[-1]] = _changed(parent[path[-1]])
        with pytest.raises((AssertionError, pytest.fail.Exception, E2EError)):
            check(d)


def _made_valid(d: dict[str, Any], name: str) -> None:
    """Turn the first case of the refused list `name` into the valid value."""
    if name == "cases":  # a forged device list: the signed list at its version, seen as before
        case = next(c for c in d["cases"] if "forged" in c["case"])
        signed = d["lists"][0]
        case.update(devices=signed["devices"], signature=signed["signature"], at_least=signed["version"])
        return
    valid = {
        "reveal_rejected": {"a_public": d["new_device"]["a_public"]},
        "b_rejected": {"b_public": d["existing_device"]["b_public"]},
        "low_order_rejected": {"key": d["new_device"]["a_public"], "commitment": d["commitment"]},
        "sealed_rejected": {"sealed_to_existing": d["sealed_to_existing"]},
        "answer_rejected": {"sealed_to_new": d["sealed_to_new"]},
    }
    d[name][0].update(valid[name])


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("pairing.json", "reveal_rejected"),
        ("pairing.json", "b_rejected"),
        ("pairing.json", "low_order_rejected"),
        ("pairing.json", "sealed_rejected"),
        ("pairing.json", "answer_rejected"),
        ("device_list.json", "cases"),
    ],
)
def test_a_refused_case_made_valid_is_caught(name: str, refused: str) -> None:
    d = copy.deepcopy(load(name))
    _made_valid(d, refused)
    check = check_device_list if name == "device_list.json" else check_pairing
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check(d)
