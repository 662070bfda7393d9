from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable

import pytest

from securechat.server.hub import Hub, Member, NickTaken, NoSuchRoom, RoomError
from securechat.server.rooms import Rooms as Registry
from securechat.server.store import StoredRoom, StoreUnavailable


class FakeMember:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.away = ""

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)

    def seen(self) -> list[dict[str, object]]:
        return [json.loads(line) for f in self.frames for line in f.splitlines()]


def join(
    hub: Hub, nick: str, *, version: int = 1, key: bytes = b""
) -> tuple[FakeMember, list[tuple[str, ...]]]:
    """Log `nick` in (by default as a version-1 session: #lobby only, no `entered`)."""
    member = FakeMember()
    welcomed: list[tuple[str, ...]] = []
    hub.join(member, nick, lambda room, users: welcomed.append(users), version=version, key=key)
    return member, welcomed


def test_join_welcomes_then_announces_to_others_only() -> None:
    hub = Hub(clock=lambda: 42.0)
    alice, welcomed_a = join(hub, "alice")
    bob, welcomed_b = join(hub, "Bob")
    assert welcomed_a == [("alice",)] and welcomed_b == [("alice", "Bob")]
    assert alice.seen() == []  # notices wait for the next flush
    hub.flush_presence()
    assert alice.seen() == [{"type": "joined", "room": "#lobby", "nick": "Bob"}]
    assert bob.seen() == []


def test_nicks_are_unique_case_insensitively() -> None:
    hub = Hub()
    join(hub, "alice")
    with pytest.raises(NickTaken):
        join(hub, "ALICE")
    assert len(hub) == 1


def test_say_reaches_everyone_with_the_same_bytes_object() -> None:
    hub = Hub(clock=lambda: 42.0)
    alice, _ = join(hub, "alice")
    bob, _ = join(hub, "bob")
    hub.flush_presence()
    alice.frames.clear()
    hub.say("alice", "#lobby", "hi")
    assert alice.frames[0] is bob.frames[0]  # encoded once
    assert bob.seen() == [
        {
            "type": "message",
            "room": "#lobby",
            "nick": "alice",
            "text": "hi",
            "ts": 42.0,
            "history": False,
            "action": False,
        }
    ]


def test_unknown_room_is_refused() -> None:
    hub = Hub()
    join(hub, "alice")
    with pytest.raises(NoSuchRoom):
        hub.say("alice", "#elsewhere", "hi")
    with pytest.raises(NoSuchRoom):
        hub.names("alice", "#elsewhere")


def test_leave_announces_and_frees_the_nick() -> None:
    hub = Hub()
    alice, _ = join(hub, "alice")
    bob, _ = join(hub, "bob")
    hub.leave(bob, "bob", "quit")
    hub.flush_presence()
    assert alice.seen()[-1] == {"type": "left", "room": "#lobby", "nick": "bob", "reason": "quit", "by": ""}
    assert hub.names("alice", "#lobby").users == ("alice",)
    join(hub, "bob")


def test_leave_by_a_member_that_does_not_hold_the_nick_is_ignored() -> None:
    hub = Hub()
    _alice, _ = join(hub, "alice")
    impostor = FakeMember()
    hub.leave(impostor, "alice")
    assert hub.names("alice", "#lobby").users == ("alice",)


def test_names_are_sorted_case_insensitively() -> None:
    hub = Hub()
    for nick in ("carol", "Bob", "alice"):
        join(hub, nick)
    assert hub.names("alice", "#lobby").users == ("alice", "Bob", "carol")


def test_newcomers_get_recent_lines_marked_as_history_before_anything_live() -> None:
    hub = Hub(clock=lambda: 7.0, history=2)
    join(hub, "alice")
    for text in ("one", "two", "three"):
        hub.say("alice", "#lobby", text)
    bob, welcomed = join(hub, "bob")
    assert welcomed == [("alice", "bob")]
    assert [(m["text"], m["history"]) for m in bob.seen()] == [("two", True), ("three", True)]
    # Unsaved lines are bounded like the history: "one" is a line the store would not keep.
    unsaved = hub.unsaved()
    assert [m.text for m in unsaved] == ["two", "three"]
    assert hub.saved(unsaved) == 1
    assert hub.unsaved() == []


def test_no_history_kept_when_disabled() -> None:
    hub = Hub(history=0)
    join(hub, "alice")
    hub.say("alice", "#lobby", "gone")
    bob, _ = join(hub, "bob")
    assert bob.seen() == [] and hub.unsaved() == []


def test_lines_said_together_go_out_as_one_frame_with_increasing_timestamps() -> None:
    from securechat.protocol import Say

    hub = Hub(clock=lambda: 42.0, history=10)  # a clock that does not move
    alice, _ = join(hub, "alice")
    bob, _ = join(hub, "bob")
    hub.flush_presence()
    alice.frames.clear()
    hub.say_many("alice", [Say(text="one"), Say(text="two", action=True)])
    assert len(bob.frames) == 1 and bob.frames[0] is alice.frames[0]
    lines = [json.loads(line) for line in bob.frames[0].splitlines()]
    assert [(m["text"], m["action"]) for m in lines] == [("one", False), ("two", True)]
    assert lines[0]["ts"] == 42.0 < lines[1]["ts"]  # clients skip history by ts: never equal
    carol, _ = join(hub, "carol")
    assert [m["text"] for m in carol.seen()] == ["one", "two"]


def test_a_batch_naming_an_unknown_room_sends_nothing() -> None:
    from securechat.protocol import Say

    hub = Hub()
    alice, _ = join(hub, "alice")
    with pytest.raises(NoSuchRoom):
        hub.say_many("alice", [Say(text="fine"), Say(room="#elsewhere", text="no")])
    assert alice.frames == []


def test_a_login_storm_costs_one_write_per_member_per_flush() -> None:
    hub = Hub()
    alice, _ = join(hub, "alice")
    others = [join(hub, f"user{i}")[0] for i in range(50)]
    assert alice.frames == []
    hub.flush_presence()
    assert len(alice.frames) == 1  # fifty notices, one write
    assert [m["nick"] for m in alice.seen()] == [f"user{i}" for i in range(50)]
    # A newcomer gets only the notices after its own: its welcome listed the rest.
    assert [m["nick"] for m in others[10].seen()] == [f"user{i}" for i in range(11, 50)]
    assert others[49].frames == []  # nothing after its own notice: no empty write
    hub.flush_presence()
    assert len(alice.frames) == 1  # nothing pending, nothing sent


