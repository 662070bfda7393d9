"""Linking a new device to a person, and unlinking one (docs/usage.md, "Linked devices").

The short-code exchange itself is e2e/pairing.py's; this module carries it over the
server in `link` frames and acts on its outcome:

- the **new** device (`link_new_device`) logs in as a guest under a temporary nick, sends
  its commitment to the person's identity device, shows the first code, asks for the
  second, and becomes a linked device of the person (`WhisperKeys.become_linked`);
- the **identity device** (`LinkOffer`, driven by `accept_link` or by the chat client's
  `/link`) answers one commitment, asks for the first code, signs a device list naming the
  new device, publishes it, seals the person's public keys and that list for the new
  device, and shows the second code;
- `unlink` publishes a list without a device: the server logs it out and forgets its
  mailbox; peers stop encrypting to it once they see the list.

The payloads sealed by the pairing: from the new device LP(device id, device Ed25519 key);
from the identity device LP(IK_sig, IK_dh, dh_sig, list) where list is the `DeviceListRecord`
as its JSON object. Both are opaque to the server.
"""

from __future__ import annotations

import contextlib
import enum
import json
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator

from ..e2e.devices import Device, DeviceListError
from ..e2e.identity import PublicIdentity
from ..e2e.pairing import ExistingDevice, NewDevice, PairingError, WrongCode
from ..e2e.primitives import lp, unlp
from ..protocol import (
    DeviceListRecord,
    Devices,
    Error,
    Link,
    PublishDevices,
    RemoteProtocolError,
    decode_line,
    fold_nick,
)
from .session import Client, Disconnected
from .whispers import WhisperKeys

__all__ = [
    "LinkDesk",
    "LinkError",
    "LinkOffer",
    "OfferState",
    "accept_link",
    "devices_lines",
    "link_new_device",
    "publish_watched",
    "unlink",
]

#: How long the other device may take to answer a step (a person typing a code included).
STEP_TIMEOUT = 300.0


class LinkError(Exception):
    """The linking did not happen; `str()` says why, for the person."""


def _wait_link(
    client: Client, peer: str | None, pairing: str | None, steps: set[str], timeout: float
) -> Link:
    """The next `link` frame of `pairing` (any, if None) from `peer` (anyone, if None) at
    one of `steps`, skipping other events; raises `LinkError` for an abort, a refusal
    naming the pairing, the end of the connection, or `timeout`."""
    for event in _events_until(client, timeout, "the other device did not answer in time"):
        if isinstance(event, Error) and pairing is not None and event.ref == pairing:
            raise LinkError(event.reason)
        if isinstance(event, Error) and event.fatal:
            raise LinkError(event.reason)
        if not isinstance(event, Link):
            if isinstance(event, Disconnected):
                raise LinkError("the connection ended")
            continue
        if pairing is not None and event.pairing != pairing:
            continue
        if peer is not None and fold_nick(event.peer) != fold_nick(peer):
            continue
        if event.step == "abort":
            raise LinkError("the other device ended the linking")
        if event.step in steps:
            return event
    raise AssertionError("unreachable: _events_until ends by raising")


