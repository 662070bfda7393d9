"""All of one user's end-to-end state, and the rules for using it. No I/O.

`Conversations` holds the identity, prekey secrets, pins (what key we accepted for
whom, and how much we trust it), ratchet sessions and the setup replay cache. The
client persists `records()` after every change, before sending what the change
produced (`dirty` says which records changed).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from ..protocol import fold_nick, is_valid_nick
from ..protocol.events import is_valid_device
from .bundle import (
    KOPK_TARGET,
    MAX_CLOCK_ERROR,
    OPK_TARGET,
    Bundle,
    PrekeySecrets,
    StoredKpk,
    StoredSpk,
    verify_bundle,
)
from .devices import Device, DeviceList, DeviceListError
from .errors import BundleError, DecryptionError, IdentityChanged, NotTrusted, UnknownDevice
from .identity import Identity, PublicIdentity
from .primitives import KEM_SEED_BYTES, KEY_BYTES, SIG_BYTES, DhKeyPair, KemKeyPair, Random
from .ratchet import (
    Header,
    RatchetState,
    SavedFields,
    decrypt,
    encrypt,
    parse_header,
    saved_int,
    saved_key,
)
from .safety import format_safety_number, parse_safety_number, safety_number, same_number
from .x3dh import NO_OPK, initiate, respond

__all__ = ["MAX_CONTACT_REQUESTS", "SESSIONS_PER_PEER", "Carried", "Conversations", "Pin", "Trust", "Whisper"]

#: Sessions kept per peer (simultaneous starts, a peer's reinstall); oldest dropped. Also
#: the bound on concurrent setups a sender can make us hold for one peer: a fifth drops
#: the oldest session.
SESSIONS_PER_PEER = 4
#: Setups remembered after their session is gone, so a replayed first message cannot
#: start a second session.
_SEEN_SETUPS = 10_000
#: A session id as saved: 16 bytes in lower-case hex, as `bytes.hex()` writes it.
_SID_HEX = re.compile(r"[0-9a-f]{32}")
_SESSION_PREFIX = "session:"
#: One record per pin, named by the hex of the folded nick (record names are lower-case
#: letters and hex), so that a new pin writes one small record, not all of them again.
_PIN_PREFIX = "pin:"
#: The single record all pins were kept in before; read, then replaced by `_PIN_PREFIX` ones.
_LEGACY_PINS = "pins"
#: First contacts from senders we never chose to talk to (Signal's "message requests"):
#: a pin and a session each, made by any registered user who whispers us. At most this
#: many are kept unanswered; a newer one deletes the oldest unanswered pin and its
#: sessions (its whispers were shown and stay in the message store). Answering (a
#: whisper to them), /trust or /verify makes a contact ours, and it is never dropped.
MAX_CONTACT_REQUESTS = 100
#: Length of an Ed25519 signature (the binding of a pinned identity's two keys).

_T = TypeVar("_T")


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
    #: Set while this is an unanswered first contact from them: its place in the order
    #: of arrival (the oldest goes first). None once we whispered, trusted or verified them.
    request: int | None = None
    #: The newest last-resort KEM prekey id seen for this identity (as `max_spk_id`).
    max_kpk_id: int = 0
    #: Their device list as last accepted (checked against `identity`), and the highest
    #: version seen: an older one is refused, so a server cannot hide a device by going
    #: back. None, 0: none seen (they have one device, the identity's own).
    devices: DeviceList | None = None
    max_devices_version: int = 0

    def linked_devices(self) -> list[str]:
        """The ids of their devices other than the one holding `identity`."""
        if self.devices is None:
            return []
        return [d.device for d in self.devices.devices if d.sig_key != self.identity.sig_key]

    def slot_device(self, device: str) -> str:
        """`device` as sessions are filed: "" for the identity's own device (by its id or
        none), the id for a linked one."""
        if not device or self.devices is None:
            return ""
        own = next((d.device for d in self.devices.devices if d.sig_key == self.identity.sig_key), "")
        return "" if device == own else device

    def vouches(self, device: str, key: bytes) -> bool:
        """True if `key` (IK: Ed25519 || X25519) is `device`'s: the identity's own for the
        identity's device, else the key the accepted list names for it."""
        slot = self.slot_device(device)
        if not slot:
            return key == self.identity.key
        return self.devices is not None and self.devices.key_of(slot) == key[:KEY_BYTES]


@dataclass(frozen=True)
class Carried:
    """A key we know under `old` turned up as a first contact under `new` (a rename keeps
    the key), and the pin made for `new` took `trust` from `old`'s. The user must be told:
    a nick they never checked now holds a key they trusted under another name."""

    old: str
    new: str
    trust: Trust


@dataclass(frozen=True)
class Whisper:
    """A decrypted whisper and what we know about who sent it. `new_session`: it started a
    session (the sender's first message of it); `post_quantum`: its session's setup was
    version 2 (PQXDH), not an older client's version 1."""

    sender: PublicIdentity
    plaintext: bytes
    trust: Trust
    new_session: bool
    post_quantum: bool