def test_notices_go_out_before_the_next_line_and_before_a_member_list() -> None:
    hub = Hub()
    alice, _ = join(hub, "alice")
    bob, _ = join(hub, "bob")
    hub.say("bob", "#lobby", "hi")
    assert [m["type"] for m in alice.seen()] == ["joined", "message"]
    carol, _ = join(hub, "carol")
    hub.leave(carol, "carol", "bye")
    assert hub.names("alice", "#lobby").users == ("alice", "bob")
    assert [m["type"] for m in bob.seen()][-2:] == ["joined", "left"]


def test_a_replaced_session_is_not_announced_and_its_successor_gets_only_later_notices() -> None:
    hub = Hub()
    alice, _ = join(hub, "alice")
    old = FakeMember()
    hub.join(old, "bob", lambda room, users: None, version=1)
    new = FakeMember()
    assert (
        hub.join(new, "bob", lambda room, users: None, may_replace=lambda holder: holder is old, version=1)
        is old
    )
    join(hub, "carol")
    hub.flush_presence()
    assert [m["nick"] for m in alice.seen()] == ["bob", "carol"]  # bob joined once
    assert [m["nick"] for m in new.seen()] == ["carol"]  # only what its welcome did not cover


def test_unsaved_lines_stay_until_the_store_confirms_the_write() -> None:
    hub = Hub(history=5)
    join(hub, "alice")
    hub.say("alice", "#lobby", "one")
    first = hub.unsaved()
    assert [m.text for m in first] == ["one"]
    # The write failed (disk full): nothing is confirmed, and the line is still held.
    hub.say("alice", "#lobby", "two")
    attempt = hub.unsaved()
    assert [m.text for m in attempt] == ["one", "two"]
    hub.say("alice", "#lobby", "three")  # said while the write is under way
    assert hub.saved(attempt) == 0
    assert [m.text for m in hub.unsaved()] == ["three"]


def test_a_backward_clock_jump_never_stamps_a_new_line_older_than_the_last() -> None:
    now = [1_800_000_000.0]
    hub = Hub(clock=lambda: now[0], history=5)
    alice, _ = join(hub, "alice")
    hub.say("alice", "#lobby", "before")
    now[0] -= 365 * 86_400  # the wall clock jumps back a year
    hub.say("alice", "#lobby", "after")
    stamps = [m["ts"] for m in alice.seen() if m["type"] == "message"]
    assert isinstance(stamps[0], float) and isinstance(stamps[1], float)
    assert stamps[1] > stamps[0]
    # And after a restart with the clock still behind, seeded from the stored history.
    restarted = Hub(clock=lambda: now[0], history=5)
    restarted.load_history(hub.unsaved())
    bob, _ = join(restarted, "bob")
    restarted.say("bob", "#lobby", "after restart")
    lines = [m for m in bob.seen() if m["type"] == "message"]
    assert lines[-1]["text"] == "after restart"
    assert isinstance(lines[-1]["ts"], float) and lines[-1]["ts"] > stamps[1]


# -- many rooms ----------------------------------------------------------------------

KEY_A, KEY_B = b"a" * 32, b"b" * 32


def multi(**limits: int) -> Hub:
    from securechat.server.rooms import Rooms

    return Hub(clock=lambda: 42.0, history=3, rooms=Rooms(autojoin=("#lobby", "#news"), **limits))


def types(member: FakeMember) -> list[tuple[str, str]]:
    return [(str(m["type"]), str(m.get("room", ""))) for m in member.seen()]


def test_a_v2_login_enters_every_autojoin_room_and_a_v1_login_only_the_lobby() -> None:
    hub = multi()
    alice, welcomed = join(hub, "alice", version=2)
    assert welcomed == [("alice",)]
    assert types(alice) == [("entered", "#lobby"), ("entered", "#news")]
    old, _ = join(hub, "oldie")
    assert old.seen() == []  # no `entered` for version 1
    assert hub.names("alice", "#news").users == ("alice",)
    assert hub.names("alice", "#lobby").users == ("alice", "oldie")


def test_lines_reach_only_the_rooms_members_and_history_is_per_room() -> None:
    hub = multi()
    _alice, _ = join(hub, "alice", version=2)
    bob, _ = join(hub, "bob", version=2)
    hub.enter("alice", "#dev")
    hub.say("alice", "#dev", "dev line")
    hub.say("alice", "#lobby", "lobby line")
    hub.flush_presence()
    assert [m["text"] for m in bob.seen() if m["type"] == "message"] == ["lobby line"]
    with pytest.raises(RoomError, check=lambda e: e.code == "not-in-room"):
        hub.say("bob", "#dev", "not a member")
    bob.frames.clear()
    hub.enter("bob", "#dev")
    entered, line = bob.seen()
    assert entered["type"] == "entered" and entered["users"] == ["alice", "bob"]
    assert (line["text"], line["history"]) == ("dev line", True)
    # Only autojoin and registered rooms' lines are for the store.
    assert [m.text for m in hub.unsaved()] == ["lobby line"]


def test_an_unregistered_room_and_its_history_vanish_with_its_last_member() -> None:
    hub = multi()
    alice, _ = join(hub, "alice", version=2)
    hub.enter("alice", "#dev")
    hub.say("alice", "#dev", "gone soon")
    hub.part("alice", "#dev", "bye")
    assert alice.seen()[-1] == {"type": "left", "room": "#dev", "nick": "alice", "reason": "bye", "by": ""}
    assert hub.list_rooms("#dev").rooms == ()
    alice.frames.clear()
    hub.enter("alice", "#DEV")
    assert types(alice) == [("entered", "#DEV")]  # a new room: no history


def test_notices_of_several_rooms_go_out_in_one_write_per_member() -> None:
    hub = multi()
    alice, _ = join(hub, "alice", version=2)
    alice.frames.clear()
    join(hub, "bob", version=2)
    hub.flush_presence()
    assert len(alice.frames) == 1
    assert types(alice) == [("joined", "#lobby"), ("joined", "#news")]


def test_settings_changes_reach_v2_members_with_the_whole_state() -> None:
    hub = multi()
    alice, _ = join(hub, "alice", version=2, key=KEY_A)
    old, _ = join(hub, "oldie")
    hub.set_topic("oldie", "#lobby", "anyone may, unregistered")
    assert old.seen() == [] and alice.seen()[-1]["what"] == "topic"
    hub.enter("alice", "#dev")
    hub.register_room("alice", "#dev")
    changed = alice.seen()[-1]
    assert (changed["what"], changed["registered"], changed["owner"]) == ("registered", True, "alice")