def _events_until(client: Client, timeout: float, late: str) -> Iterator[object]:
    """The client's events (read here: for a program that reads none meanwhile) until
    `timeout` seconds have passed, then `LinkError(late)`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(TimeoutError):
            yield client.next_event(timeout=left)
    raise LinkError(late)


def link_new_device(
    client: Client,
    person: str,
    keys: WhisperKeys,
    show_code: Callable[[str], None],
    ask_code: Callable[[int], str],
    timeout: float = STEP_TIMEOUT,
) -> list[str]:
    """Link the device whose keys are `keys` (a new keystore for nick `person`) to
    `person`, over `client` (a guest connection of this device). `show_code(code)` shows
    the first code (typed on the identity device); `ask_code(tries_left)` asks for the
    second (shown there once the first was right). Returns the device ids of the list it
    joined. Raises `LinkError`; a wrong code makes no link."""
    pairing = secrets.token_hex(8)
    new = NewDevice()
    client.send(Link(peer=person, pairing=pairing, step="commit", data=new.commitment))
    try:
        answer = _wait_link(client, person, pairing, {"answer"}, timeout)
        a_public, sealed = new.reveal(answer.data, lp(keys.device, keys.identity.sig_key))
        client.send(Link(peer=person, pairing=pairing, step="reveal", data=lp(a_public, sealed)))
        show_code(new.code)
        result = _wait_link(client, person, pairing, {"result"}, timeout)
        while True:
            try:
                new.confirm(ask_code(new.tries_left))
                break
            except WrongCode as exc:
                if exc.attempts_left == 0:
                    raise LinkError("wrong code three times: nothing was linked") from None
        person_identity, record = _parse_answer(person, new.open_answer(result.data))
    except PairingError as exc:
        _abort(client, person, pairing)
        raise LinkError(str(exc)) from None
    except LinkError:
        _abort(client, person, pairing)
        raise
    try:
        keys.become_linked(person_identity, record)
    except ValueError as exc:
        raise LinkError(str(exc)) from None
    return [d.device for d in record.devices]


def _abort(client: Client, peer: str, pairing: str) -> None:
    with contextlib.suppress(ConnectionError):
        client.send(Link(peer=peer, pairing=pairing, step="abort"))


def _parse_answer(person: str, opened: bytes) -> tuple[PublicIdentity, DeviceListRecord]:
    try:
        sig_key, dh_key, dh_sig, listed = unlp(opened, 4)
        record = _record_from_json(listed)
    except (ValueError, RemoteProtocolError) as exc:
        raise LinkError(f"the other device's answer is malformed: {exc}") from None
    return PublicIdentity(person, sig_key, dh_key, dh_sig), record


def _record_from_json(data: bytes) -> DeviceListRecord:
    """A `DeviceListRecord` from its JSON object, through the wire decoder's checks."""
    line = b'{"type":"publish_devices","devices":' + data + b"}"
    event = decode_line(line)
    if not isinstance(event, PublishDevices):
        raise ValueError("not a device list")
    return event.devices


class OfferState(enum.Enum):
    """Where the identity device's side of one linking stands."""

    ANSWERED = "answered"  # a commitment came, our key went back; waiting for the reveal
    AWAITING_CODE = "awaiting-code"  # revealed: the person must type the new device's code
    DONE = "done"  # linked: the second code is shown
    FAILED = "failed"


