"""The double ratchet (Signal's specification) with this protocol's KDFs and header.

    KDF_RK(rk, dh) = HKDF(salt = rk, IKM = dh, info = V " ratchet", 64) -> rk', ck
    KDF_CK(ck)     = mk = HMAC(ck, 0x01); ck' = HMAC(ck, 0x02)
    key || nonce   = HKDF(salt = 0^32, IKM = mk, info = V " msg", 44)
    AAD            = LP(V, "msg", sid, sender, recipient, AD0, header)

Header: version (1) | flags (1) | sid (16) | DHs (32) | PN (u32) | N (u32), then, when
flag bit 0 is set, the setup: IK_sig (32) | IK_dh (32) | binding sig (64) | EK (32) |
spk_id (u64) | opk_id (u64), and in version 2: kem_id (u64) | KEM ciphertext (1088). The
version is the session's (1: X3DH setup, 2: PQXDH setup), in every header of it. The
header is authenticated as part of the AAD.

Version 2 pads every plaintext to a multiple of `PAD_BLOCK` bytes before encryption
(0x80, then zeros), so the relay learns only coarse lengths.

Decryption works on a copy of the state and returns the new state only on success, so
a forged, replayed or corrupted message leaves the session exactly as it was.

No rule here depends on the clock: skipped message keys are bounded by count and by the
conversation's progress (DH ratchet steps), so a clock jump cannot delete one.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from ..protocol import fold_nick, is_valid_nick
from .errors import DecryptionError, MalformedPlaintext
from .identity import PublicIdentity
from .primitives import (
    KEM_CIPHERTEXT_BYTES,
    KEY_BYTES,
    SIG_BYTES,
    VERSION_LABEL,
    DhKeyPair,
    Random,
    aead_decrypt,
    aead_encrypt,
    hkdf_sha256,
    hmac_sha256,
    lp,
)
from .x3dh import Setup

__all__ = [
    "MAX_SKIP",
    "MAX_SKIPPED_STORED",
    "PAD_BLOCK",
    "SKIPPED_CHAINS_KEPT",
    "Header",
    "RatchetState",
    "SavedFields",
    "decrypt",
    "encrypt",
    "pad",
    "parse_header",
    "saved_int",
    "saved_key",
    "unpad",
]

_FLAG_SETUP = 0x01
_BASE = struct.Struct(">BB16s32sII")
_SETUP = struct.Struct(">32s32s64s32sQQ")
_PQ_SETUP = struct.Struct(f">Q{KEM_CIPHERTEXT_BYTES}s")
HEADER_LEN = _BASE.size
SETUP_LEN = _SETUP.size
#: Version 2's setup: version 1's, then the KEM prekey id and ciphertext.
PQ_SETUP_LEN = SETUP_LEN + _PQ_SETUP.size
#: Header version (a session's is its setup's: x3dh.Setup.version) -> its setup's length.
_SETUP_LENS = {1: SETUP_LEN, 2: PQ_SETUP_LEN}
#: Version 2 pads plaintexts to a multiple of this (Signal's block): a relay sees a
#: whisper's length to within 160 bytes.
PAD_BLOCK = 160

#: At most this many message keys are derived ahead within one chain: a header claiming
#: N = 10**6 is refused before any work, instead of costing a million HMACs.
MAX_SKIP = 1000
#: Skipped keys kept per session in all; the oldest are dropped first. Bounds the memory
#: and disk a peer (or a server dropping frames) can make a session hold.
MAX_SKIPPED_STORED = 2000
#: A skipped key is deleted once its chain is more than this many DH ratchet steps behind
#: (the peer has since heard from us and answered in a new chain that many times): its
#: message, overtaken by that many round trips, is presumed lost, and its key should not
#: stay on disk for a thief. This replaces a 7-day wall-clock lifetime, which a clock
#: jump could use up in an instant, deleting keys of whispers still queued on the server.
#: A resent whisper is overtaken by at most a round trip or two (a client resends its
#: unconfirmed whispers before anything new), so 16 leaves a wide margin.
SKIPPED_CHAINS_KEPT = 16
#: Earlier ratchet keys of the peer remembered, to refuse replays from old chains cheaply.
#: At least `SKIPPED_CHAINS_KEPT`, which is counted along this list.
_OLD_DH_REMEMBERED = 32
#: Counters in the header are u32; spk_id and opk_id in the setup are u64.
_U32 = 2**32
_U64 = 2**64
#: Lengths in a saved state: session ids, and Ed25519 signatures.
_SID_BYTES = 16


@dataclass(frozen=True)
class Header:
    sid: bytes
    dh: bytes
    pn: int
    n: int
    setup: Setup | None = None
    version: int = 1

    def encode(self) -> bytes:
        flags = _FLAG_SETUP if self.setup is not None else 0
        out = _BASE.pack(self.version, flags, self.sid, self.dh, self.pn, self.n)
        if self.setup is not None:
            if self.setup.version != self.version:
                raise ValueError("a header's version is its session's setup's")
            ident = self.setup.identity
            out += _SETUP.pack(
                ident.sig_key,
                ident.dh_key,
                ident.dh_sig,
                self.setup.ephemeral,
                self.setup.spk_id,
                self.setup.opk_id,
            )
            if self.version == 2:
                out += _PQ_SETUP.pack(self.setup.kem_id, self.setup.kem_ct)
        return out


def parse_header(data: bytes, sender: str) -> Header:
    """Parse a header; `sender` is who the relay says sent it (verified later by the AAD).

    Raises `DecryptionError` for anything malformed: an unknown version, unknown flags,
    a length that is not the version's with or without its setup, or a version-2 setup
    naming KEM prekey 0.
    """
    if len(data) < HEADER_LEN:
        raise DecryptionError
    version, flags, sid, dh, pn, n = _BASE.unpack_from(data)
    if version not in _SETUP_LENS or flags & ~_FLAG_SETUP:
        raise DecryptionError
    has_setup = bool(flags & _FLAG_SETUP)
    setup_len = _SETUP_LENS[version] if has_setup else 0
    if len(data) != HEADER_LEN + setup_len:
        raise DecryptionError
    setup = None
    if has_setup:
        sig_key, dh_key, dh_sig, ephemeral, spk_id, opk_id = _SETUP.unpack_from(data, HEADER_LEN)
        kem_id, kem_ct = 0, b""
        if version == 2:
            kem_id, kem_ct = _PQ_SETUP.unpack_from(data, HEADER_LEN + SETUP_LEN)
            if kem_id == 0:
                raise DecryptionError
        setup = Setup(
            PublicIdentity(sender, sig_key, dh_key, dh_sig), ephemeral, spk_id, opk_id, kem_id, kem_ct
        )
    return Header(sid, dh, pn, n, setup, version)


def pad(plaintext: bytes) -> bytes:
    """`plaintext`, 0x80, then zeros up to the next multiple of `PAD_BLOCK` (at least one byte added)."""
    padded_len = (len(plaintext) // PAD_BLOCK + 1) * PAD_BLOCK
    return plaintext + b"\x80" + bytes(padded_len - len(plaintext) - 1)


def unpad(padded: bytes) -> bytes:
    """`pad`'s inverse. Raises `MalformedPlaintext` if `padded` is not a padded plaintext."""
    body = padded.rstrip(b"\x00")
    if not padded or len(padded) % PAD_BLOCK or not body.endswith(b"\x80"):
        raise MalformedPlaintext
    return body[:-1]