def test_names_say_who_is_away_and_who_owns_and_operates() -> None:
    hub = multi()
    _alice, _ = join(hub, "alice", version=2, key=KEY_A)
    _bob, _ = join(hub, "bob", version=2, key=KEY_B)
    carol, _ = join(hub, "carol", version=2)
    hub.enter("alice", "#dev")
    hub.register_room("alice", "#dev")
    hub.enter("bob", "#dev")
    hub.enter("carol", "#dev")
    hub.op("alice", "#dev", "bob", KEY_B)
    carol.away = "lunch"
    hub.set_away("carol", "lunch")  # as its session does after every change
    names = hub.names("carol", "#dev")
    assert (names.users, names.away, names.owner, names.operators) == (
        ("alice", "bob", "carol"),
        ("carol",),
        "alice",
        ("bob",),
    )


def test_the_hub_lists_the_away_its_sessions_told_it() -> None:
    hub = multi()
    _alice, _ = join(hub, "alice", version=2)
    bob, _ = join(hub, "Bob", version=2)
    carol, _ = join(hub, "carol", version=2)
    hub.set_away("bob", "lunch")
    bob.away = "lunch"
    # What sessions tell is what counts, not the members' attribute: a member that
    # changes `away` without telling is not asked (sessions always tell).
    carol.away = "not told"
    assert hub.names("alice", "#lobby").away == ("Bob",)
    hub.set_away("BOB", "")
    assert hub.names("alice", "#lobby").away == ()
    hub.set_away("carol", "gone")
    hub.set_away("nobody", "not online: ignored")
    dave = FakeMember()
    dave.away = "said before logging in"
    hub.join(dave, "dave", lambda room, users: None, version=2)
    entered = [m for m in dave.seen() if m["type"] == "entered" and m["room"] == "#lobby"]
    assert entered[0]["away"] == ["carol", "dave"]


def test_the_away_the_hub_was_told_follows_a_rename_and_ends_with_the_session() -> None:
    hub = multi()
    _alice, _ = join(hub, "alice", version=2)
    bob, _ = join(hub, "bob", version=2)
    hub.set_away("bob", "lunch")
    hub.reserve("bob", "robert")
    hub.rename("bob", "robert")
    assert hub.names("alice", "#lobby").away == ("robert",)
    hub.leave(bob, "robert")
    join(hub, "robert", version=2)  # someone else: not away
    assert hub.names("alice", "#lobby").away == ()


def test_a_login_again_takes_the_new_sessions_away_not_the_old_ones() -> None:
    hub = multi()
    join(hub, "alice", version=2)
    old = FakeMember()
    hub.join(old, "bob", lambda room, users: None, version=2, key=KEY_B)
    hub.set_away("bob", "lunch")
    new = FakeMember()
    hub.join(new, "bob", lambda room, users: None, version=2, key=KEY_B, may_replace=lambda m: m is old)
    assert hub.names("alice", "#lobby").away == ()


def test_a_room_line_reaches_whoever_is_in_the_room_now() -> None:
    # The fan-out keeps each room's recipients between lines: every change of the
    # room's members, or of who is online under a nick, must show in the next line.
    hub = multi()
    members = {
        nick: join(hub, nick, version=2, key=key)[0] for nick, key in (("alice", KEY_A), ("bob", KEY_B))
    }
    hub.enter("alice", "#dev")
    hub.enter("bob", "#dev")

    def heard(text: str) -> set[str]:
        hub.say("alice", "#dev", text)
        return {
            nick
            for nick, member in members.items()
            if any(m.get("text") == text for m in member.seen() if m["type"] == "message")
        }

    assert heard("one") == {"alice", "bob"}
    members["carol"] = join(hub, "carol", version=2)[0]
    hub.enter("carol", "#dev")
    assert heard("two") == {"alice", "bob", "carol"}
    hub.part("bob", "#dev")
    assert heard("three") == {"alice", "carol"}
    hub.reserve("carol", "caroline")
    hub.rename("carol", "caroline")
    assert heard("four") == {"alice", "carol"}  # the same session under its new nick
    old_alice = members["alice"]
    members["alice"] = FakeMember()  # alice logs in again: the new session hears it
    hub.join(
        members["alice"],
        "alice",
        lambda room, users: None,
        version=2,
        key=KEY_A,
        may_replace=lambda m: m is old_alice,
    )
    assert heard("five") == {"alice", "carol"}
    assert not any(m.get("text") == "five" for m in old_alice.seen())
    hub.leave(members["carol"], "caroline")
    assert heard("six") == {"alice"}


def test_lines_said_while_the_hub_is_busy_go_out_together_in_the_order_they_came() -> None:
    # Flat combining: whoever gets the hub's lock fans out every batch left waiting,
    # per room one frame for all of them; a refused batch is answered to its own caller
    # only, and the others' lines still go out.
    hub = multi()
    alice, _ = join(hub, "alice", version=2)
    for nick in ("bob", "carol", "dave"):
        join(hub, nick, version=2)
    hub.enter("alice", "#dev")
    hub.flush_presence()
    alice.frames.clear()
    errors: dict[str, Exception] = {}

    def say(nick: str, room: str) -> None:
        try:
            hub.say(nick, room, f"{nick} in {room}")
        except RoomError as exc:
            errors[nick] = exc

    threads: list[threading.Thread] = []
    with hub._lock:  # the hub is busy: every caller leaves its lines and waits
        for nick, room in (("bob", "#lobby"), ("carol", "#dev"), ("dave", "#lobby")):
            threads.append(threading.Thread(target=say, args=(nick, room)))
            threads[-1].start()
            waited = threading.Event()
            for _ in range(2000):  # until its batch waits, so the order is known (<= 10 s)
                if len(hub._said) == len(threads) or waited.wait(0.005):
                    break
        assert len(hub._said) == 3 and alice.frames == []
    for thread in threads:
        thread.join(10)
    assert isinstance(errors.pop("carol"), RoomError) and not errors  # carol is not in #dev
    lines = [(m["nick"], m["text"]) for m in alice.seen() if m["type"] == "message"]
    assert lines == [("bob", "bob in #lobby"), ("dave", "dave in #lobby")]
    assert len(alice.frames) == 1  # one frame, one stage, for both lines


