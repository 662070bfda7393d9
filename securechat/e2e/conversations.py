"""All of one user's end-to-end state, and the rules for using it. No I/O.

`Conversations` holds the identity, prekey secrets, pins (what key we accepted for
whom, and how much we trust it), ratchet sessions and the setup replay cache. The
client persists `records()` after every change, before sending what the change
produced (`dirty` says which records changed).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..protocol import fold_nick
from .bundle import OPK_TARGET, Bundle, PrekeySecrets, StoredSpk, verify_bundle
from .errors import BundleError, DecryptionError, IdentityChanged, NotTrusted
from .identity import Identity, PublicIdentity
from .primitives import DhKeyPair, Random
from .ratchet import Header, RatchetState, decrypt, encrypt, parse_header
from .safety import parse_safety_number, same_number
from .x3dh import NO_OPK, initiate, respond

__all__ = ["Conversations", "Pin", "Trust", "Whisper"]

#: Sessions kept per peer (simultaneous starts, a peer's reinstall); oldest dropped.
_SESSIONS_PER_PEER = 4
#: Setups remembered after their session is gone, so a replayed first message cannot
#: start a second session.
_SEEN_SETUPS = 10_000


class Trust(Enum):
    UNVERIFIED = "unverified"  # accepted on first use
    VERIFIED = "verified"  # the user compared safety numbers
    CHANGED = "changed"  # a different key appeared; nothing flows until the user decides


@dataclass
class Pin:
    """The identity we accepted for a peer, and a changed one awaiting a decision."""

    identity: PublicIdentity
    trust: Trust
    pending: PublicIdentity | None = None
    was_verified: bool = False
    max_spk_id: int = 0


@dataclass(frozen=True)
class Whisper:
    """A decrypted whisper and what we know about who sent it."""

    sender: PublicIdentity
    plaintext: bytes
    trust: Trust


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _ident_to(ident: PublicIdentity) -> dict[str, str]:
    return {
        "user": ident.user,
        "sig_key": _b64(ident.sig_key),
        "dh_key": _b64(ident.dh_key),
        "dh_sig": _b64(ident.dh_sig),
    }


def _ident_from(d: dict[str, str]) -> PublicIdentity:
    return PublicIdentity(d["user"], _unb64(d["sig_key"]), _unb64(d["dh_key"]), _unb64(d["dh_sig"]))


class Conversations:
    """One user's end-to-end state. Not thread-safe: the client serialises calls."""

    def __init__(
        self,
        identity: Identity,
        secrets: PrekeySecrets | None = None,
        *,
        random: Random = os.urandom,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.secrets = secrets if secrets is not None else PrekeySecrets()
        self._random = random
        self._clock = clock
        self.pins: dict[str, Pin] = {}
        self._sessions: dict[bytes, RatchetState] = {}
        self._active: dict[str, list[bytes]] = {}  # peer -> sids, most recently used last
        self._seen_setups: dict[bytes, None] = {}
        self.dirty: set[str] = set()

    # -- prekeys ----------------------------------------------------------------------

    def bundle_to_publish(self) -> Bundle:
        """A full bundle: rotates the signed prekey when due and tops one-time prekeys up."""
        now = self._clock()
        if self.secrets.needs_rotation(now):
            self.secrets.rotate_spk(now, self._random)
        missing = OPK_TARGET - len(self.secrets.opks)
        if missing > 0:
            self.secrets.new_opks(missing, self._random)
        self.dirty.add("prekeys")
        return self.secrets.bundle(self.identity)

    # -- trust ------------------------------------------------------------------------

    def _check_pin(self, ident: PublicIdentity) -> Pin:
        """The pin for `ident.user`, creating it on first contact (TOFU).

        Raises `IdentityChanged` (and records the new key as pending) if it differs.
        """
        peer = fold_nick(ident.user)
        pin = self.pins.get(peer)
        if pin is None:
            pin = Pin(ident, Trust.UNVERIFIED)
            self.pins[peer] = pin
            self.dirty.add("pins")
            return pin
        if pin.identity.key == ident.key and pin.trust is not Trust.CHANGED:
            return pin
        if pin.identity.key != ident.key:
            if pin.pending is None or pin.pending.key != ident.key:
                pin.pending = ident
                pin.was_verified = pin.was_verified or pin.trust is Trust.VERIFIED
                pin.trust = Trust.CHANGED
                self.dirty.add("pins")
            raise IdentityChanged(ident.user, pin.identity.fingerprint(), ident.fingerprint())
        raise IdentityChanged(ident.user, pin.identity.fingerprint(), (pin.pending or ident).fingerprint())

    def trust(self, peer: str) -> PublicIdentity:
        """Accept a peer's changed key after a warning. Returns the accepted identity.

        Raises `NotTrusted` if there is no changed key to accept, or if the old key had
        been verified (then only `verify` with the new safety number may accept it).
        """
        pin = self.pins.get(fold_nick(peer))
        if pin is None or pin.trust is not Trust.CHANGED or pin.pending is None:
            raise NotTrusted(f"no changed key to accept for {peer}")
        if pin.was_verified:
            raise NotTrusted(f"{peer} was verified: compare the new safety number with /verify {peer} NUMBER")
        self._accept_pending(pin, Trust.UNVERIFIED)
        return pin.identity

    def _accept_pending(self, pin: Pin, trust: Trust) -> None:
        assert pin.pending is not None
        peer = fold_nick(pin.identity.user)
        pin.identity, pin.pending, pin.trust, pin.max_spk_id = pin.pending, None, trust, 0
        pin.was_verified = trust is Trust.VERIFIED
        self.forget_sessions(peer)  # sessions with the old key are dead
        self.dirty.add("pins")

    def safety_number(self, peer: str) -> str:
        """The 60 digits for the key we would use with `peer` (the pending one after a change).

        Raises `NotTrusted` if we have never seen a key for them.
        """
        pin = self.pins.get(fold_nick(peer))
        if pin is None:
            raise NotTrusted(f"no key known for {peer} yet: whisper them first, or wait for their whisper")
        return self.identity.safety_number_with(pin.pending or pin.identity)

    def verify(self, peer: str, number: str) -> bool:
        """Mark `peer` verified if `number` is our safety number with them. Constant-time compare."""
        digits = parse_safety_number(number)
        if digits is None:
            return False
        expected = self.safety_number(peer).replace(" ", "")
        if not same_number(digits, expected):
            return False
        pin = self.pins[fold_nick(peer)]
        if pin.trust is Trust.CHANGED:
            self._accept_pending(pin, Trust.VERIFIED)
        else:
            pin.trust = Trust.VERIFIED
            pin.was_verified = True
            self.dirty.add("pins")
        return True

    def pin(self, peer: str) -> Pin | None:
        return self.pins.get(fold_nick(peer))

    # -- sending ----------------------------------------------------------------------

    def has_session(self, peer: str) -> bool:
        return bool(self._active.get(fold_nick(peer)))

    def start_session(self, peer: str, bundle: Bundle) -> None:
        """Verify `bundle` (fetched for `peer`) and start a session from it.

        Raises `BundleError` (bad, stale or rolled-back keys) or `IdentityChanged`.
        """
        pin = self.pins.get(fold_nick(peer))
        same_identity = pin is not None and pin.identity.key == bundle.identity.key
        verify_bundle(
            bundle, user=peer, now=self._clock(), min_spk_id=pin.max_spk_id if same_identity and pin else 0
        )
        pin = self._check_pin(bundle.identity)
        try:
            keys, setup = initiate(self.identity, bundle, self._random)
            state = RatchetState.for_initiator(
                sid=keys.sid,
                ad0=keys.ad0,
                sk=keys.sk,
                me=self.identity.user,
                peer=bundle.identity.user,
                peer_key=bundle.identity.key,
                their_spk=bundle.spk.public,
                setup=setup,
                random=self._random,
            )
        except (ValueError, DecryptionError):
            raise BundleError(f"{peer}'s keys include an invalid (low-order) public key") from None
        if bundle.spk.id > pin.max_spk_id:
            pin.max_spk_id = bundle.spk.id
            self.dirty.add("pins")
        self._remember(state)

    def forget_sessions(self, peer: str) -> None:
        """End every session with `peer`; the next message starts a new one from fresh keys.

        The pin stays: a different key from the directory still raises `IdentityChanged`.
        """
        for sid in self._active.pop(fold_nick(peer), []):
            self._sessions.pop(sid, None)
            self.dirty.add(f"session:{sid.hex()}")
        self.dirty.add("index")

    def encrypt(self, peer: str, plaintext: bytes) -> tuple[bytes, bytes]:
        """(header, ciphertext) for `peer` in the current session.

        Raises `IdentityChanged` while their key change is undecided and `NotTrusted`
        if there is no session (fetch their bundle and call `start_session`).
        """
        key = fold_nick(peer)
        pin = self.pins.get(key)
        if pin is not None and pin.trust is Trust.CHANGED:
            assert pin.pending is not None
            raise IdentityChanged(peer, pin.identity.fingerprint(), pin.pending.fingerprint())
        for sid in reversed(self._active.get(key, [])):
            state = self._sessions[sid]
            if state.cks is not None:
                self.dirty.add(f"session:{sid.hex()}")
                return encrypt(state, plaintext)
        raise NotTrusted(f"no session with {peer}")

    # -- receiving --------------------------------------------------------------------

    def decrypt(self, sender: str, header_bytes: bytes, ciphertext: bytes) -> Whisper:
        """Decrypt a whisper the relay says came from `sender`.

        Raises `DecryptionError` (opaque) or `IdentityChanged` (a setup under a new key
        for a pinned peer: the message cannot be read until the user trusts that key).
        """
        header = parse_header(header_bytes, sender)
        state = self._sessions.get(header.sid)
        now = self._clock()
        new_session = state is None
        if state is None:
            state = self._responder_state(header)
        elif fold_nick(state.peer) != fold_nick(sender):
            raise DecryptionError  # the AAD would fail too; refuse before any work
        else:
            pin = self.pins[fold_nick(state.peer)]
            if pin.trust is Trust.CHANGED or pin.identity.key != state.peer_key:
                raise DecryptionError  # a session with a key we no longer accept
        new, plaintext = decrypt(state, header_bytes, header, ciphertext, now=now, random=self._random)
        # Only now, with the message authenticated under the key it names, may that key
        # touch our pins: a forged setup must not plant a pin or raise a false alarm.
        # A mismatch raises before anything is committed, so after /trust the same
        # message decrypts again from the untouched prekeys.
        pin = (
            self._check_pin(header.setup.identity)
            if new_session and header.setup
            else self.pins[fold_nick(new.peer)]
        )
        if new.opk_to_delete is not None:
            self.secrets.opks.pop(new.opk_to_delete, None)  # first message decrypted: burn the OPK
            new.opk_to_delete = None
            self.dirty.add("prekeys")
        if header.setup is not None:
            self._seen_setups[header.sid] = None
            while len(self._seen_setups) > _SEEN_SETUPS:
                del self._seen_setups[next(iter(self._seen_setups))]
            self.dirty.add("seen")
        self._remember(new)
        return Whisper(pin.identity, plaintext, pin.trust)

    def _responder_state(self, header: Header) -> RatchetState:
        """A fresh session from the setup in `header`; raises `DecryptionError`."""
        if header.setup is None or header.sid in self._seen_setups:
            raise DecryptionError
        setup = header.setup
        if not setup.identity.binding_valid():
            raise DecryptionError
        keys, spk = respond(self.identity, self.secrets, setup)
        if keys.sid != header.sid:
            raise DecryptionError
        return RatchetState.for_responder(
            sid=keys.sid,
            ad0=keys.ad0,
            sk=keys.sk,
            me=self.identity.user,
            peer=setup.identity.user,
            peer_key=setup.identity.key,
            spk=spk,
            opk_id=setup.opk_id if setup.opk_id != NO_OPK else None,
        )

    def _remember(self, state: RatchetState) -> None:
        peer = fold_nick(state.peer)
        self._sessions[state.sid] = state
        sids = [s for s in self._active.get(peer, []) if s != state.sid] + [state.sid]
        for old in sids[:-_SESSIONS_PER_PEER]:
            self._sessions.pop(old, None)
            self.dirty.add(f"session:{old.hex()}")
        kept = sids[-_SESSIONS_PER_PEER:]
        if kept != self._active.get(peer):  # the index changes only when the order does
            self.dirty.add("index")
        self._active[peer] = kept
        self.dirty.add(f"session:{state.sid.hex()}")

    # -- persistence ------------------------------------------------------------------

    def records(self, names: set[str] | None = None) -> dict[str, bytes | None]:
        """Serialised records by name (None: delete it); all of them, or just `names`."""
        wanted = (
            names
            if names is not None
            else {
                "identity",
                "prekeys",
                "pins",
                "index",
                "seen",
                *(f"session:{s.hex()}" for s in self._sessions),
            }
        )
        out: dict[str, bytes | None] = {}
        for name in wanted:
            value = self._record(name)
            out[name] = None if value is None else json.dumps(value, separators=(",", ":")).encode()
        return out

    def take_dirty(self) -> dict[str, bytes | None]:
        """The records changed since the last call, and forget that they were."""
        names, self.dirty = self.dirty, set()
        return self.records(names)

    def _record(self, name: str) -> Any:
        if name == "identity":
            return {
                "user": self.identity.user,
                "sig": _b64(self.identity.sig_private),
                "dh": _b64(self.identity.dh.private),
            }
        if name == "prekeys":
            s = self.secrets
            return {
                "spks": [[k.id, k.created, _b64(k.pair.private)] for k in s.spks],
                "opks": [[i, _b64(p.private)] for i, p in s.opks.items()],
                "next_spk_id": s.next_spk_id,
                "next_opk_id": s.next_opk_id,
            }
        if name == "pins":
            return {
                peer: {
                    "identity": _ident_to(p.identity),
                    "trust": p.trust.value,
                    "pending": None if p.pending is None else _ident_to(p.pending),
                    "was_verified": p.was_verified,
                    "max_spk_id": p.max_spk_id,
                }
                for peer, p in self.pins.items()
            }
        if name == "index":
            return {peer: [s.hex() for s in sids] for peer, sids in self._active.items()}
        if name == "seen":
            return [s.hex() for s in self._seen_setups]
        if name.startswith("session:"):
            state = self._sessions.get(bytes.fromhex(name.removeprefix("session:")))
            return None if state is None else state.to_dict()
        raise KeyError(name)

    @classmethod
    def from_records(
        cls, records: dict[str, bytes], *, random: Random = os.urandom, clock: Callable[[], float] = time.time
    ) -> Conversations:
        """Rebuild from `records()` output. Raises `ValueError` on malformed records."""
        try:
            ident = json.loads(records["identity"])
            identity = Identity(ident["user"], _unb64(ident["sig"]), DhKeyPair(_unb64(ident["dh"])))
            conv = cls(identity, random=random, clock=clock)
            if "prekeys" in records:
                p = json.loads(records["prekeys"])
                conv.secrets = PrekeySecrets(
                    spks=[StoredSpk(i, c, DhKeyPair(_unb64(k))) for i, c, k in p["spks"]],
                    opks={int(i): DhKeyPair(_unb64(k)) for i, k in p["opks"]},
                    next_spk_id=p["next_spk_id"],
                    next_opk_id=p["next_opk_id"],
                )
            for peer, pd in json.loads(records.get("pins", b"{}")).items():
                conv.pins[peer] = Pin(
                    _ident_from(pd["identity"]),
                    Trust(pd["trust"]),
                    None if pd["pending"] is None else _ident_from(pd["pending"]),
                    pd["was_verified"],
                    pd["max_spk_id"],
                )
            for peer, sids in json.loads(records.get("index", b"{}")).items():
                conv._active[peer] = [bytes.fromhex(s) for s in sids]
            conv._seen_setups = {bytes.fromhex(s): None for s in json.loads(records.get("seen", b"[]"))}
            for name, data in records.items():
                if name.startswith("session:"):
                    state = RatchetState.from_dict(json.loads(data))
                    conv._sessions[state.sid] = state
            for peer in list(conv._active):
                conv._active[peer] = [s for s in conv._active[peer] if s in conv._sessions]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed keystore record: {exc}") from None
        return conv
