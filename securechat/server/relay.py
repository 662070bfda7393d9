"""The key directory and the whisper relay: what the server does with end-to-end frames.

The server checks what it can (signatures on published keys, who may log in as whom),
stores and forwards ciphertext, and learns nothing it could use to read or forge a
whisper. Every method is thread-safe: the relay's own fields are set once, at
construction, and never change; the store, the hub and the prekey limits have their own
locks. Sessions' reader threads call it (each for its own client's frames), and the
watchdog thread `expire_nicks`. A whisper's push to an online recipient runs on the
sender's reader thread after the commit that holds it, with no store lock held.

Nicks cost nothing, so the relay also applies the quotas on what one can make the
server keep or hand out: the offline queue (`QueueLimits`), one-time prekeys held per
user and handed out (`PrekeyLimits`), and nicks nobody logs in to any more.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ..e2e.bundle import KOPK_REFILL_BELOW, OPK_REFILL_BELOW, bundle_from_frame, verify_bundle
from ..e2e.errors import BundleError
from ..e2e.login import login_message, rename_message
from ..e2e.primitives import ed25519_verify
from ..protocol import (
    KEM_VERSION,
    Ack,
    Code,
    Delivery,
    DeviceKeys,
    Keys,
    PrekeyCount,
    PublishKeys,
    Whisper,
    WhisperStatus,
    encode,
    fold_nick,
)
from .backlog import Backlog
from .config import ServerConfig
from .devices import DeviceDirectory, DevicesRefused
from .hub import Hub, Member
from .prekeylimits import PrekeyLimits
from .store import (
    NewWhisper,
    QueuedWhisper,
    QueueLimits,
    Quota,
    QuotaExceeded,
    RenameResult,
    Store,
    StoredBundle,
    UnknownRecipient,
    mailbox,
)

__all__ = ["DEVICE_LIST_TTL", "OPK_LOW_WATER", "ClusterLink", "Relay", "RelayError"]

#: Seconds a cluster node trusts its cached copy of a device list: the longest a removed
#: device could still log in through a node that missed the news of its removal.
DEVICE_LIST_TTL = 5.0


class ClusterLink(Protocol):
    """A cluster node's link to the other nodes (cluster/backplane.py): who serves which
    nick, and frames for sessions on other nodes. Called by sessions' reader threads."""

    def claim(self, nick: str, key: bytes) -> bool:
        """Claim folded `nick` for one session proving identity `key` (b"" a guest):
        False if another node serves it (for another identity). Raises
        `ClusterUnavailable` when the cluster cannot say."""
        ...

    def release(self, nick: str) -> None:
        """One session holding folded `nick` ended (each True `claim` has one)."""
        ...

    def claim_device(self, key: bytes, device: str, most: int) -> int | None:
        """Count device `device` ("" the one holding the identity key) of the person
        proving `key` as online for one session: a token, or None if `most` others are,
        on any node. Raises `ClusterUnavailable` when the cluster cannot say."""
        ...

    def release_device(self, key: bytes, device: str, token: int) -> None:
        """The session holding `token` (from `claim_device`) of that device ended."""
        ...

    def elsewhere(self, nick: str) -> bool:
        """Whether another node serves folded `nick` now. Raises `ClusterUnavailable`."""
        ...

    def holder(self, nick: str) -> bytes | None:
        """The identity key (b"" a guest) of whoever another node serves as folded `nick`,
        None if no other node does. Raises `ClusterUnavailable`."""
        ...

    def push(self, box: str, frame: bytes) -> None:
        """Send `frame` to mailbox `box`'s session on whichever other node has it (a
        whisper's push, a status): sent after the commit that holds what it tells. Only
        queues."""
        ...

    def push_person(self, nick: str, frame: bytes) -> None:
        """Send `frame` to every session of folded `nick` on the other nodes. Only queues."""
        ...

    def replaced(self, box: str) -> None:
        """Tell the other nodes serving mailbox `box`'s nick that its session logged in
        here: theirs of it are stale, and closed. Only queues."""
        ...

    def devices_changed(self, nick: str) -> None:
        """Tell every node folded `nick`'s device list changed. Only queues."""
        ...


log = logging.getLogger(__name__)

