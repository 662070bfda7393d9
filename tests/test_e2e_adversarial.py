"""The end-to-end protocol's adversarial cases (docs/e2e.md, docs/security.md), driven
through a malicious relay over real TLS.

The relay is the server as far as the clients know; it forwards to a real server and
rewrites, replays, reorders or injects frames. Each test proves the attack is rejected
and, where it applies, that the genuine conversation continues afterwards.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat import TIMEOUT, next_matching
from conftest import RawTls, StartServer
from e2e_helpers import fetched_bundle, keys_event
from linking_helpers import link_phone
from malicious_relay import Frame, Leg, MaliciousRelay
from whisper_helpers import disk_keys, login, memory_keys

from securechat import Client
from securechat.client.events import DeviceUnreachable, WhisperFailed, WhisperReceived
from securechat.client.inbox import MemoryStorage
from securechat.client.linking import unlink
from securechat.client.whispers import WhisperKeys
from securechat.e2e.conversations import Conversations
from securechat.e2e.errors import BundleError, IdentityChanged
from securechat.e2e.identity import Identity
from securechat.e2e.primitives import ed25519_sign
from securechat.e2e.ratchet import HEADER_LEN, PAD_BLOCK, PQ_SETUP_LEN, parse_header
from securechat.protocol import (
    PrekeyCount,
    WhisperStatus,
)
from securechat.server import Server


@pytest.fixture
def relay(server: Server, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Iterator[MaliciousRelay]:
    r = MaliciousRelay(server.address, server_ctx, client_ctx)
    yield r
    r.close()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def join(
    relay: MaliciousRelay,
    ctx: ssl.SSLContext,
    clients: list[Client],
    nick: str,
    keys: WhisperKeys | None = None,
) -> Client:
    client = login(relay.address[1], ctx, nick, keys or memory_keys(nick))
    clients.append(client)
    return client


def received(client: Client) -> WhisperReceived:
    got = client.wait_for_any(WhisperReceived, TIMEOUT)
    assert isinstance(got, WhisperReceived)
    return got


def failed(client: Client) -> WhisperFailed:
    got = client.wait_for_any(WhisperFailed, TIMEOUT)
    assert isinstance(got, WhisperFailed)
    return got


def keys_frame(owner: Conversations, nick: str) -> Frame:
    """A directory answer carrying `owner`'s keys under `nick` (a substitution)."""
    return keys_event(fetched_bundle(owner), nick).to_dict()


def impostor(nick: str) -> Conversations:
    conv = Conversations(Identity.generate(nick))
    conv.bundle_to_publish()
    return conv


def flip(b64: object, index: int) -> str:
    data = bytearray(base64.b64decode(str(b64)))
    data[index] ^= 0x01
    return base64.b64encode(bytes(data)).decode()


def patch(b64: object, offset: int, replacement: bytes) -> str:
    data = bytearray(base64.b64decode(str(b64)))
    data[offset : offset + len(replacement)] = replacement
    return base64.b64encode(bytes(data)).decode()


class Once:
    """A down-hook that rewrites the first matching frame and passes everything else."""

    def __init__(self, nick: str, kind: str, rewrite: object) -> None:
        self.nick, self.kind, self.rewrite = nick, kind, rewrite
        self.done = threading.Event()

    def __call__(self, leg: Leg, frame: Frame) -> list[Frame]:
        if not self.done.is_set() and leg.nick == self.nick and frame["type"] == self.kind:
            self.done.set()
            out = self.rewrite(dict(frame))  # type: ignore[operator]
            return out if isinstance(out, list) else [out]
        return [frame]


def _capture_deliveries(relay: MaliciousRelay, nick: str | None) -> list[Frame]:
    """Pass everything on, keeping a copy of each delivery to `nick` (None: to anyone)."""
    captured: list[Frame] = []

    def capture(leg: Leg, frame: Frame) -> list[Frame]:
        if frame["type"] == "delivery" and nick in (None, leg.nick):
            captured.append(frame)
        return [frame]

    relay.down_hook = capture
    return captured


def whispers_sent_by(relay: MaliciousRelay) -> int:
    return sum(1 for d, data in relay.wire if d == "up" and json.loads(data)["type"] == "whisper")


