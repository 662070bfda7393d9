"""Clients of end-to-end versions 1 and 2 meeting over a real server (docs/e2e.md,
"Versions"): an older client's session works and the user is told it is not
post-quantum; a newer client never starts a session without a post-quantum prekey.

The older client is scripted (tests/raw_identity.py, hello version 2): it fetches keys,
sets up with X3DH (tests/e2e_helpers.py `v1_initiate`) and encrypts with today's ratchet,
as a version-1 client did.
"""

from __future__ import annotations

import json
import os
import ssl
import time

import pytest
from chat import TIMEOUT
from e2e_helpers import v1_initiate
from raw_identity import RawIdentity
from whisper_helpers import login, memory_keys

from securechat import Client
from securechat.client.events import NotPostQuantum, WhisperReceived
from securechat.client.inbox import MemoryStorage
from securechat.client.whispers import WhisperKeys, _plaintext
from securechat.e2e.bundle import bundle_from_frame
from securechat.e2e.conversations import Conversations
from securechat.e2e.errors import BundleError
from securechat.e2e.identity import Identity
from securechat.e2e.ratchet import decrypt, encrypt, parse_header
from securechat.protocol import Delivery, FetchKeys, Keys, Whisper, WhisperStatus
from securechat.server import Server


def test_an_older_clients_session_works_and_the_user_is_told_it_is_not_post_quantum(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    bob = login(server, client_ctx, "bob", memory_keys("bob"))
    old = RawIdentity(server, client_ctx, "olduser", version=2)
    try:
        old.send(FetchKeys(nick="bob", ref="f1"))
        keys = old.expect(Keys)
        assert keys.kpk == () and keys.kopks == ()  # a version-2 session is sent no KEM prekey
        assert server.store.prekey_status("bob").kem_count > 0  # ... and burns no one-time one
        state = v1_initiate(old._conv, bundle_from_frame(keys.nick, keys), os.urandom)
        header, ciphertext = encrypt(state, _plaintext("from an older client"))
        assert parse_header(header, "olduser").version == 1
        old.send(Whisper(to="bob", id="old1", header=header, ciphertext=ciphertext))
        assert old.expect(WhisperStatus).status == "stored"

        told = bob.wait_for_any(NotPostQuantum, TIMEOUT)
        assert isinstance(told, NotPostQuantum) and told.peer == "olduser"
        got = bob.wait_for_any(WhisperReceived, TIMEOUT)
        assert isinstance(got, WhisperReceived) and got.text == "from an older client"
        assert bob.keys is not None
        info = bob.keys.peer_info("olduser")
        assert info is not None and info.post_quantum is False

        bob.whisper("olduser", "answered in the same session")
        delivery = old.expect(Delivery)
        reply = parse_header(delivery.header, "bob")
        assert reply.version == 1 and reply.setup is None  # no padding, no new setup
        state, plaintext = decrypt(state, delivery.header, reply, delivery.ciphertext, now=time.time())
        assert json.loads(plaintext) == {"text": "answered in the same session"}
    finally:
        old.close()
        bob.close()


def test_a_newer_client_refuses_to_start_a_session_with_an_older_one_and_says_why(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    old = RawIdentity(server, client_ctx, "olduser", version=2)
    alice: Client | None = None
    try:
        old.send(old.publication(5))  # identity, signed prekey, one-time prekeys: no KEM prekey
        old.round_trip()
        alice = login(server, client_ctx, "alice", memory_keys("alice"))
        with pytest.raises(BundleError, match="olduser's keys have no post-quantum prekey"):
            alice.whisper("olduser", "not under a classical setup")
        assert server.store.pending("olduser") == []  # nothing was sent
    finally:
        old.close()
        if alice is not None:
            alice.close()


def test_an_identity_logging_in_with_an_older_client_loses_its_kem_prekeys_at_once(
    server: Server, client_ctx: ssl.SSLContext
) -> None:
    bob_identity = Identity.generate("bob")
    bob = login(server, client_ctx, "bob", WhisperKeys(Conversations(bob_identity), MemoryStorage()))
    assert server.store.prekey_status("bob").kpk_id > 0
    bob.close()
    # bob goes back to an older client (protocol version 2): it publishes nothing new for
    # days (its signed prekey is current), so the server must not keep handing out KEM
    # prekeys it cannot answer.
    older = RawIdentity(server, client_ctx, "bob", bob_identity, version=2)
    alice: Client | None = None
    try:
        status = server.store.prekey_status("bob")
        assert (status.kem_count, status.kpk_id) == (0, 0) and status.count > 0
        alice = login(server, client_ctx, "alice", memory_keys("alice"))
        with pytest.raises(BundleError, match="bob's keys have no post-quantum prekey"):
            alice.whisper("bob", "not under a setup bob's client cannot read")
    finally:
        older.close()
        if alice is not None:
            alice.close()