#: Tell a user to top up one-time prekeys when fewer than this remain (the client's own
#: refill mark, e2e/bundle.py `OPK_REFILL_BELOW`).
OPK_LOW_WATER = OPK_REFILL_BELOW


class RelayError(Exception):
    """A refused request; `code` and `reason` go into a non-fatal error frame."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Relay:
    """`clock` is the wall clock (timestamps, signed prekey ages); `monotonic` paces the
    prekey limits. `config` None: the defaults."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        clock: Callable[[], float] = time.time,
        *,
        config: ServerConfig | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        cluster: ClusterLink | None = None,
    ) -> None:
        """`cluster`: a cluster node's link to the others (None: one process, where the
        hub alone says who holds a nick and where every session is)."""
        #: Thread-safe itself; set once here.
        self.cluster = cluster
        self._store = store
        self._hub = hub
        self._clock = clock
        self._config = config = config or ServerConfig()
        self._queue_limits = QueueLimits(
            per_recipient=config.queue_max_per_recipient,
            bytes_per_recipient=config.queue_max_bytes_per_recipient,
            per_sender=config.queue_max_per_sender,
            bytes_per_sender=config.queue_max_bytes_per_sender,
            total_bytes=config.queue_max_bytes,
        )
        self._prekeys = PrekeyLimits(config, monotonic)
        #: Each person's device list and their devices' mailboxes. Thread-safe itself. A
        #: cluster node trusts a cached list for a few seconds only (devices.py).
        self.devices = DeviceDirectory(store, ttl=None if cluster is None else DEVICE_LIST_TTL)

    # -- login ------------------------------------------------------------------------

    def is_registered(self, nick: str) -> bool:
        """Whether `nick` is bound to a key (no side effects: an idle binding stays)."""
        return self._store.registered_key(nick) is not None

    def may_claim(self, nick: str, sig_key: bytes) -> bool:
        """False if `nick` is registered to a key other than `sig_key` (b"" for guests).

        A registration nobody logged in to for `nick_ttl` of service has expired: it is
        released here (keys, queue, failures) and the nick is free, unless its owner is
        online now (a session may outlast the period without logging in again).
        """
        registered = self._store.registered_key(nick)
        if registered is None or (bool(sig_key) and registered == sig_key):
            return True
        if self._hub.member(nick) is None and self._store.release_if_idle(nick, self._config.nick_ttl):
            self.devices.forget(nick)  # its list went with it
            log.info("released %s: nobody logged in to it for %.0f days of service", nick, self._days_idle)
            return True
        return False

    @property
    def _days_idle(self) -> float:
        return self._config.nick_ttl / 86_400

    def expire_nicks(self) -> list[str]:
        """Release every nick nobody logged in to for `nick_ttl` of service, with its keys,
        queue and failures (but not those online now); the nicks released. Raises
        `StoreUnavailable`. For the server's periodic expiry (the watchdog thread)."""
        online = self._hub.online()  # in any room, or in none
        gone = self._store.expire_nicks(self._config.nick_ttl, keep=online)
        for nick in gone:
            self.devices.forget(nick)  # their lists went with them
        if gone:
            log.info(
                "released %d nicks nobody logged in to for %.0f days of service: %s%s",
                len(gone),
                self._days_idle,
                ", ".join(gone[:10]),
                ", ..." if len(gone) > 10 else "",  # a log line of bounded length
            )
        return gone

    @staticmethod
    def proof_valid(nick: str, nonce: bytes, sig_key: bytes, signature: bytes) -> bool:
        return ed25519_verify(sig_key, signature, login_message(nick, nonce, sig_key))

    def register(self, nick: str, sig_key: bytes) -> bool:
        """Bind `nick` to `sig_key` at first login; False if someone else got there first."""
        return self._store.register(nick, sig_key, self._clock())

    def registered_key(self, nick: str) -> bytes | None:
        """The identity key `nick` is registered to, or None (for room bans and operators)."""
        return self._store.registered_key(nick)

    # -- renaming (docs/protocol.md, "Renaming") -----------------------------------------

    @staticmethod
    def rename_valid(old: str, new: str, login_nonce: bytes, sig_key: bytes, signature: bytes) -> bool:
        """True if `signature` is `sig_key`'s over renaming `old` to `new` in the session
        whose login challenge was `login_nonce`."""
        return ed25519_verify(sig_key, signature, rename_message(old, new, login_nonce))

    def rename(self, old: str, new: str, sig_key: bytes) -> RenameResult:
        """Move `old`'s registration (to `sig_key`) to `new` in one transaction, or say why
        not (store.py's `rename_user`). The old bundle and prekeys go; what `old` sent and
        is still queued, and its failures, move to `new`."""
        listed = self.devices.listed(old)
        if listed is not None and listed.linked_devices():
            return RenameResult.LINKED
        result = self._store.rename_user(old, new, sig_key, self._clock())
        if result is RenameResult.DONE:
            self.devices.forget(old)
            self.devices.forget(new)
        return result

    def prekey_count(self, nick: str, *, kem: bool) -> PrekeyCount:
        """`nick`'s prekeys as the directory holds them; with `kem` (a session of protocol
        version 3) also its KEM prekeys."""
        status = self._store.prekey_status(nick)
        return PrekeyCount(
            count=status.count,
            spk_id=status.spk_id,
            spk_created=status.spk_created,
            kem_count=status.kem_count if kem else 0,
            kpk_id=status.kpk_id if kem else 0,
        )

    # -- directory --------------------------------------------------------------------

    def publish(
        self, nick: str, sig_key: bytes, event: PublishKeys, *, kem: bool, box: str | None = None
    ) -> PrekeyCount:
        """Store published keys after checking every signature against the login key.

        `kem`: the session speaks protocol version 3 (the answer's KEM counts are for it).
        One-time prekeys beyond `opk_max_held` are dropped, not refused: the identity and
        signed prekey (perhaps a rotation) must still be taken, and the answer's count
        tells the client what the server holds. Those dropped are not checked either.
        Raises `RelayError` if the keys are not `nick`'s, or are not validly signed.
        `box`: the publishing device's mailbox (default: the nick's own, for the device
        holding the identity key); a linked device's keys are its own, signed by its key.
        """
        box = mailbox(nick) if box is None else box
        if event.identity.sig_key != sig_key:
            raise RelayError(Code.INVALID, "publish_keys: identity is not the key you logged in with")
        cap = self._config.opk_max_held
        # Those beyond the cap are dropped before their signatures are checked; the store
        # trims exactly. (After an identity change the old count is too high here: the
        # client is told the lower count and tops up.)
        held = self._store.prekey_status(box)
        opks = event.opks[: max(0, cap - held.count)]
        kem_cap = self._config.kopk_max_held
        kopks = event.kopks[: max(0, kem_cap - held.kem_count)]
        kpk = event.kpk[0] if event.kpk else None
        bundle = bundle_from_frame(nick, dataclasses.replace(event, opks=opks, kopks=kopks))
        try:
            verify_bundle(bundle, user=nick, now=self._clock())
        except BundleError as exc:
            raise RelayError(Code.INVALID, f"publish_keys: {exc}") from None
        self._store.publish(
            box, event.identity, event.spk, opks, max_held=cap, kpk=kpk, kopks=kopks, max_kem_held=kem_cap
        )
        return self.prekey_count(box, kem=kem)

    def drop_kem_prekeys(self, nick: str) -> None:
        """Forget `nick`'s KEM prekeys: its client (protocol version 2 or older) cannot
        answer a post-quantum setup. Raises `StoreUnavailable`."""
        self._store.drop_kem_prekeys(nick)

    def publish_cost(self, event: PublishKeys) -> float:
        """Request tokens a publish costs beyond its frame's own: its signature checks."""
        return (len(event.opks) + len(event.kpk) + len(event.kopks)) / self._config.opks_per_request_token

    def fetch(self, nick: str, *, requester: bytes, ref: str = "", kem: bool, devices: bool = False) -> Keys:
        """`nick`'s bundle for the identity `requester`, with one one-time prekey, which is
        never handed out again; with none when `nick` has run out or the prekey limits
        say so (see prekeylimits.py): the setup then uses the signed prekey alone. With
        `kem` (a requester of protocol version 3), also the last-resort KEM prekey and
        one one-time KEM prekey, under the same rules. With `devices` (version 4), also
        `nick`'s device list and the bundle of each other device it names, each with its
        own one-time prekeys. The answer carries `ref`, the fetch's own (the client
        matches its answer by it).

        Raises `RelayError` for an unknown user, one who has published no keys, or a
        requester fetching too fast.
        """
        if not self._prekeys.may_fetch(requester):
            raise RelayError(Code.RATE_LIMITED, "fetching keys too fast; try again in a moment")
        stored = self._take(mailbox(nick), kem=kem)
        if stored is None:
            if self._store.registered_key(nick) is None:
                raise RelayError(Code.NO_SUCH_USER, f"nobody is registered as {nick}")
            raise RelayError(Code.NO_KEYS, f"{nick} has not published keys yet (they need to log in once)")
        listed = self.devices.listed(nick) if devices else None
        others: list[DeviceKeys] = []
        for device in [] if listed is None else listed.linked_devices():
            theirs = self._take(mailbox(nick, device), kem=kem)
            if theirs is not None:  # a device that has not published yet cannot be reached
                others.append(
                    DeviceKeys(
                        device=device,
                        identity=theirs.identity,
                        spk=theirs.spk,
                        opks=() if theirs.opk is None else (theirs.opk,),
                        kpk=() if theirs.kpk is None else (theirs.kpk,),
                        kopks=() if theirs.kopk is None else (theirs.kopk,),
                    )
                )
        return Keys(
            nick=self._hub.display_nick(nick) or nick,
            identity=stored.identity,
            spk=stored.spk,
            opks=() if stored.opk is None else (stored.opk,),
            ref=ref,
            kpk=() if stored.kpk is None else (stored.kpk,),
            kopks=() if stored.kopk is None else (stored.kopk,),
            devices=() if listed is None else (listed.record,),
            device="" if listed is None else listed.master,
            others=tuple(others),
        )

    def _take(self, box: str, *, kem: bool) -> StoredBundle | None:
        """The bundle in mailbox `box`, with a one-time prekey of each kind if the limits
        allow; its device's session, if online, is told when it runs low."""
        stored = self._store.take_bundle(box, take_opk=lambda: self._prekeys.may_hand_out(box), kem=kem)
        if stored is None:
            return None
        nick, device = box.partition("/")[::2]
        owner = self._hub.member_of(nick, device)
        if owner is not None:
            owner_kem = (self._hub.protocol_version(nick) or 0) >= KEM_VERSION
            status = self.prekey_count(box, kem=owner_kem)
            if status.count < OPK_LOW_WATER or (owner_kem and status.kem_count < KOPK_REFILL_BELOW):
                owner.deliver(encode(status))
        return stored

    # -- whispers ---------------------------------------------------------------------

    def whisper(self, sender: str, event: Whisper) -> WhisperStatus:
        """Queue a whisper durably, push it if the recipient is online; the `stored` status.

        `sender` is the sending device's mailbox (its nick, for the device holding the
        identity key). Raises `RelayError` for a recipient who is not registered (or has
        no such device), or a quota exceeded, and `StoreUnavailable` if the commit failed.
        """
        (outcome,) = self.whisper_many(sender, [event])
        if isinstance(outcome, RelayError):
            raise outcome
        return outcome

    def whisper_many(self, sender: str, events: Sequence[Whisper]) -> list[WhisperStatus | RelayError]:
        """`whisper` each of `events` (one session's, read together), in order and in one
        commit; for each, its `stored` status or its refusal. Raises `StoreUnavailable`
        if the commit failed: then none was stored or pushed. Sessions' reader threads.

        Each whisper goes to the mailbox of the device it names (`Whisper.device`; none:
        the device holding the recipient's identity key). One to the sender's own nick is
        a copy for another of its devices, and must name one.
        """
        ts = self._clock()
        sender = fold_nick(sender)
        sender_nick = _split(sender)[0]
        shown_sender = self._hub.display_nick(sender_nick) or sender_nick
        shown_device = self._public_device(sender)
        outcomes: list[WhisperStatus | RelayError | None] = []
        boxes: list[str] = []
        queued: list[NewWhisper] = []
        for event in events:
            try:
                box = self.devices.mailbox_of(event.to, event.device)
            except DevicesRefused as exc:
                outcomes.append(RelayError(exc.code, exc.reason))
                boxes.append("")
                continue
            if box == sender:
                # The client has no session with itself to decrypt it with: it would only
                # come back as a failure.
                outcomes.append(RelayError(Code.INVALID, "you cannot whisper yourself"))
                boxes.append("")
                continue
            outcomes.append(None)
            boxes.append(box)
            queued.append(NewWhisper(box, event.id, sender, event.header, event.ciphertext, ts))
        # Returns once the commit holding them is on disk, which they may share with other
        # sessions' whispers (the store's group commit).
        stored = iter(self._store.enqueue_many(queued, limits=self._queue_limits, registered_only=True))
        results: list[WhisperStatus | RelayError] = []
        # What each online recipient is pushed, in order: one write for all (`_push`).
        pushes: dict[int, tuple[Member, list[bytes]]] = {}
        # Each recipient looked up once per batch (the hub's lock), not once per whisper.
        online: dict[str, Member | None] = {}
        for event, refused, box in zip(events, outcomes, boxes, strict=True):
            if refused is not None:
                results.append(refused)
                continue
            whisper_id = next(stored)
            if isinstance(whisper_id, UnknownRecipient):
                results.append(RelayError(Code.NO_SUCH_USER, f"{event.to} is not a registered user"))
                continue
            if isinstance(whisper_id, QuotaExceeded):
                results.append(RelayError(Code.QUOTA, self._over_quota(whisper_id.quota, event.to)))
                continue
            if box in online:
                recipient = online[box]
            else:
                recipient = online[box] = self._hub.member_of(*_split(box))
            if recipient is not None or self.cluster is not None:
                # Only after the commit: a whisper the recipient sees is one the server
                # keeps, and its id names no other whisper if the commit fails. No store
                # lock is held here, only the recipient's outbox's (docs/design.md).
                delivery = Delivery(
                    id=str(whisper_id),
                    msg_id=event.id,
                    sender=shown_sender,
                    header=event.header,
                    ciphertext=event.ciphertext,
                    ts=ts,
                    device=shown_device,
                )
                if recipient is not None:
                    pushes.setdefault(id(recipient), (recipient, []))[1].append(encode(delivery))
                elif self.cluster is not None:
                    self.cluster.push(box, encode(delivery))  # online on another node, or nowhere
            away = recipient.away if recipient is not None else ""
            listed = self.devices.listed(event.to)
            results.append(
                WhisperStatus(
                    id=event.id,
                    to=event.to,
                    status="stored",
                    away=away,
                    device=event.device,
                    devices=0 if listed is None else listed.record.version,
                )
            )
        _push(pushes)
        return results

    def _public_device(self, box: str) -> str:
        """The device id clients know mailbox `box`'s device by: its own, for a linked
        device; the listed id of the device holding the identity key ("" if its person
        has no list)."""
        nick, device = _split(box)
        if device:
            return device
        listed = self.devices.listed(nick)
        return "" if listed is None else listed.master

    def _over_quota(self, quota: Quota, to: str) -> str:
        """What the sender is told: which quota, in its terms, and what to do."""
        to = self._hub.display_nick(to) or to
        config = self._config
        if quota in (Quota.SENDER_COUNT, Quota.SENDER_BYTES):
            return (
                f"you have too many whispers waiting to be read (at most {config.queue_max_per_sender} "
                f"or {config.queue_max_bytes_per_sender // 1024} KiB): nothing was stored; "
                "try again once some are read"
            )
        if quota in (Quota.RECIPIENT_COUNT, Quota.RECIPIENT_BYTES):
            return (
                f"{to} has too many whispers waiting to be read: nothing was stored; "
                f"try again after {to} has read some"
            )
        return "the server holds too many unread whispers: nothing was stored; try again later"

    def pending(self, nick: str) -> list[Delivery]:
        """Deliveries waiting for `nick`, oldest first (all of them: see `backlog`)."""
        return [self._delivery(q) for q in self._store.pending(nick)]

    def backlog(self, nick: str) -> Backlog:
        """What waited for `nick` until now, to hand out a page (`queue_page`) at a time
        as acks come back. Raises `StoreUnavailable`."""
        upto = self._store.newest_queued(nick)

        def load(after: int, limit: int) -> list[Delivery]:
            return [self._delivery(q) for q in self._store.pending(nick, after=after, upto=upto, limit=limit)]

        return Backlog(load, self._config.queue_page)

    def _delivery(self, q: QueuedWhisper) -> Delivery:
        nick = _split(q.sender)[0]
        return _delivery(q, self._hub.display_nick(nick) or nick, self._public_device(q.sender))

    def ack(self, nick: str, ack: Ack) -> None:
        """Forget a whisper `nick`'s client has dealt with, and tell its sender, if online,
        what became of it: "delivered" if it was read, "failed" (with the recipient's
        reason) if it could not be decrypted. A failure is also kept for the sender until
        it sends that whisper again (see `failures`): one who is offline now learns it at
        the next login. A "held" ack changes nothing here (the session's backlog counts it
        as settled). Unknown ids are ignored (a repeated ack after a reconnect is normal).
        """
        self.ack_many(nick, [ack])

    def ack_many(self, nick: str, acks: Sequence[Ack]) -> None:
        """`ack` each of `acks` (one session's, read together), in order and in one commit.
        Raises `StoreUnavailable` if the commit failed: then none took effect, and no
        sender was told anything. Sessions' reader threads."""
        # Held by the recipient for its user: kept, and nothing to tell yet.
        acks = [a for a in acks if a.id.isdigit() and a.outcome != "held"]
        if not acks:
            return
        outcomes = [a.reason if a.outcome == "failed" else "" for a in acks]
        done_all = self._store.ack_many(
            nick,
            [(int(a.id), failed) for a, failed in zip(acks, outcomes, strict=True)],
            keep_failures=self._config.queue_max_per_sender,
        )
        owner = _split(nick)[0]
        to, device = self._hub.display_nick(owner) or owner, self._public_device(nick)
        statuses: dict[int, tuple[Member, list[bytes]]] = {}
        online: dict[str, Member | None] = {}  # each sender looked up once per batch
        for done, failed in zip(done_all, outcomes, strict=True):
            if done is None:
                continue
            if done.sender in online:
                sender = online[done.sender]
            else:
                sender = online[done.sender] = self._hub.member_of(*_split(done.sender))
            if sender is not None:
                statuses.setdefault(id(sender), (sender, []))[1].append(
                    encode(_status(done.msg_id, to, failed, device))
                )
            elif self.cluster is not None:
                self.cluster.push(done.sender, encode(_status(done.msg_id, to, failed, device)))
        _push(statuses)

    def failures(self, nick: str) -> list[WhisperStatus]:
        """`failed` statuses for `nick`'s whispers that could not be decrypted and that
        `nick`'s client has not sent again yet, to tell at login: the oldest `queue_page`
        of them (the rest at later logins, once these were sent again). At most
        `queue_max_per_sender` are kept per sender, the newest."""
        statuses = []
        for recipient, msg_id, reason in self._store.failures(nick, limit=self._config.queue_page):
            owner = _split(recipient)[0]
            shown = self._hub.display_nick(owner) or owner
            statuses.append(_status(msg_id, shown, reason, self._public_device(recipient)))
        return statuses


def _push(frames: dict[int, tuple[Member, list[bytes]]]) -> None:
    """Give each member its frames (whole lines, in order) in one write: a batch of
    whispers to one recipient, or of statuses to one sender, is one TLS record."""
    for member, lines in frames.values():
        member.deliver(lines[0] if len(lines) == 1 else b"".join(lines))


def _split(box: str) -> tuple[str, str]:
    """(nick, device) of a mailbox: device "" for the one holding the identity key."""
    nick, _, device = box.partition("/")
    return nick, device


def _delivery(q: QueuedWhisper, sender: str, device: str) -> Delivery:
    return Delivery(
        id=str(q.id),
        msg_id=q.msg_id,
        sender=sender,
        header=q.header,
        ciphertext=q.ciphertext,
        ts=q.ts,
        device=device,
    )


def _status(msg_id: str, to: str, failed: str, device: str) -> WhisperStatus:
    return WhisperStatus(
        id=msg_id, to=to, status="failed" if failed else "delivered", reason=failed, device=device
    )
