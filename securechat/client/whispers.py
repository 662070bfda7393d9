"""The client's end-to-end engine: `Conversations` plus durable storage, used from two threads.

Every operation holds one lock, and every change is committed before what it produced
leaves the process: a ratchet step is on disk, with the whisper it encrypted in the
outbox, before its ciphertext is sent; a decrypted whisper is on disk, in the inbox,
with the ratchet state that decrypted it, before it is acknowledged (see inbox.py).
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..e2e.bundle import (
    KOPK_REFILL_BELOW,
    KOPK_TARGET,
    OPK_REFILL_BELOW,
    OPK_TARGET,
    Bundle,
    bundle_from_frame,
    publication,
)
from ..e2e.conversations import Conversations, Trust
from ..e2e.devices import Device, DeviceListError, device_list_from, device_list_record, sign_device_list
from ..e2e.errors import (
    BundleError,
    DecryptionError,
    IdentityChanged,
    KeystoreError,
    MalformedPlaintext,
    UnknownDevice,
)
from ..e2e.identity import Identity, PublicIdentity
from ..e2e.login import login_message, rename_message
from ..e2e.primitives import AEAD_TAG_BYTES
from ..e2e.ratchet import PAD_BLOCK, pad, parse_header
from ..e2e.x3dh import respond
from ..protocol import (
    Ack,
    Delivery,
    DeviceListRecord,
    Keys,
    PrekeyCount,
    PublishKeys,
    Whisper,
    WhisperStatus,
    fold_nick,
    is_valid_nick,
)
from ..protocol.keys import MAX_CIPHERTEXT_BYTES, MAX_KOPKS_PER_PUBLISH, MAX_OPKS_PER_PUBLISH
from .budget import Budget
from .events import (
    KeyChanged,
    KnownKeyRenamed,
    NotPostQuantum,
    RenameUnconfirmed,
    WhisperCopied,
    WhisperFailed,
    WhisperReceived,
)
from .inbox import Direction, MessageState, Storage, StoredMessage
from .keystore import Keystore

__all__ = ["Incoming", "WhisperKeys"]

#: Records of the "already shown" ids kept before the inbox existed; moved into it.
_LEGACY_RECEIVED = "received"
#: The record of a rename sent and not yet answered: the nick asked for. A client that
#: stops before the server's `renamed` finishes it at the next start (`Client.connect`).
_RENAMING_RECORD = "renaming"

#: The record of this keystore's device id (what its `hello` names, `Hello.device`):
#: chosen at random once, so that every program using the keystore is the same device.
_DEVICE_RECORD = "device"

#: Seconds a device the server gave no keys for is left out of whispers before a fetch
#: tries it again (a device that never set up, or one the server keeps out: said once).
KEYLESS_FOR = 600.0

#: Top-ups of one-time prekeys (making new ones because the server says it holds few or
#: none): at most this many at once, then one more every `OPK_TOPUP_EVERY` seconds. An
#: honest server asks at first login and after about 80 fetches of our keys; a hostile
#: one answering every publication with "count 0" would otherwise have us make and
#: commit 100 keys per round trip for as long as it liked. When the budget is spent
#: the signed prekey is still published; senders then start sessions without a
#: one-time prekey (allowed; the first message has less forward secrecy).
OPK_TOPUP_BURST = 4
OPK_TOPUP_EVERY = 600.0

#: Whispers from a peer whose key changed are held, unacknowledged, until the user
#: decides (/trust, /verify): at most this many per peer and in all. Beyond, a whisper
#: is not held but left on the server (not acknowledged), which delivers it again at
#: the next login; no alarm is raised again for it.
HELD_PER_PEER = 100
HELD_TOTAL = 1_000

#: The outcome of a sent whisper, by the status the server reports.
_SENT_STATES = {
    "stored": MessageState.STORED,
    "delivered": MessageState.DELIVERED,
    "failed": MessageState.FAILED,
}


@dataclass
class Incoming:
    """What to do after handling a delivery: events to show, then acks to send."""

    events: list[
        WhisperReceived | WhisperCopied | WhisperFailed | KeyChanged | KnownKeyRenamed | NotPostQuantum
    ] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    #: Senders whose keys must be fetched (and given to `start_session`) before the
    #: whispers held from an unknown device of theirs can be read (`retry_unknown`).
    fetch: list[str] = field(default_factory=list)


class WhisperKeys:
    """One user's keys, sessions and messages, safe to call from any thread."""

    def __init__(
        self,
        conversations: Conversations,
        storage: Storage,
        clock: Callable[[], float] = time.time,
        topups: Budget | None = None,
        device: str = "",
    ) -> None:
        #: This keystore's device id ("" for keys kept nowhere: they name no device).
        #: Set once, read by any thread.
        self.device = device
        self._conv = conversations  # guarded by _lock (replaced by a reload after a failed commit)
        self._storage = storage  # calls that change it are made under _lock
        self._clock = clock
        self._lock = threading.RLock()
        self._held: dict[str, list[Delivery]] = {}  # by folded sender; guarded by _lock
        self._held_count = 0  # deliveries in _held, all peers; guarded by _lock
        # Deliveries from a device of a sender no list we have names, by folded sender,
        # until their keys are fetched (`retry_unknown`); guarded by _lock.
        self._unknown: dict[str, list[Delivery]] = {}
        # (folded nick, device) -> until when a device the server gave no keys for is left
        # out of `_targets` (so that every whisper does not fetch again); guarded by _lock.
        self._keyless: dict[tuple[str, str], float] = {}
        # One-time prekey top-ups; guarded by _lock.
        self._topups = topups if topups is not None else Budget(OPK_TOPUP_BURST, OPK_TOPUP_EVERY)
        # The nick of a rename sent and not yet answered (kept as `_RENAMING_RECORD`);
        # guarded by _lock.
        self._renaming: str | None = None
        # Whether the server holds KEM prekeys (`serve_kem`); guarded by _lock.
        self._kem_server = False
        # The last-resort KEM prekey id published on this connection (0: none yet): a
        # server that keeps answering with another id is not sent it again and again.
        # Guarded by _lock; reset by `serve_kem` at each login.
        self._kpk_offered = 0
        # Set once the server's `prekey_count` shows it holds what we would publish (this
        # login's keys are out); cleared at each login (`serve_kem`). Thread-safe itself.
        self._published = threading.Event()

    @classmethod
    def in_keystore(cls, keystore: Keystore, nick: str) -> WhisperKeys:
        """Load the keystore, creating an identity on first use.

        Raises `KeystoreError`, naming the keystore, if it is damaged, including when it
        holds anything but no identity: a new identity is made only in an empty keystore,
        never silently in place of a lost one.
        """
        records = keystore.load()
        if "identity" in records:
            try:
                conv = Conversations.from_records(records)
            except ValueError as exc:
                raise KeystoreError(f"your keystore {keystore.path} is damaged: {exc}") from None
            if fold_nick(conv.identity.user) != fold_nick(nick) and keystore.directory.name == fold_nick(
                nick
            ):
                # A rename that stopped between moving the keystore to the new nick's
                # place and rebinding the identity to it: finish it.
                conv.identity = Identity(nick, conv.identity.sig_private, conv.identity.dh)
                _forget_all_sessions(conv)
                conv.dirty.add("identity")
        elif records or keystore.messages(last=1):
            raise KeystoreError(
                f"your keystore {keystore.path} has lost its identity record: restore it from a backup, "
                "or move the directory away to start over with a new identity"
            )
        else:
            conv = Conversations(Identity.generate(nick))
            keystore.save(conv.records())
        device = records.get(_DEVICE_RECORD, b"").decode(errors="replace")
        if not device:
            device = _new_device_id()
            keystore.save({_DEVICE_RECORD: device.encode()})
        keys = cls(conv, keystore, device=device)
        renaming = records.get(_RENAMING_RECORD)
        if renaming is not None:
            keys._renaming = renaming.decode(errors="replace")
        keys._import_legacy_received(records)
        with keys._lock:
            keys._save()  # what loading converted (pins from before per-pin records)
        return keys

    def _import_legacy_received(self, records: dict[str, bytes]) -> None:
        """Move the ids of whispers shown before the inbox existed into it, so that one the
        server delivers again is recognised (as an empty, shown message)."""
        names = [n for n in records if n == _LEGACY_RECEIVED or n.startswith(f"{_LEGACY_RECEIVED}:")]
        if not names:
            return
        shown = []
        for name in names:
            try:
                ids = json.loads(records[name])
                pairs = [key.split("/", 1) for key in ids]
                shown += [
                    StoredMessage(
                        direction=Direction.IN,
                        peer=p[0],
                        msg_id=p[1],
                        state=MessageState.SHOWN,
                        ts=0.0,
                        text="",
                    )
                    for p in pairs
                ]
            except (TypeError, ValueError, IndexError, AttributeError) as exc:
                raise KeystoreError(f"keystore record {name!r} is damaged: {exc}") from None
        self._storage.commit(dict.fromkeys(names), shown)

    @property
    def identity(self) -> Identity:
        return self._conv.identity

    @property
    def storage(self) -> Storage:
        """Where the keys and messages are kept (a `Keystore` on disk, or in memory)."""
        return self._storage

    def _save(self, messages: Iterable[StoredMessage] = (), *, durable: bool = True) -> None:
        """Commit what changed in the sessions, with `messages`, in one transaction.

        If the commit fails (a full disk), the sessions in memory fall back to what is on
        disk before the error goes on: a ratchet step that was not kept must not be taken
        either, or the whisper it decrypted could never be decrypted again when the
        server delivers it once more.
        """
        changed = self._conv.take_dirty()
        batch = list(messages)
        if not (changed or batch):
            return
        try:
            self._storage.commit(changed, batch, durable=durable)
        except KeystoreError:
            self._conv = self._conv.reloaded(self._storage.load())
            raise

    # -- login and prekeys --------------------------------------------------------------

    def login_proof(self, nick: str, nonce: bytes) -> bytes:
        return self._conv.identity.sign(login_message(nick, nonce, self._conv.identity.sig_key))

    # -- renaming -----------------------------------------------------------------------

    def rename_proof(self, old: str, new: str, login_nonce: bytes) -> bytes:
        """The `rename` frame's signature: our identity key over `rename_message`.

        Raises `ValueError` (so nothing is sent) if the keystore could not move to the
        new nick's place afterwards: another keystore is there already."""
        with self._lock:
            target = self._move_target(new)
        if target is not None and target.exists():
            raise ValueError(f"a keystore for {new} is already in {target}: move it away first")
        return self._conv.identity.sign(rename_message(old, new, login_nonce))

    def renaming(self) -> str | None:
        """The nick of a rename sent and not answered yet (by an earlier run, if it stopped
        before the server's answer), or None. Only a different nick than ours counts."""
        with self._lock:
            renaming = self._renaming
            if renaming is not None and fold_nick(renaming) == fold_nick(self._conv.identity.user):
                return None  # finished: moved and rebound, only the mark was left
            return renaming

    def begin_rename(self, new: str) -> None:
        """Record that a rename to `new` is about to be sent, before it is (flushed): if
        this process stops before the server's answer, the next start knows to finish it.
        Raises `KeystoreError` (not flushed: then only a restart cannot finish it); the
        rename is recorded in memory all the same, since `renamed` obeys only the nick
        recorded here."""
        with self._lock:
            self._renaming = new
            self._storage.commit({_RENAMING_RECORD: new.encode()})

    def rename_refused(self) -> None:
        """The server refused the rename (or it turned out never to have happened): forget
        it. Raises `KeystoreError`."""
        with self._lock:
            if self._renaming is None:
                return
            self._storage.commit({_RENAMING_RECORD: None}, durable=False)
            self._renaming = None

    def _move_target(self, new: str) -> Path | None:
        """Where a rename to `new` moves the keystore: beside it, named for `new`, when it
        sits in its nick's default place; None otherwise (a directory the user chose, or
        keys in memory). Under `_lock`."""
        storage = self._storage
        if isinstance(storage, Keystore) and storage.directory.name == fold_nick(self._conv.identity.user):
            return storage.directory.with_name(fold_nick(new))
        return None

    def renamed(self, new: str) -> list[PublishKeys]:
        """The server renamed us to `new` (reader thread): bind the identity to it, move the
        keystore to the new nick's place, and return a fresh bundle to publish (the
        server dropped the old one: its prekeys are signed for the old nick).

        The keystore moves first and the identity is rebound after, so a crash between
        leaves the keystore where `new` looks for it, and opening it finishes the rename
        (`in_keystore`). The move happens only when the keystore sits in the old nick's
        default place (a directory the user chose stays where it is). Sessions under the
        old nick end: a peer's client refuses a whisper whose sender is not the nick its
        session was made with, so the next whisper starts a new one. Raises
        `KeystoreError` if the keystore could not be moved or written; the identity is
        rebound in memory either way.
        """
        with self._lock:
            moved: KeystoreError | None = None
            old = self._conv.identity
            target = self._move_target(new)
            if target is not None and isinstance(self._storage, Keystore):
                try:
                    self._storage.move_to(target, new)
                except KeystoreError as exc:
                    moved = exc
            self._conv.identity = Identity(new, old.sig_private, old.dh)
            _forget_all_sessions(self._conv)
            self._conv.dirty.add("identity")
            secrets = self._conv.secrets
            if secrets.current_spk() is None:
                secrets.rotate_spk(self._clock())
            elif secrets.current_kpk() is None:
                secrets.rotate_kpk(self._clock())
            new_ids: list[int] = []
            new_kem_ids: list[int] = []
            if self._topups.take():
                new_ids = secrets.new_opks(OPK_TARGET)
                new_kem_ids = secrets.new_kopks(KOPK_TARGET) if self._kem_server else []
            self._conv.dirty.add("prekeys")
            self._save()
            if self._renaming is not None:
                # Not flushed: a mark left by a crash names our own nick, which is ignored.
                self._storage.commit({_RENAMING_RECORD: None}, durable=False)
                self._renaming = None
            if moved is not None:
                raise moved
            return self._publish(new_ids, new_kem_ids)

    def close(self) -> None:
        """Let go of the storage: a keystore is released for other processes (its lock).
        For whoever stops using this identity in this process (/identity in the chat
        screen); the object is not used after."""
        with self._lock:
            self._storage.close()

    def wait_published(self, timeout: float) -> bool:
        """Wait until the server holds this login's keys (its `prekey_count` says nothing
        is due); False if `timeout` passed first. For a program that logs in for one
        message (`securechat send`): leaving before its first publication is confirmed
        would leave peers with no keys to start a session with. Any thread but the reader."""
        return self._published.wait(timeout)

    def serve_kem(self, kem: bool) -> None:
        """Whether the server holds KEM prekeys (it speaks protocol version 3): told by
        the reader thread at each login, before the login's `prekey_count`."""
        with self._lock:
            self._kem_server = kem
            self._kpk_offered = 0
            self._published.clear()

    def publications(self, status: PrekeyCount) -> list[PublishKeys]:
        """What to publish given the server's view of our prekeys (none if nothing is due),
        in frames of at most `MAX_OPKS_PER_PUBLISH` one-time prekeys (or
        `MAX_KOPKS_PER_PUBLISH` one-time KEM prekeys) each. Called by the reader thread,
        for each `prekey_count` the server sends. The last-resort KEM prekey is made and
        rotated with the signed prekey (and made at once for a keystore from before
        version 2); one-time KEM prekeys are topped up as DH ones are, within the same
        budget, to a server that holds them.

        Only new one-time prekeys are sent, also to a server that says it has none of our
        keys (`spk_id` 0): re-sending ones it, or the server before a reset, may already
        have handed out could let two senders use the same one. New ones are made within
        the top-up budget only (`OPK_TOPUP_BURST`, `OPK_TOPUP_EVERY`), and making them
        deletes the oldest unused ones beyond `OPK_KEEP`.
        """
        with self._lock:
            secrets, now = self._conv.secrets, self._clock()
            current = secrets.current_spk()
            rotate = current is None or secrets.needs_rotation(now)
            if rotate:
                secrets.rotate_spk(now)
            if secrets.current_kpk() is None:
                secrets.rotate_kpk(now)
                rotate = True
            current, kpk = secrets.current_spk(), secrets.current_kpk()
            assert current is not None and kpk is not None
            kem = self._kem_server
            opks_low = status.spk_id == 0 or status.count < OPK_REFILL_BELOW
            kopks_low = kem and (status.kpk_id == 0 or status.kem_count < KOPK_REFILL_BELOW)
            new_ids: list[int] = []
            new_kem_ids: list[int] = []
            if (opks_low or kopks_low) and self._topups.take():
                if opks_low:
                    new_ids = secrets.new_opks(OPK_TARGET - (0 if status.spk_id == 0 else status.count))
                if kopks_low:
                    new_kem_ids = secrets.new_kopks(
                        KOPK_TARGET - (0 if status.kpk_id == 0 else status.kem_count)
                    )
            kpk_held = status.kpk_id == kpk.id or self._kpk_offered == kpk.id
            published = status.spk_id == current.id and (not kem or kpk_held)
            if not rotate and not new_ids and not new_kem_ids and published:
                self._published.set()
                return []
            self._conv.dirty.add("prekeys")
            self._save()
            return self._publish(new_ids, new_kem_ids)

    def _publish(self, new_ids: list[int], new_kem_ids: Sequence[int] = ()) -> list[PublishKeys]:
        """Frames publishing our identity, current signed prekey, last-resort KEM prekey
        (to a server that holds them), and the one-time prekeys `new_ids` and one-time
        KEM prekeys `new_kem_ids`, all signed for the nick the identity is bound to. Under
        `_lock`."""
        secrets = self._conv.secrets
        ident = self._conv.identity
        spk = secrets.signed_spk(ident)
        kpk = secrets.signed_kpk(ident) if self._kem_server and secrets.current_kpk() is not None else None
        if kpk is not None:
            self._kpk_offered = kpk.id
        opks = secrets.signed_opks(ident, new_ids)
        kopks = secrets.signed_kopks(ident, list(new_kem_ids)) if kpk is not None else ()
        # Both kinds together: a login's top-up is one frame (and one answer). The limits
        # are chosen so that a frame with the most of each fits a line.
        opk_step, kopk_step = MAX_OPKS_PER_PUBLISH, MAX_KOPKS_PER_PUBLISH
        frames = max(1, -(-len(opks) // opk_step), -(-len(kopks) // kopk_step))
        return [
            publication(
                Bundle(
                    ident.public(),
                    spk,
                    opks[n * opk_step : (n + 1) * opk_step],
                    kpk,
                    kopks[n * kopk_step : (n + 1) * kopk_step],
                )
            )
            for n in range(frames)
        ]

    # -- sending ------------------------------------------------------------------------

    def has_session(self, peer: str) -> bool:
        """Whether a whisper to `peer` can be sealed for every device of theirs we know of
        (and, for a whisper to someone else, every other device of ours) without fetching
        keys first."""
        with self._lock:
            targets = self._targets(peer)
            return bool(targets) and all(self._conv.has_session(nick, d) for nick, d in targets)

    def _targets(self, peer: str) -> list[tuple[str, str]]:
        """(nick, device) of every copy a whisper to `peer` is sealed as: each of `peer`'s
        devices ("" the identity's own), then each other device of ours, but those a
        fetch found no keys for lately (`_keyless`). Under `_lock`."""
        now = self._clock()
        return [t for t in self._all_targets(peer) if self._keyless.get(t, 0.0) <= now]

    def _all_targets(self, peer: str) -> list[tuple[str, str]]:
        me = self._conv.identity.user
        own = [d for d in self._conv.linked_devices(me) if d != self.device]
        if self._conv.linked:  # a linked device: the person's too
            own.insert(0, "")
        if fold_nick(peer) == fold_nick(me):
            return [(me, d) for d in own]
        return [(peer, d) for d in ["", *self._conv.linked_devices(peer)]] + [(me, d) for d in own]

    def linked_devices(self, peer: str) -> list[str]:
        """`peer`'s devices other than the identity's own, as the list we accepted names
        them (none known: [])."""
        with self._lock:
            return self._conv.linked_devices(peer)

    def unreachable(self, peer: str) -> list[tuple[str, str]]:
        """(nick, device) of the devices a whisper to `peer` would go to that have no
        session after a fetch (the server gave no keys for them): left out of whispers
        for `KEYLESS_FOR` seconds, then tried again."""
        with self._lock:
            missing = [
                (nick, d) for nick, d in self._targets(peer) if d and not self._conv.has_session(nick, d)
            ]
            for nick, d in missing:
                self._keyless[(nick, d)] = self._clock() + KEYLESS_FOR
            return missing

    def devices_to_fetch(self, peer: str) -> list[str]:
        """The nicks whose keys a whisper to `peer` needs fetched: `peer`'s if a device of
        theirs has no session, ours if one of our other devices has none."""
        with self._lock:
            return list(
                dict.fromkeys(nick for nick, d in self._targets(peer) if not self._conv.has_session(nick, d))
            )

    def start_session(self, keys: Keys) -> list[KnownKeyRenamed]:
        """Start sessions from fetched keys: with the device holding `keys.nick`'s identity
        key (its bundle must carry the key we pinned, or the first one we see), then, if
        they have a device list (signed by that key, not older than one we saw), with each
        other device it names that has no session yet. Raises `BundleError` (including a
        list that is not theirs or went back) or `IdentityChanged`. Returns what the user
        must be told: a first contact holding a key we know under another nick (its trust
        carried over)."""
        nick = keys.nick
        with self._lock:
            own = fold_nick(nick) == fold_nick(self._conv.identity.user)
            try:
                if (not own or self._conv.linked) and not self._conv.has_session(nick):
                    self._conv.start_session(nick, bundle_from_frame(nick, keys))
                if keys.devices:
                    try:
                        self._conv.accept_devices(nick, device_list_from(nick, keys.devices[0]))
                    except DeviceListError as exc:
                        raise BundleError(str(exc)) from None
                for other in keys.others:
                    if (own and other.device == self.device) or self._conv.has_session(nick, other.device):
                        continue
                    if other.device in self._conv.linked_devices(nick):
                        self._conv.start_session(nick, bundle_from_frame(nick, other), device=other.device)
            finally:
                self._save()  # a pending key change is recorded even when refused
            return self._known_key_renamed()

    def accept_own_devices(self, listed: DeviceListRecord) -> None:
        """Our device list, as the server sent it (`devices` at login and on a change):
        checked against our identity (or, on a linked device, our person's) like anyone's.
        Raises `BundleError` for a list that is not ours or went back."""
        with self._lock:
            me = self._conv.identity.user
            try:
                self._conv.own_device_list(me, device_list_from(me, listed))
            except DeviceListError as exc:
                raise BundleError(f"our own device list: {exc}") from None
            finally:
                self._save()

    def become_linked(self, person: PublicIdentity, listed: DeviceListRecord) -> None:
        """Make these keys a linked device of `person`, whose device list `listed` names
        this device with its key (checked, with `person`'s keys, before anything
        changes). Raises `ValueError` if it does not."""
        with self._lock:
            me = self._conv.identity
            if fold_nick(person.user) != fold_nick(me.user) or not person.binding_valid():
                raise ValueError("the identity the other device sent is not a valid one for this nick")
            try:
                checked = device_list_from(me.user, listed)
                checked.check(person.sig_key)
            except DeviceListError as exc:
                raise ValueError(str(exc)) from None
            if not checked.vouches(self.device, me.sig_key):
                raise ValueError("the device list the other device sent does not name this device")
            self._conv.set_person(person)
            self._conv.own_device_list(me.user, checked)
            self._save()

    @property
    def linked(self) -> bool:
        """True on a linked device (not the one holding the identity key)."""
        with self._lock:
            return self._conv.linked

    def own_devices(self) -> list[tuple[str, bool]]:
        """(device id, is it this one) of our devices as our list names them; this device
        alone if we have no list yet."""
        with self._lock:
            pin = self._conv.pin(self._conv.identity.user)
            if pin is None or pin.devices is None:
                return [(self.device, True)]
            mine = self._conv.identity.sig_key
            return [(d.device, d.sig_key == mine) for d in pin.devices.devices]

    def list_with(self, device: Device) -> DeviceListRecord:
        """Our device list with `device` added, signed (on the identity device only), at
        the next version. Raises `ValueError` if this is a linked device, or the id is
        taken by another key."""
        with self._lock:
            current = self._own_list()
            if any(d.device == device.device and d.sig_key != device.sig_key for d in current):
                raise ValueError(f"a device named {device.device} is linked already")
            if any(d.sig_key == device.sig_key for d in current):
                return self._signed_list(current)
            return self._signed_list((*current, device))

    def list_without(self, device: str) -> DeviceListRecord:
        """Our device list without `device`, signed, at the next version. Raises
        `ValueError` for this device itself, an unknown one, or on a linked device."""
        with self._lock:
            current = self._own_list()
            if device == self.device:
                raise ValueError("this device holds your identity key: it cannot be unlinked")
            if all(d.device != device for d in current):
                raise ValueError(f"you have no device {device}")
            return self._signed_list(tuple(d for d in current if d.device != device))

    def _own_list(self) -> tuple[Device, ...]:
        """Our devices as listed (this one alone without a list); under `_lock`. Raises
        `ValueError` on a linked device: only the identity key signs lists."""
        if self._conv.linked:
            raise ValueError("only the device holding your identity key can link or unlink devices")
        pin = self._conv.pin(self._conv.identity.user)
        if pin is None or pin.devices is None:
            return (Device(self.device, self._conv.identity.sig_key),)
        return pin.devices.devices

    def _signed_list(self, devices: tuple[Device, ...]) -> DeviceListRecord:
        """`devices` signed at the version after the newest we saw; under `_lock`."""
        # The version is kept as used before the list leaves: a publish that fails is never
        # followed by another list under the same version (e2e.md, "Device lists").
        signed = sign_device_list(self._conv.identity, self._conv.next_devices_version(), devices)
        self._save()
        return device_list_record(signed)

    def list_behind(self, peer: str, version: int) -> bool:
        """True if the server holds a newer device list of `peer`'s (`version`, from a
        `stored` status) than the newest we accepted: their keys must be fetched again."""
        with self._lock:
            pin = self._conv.pin(peer)
            return pin is not None and version > pin.max_devices_version

    def drop_unlisted(self, peer: str) -> list[Whisper]:
        """Forget the unconfirmed copies of whispers to devices of `peer` their list no
        longer names (the server refuses them); the frames dropped."""
        with self._lock:
            listed = set(self._conv.linked_devices(peer))
            sending = self._storage.messages(
                direction=Direction.OUT, states=frozenset({MessageState.SENDING})
            )
            gone = [
                m
                for m in sending
                if fold_nick(_unfiled(m.peer)[0]) == fold_nick(peer)
                and _unfiled(m.peer)[1]
                and _unfiled(m.peer)[1] not in listed
            ]
            # Out of the outbox: a copy the user never sees, marked with the one state
            # nothing sends again (failed would be resent).
            self._save([m.with_state(MessageState.DELIVERED) for m in gone], durable=False)
        return [_frame(m) for m in gone]

    def seal_missing(self, peer: str, msg_id: str) -> list[Whisper]:
        """Copies of whisper `msg_id` to `peer` for the devices (theirs, and our other
        ones) that had no session when it was sealed, now that they have one: so that a
        device linked meanwhile gets it too."""
        with self._lock:
            main = self._storage.message(Direction.OUT, peer, msg_id)
            if main is None:
                return []
            me = self._conv.identity.user
            kept = [
                self._copy(
                    nick,
                    device,
                    main.text,
                    msg_id,
                    to=peer if fold_nick(nick) == fold_nick(me) else "",
                    resends=0,
                )
                for nick, device in self._targets(peer)
                if self._storage.message(Direction.OUT, _filed(nick, device), msg_id) is None
                and self._conv.has_session(nick, device)
            ]
            self._save(kept)
        return [_frame(m) for m in kept]

    def device_of(self, peer: str, device: str) -> str:
        """`device` of `peer` as the outbox files it: "" for the identity's own device
        (the server names it by its listed id), the id for a linked one."""
        with self._lock:
            pin = self._conv.pin(peer)
            return device if pin is None else pin.slot_device(device)

    def is_contact(self, peer: str) -> bool:
        """Whether `peer` has a settled pin of ours (see `Conversations.is_contact`)."""
        with self._lock:
            return self._conv.is_contact(peer)

    def follow_rename(self, old: str, keys: Keys) -> list[KnownKeyRenamed | KeyChanged | RenameUnconfirmed]:
        """The server said contact `old` is now `keys.nick`; `keys` are that nick's, fetched
        since. What to tell the user: `KnownKeyRenamed` if the nick holds `old`'s key (its
        trust carried), `KeyChanged` (with `renamed_from`) if the nick is new to us with
        another key (nothing is sent to it until /trust or /verify), `RenameUnconfirmed`
        if it is someone else we know. Raises `BundleError` (keys that do not verify:
        nothing changed) and `KeystoreError`."""
        new = keys.nick
        with self._lock:
            try:
                try:
                    same = self._conv.follow_rename(old, bundle_from_frame(keys.nick, keys))
                finally:
                    self._save()
            except IdentityChanged as exc:
                return [
                    KeyChanged(
                        peer=new,
                        old_fingerprint=exc.pinned_fingerprint,
                        new_fingerprint=exc.new_fingerprint,
                        held=0,
                        renamed_from=old,
                    )
                ]
            told: list[KnownKeyRenamed | KeyChanged | RenameUnconfirmed] = [*self._known_key_renamed()]
            pin = self._conv.pin(new)
            if told or pin is None:
                return told
            if same:  # known under the new nick already: nothing carried, the same person
                return [KnownKeyRenamed(old=old, new=new, trust=pin.trust.value)]
            return [
                RenameUnconfirmed(
                    old=old, new=new, reason=f"{new} holds another key than {old}'s: {new} is someone else"
                )
            ]

    def _known_key_renamed(self) -> list[KnownKeyRenamed]:
        """The carry-overs `Conversations` made since the last call, as events; under `_lock`."""
        return [KnownKeyRenamed(old=c.old, new=c.new, trust=c.trust.value) for c in self._conv.take_carried()]

    def forget_sessions(self, peer: str) -> None:
        with self._lock:
            self._conv.forget_sessions(peer)
            self._save()

    def seal_all(self, peer: str, text: str, msg_id: str, *, resends: int = 0) -> list[Whisper]:
        """Encrypt `text` as message `msg_id` once for each device of `peer` and each
        other device of ours (`_targets`; one with no session yet is skipped: it has not
        published keys, so nothing can reach it), and keep every copy in the outbox
        (state SENDING), committed with the ratchet steps, so they can be sent again
        after any reconnect or restart. The first is `peer`'s identity device's, the one
        the user sees; the others are filed as "nick/device". Raises `IdentityChanged`
        or `NotTrusted` (no session with `peer`), and `ValueError` for a text too long
        once encoded (JSON escapes can grow it up to six times), before any ratchet step
        is taken."""
        plaintext, copy = _plaintext(text), _plaintext(text, to=peer)
        if len(pad(copy)) + AEAD_TAG_BYTES > MAX_CIPHERTEXT_BYTES:
            raise ValueError(
                f"text: too long to whisper ({len(plaintext)} bytes once encoded, at most "
                f"{MAX_CIPHERTEXT_BYTES - AEAD_TAG_BYTES - PAD_BLOCK - len(copy) + len(plaintext)}; "
                "quotes, backslashes and control characters count more than once)"
            )
        with self._lock:
            me = self._conv.identity.user
            kept: list[StoredMessage] = []
            for nick, device in self._targets(peer):
                if (nick, device) != (peer, "") and not self._conv.has_session(nick, device):
                    continue
                mine = fold_nick(nick) == fold_nick(me)
                kept.append(self._copy(nick, device, text, msg_id, to=peer if mine else "", resends=resends))
            self._save(kept)
        return [_frame(m) for m in kept]

    def _copy(
        self, nick: str, device: str, text: str, msg_id: str, *, to: str, resends: int
    ) -> StoredMessage:
        """One copy of whisper `msg_id`, encrypted for `nick`'s `device`, as the outbox
        keeps it (SENDING); `to` names the recipient when it is a copy for another device
        of ours. Under `_lock`; the caller saves it."""
        header, ciphertext = self._conv.encrypt(nick, _plaintext(text, to=to), device=device)
        return StoredMessage(
            direction=Direction.OUT,
            peer=_filed(nick, device),
            msg_id=msg_id,
            state=MessageState.SENDING,
            ts=self._clock(),
            text=text,
            header=header,
            ciphertext=ciphertext,
            resends=resends,
            to=to,
        )

    def unsent(self) -> list[Whisper]:
        """Whispers in the outbox the server has not confirmed, oldest first."""
        with self._lock:
            kept = self._storage.messages(direction=Direction.OUT, states=frozenset({MessageState.SENDING}))
        return [_frame(m) for m in kept]

    def sent_status(self, status: WhisperStatus) -> StoredMessage | None:
        """Record what the server says became of a whisper; the message as it is now, or
        None if it is not ours (or already further along: a late "stored" after "delivered")."""
        state = _SENT_STATES[status.status]
        with self._lock:
            pin = self._conv.pin(status.to)
            device = status.device if pin is None else pin.slot_device(status.device)
            kept = self._storage.message(Direction.OUT, _filed(status.to, device), status.id)
            if kept is None or kept.state is MessageState.DELIVERED:
                return None  # not ours, or read already: nothing later can change that
            if state is MessageState.STORED and kept.state is not MessageState.SENDING:
                return None
            updated = [kept.with_state(state, status.reason)]
            if device and state is MessageState.DELIVERED:
                # Read on one of their devices: the whisper the user sees is delivered.
                main = self._storage.message(Direction.OUT, status.to, status.id)
                # Only a copy the server holds: a failed or unsent one must still be sent.
                if main is not None and main.state is MessageState.STORED:
                    updated.append(main.with_state(MessageState.DELIVERED))
            # Not flushed: if this mark is lost, the whisper is sent again and the
            # server or the recipient drops the repeat by its id.
            self._save(updated, durable=False)
            return updated[-1]

    def failed_to(self, peer: str) -> list[StoredMessage]:
        """Copies of whispers to `peer` (to any device of theirs) that their client could
        not decrypt, oldest first."""
        with self._lock:
            failed = [
                m
                for device in ["", *self._conv.linked_devices(peer)]
                for m in self._storage.messages(
                    direction=Direction.OUT,
                    states=frozenset({MessageState.FAILED}),
                    peer=_filed(peer, device),
                )
            ]
        return sorted(failed, key=lambda m: m.ts)

    def reseal(self, failed: StoredMessage) -> Whisper:
        """Encrypt a failed whisper's text again in the current session with the device it
        was for, under the same message id (that device never read it), back to SENDING."""
        nick, device = _unfiled(failed.peer)
        with self._lock:
            kept = self._copy(
                nick, device, failed.text, failed.msg_id, to=failed.to, resends=failed.resends + 1
            )
            self._save([kept])
        return _frame(kept)

    def history(self, peer: str, last: int) -> list[StoredMessage]:
        """The newest `last` whispers with `peer`, both ways, oldest first."""
        with self._lock:
            return self._storage.messages(peer=peer, last=last)

    # -- receiving ----------------------------------------------------------------------

    def receive(self, delivery: Delivery) -> Incoming:
        """Decrypt a delivery and keep it. Held (not acked) when the sender's key changed;
        acked otherwise: as read once it is in the inbox, as failed (with a coarse reason)
        when it cannot be decrypted (it never will be)."""
        out = Incoming()
        with self._lock:
            self._receive_locked(delivery, out)
        return out

    def _receive_locked(self, delivery: Delivery, out: Incoming) -> None:
        if self._storage.message(Direction.IN, delivery.sender, delivery.msg_id) is not None:
            out.acks.append(Ack(id=delivery.id))  # kept before: the server just did not hear our ack
            return
        try:
            whisper = self._conv.decrypt(
                delivery.sender, delivery.header, delivery.ciphertext, device=delivery.device
            )
        except UnknownDevice:
            # Nothing changed: kept for the server ("held": it delivers it again at the
            # next login) and here until the sender's keys, with their list, are fetched.
            out.acks.append(Ack(id=delivery.id, outcome="held"))
            waiting = self._unknown.setdefault(fold_nick(delivery.sender), [])
            if not any(d.id == delivery.id for d in waiting) and len(waiting) < HELD_PER_PEER:
                waiting.append(delivery)
            if fold_nick(delivery.sender) not in map(fold_nick, out.fetch):
                out.fetch.append(delivery.sender)
            return
        except IdentityChanged as exc:
            self._save()
            held = self._held.get(fold_nick(delivery.sender), [])
            # "held": the server keeps it (and delivers it again at the next login), but
            # goes on with the rest of a backlog it hands out page by page.
            out.acks.append(Ack(id=delivery.id, outcome="held"))
            if any(d.msg_id == delivery.msg_id for d in held):
                return  # held already, and the user was told: no second alarm
            if len(held) >= HELD_PER_PEER or self._held_count >= HELD_TOTAL:
                return  # not kept here: it comes again at the next login
            held.append(delivery)
            self._held[fold_nick(delivery.sender)] = held
            self._held_count += 1
            out.events.append(
                KeyChanged(
                    peer=delivery.sender,
                    old_fingerprint=exc.pinned_fingerprint,
                    new_fingerprint=exc.new_fingerprint,
                    held=len(held),
                )
            )
            return
        except DecryptionError as exc:
            # Bad padding authenticated: a faulty client, not tampering (the header, which
            # `_failure_class` reads, cannot tell).
            reason = "malformed" if isinstance(exc, MalformedPlaintext) else self._failure_class(delivery)
            out.events.append(WhisperFailed(sender=delivery.sender, reason=_FAILURE_TEXT[reason]))
            out.acks.append(Ack(id=delivery.id, outcome="failed", reason=reason))
            return
        if fold_nick(delivery.sender) == fold_nick(self._conv.identity.user):
            self._copied(delivery, whisper.plaintext, out)
            return
        text = _text_of(whisper.plaintext)
        kept = StoredMessage(
            direction=Direction.IN,
            peer=whisper.sender.user,
            msg_id=delivery.msg_id,
            state=MessageState.NEW if text is not None else MessageState.SHOWN,
            ts=delivery.ts,
            text=text or "",
            trust=whisper.trust.value,
            fingerprint=whisper.sender.fingerprint(),
        )
        self._save([kept])  # the session step and the message, before the server may forget it
        if text is None:
            out.events.append(WhisperFailed(sender=delivery.sender, reason=_FAILURE_TEXT["malformed"]))
            out.acks.append(Ack(id=delivery.id, outcome="failed", reason="malformed"))
            return
        out.acks.append(Ack(id=delivery.id))
        out.events += self._known_key_renamed()  # told before the whisper is shown
        if whisper.new_session and not whisper.post_quantum:
            out.events.append(NotPostQuantum(peer=whisper.sender.user))
        out.events.append(_received(kept, replay=False))

    def _copied(self, delivery: Delivery, plaintext: bytes, out: Incoming) -> None:
        """A copy of what another of our devices sent: kept with our own whispers to its
        recipient (as stored: the server has it), and shown. Under `_lock`."""
        copy = _copy_of(plaintext)
        if copy is None:
            self._save()
            out.events.append(WhisperFailed(sender=delivery.sender, reason=_FAILURE_TEXT["malformed"]))
            out.acks.append(Ack(id=delivery.id, outcome="failed", reason="malformed"))
            return
        to, text = copy
        kept = StoredMessage(
            direction=Direction.OUT,
            peer=to,
            msg_id=delivery.msg_id,
            state=MessageState.STORED,
            ts=delivery.ts,
            text=text,
        )
        # And a mark under our own nick, which `_receive_locked` finds if the server
        # delivers the copy again (its session has moved on: it would not decrypt). It
        # is NEW until the program has had the copy, like a received whisper: a client
        # killed between this commit and showing it shows it at the next start, as a
        # replay (`unshown`), instead of never.
        seen = StoredMessage(
            direction=Direction.IN,
            peer=delivery.sender,
            msg_id=delivery.msg_id,
            state=MessageState.NEW,
            ts=delivery.ts,
            text=text,
            to=to,
        )
        fresh = self._storage.message(Direction.OUT, to, delivery.msg_id) is None
        self._save([kept, seen] if fresh else [seen])
        out.acks.append(Ack(id=delivery.id))
        out.events.append(
            WhisperCopied(to=to, text=text, msg_id=delivery.msg_id, ts=delivery.ts, device=delivery.device)
        )

    def retry_unknown(self, sender: str) -> Incoming:
        """Read again the whispers held from devices of `sender` we did not know, once
        their keys were fetched; those still unknown stay held (on the server)."""
        out = Incoming()
        with self._lock:
            for delivery in self._unknown.pop(fold_nick(sender), []):
                self._receive_locked(delivery, out)
        out.fetch = []  # asked once: what is still unknown waits for the next login
        return out

    def _failure_class(self, delivery: Delivery) -> str:
        """Why a whisper could not be decrypted, in the coarse classes of `FAILURE_REASONS`:
        read off the header (which the server sees too), never off the decryption."""
        try:
            header = parse_header(delivery.header, delivery.sender)
        except DecryptionError:
            return "malformed"
        if self._conv.knows_session(header.sid):
            return "auth-failed"  # tampered with, or replayed, in a session we have
        setup = header.setup
        if setup is None:
            return "no-session"
        # Our prekeys under those ids may be gone, or other keys than the sender used (we
        # made new ones since): either way the setup does not reach the session it names.
        try:
            keys, _ = respond(self._conv.identity, self._conv.secrets, setup)
        except DecryptionError:
            return "unknown-prekey"
        if keys.sid != header.sid:
            return "unknown-prekey"
        return "auth-failed"

    def unshown(self) -> list[WhisperReceived | WhisperCopied]:
        """Whispers and copies kept but not yet confirmed shown (the last run ended
        first), as replays. A copy's mark is the one with a recipient (`to`)."""
        with self._lock:
            kept = self._storage.messages(direction=Direction.IN, states=frozenset({MessageState.NEW}))
        return [
            WhisperCopied(to=m.to, text=m.text, msg_id=m.msg_id, ts=m.ts, device="", replay=True)
            if m.to
            else _received(m, replay=True)
            for m in kept
        ]

    def mark_shown(self, shown: Iterable[WhisperReceived | WhisperCopied]) -> None:
        """Record that the user or program has had these whispers and copies."""
        with self._lock:
            marks = []
            me = self._conv.identity.user
            for item in shown:
                sender = item.sender if isinstance(item, WhisperReceived) else me
                kept = self._storage.message(Direction.IN, sender, item.msg_id)
                if kept is not None and kept.state is MessageState.NEW:
                    marks.append(kept.with_state(MessageState.SHOWN))
            # Not flushed: a lost mark shows the whisper once more, as a replay.
            self._save(marks, durable=False)

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
        released = self._held.pop(fold_nick(peer), [])
        self._held_count -= len(released)
        for delivery in released:
            self._receive_locked(delivery, out)
        return out

    def safety_number(self, peer: str) -> str:
        with self._lock:
            return self._conv.safety_number(peer)

    def peer_info(self, peer: str) -> PeerInfo | None:
        """What we know of `peer`'s keys, or None if never seen."""
        with self._lock:
            pin = self._conv.pin(peer)
            if pin is None:
                return None
            return PeerInfo(pin.identity, pin.trust, pin.pending, self._conv.session_post_quantum(peer))


@dataclass(frozen=True)
class PeerInfo:
    """`/whois` for a peer: the pinned identity, its trust, a changed identity awaiting a
    decision, and whether the session a whisper would go in was set up post-quantum
    (None: no session yet; the next one will be)."""

    identity: PublicIdentity
    trust: Trust
    pending: PublicIdentity | None
    post_quantum: bool | None


#: What the recipient is told about a whisper it could not decrypt, by failure class.
_FAILURE_TEXT = {
    "no-session": "could not be decrypted: it belongs to a session this device does not have "
    "(the sender will be asked to start a new one)",
    "unknown-prekey": "could not be decrypted: it was set up with keys this device no longer has "
    "(the sender will be asked to start a new session)",
    "auth-failed": "could not be authenticated (tampered with, or not from who the server says)",
    "malformed": "authenticated but malformed",
}


def _forget_all_sessions(conv: Conversations) -> None:
    """End every session (after a rename: they were made under the old nick). Pins stay."""
    for peer in list(conv.pins):
        conv.forget_sessions(peer)


def _new_device_id() -> str:
    """A device id a person can read and type in /unlink: this machine's name (what is
    left of it in a-z 0-9 -) and 4 random hex digits, so that two keystores on one
    machine differ."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:20] or "device"
    return f"{name}-{secrets.token_hex(2)}"


def _plaintext(text: str, *, to: str = "") -> bytes:
    """{"text": TEXT}, or for the copy of a whisper to `to` sealed for another of our own
    devices, {"text": TEXT, "to": NICK} (docs/e2e.md, "Plaintext")."""
    body: dict[str, str] = {"text": text}
    if to:
        body["to"] = to
    return json.dumps(body, ensure_ascii=False).encode()


def _filed(nick: str, device: str) -> str:
    """The outbox's peer for a copy of a whisper to `nick`'s `device`: the nick for the
    identity's own device (as before devices), "nick/device" for a linked one."""
    return f"{nick}/{device}" if device else nick


def _unfiled(peer: str) -> tuple[str, str]:
    nick, _, device = peer.partition("/")
    return nick, device


def _frame(kept: StoredMessage) -> Whisper:
    nick, device = _unfiled(kept.peer)
    return Whisper(to=nick, id=kept.msg_id, header=kept.header, ciphertext=kept.ciphertext, device=device)


def _received(kept: StoredMessage, *, replay: bool) -> WhisperReceived:
    return WhisperReceived(
        sender=kept.peer,
        text=kept.text,
        trust=kept.trust,
        fingerprint=kept.fingerprint,
        msg_id=kept.msg_id,
        ts=kept.ts,
        replay=replay,
    )


def _copy_of(plaintext: bytes) -> tuple[str, str] | None:
    """(to, text) of a copy one of our devices sealed for another, None if malformed."""
    try:
        obj = json.loads(plaintext)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    to, text = obj.get("to"), obj.get("text")
    if not (isinstance(to, str) and is_valid_nick(to) and isinstance(text, str) and text):
        return None
    return to, text


def _text_of(plaintext: bytes) -> str | None:
    try:
        obj = json.loads(plaintext)
    except ValueError:
        return None
    text = obj.get("text") if isinstance(obj, dict) else None
    return text if isinstance(text, str) and text else None