def _sender_key(header: Header, state: RatchetState | None) -> bytes:
    """The sender's IK a whisper claims: its session's, or its setup's for a new one."""
    if state is not None:
        return state.peer_key
    return header.setup.identity.key if header.setup is not None else b""


def _slot(peer: str, device: str = "") -> str:
    """Where sessions with `peer`'s `device` are indexed: the folded nick for the device
    holding their identity key (as before devices), "nick/device" for a linked one."""
    return fold_nick(peer) + ("/" + device if device else "")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _ident_to(ident: PublicIdentity) -> dict[str, str]:
    return {
        "user": ident.user,
        "sig_key": _b64(ident.sig_key),
        "dh_key": _b64(ident.dh_key),
        "dh_sig": _b64(ident.dh_sig),
    }


def _ident_from(f: SavedFields) -> PublicIdentity:
    return PublicIdentity(
        f.nick("user"), f.key("sig_key", KEY_BYTES), f.key("dh_key", KEY_BYTES), f.key("dh_sig", SIG_BYTES)
    )


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
        # Peers whose pin is an unanswered first contact, oldest first (see Pin.request).
        self._requests: dict[str, None] = {}
        self._next_request = 1
        self._sessions: dict[bytes, RatchetState] = {}
        self._active: dict[str, list[bytes]] = {}  # peer -> sids, most recently used last
        self._seen_setups: dict[bytes, None] = {}
        self.dirty: set[str] = set()
        # Carry-overs not yet handed out by `take_carried` (in memory only: what the user
        # is told, not state).
        self._carried: list[Carried] = []
        # The person whose linked device this is (None: our own identity is the person).
        self._person: PublicIdentity | None = None

    # -- prekeys ----------------------------------------------------------------------

    def bundle_to_publish(self) -> Bundle:
        """A full bundle: rotates the signed prekey (and the last-resort KEM prekey with
        it) when due, makes a KEM prekey for a keystore from before version 2, and tops
        one-time prekeys of both kinds up."""
        now = self._clock()
        if self.secrets.needs_rotation(now):
            self.secrets.rotate_spk(now, self._random)
        elif not self.secrets.kpks:
            self.secrets.rotate_kpk(now, self._random)
        missing = OPK_TARGET - len(self.secrets.opks)
        if missing > 0:
            self.secrets.new_opks(missing, self._random)
        missing = KOPK_TARGET - len(self.secrets.kopks)
        if missing > 0:
            self.secrets.new_kopks(missing, self._random)
        self.dirty.add("prekeys")
        return self.secrets.bundle(self.identity)

    def session_post_quantum(self, peer: str) -> bool | None:
        """Whether the session we would send `peer` a whisper in was set up post-quantum
        (version 2); None without one."""
        for sid in reversed(self._active.get(fold_nick(peer), [])):
            state = self._sessions[sid]
            if state.cks is not None:
                return state.version == 2
        return None

    # -- trust ------------------------------------------------------------------------

    def _pin_changed(self, peer: str) -> None:
        """Mark the record of `peer`'s (folded) pin for saving, or deleting if it is gone."""
        self.dirty.add(_PIN_PREFIX + peer.encode().hex())

    def _check_pin(self, ident: PublicIdentity, *, request: bool = False) -> Pin:
        """The pin for `ident.user`, creating it on first contact (TOFU).

        `request`: they contacted us (an incoming setup), rather than we them; a new pin
        is then a first contact, and the oldest unanswered one beyond
        `MAX_CONTACT_REQUESTS` is forgotten. Raises `IdentityChanged` (and records the
        new key as pending) if it differs.
        """
        peer = fold_nick(ident.user)
        pin = self.pins.get(peer)
        if pin is None:
            known = self._pin_of_key(ident.key)
            if known is not None:
                # The same key under a new nick: someone we know renamed (renames keep the
                # identity key). Trust is in the key, so it carries over, and so does being
                # a contact of ours rather than a stranger's first contact.
                pin = Pin(ident, known.trust, was_verified=known.trust is Trust.VERIFIED)
                self.pins[peer] = pin
                self._pin_changed(peer)
                self._carried.append(Carried(old=known.identity.user, new=ident.user, trust=known.trust))
                return pin
            pin = Pin(ident, Trust.UNVERIFIED)
            self.pins[peer] = pin
            self._pin_changed(peer)
            if request:
                pin.request = self._next_request
                self._next_request += 1
                self._requests[peer] = None
                while len(self._requests) > MAX_CONTACT_REQUESTS:
                    self._drop_request(next(iter(self._requests)))
            return pin
        if pin.identity.key == ident.key and pin.trust is not Trust.CHANGED:
            return pin
        if pin.identity.key != ident.key:
            if pin.pending is None or pin.pending.key != ident.key:
                pin.pending = ident
                pin.was_verified = pin.was_verified or pin.trust is Trust.VERIFIED
                pin.trust = Trust.CHANGED
                self._pin_changed(peer)
            raise IdentityChanged(ident.user, pin.identity.fingerprint(), ident.fingerprint())
        raise IdentityChanged(ident.user, pin.identity.fingerprint(), (pin.pending or ident).fingerprint())

    def take_carried(self) -> list[Carried]:
        """The carry-overs since the last call (see `Carried`), oldest first; each once."""
        carried, self._carried = self._carried, []
        return carried

    def is_contact(self, peer: str) -> bool:
        """Whether `peer` has a settled pin of ours: a key accepted (not waiting on a
        changed one) and not a stranger's unanswered first contact."""
        pin = self.pins.get(fold_nick(peer))
        return pin is not None and pin.trust is not Trust.CHANGED and pin.request is None

    def follow_rename(self, old: str, bundle: Bundle) -> bool:
        """Check a server's claim that contact `old` is now `bundle.identity.user` (NEW)
        against the keys fetched for NEW, and start a session with NEW from them.

        True if NEW holds `old`'s key: the claim holds (a first contact with NEW carries
        `old`'s trust over, reported by `take_carried`). False if it does not apply
        (`old` is no contact of ours) or NEW is someone else we know: nothing changes
        then. If NEW is new to us and its key is not `old`'s, the claim is treated as a
        key change of `old`'s: NEW's pin keeps `old`'s key with NEW's as pending, so
        nothing is sent to NEW until the user runs /trust (or /verify, if `old` was
        verified), and `IdentityChanged` is raised. Raises `BundleError` for keys that
        do not verify (nothing changes).
        """
        known = self.pins.get(fold_nick(old))
        if not self.is_contact(old) or known is None:
            return False
        new = bundle.identity.user
        if fold_nick(new) == fold_nick(old):
            return False
        verify_bundle(bundle, user=new, now=self._clock(), min_spk_id=0)
        if fold_nick(new) not in self.pins and bundle.identity.key != known.identity.key:
            peer = fold_nick(new)
            # Kept under NEW's name (a pin names the nick it is kept under), with old's keys.
            expected = dataclasses.replace(known.identity, user=new)
            self.pins[peer] = Pin(
                expected,
                Trust.CHANGED,
                pending=bundle.identity,
                was_verified=known.trust is Trust.VERIFIED or known.was_verified,
            )
            self._pin_changed(peer)
            raise IdentityChanged(new, known.identity.fingerprint(), bundle.identity.fingerprint())
        self.start_session(new, bundle)
        return self.pins[fold_nick(new)].identity.key == known.identity.key

    def _pin_of_key(self, key: bytes) -> Pin | None:
        """A settled pin (not waiting on a changed key) holding identity `key`, the verified
        one first; None if no contact of ours has that key. Unanswered first contacts
        carry nothing: they are strangers' claims, not contacts."""
        found = None
        for pin in self.pins.values():
            if pin.identity.key != key or pin.trust is Trust.CHANGED or pin.request is not None:
                continue
            if pin.trust is Trust.VERIFIED:
                return pin
            found = pin
        return found

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
        pin.max_kpk_id = 0
        # The old key's device list vouches for nothing under the new key: the new one's
        # list starts from scratch (e2e.md, "Device lists").
        pin.devices, pin.max_devices_version = None, 0
        pin.was_verified = trust is Trust.VERIFIED
        self.forget_sessions(peer)  # sessions with the old key are dead
        self._answered(peer, pin)
        self._pin_changed(peer)

    def _answered(self, peer: str, pin: Pin) -> None:
        """`peer` (folded) is a contact of ours from now on, no longer a first contact."""
        if pin.request is not None:
            pin.request = None
            self._requests.pop(peer, None)
            self._pin_changed(peer)

    def _drop_request(self, peer: str) -> None:
        """Forget an unanswered first contact: its pin and its sessions."""
        self._requests.pop(peer, None)
        self.pins.pop(peer, None)
        self.forget_sessions(peer)
        self._pin_changed(peer)

    def safety_number(self, peer: str) -> str:
        """The 60 digits for the key we would use with `peer` (the pending one after a change).

        Raises `NotTrusted` if we have never seen a key for them.
        """
        pin = self.pins.get(fold_nick(peer))
        if pin is None:
            raise NotTrusted(f"no key known for {peer} yet: whisper them first, or wait for their whisper")
        me, them = self.person, pin.pending or pin.identity
        return format_safety_number(
            safety_number(me.key, fold_nick(me.user).encode(), them.key, fold_nick(them.user).encode())
        )

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
            self._answered(fold_nick(peer), pin)
            self._pin_changed(fold_nick(peer))
        return True

    def pin(self, peer: str) -> Pin | None:
        return self.pins.get(fold_nick(peer))

    # -- sending ----------------------------------------------------------------------

    def has_session(self, peer: str, device: str = "") -> bool:
        """Whether a session with `peer`'s `device` ("" the identity's own) is kept."""
        return bool(self._active.get(self._slot_of(peer, device)))

    def _slot_of(self, peer: str, device: str) -> str:
        pin = self.pins.get(fold_nick(peer))
        return _slot(peer, device if pin is None else pin.slot_device(device))

    # -- devices ----------------------------------------------------------------------

    def accept_devices(self, peer: str, listed: DeviceList) -> bool:
        """Take `listed` as `peer`'s device list if their pinned identity key signed it
        and it is not older than one seen; True if it was news. Sessions with devices it
        no longer names are ended. Raises `DeviceListError` (and nothing changes) for a
        list that is not theirs or went back, `NotTrusted` with no key pinned for them,
        `IdentityChanged` while their key change is undecided."""
        key = fold_nick(peer)
        pin = self.pins.get(key)
        if pin is None:
            raise NotTrusted(f"no key known for {peer} yet")
        if pin.trust is Trust.CHANGED:
            assert pin.pending is not None
            raise IdentityChanged(peer, pin.identity.fingerprint(), pin.pending.fingerprint())
        listed.check(pin.identity.sig_key, at_least=pin.max_devices_version)
        if pin.devices is not None and listed.version == pin.devices.version:
            # The same list, whatever spelling of the nick it came under.
            if (listed.devices, listed.signature) != (pin.devices.devices, pin.devices.signature):
                raise DeviceListError(f"{peer} has two different device lists of version {listed.version}")
            return False
        gone = set(pin.linked_devices())
        pin.devices, pin.max_devices_version = listed, listed.version
        gone -= set(pin.linked_devices())
        for device in gone:
            self._forget_slot(_slot(peer, device))
        self._pin_changed(key)
        return True

    def linked_devices(self, peer: str) -> list[str]:
        """`peer`'s devices other than the identity's own, as their accepted list names them."""
        pin = self.pins.get(fold_nick(peer))
        return [] if pin is None else pin.linked_devices()

    def next_devices_version(self) -> int:
        """The version to sign our next device list under (on the identity's device),
        counted as seen at once, so that no two lists are ever signed under one."""
        me = self.identity.user
        self.own_device_list(me, None)
        pin = self.pins[fold_nick(me)]
        pin.max_devices_version += 1
        self._pin_changed(fold_nick(me))
        return pin.max_devices_version

    def own_device_list(self, user: str, listed: DeviceList | None) -> None:
        """Pin our own person (`user`, whose identity is ours, or on a linked device the
        person's, `person`) as verified, with `listed` as our device list: the copies for
        our other devices go through the same checks as any whisper."""
        person = self.person
        key = fold_nick(user)
        pin = self.pins.get(key)
        if pin is None or pin.identity.key != person.key:
            pin = self.pins[key] = Pin(person, Trust.VERIFIED, was_verified=True)
            self._pin_changed(key)
        if listed is not None and (pin.devices is None or listed.version > pin.devices.version):
            self.accept_devices(user, listed)

    def knows_session(self, sid: bytes) -> bool:
        """Whether a session with this id is kept (to say why a whisper could not be read)."""
        return sid in self._sessions

    def start_session(self, peer: str, bundle: Bundle, device: str = "") -> None:
        """Verify `bundle` (fetched for `peer`'s `device`; "" the identity's own) and
        start a session from it. A linked device's bundle must carry the key their
        accepted device list names for it (`accept_devices` first).

        Raises `BundleError` (bad, stale or rolled-back keys, a device key not in their
        list) or `IdentityChanged`.
        """
        pin = self.pins.get(fold_nick(peer))
        if pin is not None and pin.slot_device(device):
            self._start_device_session(peer, pin, bundle, pin.slot_device(device))
            return
        if (
            pin is not None
            and pin.devices is not None
            and bundle.identity.key != pin.identity.key
            and any(d.sig_key == bundle.identity.sig_key for d in pin.devices.devices)
        ):
            raise BundleError(f"{peer}'s keys are a linked device's, given as their identity's")
        same_identity = pin is not None and pin.identity.key == bundle.identity.key
        verify_bundle(
            bundle,
            user=peer,
            now=self._clock(),
            min_spk_id=pin.max_spk_id if same_identity and pin else 0,
            min_kpk_id=pin.max_kpk_id if same_identity and pin else 0,
            require_kem=True,
        )
        pin = self._check_pin(bundle.identity)
        self._answered(fold_nick(peer), pin)  # we chose to write to them
        state = self._initiated(peer, bundle)
        if bundle.spk.id > pin.max_spk_id:
            pin.max_spk_id = bundle.spk.id
            self._pin_changed(fold_nick(peer))
        if bundle.kpk is not None and bundle.kpk.id > pin.max_kpk_id:
            pin.max_kpk_id = bundle.kpk.id
            self._pin_changed(fold_nick(peer))
        self._remember(state)

    def _start_device_session(self, peer: str, pin: Pin, bundle: Bundle, device: str) -> None:
        if pin.trust is Trust.CHANGED:
            assert pin.pending is not None
            raise IdentityChanged(peer, pin.identity.fingerprint(), pin.pending.fingerprint())
        if not pin.vouches(device, bundle.identity.key):
            raise BundleError(f"{peer}'s device {device} is not in their device list with that key")
        verify_bundle(bundle, user=peer, now=self._clock(), require_kem=True)
        state = self._initiated(peer, bundle)
        self._answered(fold_nick(peer), pin)
        self._remember(state, _slot(peer, device))

    def _initiated(self, peer: str, bundle: Bundle) -> RatchetState:
        """A session started from `bundle` (verified): our setup and the first state.
        Raises `BundleError` for a low-order key in it."""
        try:
            keys, setup = initiate(self.identity, bundle, self._random)
            return RatchetState.for_initiator(
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

    def forget_sessions(self, peer: str, device: str | None = None) -> None:
        """End every session with `peer` (with `device`, only with that device's); the
        next message starts a new one from fresh keys.

        The pin stays: a different key from the directory still raises `IdentityChanged`.
        """
        if device is not None:
            self._forget_slot(self._slot_of(peer, device))
            return
        key = fold_nick(peer)
        for slot in [s for s in self._active if s == key or s.startswith(key + "/")]:
            self._forget_slot(slot)
        self.dirty.add("index")

    def _forget_slot(self, slot: str) -> None:
        for sid in self._active.pop(slot, []):
            self._sessions.pop(sid, None)
            self.dirty.add(f"session:{sid.hex()}")
        self.dirty.add("index")

    def encrypt(self, peer: str, plaintext: bytes, device: str = "") -> tuple[bytes, bytes]:
        """(header, ciphertext) for `peer`'s `device` ("" the identity's own) in the
        current session with it.

        Raises `IdentityChanged` while their key change is undecided and `NotTrusted`
        if there is no session (fetch their bundle and call `start_session`).
        """
        key = fold_nick(peer)
        pin = self.pins.get(key)
        if pin is not None and pin.trust is Trust.CHANGED:
            assert pin.pending is not None
            raise IdentityChanged(peer, pin.identity.fingerprint(), pin.pending.fingerprint())
        for sid in reversed(self._active.get(self._slot_of(peer, device), [])):
            state = self._sessions[sid]
            if state.cks is not None:
                self.dirty.add(f"session:{sid.hex()}")
                if pin is not None:
                    self._answered(key, pin)  # a reply: they are a contact of ours now
                return encrypt(state, plaintext)
        raise NotTrusted(f"no session with {peer}")

    # -- receiving --------------------------------------------------------------------

    def decrypt(self, sender: str, header_bytes: bytes, ciphertext: bytes, device: str = "") -> Whisper:
        """Decrypt a whisper the relay says came from `sender`'s `device` ("" the one
        holding their identity key).

        Raises `DecryptionError` (opaque), `IdentityChanged` (a setup under a new key
        for a pinned peer: the message cannot be read until the user trusts that key) or
        `UnknownDevice` (a linked device we have no accepted list naming: fetch their
        keys, `accept_devices`, and try again; nothing changed).
        """
        header = parse_header(header_bytes, sender)
        state = self._sessions.get(header.sid)
        now = self._clock()
        new_session = state is None
        known = self.pins.get(fold_nick(sender))
        key = _sender_key(header, state)
        # Which of their devices sent it, checked against their list before anything
        # changes: a device key is never pinned as the person's (only the identity's is).
        own = fold_nick(sender) == fold_nick(self.identity.user)
        if known is None:
            if own:
                raise DecryptionError  # a copy from "our" device, and we know of none
            if device:  # perhaps a linked device: their list (and identity) first
                raise UnknownDevice(sender, device)
            slot_device = ""
        else:
            slot_device = known.slot_device(device)
            if device and known.devices is None and key != known.identity.key:
                raise UnknownDevice(sender, device)  # devices we have not heard of yet
            if slot_device and not known.vouches(slot_device, key):
                raise UnknownDevice(sender, device)
            if own and not known.vouches(slot_device, key):
                raise DecryptionError  # only our own vouched devices write to us
            if not slot_device and known.devices is not None and key != known.identity.key:
                listed = {d.sig_key for d in known.devices.devices}
                if key[:KEY_BYTES] in listed:
                    # A linked device's key passed off as the person's: never a key change.
                    raise DecryptionError
        if state is None:
            state = self._responder_state(header)
        elif fold_nick(state.peer) != fold_nick(sender):
            raise DecryptionError  # the AAD would fail too; refuse before any work
        elif known is None or known.trust is Trust.CHANGED or not known.vouches(slot_device, state.peer_key):
            raise DecryptionError  # a session with a key we no longer accept (or never did)
        new, plaintext = decrypt(state, header_bytes, header, ciphertext, now=now, random=self._random)
        # Only now, with the message authenticated under the key it names, may that key
        # touch our pins: a forged setup must not plant a pin or raise a false alarm.
        # A mismatch raises before anything is committed, so after /trust the same
        # message decrypts again from the untouched prekeys.
        pin = (
            self._check_pin(header.setup.identity, request=True)
            if new_session and header.setup and not slot_device and not own
            else self.pins[fold_nick(new.peer)]
        )
        if new.opk_to_delete is not None:
            self.secrets.opks.pop(new.opk_to_delete, None)  # first message decrypted: burn the OPK
            new.opk_to_delete = None
            self.dirty.add("prekeys")
        if new.kem_to_delete is not None:
            self.secrets.kopks.pop(new.kem_to_delete, None)  # and the one-time KEM prekey
            new.kem_to_delete = None
            self.dirty.add("prekeys")
        if header.setup is not None:
            self._seen_setups[header.sid] = None
            while len(self._seen_setups) > _SEEN_SETUPS:
                del self._seen_setups[next(iter(self._seen_setups))]
            self.dirty.add("seen")
        self._remember(new, _slot(sender, slot_device))
        return Whisper(pin.identity, plaintext, pin.trust, new_session, new.version == 2)

    @property
    def person(self) -> PublicIdentity:
        """Whose device this is: our own identity, or on a linked device the person's
        identity (set when it was linked). What safety numbers are computed with."""
        return self._person if self._person is not None else self.identity.public()

    @property
    def linked(self) -> bool:
        """True on a linked device (its identity is not the person's)."""
        return self._person is not None

    def set_person(self, person: PublicIdentity) -> None:
        """Make this a linked device of `person` (keeps `identity`, the device's own)."""
        self._person = person
        self.dirty.add("person")

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
            kem_id=setup.kem_id if setup.kem_id in self.secrets.kopks else None,
            version=setup.version,
        )

    def _remember(self, state: RatchetState, slot: str | None = None) -> None:
        """Keep `state` as the newest session of `slot` (default: the peer's identity
        device)."""
        peer = fold_nick(state.peer) if slot is None else slot
        self._sessions[state.sid] = state
        sids = [s for s in self._active.get(peer, []) if s != state.sid] + [state.sid]
        for old in sids[:-SESSIONS_PER_PEER]:
            self._sessions.pop(old, None)
            self.dirty.add(f"session:{old.hex()}")
        kept = sids[-SESSIONS_PER_PEER:]
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
                "index",
                "seen",
                *(["person"] if self._person is not None else []),
                *(_PIN_PREFIX + peer.encode().hex() for peer in self.pins),
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
        if name == "person":
            return None if self._person is None else _ident_to(self._person)
        if name == "prekeys":
            s = self.secrets
            return {
                "spks": [[k.id, k.created, _b64(k.pair.private)] for k in s.spks],
                "opks": [[i, _b64(p.private)] for i, p in s.opks.items()],
                "next_spk_id": s.next_spk_id,
                "next_opk_id": s.next_opk_id,
                "kpks": [[k.id, k.created, _b64(k.pair.seed)] for k in s.kpks],
                "kopks": [[i, _b64(p.seed)] for i, p in s.kopks.items()],
                "next_kem_id": s.next_kem_id,
            }
        if name == _LEGACY_PINS:
            return None  # replaced by one record per pin: deleted when they are written
        if name.startswith(_PIN_PREFIX):
            p = self.pins.get(bytes.fromhex(name.removeprefix(_PIN_PREFIX)).decode())
            if p is None:
                return None
            saved: dict[str, Any] = {
                "identity": _ident_to(p.identity),
                "trust": p.trust.value,
                "pending": None if p.pending is None else _ident_to(p.pending),
                "was_verified": p.was_verified,
                "max_spk_id": p.max_spk_id,
                "max_kpk_id": p.max_kpk_id,
            }
            if p.request is not None:
                saved["request"] = p.request
            if p.devices is not None:
                saved["devices"] = {
                    "version": p.devices.version,
                    "devices": [[d.device, _b64(d.sig_key)] for d in p.devices.devices],
                    "signature": _b64(p.devices.signature),
                }
            if p.max_devices_version:
                saved["max_devices_version"] = p.max_devices_version
            return saved
        if name == "index":
            return {peer: [s.hex() for s in sids] for peer, sids in self._active.items()}
        if name == "seen":
            return [s.hex() for s in self._seen_setups]
        if name.startswith("session:"):
            state = self._sessions.get(bytes.fromhex(name.removeprefix("session:")))
            return None if state is None else state.to_dict()
        raise KeyError(name)

    def reloaded(self, records: Mapping[str, bytes]) -> Conversations:
        """The state `records` hold, with this one's randomness and clock: to fall back to
        what is on disk when a change could not be saved. Raises `ValueError`."""
        return Conversations.from_records(records, random=self._random, clock=self._clock)

    @classmethod
    def from_records(
        cls,
        records: Mapping[str, bytes],
        *,
        random: Random = os.urandom,
        clock: Callable[[], float] = time.time,
    ) -> Conversations:
        """Rebuild from `records()` output; records of other layers are ignored.

        Raises `ValueError` naming the record ("keystore record 'pins' is damaged: ...")
        if the identity is missing or any record has a shape this version would not have
        written: bytes that are not JSON, a wrong JSON type at any level, a missing field,
        bad base64, a wrong key length, a number out of range, contradictory fields.
        What an interrupted save could leave between records (an index naming a session
        that is gone) is tolerated, as it always was.
        """
        if "identity" not in records:
            raise ValueError("keystore record 'identity' is missing")
        conv = cls(_load(records, "identity", _identity_from), random=random, clock=clock)
        if "prekeys" in records:
            conv.secrets = _load(records, "prekeys", functools.partial(_prekeys_from, now=clock()))
        if _LEGACY_PINS in records:
            conv.pins = _load(records, _LEGACY_PINS, _pins_from)
            # Written as one record per pin, and the old record deleted, at the next save.
            conv.dirty |= {_LEGACY_PINS, *(_PIN_PREFIX + peer.encode().hex() for peer in conv.pins)}
        for name in records:
            if name.startswith(_PIN_PREFIX):
                peer = _pin_peer(name)
                conv.pins[peer] = _load(records, name, functools.partial(_pin_from, peer=peer))
        requests = sorted((p.request, peer) for peer, p in conv.pins.items() if p.request is not None)
        conv._requests = dict.fromkeys(peer for _, peer in requests)
        conv._next_request = requests[-1][0] + 1 if requests else 1
        if "seen" in records:
            conv._seen_setups = dict.fromkeys(_load(records, "seen", _seen_from))
        if "person" in records:
            conv._person = _load(records, "person", _person_from)
        for name in records:
            if name.startswith(_SESSION_PREFIX):
                state = _load(records, name, functools.partial(_session_from, name=name))
                conv._sessions[state.sid] = state
        if "index" in records:
            for slot, sids in _load(records, "index", _index_from).items():
                # Only sessions that were saved, and are with this slot's peer.
                peer = slot.partition("/")[0]
                conv._active[slot] = [
                    s for s in sids if s in conv._sessions and fold_nick(conv._sessions[s].peer) == peer
                ]
        return conv