def test_a_kick_and_a_ban_tell_the_room_and_the_one_put_out() -> None:
    hub = multi()
    alice, _ = join(hub, "alice", version=2, key=KEY_A)
    bob, _ = join(hub, "bob", version=2, key=KEY_B)
    guest, _ = join(hub, "guest", version=2)
    hub.enter("alice", "#dev")
    hub.register_room("alice", "#dev")
    hub.enter("bob", "#dev")
    hub.enter("guest", "#dev")
    hub.kick("alice", "#dev", "guest", "behave")
    kicked = {"type": "left", "room": "#dev", "nick": "guest", "reason": "behave", "by": "alice"}
    assert guest.seen()[-1] == kicked and alice.seen()[-1] == kicked
    hub.ban("alice", "#dev", "bob", KEY_B)
    assert bob.seen()[-1] == {
        "type": "left",
        "room": "#dev",
        "nick": "bob",
        "reason": "banned",
        "by": "alice",
    }
    with pytest.raises(RoomError, check=lambda e: e.code == "banned"):
        hub.enter("bob", "#dev")
    assert hub.ban_list("alice", "#dev").bans[0].kind == "key"


def test_a_rename_reaches_everyone_sharing_a_room_once_and_v1_sees_leave_and_join() -> None:
    hub = multi()
    alice, _ = join(hub, "alice", version=2)
    bob, _ = join(hub, "bob", version=2)
    old, _ = join(hub, "oldie")
    loner, _ = join(hub, "loner", version=2)
    hub.enter("alice", "#dev")
    hub.enter("bob", "#dev")
    hub.part("loner", "#lobby")
    hub.part("loner", "#news")
    for m in (alice, bob, old, loner):
        m.frames.clear()
    hub.rename("alice", "alice2")
    assert [m for m in bob.seen() if m["type"] == "renamed"] == [
        {"type": "renamed", "old": "alice", "new": "alice2"}
    ]
    assert len(bob.seen()) == 1 and alice.seen() == [{"type": "renamed", "old": "alice", "new": "alice2"}]
    assert [(m["type"], m["nick"]) for m in old.seen()] == [("left", "alice"), ("joined", "alice2")]
    assert loner.seen() == []
    assert hub.names("bob", "#dev").users == ("alice2", "bob") and hub.member("alice") is None
    with pytest.raises(NickTaken):
        hub.reserve("bob", "ALICE2")


def test_a_v1_session_replacing_a_v2_one_keeps_only_the_lobby() -> None:
    hub = multi()
    first = FakeMember()
    hub.join(first, "alice", lambda room, users: None, key=KEY_A)
    hub.enter("alice", "#dev")
    second = FakeMember()
    hub.join(
        second, "alice", lambda room, users: None, key=KEY_A, version=1, may_replace=lambda m: m is first
    )
    assert hub.names("alice", "#lobby").users == ("alice",) and hub.list_rooms("#dev").rooms == ()
    with pytest.raises(RoomError, check=lambda e: e.code == "not-in-room"):
        hub.names("alice", "#news")


class RoomWrites:
    """A `RoomStore` that records each write with what the room's members had been told
    by then, and fails on demand."""

    def __init__(self, watched: FakeMember) -> None:
        self.watched = watched
        self.writes: list[tuple[str, StoredRoom, int]] = []  # (call, room, frames seen by then)
        self.failing = False
        self.registered: set[str] = set()

    def register_room(self, room: StoredRoom, *, drop_history: bool = False) -> bool:
        return self._write("register", room) and room.name.lower() not in self.registered

    def save_room(self, room: StoredRoom) -> None:
        self._write("save", room)

    def release_room(self, name: str) -> bool:
        self.writes.append(("release", StoredRoom(name=name, owner_key=b""), len(self.watched.seen())))
        return True

    def _write(self, call: str, room: StoredRoom) -> bool:
        if self.failing:
            raise StoreUnavailable("disk full")
        self.writes.append((call, room, len(self.watched.seen())))
        return True


def test_a_registered_rooms_settings_are_stored_before_anyone_is_told() -> None:
    member = FakeMember()
    writes = RoomWrites(member)
    hub = Hub(clock=lambda: 42.0, history=3, store=writes)
    hub.join(member, "alice", lambda room, users: None, key=KEY_A, version=2)
    hub.enter("alice", "#dev")
    told = len(member.seen())
    hub.set_topic("alice", "#dev", "unregistered: nothing stored")
    assert writes.writes == []
    hub.register_room("alice", "#dev")
    hub.set_topic("alice", "#dev", "stored first")
    (call1, room1, seen1), (call2, room2, seen2) = writes.writes
    assert (call1, room1.owner_key, seen1) == ("register", KEY_A, told + 1)  # before its room_changed
    assert (call2, room2.topic, seen2) == ("save", "stored first", told + 2)
    assert [m["what"] for m in member.seen()[told:]] == ["topic", "registered", "topic"]


def test_a_settings_change_the_store_refuses_changes_nothing_and_tells_nobody() -> None:
    member = FakeMember()
    writes = RoomWrites(member)
    hub = Hub(clock=lambda: 42.0, store=writes)
    hub.join(member, "alice", lambda room, users: None, key=KEY_A, version=2)
    hub.enter("alice", "#dev")
    writes.failing = True
    told = len(member.seen())
    with pytest.raises(StoreUnavailable):
        hub.register_room("alice", "#dev")
    assert len(member.seen()) == told
    writes.failing = False
    hub.register_room("alice", "#dev")  # still the creator's to register: nothing had changed
    writes.failing = True
    with pytest.raises(StoreUnavailable):
        hub.set_invite_only("alice", "#dev", True)
    with pytest.raises(StoreUnavailable):
        hub.ban("alice", "#dev", "guest*", None)
    assert hub.ban_list("alice", "#dev").bans == ()
    member.frames.clear()
    hub.enter("alice", "#dev")
    assert member.seen()[0]["invite_only"] is False and len(member.seen()) == 1


def test_the_welcome_names_a_room_only_with_the_users_of_one_you_are_in() -> None:
    from securechat.server.rooms import Rooms

    hub = Hub(rooms=Rooms(autojoin=()))
    first, rooms = FakeMember(), []
    hub.join(first, "alice", lambda room, users: rooms.append((room, users)), version=2)
    hub.enter("alice", "#lobby")  # an ordinary room of that name
    hub.join(FakeMember(), "bob", lambda room, users: rooms.append((room, users)), version=2)
    assert rooms == [("#lobby", ()), ("#lobby", ())]  # in no room: nobody listed


