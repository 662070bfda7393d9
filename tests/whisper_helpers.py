"""Clients with identities for whisper tests."""

from __future__ import annotations

import ssl
from pathlib import Path

from chat import TIMEOUT

from securechat import Client
from securechat.client.inbox import MemoryStorage
from securechat.client.keystore import Keystore
from securechat.client.whispers import WhisperKeys
from securechat.e2e.conversations import Conversations
from securechat.e2e.identity import Identity
from securechat.e2e.keystore import KdfParams
from securechat.protocol import PrekeyCount
from securechat.server import Server

#: Cheap scrypt for tests that are not about the KDF (2**17 costs ~0.5 s per open).
FAST_KDF = KdfParams(n=2**10)


def memory_keys(nick: str) -> WhisperKeys:
    return WhisperKeys(Conversations(Identity.generate(nick)), MemoryStorage())


def disk_keys(directory: Path, nick: str, passphrase: str | None = None) -> WhisperKeys:
    if Keystore.exists(directory):
        store = Keystore.open(directory, passphrase)
    else:
        store = Keystore.create(directory, passphrase, FAST_KDF)
    return WhisperKeys.in_keystore(store, nick)


def login(
    server: Server | int, ctx: ssl.SSLContext, nick: str, keys: WhisperKeys, *, wait_published: bool = True
) -> Client:
    """Connect with an identity (to a server, or a port such as a relay's); by default wait
    until the server holds our prekeys."""
    port = server if isinstance(server, int) else server.address[1]
    client = Client(nick, context=ctx, port=port, timeout=TIMEOUT, keys=keys)
    client.connect()
    if wait_published:
        wait_published_keys(client)
    return client


def wait_published_keys(client: Client, timeout: float = TIMEOUT) -> None:
    """Wait until the server reports holding our signed and one-time prekeys."""
    while True:
        status = client.wait_for(PrekeyCount, timeout)
        assert isinstance(status, PrekeyCount)
        if status.count > 0 and status.spk_id > 0:
            return
