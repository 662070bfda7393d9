"""Linking a device in tests: both sides of a linking run by the real client, and the
person between the two screens (tests/test_client_linking.py, test_e2e_adversarial.py)."""

from __future__ import annotations

import queue
import ssl
import threading
from typing import Any

from chat import TIMEOUT

from securechat import Client
from securechat.client.linking import LinkError, accept_link, link_new_device
from securechat.client.whispers import WhisperKeys


class Person:
    """What a person does between two screens: reads a code on one, types it on the other."""

    def __init__(self) -> None:
        self.shown_on_new: queue.Queue[str] = queue.Queue()
        self.shown_on_old: queue.Queue[str] = queue.Queue()
        self.typos = 0  # wrong codes typed on the identity device first

    def type_on_old(self, tries_left: int) -> str:
        code = self.shown_on_new.get(timeout=TIMEOUT)
        if self.typos:
            self.typos -= 1
            self.shown_on_new.put(code)  # still on the new device's screen
            return "000000" if code != "000000" else "111111"
        return code

    def type_on_new(self, tries_left: int) -> str:
        return self.shown_on_old.get(timeout=TIMEOUT)


def link_phone(
    port: int,
    ctx: ssl.SSLContext,
    laptop: Client,
    laptop_keys: WhisperKeys,
    phone_keys: WhisperKeys,
    person: Person | None = None,
    nick: str = "alice",
) -> str:
    """Run both sides of a linking of `nick`'s new device (the laptop's side in a thread);
    the phone's device id."""
    person = person or Person()
    result: dict[str, Any] = {}

    def old_side() -> None:
        try:
            result["device"] = accept_link(
                laptop, laptop_keys, person.type_on_old, person.shown_on_old.put, timeout=TIMEOUT
            )
        except LinkError as exc:
            result["error"] = exc

    thread = threading.Thread(target=old_side)
    thread.start()
    guest = Client(f"{nick}-linking", context=ctx, port=port, timeout=TIMEOUT)
    guest.connect()
    try:
        link_new_device(guest, nick, phone_keys, person.shown_on_new.put, person.type_on_new, timeout=TIMEOUT)
    finally:
        guest.close()
        thread.join(TIMEOUT)
    if "error" in result:
        raise result["error"]
    return str(result["device"])