# 1 -------------------------------------------------------------------------------------


def test_identity_key_swapped_for_a_pinned_contact(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    alice, bob = join(relay, client_ctx, clients, "alice"), join(relay, client_ctx, clients, "bob")
    alice.whisper("bob", "first contact")
    received(bob)
    alice.reset_session("bob")  # the next whisper fetches bob's keys again
    relay.down_hook = Once("alice", "keys", lambda f: keys_frame(impostor("bob"), "bob"))
    before = whispers_sent_by(relay)
    with pytest.raises(IdentityChanged):
        alice.whisper("bob", "this must not be sent")
    assert whispers_sent_by(relay) == before  # nothing left alice's client
    assert alice.keys is not None
    info = alice.keys.peer_info("bob")
    assert info is not None and info.trust.value == "changed"
    assert info.pending is not None and info.pending.key != info.identity.key
    with pytest.raises(IdentityChanged):
        alice.whisper("bob", "still refused until /trust")


# 2 -------------------------------------------------------------------------------------


def test_swapped_stale_and_rolled_back_signed_prekeys(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    day = 86_400
    bob_conv = Conversations(Identity.generate("bob"), clock=lambda: time.time() - 8 * day)
    saved = MemoryStorage()
    bob = join(
        relay,
        client_ctx,
        clients,
        "bob",
        WhisperKeys(bob_conv, saved, clock=lambda: time.time() - 8 * day),
    )
    alice = join(relay, client_ctx, clients, "alice")
    recorded: list[Frame] = []

    def record(leg: Leg, frame: Frame) -> list[Frame]:
        if frame["type"] == "keys":
            recorded.append(dict(frame))
        return [frame]

    relay.down_hook = record
    alice.whisper("bob", "hello")  # bob's first signed prekey, made 8 days ago
    received(bob)
    bob.close()
    bob_conv._clock = time.time
    bob = login(relay.address[1], client_ctx, "bob", WhisperKeys(bob_conv, saved), wait_published=False)
    clients.append(bob)
    while True:  # the server confirms each publish; wait for the rotated signed prekey
        status = bob.wait_for(PrekeyCount, TIMEOUT)
        if status.spk_id >= 2:  # type: ignore[attr-defined]
            break
    alice.reset_session("bob")
    alice.whisper("bob", "now with the new signed prekey")
    received(bob)
    old = recorded[0]
    assert json.loads(json.dumps(old["spk"]))["id"] < json.loads(json.dumps(recorded[-1]["spk"]))["id"]

    alice.reset_session("bob")
    # A replaying server answers the fetch at hand: it copies that fetch's ref (keys.ref).
    relay.down_hook = Once("alice", "keys", lambda f: {**old, "ref": f["ref"]})  # roll back to the old SPK
    with pytest.raises(BundleError, match="rolled back"):
        alice.whisper("bob", "x")

    alice.reset_session("bob")

    def swap_spk(f: Frame) -> Frame:
        spk = dict(f["spk"])  # type: ignore[call-overload]
        spk["public"] = base64.b64encode(impostor("bob").secrets.spks[-1].pair.public).decode()
        return {**f, "spk": spk}

    relay.down_hook = Once("alice", "keys", swap_spk)
    with pytest.raises(BundleError, match="signed prekey has an invalid signature"):
        alice.whisper("bob", "x")

    # Stale: an old bundle served to someone whose clock says it is more than a year and a
    # month later (either clock may be a year off: docs/design.md, "Time and clock jumps").
    late_conv = Conversations(Identity.generate("carol"), clock=lambda: time.time() + 401 * day)
    carol = join(relay, client_ctx, clients, "carol", WhisperKeys(late_conv, saved))
    relay.down_hook = Once("carol", "keys", lambda f: {**old, "ref": f["ref"]})
    with pytest.raises(BundleError, match="stale"):
        carol.whisper("bob", "x")


# 2b ------------------------------------------------------------------------------------


def test_forged_one_time_prekey_is_refused(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    join(relay, client_ctx, clients, "bob")
    alice = join(relay, client_ctx, clients, "alice")

    def forge(f: Frame) -> Frame:
        opk = dict(f["opks"][0])  # type: ignore[index]
        opk["public"] = flip(opk["public"], 0)
        return {**f, "opks": [opk]}

    relay.down_hook = Once("alice", "keys", forge)
    with pytest.raises(BundleError, match="one-time prekey"):
        alice.whisper("bob", "x")


def test_reused_one_time_prekey_is_refused_by_the_recipient(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    bob = join(relay, client_ctx, clients, "bob")
    alice, carol = join(relay, client_ctx, clients, "alice"), join(relay, client_ctx, clients, "carol")
    handed: list[Frame] = []

    def reuse(leg: Leg, frame: Frame) -> list[Frame]:
        if frame["type"] == "keys":
            if not handed:
                handed.append(frame)
            elif leg.nick == "carol":
                return [{**handed[0], "ref": frame["ref"]}]  # the same one-time prekey a second time
        return [frame]

    relay.down_hook = reuse
    alice.whisper("bob", "first use")
    assert received(bob).text == "first use"
    carol.whisper("bob", "second use of the same OPK")
    assert failed(bob).sender == "carol"


# 2c: post-quantum setup (docs/e2e.md, "Versions") -------------------------------------


def test_a_setup_is_post_quantum_with_a_kem_ciphertext_in_its_header(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    bob = join(relay, client_ctx, clients, "bob")
    alice = join(relay, client_ctx, clients, "alice")
    captured = _capture_deliveries(relay, "bob")
    alice.whisper("bob", "harvest this")
    assert received(bob).text == "harvest this"
    header = base64.b64decode(str(captured[0]["header"]))
    parsed = parse_header(header, "alice")
    assert parsed.version == 2 and parsed.setup is not None and len(header) == HEADER_LEN + PQ_SETUP_LEN
    assert len(parsed.setup.kem_ct) == 1088
    ciphertext = base64.b64decode(str(captured[0]["ciphertext"]))
    assert len(ciphertext) == PAD_BLOCK + 16  # padded: the relay sees 160-byte blocks only
    for client, peer in ((alice, "bob"), (bob, "alice")):
        assert client.keys is not None
        info = client.keys.peer_info(peer)
        assert info is not None and info.post_quantum is True


def test_a_bundle_stripped_of_its_kem_prekey_is_refused_not_downgraded(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    join(relay, client_ctx, clients, "bob")
    alice = join(relay, client_ctx, clients, "alice")
    before = whispers_sent_by(relay)
    relay.down_hook = Once(
        "alice", "keys", lambda f: {k: v for k, v in f.items() if k not in ("kpk", "kopks")}
    )
    with pytest.raises(BundleError, match="no post-quantum prekey"):
        alice.whisper("bob", "must not go out under a classical setup")
    assert whispers_sent_by(relay) == before


def test_a_kem_prekey_swapped_for_another_users_is_refused(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    join(relay, client_ctx, clients, "bob")
    alice = join(relay, client_ctx, clients, "alice")
    carol = impostor("carol")  # her own keys, validly signed by her
    carols = keys_event(fetched_bundle(carol), "carol")
    swapped = {"kpk": [k.to_dict() for k in carols.kpk], "kopks": [k.to_dict() for k in carols.kopks]}
    relay.down_hook = Once("alice", "keys", lambda f: {**f, **swapped})
    with pytest.raises(BundleError, match="post-quantum prekey has an invalid signature"):
        alice.whisper("bob", "x")
    # And the last-resort one alone (no one-time one: the directory ran out).
    alice.reset_session("bob")
    relay.down_hook = Once("alice", "keys", lambda f: {**f, "kpk": swapped["kpk"], "kopks": []})
    with pytest.raises(BundleError, match="post-quantum prekey has an invalid signature"):
        alice.whisper("bob", "x")


def test_a_used_one_time_kem_prekey_replayed_to_another_sender_is_refused_by_the_recipient(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    bob = join(relay, client_ctx, clients, "bob")
    alice, carol = join(relay, client_ctx, clients, "alice"), join(relay, client_ctx, clients, "carol")
    handed: list[Frame] = []

    def replay_kopk(leg: Leg, frame: Frame) -> list[Frame]:
        if frame["type"] == "keys":
            if not handed:
                handed.append(frame)
            elif leg.nick == "carol":  # a fresh one-time DH prekey, the used KEM one
                return [{**frame, "kopks": handed[0]["kopks"]}]
        return [frame]

    relay.down_hook = replay_kopk
    alice.whisper("bob", "first use")
    assert received(bob).text == "first use"
    carol.whisper("bob", "second use of the same one-time KEM prekey")
    refused = failed(bob)
    assert refused.sender == "carol" and "keys this device no longer has" in refused.reason


# 3 -------------------------------------------------------------------------------------


def test_first_contact_mitm_shows_in_the_safety_numbers(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    bob, alice = join(relay, client_ctx, clients, "bob"), join(relay, client_ctx, clients, "alice")
    fake_bob, fake_alice = impostor("bob"), impostor("alice")

    def mitm(leg: Leg, frame: Frame) -> list[Frame]:
        if frame["type"] == "keys":
            return [keys_frame(fake_bob if leg.nick == "alice" else fake_alice, str(frame["nick"]))]
        return [frame]

    relay.down_hook = mitm
    alice.whisper("bob", "to the wrong key")
    assert failed(bob).sender == "alice"  # encrypted to mallory: bob cannot read it
    bob.whisper("alice", "also to the wrong key")
    assert failed(alice).sender == "bob"
    assert alice.keys is not None and bob.keys is not None
    assert alice.keys.safety_number("bob") != bob.keys.safety_number("alice")


# 4 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "index"),
    [("ciphertext", 0), ("ciphertext", -1), ("header", 20), ("header", 60), ("header", 200)],
)
def test_a_flipped_bit_is_rejected_and_the_next_genuine_whisper_decrypts(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client], field: str, index: int
) -> None:
    bob, alice = join(relay, client_ctx, clients, "bob"), join(relay, client_ctx, clients, "alice")
    relay.down_hook = Once("bob", "delivery", lambda f: {**f, field: flip(f[field], index)})
    alice.whisper("bob", "tampered")
    assert failed(bob).sender == "alice"
    alice.whisper("bob", "genuine")
    assert received(bob).text == "genuine"


# 5 -------------------------------------------------------------------------------------


def test_relabelled_redirected_and_reflected_whispers_are_rejected(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    bob, alice = join(relay, client_ctx, clients, "bob"), join(relay, client_ctx, clients, "alice")
    carol = join(relay, client_ctx, clients, "carol")
    alice.whisper("bob", "hello")
    received(bob)
    bob.whisper("alice", "reply")
    received(alice)
    captured = _capture_deliveries(relay, None)
    alice.whisper("bob", "relabel me")
    assert received(bob).text == "relabel me"
    bob.whisper("alice", "reflect me")
    assert received(alice).text == "reflect me"
    to_bob, to_alice = captured
    relay.legs["bob"].to_client({**to_bob, "id": "9001", "sender": "carol"})  # wrong sender
    assert failed(bob).sender == "carol"
    relay.legs["carol"].to_client({**to_bob, "id": "9002"})  # redirected to someone else
    assert failed(carol).sender == "alice"
    relay.legs["bob"].to_client({**to_alice, "id": "9003", "sender": "alice"})  # reflected to its sender
    assert failed(bob).sender == "alice"
    alice.whisper("bob", "still fine")
    assert received(bob).text == "still fine"


# 6 -------------------------------------------------------------------------------------


def test_replays_before_and_after_a_ratchet_step_are_rejected(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    bob, alice = join(relay, client_ctx, clients, "bob"), join(relay, client_ctx, clients, "alice")
    captured = _capture_deliveries(relay, "bob")
    alice.whisper("bob", "one")
    alice.whisper("bob", "two")
    assert [received(bob).text for _ in range(2)] == ["one", "two"]

    def replay_all(tag: str) -> None:
        for n, old in enumerate(captured):
            # Same message id: dropped as already shown, never displayed twice...
            relay.legs["bob"].to_client({**old, "id": f"{tag}{n}0"})
            # ...and with the id rewritten to dodge that, the ratchet refuses it.
            relay.legs["bob"].to_client({**old, "id": f"{tag}{n}1", "msg_id": f"forged{tag}{n}"})
            assert failed(bob).sender == "alice"

    replay_all("7")
    bob.whisper("alice", "ratchet step")
    received(alice)
    alice.whisper("bob", "three")
    assert received(bob).text == "three"
    replay_all("8")
    alice.whisper("bob", "four")
    shown = []
    while True:  # nothing replayed was shown in between
        item = bob.wait_for_any(WhisperReceived, TIMEOUT)
        assert isinstance(item, WhisperReceived)
        shown.append(item.text)
        if item.text == "four":
            break
    assert shown == ["four"]


# 7 -------------------------------------------------------------------------------------


def test_shuffled_and_late_delivery_decrypts_every_whisper_exactly_once(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    bob, alice = join(relay, client_ctx, clients, "bob"), join(relay, client_ctx, clients, "alice")
    alice.whisper("bob", "open")
    received(bob)
    bob.whisper("alice", "opened")
    received(alice)
    held: list[Frame] = []
    all_held = threading.Event()
    total = 15

    def hold(leg: Leg, frame: Frame) -> list[Frame]:
        if frame["type"] == "delivery" and leg.nick == "bob":
            held.append(frame)
            if len(held) == total:
                all_held.set()
            return []
        return [frame]

    relay.down_hook = hold
    for step in range(3):  # three of alice's chains, with bob's replies ratcheting between
        for i in range(5):
            alice.whisper("bob", f"{step}.{i}")
        bob.whisper("alice", f"reply {step}")
        received(alice)
    assert all_held.wait(TIMEOUT)
    random.Random(3).shuffle(held)
    for frame in held:
        relay.legs["bob"].to_client(frame)
    got = sorted(received(bob).text for _ in range(total))
    assert got == sorted(f"{s}.{i}" for s in range(3) for i in range(5))
    for n, frame in enumerate(held[:3]):  # replays, with ids rewritten to reach the ratchet
        relay.legs["bob"].to_client({**frame, "id": f"99{n}", "msg_id": f"again{n}"})
        failed(bob)


# 8 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "value"), [(54, (10**6).to_bytes(4, "big")), (18, bytes(32))])
def test_huge_counter_and_low_order_ratchet_key_are_refused(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client], offset: int, value: bytes
) -> None:
    bob, alice = join(relay, client_ctx, clients, "bob"), join(relay, client_ctx, clients, "alice")
    alice.whisper("bob", "warm up")
    received(bob)
    relay.down_hook = Once("bob", "delivery", lambda f: {**f, "header": patch(f["header"], offset, value)})
    start = time.monotonic()
    alice.whisper("bob", "poisoned header")
    assert failed(bob).sender == "alice"
    assert time.monotonic() - start < TIMEOUT
    alice.whisper("bob", "genuine")
    assert received(bob).text == "genuine"


# 11 ------------------------------------------------------------------------------------


def test_a_canary_never_reaches_server_logs_store_or_relayed_frames(
    start_server: StartServer,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_server(data_dir=tmp_path / "data")
    relay = MaliciousRelay(server.address, server_ctx, client_ctx)
    clients: list[Client] = []
    try:
        bob, alice = join(relay, client_ctx, clients, "bob"), join(relay, client_ctx, clients, "alice")
        canary = "CANARY-7f3a9-do-not-leak"
        alice.whisper("bob", canary)
        assert received(bob).text == canary
        bob.close()
        alice.whisper("bob", canary + " offline")  # sits in the server's queue
        assert alice.wait_for(WhisperStatus, TIMEOUT).status in ("stored", "delivered")  # type: ignore[attr-defined]
        needle = canary.encode()
        assert all(needle not in data for _, data in relay.wire)
        assert canary not in caplog.text
        for path in (tmp_path / "data").iterdir():
            assert needle not in path.read_bytes(), path
    finally:
        for c in clients:
            c.close()
        relay.close()


# login ---------------------------------------------------------------------------------


def test_a_login_proof_signed_by_another_key_is_refused(server: Server, client_ctx: ssl.SSLContext) -> None:
    claimed, actual = Identity.generate("alice"), Identity.generate("alice")
    raw = RawTls(server.address, client_ctx)
    raw.send_line(
        json.dumps(
            {
                "type": "hello",
                "version": 1,
                "nick": "alice",
                "identity": base64.b64encode(claimed.sig_key).decode(),
            }
        )
    )
    challenge = raw.read_json()
    assert challenge["type"] == "challenge"
    from securechat.e2e.login import login_message

    nonce = base64.b64decode(str(challenge["nonce"]))
    forged = ed25519_sign(actual.sig_private, login_message("alice", nonce, claimed.sig_key))
    raw.send_line(json.dumps({"type": "auth", "signature": base64.b64encode(forged).decode()}))
    err = json.loads(raw.read_until_closed()[-1])
    assert (err["code"], err["fatal"]) == ("auth-failed", True)
    raw.close()
    # and nothing was registered: the rightful owner can still claim the nick
    owner = login(server, client_ctx, "alice", memory_keys("alice"), wait_published=False)
    owner.close()


# 9 and 10 ------------------------------------------------------------------------------


def _stolen(client: Client) -> Conversations:
    """What a thief copying the client's keystore right now would hold."""
    assert client.keys is not None
    records = client.keys._conv.records()
    return Conversations.from_records({k: v for k, v in records.items() if v is not None})


def _opens(thief: Conversations, frame: Frame) -> bool:
    from securechat.e2e.errors import DecryptionError

    try:
        thief.decrypt(
            str(frame["sender"]),
            base64.b64decode(str(frame["header"])),
            base64.b64decode(str(frame["ciphertext"])),
        )
    except DecryptionError:
        return False
    return True


def test_forward_secrecy_a_stolen_keystore_cannot_read_earlier_whispers(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    bob, alice = join(relay, client_ctx, clients, "bob"), join(relay, client_ctx, clients, "alice")
    captured = _capture_deliveries(relay, "bob")  # the server keeps every ciphertext it relayed
    for i in range(3):
        alice.whisper("bob", f"before the theft {i}")
        received(bob)
    bob.whisper("alice", "a reply, so the ratchet turns")
    received(alice)
    alice.whisper("bob", "after the reply")
    received(bob)
    thief = _stolen(bob)
    assert len(captured) == 4
    assert not any(_opens(thief, frame) for frame in captured)


def test_post_compromise_a_stolen_state_stops_working_after_one_round_trip(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    bob, alice = join(relay, client_ctx, clients, "bob"), join(relay, client_ctx, clients, "alice")
    alice.whisper("bob", "hello")
    received(bob)
    bob.whisper("alice", "hi")
    received(alice)
    thief = _stolen(bob)
    captured = _capture_deliveries(relay, "bob")
    alice.whisper("bob", "the thief can read this one")
    received(bob)
    assert _opens(thief, captured[-1])  # honest: right after a theft, the thief keeps up
    bob.whisper("alice", "round trip")  # bob's fresh DH key, which the thief does not have
    received(alice)
    alice.whisper("bob", "private again")
    assert received(bob).text == "private again"
    assert not _opens(thief, captured[-1])


# Linked devices ---------------------------------------------------------------------------


def linked_alice(
    relay: MaliciousRelay, ctx: ssl.SSLContext, clients: list[Client], tmp_path: Path
) -> tuple[Client, WhisperKeys, WhisperKeys]:
    """alice's laptop and a phone linked to it, both logged in through the relay."""
    laptop_keys = disk_keys(tmp_path / "laptop", "alice")
    laptop = join(relay, ctx, clients, "alice", laptop_keys)
    phone_keys = disk_keys(tmp_path / "phone", "alice")
    link_phone(relay.address[1], ctx, laptop, laptop_keys, phone_keys)
    join(relay, ctx, clients, "alice", phone_keys)
    return laptop, laptop_keys, phone_keys


def whisper_devices(relay: MaliciousRelay) -> list[str]:
    """The `device` of every whisper that left a client, in order."""
    return [
        str(json.loads(data).get("device", ""))
        for d, data in relay.wire
        if d == "up" and json.loads(data)["type"] == "whisper"
    ]


def test_a_device_the_relay_adds_to_alices_list_gets_nothing(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client], tmp_path: Path
) -> None:
    linked_alice(relay, client_ctx, clients, tmp_path)
    bob = join(relay, client_ctx, clients, "bob")
    evil = impostor("alice")  # a device of the relay's, with keys of its own
    evil_bundle = keys_frame(evil, "alice")

    def add_evil(frame: Frame) -> Frame:
        listed = dict(frame["devices"][0])  # type: ignore[index]
        listed["devices"] = [
            *listed["devices"],
            {"device": "evil", "key": evil_bundle["identity"]["sig_key"]},
        ]  # type: ignore[index]
        extra = {k: evil_bundle[k] for k in ("identity", "spk", "opks", "kpk", "kopks")}
        return {**frame, "devices": [listed], "others": [*frame["others"], {"device": "evil", **extra}]}  # type: ignore[list-item]

    relay.down_hook = Once("bob", "keys", add_evil)
    before = len(whisper_devices(relay))
    with pytest.raises(BundleError, match="not signed"):
        bob.whisper("alice", "the relay must not read this")
    assert len(whisper_devices(relay)) == before  # nothing left bob's client


def test_a_bundle_the_relay_slips_in_beside_alices_list_is_never_encrypted_to(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client], tmp_path: Path
) -> None:
    laptop, _, phone_keys = linked_alice(relay, client_ctx, clients, tmp_path)
    phone = clients[-1]
    bob = join(relay, client_ctx, clients, "bob")
    evil_bundle = keys_frame(impostor("alice"), "alice")

    def add_bundle_only(frame: Frame) -> Frame:
        extra = {k: evil_bundle[k] for k in ("identity", "spk", "opks", "kpk", "kopks")}
        return {**frame, "others": [*frame["others"], {"device": "evil", **extra}]}  # type: ignore[list-item]

    relay.down_hook = Once("bob", "keys", add_bundle_only)
    before = len(whisper_devices(relay))
    sent = bob.whisper("alice", "to alice's two real devices only")
    for device in (laptop, phone):  # both real devices have it: both copies crossed the relay
        next_matching(device, WhisperReceived, msg_id=sent)
    assert sorted(whisper_devices(relay)[before:]) == sorted(["", phone_keys.device])


def test_a_device_the_relay_keeps_out_of_a_keys_answer_is_reported(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client], tmp_path: Path
) -> None:
    _, _, phone_keys = linked_alice(relay, client_ctx, clients, tmp_path)
    bob = join(relay, client_ctx, clients, "bob")
    bob.whisper("alice", "first, with both devices")  # bob accepts alice's list
    bob.reset_session("alice")
    relay.down_hook = Once("bob", "keys", lambda f: {**f, "others": []})  # the phone's bundle withheld
    bob.whisper("alice", "the relay hides the phone")
    unreachable = bob.wait_for_any(DeviceUnreachable, TIMEOUT)
    assert isinstance(unreachable, DeviceUnreachable)
    assert (unreachable.peer, unreachable.device) == ("alice", phone_keys.device)


def test_a_removed_device_cannot_be_brought_back_by_serving_an_older_list(
    relay: MaliciousRelay, client_ctx: ssl.SSLContext, clients: list[Client], tmp_path: Path
) -> None:
    laptop, laptop_keys, phone_keys = linked_alice(relay, client_ctx, clients, tmp_path)
    bob = join(relay, client_ctx, clients, "bob")
    old: list[Frame] = []

    def keep(leg: Leg, frame: Frame) -> list[Frame]:
        if leg.nick == "bob" and frame["type"] == "keys" and not old:
            old.append(frame)
        return [frame]

    relay.down_hook = keep
    first = bob.whisper("alice", "while the phone is alice's")
    next_matching(laptop, WhisperReceived, msg_id=first)
    unlink(laptop, laptop_keys, phone_keys.device)  # version 2: the laptop alone
    second = bob.whisper("alice", "bob learns version 2 from this one's status")
    next_matching(laptop, WhisperReceived, msg_id=second)
    assert bob.keys is not None
    deadline = time.monotonic() + TIMEOUT
    while bob.keys.linked_devices("alice"):  # the refresh runs on its own thread
        assert time.monotonic() < deadline, "bob never learned alice's new list"
        time.sleep(0.01)
    bob.reset_session("alice")
    relay.down_hook = Once("bob", "keys", lambda f: {**old[0], "ref": f["ref"]})  # version 1 again
    before = len(whisper_devices(relay))
    with pytest.raises(BundleError, match="went back"):
        bob.whisper("alice", "must not reach the removed phone")
    assert len(whisper_devices(relay)) == before
