"""A soak: many clients with churn, then an exact accounting of what arrived.

CI runs a short version; `make soak` runs the full one (200 clients, 60 s) through the
environment variables below. Actors pace themselves with waits on a stop event (that
is load shaping, not a hope about timing); every check at the end waits on markers.
"""

from __future__ import annotations

import os
import random
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from chat import TIMEOUT
from server_process import ServerProcess, free_port
from whisper_helpers import memory_keys, wait_published_keys

from securechat import Client, Disconnected
from securechat.client.events import WhisperReceived
from securechat.client.whispers import WhisperKeys
from securechat.protocol import Message

CLIENTS = int(os.environ.get("SECURECHAT_SOAK_CLIENTS", "40"))
SECONDS = float(os.environ.get("SECURECHAT_SOAK_SECONDS", "4"))
OBSERVERS = 3
WHISPERERS = max(2, CLIENTS // 10)
#: Each client's pause between actions grows with the room: every line fans out to every
#: client, and all the clients live in this one Python process, so their decoding (not the
#: server) is what saturates first. 40 clients talk every ~0.3 s, 200 every ~1.6 s.
PACE = max(1.0, CLIENTS / 40)


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll another process's state (there is no event to wait on across processes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Observer:
    """Present for the whole soak; records everything per sender."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.public: dict[str, list[int]] = defaultdict(list)
        self.whispers: dict[str, list[str]] = defaultdict(list)
        self.ended: set[str] = set()
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not isinstance(item := self.client.next_event(), Disconnected):
            with self.changed:
                if isinstance(item, Message) and not item.history:
                    kind, _, n = item.text.partition(" ")
                    if kind == "seq":
                        self.public[item.nick].append(int(n))
                    elif kind == "end":
                        self.ended.add(item.nick)
                elif isinstance(item, WhisperReceived):
                    self.whispers[item.sender].append(item.msg_id)
                self.changed.notify_all()


def test_soak_with_churn_loses_and_reorders_nothing(
    cert_files: dict[str, str], client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    # The server runs in its own process, as people run it: the clients below all share
    # this one, and must not starve it of the interpreter. Every simulated user comes
    # from 127.0.0.1, so the per-IP cap is lifted for this test only.
    port = free_port()
    server = ServerProcess(port, tmp_path / "data", cert_files, "--max-per-ip", str(4 * CLIENTS + 16))
    try:
        soak(server, port, client_ctx)
    finally:
        stderr = server.stop()
    assert "Traceback" not in stderr, stderr


def soak(server: ServerProcess, port: int, client_ctx: ssl.SSLContext) -> None:
    threads_before, rss_before = server.status("Threads"), server.status("VmRSS")

    def connect(nick: str, keys: WhisperKeys | None = None) -> Client:
        c = Client(nick, context=client_ctx, port=port, keys=keys, timeout=TIMEOUT * PACE)
        c.connect()
        if keys is not None:  # wait until our keys are published before anyone fetches them
            wait_published_keys(c, TIMEOUT * PACE)
        return c

    observers = [Observer(connect(f"obs{i}", memory_keys(f"obs{i}"))) for i in range(OBSERVERS)]
    sent_public: dict[str, list[int]] = defaultdict(list)
    sent_whispers: dict[str, list[str]] = defaultdict(list)
    ledger = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    last_nicks: dict[int, str] = {}

    def actor(index: int) -> None:
        rng = random.Random(index)
        whisperer = index < WHISPERERS
        keys = memory_keys(f"w{index}") if whisperer else None
        generation = 0
        nick = f"w{index}" if whisperer else f"a{index}g0"
        try:
            stop.wait(rng.uniform(0, 1.0) * PACE)  # people arrive over a while, not in one instant
            client = connect(nick, keys)
            seq = 0
            while not stop.wait(rng.uniform(0.05, 0.6) * PACE):
                roll = rng.random()
                if roll < 0.06:  # churn: leave, come back (guests under a new nick)
                    client.quit("churn")
                    client.next_event(TIMEOUT)  # drain a little; the stream ends with the bye
                    client.close()
                    generation += 1
                    nick = nick if whisperer else f"a{index}g{generation}"
                    client = connect(nick, keys)
                    seq = 0
                elif whisperer and roll < 0.3:
                    target = rng.choice(observers).client.nick
                    msg_id = client.whisper(target, f"whisper {seq}")
                    with ledger:
                        sent_whispers[f"{nick}>{target}"].append(msg_id)
                elif roll < 0.35:
                    client.who()
                else:
                    client.say(f"seq {seq}")
                    with ledger:
                        sent_public[nick].append(seq)
                    seq += 1
            client.say("end")  # after this, every earlier line of ours has reached everyone
            last_nicks[index] = nick
            actors_done.wait(TIMEOUT * 6)
            client.close()
        except BaseException as exc:
            errors.append(exc)

    actors_done = threading.Event()
    actors = [threading.Thread(target=actor, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in actors:
        t.start()
    stop.wait(SECONDS)
    stop.set()
    for obs in observers:  # wait for every actor's end marker: then all traffic before it is in
        with obs.changed:
            assert obs.changed.wait_for(lambda o=obs: len(o.ended) >= CLIENTS - len(errors), TIMEOUT * 6), (
                f"{obs.client.nick} saw {len(obs.ended)} of {CLIENTS} end markers; errors: {errors[:3]}"
            )
    actors_done.set()
    for t in actors:
        t.join(TIMEOUT)
    assert not errors, errors[:3]

    total_public = sum(len(v) for v in sent_public.values())
    total_whispers = sum(len(v) for v in sent_whispers.values())
    assert total_public > CLIENTS and total_whispers > 0
    for obs in observers:
        # Nothing lost, nothing duplicated, nothing reordered, per sender.
        assert dict(obs.public) == {k: v for k, v in sent_public.items() if v}
        for key, ids in sent_whispers.items():
            sender, target = key.split(">")
            if target == obs.client.nick:
                assert obs.whispers[sender] == ids

    for obs in observers:
        obs.client.close()
        obs.thread.join(TIMEOUT)
    # Every session's reader and writer thread ends once its client is gone.
    assert wait_until(lambda: server.status("Threads") == threads_before, TIMEOUT), (
        server.status("Threads"),
        threads_before,
    )
    grown_mib = (server.status("VmRSS") - rss_before) / 1024
    print(
        f"\nsoak: {CLIENTS} clients, {SECONDS:.0f} s, {total_public} public lines, "
        f"{total_whispers} whispers; server threads back to {threads_before}, RSS grew {grown_mib:.1f} MiB"
    )
    # CPython seldom hands freed memory back to the OS; what matters is that it does not
    # grow with clients x churn, which a leak of per-session state would make it do.
    assert grown_mib < 32 + CLIENTS * 0.25
