"""Whispers between real clients through the real server over TLS."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest
from chat import TIMEOUT, next_matching
from conftest import StartServer
from disk_helpers import fill, needs_root
from raw_identity import RawIdentity
from whisper_helpers import disk_keys, login, memory_keys

from securechat import Client, LoginRejected
from securechat.client.events import WhisperReceived
from securechat.protocol import Code, Error, Names, PrekeyCount, Whisper, WhisperStatus
from securechat.server import Server, ServerConfig


def test_alice_whispers_bob_online(server: Server, client_ctx: ssl.SSLContext) -> None:
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    msg_id = alice.whisper("bob", "hello bob, only you can read this")
    got = bob.wait_for_any(WhisperReceived, TIMEOUT)
    assert isinstance(got, WhisperReceived)
    assert (got.sender, got.text, got.trust, got.msg_id) == (
        "alice",
        "hello bob, only you can read this",
        "unverified",
        msg_id,
    )
    _stored_then_delivered(alice, msg_id)
    reply_to, _ = bob.reply("hi alice")
    assert reply_to == "alice"
    back = alice.wait_for_any(WhisperReceived, TIMEOUT)
    assert isinstance(back, WhisperReceived) and back.text == "hi alice"
    alice.close()
    bob.close()


def test_offline_recipient_reads_it_at_next_login(
    start_server: StartServer, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    server = start_server(data_dir=tmp_path / "server")
    bob_keys = disk_keys(tmp_path / "bob", "bob")
    bob = login(server, client_ctx, "bob", bob_keys)
    bob.close()
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    sent = [alice.whisper("bob", f"while you were out {i}") for i in range(3)]
    for msg_id in sent:
        assert alice.wait_for(WhisperStatus, TIMEOUT) == WhisperStatus(id=msg_id, to="bob", status="stored")
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"), wait_published=False)
    texts = []
    for _ in sent:
        got = bob.wait_for_any(WhisperReceived, TIMEOUT)
        assert isinstance(got, WhisperReceived)
        texts.append(got.text)
    assert texts == [f"while you were out {i}" for i in range(3)]
    for msg_id in sent:
        assert alice.wait_for(WhisperStatus, TIMEOUT) == WhisperStatus(
            id=msg_id, to="bob", status="delivered"
        )
    alice.close()
    bob.close()


def test_whisper_to_unknown_user_is_a_clear_error(server: Server, client_ctx: ssl.SSLContext) -> None:
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    with pytest.raises(LookupError, match="nobody"):
        alice.whisper("nobody", "hello?")
    alice.close()


def test_another_key_cannot_take_a_registered_nick_and_the_owner_can_after_restarts(
    start_server: StartServer, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    from securechat import LoginRejected
    from securechat.client import Client

    data = tmp_path / "server"
    server = start_server(data_dir=data)
    login(server, client_ctx, "alice", disk_keys(tmp_path / "alice", "alice")).close()
    assert server.wait_sessions(0, TIMEOUT)

    impostor = Client("Alice", context=client_ctx, port=server.address[1], keys=memory_keys("Alice"))
    with pytest.raises(LoginRejected) as info:
        impostor.connect()
    assert info.value.code == "nick-registered" and "registered to another key" in str(info.value)
    guest = Client("alice", context=client_ctx, port=server.address[1])
    with pytest.raises(LoginRejected, match="registered to another key"):
        guest.connect()

    server.stop()
    restarted = start_server(data_dir=data)  # same database, a fresh process state
    owner = login(
        restarted, client_ctx, "alice", disk_keys(tmp_path / "alice", "alice"), wait_published=False
    )
    assert owner.welcome is not None and owner.welcome.nick == "alice"
    owner.close()
    with pytest.raises(LoginRejected, match="registered to another key"):
        Client("alice", context=client_ctx, port=restarted.address[1], keys=memory_keys("alice")).connect()


def test_a_thousand_whispers_both_ways_with_random_interleaving(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    import random
    import threading

    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    rng = random.Random(42)
    plan = [("alice", i) if rng.random() < 0.5 else ("bob", i) for i in range(1000)]
    by_nick = {"alice": alice, "bob": bob}
    # Two senders at once, each in its own order, so the ratchets step while frames cross.
    threads = [
        threading.Thread(
            target=lambda who=who: [
                by_nick[who].whisper("bob" if who == "alice" else "alice", f"{who} {i}")
                for w, i in plan
                if w == who
            ]
        )
        for who in ("alice", "bob")
    ]
    for t in threads:
        t.start()
    expected = {who: [f"{who} {i}" for w, i in plan if w == who] for who in ("alice", "bob")}
    for receiver, sender in ((bob, "alice"), (alice, "bob")):
        got = []
        while len(got) < len(expected[sender]):
            item = receiver.wait_for_any(WhisperReceived, TIMEOUT)
            assert isinstance(item, WhisperReceived)
            got.append(item.text)
        assert got == expected[sender]  # every one decrypted, in each sender's order
    for t in threads:
        t.join(TIMEOUT)
    alice.close()
    bob.close()


def test_a_second_login_with_the_same_key_takes_over_without_a_reconnect_fight(
    server: Server, client_ctx: ssl.SSLContext, connect: object
) -> None:
    from chat import next_matching

    from securechat import Disconnected
    from securechat.client import Client
    from securechat.client.backoff import Backoff
    from securechat.protocol import Error, Joined, Left, Message

    observer = connect("carol")  # type: ignore[operator]
    keys = memory_keys("alice")
    first = Client(
        "alice",
        context=client_ctx,
        port=server.address[1],
        keys=keys,
        reconnect=True,
        backoff=Backoff(base=0.05, cap=0.1),
    )
    first.connect()
    next_matching(observer, Joined, nick="alice")
    second = login(server, client_ctx, "alice", keys, wait_published=False)  # e.g. after a network drop
    err = first.wait_for(Error, TIMEOUT)
    assert err == Error(code="replaced", reason="you logged in from another connection", fatal=True)
    assert isinstance(first.next_event(TIMEOUT), Disconnected)  # and it does not reconnect
    second.say("the new connection works")
    # Carol sees no leave or join for alice before that line (the hub orders all events).
    between = []
    while not isinstance(item := observer.next_event(TIMEOUT), Message):
        between.append(item)
    assert item.nick == "alice" and item.text == "the new connection works"
    assert not [e for e in between if isinstance(e, (Left, Joined))]
    guest = Client("carol", context=client_ctx, port=server.address[1])
    with pytest.raises(LoginRejected, match="already in use"):
        guest.connect()  # without a key, nobody takes over anything
    first.close()
    second.close()


def test_away_is_shown_to_whisperers_and_back_clears_it(server: Server, client_ctx: ssl.SSLContext) -> None:
    from securechat.protocol import Names

    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    bob.set_away("at lunch")
    bob.who()
    bob.wait_for(Names, TIMEOUT)  # the server handles bob's frames in order: away is set
    first = alice.whisper("bob", "you there?")
    assert alice.wait_for(WhisperStatus, TIMEOUT) == WhisperStatus(
        id=first, to="bob", status="stored", away="at lunch"
    )
    bob.set_away("")
    bob.who()
    bob.wait_for(Names, TIMEOUT)
    second = alice.whisper("bob", "now?")
    while (status := alice.wait_for(WhisperStatus, TIMEOUT)).id != second:  # type: ignore[attr-defined]
        pass
    assert status == WhisperStatus(id=second, to="bob", status="stored")
    alice.close()
    bob.close()


def _whisper_received(client: Client) -> WhisperReceived:
    got = client.wait_for_any(WhisperReceived, TIMEOUT)
    assert isinstance(got, WhisperReceived)
    return got


def _status(client: Client, msg_id: str) -> WhisperStatus:
    got = next_matching(client, WhisperStatus, id=msg_id)
    assert isinstance(got, WhisperStatus)
    return got


def _stored_then_delivered(client: Client, msg_id: str) -> None:
    """Wait for the whisper's end: "delivered". With its recipient online, "stored" (the
    sender's answer) and "delivered" (the recipient's ack) leave the server from two
    threads, so "delivered" may come first, and the client drops the "stored" after it
    (docs/protocol.md, "whisper_status")."""
    first = _status(client, msg_id).status
    if first == "stored":
        first = _status(client, msg_id).status
    assert first == "delivered"


def test_a_whisper_kept_but_not_yet_shown_when_the_client_dies_is_shown_at_the_next_start(
    server: Server, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    # The client died after keeping and acking the whisper, before the program had it
    # (it never asked for the next event): the next start hands it out, as a replay.
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"))
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    msg_id = alice.whisper("bob", "do not lose me")
    _stored_then_delivered(alice, msg_id)  # bob's client kept and acked it
    bob._channel.shutdown()  # type: ignore[union-attr]  # dies without handing it out
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"), wait_published=False)
    got = _whisper_received(bob)
    assert (got.msg_id, got.text, got.replay) == (msg_id, "do not lose me", True)
    bob.close()  # it was handed out: now it counts as shown
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"), wait_published=False)
    bob.who()  # replays come first, before anything the server sends: none by the answer
    while not isinstance(item := bob.next_event(TIMEOUT), Names):
        assert not isinstance(item, WhisperReceived), item
    assert [(m.msg_id, m.text) for m in bob.history("alice")] == [(msg_id, "do not lose me")]
    alice.close()
    bob.close()


def test_a_whisper_never_confirmed_stored_goes_out_after_the_sender_restarts(
    start_server: StartServer, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    server = start_server(data_dir=tmp_path / "server")
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"))
    alice = login(server, client_ctx, "alice", disk_keys(tmp_path / "alice", "alice"))
    alice.whisper("bob", "first")  # a session, so the next whisper needs no key fetch
    _whisper_received(bob)
    # Killed between keeping the whisper and sending it: what the outbox then holds.
    alice.keys.seal_all("bob", "sealed but never sent", "kept1")  # type: ignore[union-attr]
    alice.close()
    alice = login(server, client_ctx, "alice", disk_keys(tmp_path / "alice", "alice"), wait_published=False)
    got = _whisper_received(bob)
    assert (got.msg_id, got.text) == ("kept1", "sealed but never sent")
    assert _status(alice, "kept1").status == "stored"
    alice.close()
    bob.close()


def test_a_recipient_with_new_keys_makes_the_sender_see_a_failure_a_key_change_and_a_resend_after_trust(
    start_server: StartServer, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    from securechat.client.events import KeyChanged

    server = start_server(data_dir=tmp_path / "server")
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"))
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    alice.whisper("bob", "before")
    _whisper_received(bob)
    old_fingerprint = bob.keys.identity.public().fingerprint()  # type: ignore[union-attr]
    bob.close()
    # bob lost his keys; the operator released his nick; he registered new ones.
    assert server.store.release("bob")
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob-new", "bob"))
    msg_id = alice.whisper("bob", "are you there?")  # in the old session: bob cannot read it
    assert _status(alice, msg_id).status == "stored"
    failed = _status(alice, msg_id)
    # Still set up in its first message (bob never answered): his new keys do not match it.
    assert (failed.status, failed.reason) == ("failed", "unknown-prekey")
    alarm = alice.wait_for_any(KeyChanged, TIMEOUT)
    assert isinstance(alarm, KeyChanged) and alarm.peer == "bob" and alarm.unsent == 1
    assert alarm.old_fingerprint == old_fingerprint
    info = alice.keys.peer_info("bob")  # type: ignore[union-attr]
    assert info is not None and info.pending is not None
    assert info.pending.fingerprint() == alarm.new_fingerprint
    alice.trust("bob")  # the user decided: the same text goes out in a new session
    got = _whisper_received(bob)
    assert (got.msg_id, got.text) == (msg_id, "are you there?")
    _stored_then_delivered(alice, msg_id)
    alice.close()
    bob.close()


def test_a_recipient_that_lost_a_prekey_gets_the_whisper_again_in_a_new_session_without_asking(
    start_server: StartServer, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    server = start_server(data_dir=tmp_path / "server")
    bob_keys = memory_keys("bob")
    bob = login(server, client_ctx, "bob", bob_keys)
    bob.close()
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    msg_id = alice.whisper("bob", "set up with a prekey bob will not have")
    assert _status(alice, msg_id).status == "stored"
    # The signed prekey it was set up with is gone (an old backup restored, a clock
    # that jumped): same identity, new signed prekey, published at the next login.
    bob_keys._conv.secrets.spks.clear()
    bob_keys._conv.secrets.rotate_spk(time.time())
    bob = login(server, client_ctx, "bob", bob_keys, wait_published=False)
    failed = _status(alice, msg_id)
    assert (failed.status, failed.reason) == ("failed", "unknown-prekey")
    got = _whisper_received(bob)  # sent again by alice's client, in a new session
    assert (got.msg_id, got.text) == (msg_id, "set up with a prekey bob will not have")
    _stored_then_delivered(alice, msg_id)
    alice.close()
    bob.close()


def test_whispering_yourself_is_a_clear_refusal_not_an_alarm(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    # Refused before anything is encrypted or sent (the server refuses it too:
    # test_server_relay), so no false "could not be authenticated" can follow.
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    with pytest.raises(ValueError, match="cannot whisper yourself"):
        alice.whisper("ALICE", "note to self")
    assert alice.keys is not None and not alice.keys.has_session("alice")
    alice.close()


@needs_root
def test_a_recipient_whose_own_disk_is_full_says_so_keeps_running_and_gets_the_whisper_later(
    server: Server, client_ctx: ssl.SSLContext, small_disk: Path
) -> None:
    from securechat.client.events import StorageFailed

    bob_keys = disk_keys(small_disk / "bob", "bob")
    bob = login(server, client_ctx, "bob", bob_keys)
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    filler = fill(small_disk)
    msg_id = alice.whisper("bob", "wait for room")
    assert _status(alice, msg_id).status == "stored"
    trouble = bob.wait_for_any(StorageFailed, TIMEOUT)
    assert isinstance(trouble, StorageFailed) and "disk is full" in trouble.reason
    bob.who()  # the reader survived it
    assert isinstance(next_matching(bob, Names), Names)
    filler.unlink()
    bob.close()  # not acknowledged: the server still has it for bob's next login
    # The same keys in memory: the ratchet step that could not be kept was not taken either.
    bob = login(server, client_ctx, "bob", bob_keys, wait_published=False)
    got = _whisper_received(bob)
    assert (got.msg_id, got.text, got.replay) == (msg_id, "wait for room", False)
    assert _status(alice, msg_id).status == "delivered"
    alice.close()
    bob.close()


def test_a_whisper_a_program_skipped_while_waiting_for_something_else_is_not_counted_as_shown(
    server: Server, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    # `securechat send` waits for its whisper's status; a whisper arriving meanwhile is
    # skipped, not shown, and must still be shown by the next client that runs.
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"))
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    msg_id = alice.whisper("bob", "arrives while bob waits for something else")
    _stored_then_delivered(alice, msg_id)
    bob.who()
    assert isinstance(bob.wait_for(Names, TIMEOUT), Names)  # skips the whisper on the way
    bob.close()
    bob = login(server, client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"), wait_published=False)
    got = _whisper_received(bob)
    assert (got.msg_id, got.replay) == (msg_id, True)
    alice.close()
    bob.close()


def test_a_sender_offline_when_the_recipient_failed_learns_it_at_login_and_sends_again(
    start_server: StartServer, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    server = start_server(data_dir=tmp_path / "server")
    bob_keys = memory_keys("bob")
    login(server, client_ctx, "bob", bob_keys).close()
    alice = login(server, client_ctx, "alice", disk_keys(tmp_path / "alice", "alice"))
    msg_id = alice.whisper("bob", "read me when you can")
    assert _status(alice, msg_id).status == "stored"
    alice.close()  # alice is away when bob's client fails to decrypt it
    bob_keys._conv.secrets.spks.clear()
    bob_keys._conv.secrets.rotate_spk(time.time())
    bob = login(server, client_ctx, "bob", bob_keys, wait_published=False)
    bob.who()
    next_matching(bob, Names)  # the delivery came before the answer, and was acked as failed
    alice = login(server, client_ctx, "alice", disk_keys(tmp_path / "alice", "alice"), wait_published=False)
    failed = _status(alice, msg_id)
    assert (failed.status, failed.reason) == ("failed", "unknown-prekey")
    got = _whisper_received(bob)
    assert (got.msg_id, got.text) == (msg_id, "read me when you can")
    _stored_then_delivered(alice, msg_id)
    alice.close()
    bob.close()


def test_a_full_offline_mailbox_refuses_more_with_a_quota_error_naming_the_whisper(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    # 40 fresh nicks once queued 8,757 whispers (81 MB) for one offline victim in 40 s.
    limit = ServerConfig().queue_max_per_recipient
    assert server.store.register("bob", b"b" * 32, 1.0)
    for n in range(limit):  # from many senders, so that only bob's own quota is reached
        server.store.enqueue("bob", f"m{n}", f"filler{n % 10}", b"h" * 64, b"c" * 64, 1.0)
    alice = RawIdentity(server, client_ctx, "alice")
    alice.send(Whisper(to="bob", id="one-too-many", header=b"h" * 64, ciphertext=b"c" * 64))
    answer = alice.round_trip()
    assert answer == [
        Error(
            code=Code.QUOTA,
            reason="bob has too many whispers waiting to be read: nothing was stored; "
            "try again after bob has read some",
            ref="one-too-many",
        )
    ]
    assert len(server.store.pending("bob")) == limit
    alice.send(Whisper(to="alice2", id="m2", header=b"h", ciphertext=b"c"))  # the session goes on
    assert [type(f) for f in alice.round_trip()] == [Error]
    alice.close()


def test_a_publish_is_charged_by_its_signature_checks_in_the_request_rate(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    # Each publish of 200 one-time prekeys costs about 200 signature checks (39 ms of CPU)
    # and used to cost one request token, like a room line.
    server = start_server(message_rate=0.1, message_burst=20)  # nothing refills meanwhile
    alice = RawIdentity(server, client_ctx, "alice")
    alice.send(alice.publication(200))
    first = alice.round_trip()  # the ping costs a token too
    assert [type(f) for f in first] == [PrekeyCount]
    alice.send(alice.publication(200))
    refused = alice.round_trip()
    assert [(type(f), getattr(f, "code", "")) for f in refused] == [(Error, Code.RATE_LIMITED)]
    assert server.store.prekey_status("alice").count == 200
    alice.close()


def test_the_server_applies_its_configured_quota_not_the_default(
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    server = start_server(queue_max_per_recipient=2)
    assert server.store.register("bob", b"b" * 32, 1.0)
    alice = RawIdentity(server, client_ctx, "alice")
    for n in range(3):
        alice.send(Whisper(to="bob", id=f"w{n}", header=b"h" * 64, ciphertext=b"c" * 64))
    answers = alice.round_trip()
    assert [getattr(a, "status", getattr(a, "code", None)) for a in answers] == [
        "stored",
        "stored",
        Code.QUOTA,
    ]
    alice.close()


def test_whispers_held_for_a_changed_key_do_not_stall_the_rest_of_the_queue(
    start_server: StartServer, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    from securechat.client.events import KeyChanged

    server = start_server(data_dir=tmp_path / "server", queue_page=4)
    bob_keys = memory_keys("bob")
    bob = login(server, client_ctx, "bob", bob_keys)
    alice = login(server, client_ctx, "alice", memory_keys("alice"))
    alice.whisper("bob", "hello")  # bob pins alice's key
    _whisper_received(bob)
    alice.close()
    bob.close()
    assert server.store.release("alice")  # alice lost her keys and came back with new ones
    new_alice = login(server, client_ctx, "alice", memory_keys("alice"))
    for n in range(6):  # more than a page, all held by bob's client until he decides
        new_alice.whisper("bob", f"held {n}")
    carol = login(server, client_ctx, "carol", memory_keys("carol"))
    after = carol.whisper("bob", "queued behind them")
    assert _status(carol, after).status == "stored"
    bob = login(server, client_ctx, "bob", bob_keys, wait_published=False)
    alarms = []
    while not isinstance(item := bob.next_event(TIMEOUT), WhisperReceived):
        if isinstance(item, KeyChanged):
            alarms.append(item)
    # The first page held alice's whispers, and did not stall the backlog behind it.
    assert (item.sender, item.text) == ("carol", "queued behind them")
    assert alarms and all(a.peer == "alice" for a in alarms)
    for c in (new_alice, carol, bob):
        c.close()