def _kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    out = hkdf_sha256(salt=rk, ikm=dh_out, info=VERSION_LABEL + b" ratchet", length=64)
    return out[:32], out[32:]


def _kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    """(next chain key, message key)."""
    return hmac_sha256(ck, b"\x02"), hmac_sha256(ck, b"\x01")


def _message_cipher(mk: bytes) -> tuple[bytes, bytes]:
    out = hkdf_sha256(salt=bytes(32), ikm=mk, info=VERSION_LABEL + b" msg", length=44)
    return out[:32], out[32:]


@dataclass
class RatchetState:
    """One session with one peer, from our side."""

    sid: bytes
    ad0: bytes
    me: str
    peer: str
    peer_key: bytes  # the peer's IK, which this session is bound to
    rk: bytes
    dhs: DhKeyPair
    dhr: bytes | None
    cks: bytes | None
    ckr: bytes | None
    ns: int = 0
    nr: int = 0
    pn: int = 0
    setup: Setup | None = None  # sent with every message until the peer's first reply
    skipped: dict[tuple[bytes, int], tuple[bytes, float]] = field(default_factory=dict)
    old_dhr: list[bytes] = field(default_factory=list)
    opk_to_delete: int | None = None  # the responder's OPK, deleted once a message decrypts
    kem_to_delete: int | None = None  # the responder's one-time KEM prekey, likewise
    version: int = 1  # the setup's: 2 is post-quantum (PQXDH), and pads plaintexts
    # (sender, recipient) -> the AAD's fixed prefix; derived from fields that never
    # change within a session, so copies share it. Not part of the saved state.
    _aad_prefix: dict[tuple[str, str], bytes] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def for_initiator(
        cls,
        *,
        sid: bytes,
        ad0: bytes,
        sk: bytes,
        me: str,
        peer: str,
        peer_key: bytes,
        their_spk: bytes,
        setup: Setup,
        random: Random = os.urandom,
    ) -> RatchetState:
        dhs = DhKeyPair.generate(random)
        try:
            rk, cks = _kdf_rk(sk, dhs.exchange(their_spk))
        except ValueError:
            raise DecryptionError from None
        return cls(
            sid=sid,
            ad0=ad0,
            me=me,
            peer=peer,
            peer_key=peer_key,
            rk=rk,
            dhs=dhs,
            dhr=their_spk,
            cks=cks,
            ckr=None,
            setup=setup,
            version=setup.version,
        )

    @classmethod
    def for_responder(
        cls,
        *,
        sid: bytes,
        ad0: bytes,
        sk: bytes,
        me: str,
        peer: str,
        peer_key: bytes,
        spk: DhKeyPair,
        opk_id: int | None,
        kem_id: int | None = None,
        version: int = 1,
    ) -> RatchetState:
        """`kem_id`: a one-time KEM prekey to delete once a message decrypts (None for a
        last-resort one or a version-1 setup)."""
        return cls(
            sid=sid,
            ad0=ad0,
            me=me,
            peer=peer,
            peer_key=peer_key,
            rk=sk,
            dhs=spk,
            dhr=None,
            cks=None,
            ckr=None,
            opk_to_delete=opk_id,
            kem_to_delete=kem_id,
            version=version,
        )

    def _aad(self, sender: str, recipient: str, header: bytes) -> bytes:
        # lp() of all seven fields; the first six are the same for every message.
        prefix = self._aad_prefix.get((sender, recipient))
        if prefix is None:
            prefix = lp(VERSION_LABEL, b"msg", self.sid, fold_nick(sender), fold_nick(recipient), self.ad0)
            self._aad_prefix[(sender, recipient)] = prefix
        return prefix + lp(header)

    # -- persistence ------------------------------------------------------------------

    def copy(self) -> RatchetState:
        """An independent copy (decryption works on one and keeps it only on success).

        Every field is immutable (bytes, ints, str, the frozen `Setup`, `DhKeyPair`)
        except the two containers, which are copied; far cheaper than `deepcopy`.
        """
        new = object.__new__(RatchetState)
        new.__dict__.update(self.__dict__)
        new.skipped = dict(self.skipped)
        new.old_dhr = list(self.old_dhr)
        return new

    def to_dict(self) -> dict[str, Any]:
        def b(x: bytes | None) -> str | None:
            return None if x is None else base64.b64encode(x).decode()

        setup = None
        if self.setup is not None:
            ident = self.setup.identity
            setup = {
                "user": ident.user,
                "sig_key": b(ident.sig_key),
                "dh_key": b(ident.dh_key),
                "dh_sig": b(ident.dh_sig),
                "ephemeral": b(self.setup.ephemeral),
                "spk_id": self.setup.spk_id,
                "opk_id": self.setup.opk_id,
                "kem_id": self.setup.kem_id,
                "kem_ct": b(self.setup.kem_ct) if self.setup.kem_ct else "",
            }
        return {
            "sid": b(self.sid),
            "ad0": b(self.ad0),
            "me": self.me,
            "peer": self.peer,
            "peer_key": b(self.peer_key),
            "rk": b(self.rk),
            "dhs": b(self.dhs.private),
            "dhr": b(self.dhr),
            "cks": b(self.cks),
            "ckr": b(self.ckr),
            "ns": self.ns,
            "nr": self.nr,
            "pn": self.pn,
            "setup": setup,
            "skipped": [[b(dh), n, b(mk), t] for (dh, n), (mk, t) in self.skipped.items()],
            "old_dhr": [b(x) for x in self.old_dhr],
            "opk_to_delete": self.opk_to_delete,
            "kem_to_delete": self.kem_to_delete,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, d: object) -> RatchetState:
        """Rebuild from `to_dict()` output (parsed JSON).

        Raises `ValueError`, naming the field, for anything this version would not have
        written: a wrong JSON type at any level, a missing field, bad base64, a wrong key
        length, or a counter out of range.
        """
        f = SavedFields(d, "")
        # Sessions saved before version 2 existed have no "version" (nor KEM fields).
        version = f.integer("version") if f.has("version") else 1
        if version not in _SETUP_LENS:
            raise ValueError(f"version: {version} is not a session version")
        setup = None
        saved_setup = f.optional_object("setup")
        if saved_setup is not None:
            kem_id = saved_setup.integer("kem_id", below=_U64) if saved_setup.has("kem_id") else 0
            kem_ct = b""
            if kem_id:
                kem_ct = saved_setup.key("kem_ct", KEM_CIPHERTEXT_BYTES)
            if (2 if kem_id else 1) != version:
                raise ValueError("setup.kem_id: does not match the session's version")
            setup = Setup(
                PublicIdentity(
                    saved_setup.nick("user"),
                    saved_setup.key("sig_key", KEY_BYTES),
                    saved_setup.key("dh_key", KEY_BYTES),
                    saved_setup.key("dh_sig", SIG_BYTES),
                ),
                saved_setup.key("ephemeral", KEY_BYTES),
                saved_setup.integer("spk_id", below=_U64),
                saved_setup.integer("opk_id", below=_U64),
                kem_id,
                kem_ct,
            )
        skipped: dict[tuple[bytes, int], tuple[bytes, float]] = {}
        for i, entry in enumerate(f.items("skipped")):
            where = f"skipped[{i}]"
            if not isinstance(entry, list) or len(entry) != 4:
                raise ValueError(f"{where}: expected [ratchet key, counter, message key, time]")
            dh, n, mk, t = entry
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                raise ValueError(f"{where}: the time is not a number")
            skipped[(saved_key(dh, where, KEY_BYTES), saved_int(n, where, below=_U32))] = (
                saved_key(mk, where, KEY_BYTES),
                float(t),
            )
        opk_to_delete = f.raw("opk_to_delete")
        kem_to_delete = f.raw("kem_to_delete") if f.has("kem_to_delete") else None
        return cls(
            sid=f.key("sid", _SID_BYTES),
            ad0=f.key("ad0", None),
            me=f.nick("me"),
            peer=f.nick("peer"),
            peer_key=f.key("peer_key", 2 * KEY_BYTES),
            rk=f.key("rk", KEY_BYTES),
            dhs=DhKeyPair(f.key("dhs", KEY_BYTES)),
            dhr=f.optional_key("dhr", KEY_BYTES),
            cks=f.optional_key("cks", KEY_BYTES),
            ckr=f.optional_key("ckr", KEY_BYTES),
            ns=f.integer("ns", below=_U32),
            nr=f.integer("nr", below=_U32),
            pn=f.integer("pn", below=_U32),
            setup=setup,
            skipped=skipped,
            old_dhr=[saved_key(x, f"old_dhr[{i}]", KEY_BYTES) for i, x in enumerate(f.items("old_dhr"))],
            opk_to_delete=None if opk_to_delete is None else saved_int(opk_to_delete, "opk_to_delete"),
            kem_to_delete=None if kem_to_delete is None else saved_int(kem_to_delete, "kem_to_delete"),
            version=version,
        )


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def saved_int(value: object, where: str, *, below: int = _U64) -> int:
    """`value` if it is an integer in [0, below); else `ValueError` naming `where`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, found {_kind(value)}")
    if not 0 <= value < below:
        raise ValueError(f"{where}: {value} is out of range")
    return value


def saved_key(value: object, where: str, length: int | None) -> bytes:
    """The bytes of a base64 string, of exactly `length` bytes (any, if None; never empty)."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected base64 text, found {_kind(value)}")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: not valid base64") from None
    if (length is None and not data) or (length is not None and len(data) != length):
        raise ValueError(f"{where}: {len(data)} bytes where {length or 'some'} belong")
    return data