def _load(records: Mapping[str, bytes], name: str, parse: Callable[[Any], _T]) -> _T:
    """`parse` applied to record `name`'s JSON; any damage as a `ValueError` naming it."""
    try:
        return parse(json.loads(records[name]))
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise ValueError(f"keystore record {name!r} is damaged: {exc}") from None


def _folded_nick(value: object, where: str) -> str:
    if not isinstance(value, str) or not is_valid_nick(value) or fold_nick(value) != value:
        raise ValueError(f"{where}: {value!r} is not a (lower-cased) nick")
    return value


def _sid_from(value: object, where: str) -> bytes:
    if not isinstance(value, str) or not _SID_HEX.fullmatch(value):
        raise ValueError(f"{where}: not a session id")
    return bytes.fromhex(value)


def _entry(entry: object, where: str, size: int) -> list[Any]:
    if not isinstance(entry, list) or len(entry) != size:
        raise ValueError(f"{where}: expected a list of {size}")
    return entry


def _identity_from(d: object) -> Identity:
    f = SavedFields(d, "")
    return Identity(f.nick("user"), f.key("sig", KEY_BYTES), DhKeyPair(f.key("dh", KEY_BYTES)))


def _prekeys_from(d: object, *, now: float) -> PrekeySecrets:
    f = SavedFields(d, "")
    secrets = PrekeySecrets(next_spk_id=f.integer("next_spk_id"), next_opk_id=f.integer("next_opk_id"))
    for i, entry in enumerate(f.items("spks")):
        where = f"spks[{i}]"
        key_id, created, private = _entry(entry, where, 3)
        spk = StoredSpk(
            saved_int(key_id, where),
            saved_int(created, where),
            DhKeyPair(saved_key(private, where, KEY_BYTES)),
        )
        # Ids name keys in setups: they must be unique, and new ones must not reuse old ones.
        if spk.id >= secrets.next_spk_id or (secrets.spks and spk.id <= secrets.spks[-1].id):
            raise ValueError(f"{where}: id {spk.id} is out of order")
        secrets.spks.append(spk)
    for i, entry in enumerate(f.items("opks")):
        where = f"opks[{i}]"
        key_id, private = _entry(entry, where, 2)
        opk_id = saved_int(key_id, where)
        if not 0 < opk_id < secrets.next_opk_id or opk_id in secrets.opks:  # 0 means "no OPK"
            raise ValueError(f"{where}: id {opk_id} is out of order")
        secrets.opks[opk_id] = DhKeyPair(saved_key(private, where, KEY_BYTES))
    if not f.has("next_kem_id"):
        # A keystore a version-1 client wrote: new, or rewritten by an older client after
        # a newer one used it (which drops the fields it does not know). KEM prekey ids
        # start above any that newer client can have used, so that peers who saw them do
        # not take the next ones for a rollback: the clock's seconds, which outrun ids (a
        # few a week) by far, whatever earlier start they had, plus the most the clock may
        # be behind (`MAX_CLOCK_ERROR`).
        secrets.next_kem_id = max(1, int(now) + MAX_CLOCK_ERROR)
        return secrets
    secrets.next_kem_id = f.integer("next_kem_id")
    for i, entry in enumerate(f.items("kpks")):
        where = f"kpks[{i}]"
        key_id, created, seed = _entry(entry, where, 3)
        kpk = StoredKpk(
            saved_int(key_id, where),
            saved_int(created, where),
            KemKeyPair(saved_key(seed, where, KEM_SEED_BYTES)),
        )
        if not 0 < kpk.id < secrets.next_kem_id or (secrets.kpks and kpk.id <= secrets.kpks[-1].id):
            raise ValueError(f"{where}: id {kpk.id} is out of order")
        secrets.kpks.append(kpk)
    for i, entry in enumerate(f.items("kopks")):
        where = f"kopks[{i}]"
        key_id, seed = _entry(entry, where, 2)
        kopk_id = saved_int(key_id, where)
        if not 0 < kopk_id < secrets.next_kem_id or kopk_id in secrets.kopks:
            raise ValueError(f"{where}: id {kopk_id} is out of order")
        secrets.kopks[kopk_id] = KemKeyPair(saved_key(seed, where, KEM_SEED_BYTES))
    if any(k.id in secrets.kopks for k in secrets.kpks):
        raise ValueError("kpks: an id is also a one-time KEM prekey's")
    return secrets


