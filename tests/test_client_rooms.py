"""The rooms a client remembers (pure), and the `Client`'s room operations over real TLS."""

from __future__ import annotations

import pytest

from securechat.client.rooms import MAX_REMEMBERED, RememberedRooms, decode_rooms, encode_rooms


def test_remembered_rooms_keep_join_order_and_one_entry_whatever_the_case() -> None:
    rooms = RememberedRooms(["#dev", "#ops"])
    assert not rooms.add("#dev")
    assert rooms.add("#DEV")  # the latest spelling is kept, in its old place
    assert rooms.names() == ("#DEV", "#ops") and "#Dev" in rooms and len(rooms) == 2
    assert rooms.discard("#OPS") and not rooms.discard("#ops")
    assert list(rooms) == ["#DEV"]


def test_remembered_rooms_are_bounded() -> None:
    rooms = RememberedRooms(f"#r{i}" for i in range(MAX_REMEMBERED + 5))
    assert len(rooms) == MAX_REMEMBERED and "#r0" in rooms and f"#r{MAX_REMEMBERED}" not in rooms


def test_the_saved_form_round_trips_and_damage_is_a_value_error() -> None:
    assert decode_rooms(encode_rooms(["#a", "#b"])) == ["#a", "#b"]
    for damaged in (b"", b"{}", b"[1]", b'["#bad room"]', b'["lobby"]'):
        with pytest.raises(ValueError):
            decode_rooms(damaged)
