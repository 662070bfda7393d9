"""The key directory and the whisper relay: what the server does with end-to-end frames.

The server checks what it can (signatures on published keys, who may log in as whom),
stores and forwards ciphertext, and learns nothing it could use to read or forge a
whisper. Every method is thread-safe (the store and hub are).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..e2e.bundle import Bundle, OneTimePrekey, SignedPrekey, verify_bundle
from ..e2e.errors import BundleError
from ..e2e.identity import PublicIdentity
from ..e2e.login import login_message
from ..e2e.primitives import ed25519_verify
from ..protocol import (
    Ack,
    Code,
    Delivery,
    Keys,
    PrekeyCount,
    PublishKeys,
    Whisper,
    WhisperStatus,
    encode,
    fold_nick,
)
from .hub import Hub
from .store import QueuedWhisper, Store

__all__ = ["OPK_LOW_WATER", "Relay", "RelayError"]

log = logging.getLogger(__name__)

#: Tell a user to top up one-time prekeys when fewer than this remain (E2E.md: ~20).
OPK_LOW_WATER = 20


class RelayError(Exception):
    """A refused request; `code` and `reason` go into a non-fatal error frame."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Relay:
    def __init__(self, store: Store, hub: Hub, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._hub = hub
        self._clock = clock

    # -- login ------------------------------------------------------------------------

    def may_claim(self, nick: str, sig_key: bytes) -> bool:
        """False if `nick` is registered to a key other than `sig_key` (b"" for guests)."""
        registered = self._store.registered_key(nick)
        return registered is None or (bool(sig_key) and registered == sig_key)

    @staticmethod
    def proof_valid(nick: str, nonce: bytes, sig_key: bytes, signature: bytes) -> bool:
        return ed25519_verify(sig_key, signature, login_message(nick, nonce, sig_key))

    def register(self, nick: str, sig_key: bytes) -> bool:
        """Bind `nick` to `sig_key` at first login; False if someone else got there first."""
        return self._store.register(nick, sig_key, self._clock())

    def prekey_count(self, nick: str) -> PrekeyCount:
        count, spk_id, created = self._store.prekey_status(nick)
        return PrekeyCount(count=count, spk_id=spk_id, spk_created=created)

    # -- directory --------------------------------------------------------------------

    def publish(self, nick: str, sig_key: bytes, event: PublishKeys) -> PrekeyCount:
        """Store published keys after checking every signature against the login key.

        Raises `RelayError` if they are not `nick`'s, or are not validly signed.
        """
        if event.identity.sig_key != sig_key:
            raise RelayError(Code.INVALID, "publish_keys: identity is not the key you logged in with")
        bundle = Bundle(
            PublicIdentity(nick, event.identity.sig_key, event.identity.dh_key, event.identity.dh_sig),
            SignedPrekey(event.spk.id, event.spk.created, event.spk.public, event.spk.signature),
            tuple(OneTimePrekey(o.id, o.public, o.signature) for o in event.opks),
        )
        try:
            verify_bundle(bundle, user=nick, now=self._clock())
        except BundleError as exc:
            raise RelayError(Code.INVALID, f"publish_keys: {exc}") from None
        self._store.publish(nick, event.identity, event.spk, event.opks)
        return self.prekey_count(nick)

    def fetch(self, nick: str) -> Keys:
        """`nick`'s bundle with one one-time prekey, which is never handed out again.

        Raises `RelayError` for an unknown user or one who has published no keys.
        """
        stored = self._store.take_bundle(nick)
        if stored is None:
            if self._store.registered_key(nick) is None:
                raise RelayError(Code.NO_SUCH_USER, f"nobody is registered as {nick}")
            raise RelayError(Code.NO_KEYS, f"{nick} has not published keys yet (they need to log in once)")
        owner = self._hub.member(nick)
        if owner is not None:
            status = self.prekey_count(nick)
            if status.count < OPK_LOW_WATER:
                owner.deliver(encode(status))
        return Keys(
            nick=self._hub.display_nick(nick) or nick,
            identity=stored.identity,
            spk=stored.spk,
            opks=() if stored.opk is None else (stored.opk,),
        )

    # -- whispers ---------------------------------------------------------------------

    def whisper(self, sender: str, event: Whisper) -> WhisperStatus:
        """Queue a whisper durably, push it if the recipient is online; the `stored` status.

        Raises `RelayError` for a recipient who is not registered.
        """
        if fold_nick(event.to) == fold_nick(sender):
            # The client has no session with itself to decrypt it with: it would only
            # come back as a failure.
            raise RelayError(Code.INVALID, "you cannot whisper yourself")
        if self._store.registered_key(event.to) is None:
            raise RelayError(Code.NO_SUCH_USER, f"{event.to} is not a registered user")
        ts = self._clock()
        recipient = self._hub.member(event.to)
        away = recipient.away if recipient is not None else ""

        shown_sender = self._hub.display_nick(sender) or sender  # not under the store's lock

        def push(whisper_id: int) -> None:
            # Before the commit reaches the disk, so that the flush and the recipient's
            # decryption overlap. Safe: the sender hears "stored" only after the commit,
            # and if the server dies first it sends the same bytes again after
            # reconnecting, which the recipient drops by message id. Runs on this
            # session's thread with the store's lock held: it takes only the recipient's
            # outbox lock (docs/design.md, lock order).
            assert recipient is not None
            queued = QueuedWhisper(
                whisper_id, fold_nick(event.to), event.id, sender, event.header, event.ciphertext, ts
            )
            recipient.deliver(encode(_delivery(queued, shown_sender)))

        self._store.enqueue(
            event.to,
            event.id,
            sender,
            event.header,
            event.ciphertext,
            ts,
            before_commit=push if recipient is not None else None,
        )
        return WhisperStatus(id=event.id, to=event.to, status="stored", away=away)

    def pending(self, nick: str) -> list[Delivery]:
        """Deliveries waiting for `nick`, oldest first."""
        return [_delivery(q, self._hub.display_nick(q.sender) or q.sender) for q in self._store.pending(nick)]

    def ack(self, nick: str, ack: Ack) -> None:
        """Forget a whisper `nick`'s client has dealt with, and tell its sender, if online,
        what became of it: "delivered" if it was read, "failed" (with the recipient's
        reason) if it could not be decrypted. A failure is also kept for the sender until
        it sends that whisper again (see `failures`): one who is offline now learns it at
        the next login. Unknown ids are ignored (a repeated ack after a reconnect is normal).
        """
        if not ack.id.isdigit():
            return
        failed = ack.reason if ack.outcome == "failed" else ""
        done = self._store.ack(nick, int(ack.id), failed)
        if done is None:
            return
        sender = self._hub.member(done.sender)
        if sender is not None:
            to = self._hub.display_nick(nick) or nick
            sender.deliver(encode(_status(done.msg_id, to, failed)))

    def failures(self, nick: str) -> list[WhisperStatus]:
        """`failed` statuses for `nick`'s whispers that could not be decrypted and that
        `nick`'s client has not sent again yet, to tell at login."""
        return [
            _status(msg_id, self._hub.display_nick(recipient) or recipient, reason)
            for recipient, msg_id, reason in self._store.failures(nick)
        ]


def _delivery(q: QueuedWhisper, sender: str) -> Delivery:
    return Delivery(
        id=str(q.id), msg_id=q.msg_id, sender=sender, header=q.header, ciphertext=q.ciphertext, ts=q.ts
    )


def _status(msg_id: str, to: str, failed: str) -> WhisperStatus:
    return WhisperStatus(id=msg_id, to=to, status="failed" if failed else "delivered", reason=failed)
