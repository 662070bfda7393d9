"""Clients that come back by themselves after the server goes away."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

from chat import TIMEOUT, next_matching
from conftest import StartServer
from malicious_relay import MaliciousRelay
from whisper_helpers import login, memory_keys, wait_published_keys

from securechat import Client, Disconnected
from securechat.client.backoff import Backoff
from securechat.client.events import Reconnected, Reconnecting, WhisperReceived
from securechat.protocol import Bye, Error, Message, Names, WhisperStatus
from securechat.server import Server

FAST = Backoff(base=0.05, cap=0.4)


def client(nick: str, ctx: ssl.SSLContext, port: int) -> Client:
    """A reconnecting client with keys, returned once the server holds its prekeys."""
    c = Client(nick, context=ctx, port=port, reconnect=True, backoff=FAST, keys=memory_keys(nick))
    c.connect()
    wait_published_keys(c)
    return c


def test_clients_reconnect_after_a_server_restart_and_keep_chatting(
    start_server: StartServer, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    server = start_server(data_dir=tmp_path / "data")
    port = server.address[1]
    alice, bob = client("alice", client_ctx, port), client("bob", client_ctx, port)
    alice.say("before")
    assert next_matching(bob, Message, nick="alice").text == "before"  # type: ignore[attr-defined]
    server.stop()
    for c in (alice, bob):
        assert next_matching(c, Bye) == Bye(reason="server shutting down")
        assert isinstance(c.wait_for_any(Reconnecting, TIMEOUT), Reconnecting)
    start_server(data_dir=tmp_path / "data", port=port)  # the same address and database
    for c in (alice, bob):
        back = c.wait_for_any(Reconnected, TIMEOUT)
        assert isinstance(back, Reconnected)
    # The restarted server replays the room's history from its database, but bob has
    # seen "before" already: his client skips it, and the next line is the live one.
    alice.say("after")
    live = next_matching(bob, Message, nick="alice")
    assert (live.text, live.history) == ("after", False)  # type: ignore[attr-defined]
    alice.whisper("bob", "and whispers still work")
    got = bob.wait_for_any(WhisperReceived, TIMEOUT)
    assert isinstance(got, WhisperReceived) and got.text == "and whispers still work"
    alice.close()
    bob.close()


def test_close_interrupts_the_backoff_at_once(start_server: StartServer, client_ctx: ssl.SSLContext) -> None:
    baseline = threading.active_count()
    server = start_server()
    slow = Client(
        "alice", context=client_ctx, port=server.address[1], reconnect=True, backoff=Backoff(base=60, cap=60)
    )
    slow.connect()
    server.stop()
    waiting = slow.wait_for_any(Reconnecting, TIMEOUT)
    assert isinstance(waiting, Reconnecting) and waiting.delay >= 30
    started = time.monotonic()
    slow.close()
    assert time.monotonic() - started < TIMEOUT  # not the 30+ s delay
    assert isinstance(slow.next_event(timeout=TIMEOUT), Disconnected)
    assert threading.active_count() <= baseline


def test_quit_is_final_even_with_reconnect_on(start_server: StartServer, client_ctx: ssl.SSLContext) -> None:
    server = start_server()
    c = client("alice", client_ctx, server.address[1])
    c.quit("bye")
    events = []
    while not isinstance(item := c.next_event(timeout=TIMEOUT), Disconnected):
        events.append(item)
    assert not any(isinstance(e, Reconnecting) for e in events)
    c.close()


def test_a_whisper_sent_while_the_server_is_gone_is_refused_clearly(
    start_server: StartServer, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    server = start_server(data_dir=tmp_path / "d")
    port = server.address[1]
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    alice = client("alice", client_ctx, port)
    alice.whisper("bob", "first")
    bob.wait_for_any(WhisperReceived, TIMEOUT)
    server.stop()
    alice.wait_for_any(Reconnecting, TIMEOUT)
    try:
        alice.whisper("bob", "nobody there")
    except ConnectionError as exc:
        assert "reconnecting" in str(exc)
    else:
        raise AssertionError("a whisper was accepted with no server")
    alice.close()
    bob.close()


def test_a_server_that_goes_silent_without_closing_is_pinged_then_left_and_reconnected(
    server: Server, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    # A relay in the path swallows every frame both ways: from the client's side the
    # server vanished without a FIN or a reset (a cable pulled, a VM frozen).
    relay = MaliciousRelay(server.address, server_ctx, client_ctx)
    try:
        alice = Client(
            "alice",
            context=client_ctx,
            port=relay.address[1],
            reconnect=True,
            backoff=FAST,
            ping_interval=0.3,
            ping_timeout=0.3,
        )
        alice.connect()
        black_hole: list[bool] = [True]
        swallowed: list[object] = []

        def swallow(leg: object, frame: dict[str, object]) -> list[dict[str, object]]:
            if black_hole[0]:
                swallowed.append(frame.get("type"))
                return []
            return [frame]

        relay.up_hook = relay.down_hook = swallow
        lost = alice.wait_for_any(Reconnecting, TIMEOUT)
        black_hole[0] = False
        assert isinstance(lost, Reconnecting)
        assert "ping" in swallowed  # it asked before it gave up
        assert isinstance(alice.wait_for_any(Reconnected, TIMEOUT), Reconnected)
        alice.say("back")
        assert next_matching(alice, Message, nick="alice").text == "back"  # type: ignore[attr-defined]
        alice.close()
    finally:
        relay.close()


def test_a_whisper_the_server_could_not_store_is_sent_again_after_a_pause_not_in_a_loop(
    server: Server, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    relay = MaliciousRelay(server.address, server_ctx, client_ctx)
    try:
        bob_keys = memory_keys("bob")
        login(server, client_ctx, "bob", bob_keys).close()  # registered, keys published, offline
        alice = Client(
            "alice",
            context=client_ctx,
            port=relay.address[1],
            reconnect=True,
            backoff=Backoff(base=0.3, cap=0.6),
            keys=memory_keys("alice"),
        )
        alice.connect()
        wait_published_keys(alice)
        refused_at: list[float] = []
        sent_at: list[float] = []  # when the whisper went up, each time

        def disk_full_once(leg: object, frame: dict[str, object]) -> list[dict[str, object]]:
            # The first "stored" becomes what a server with a full disk answers instead.
            if frame.get("type") == "whisper_status" and not refused_at:
                refused_at.append(time.monotonic())
                return [
                    {"type": "error", "code": "store-unavailable", "reason": "disk full", "ref": frame["id"]}
                ]
            return [frame]

        def count_sends(leg: object, frame: dict[str, object]) -> list[dict[str, object]]:
            if frame.get("type") == "whisper":
                sent_at.append(time.monotonic())
            return [frame]

        relay.down_hook = disk_full_once
        relay.up_hook = count_sends
        msg_id = alice.whisper("bob", "stored the second time")
        error = alice.wait_for(Error, TIMEOUT)
        assert isinstance(error, Error) and (error.code, error.ref, error.fatal) == (
            "store-unavailable",
            msg_id,
            False,
        )
        stored = alice.wait_for(WhisperStatus, TIMEOUT)
        assert isinstance(stored, WhisperStatus) and (stored.id, stored.status) == (msg_id, "stored")
        alice.who()  # a round trip later: a client resending in a loop would have sent more
        next_matching(alice, Names)
        assert len(sent_at) == 2  # once, then once more
        # ... after the backoff's first pause (0.15-0.3 s with base 0.3), not at once.
        assert sent_at[1] - refused_at[0] >= 0.15
        bob = login(server, client_ctx, "bob", bob_keys, wait_published=False)
        got = bob.wait_for_any(WhisperReceived, TIMEOUT)
        assert isinstance(got, WhisperReceived) and got.msg_id == msg_id
        alice.close()
        bob.close()
    finally:
        relay.close()


def test_a_whisper_refused_for_a_full_mailbox_waits_minutes_not_seconds_before_it_is_sent_again(
    server: Server, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    relay = MaliciousRelay(server.address, server_ctx, client_ctx)
    try:
        login(server, client_ctx, "bob", memory_keys("bob")).close()
        alice = Client(
            "alice", context=client_ctx, port=relay.address[1], reconnect=True, keys=memory_keys("alice")
        )
        alice.connect()
        wait_published_keys(alice)

        def mailbox_full(leg: object, frame: dict[str, object]) -> list[dict[str, object]]:
            if frame.get("type") == "whisper_status":
                return [
                    {
                        "type": "error",
                        "code": "quota-exceeded",
                        "reason": "bob's mailbox is full",
                        "ref": frame["id"],
                    }
                ]
            return [frame]

        relay.down_hook = mailbox_full
        msg_id = alice.whisper("bob", "when there is room")
        refused = next_matching(alice, Error, code="quota-exceeded")
        assert isinstance(refused, Error) and refused.ref == msg_id
        timer = alice._resend_timer  # scheduled by the reader before it passed the error on
        assert timer is not None and timer.interval >= 30.0  # a mailbox empties in minutes
        alice.close()
    finally:
        relay.close()