def _pins_from(d: object) -> dict[str, Pin]:
    """The single record of every pin that keystores before per-pin records hold."""
    if not isinstance(d, dict):
        raise ValueError("expected an object of peers")
    return {peer: _pin_from(saved, _folded_nick(peer, "peer")) for peer, saved in d.items()}


def _pin_peer(name: str) -> str:
    """The folded nick a per-pin record is named after; `ValueError` naming it if none."""
    try:
        peer = bytes.fromhex(name.removeprefix(_PIN_PREFIX)).decode("ascii")
        return _folded_nick(peer, "peer")
    except ValueError as exc:
        raise ValueError(f"keystore record {name!r} is damaged: its name is not a nick ({exc})") from None


def _pin_from(saved: object, peer: str) -> Pin:
    f = SavedFields(saved, peer)
    identity = _ident_from(f.object("identity"))
    pending = None if f.raw("pending") is None else _ident_from(f.object("pending"))
    trust_text = f.text("trust")
    if trust_text not in {t.value for t in Trust}:
        raise ValueError(f"{f.where('trust')}: {trust_text!r} is not a trust level")
    trust = Trust(trust_text)
    for ident in (identity, pending):
        if ident is not None and fold_nick(ident.user) != peer:
            raise ValueError(f"{peer}: holds a key for {ident.user!r}")
    # A pending key is exactly what makes a pin "changed"; the trust rules rely on it.
    if (pending is None) != (trust is not Trust.CHANGED):
        raise ValueError(f"{peer}: trust {trust.value!r} contradicts its pending key")
    # Absent in pins saved before first contacts were bounded: those are all kept.
    request = f.integer("request") if isinstance(saved, dict) and "request" in saved else None
    # Absent in pins saved before post-quantum setup.
    max_kpk_id = f.integer("max_kpk_id") if f.has("max_kpk_id") else 0
    # Absent in pins saved before linked devices, and for peers with none.
    devices = _devices_from(f.object("devices"), peer, identity) if f.has("devices") else None
    max_devices_version = f.integer("max_devices_version") if f.has("max_devices_version") else 0
    if devices is not None and devices.version > max_devices_version:
        raise ValueError(f"{peer}: its device list is newer than the newest seen")
    return Pin(
        identity,
        trust,
        pending,
        f.flag("was_verified"),
        f.integer("max_spk_id"),
        request,
        max_kpk_id,
        devices,
        max_devices_version,
    )