class LinkOffer:
    """The identity device's side of one linking, fed the `link` frames of its pairing
    and the codes the person types. Not thread-safe: one caller (the chat client's main
    thread, or `accept_link`)."""

    def __init__(
        self,
        client: Client,
        keys: WhisperKeys,
        commit: Link,
        publish: Callable[[DeviceListRecord], None] | None = None,
    ) -> None:
        """Answer `commit`. `publish(record)` sends a new device list and returns once the
        server holds it (default: reading the client's events for its `devices`, for a
        program that reads no events meanwhile)."""
        self._client, self._keys = client, keys
        self._publish = publish or (lambda record: _publish(client, record, 10.0))
        self.peer, self.pairing = commit.peer, commit.pairing
        self.state = OfferState.ANSWERED
        try:
            self._existing = ExistingDevice(commit.data)
        except PairingError:
            self.state = OfferState.FAILED
            raise
        client.send(Link(peer=self.peer, pairing=self.pairing, step="answer", data=self._existing.answer))
        #: The second code, once the first was right (to show the person).
        self.confirmation = ""
        #: The id of the device linked, once linked.
        self.device = ""

    def reveal(self, event: Link) -> None:
        """The new device's reveal came: the person must now type its code."""
        try:
            a_public, sealed = unlp(event.data, 2)
            self._existing.receive_reveal(bytes(a_public), bytes(sealed))
        except (ValueError, PairingError) as exc:
            self._fail()
            raise LinkError(f"the new device's message is broken: {exc}") from None
        self.state = OfferState.AWAITING_CODE

    def confirm(self, typed: str) -> str:
        """The person typed the new device's code: on the right one, sign and publish a
        list naming the new device, send it its answer, and return the second code to
        show. Raises `WrongCode` (tries may be left) or `LinkError`."""
        if self.state is not OfferState.AWAITING_CODE:
            raise LinkError("no code is expected now")
        try:
            payload = self._existing.confirm(typed)
        except WrongCode as exc:
            if exc.attempts_left == 0:
                self._fail()
            raise
        except PairingError as exc:
            self._fail()
            raise LinkError(str(exc)) from None
        try:
            device_bytes, key = unlp(payload, 2)
            device = Device(device_bytes.decode("ascii"), bytes(key))
            record = self._keys.list_with(device)
        except (ValueError, UnicodeDecodeError, DeviceListError) as exc:
            self._fail()
            raise LinkError(f"cannot add that device: {exc}") from None
        self._publish(record)
        person = self._keys.identity.public()
        listed = json.dumps(record.to_dict(), separators=(",", ":")).encode()
        sealed = self._existing.seal_answer(lp(person.sig_key, person.dh_key, person.dh_sig, listed))
        self._client.send(Link(peer=self.peer, pairing=self.pairing, step="result", data=sealed))
        self.state, self.device = OfferState.DONE, device.device
        self.confirmation = self._existing.confirmation
        return self.confirmation

    def _fail(self) -> None:
        self.state = OfferState.FAILED
        _abort(self._client, self.peer, self.pairing)


def accept_link(
    client: Client,
    keys: WhisperKeys,
    ask_code: Callable[[int], str],
    show_code: Callable[[str], None],
    timeout: float = STEP_TIMEOUT,
) -> str:
    """On the identity device: wait for one new device's commitment, link it, and return
    its device id. `ask_code(tries_left)` asks for the code the new device shows;
    `show_code(code)` shows the second code to type there. Raises `LinkError`."""
    commit = _wait_link(client, None, None, {"commit"}, timeout)
    offer = LinkOffer(client, keys, commit, lambda record: _publish(client, record, timeout))
    offer.reveal(_wait_link(client, offer.peer, offer.pairing, {"reveal"}, timeout))
    tries = 3
    while True:
        try:
            show_code(offer.confirm(ask_code(tries)))
            return offer.device
        except WrongCode as exc:
            tries = exc.attempts_left
            if tries == 0:
                raise LinkError("wrong code three times: nothing was linked") from None


def unlink(client: Client, keys: WhisperKeys, device: str, timeout: float = 10.0) -> None:
    """On the identity device: publish a device list without `device`. Raises `LinkError`."""
    try:
        record = keys.list_without(device)
    except ValueError as exc:
        raise LinkError(str(exc)) from None
    _publish(client, record, timeout)


def _publish(client: Client, record: DeviceListRecord, timeout: float) -> None:
    """Send `record` and wait (reading the client's events) until the server has it: its
    `devices` comes back."""
    client.send(PublishDevices(devices=record))
    for event in _events_until(client, timeout, "the server did not confirm the new device list"):
        if isinstance(event, Devices) and event.devices.version == record.version:
            return
        if isinstance(event, Error) and not event.ref:
            raise LinkError(f"the server refused the device list: {event.reason}")


def publish_watched(client: Client, record: DeviceListRecord, timeout: float = 10.0) -> None:
    """Send `record` and wait until the server holds it, seeing the events another thread
    reads (the chat screen's). Raises `LinkError`."""
    with client.watch_events() as seen:
        client.send(PublishDevices(devices=record))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = seen.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(event, Devices) and event.devices.version == record.version:
                return
            if isinstance(event, Error) and not event.ref:
                raise LinkError(f"the server refused the device list: {event.reason}")
    raise LinkError("the server did not confirm the new device list")


#: How long `/link` waits for a new device's first message.
ARMED_FOR = 300.0


