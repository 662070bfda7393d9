"""Helpers for end-to-end tests: waiting for specific events, and a chatting pair."""

from __future__ import annotations

import threading
import time
from typing import TypeVar

from securechat import Client, Disconnected
from securechat.protocol import Message

T = TypeVar("T")

TIMEOUT = 10.0


def next_matching(client: Client, want: type[T], timeout: float = TIMEOUT, **fields: object) -> T:
    """Skip events (frames or the client's own) until one of type `want` whose fields
    equal `fields`."""
    deadline = time.monotonic() + timeout
    while True:
        item = client.next_event(timeout=max(0.0, deadline - time.monotonic()))
        if isinstance(item, Disconnected):
            raise ConnectionError(f"{client.nick} disconnected: {item.reason}")
        if isinstance(item, want) and all(getattr(item, k) == v for k, v in fields.items()):
            return item


class Chatter:
    """Two clients talking in turns in a background thread, each turn waiting for the
    other side to receive the last message. `stop()` returns how many round trips
    were made and raises if any message went missing or came out of order."""

    def __init__(self, a: Client, b: Client) -> None:
        self._a, self._b = a, b
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.rounds = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._first_round = threading.Event()

    def __enter__(self) -> Chatter:
        self._thread.start()
        assert self._first_round.wait(TIMEOUT), "the pair could not chat at all"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _turn(self, sender: Client, receiver: Client, text: str) -> None:
        sender.say(text)
        # Both sides see each message; only these two chat, so the next message from
        # the sender must be exactly this one.
        for client in (receiver, sender):
            got = next_matching(client, Message, nick=sender.nick)
            assert isinstance(got, Message) and got.text == text, (got, text)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._turn(self._a, self._b, f"a{self.rounds}")
                self._turn(self._b, self._a, f"b{self.rounds}")
                self.rounds += 1
                self._first_round.set()
        except BaseException as exc:
            self._error = exc
            self._first_round.set()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(TIMEOUT * 2)
        if self._error is not None:
            raise AssertionError(f"the chatting pair was disturbed: {self._error!r}") from self._error
        start = self.rounds
        # One more round after the disturbance proves the pair still works.
        self._turn(self._a, self._b, "after")
        self._turn(self._b, self._a, "after")
        return start
