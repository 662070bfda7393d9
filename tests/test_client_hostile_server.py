"""`Client` against servers that attack it: whatever a server sends, the client neither
dies, nor waits for ever, nor holds without bound, nor shows what is not ours."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chat import TIMEOUT
from e2e_helpers import genuine_keys_frame
from hostile_server import HostileConn, HostileServer, Script
from whisper_helpers import memory_keys

from securechat import Client, ConnectError, Disconnected
from securechat.client.backoff import Backoff
from securechat.client.events import Reconnected, Reconnecting
from securechat.client.inbox import MemoryStorage
from securechat.client.whispers import WhisperKeys
from securechat.e2e.conversations import Conversations
from securechat.e2e.identity import Identity
from securechat.protocol import Message, WhisperStatus
from securechat.protocol.keys import MAX_OPKS_PER_PUBLISH

FAST = Backoff(base=0.05, cap=0.2)
MESSAGE = {"type": "message", "room": "#lobby", "nick": "bob", "text": "still here", "ts": 1.0}

MakeClient = Callable[..., tuple[Client, HostileServer]]


@pytest.fixture
def hostile(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Iterator[MakeClient]:
    """`hostile(script, **client_args)`: a server running `script` and a client of it
    (not connected yet). Both are closed at teardown, the client first."""
    made: list[tuple[Client, HostileServer]] = []

    def make(script: Script, **kwargs: object) -> tuple[Client, HostileServer]:
        server = HostileServer(server_ctx, script)
        args: dict[str, object] = {"timeout": TIMEOUT, "backoff": FAST, **kwargs}
        client = Client("alice", context=client_ctx, port=server.port, **args)  # type: ignore[arg-type]
        made.append((client, server))
        return client, server

    yield make
    for client, server in made:
        client.close()
        server.close()


def events_until(client: Client, kind: type) -> list[object]:
    """Every event up to and including the first of type `kind` (or `Disconnected`)."""
    seen: list[object] = []
    while True:
        item = client.next_event(timeout=TIMEOUT)
        seen.append(item)
        if isinstance(item, kind | Disconnected):
            return seen


def b64(n: int) -> str:
    return base64.b64encode(bytes(n)).decode()


def keys_frame(nick: str) -> dict[str, object]:
    """A well-formed `keys` frame (its signatures are not valid: it is never asked for)."""
    return {
        "type": "keys",
        "nick": nick,
        "identity": {"sig_key": b64(32), "dh_key": b64(32), "dh_sig": b64(64)},
        "spk": {"id": 1, "created": 1, "public": b64(32), "signature": b64(64)},
        "opks": [{"id": 1, "public": b64(32), "signature": b64(64)}],
    }


# -- 14: the login has a deadline ----------------------------------------------------------


def test_a_server_that_pings_through_the_login_is_given_up_after_the_timeout(hostile: MakeClient) -> None:
    stop = threading.Event()

    def pinger(conn: HostileConn, _: int) -> None:
        conn.read_frame()  # the hello, never answered
        while not stop.wait(0.2):  # a ping every 0.2 s resets any per-read timeout
            conn.send({"type": "ping", "token": "t"})

    client, _ = hostile(pinger, timeout=1.0)
    outcome: list[BaseException] = []

    def connect() -> None:
        try:
            client.connect()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    stop.set()
    assert not thread.is_alive(), "connect() still waiting: the login has no deadline"
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectError), outcome
    assert "login" in str(outcome[0]) and "1" in str(outcome[0])


# -- 15: statuses of whispers we never sent -------------------------------------------------


def test_a_status_for_a_whisper_this_client_never_sent_is_not_shown(hostile: MakeClient) -> None:
    def liar(conn: HostileConn, _: int) -> None:
        conn.login()
        conn.send({"type": "whisper_status", "id": "never-sent", "to": "bob", "status": "delivered"})
        conn.send(MESSAGE)
        conn.hold()

    client, _ = hostile(liar, keys=memory_keys("alice"))
    client.connect()
    seen = events_until(client, Message)
    assert not [e for e in seen if isinstance(e, WhisperStatus)], seen
    assert isinstance(seen[-1], Message)


# -- 13: nothing piles up -------------------------------------------------------------------


def test_keys_nobody_asked_for_are_dropped_not_kept(hostile: MakeClient) -> None:
    def flood(conn: HostileConn, _: int) -> None:
        conn.login()
        conn.send_raw(b"".join(_line(keys_frame("bob")) for _ in range(300)))
        conn.send(MESSAGE)
        conn.hold()

    client, _ = hostile(flood, keys=memory_keys("alice"))
    client.connect()
    assert isinstance(events_until(client, Message)[-1], Message)
    # Before: all 300 waited for the next fetch (~1.25 KB each; RSS 42 -> 115 MB in 20 s of flood).
    assert client._fetch_replies.qsize() == 0


def test_keys_for_someone_else_do_not_answer_a_fetch(hostile: MakeClient) -> None:
    genuine = genuine_keys_frame("bob")
    sent = threading.Event()

    def switcher(conn: HostileConn, _: int) -> None:
        conn.login()
        while conn.read_frame()["type"] != "fetch_keys":
            pass
        conn.send(keys_frame("carol"))  # not what was asked for: must not be taken as the answer
        conn.send(genuine)
        while conn.read_frame()["type"] != "whisper":
            pass
        sent.set()
        conn.hold()

    client, _ = hostile(switcher, keys=memory_keys("alice"))
    client.connect()
    client.whisper("bob", "hello")  # before: BundleError "asked for bob's keys, got carol's"
    assert sent.wait(TIMEOUT)


def test_a_program_that_does_not_read_events_is_disconnected_with_a_reason(hostile: MakeClient) -> None:
    def flood(conn: HostileConn, _: int) -> None:
        conn.login()
        conn.send_raw(b"".join(_line({**MESSAGE, "ts": float(i)}) for i in range(1, 501)))
        conn.hold()

    client, _ = hostile(flood, max_events=50)
    client.connect()
    assert client._reader is not None
    client._reader.join(TIMEOUT)  # read nothing until the reader has given up
    seen = events_until(client, Disconnected)
    assert isinstance(seen[-1], Disconnected) and "not reading" in seen[-1].reason, seen[-1]
    assert len(seen) <= 60  # the bound and a few events of the frame being handled


def test_a_slow_program_is_caught_up_with_not_given_up_on(hostile: MakeClient) -> None:
    # A program that falls behind is not a broken server: the client drops the connection
    # (the server keeps what it did not acknowledge) and comes back once the program has
    # read, however often that happens.
    def flood_then_talk(conn: HostileConn, index: int) -> None:
        conn.login()
        if index < 4:  # more overflows than a broken server would be forgiven
            conn.send_raw(b"".join(_line({**MESSAGE, "ts": float(i)}) for i in range(1, 201)))
        else:
            conn.send({**MESSAGE, "text": "caught up", "ts": 1000.0})
        conn.hold()

    client, _ = hostile(flood_then_talk, max_events=50, reconnect=True)
    client.connect()
    for _ in range(4):
        # The queue offers no event to wait on: poll its size until the reader stopped.
        deadline = time.monotonic() + TIMEOUT
        while client._events.qsize() < 50:
            assert time.monotonic() < deadline, "the flood never filled the queue"
            time.sleep(0.01)
        while client._events.qsize() > 0:  # the program catches up
            item = client.next_event(timeout=TIMEOUT)
            assert not isinstance(item, Disconnected), item
    seen = events_until(client, Message)
    while not (isinstance(seen[-1], Message) and seen[-1].text == "caught up"):
        assert not isinstance(seen[-1], Disconnected), seen[-1]
        seen = events_until(client, Message)


# -- 17: a bad frame is a lost connection, not the end -----------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        b"{not json\n",
        b'{"type":"message","room":"#lobby","nick":"bob","text":"x","ts":' + b"9" * 5000 + b"}\n",
        b"x" * (1 << 20) + b"\n",
    ],
    ids=["bad-json", "5000-digit-number", "1-MiB-line"],
)
def test_one_malformed_frame_makes_the_client_reconnect(hostile: MakeClient, bad: bytes) -> None:
    def once(conn: HostileConn, index: int) -> None:
        conn.login()
        if index == 0:
            conn.send_raw(bad)
        else:
            conn.send(MESSAGE)
        conn.hold()

    client, server = hostile(once, reconnect=True)
    client.connect()
    seen = events_until(client, Message)
    assert isinstance(seen[-1], Message), seen  # before: Disconnected, "the server broke the protocol"
    reasons = [e.reason for e in seen if isinstance(e, Reconnecting)]
    assert reasons and "protocol" in reasons[0]
    assert [e for e in seen if isinstance(e, Reconnected)]
    assert server.connections == 2


def test_repeated_malformed_frames_end_the_client_saying_why(hostile: MakeClient) -> None:
    def always(conn: HostileConn, _: int) -> None:
        conn.login()
        conn.send_raw(b"{not json\n")
        conn.hold()

    client, server = hostile(always, reconnect=True)
    client.connect()
    seen = events_until(client, Disconnected)
    last = seen[-1]
    assert isinstance(last, Disconnected) and "in a row" in last.reason and "protocol" in last.reason, last
    assert server.connections == 3


# -- 12: prekey publication and reader failures -------------------------------------------


def test_a_server_without_our_keys_gets_fresh_prekeys_in_frames_it_accepts(hostile: MakeClient) -> None:
    conv = Conversations(Identity.generate("alice"))
    held = set(conv.secrets.new_opks(250))  # e.g. made before a server reset, some handed out
    keys = WhisperKeys(conv, MemoryStorage())
    published: list[dict[str, object]] = []

    def reset(conn: HostileConn, _: int) -> None:
        conn.login()
        conn.send({"type": "prekey_count", "count": 0, "spk_id": 0})
        published.append(conn.read_frame())
        conn.send(MESSAGE)
        conn.hold()

    client, _ = hostile(reset, keys=keys)
    client.connect()
    seen = events_until(client, Message)
    assert isinstance(seen[-1], Message), seen  # before: the reader died on "at most 200"
    (frame,) = published
    opks = frame["opks"]
    assert frame["type"] == "publish_keys" and isinstance(opks, list)
    assert 0 < len(opks) <= MAX_OPKS_PER_PUBLISH
    assert not {o["id"] for o in opks} & held  # never re-published: some may be handed out


def test_a_failure_inside_the_reader_reconnects_with_the_reason(
    hostile: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = memory_keys("alice")

    def broken(status: object) -> list[object]:
        raise RuntimeError("bug in the publication")

    monkeypatch.setattr(keys, "publications", broken)

    def script(conn: HostileConn, index: int) -> None:
        conn.login()
        conn.send({"type": "prekey_count", "count": 0, "spk_id": 0} if index == 0 else MESSAGE)
        conn.hold()

    client, _ = hostile(script, keys=keys, reconnect=True)
    client.connect()
    seen = events_until(client, Message)
    assert isinstance(seen[-1], Message), seen
    reasons = [e.reason for e in seen if isinstance(e, Reconnecting)]
    assert reasons and "RuntimeError" in reasons[0] and "bug in the publication" in reasons[0]


def _line(frame: dict[str, object]) -> bytes:
    return json.dumps(frame).encode() + b"\n"


def _b(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_json_client_carries_on_after_a_bad_frame(
    server_ctx: ssl.SSLContext, cert_files: dict[str, str], tmp_path: Path
) -> None:
    def once(conn: HostileConn, index: int) -> None:
        conn.login()
        conn.send_raw(b"{not json\n" if index == 0 else _line(MESSAGE))
        conn.hold()

    server = HostileServer(server_ctx, once)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "SECURECHAT_PASSPHRASE": ""}
    command = [sys.executable, "-m", "securechat", "client", "--json", "--nick", "alice"]
    proc = subprocess.Popen(
        [*command, "--port", str(server.port), "--cafile", cert_files["ca"]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        kinds = []
        for line in proc.stdout:  # before: welcome, disconnected, and exit status 1
            kinds.append(json.loads(line)["type"])
            if kinds[-1] in ("message", "disconnected"):
                break
        assert kinds[0] == "welcome" and "reconnecting" in kinds and kinds[-1] == "message", kinds
    finally:
        proc.kill()
        proc.communicate(timeout=TIMEOUT)
        server.close()


def test_a_refusal_of_something_else_is_not_taken_as_the_answer_to_a_key_fetch(hostile: MakeClient) -> None:
    # While a whisper waits for bob's keys, the server refuses a room line: that
    # "rate-limited" names no nick, so it is not the fetch's answer; the keys that follow are.
    sent = threading.Event()

    def script(conn: HostileConn, _: int) -> None:
        conn.login()
        while conn.read_frame()["type"] != "fetch_keys":
            pass
        conn.send(
            {"type": "error", "code": "rate-limited", "reason": "slow down: too many messages", "ref": ""}
        )
        conn.send(genuine_keys_frame("bob"))
        while conn.read_frame()["type"] != "whisper":
            pass
        sent.set()
        conn.hold()

    client, _ = hostile(script, keys=memory_keys("alice"))
    client.connect()
    client.whisper("bob", "hello")  # before: LookupError "slow down: too many messages"
    assert sent.wait(TIMEOUT)