class SavedFields:
    """One JSON object from a saved record, read field by field with its shape checked.

    Every accessor raises `ValueError` naming the field's path ("setup.spk_id: ...") when
    the field is missing or has the wrong type, range, encoding or length.
    """

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, dict):
            raise ValueError(f"{path or 'the record'}: expected an object, found {_kind(value)}")
        self._fields: dict[str, Any] = value
        self._path = path

    def where(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def has(self, name: str) -> bool:
        """True if the field is present (for fields a later version added)."""
        return name in self._fields

    def raw(self, name: str) -> object:
        if name not in self._fields:
            raise ValueError(f"{self.where(name)}: missing")
        return self._fields[name]

    def integer(self, name: str, *, below: int = _U64) -> int:
        return saved_int(self.raw(name), self.where(name), below=below)

    def key(self, name: str, length: int | None) -> bytes:
        return saved_key(self.raw(name), self.where(name), length)

    def optional_key(self, name: str, length: int) -> bytes | None:
        value = self.raw(name)
        return None if value is None else saved_key(value, self.where(name), length)

    def text(self, name: str) -> str:
        value = self.raw(name)
        if not isinstance(value, str):
            raise ValueError(f"{self.where(name)}: expected text, found {_kind(value)}")
        return value

    def nick(self, name: str) -> str:
        value = self.text(name)
        if not is_valid_nick(value):
            raise ValueError(f"{self.where(name)}: {value!r} is not a nick")
        return value

    def flag(self, name: str) -> bool:
        value = self.raw(name)
        if not isinstance(value, bool):
            raise ValueError(f"{self.where(name)}: expected true or false, found {_kind(value)}")
        return value

    def items(self, name: str) -> list[Any]:
        value = self.raw(name)
        if not isinstance(value, list):
            raise ValueError(f"{self.where(name)}: expected a list, found {_kind(value)}")
        return value

    def object(self, name: str) -> SavedFields:
        return SavedFields(self.raw(name), self.where(name))

    def optional_object(self, name: str) -> SavedFields | None:
        return None if self.raw(name) is None else self.object(name)


def encrypt(state: RatchetState, plaintext: bytes) -> tuple[bytes, bytes]:
    """Encrypt the next message; returns (header, ciphertext) and advances `state`.

    The caller must persist the advanced state before sending the ciphertext: reusing
    a chain position after a crash would reuse a key and nonce.
    """
    if state.cks is None:
        raise ValueError("this session cannot send yet: no message from the initiator has arrived")
    state.cks, mk = _kdf_ck(state.cks)
    header = Header(state.sid, state.dhs.public, state.pn, state.ns, state.setup, state.version).encode()
    state.ns += 1
    key, nonce = _message_cipher(mk)
    if state.version == 2:
        plaintext = pad(plaintext)
    return header, aead_encrypt(key, nonce, plaintext, state._aad(state.me, state.peer, header))


def decrypt(
    state: RatchetState,
    header_bytes: bytes,
    header: Header,
    ciphertext: bytes,
    *,
    now: float,
    random: Random = os.urandom,
) -> tuple[RatchetState, bytes]:
    """Authenticate and decrypt; returns (new state, plaintext). `state` is not modified.

    `now` is recorded with each key skipped here (the saved state has a place for it) but
    decides nothing: no reading of the clock deletes a key.

    Raises `DecryptionError` for anything that does not verify: tampering, replay, a
    message for another session or direction, too many skipped messages, bad keys.
    """
    if header.sid != state.sid or header.version != state.version:
        raise DecryptionError
    aad = state._aad(state.peer, state.me, header_bytes)
    found = state.skipped.get((header.dh, header.n))
    if found is not None:
        plaintext = _open(found[0], ciphertext, aad, state.version)
        new = state.copy()
        del new.skipped[(header.dh, header.n)]
        _after_success(new)
        return new, plaintext
    if header.dh == state.dhr and header.n < state.nr:
        raise DecryptionError  # a duplicate: its key was used and deleted
    if header.dh in state.old_dhr:
        raise DecryptionError  # a replay from a finished chain
    new = state.copy()
    try:
        if header.dh != new.dhr:
            _skip(new, header.pn, now)
            _dh_ratchet(new, header.dh, random)
        _skip(new, header.n, now)
        assert new.ckr is not None
        new.ckr, mk = _kdf_ck(new.ckr)
        new.nr += 1
    except ValueError:  # a low-order ratchet key from the peer
        raise DecryptionError from None
    plaintext = _open(mk, ciphertext, aad, new.version)
    _after_success(new)
    return new, plaintext


def _open(mk: bytes, ciphertext: bytes, aad: bytes, version: int) -> bytes:
    key, nonce = _message_cipher(mk)
    plaintext = aead_decrypt(key, nonce, ciphertext, aad)
    if plaintext is None:
        raise DecryptionError
    return unpad(plaintext) if version == 2 else plaintext


def _after_success(state: RatchetState) -> None:
    state.setup = None if state.ckr is not None else state.setup  # the peer has replied


def _skip(state: RatchetState, until: int, now: float) -> None:
    if state.ckr is None:
        return
    if until - state.nr > MAX_SKIP:
        raise DecryptionError
    assert state.dhr is not None
    while state.nr < until:
        state.ckr, mk = _kdf_ck(state.ckr)
        state.skipped[(state.dhr, state.nr)] = (mk, now)
        state.nr += 1
    while len(state.skipped) > MAX_SKIPPED_STORED:
        del state.skipped[next(iter(state.skipped))]  # dicts keep insertion order: oldest first


def _dh_ratchet(state: RatchetState, their_dh: bytes, random: Random) -> None:
    if state.dhr is not None:
        state.old_dhr = [*state.old_dhr, state.dhr][-_OLD_DH_REMEMBERED:]
    state.pn = state.ns
    state.ns = 0
    state.nr = 0
    state.dhr = their_dh
    recent = {their_dh, *state.old_dhr[-SKIPPED_CHAINS_KEPT:]}
    if any(dh not in recent for dh, _ in state.skipped):  # chains too far behind: presumed lost
        state.skipped = {k: v for k, v in state.skipped.items() if k[0] in recent}
    state.rk, state.ckr = _kdf_rk(state.rk, state.dhs.exchange(their_dh))
    state.dhs = DhKeyPair.generate(random)
    state.rk, state.cks = _kdf_rk(state.rk, state.dhs.exchange(their_dh))
