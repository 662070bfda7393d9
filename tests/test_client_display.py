from __future__ import annotations

import pytest

from securechat.client.display import format_event, sanitize
from securechat.protocol import Bye, Error, Joined, Left, Message, Names, Ping, Welcome


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text \u00e9\u2603", "plain text \u00e9\u2603"),
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),  # window-title escape
        ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # clear screen
        ("C1 \x9b31m csi", "C1 \\x9b31m csi"),
        ("admin\u202e\u2066txt.exe", "admin\\u202e\\u2066txt.exe"),  # bidi override and isolate
        ("tab\there\r", "tab\\x09here\\x0d"),
        ("del\x7f", "del\\x7f"),
    ],
)
def test_sanitize_makes_controls_visible_and_inert(raw: str, shown: str) -> None:
    assert sanitize(raw) == shown


def test_no_control_character_survives_sanitize() -> None:
    everything = (
        "".join(chr(c) for c in range(0x00, 0x300)) + "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    )
    out = sanitize(everything)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)
    assert not any(c in out for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def test_messages_show_time_nick_and_text() -> None:
    (line,) = format_event(Message(nick="bob", text="hi", ts=0.0))
    assert line.endswith(" <bob> hi") and line[2] == ":"


def test_multiline_messages_are_indented_and_each_line_sanitised() -> None:
    lines = format_event(Message(nick="bob", text="one\n\x1b[31mtwo", ts=0.0))
    assert len(lines) == 2
    assert lines[1].strip() == "\\x1b[31mtwo" and lines[1].startswith(" " * 8)


def test_notices() -> None:
    assert format_event(Joined(nick="bob"), now=0)[0].endswith("* bob joined #lobby")
    assert format_event(Left(nick="bob", reason="quit"), now=0)[0].endswith("* bob left #lobby (quit)")
    assert format_event(Names(users=("a", "b")), now=0)[0].endswith("* in #lobby: a, b")
    assert "connected as a" in format_event(Welcome(version=1, nick="a", users=("a",)), now=0)[0]
    assert format_event(Error(code="x", reason="nope"), now=0)[0].endswith("! nope")
    assert format_event(Bye(reason="restarting"), now=0)[0].endswith("* server: restarting")
    assert format_event(Ping(), now=0) == []


def test_a_terminal_without_utf8_gets_escapes_instead_of_mojibake() -> None:
    from securechat.client.display import Theme
    from securechat.client.events import WhisperReceived

    ascii_theme = Theme(ascii_only=True)
    (line,) = format_event(Message(nick="bob", text="caf\u00e9 \u2603", ts=0.0), theme=ascii_theme)
    assert line.isascii() and "caf\\xe9 \\u2603" in line
    whisper = WhisperReceived(sender="bob", text="hi", trust="verified", fingerprint="f", msg_id="m", ts=0.0)
    assert "[e2e whisper from bob, verified]" in format_event(whisper, theme=ascii_theme)[0]
    assert "\U0001f512" in format_event(whisper)[0]  # a UTF-8 terminal gets the lock


def test_colours_are_stable_per_nick_and_absent_without_colour() -> None:
    import re

    from securechat.client.display import Theme

    colour = Theme(color=True)

    def code(nick: str) -> str:
        found = re.match(r"\x1b\[38;5;(\d+)m", colour.nick(nick))
        assert found is not None
        return found.group(1)

    assert code("alice") == code("Alice") == code("ALICE")  # case-insensitive, like nicks
    assert len({code(n) for n in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")}) >= 4
    assert colour.nick("alice").endswith("alice\x1b[0m")
    assert Theme().nick("alice") == "alice"
    lines = format_event(Message(nick="bob", text="a\nb", ts=0.0), theme=colour)
    assert lines[1] == " " * len("00:00 <bob> ") + "b"  # the indent ignores the colour codes


def test_whisper_outcomes_replays_and_keystore_trouble_are_told_plainly() -> None:
    from securechat.client.events import KeyChanged, ResendPending, StorageFailed, WhisperReceived
    from securechat.protocol import WhisperStatus

    (failed,) = format_event(WhisperStatus(id="m1", to="bob", status="failed", reason="unknown-prekey"))
    assert "could not be decrypted by their client (unknown-prekey)" in failed and "kept" in failed
    replay = WhisperReceived(
        sender="bob", text="hi", trust="unverified", fingerprint="f", msg_id="m", ts=0.0, replay=True
    )
    assert "(kept from before a restart)" in format_event(replay)[0]
    alarm = format_event(KeyChanged(peer="bob", old_fingerprint="a", new_fingerprint="b", held=0, unsent=2))
    assert "sends again the 2 whisper(s)" in alarm[-1]
    (pending,) = format_event(ResendPending(peer="bob\x1b[2J", count=1, reason="no keys"))
    assert "1 whisper(s) to bob\\x1b[2J are kept" in pending
    (disk,) = format_event(StorageFailed(reason="the disk is full"))
    assert "cannot save whispers: the disk is full" in disk
    (store,) = format_event(Error(code="store-unavailable", reason="disk full", ref="m1"))
    assert "could not store a whisper just now; it will be sent again" in store


def test_a_peers_rename_is_told_as_checked_refused_or_unconfirmed() -> None:
    """Review 2: a carried-over key was never told; a rename claim with another key must
    read as the alarm it is."""
    from securechat.client.events import KeyChanged, KnownKeyRenamed, RenameUnconfirmed

    (verified,) = format_event(KnownKeyRenamed(old="bob", new="bob2", trust="verified"), now=0.0)
    assert verified.endswith("* bob2 holds the key you verified as bob: still verified")
    (known,) = format_event(KnownKeyRenamed(old="bob", new="bob2", trust="unverified"))
    assert "bob2 holds the key you knew as bob (not verified: /verify bob2)" in known
    claim = format_event(
        KeyChanged(peer="mallory", old_fingerprint="a", new_fingerprint="b", held=0, renamed_from="bob")
    )
    assert "the server says bob is now mallory, but mallory holds another key" in claim[0]
    assert "mallory's safety number changed" in claim[1]
    (unconfirmed,) = format_event(RenameUnconfirmed(old="bob", new="bob2\x1b[2J", reason="no keys"))
    assert "the server says bob is now bob2\\x1b[2J, but that could not be checked (no keys)" in unconfirmed


#: Invisible format characters and line separators: zero-width space, non-joiner and
#: joiner, word joiner, byte-order mark, soft hyphen, a tag character, U+2028 and U+2029.
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad\U000e0041\u2028\u2029"


@pytest.mark.parametrize("ch", list(_INVISIBLE))
def test_sanitize_makes_invisible_format_characters_and_line_separators_visible(ch: str) -> None:
    shown = sanitize(f"ad{ch}min")
    assert ch not in shown and shown.startswith("ad\\") and shown.endswith("min")


def test_no_format_or_separator_character_survives_sanitize() -> None:
    import unicodedata

    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    out = sanitize(everything)
    assert not [c for c in out if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]


def test_room_events_read_as_irc_users_expect() -> None:
    from securechat.protocol import (
        BanEntry,
        BanList,
        Entered,
        Invited,
        Renamed,
        RoomChanged,
        RoomEntry,
        Rooms,
    )

    def shown(event: object, me: str = "alice") -> list[str]:
        lines = format_event(event, now=0, me=me)  # type: ignore[arg-type]
        return [line[6:] if line[2:3] == ":" else line for line in lines]  # without the clock

    entered = Entered(
        room="#dev",
        users=("alice", "bob", "carol"),
        away=("bob",),
        topic="ship \x1b[2J it",
        registered=True,
        owner="carol",
        operators=("bob",),
    )
    assert shown(entered) == [
        "* you are in #dev (registered); here: alice, @bob (away), ~carol",
        "* topic of #dev: ship \\x1b[2J it",
    ]
    assert shown(Names(room="#dev", users=("alice", "bob"), away=("alice",), operators=("bob",))) == [
        "* in #dev: alice (away), @bob"
    ]
    assert shown(Left(room="#dev", nick="bob", by="carol", reason="spam")) == [
        "* bob was kicked from #dev by carol (spam)"
    ]
    assert shown(Left(room="#dev", nick="alice", by="carol")) == ["* you were kicked from #dev by carol"]
    assert shown(RoomChanged(room="#dev", nick="bob", what="topic", topic="new")) == [
        "* bob set the topic of #dev: new"
    ]
    assert shown(
        RoomChanged(room="#dev", nick="bob", what="invite_only", invite_only=True, registered=True)
    ) == ["* bob made #dev invite-only"]
    assert shown(Invited(room="#dev", nick="alice", by="bob")) == ["* bob invites you to #dev: /join #dev"]
    assert shown(Invited(room="#dev", nick="dave", by="alice")) == ["* alice invited dave to #dev"]
    assert shown(Renamed(old="bob", new="bob2")) == ["* bob is now known as bob2"]
    assert shown(Renamed(old="alice", new="alice2"), me="alice2") == ["* you are now known as alice2"]
    listing = shown(Rooms(pattern="#d*", rooms=(RoomEntry(room="#dev", users=3, topic="t"),), truncated=True))
    assert listing == [
        "* 1 room matching #d*:",
        "  #dev    3  t",
        "  ... and more: give /list a pattern to narrow it",
    ]
    assert shown(BanList(room="#dev", bans=(BanEntry(mask="mallory", kind="key", by="carol"),))) == [
        "* bans in #dev:",
        "  mallory (identity key, by carol)",
    ]
    assert shown(Error(code="not-operator", reason="you are not an operator of #dev", ref="#dev")) == [
        "! #dev: you are not an operator of #dev"
    ]
    welcome = Welcome(version=2, nick="alice", users=("alice",), software="securechat 0.2.0")
    # Version 2: the rooms and their members come in `entered` frames, not twice.
    assert shown(welcome) == ["* connected as alice (securechat 0.2.0)"]
    old_server = Welcome(version=1, nick="alice", users=("alice", "bob"), software="securechat 0.1.0")
    assert shown(old_server) == ["* connected as alice to #lobby (securechat 0.1.0); here: alice, bob"]