def test_a_version_1_login_that_lobby_refuses_is_refused_with_nothing_changed() -> None:
    hub = multi()
    hub.load_rooms([StoredRoom("#lobby", KEY_A, invite_only=True)])  # registered, and closed
    join(hub, "alice", version=2, key=KEY_A)
    with pytest.raises(RoomError, check=lambda e: e.code == "invite-only"):
        join(hub, "oldie")
    assert hub.member("oldie") is None
    join(hub, "oldie", version=2)  # a newer client gets in, to #news alone
    assert hub.names("oldie", "#news").users == ("alice", "oldie")


def test_a_nick_reserved_for_a_rename_cannot_be_taken_until_released() -> None:
    hub = Hub()
    join(hub, "alice")
    hub.reserve("alice", "alice2")
    with pytest.raises(NickTaken):
        join(hub, "ALICE2")
    with pytest.raises(NickTaken):
        hub.reserve("alice", "alice2")
    hub.unreserve("alice2")
    join(hub, "alice2")


def test_a_later_line_does_not_reach_a_kicked_or_banned_member() -> None:
    hub = multi()
    alice, _ = join(hub, "alice", version=2, key=KEY_A)
    guest, _ = join(hub, "guest", version=2)
    spammer, _ = join(hub, "spammer", version=2)
    hub.enter("alice", "#dev")
    hub.register_room("alice", "#dev")
    hub.enter("guest", "#dev")
    hub.enter("spammer", "#dev")
    hub.kick("alice", "#dev", "guest")
    hub.ban("alice", "#dev", "spam*", None)
    hub.say("alice", "#dev", "after")
    hub.say("alice", "#news", "elsewhere")  # they are still in the other rooms
    for put_out in (guest, spammer):
        lines = [(m["room"], m["text"]) for m in put_out.seen() if m["type"] == "message"]
        assert lines == [("#news", "elsewhere")]
    assert [m["text"] for m in alice.seen() if m["type"] == "message"] == ["after", "elsewhere"]


def test_joining_a_room_you_are_in_again_sends_entered_alone() -> None:
    hub = multi()
    alice, _ = join(hub, "alice", version=2)
    hub.enter("alice", "#dev")
    for i in range(3):
        hub.say("alice", "#dev", f"line {i}")
    alice.frames.clear()
    hub.enter("alice", "#DEV")  # a client's rejoin after it lost track: no history again
    assert types(alice) == [("entered", "#dev")]


def test_a_guest_renaming_into_a_ban_of_a_room_it_is_in_is_refused() -> None:
    hub = multi()
    join(hub, "alice", version=2, key=KEY_A)
    join(hub, "ok", version=2)
    hub.enter("alice", "#dev")
    hub.register_room("alice", "#dev")
    hub.enter("ok", "#dev")
    hub.ban("alice", "#dev", "spam*", None)
    with pytest.raises(RoomError, check=lambda e: e.code == "banned" and "#dev" in e.reason):
        hub.reserve("ok", "spammer")
    join(hub, "spammer", version=2)  # nothing was left reserved
    assert hub.names("alice", "#dev").users == ("alice", "ok")


def test_a_guests_invitation_goes_when_it_leaves_and_an_identitys_stays_with_its_key() -> None:
    hub = multi()
    join(hub, "alice", version=2, key=KEY_A)
    hub.enter("alice", "#vip")
    hub.register_room("alice", "#vip")
    hub.set_invite_only("alice", "#vip", True)
    dave, _ = join(hub, "dave", version=2)
    hub.invite("alice", "#vip", "dave")
    assert dave.seen()[-1] == {"type": "invited", "room": "#vip", "nick": "dave", "by": "alice"}
    hub.leave(dave, "dave")
    join(hub, "dave", version=2)  # someone else, as a guest
    with pytest.raises(RoomError, check=lambda e: e.code == "invite-only"):
        hub.enter("dave", "#vip")
    bob, _ = join(hub, "bob", version=2, key=KEY_B)
    hub.invite("alice", "#vip", "bob")
    hub.leave(bob, "bob")
    join(hub, "bob2", version=2, key=KEY_B)  # the same person later, under another nick
    hub.enter("bob2", "#vip")


