from __future__ import annotations

import json

import pytest

from securechat.protocol import (
    MAX_LINE_BYTES,
    Code,
    Error,
    FetchKeys,
    Hello,
    KeyIdentity,
    Keys,
    Message,
    Names,
    OneTimeKemPrekeyRecord,
    OneTimePrekeyRecord,
    Ping,
    PrekeyCount,
    PublishKeys,
    Say,
    SignedKemPrekeyRecord,
    SignedPrekeyRecord,
    Welcome,
    decode_line,
    encode,
    fold_nick,
    is_valid_nick,
)
from securechat.protocol.keys import MAX_KOPKS_PER_PUBLISH, MAX_OPKS_PER_PUBLISH

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


def _kem_records(count: int) -> tuple[SignedKemPrekeyRecord, tuple[OneTimeKemPrekeyRecord, ...]]:
    longest = 2**63 - 1  # ids at their longest in JSON
    kpk = SignedKemPrekeyRecord(id=longest, created=longest, public=b"k" * 1184, signature=b"g" * 64)
    kopks = tuple(
        OneTimeKemPrekeyRecord(id=longest - n, public=b"k" * 1184, signature=b"g" * 64) for n in range(count)
    )
    return kpk, kopks


def test_the_largest_publish_of_both_kinds_of_prekey_fits_one_line() -> None:
    kpk, kopks = _kem_records(MAX_KOPKS_PER_PUBLISH)
    opks = tuple(
        OneTimePrekeyRecord(id=2**63 - 1 - n, public=b"p" * 32, signature=b"g" * 64)
        for n in range(MAX_OPKS_PER_PUBLISH)
    )
    frame = PublishKeys(identity=IDENTITY, spk=SPK, opks=opks, kpk=(kpk,), kopks=kopks)
    line = encode(frame)
    assert len(line) - 1 <= MAX_LINE_BYTES
    assert decode_line(line[:-1]) == frame


def test_kem_prekey_fields_are_checked() -> None:
    kpk, kopks = _kem_records(MAX_KOPKS_PER_PUBLISH + 1)
    with pytest.raises(ValueError, match="kopks: at most"):
        PublishKeys(identity=IDENTITY, spk=SPK, kpk=(kpk,), kopks=kopks)
    with pytest.raises(ValueError, match="only with a kpk"):
        PublishKeys(identity=IDENTITY, spk=SPK, kopks=kopks[:1])
    with pytest.raises(ValueError, match="at most one"):
        PublishKeys(identity=IDENTITY, spk=SPK, kpk=(kpk, kpk))
    with pytest.raises(ValueError, match="at most one of each"):
        Keys(nick="bob", identity=IDENTITY, spk=SPK, kpk=(kpk,), kopks=kopks[:2])
    with pytest.raises(ValueError, match="1184 bytes"):
        SignedKemPrekeyRecord(id=1, created=0, public=b"k" * 32, signature=b"g" * 64)
    keys = Keys(nick="bob", identity=IDENTITY, spk=SPK, kpk=(kpk,), kopks=kopks[:1])
    assert decode_line(encode(keys)[:-1]) == keys
    with pytest.raises(ValueError, match="kopks: an id appears twice"):
        PublishKeys(identity=IDENTITY, spk=SPK, kpk=(kpk,), kopks=(kopks[0], kopks[0]))
    opk = OneTimePrekeyRecord(id=7, public=b"p" * 32, signature=b"g" * 64)
    with pytest.raises(ValueError, match="opks: an id appears twice"):
        PublishKeys(identity=IDENTITY, spk=SPK, opks=(opk, opk))
    # What lets a version-2 peer read version-3 frames: a field a decoder does not know is
    # passed over, not refused.
    newer = json.loads(encode(Keys(nick="bob", identity=IDENTITY, spk=SPK)))
    newer["a_field_from_a_later_version"] = [1, 2, 3]
    assert decode_line(json.dumps(newer).encode()) == Keys(nick="bob", identity=IDENTITY, spk=SPK)
    counts = PrekeyCount(count=1, kem_count=2, kpk_id=3)
    assert decode_line(encode(counts)[:-1]) == counts  # the KEM counts survive the wire
