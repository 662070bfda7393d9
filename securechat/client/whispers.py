"""The client's end-to-end engine: `Conversations` plus a keystore, used from two threads.

Every operation holds one lock, and every change is written to the keystore before
what it produced leaves the process: a ratchet step is on disk before its ciphertext is
sent, and a decrypted whisper's new state is on disk before the server may forget it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..e2e.bundle import OPK_REFILL_BELOW, OPK_TARGET, Bundle, OneTimePrekey, SignedPrekey
from ..e2e.conversations import Conversations, Trust
from ..e2e.errors import DecryptionError, IdentityChanged
from ..e2e.identity import Identity, PublicIdentity
from ..e2e.login import login_message
from ..protocol import (
    Delivery,
    KeyIdentity,
    Keys,
    OneTimePrekeyRecord,
    PrekeyCount,
    PublishKeys,
    SignedPrekeyRecord,
    fold_nick,
)
from .events import KeyChanged, WhisperFailed, WhisperReceived
from .keystore import Keystore
from .received import ReceivedLog

__all__ = ["Incoming", "WhisperKeys"]

Persist = Callable[[dict[str, bytes | None]], None]

#: Whispers remembered as shown, by sender and message id, so one delivered again (the
#: server crashed before our ack was stored, or we did) is acknowledged, not shown twice.
_RECEIVED_REMEMBERED = 10_000


@dataclass
class Incoming:
    """What to do after handling a delivery: events to show, and delivery ids to ack."""

    events: list[WhisperReceived | WhisperFailed | KeyChanged] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)


class WhisperKeys:
    """One user's keys and sessions, safe to call from the reader and the sending thread."""

    def __init__(
        self,
        conversations: Conversations,
        persist: Persist,
        clock: Callable[[], float] = time.time,
        received: Mapping[str, bytes] | None = None,
    ) -> None:
        self._conv = conversations
        self._persist = persist
        self._clock = clock
        self._lock = threading.RLock()
        self._held: dict[str, list[Delivery]] = {}
        self._received = ReceivedLog(received, limit=_RECEIVED_REMEMBERED)

    @classmethod
    def in_keystore(cls, keystore: Keystore, nick: str) -> WhisperKeys:
        """Load the keystore, creating an identity on first use. Raises `KeystoreError`, `ValueError`."""
        records = keystore.load()
        if "identity" in records:
            conv = Conversations.from_records(records)
        else:
            conv = Conversations(Identity.generate(nick))
            keystore.save(conv.records())
        return cls(conv, keystore.save, received=records)

    @property
    def identity(self) -> Identity:
        return self._conv.identity

    def _save(self) -> None:
        changed = self._conv.take_dirty()
        changed.update(self._received.take_dirty())
        if changed:
            self._persist(changed)

    # -- login and prekeys --------------------------------------------------------------

    def login_proof(self, nick: str, nonce: bytes) -> bytes:
        return self._conv.identity.sign(login_message(nick, nonce, self._conv.identity.sig_key))

    def publication(self, status: PrekeyCount) -> PublishKeys | None:
        """What to publish given the server's view of our prekeys, or None if nothing is due.

        Only new one-time prekeys are sent: re-sending ones the server may already have
        handed out could let two senders use the same one.
        """
        with self._lock:
            secrets, now = self._conv.secrets, self._clock()
            current = secrets.current_spk()
            rotate = current is None or secrets.needs_rotation(now)
            if rotate:
                secrets.rotate_spk(now)
            current = secrets.current_spk()
            assert current is not None
            if status.spk_id == 0:
                new_ids = sorted(secrets.opks) or secrets.new_opks(OPK_TARGET)
            elif status.count < OPK_REFILL_BELOW:
                new_ids = secrets.new_opks(OPK_TARGET - status.count)
            else:
                new_ids = []
            if not rotate and not new_ids and status.spk_id == current.id:
                return None
            self._conv.dirty.add("prekeys")
            self._save()
            ident = self._conv.identity
            pub = ident.public()
            spk = secrets.signed_spk(ident)
            return PublishKeys(
                identity=KeyIdentity(sig_key=pub.sig_key, dh_key=pub.dh_key, dh_sig=pub.dh_sig),
                spk=SignedPrekeyRecord(
                    id=spk.id, created=spk.created, public=spk.public, signature=spk.signature
                ),
                opks=tuple(
                    OneTimePrekeyRecord(id=o.id, public=o.public, signature=o.signature)
                    for o in secrets.signed_opks(ident, new_ids)
                ),
            )

    # -- sending ------------------------------------------------------------------------

    def has_session(self, peer: str) -> bool:
        with self._lock:
            return self._conv.has_session(peer)

    def start_session(self, keys: Keys) -> None:
        """Start a session from fetched keys. Raises `BundleError` or `IdentityChanged`."""
        bundle = Bundle(
            PublicIdentity(keys.nick, keys.identity.sig_key, keys.identity.dh_key, keys.identity.dh_sig),
            SignedPrekey(keys.spk.id, keys.spk.created, keys.spk.public, keys.spk.signature),
            tuple(OneTimePrekey(o.id, o.public, o.signature) for o in keys.opks),
        )
        with self._lock:
            try:
                self._conv.start_session(keys.nick, bundle)
            finally:
                self._save()  # a pending key change is recorded even when refused

    def forget_sessions(self, peer: str) -> None:
        with self._lock:
            self._conv.forget_sessions(peer)
            self._save()

    def encrypt(self, peer: str, text: str) -> tuple[bytes, bytes]:
        """(header, ciphertext), with the advanced session already on disk.

        Raises `IdentityChanged` or `NotTrusted` (no session).
        """
        plaintext = json.dumps({"text": text}, ensure_ascii=False).encode()
        with self._lock:
            header, ciphertext = self._conv.encrypt(peer, plaintext)
            self._save()
        return header, ciphertext

    # -- receiving ----------------------------------------------------------------------

    def receive(self, delivery: Delivery) -> Incoming:
        """Decrypt a delivery. Held (not acked) when the sender's key changed; acked otherwise,
        including when it cannot be decrypted (it never will be)."""
        out = Incoming()
        with self._lock:
            self._receive_locked(delivery, out)
        return out

    def _receive_locked(self, delivery: Delivery, out: Incoming) -> None:
        seen_key = f"{fold_nick(delivery.sender)}/{delivery.msg_id}"
        if seen_key in self._received:
            out.acks.append(delivery.id)  # shown before: the server just did not hear our ack
            return
        try:
            whisper = self._conv.decrypt(delivery.sender, delivery.header, delivery.ciphertext)
        except IdentityChanged as exc:
            self._save()
            held = self._held.setdefault(fold_nick(delivery.sender), [])
            if any(d.msg_id == delivery.msg_id for d in held):
                return  # held already, and the user was told: no second alarm
            held.append(delivery)
            out.events.append(
                KeyChanged(
                    peer=delivery.sender,
                    old_fingerprint=exc.pinned_fingerprint,
                    new_fingerprint=exc.new_fingerprint,
                    held=len(held),
                )
            )
            return
        except DecryptionError:
            out.events.append(WhisperFailed(sender=delivery.sender, reason="could not be authenticated"))
            out.acks.append(delivery.id)
            return
        self._received.add(seen_key)
        self._save()  # the session step and the "seen" mark, before the server may forget it
        out.acks.append(delivery.id)
        text = _text_of(whisper.plaintext)
        if text is None:
            out.events.append(WhisperFailed(sender=delivery.sender, reason="authenticated but malformed"))
            return
        out.events.append(
            WhisperReceived(
                sender=whisper.sender.user,
                text=text,
                trust=whisper.trust.value,
                fingerprint=whisper.sender.fingerprint(),
                msg_id=delivery.msg_id,
                ts=delivery.ts,
            )
        )

    # -- trust --------------------------------------------------------------------------

    def trust(self, peer: str) -> Incoming:
        """Accept `peer`'s changed key (raises `NotTrusted`), then open what was held for them."""
        with self._lock:
            self._conv.trust(peer)
            self._save()
            return self._release_held(peer)

    def verify(self, peer: str, number: str) -> tuple[bool, Incoming]:
        """Check a safety number; on a match mark verified and open held whispers."""
        with self._lock:
            ok = self._conv.verify(peer, number)
            self._save()
            return ok, (self._release_held(peer) if ok else Incoming())

    def _release_held(self, peer: str) -> Incoming:
        out = Incoming()
        for delivery in self._held.pop(fold_nick(peer), []):
            self._receive_locked(delivery, out)
        return out

    def safety_number(self, peer: str) -> str:
        with self._lock:
            return self._conv.safety_number(peer)

    def peer_info(self, peer: str) -> tuple[PublicIdentity, Trust, PublicIdentity | None] | None:
        """(pinned identity, trust, pending changed identity) or None if never seen."""
        with self._lock:
            pin = self._conv.pin(peer)
            return None if pin is None else (pin.identity, pin.trust, pin.pending)


def _text_of(plaintext: bytes) -> str | None:
    try:
        obj = json.loads(plaintext)
    except ValueError:
        return None
    text = obj.get("text") if isinstance(obj, dict) else None
    return text if isinstance(text, str) and text else None