class BlockingRegistration:
    """A `RoomStore` whose `register_room` waits until released, to let the room change
    meanwhile; `release_room` undoes a registration."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.go_on = threading.Event()
        self.registered: set[str] = set()

    def register_room(self, room: StoredRoom, *, drop_history: bool = False) -> bool:
        self.inside.set()
        assert self.go_on.wait(10)
        self.registered.add(room.name.lower())
        return True

    def save_room(self, room: StoredRoom) -> None:
        raise AssertionError("not expected")

    def release_room(self, name: str) -> bool:
        found = name.lower() in self.registered
        self.registered.discard(name.lower())
        return found


def test_a_registration_whose_room_was_replaced_meanwhile_is_undone_not_applied() -> None:
    store = BlockingRegistration()
    hub = Hub(clock=lambda: 42.0, store=store)
    join(hub, "alice", version=2, key=KEY_A)
    join(hub, "bob", version=2, key=KEY_B)
    hub.enter("alice", "#dev")
    errors: list[Exception] = []

    def register() -> None:
        try:
            hub.register_room("alice", "#dev")
        except RoomError as exc:
            errors.append(exc)

    registering = threading.Thread(target=register)
    registering.start()
    assert store.inside.wait(10)
    hub.part("alice", "#dev")  # the room vanishes...
    hub.enter("bob", "#dev")  # ...and bob creates another of that name
    store.go_on.set()
    registering.join(10)
    assert not registering.is_alive()
    assert [getattr(e, "code", None) for e in errors] == ["not-in-room"]
    assert store.registered == set()  # undone in the store too
    assert hub.names("bob", "#dev").users == ("bob",) and hub.names("bob", "#dev").owner == ""
    hub.part("bob", "#dev")  # bob's room is whole: leaving it works
    assert hub.list_rooms("#dev").rooms == ()


def test_idle_registered_rooms_released_by_the_store_become_ordinary_rooms() -> None:
    hub = multi()
    join(hub, "alice", version=2, key=KEY_A)
    join(hub, "bob", version=2, key=KEY_B)
    for name in ("#kept", "#empty"):
        hub.enter("alice", name)
        hub.register_room("alice", name)
    hub.enter("bob", "#kept")
    hub.part("alice", "#empty")
    hub.say("bob", "#kept", "a line")
    asked: list[frozenset[bytes]] = []

    def expire(online: frozenset[bytes]) -> list[str]:
        asked.append(online)
        return ["#kept", "#empty"]

    assert hub.release_idle_rooms(expire) == ["#kept", "#empty"]
    assert asked == [frozenset({KEY_A, KEY_B})]  # the store keeps the rooms of online owners
    assert [r.room for r in hub.list_rooms("#*").rooms] == ["#kept", "#lobby", "#news"]
    assert hub.names("bob", "#kept").owner == ""
    assert hub.unsaved() == [] and "#kept" not in hub.persisted_rooms()


def test_a_registration_that_does_not_happen_costs_none_of_the_networks_registrations() -> None:
    """Review 3: the network's registration was taken before the store write, and kept
    when the write failed or the store had the room registered already."""
    member = FakeMember()
    writes = RoomWrites(member)
    hub = Hub(clock=lambda: 42.0, store=writes)
    hub.join(member, "alice", lambda room, users: None, key=KEY_A, version=2)
    hub.enter("alice", "#dev")
    charged: list[int] = []

    def charge() -> str:
        charged.append(len(writes.writes))  # how many writes had been made by then
        return ""

    writes.failing = True
    with pytest.raises(StoreUnavailable):
        hub.register_room("alice", "#dev", charge)
    writes.failing = False
    writes.registered.add("#dev")  # e.g. by a server sharing the database
    with pytest.raises(RoomError, check=lambda e: e.code == "room-registered"):
        hub.register_room("alice", "#dev", charge)
    assert charged == []
    writes.registered.clear()
    writes.writes.clear()
    hub.register_room("alice", "#dev", charge)
    assert charged == [1]  # once, after the store write
    assert hub.names("alice", "#dev").owner == "alice"


def test_a_registration_the_networks_budget_refuses_is_undone_in_the_store() -> None:
    member = FakeMember()
    writes = RoomWrites(member)
    hub = Hub(clock=lambda: 42.0, store=writes)
    hub.join(member, "alice", lambda room, users: None, key=KEY_A, version=2)
    hub.enter("alice", "#dev")
    told = len(member.seen())
    with pytest.raises(RoomError, check=lambda e: e.code == "quota-exceeded" and "network" in e.reason):
        hub.register_room("alice", "#dev", lambda: "too many registrations from your network")
    assert [(call, room.name) for call, room, _ in writes.writes] == [
        ("register", "#dev"),
        ("release", "#dev"),
    ]
    assert len(member.seen()) == told and hub.names("alice", "#dev").owner == ""
    hub.register_room("alice", "#dev")  # nothing was left behind
    assert hub.names("alice", "#dev").owner == "alice"


def test_a_registration_undone_because_its_room_was_replaced_costs_no_registration() -> None:
    store = BlockingRegistration()
    hub = Hub(clock=lambda: 42.0, store=store)
    join(hub, "alice", version=2, key=KEY_A)
    join(hub, "bob", version=2, key=KEY_B)
    hub.enter("alice", "#dev")
    charged: list[str] = []
    errors: list[Exception] = []

    def register() -> None:
        try:
            hub.register_room("alice", "#dev", lambda: charged.append("#dev") or "")
        except RoomError as exc:
            errors.append(exc)

    registering = threading.Thread(target=register)
    registering.start()
    assert store.inside.wait(10)
    hub.part("alice", "#dev")
    hub.enter("bob", "#dev")  # another room of that name meanwhile
    store.go_on.set()
    registering.join(10)
    assert not registering.is_alive()
    assert [getattr(e, "code", None) for e in errors] == ["not-in-room"]
    assert charged == [] and store.registered == set()


def test_a_ban_set_while_a_rename_was_under_way_puts_the_renamed_member_out() -> None:
    """Review 3: the ban check of a new nick ran only in `reserve`; a ban covering it set
    while the store moved the registration let the renamed member stay in the room."""
    hub = multi()
    alice, _ = join(hub, "alice", version=2, key=KEY_A)
    ok, _ = join(hub, "ok", version=2)
    hub.enter("alice", "#dev")
    hub.register_room("alice", "#dev")
    hub.enter("ok", "#dev")
    hub.reserve("ok", "spammer")  # no ban covers it yet
    hub.ban("alice", "#dev", "spam*", None)  # meanwhile
    hub.flush_presence()
    alice.frames.clear()
    ok.frames.clear()
    hub.rename("ok", "spammer")
    assert hub.names("alice", "#dev").users == ("alice",)
    put_out = {"type": "left", "room": "#dev", "nick": "spammer", "reason": "banned", "by": "alice"}
    for member in (alice, ok):
        seen = member.seen()
        assert seen[0] == {"type": "renamed", "old": "ok", "new": "spammer"}
        assert put_out in seen[1:], seen
    hub.say("alice", "#dev", "after")
    assert not [m for m in ok.seen() if m["type"] == "message" and m["room"] == "#dev"]
    assert hub.names("spammer", "#news").users == ("alice", "spammer")  # not banned there


class StagingMember(FakeMember):
    """A member that coalesces, as a server session does (outbox.py): frames staged
    while a flush is owed leave in that flush's one write."""

    def __init__(self, hub: Hub, on_flush: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.hub = hub
        self.on_flush = on_flush
        self.staged: list[bytes] = []

    def stage(self, frame: bytes) -> bool:
        owed = not self.staged
        self.staged.append(frame)
        return owed

    def flush(self) -> None:
        assert not self.hub._lock.locked(), "flushed under the hub's lock"
        self.on_flush()
        if self.staged:
            self.frames.append(b"".join(self.staged))
            self.staged.clear()


def test_lines_staged_for_a_member_before_its_flush_leave_in_one_write_in_hub_order() -> None:
    hub = Hub(clock=lambda: 42.0)
    members: dict[str, StagingMember] = {}
    armed = threading.Event()

    def carol_speaks() -> None:
        # While alice's fan-out is flushing (after the lock): carol's line is staged
        # behind alice's for everyone alice has not flushed yet.
        if armed.is_set():
            armed.clear()
            hub.say("carol", "#lobby", "from carol")

    for nick in ("alice", "bob", "carol", "dave"):
        members[nick] = StagingMember(hub, on_flush=carol_speaks if nick == "alice" else lambda: None)
        hub.join(members[nick], nick, lambda room, users: None)
    hub.flush_presence()
    for m in members.values():
        m.frames.clear()
    armed.set()
    hub.say("alice", "#lobby", "from alice")
    for nick in ("bob", "dave"):  # flushed after carol spoke: one write with both lines
        writes = members[nick].frames
        assert len(writes) == 1, (nick, writes)
        assert [json.loads(line)["text"] for line in writes[0].splitlines()] == ["from alice", "from carol"]
    for m in members.values():  # everyone saw the same order
        assert [e["text"] for e in m.seen()] == ["from alice", "from carol"]


def test_member_lists_stay_sorted_through_logins_leaves_renames_and_parts() -> None:
    # The hub keeps each room's list sorted as members come and go (no sort per login):
    # every list it hands out must still be exactly the sorted one.
    hub = multi()
    rng = random.Random(7)
    online: dict[str, FakeMember] = {}
    in_dev: set[str] = set()
    for step in range(400):
        action = rng.random()
        if action < 0.45 or not online:
            nick = rng.choice(["al", "Bo", "cy", "Di", "ed", "Fa", "gu", "Ha", "iv", "Jo"]) + str(
                rng.randrange(30)
            )
            if nick.lower() in {n.lower() for n in online}:
                continue
            online[nick], welcomed = join(hub, nick, version=2)
            assert welcomed[-1] == tuple(sorted(online, key=str.lower)), step
        elif action < 0.65:
            nick = rng.choice(sorted(online))
            hub.leave(online.pop(nick), nick)
            in_dev.discard(nick)
        elif action < 0.8:
            nick = rng.choice(sorted(online))
            new = nick.swapcase() + "x"
            if new.lower() in {n.lower() for n in online}:
                continue
            hub.reserve(nick, new)
            hub.rename(nick, new)
            online[new] = online.pop(nick)
            if nick in in_dev:
                in_dev.remove(nick)
                in_dev.add(new)
        elif action < 0.92:
            nick = rng.choice(sorted(online))
            hub.enter(nick, "#dev")
            in_dev.add(nick)
            entered = [e for e in online[nick].seen() if e["type"] == "entered"][-1]
            assert entered["users"] == sorted(in_dev, key=str.lower), step
        elif in_dev:
            nick = rng.choice(sorted(in_dev))
            hub.part(nick, "#dev")
            in_dev.remove(nick)
        if online:
            names = hub.names(next(iter(online)), "#lobby")
            assert list(names.users) == sorted(online, key=str.lower), step


# -- one identity online from several devices ------------------------------------------


def device_login(hub: Hub, nick: str, key: bytes, device: str) -> tuple[FakeMember, Member | None]:
    """Log a version-2 session of `nick` in as `device`, the way a session proving `key`
    does (the same key may share or replace); returns it and whom it displaced."""
    member = FakeMember()
    displaced = hub.join(
        member, nick, lambda room, users: None, version=2, key=key, device=device, may_replace=lambda m: True
    )
    return member, displaced


def test_a_second_device_joins_beside_the_first_and_the_person_is_shown_once() -> None:
    hub = multi()
    bob, _ = join(hub, "bob", version=2)
    laptop, _ = device_login(hub, "alice", KEY_A, "laptop")
    hub.enter("alice", "#dev")
    hub.flush_presence()
    bob.frames.clear()
    desktop, displaced = device_login(hub, "alice", KEY_A, "desktop")
    assert displaced is None
    hub.flush_presence()
    assert bob.seen() == []  # nobody new arrived
    # The new device is sent every room the person is in, #dev included.
    assert [(m["type"], m["room"]) for m in desktop.seen() if m["type"] == "entered"] == [
        ("entered", "#lobby"),
        ("entered", "#news"),
        ("entered", "#dev"),
    ]
    assert hub.names("bob", "#lobby").users == ("alice", "bob")
    assert hub.online().count("alice") == 1
    # A line reaches both devices; one from bob too.
    hub.say("alice", "#dev", "from one of alice's devices")
    hub.say("bob", "#lobby", "hello alice")
    for device in (laptop, desktop):
        texts = [m["text"] for m in device.seen() if m["type"] == "message"]
        assert texts[-2:] == ["from one of alice's devices", "hello alice"]


def test_a_device_leaving_is_not_announced_while_another_stays() -> None:
    hub = multi()
    bob, _ = join(hub, "bob", version=2)
    laptop, _ = device_login(hub, "alice", KEY_A, "laptop")
    desktop, _ = device_login(hub, "alice", KEY_A, "desktop")
    hub.flush_presence()
    bob.frames.clear()
    hub.leave(laptop, "alice")
    hub.flush_presence()
    assert bob.seen() == []
    laptop.frames.clear()
    hub.say("bob", "#lobby", "still there?")
    assert laptop.seen() == []  # gone: it hears nothing more
    assert [m["text"] for m in desktop.seen() if m["type"] == "message"][-1] == "still there?"
    hub.leave(desktop, "alice")  # the last one: now alice leaves
    hub.flush_presence()
    assert [(m["type"], m["room"]) for m in bob.seen() if m["type"] == "left"] == [
        ("left", "#lobby"),
        ("left", "#news"),
    ]
    assert "alice" not in hub.online()


def test_the_same_device_again_replaces_only_its_own_stale_session() -> None:
    hub = multi()
    laptop, _ = device_login(hub, "alice", KEY_A, "laptop")
    desktop, _ = device_login(hub, "alice", KEY_A, "desktop")
    laptop2, displaced = device_login(hub, "alice", KEY_A, "laptop")
    assert displaced is laptop
    hub.leave(laptop, "alice")  # the displaced session closing: changes nothing
    hub.say("alice", "#lobby", "after the reconnect")
    heard = {
        name: any(m.get("text") == "after the reconnect" for m in member.seen())
        for name, member in (("old laptop", laptop), ("laptop", laptop2), ("desktop", desktop))
    }
    assert heard == {"old laptop": False, "laptop": True, "desktop": True}


def test_with_one_device_online_a_reconnect_of_it_replaces_it() -> None:
    hub = multi()
    first, _ = device_login(hub, "alice", KEY_A, "laptop")
    _, displaced = device_login(hub, "alice", KEY_A, "laptop")
    assert displaced is first
    hub.leave(first, "alice")
    assert hub.online() == ("alice",)


def test_devices_beyond_the_cap_are_refused_and_change_nothing() -> None:
    from securechat.server.hub import TooManyDevices
    from securechat.server.rooms import Rooms

    hub = Hub(clock=lambda: 42.0, rooms=Rooms(autojoin=("#lobby",)), max_devices=2)
    one, _ = device_login(hub, "alice", KEY_A, "one")
    device_login(hub, "alice", KEY_A, "two")
    with pytest.raises(TooManyDevices):
        device_login(hub, "alice", KEY_A, "three")
    # A reconnect of a device already online is no new device: still allowed.
    _, displaced = device_login(hub, "alice", KEY_A, "one")
    assert displaced is one


def test_a_person_online_from_several_devices_cannot_rename() -> None:
    hub = multi()
    device_login(hub, "alice", KEY_A, "laptop")
    device_login(hub, "alice", KEY_A, "desktop")
    with pytest.raises(RoomError, match="other devices"):
        hub.reserve("alice", "alicia")


class Wire:
    """The room order of a cluster's backplane, in process: what the hubs publish is kept
    in one list, and `deliver` hands each item to every hub in that order, as the
    backplane's subscriber does (the hub that published it is told it was its own)."""

    def __init__(self) -> None:
        self.hubs: dict[str, Hub] = {}
        self.queued: list[tuple[str, str, str, bytes, bytes]] = []  # (node, kind, room, data, key)

    def hub(self, node: str) -> Hub:
        hub = Hub(
            clock=lambda: 42.0,
            rooms=Registry(autojoin=("#lobby",)),
            publish_lines=lambda room, batch: self.queued.append((node, "lines", room, batch, b"")),
            publish_presence=lambda room, nick, joined, frame, key: self.queued.append(
                (node, "lines", room, frame, key)
            ),
            publish_news=lambda room, news, keep: self.queued.append((node, "news", room, news, b"")),
        )
        self.hubs[node] = hub
        return hub

    def deliver(self) -> None:
        while self.queued:
            origin, kind, room, data, key = self.queued.pop(0)
            for node, hub in self.hubs.items():
                if kind == "lines":
                    hub.deliver_lines(room, [(data, origin, node == origin, key)])
                else:
                    hub.room_news(room, data, origin, node == origin, True)


def alice_and_bob_in_x() -> tuple[Wire, Hub, Hub]:
    """Two nodes: alice on `a` made #x, bob on `b` entered it there."""
    wire = Wire()
    a, b = wire.hub("a"), wire.hub("b")
    join(a, "alice", version=2, key=b"\x01" * 32)
    join(b, "bob", version=2, key=b"\x02" * 32)
    a.enter("alice", "#x")
    wire.deliver()
    b.enter("bob", "#x")  # made on b from what a told: alice's room
    wire.deliver()
    return wire, a, b


def topic_of(hub: Hub, room: str) -> str:
    [entry] = hub.list_rooms(room).rooms
    return entry.topic


def test_cluster_nodes_changing_one_room_at_once_end_with_the_same_settings() -> None:
    wire, a, b = alice_and_bob_in_x()
    with pytest.raises(RoomError, match="only the identity that created"):
        b.register_room("bob", "#x")
    # Both change the topic before either hears of the other's change: the later in the
    # room's order wins on both, not each its own or each the other's.
    a.set_topic("alice", "#x", "from a")
    b.set_topic("bob", "#x", "from b")
    wire.deliver()
    assert topic_of(a, "#x") == topic_of(b, "#x") == "from b"


def test_news_that_is_not_room_news_is_refused_and_changes_nothing() -> None:
    wire = Wire()
    a = wire.hub("a")
    join(a, "alice", version=2)
    a.enter("alice", "#x")
    wire.deliver()
    with pytest.raises(ValueError, match="not room news"):
        a.room_news("#x", b'{"kind": "state", "state": {"name": "#x"}}', "b", False, True)
    assert topic_of(a, "#x") == ""


def test_a_node_that_made_a_change_then_subscribed_again_ends_as_the_others_do() -> None:
    wire, a, b = alice_and_bob_in_x()
    b.set_topic("bob", "#x", "from b")  # first in the room's order
    a.set_topic("alice", "#x", "from a")  # a's own, still on the way when...
    a.resubscribed()  # ...a's subscription is made again: it forgets it was on the way
    wire.deliver()
    assert topic_of(a, "#x") == topic_of(b, "#x") == "from a"


def test_a_registration_is_not_undone_by_a_change_made_before_its_news_arrived() -> None:
    wire, a, b = alice_and_bob_in_x()
    a.register_room("alice", "#x")
    b.set_topic("bob", "#x", "set as it was registered")  # b has not heard yet
    wire.deliver()
    for hub in (a, b):
        names = hub.names("alice" if hub is a else "bob", "#x")
        assert names.owner == "alice", hub
        assert topic_of(hub, "#x") == "set as it was registered"


def test_a_kick_puts_the_person_out_on_every_node_their_devices_are_on() -> None:
    wire = Wire()
    a, b = wire.hub("a"), wire.hub("b")
    bob_key = b"\x02" * 32
    join(a, "alice", version=2, key=b"\x01" * 32)
    a.enter("alice", "#x")
    a.register_room("alice", "#x")
    wire.deliver()
    # bob's laptop on a, his phone on b: one person, in #x through both.
    join(a, "bob", version=2, key=bob_key)
    phone, _ = join(b, "bob", version=2, key=bob_key)
    a.enter("bob", "#x")
    b.enter("bob", "#x")
    wire.deliver()
    a.kick("alice", "#x", "bob", "out", remote_key=bob_key)
    wire.deliver()
    assert not a.is_in("bob", "#x") and not b.is_in("bob", "#x")
    assert {"type": "left", "room": "#x", "nick": "bob", "reason": "out", "by": "alice"} in phone.seen()


def test_a_guests_invitation_made_on_another_node_ends_when_the_guest_leaves() -> None:
    wire = Wire()
    a, b = wire.hub("a"), wire.hub("b")
    join(a, "alice", version=2, key=b"\x01" * 32)
    a.enter("alice", "#x")
    a.register_room("alice", "#x")
    a.set_invite_only("alice", "#x", True)
    guest, _ = join(b, "guest1", version=2)
    wire.deliver()
    a.invite("alice", "#x", "guest1", remote_key=b"")  # guest1 is served by b
    wire.deliver()
    assert any(f.get("type") == "invited" for f in guest.seen())
    b.leave(guest, "guest1")  # gone: the next guest1, on either node, finds no invitation
    wire.deliver()
    for hub in (a, b):
        join(hub, "guest1", version=2)
        with pytest.raises(RoomError, match="invite-only"):
            hub.enter("guest1", "#x")
        hub.leave(hub.member("guest1"), "guest1")  # type: ignore[arg-type]
        wire.deliver()


def test_a_room_other_nodes_have_is_not_made_anew_while_its_state_is_unknown() -> None:
    wire = Wire()
    a = wire.hub("a")
    join(a, "mallory", version=2, key=b"\x03" * 32)
    wire.deliver()
    # After a subscription: alice, on another node, is in #x; its state has not come yet.
    a.remote_members([("#x", "alice", "b", b"\x01" * 32)])
    with pytest.raises(RoomError, match="try again"):
        a.enter("mallory", "#x")
    assert [q for q in wire.queued if q[2] == "#x"] == []  # no news of a room made here
