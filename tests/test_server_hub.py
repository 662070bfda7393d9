from __future__ import annotations

import json

import pytest

from securechat.server.hub import Hub, NickTaken, NoSuchRoom


class FakeMember:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.away = ""

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)

    def seen(self) -> list[dict[str, object]]:
        return [json.loads(line) for f in self.frames for line in f.splitlines()]


def join(hub: Hub, nick: str, *, version: int = 1, key: bytes = b"") -> tuple[FakeMember, list[tuple[str, ...]]]:
    """Log `nick` in (by default as a version-1 session: #lobby only, no `entered`)."""
    member = FakeMember()
    welcomed: list[tuple[str, ...]] = []
    hub.join(member, nick, welcomed.append, version=version, key=key)
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
        hub.names("#elsewhere")


def test_leave_announces_and_frees_the_nick() -> None:
    hub = Hub()
    alice, _ = join(hub, "alice")
    bob, _ = join(hub, "bob")
    hub.leave(bob, "bob", "quit")
    hub.flush_presence()
    assert alice.seen()[-1] == {"type": "left", "room": "#lobby", "nick": "bob", "reason": "quit", "by": ""}
    assert hub.names("#lobby").users == ("alice",)
    join(hub, "bob")


def test_leave_by_a_member_that_does_not_hold_the_nick_is_ignored() -> None:
    hub = Hub()
    _alice, _ = join(hub, "alice")
    impostor = FakeMember()
    hub.leave(impostor, "alice")
    assert hub.names("#lobby").users == ("alice",)


def test_names_are_sorted_case_insensitively() -> None:
    hub = Hub()
    for nick in ("carol", "Bob", "alice"):
        join(hub, nick)
    assert hub.names("#lobby").users == ("alice", "Bob", "carol")


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
    assert hub.names("#lobby").users == ("alice", "bob")
    assert [m["type"] for m in bob.seen()][-2:] == ["joined", "left"]


def test_a_replaced_session_is_not_announced_and_its_successor_gets_only_later_notices() -> None:
    hub = Hub()
    alice, _ = join(hub, "alice")
    old = FakeMember()
    hub.join(old, "bob", lambda users: None, version=1)
    new = FakeMember()
    assert hub.join(new, "bob", lambda users: None, may_replace=lambda holder: holder is old, version=1) is old
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
