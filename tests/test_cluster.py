"""Several servers as one: three nodes sharing one PostgreSQL database and one Redis
(cluster/backplane.py), clients spread over them, over real TLS on 127.0.0.1. The engines
are real: a throwaway PostgreSQL (pg_fixtures.py) and `redis-server` (redis_server.py)."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat import TIMEOUT, next_matching
from cluster_nodes import LEASE, all_subscribed
from conftest import StartServer
from redis_server import RedisServer
from room_peers import Peer
from room_peers import login as peer_login
from server_process import ServerProcess, free_port
from whisper_helpers import login, memory_keys

from securechat import Client, LoginRejected
from securechat.client.events import Reconnected, WhisperReceived
from securechat.e2e.identity import Identity
from securechat.protocol import Code, Error, Left, Message, Names, WhisperStatus, Who
from securechat.server import Server

pytest.importorskip("redis", reason="the cluster extra is not installed (pip install -e '.[cluster]')")


@pytest.fixture
def clients(client_ctx: ssl.SSLContext) -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def connect(
    node: Server, ctx: ssl.SSLContext, nick: str, made: list[Client], *, reconnect: bool = False
) -> Client:
    client = Client(nick, context=ctx, port=node.address[1], timeout=TIMEOUT, reconnect=reconnect)
    client.connect()
    made.append(client)
    return client


def log_in_once_free(node: Server, ctx: ssl.SSLContext, nick: str, within: float) -> tuple[Client, float]:
    """Log in as `nick` on `node`, again and again while another node's claim on it holds
    (as a person retries: the moment a lease lapses has no event to wait on); the client
    and the seconds it took. Fails if the nick is still taken after `within` seconds."""
    started = time.monotonic()
    while True:
        client = Client(nick, context=ctx, port=node.address[1], timeout=TIMEOUT)
        try:
            client.connect()
            return client, time.monotonic() - started
        except LoginRejected as exc:
            assert exc.code == Code.NICK_TAKEN, exc
            assert time.monotonic() - started < within, f"{nick} was never freed"
            time.sleep(0.05)


def node_process(work: Path, cert_files: dict[str, str], pg_dsn: str, redis: RedisServer) -> ServerProcess:
    """A node of the cluster as a process of its own (to kill or freeze), on a free port."""
    return ServerProcess(
        free_port(), work, cert_files, "--store", pg_dsn, "--cluster", redis.url, "--node-lease", str(LEASE)
    )


def lines_until(client: Client, count: int) -> list[tuple[str, str]]:
    """The next `count` room lines `client` sees, as (nick, text)."""
    seen: list[tuple[str, str]] = []
    while len(seen) < count:
        line = next_matching(client, Message)
        seen.append((line.nick, line.text))
    return seen


def test_clients_on_three_nodes_see_one_order_per_room_nothing_lost_or_twice(
    nodes: list[Server], client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    people = [connect(nodes[i % 3], client_ctx, f"u{i}", clients) for i in range(6)]
    all_subscribed(nodes)
    each = 25
    senders = [
        threading.Thread(target=lambda c=c: [c.say(f"{c.nick} {n}") for n in range(each)]) for c in people
    ]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(TIMEOUT)
    total = each * len(people)
    seen = [lines_until(c, total) for c in people]
    # One order for everyone, whichever node they are on.
    assert all(s == seen[0] for s in seen), "the nodes disagree on the room's order"
    # Nothing lost, nothing twice, and each sender's lines in the order said.
    assert sorted(seen[0]) == sorted((c.nick, f"{c.nick} {n}") for c in people for n in range(each))
    for c in people:
        mine = [text for nick, text in seen[0] if nick == c.nick]
        assert mine == [f"{c.nick} {n}" for n in range(each)]


def test_one_guest_nick_claimed_on_three_nodes_at_once_is_won_once(
    nodes: list[Server], client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()
    for round_ in range(5):
        nick = f"racer{round_}"
        start = threading.Barrier(3)
        outcomes.clear()

        def claim(node: Server, nick: str = nick, start: threading.Barrier = start) -> None:
            client = Client(nick, context=client_ctx, port=node.address[1], timeout=TIMEOUT)
            start.wait(TIMEOUT)
            try:
                client.connect()
            except LoginRejected as exc:
                with lock:
                    outcomes.append(exc.code)
                return
            with lock:
                outcomes.append("won")
                clients.append(client)

        threads = [threading.Thread(target=claim, args=(node,)) for node in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert sorted(outcomes) == ["nick-taken", "nick-taken", "won"], outcomes


def test_a_whisper_to_a_user_on_another_node_arrives_and_its_status_comes_back(
    nodes: list[Server], client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    alice = login(nodes[0], client_ctx, "alice", memory_keys("alice"))
    bob = login(nodes[1], client_ctx, "bob", memory_keys("bob"))
    clients += [alice, bob]
    sent = alice.whisper("bob", "across the cluster")
    assert next_matching(bob, WhisperReceived, msg_id=sent).text == "across the cluster"
    next_matching(alice, WhisperStatus, id=sent, status="delivered")  # bob's ack, from node 1 to node 0
    # The same identity on another node is one person, as on one server: bob's second
    # device logs in on node 2 beside the first; a guest cannot take a registered nick.
    guest = Client("bob", context=client_ctx, port=nodes[2].address[1], timeout=TIMEOUT)
    with pytest.raises(LoginRejected) as refused:
        guest.connect()
    assert refused.value.code in (Code.NICK_REGISTERED, Code.NICK_TAKEN)


def test_redis_paused_past_the_lease_fences_every_node_and_they_serve_again_after(
    nodes: list[Server], redis_server: RedisServer, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    people = [connect(nodes[i], client_ctx, f"p{i}", clients, reconnect=True) for i in range(3)]
    redis_server.pause()
    paused = time.monotonic()
    try:
        # No node can prove it is alive: each closes its sessions before its lease could
        # run out (no split brain: nobody is served by a node the others think is dead).
        for person in people:
            assert next_matching(person, Error, timeout=LEASE * 4).code == Code.BUSY
            assert time.monotonic() - paused < LEASE
    finally:
        redis_server.resume()
    # Back: the clients reconnect by themselves and chat resumes across the nodes.
    for person in people:
        next_matching(person, Reconnected, timeout=TIMEOUT * 2)
    people[0].say("after the pause")
    for person in people:
        assert next_matching(person, Message, timeout=TIMEOUT * 2, text="after the pause").nick == "p0"


def test_redis_restarted_empty_nodes_register_again_with_no_duplicate_nick(
    nodes: list[Server],
    redis_server: RedisServer,
    client_ctx: ssl.SSLContext,
    clients: list[Client],
    start_server: StartServer,
    pg_dsn: str,
) -> None:
    from securechat.protocol import Entered

    people = [connect(nodes[i], client_ctx, f"q{i}", clients) for i in range(3)]
    people[0].say("before")
    for person in people:
        next_matching(person, Message, text="before")
    redis_server.kill9()
    redis_server.start_again()
    # The nodes notice the new epoch, claim their nicks again, and the room order starts
    # again: lines said now reach everyone, once, in one order.
    for n in range(5):
        people[n % 3].say(f"after {n}")
    seen = [[t for _, t in lines_until(p, 5)] for p in people]
    assert all(s == seen[0] for s in seen) and sorted(seen[0]) == sorted(f"after {n}" for n in range(5))
    # Redis keeps each room's members again (each node tells it once it registered under
    # the new epoch): a node started then lists everyone.
    deadline = time.monotonic() + TIMEOUT
    while redis_server.command("HLEN", "sc:members:#lobby").strip() != b":3":
        assert time.monotonic() < deadline, "the nodes never told Redis their members again"
        time.sleep(0.05)  # Redis offers no event for a hash's length
    late = start_server(store=pg_dsn, cluster=redis_server.url, node_lease=LEASE)
    dave = connect(late, client_ctx, "dave", clients)
    assert set(next_matching(dave, Entered, room="#lobby").users) == {"q0", "q1", "q2", "dave"}
    # q0 is still q0's: a guest on another node cannot take it.
    intruder = Client("q0", context=client_ctx, port=nodes[1].address[1], timeout=TIMEOUT)
    with pytest.raises(LoginRejected) as refused:
        intruder.connect()
    assert refused.value.code == Code.NICK_TAKEN


def test_a_node_killed_outright_frees_its_nicks_within_the_lease_and_its_users_come_back(
    start_server: StartServer,
    pg_dsn: str,
    redis_server: RedisServer,
    cert_files: dict[str, str],
    client_ctx: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    survivor = start_server(store=pg_dsn, cluster=redis_server.url, node_lease=LEASE)
    doomed = node_process(tmp_path / "doomed", cert_files, pg_dsn, redis_server)
    port = doomed.port
    ghost = Client("ghost", context=client_ctx, port=port, timeout=TIMEOUT)
    ghost.connect()
    watcher = Client("watcher", context=client_ctx, port=survivor.address[1], timeout=TIMEOUT)
    watcher.connect()
    try:
        doomed.kill9()  # no goodbye: its lease and claims stay in Redis until they expire
        killed = time.monotonic()
        # The others show it gone once its lease ran out and a node reaped it: not before
        # (it could still be serving), and not much after.
        assert next_matching(watcher, Left, nick="ghost", timeout=LEASE * 3).reason == "its server was lost"
        left_after = time.monotonic() - killed
        # Its last refresh was at most a half lease before the kill (a third, plus the
        # thread's wake-up), its lease ran a whole one from there, and a reaper comes
        # within a half lease after that (a third, plus a wake-up), on a loaded machine
        # a little later.
        assert LEASE * 0.4 <= left_after <= LEASE * 2, left_after
        # Its nick is free then: its user comes back through the other node at once.
        again, _ = log_in_once_free(survivor, client_ctx, "ghost", within=LEASE)
        again.say("back, on another node")
        assert next_matching(watcher, Message, text="back, on another node").nick == "ghost"
        again.close()
    finally:
        ghost.close()
        watcher.close()


def test_nodes_on_one_host_share_one_port_with_so_reuseport(
    start_server: StartServer, pg_dsn: str, redis_server: RedisServer, client_ctx: ssl.SSLContext
) -> None:
    port = free_port()
    shared = [
        start_server(port=port, reuse_port=True, store=pg_dsn, cluster=redis_server.url, node_lease=LEASE)
        for _ in range(2)
    ]
    people = []
    try:
        for n in range(16):  # the kernel spreads them by a hash (all on one: 2 in 65,536)
            client = Client(f"r{n}", context=client_ctx, port=port, timeout=TIMEOUT)
            client.connect()
            people.append(client)
        served = [len(node.hub) for node in shared]
        assert sum(served) == 16 and min(served) > 0, served
        people[0].say("one port, two processes")
        for person in people:
            assert next_matching(person, Message, text="one port, two processes").nick == "r0"
    finally:
        for person in people:
            person.close()


def test_a_node_whose_subscription_is_dropped_for_overflow_fills_the_gap_from_the_stream(
    nodes: list[Server], redis_server: RedisServer, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    speaker = connect(nodes[0], client_ctx, "speaker", clients)
    listener = connect(nodes[1], client_ctx, "listener", clients)
    all_subscribed(nodes)
    # Redis drops any subscriber more than 1 KiB behind: every subscriber of a burst.
    assert redis_server.command(
        "CONFIG", "SET", "client-output-buffer-limit", '"pubsub 1kb 1kb 0"'
    ).startswith(b"+OK")
    count = 300
    for n in range(count):
        speaker.say(f"line {n:03} " + "x" * 200)
    seen = [text for _, text in lines_until(listener, count)]
    assert seen == [f"line {n:03} " + "x" * 200 for n in range(count)]
    # Not a run that never overflowed: the listener's node did lose its subscription.
    assert nodes[1].cluster is not None and nodes[1].cluster.subscriptions_lost > 0


def test_postgresql_restarted_mid_burst_loses_no_acknowledged_whisper(
    nodes: list[Server], postgres_server: object, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    from pg_server import PgServer

    assert isinstance(postgres_server, PgServer)
    alice = login(nodes[0], client_ctx, "alice", memory_keys("alice"))
    bob = login(nodes[2], client_ctx, "bob", memory_keys("bob"))
    clients += [alice, bob]
    sent = [alice.whisper("bob", "the session is set up")]
    burst = threading.Thread(
        target=lambda: sent.extend(alice.whisper("bob", f"burst {n}") for n in range(40))
    )
    burst.start()
    postgres_server.stop("immediate")  # a crash, while whispers are in flight
    postgres_server.start_again()
    burst.join(TIMEOUT)
    # Those refused meanwhile (store-unavailable) are sent again by the client: every
    # whisper arrives, and each acknowledged one was kept through the crash.
    got = {next_matching(bob, WhisperReceived, timeout=TIMEOUT * 3).msg_id for _ in sent}
    assert got == set(sent) and len(sent) == 41


def test_a_whisper_committed_by_a_node_that_died_before_pushing_it_still_arrives(
    nodes: list[Server], client_ctx: ssl.SSLContext, clients: list[Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = login(nodes[0], client_ctx, "alice", memory_keys("alice"))
    bob = login(nodes[1], client_ctx, "bob", memory_keys("bob"))
    clients += [alice, bob]
    first = alice.whisper("bob", "pushed as usual")
    assert next_matching(bob, WhisperReceived, msg_id=first).text == "pushed as usual"
    dying = nodes[0].cluster
    assert dying is not None
    # Node 0 commits the next whisper and dies before its push leaves: its publisher is
    # the part that would have sent it, and it stops with the rest of the node's link.
    monkeypatch.setattr(dying, "push", lambda box, frame: None)
    lost_push = alice.whisper("bob", "committed, never pushed")
    next_matching(alice, WhisperStatus, id=lost_push, status="stored")  # acknowledged: it must arrive
    dying._stopping.set()  # its lease is no longer refreshed: it runs out as a dead node's would
    # Another node reaps it and every node hands its sessions what waits for them again.
    got = next_matching(bob, WhisperReceived, msg_id=lost_push, timeout=LEASE * 4)
    assert got.text == "committed, never pushed"


def test_a_person_with_devices_on_three_nodes_links_whispers_and_unlinks_across_them(
    nodes: list[Server], client_ctx: ssl.SSLContext, clients: list[Client], tmp_path: Path
) -> None:
    from linking_helpers import link_phone
    from whisper_helpers import disk_keys

    from securechat.client.events import WhisperCopied
    from securechat.client.linking import unlink

    laptop_keys = disk_keys(tmp_path / "laptop", "alice")
    laptop = login(nodes[0], client_ctx, "alice", laptop_keys)
    clients.append(laptop)
    # The new device pairs through node 1 while the laptop is on node 0.
    phone_keys = disk_keys(tmp_path / "phone", "alice")
    link_phone(nodes[1].address[1], client_ctx, laptop, laptop_keys, phone_keys)
    phone = login(nodes[2], client_ctx, "alice", phone_keys)
    bob = login(nodes[1], client_ctx, "bob", disk_keys(tmp_path / "bob", "bob"))
    clients += [phone, bob]
    to_alice = bob.whisper("alice", "to both of alice's devices")
    for device in (laptop, phone):
        assert next_matching(device, WhisperReceived, msg_id=to_alice).text == "to both of alice's devices"
    from_phone = phone.whisper("bob", "from the phone on node 2")
    assert next_matching(bob, WhisperReceived, msg_id=from_phone).sender == "alice"
    assert next_matching(laptop, WhisperCopied, msg_id=from_phone).to == "bob"
    # Unlinked on node 0: its session on node 2 is closed, and no node lets it back in.
    unlink(laptop, laptop_keys, phone_keys.device)
    assert next_matching(phone, Error, code=Code.UNLINKED).fatal
    again = Client("alice", context=client_ctx, port=nodes[1].address[1], timeout=TIMEOUT, keys=phone_keys)
    with pytest.raises(LoginRejected):
        again.connect()
    after = bob.whisper("alice", "after the unlink")
    assert next_matching(laptop, WhisperReceived, msg_id=after).text == "after the unlink"
    # The phone's session ended, but alice is still here through her laptop: bob, on a
    # third node, sees no one leave; he does when the laptop goes too.
    laptop.say("still here")
    seen = []
    while not (seen and isinstance(seen[-1], Message) and seen[-1].text == "still here"):
        seen.append(bob.next_event(timeout=TIMEOUT))
    assert not any(isinstance(e, Left) and e.nick == "alice" for e in seen), seen
    laptop.close()
    assert next_matching(bob, Left, nick="alice").room == "#lobby"


def test_members_on_other_nodes_are_shown_entering_leaving_and_in_the_member_list(
    nodes: list[Server], client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    from securechat.protocol import Entered, Joined, Left, Names, Who

    alice = connect(nodes[0], client_ctx, "alice", clients)
    all_subscribed(nodes)
    bob = connect(nodes[1], client_ctx, "bob", clients)
    assert next_matching(alice, Joined, nick="bob").room == "#lobby"  # from node 1, through Redis
    # A node's member list names everyone, wherever they are served.
    carol = connect(nodes[2], client_ctx, "carol", clients)
    entered = next_matching(carol, Entered, room="#lobby")
    assert set(entered.users) == {"alice", "bob", "carol"}
    alice.send(Who(room="#lobby"))
    assert set(next_matching(alice, Names).users) == {"alice", "bob", "carol"}
    bob.close()
    assert next_matching(alice, Left, nick="bob").room == "#lobby"
    assert next_matching(carol, Left, nick="bob").room == "#lobby"
    alice.send(Who(room="#lobby"))
    assert set(next_matching(alice, Names).users) == {"alice", "carol"}


def test_a_rename_on_one_node_is_shown_on_the_others(
    nodes: list[Server], client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    from securechat.protocol import Joined, Names, Who

    alice = connect(nodes[0], client_ctx, "alice", clients)
    all_subscribed(nodes)
    bob = connect(nodes[1], client_ctx, "bob", clients)
    next_matching(alice, Joined, nick="bob")
    bob.rename("robert")
    assert next_matching(alice, Left, nick="bob").reason == "now known as robert"
    next_matching(alice, Joined, nick="robert")
    alice.send(Who(room="#lobby"))
    assert set(next_matching(alice, Names).users) == {"alice", "robert"}


def test_a_redis_with_a_password_serves_and_a_wrong_password_is_refused_without_printing_it(
    start_server: StartServer,
    pg_dsn: str,
    cert_files: dict[str, str],
    client_ctx: ssl.SSLContext,
    clients: list[Client],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from securechat.cli import main

    guarded = RedisServer.start(tmp_path / "guarded", password="s3cret-pass")
    try:
        node = start_server(store=pg_dsn, cluster=guarded.url, node_lease=LEASE)
        assert node.cluster is not None and node.cluster.subscribed.wait(TIMEOUT)
        connect(node, client_ctx, "authed", clients).say("through a Redis that wants AUTH")
        wrong = guarded.url.replace("s3cret-pass", "not-the-pass")
        argv = ["server", "--port", "0", "--cert", cert_files["cert"], "--key", cert_files["key"]]
        argv += ["--data-dir", str(tmp_path / "refused"), "--init", "--store", pg_dsn, "--cluster", wrong]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "refusing to start" in err and "cannot reach the cluster's Redis" in err
        assert "not-the-pass" not in err and "***" in err
    finally:
        guarded.stop()


def test_a_node_frozen_past_its_lease_fences_when_it_wakes_instead_of_serving_on(
    start_server: StartServer,
    pg_dsn: str,
    redis_server: RedisServer,
    cert_files: dict[str, str],
    client_ctx: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    import os
    import signal

    survivor = start_server(store=pg_dsn, cluster=redis_server.url, node_lease=LEASE)
    frozen = node_process(tmp_path / "frozen", cert_files, pg_dsn, redis_server)
    port = frozen.port
    sleeper = Client("sleeper", context=client_ctx, port=port, timeout=TIMEOUT)
    sleeper.connect()
    try:
        os.kill(frozen.proc.pid, signal.SIGSTOP)  # a paused VM, a swap storm
        # The others find it dead once its lease ran out and free its nick.
        taker, _ = log_in_once_free(survivor, client_ctx, "sleeper", within=LEASE * 4)
        os.kill(frozen.proc.pid, signal.SIGCONT)
        # Awake, it must not go on serving a nick another node now serves.
        assert next_matching(sleeper, Error, timeout=LEASE * 4).code == Code.BUSY
        taker.close()
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
        sleeper.close()
        frozen.kill9()


def test_a_reconnect_landing_on_another_node_replaces_the_stale_session_at_once(
    nodes: list[Server], client_ctx: ssl.SSLContext, peers: list[Peer]
) -> None:
    all_subscribed(nodes)
    alice = Identity.generate("alice")
    # A connection its client gave up on (a laptop that changed networks): the server
    # has not noticed yet, and would not until the keepalive.
    stale = peer_login(peers, nodes[0], client_ctx, "alice", identity=alice)
    fresh = peer_login(peers, nodes[1], client_ctx, "alice", identity=alice)
    error = stale.expect(Error)
    assert (error.code, error.fatal) == (Code.REPLACED, True)
    # The new session is the one served: it is in the room, under its nick.
    fresh.send(Who(room="#lobby"))
    assert "alice" in fresh.expect(Names, room="#lobby").users


def test_the_device_cap_counts_a_persons_devices_on_every_node(
    pg_dsn: str,
    redis_server: RedisServer,
    start_server: StartServer,
    client_ctx: ssl.SSLContext,
    clients: list[Client],
    tmp_path: Path,
) -> None:
    from linking_helpers import link_phone
    from whisper_helpers import disk_keys

    nodes = [
        start_server(store=pg_dsn, cluster=redis_server.url, node_lease=LEASE, max_devices=2)
        for _ in range(3)
    ]
    all_subscribed(nodes)
    laptop_keys = disk_keys(tmp_path / "laptop", "alice")
    laptop = login(nodes[0], client_ctx, "alice", laptop_keys)
    clients.append(laptop)
    phone_keys, tablet_keys = disk_keys(tmp_path / "phone", "alice"), disk_keys(tmp_path / "tablet", "alice")
    link_phone(nodes[1].address[1], client_ctx, laptop, laptop_keys, phone_keys)
    link_phone(nodes[1].address[1], client_ctx, laptop, laptop_keys, tablet_keys)
    phone = login(nodes[1], client_ctx, "alice", phone_keys)
    clients.append(phone)
    # Two devices online (on two nodes): a third is refused on a third node, as one
    # server would refuse it.
    tablet = Client("alice", context=client_ctx, port=nodes[2].address[1], timeout=TIMEOUT, keys=tablet_keys)
    with pytest.raises(LoginRejected) as refused:
        tablet.connect()
    assert refused.value.code == Code.QUOTA
    # The same device logging in again elsewhere is not a third one.
    again = login(nodes[2], client_ctx, "alice", phone_keys)
    clients.append(again)
    assert next_matching(phone, Error, code=Code.REPLACED).fatal
    # Once a device has logged out, the tablet gets in. (Its release reaches Redis as
    # its node ends the session: no event a client sees, so it retries, with a deadline.)
    again.close()
    deadline = time.monotonic() + TIMEOUT
    while True:
        tablet = Client(
            "alice", context=client_ctx, port=nodes[2].address[1], timeout=TIMEOUT, keys=tablet_keys
        )
        try:
            tablet.connect()
            break
        except LoginRejected as exc:
            assert exc.code == Code.QUOTA and time.monotonic() < deadline, exc
            time.sleep(0.05)
    clients.append(tablet)


def test_room_lines_flow_on_after_redis_forgets_the_publish_script(
    nodes: list[Server], redis_server: RedisServer, client_ctx: ssl.SSLContext, clients: list[Client]
) -> None:
    alice = connect(nodes[0], client_ctx, "alice", clients)
    bob = connect(nodes[1], client_ctx, "bob", clients)
    all_subscribed(nodes)
    alice.say("before")
    assert next_matching(bob, Message, text="before").nick == "alice"
    # The publisher calls the script by its hash; an operator's SCRIPT FLUSH (or a Redis
    # that lost it) makes Redis answer NOSCRIPT, and the node loads it again.
    assert redis_server.command("SCRIPT", "FLUSH").startswith(b"+OK")
    alice.say("after")
    assert next_matching(bob, Message, text="after").nick == "alice"


def test_a_redis_that_would_bring_back_old_data_after_a_restart_is_refused_at_start(
    pg_dsn: str,
    redis_server: RedisServer,
    cert_files: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from securechat.cli import main

    argv = ["server", "--port", "0", "--cert", cert_files["cert"], "--key", cert_files["key"], "--init"]
    argv += ["--store", pg_dsn, "--cluster", redis_server.url]
    # Snapshots on (Debian's redis.conf has them): a restart would restore old offsets,
    # claims and members under the same epoch.
    assert redis_server.command("CONFIG", "SET", "save", '"3600 1"').startswith(b"+OK")
    assert main([*argv, "--data-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err and "persistence" in err and "save" in err
    # The append-only file likewise.
    assert redis_server.command("CONFIG", "SET", "save", '""').startswith(b"+OK")
    assert redis_server.command("CONFIG", "SET", "appendonly", "yes").startswith(b"+OK")
    assert main([*argv, "--data-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err and "appendonly" in err
