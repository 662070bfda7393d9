from __future__ import annotations

import pytest

from securechat.protocol import (
    Code,
    Error,
    FetchKeys,
    Hello,
    KeyIdentity,
    Keys,
    Message,
    Names,
    Ping,
    Say,
    SignedPrekeyRecord,
    Welcome,
    decode_line,
    encode,
    fold_nick,
    is_valid_nick,
)

IDENTITY = KeyIdentity(sig_key=b"s" * 32, dh_key=b"d" * 32, dh_sig=b"g" * 64)
SPK = SignedPrekeyRecord(id=1, created=0, public=b"p" * 32, signature=b"g" * 64)


@pytest.mark.parametrize("nick", ["a", "alice", "Bob_2", "x.y-z", "_under", "A" * 24])
def test_valid_nicks(nick: str) -> None:
    assert is_valid_nick(nick)
    Hello(version=1, nick=nick)


@pytest.mark.parametrize(
    "nick",
    ["", "A" * 25, "-dash", ".dot", "has space", "semi;colon", "\u0430lice", "al\x1bice", "é", 7, None],
)
def test_invalid_nicks(nick: object) -> None:
    assert not is_valid_nick(nick)
    with pytest.raises(ValueError, match="nick"):
        Hello(version=1, nick=nick)  # type: ignore[arg-type]


def test_nicks_fold_case_insensitively() -> None:
    assert fold_nick("Alice") == fold_nick("ALICE") == "alice"


def test_text_limits_count_utf8_bytes() -> None:
    Say(text="x" * 4096)
    with pytest.raises(ValueError, match="4096"):
        Say(text="x" * 4097)
    with pytest.raises(ValueError, match="4096"):
        Say(text="\u00e9" * 2049)  # 4098 bytes in UTF-8
    with pytest.raises(ValueError, match="empty"):
        Say(text="")


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(ValueError, match="Unicode"):
        Say(text="bad \ud800 text")
    with pytest.raises(ValueError, match="Unicode"):
        Error(code="x", reason="\udfff")


@pytest.mark.parametrize("room", ["lobby", "#", "#" + "r" * 33, "#sp ace"])
def test_bad_rooms(room: str) -> None:
    with pytest.raises(ValueError, match="room"):
        Say(room=room, text="hi")


def test_other_field_checks() -> None:
    with pytest.raises(ValueError):
        Hello(version=0, nick="a")
    with pytest.raises(ValueError):
        Message(nick="a", text="t", ts=float("nan"))
    with pytest.raises(ValueError):
        Names(users=("ok", "not ok"))
    with pytest.raises(ValueError):
        Ping(token="t" * 65)
    with pytest.raises(ValueError):
        Error(code="")


def test_events_are_frozen_and_keyword_only() -> None:
    event = Say(text="hi")
    with pytest.raises(AttributeError):
        event.text = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Say("#lobby", "hi")  # type: ignore[misc]


def test_to_dict_puts_type_first_and_lists_tuples() -> None:
    d = Welcome(version=1, nick="a", users=("a", "b")).to_dict()
    assert next(iter(d)) == "type" and d["type"] == "welcome"
    assert d["users"] == ["a", "b"]


def test_fetch_keys_and_keys_carry_an_optional_ref() -> None:
    # The server echoes a fetch's ref in keys.ref and error.ref, so a client matches a
    # fetch to its answer by that, not by the nick or the error code.
    assert FetchKeys(nick="bob").ref == ""
    frame = encode(FetchKeys(nick="bob", ref="f1"))
    assert frame == b'{"type":"fetch_keys","nick":"bob","ref":"f1"}\n'
    assert decode_line(frame[:-1]) == FetchKeys(nick="bob", ref="f1")
    assert decode_line(b'{"type":"fetch_keys","nick":"bob"}') == FetchKeys(nick="bob")
    FetchKeys(nick="bob", ref="r" * 64)
    with pytest.raises(ValueError, match="ref"):
        FetchKeys(nick="bob", ref="r" * 65)
    with pytest.raises(ValueError, match="ref"):
        FetchKeys(nick="bob", ref="\ud800")
    keys = Keys(nick="bob", identity=IDENTITY, spk=SPK, ref="f1")
    assert decode_line(encode(keys)[:-1]) == keys
    assert Keys(nick="bob", identity=IDENTITY, spk=SPK).ref == ""
    with pytest.raises(ValueError, match="ref"):
        Keys(nick="bob", identity=IDENTITY, spk=SPK, ref="r" * 65)
    # Whatever a fetch may carry, the error that refuses it can echo.
    Error(code=Code.NO_KEYS, ref="r" * 64)