class LinkDesk:
    """The chat screen's side of linking and unlinking (`/link`, `/unlink`, `/devices`):
    what each command and each `link` frame does, as lines to show. `on_link` is called
    by the screen's event thread, the commands by its input thread: every field is
    guarded by `_lock`."""

    def __init__(
        self, client: Client, keys: WhisperKeys, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client, self._keys, self._clock = client, keys, clock
        self._lock = threading.Lock()
        self._armed_until = 0.0  # guarded by _lock
        self._offer: LinkOffer | None = None  # guarded by _lock

    def link(self, arg: str) -> list[str]:
        """`/link` (wait for a new device) or `/link CODE` (the code it shows)."""
        code = arg.strip()
        if self._keys.linked:
            return ["! only the device holding your identity key can link devices: type /link there"]
        if not code:
            with self._lock:
                self._armed_until, self._offer = self._clock() + ARMED_FOR, None
            me = self._keys.identity.user
            return [
                f"* waiting for a new device for {ARMED_FOR / 60:.0f} minutes: on it, run",
                f"*     securechat link --nick {me}",
                "* then type /link CODE here with the code it shows",
            ]
        with self._lock:
            offer = self._offer
        if offer is None or offer.state is not OfferState.AWAITING_CODE:
            return ["! no new device is waiting: type /link first, then run securechat link on it"]
        try:
            second = offer.confirm(code)
        except WrongCode as exc:
            if exc.attempts_left:
                return [f"! wrong code ({exc.attempts_left} more tries): type the code the new device shows"]
            with self._lock:
                self._offer = None
            return ["! wrong code three times: nothing was linked"]
        except LinkError as exc:
            with self._lock:
                self._offer = None
            return [f"! linking failed: {exc}"]
        with self._lock:
            self._offer, self._armed_until = None, 0.0
        return [
            f"* linked device {offer.device}. On the new device, type this code: {second[:3]} {second[3:]}",
        ]

    def on_link(self, event: Link) -> list[str]:
        """A `link` frame came (the screen's event thread)."""
        with self._lock:
            offer, armed = self._offer, self._clock() < self._armed_until
        if event.step == "commit":
            if not armed or (offer is not None and offer.state is not OfferState.FAILED):
                return []  # nobody asked for it: a stranger's (or a second) device is ignored
            try:
                new_offer = LinkOffer(
                    self._client, self._keys, event, lambda record: publish_watched(self._client, record)
                )
            except (PairingError, ConnectionError):
                return []
            with self._lock:
                self._offer = new_offer
            return ["* a new device is linking..."]
        if offer is None or event.pairing != offer.pairing or fold_nick(event.peer) != fold_nick(offer.peer):
            return []
        if event.step == "reveal":
            if offer.state is not OfferState.ANSWERED:
                return []  # a second reveal (a relay's): the pairing went on without it
            try:
                offer.reveal(event)
            except LinkError as exc:
                return [f"! linking failed: {exc}"]
            return ["* type /link CODE with the 6-digit code the new device shows"]
        if event.step == "abort":
            with self._lock:
                self._offer = None
            return ["! the new device stopped the linking"]
        return []

    def unlink(self, device: str) -> list[str]:
        """`/unlink DEVICE`: publish a list without it (the server logs it out)."""
        if not device.strip():
            return ["! usage: /unlink DEVICE (/devices lists them)"]
        try:
            record = self._keys.list_without(device.strip())
            publish_watched(self._client, record)
        except (ValueError, LinkError) as exc:
            return [f"! not unlinked: {exc}"]
        return [f"* device {device.strip()} is unlinked: it gets nothing sent from now on"]

    def devices(self) -> list[str]:
        """`/devices`: ours, this one marked."""
        return devices_lines(self._keys)


def devices_lines(keys: WhisperKeys) -> list[str]:
    """Our devices, one line each, this one marked."""
    listed = keys.own_devices()
    lines = [f"* your devices ({len(listed)}):"]
    for device, this in listed:
        lines.append(f"*   {device}{' (this one)' if this else ''}")
    return lines
