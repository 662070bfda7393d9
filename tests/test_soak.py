"""A soak: many clients with churn, then an exact accounting of what arrived.

CI runs a short version; `make soak` runs the full one (200 clients, 60 s) through the
environment variables below. Actors pace themselves with waits on a stop event (that
is load shaping, not a hope about timing); every check at the end waits on markers.
"""

from __future__ import annotations

import gc
import os
import random
import ssl
import threading
from collections import defaultdict
from pathlib import Path

from chat import TIMEOUT
from conftest import StartServer
from whisper_helpers import memory_keys

from securechat import Client, Disconnected
from securechat.client.events import WhisperReceived
from securechat.client.whispers import WhisperKeys
from securechat.protocol import Message, PrekeyCount

CLIENTS = int(os.environ.get("SECURECHAT_SOAK_CLIENTS", "40"))
SECONDS = float(os.environ.get("SECURECHAT_SOAK_SECONDS", "4"))
OBSERVERS = 3
WHISPERERS = max(2, CLIENTS // 10)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


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
    start_server: StartServer, client_ctx: ssl.SSLContext
) -> None:
    # Every simulated user comes from 127.0.0.1: lift the per-IP cap for this test only.
    server = start_server(history_lines=0, max_per_ip=4 * CLIENTS + 16)
    port = server.address[1]
    rss_before = rss_kib()
    threads_before = threading.active_count()

    def connect(nick: str, keys: WhisperKeys | None = None) -> Client:
        c = Client(nick, context=client_ctx, port=port, keys=keys, timeout=TIMEOUT)
        c.connect()
        if keys is not None:  # wait until our keys are published before anyone fetches them
            while not isinstance(s := c.wait_for(PrekeyCount, TIMEOUT), PrekeyCount) or not s.spk_id:
                pass
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
            client = connect(nick, keys)
            seq = 0
            while not stop.wait(rng.uniform(0.05, 0.6)):
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
    assert server.wait_sessions(0, TIMEOUT)
    assert len(server.hub) == 0
    gc.collect()
    assert threading.active_count() <= threads_before
    grown_mib = (rss_kib() - rss_before) / 1024
    print(
        f"\nsoak: {CLIENTS} clients, {SECONDS:.0f} s, {total_public} public lines, "
        f"{total_whispers} whispers, RSS grew {grown_mib:.1f} MiB"
    )
    # Python rarely returns freed memory to the OS; a leak of per-session state
    # would grow with clients x churn far beyond this.
    assert grown_mib < 64 + CLIENTS * 0.5