def _devices_from(f: SavedFields, peer: str, identity: PublicIdentity) -> DeviceList:
    """A pin's device list, checked again against the key it pins (a keystore edited by
    hand must not slip a device in)."""
    devices = []
    for i, entry in enumerate(f.items("devices")):
        where = f"{f.where('devices')}[{i}]"
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ValueError(f"{where}: expected [device id, key]")
        devices.append(Device(entry[0], saved_key(entry[1], where, KEY_BYTES)))
    listed = DeviceList(
        user=peer,
        version=f.integer("version"),
        devices=tuple(devices),
        signature=f.key("signature", SIG_BYTES),
    )
    try:
        listed.check(identity.sig_key)
    except DeviceListError as exc:
        raise ValueError(f"{f.where('devices')}: {exc}") from None
    return listed


def _person_from(d: object) -> PublicIdentity:
    f = SavedFields(d, "person")
    person = _ident_from(f)
    if not person.binding_valid():
        raise ValueError("person: its keys are not bound to each other")
    return person


def _index_from(d: object) -> dict[str, list[bytes]]:
    if not isinstance(d, dict):
        raise ValueError("expected an object of peers")
    index = {}
    for peer, sids in d.items():
        nick, _, device = peer.partition("/") if isinstance(peer, str) else (peer, "", "")
        where = _folded_nick(nick, "peer")
        if device and not is_valid_device(device):
            raise ValueError(f"{where}: {device!r} is not a device id")
        if not isinstance(sids, list):
            raise ValueError(f"{where}: expected a list of session ids")
        index[peer] = [_sid_from(s, f"{where}[{i}]") for i, s in enumerate(sids)]
    return index


def _seen_from(d: object) -> list[bytes]:
    if not isinstance(d, list):
        raise ValueError("expected a list of session ids")
    return [_sid_from(s, f"[{i}]") for i, s in enumerate(d)]


def _session_from(d: object, name: str) -> RatchetState:
    state = RatchetState.from_dict(d)
    if name != _SESSION_PREFIX + state.sid.hex():
        raise ValueError("the session id inside is not the one in the record's name")
    return state
