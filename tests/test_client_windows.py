"""The terminal's windows: pure logic, no terminal."""

from __future__ import annotations

from securechat.client.windows import FOCUS_WAIT, Activity, Kind, PendingFocus, Windows


def test_one_window_per_room_and_query_found_case_insensitively() -> None:
    windows = Windows("#lobby")
    dev = windows.open(Kind.ROOM, "#Dev")
    bob = windows.open(Kind.QUERY, "bob")
    assert windows.open(Kind.ROOM, "#dev") is dev
    assert windows.find(Kind.QUERY, "BOB") is bob
    assert windows.find(Kind.ROOM, "bob") is None  # a nick is not a room
    assert [windows.number(w) for w in (dev, bob)] == [2, 3]
    assert windows.current_number == 1  # opening does not switch unless asked
    windows.open(Kind.QUERY, "carol", focus=True)
    assert windows.current.name == "carol" and windows.title() == "[4:carol (whisper)]"


def test_activity_is_kept_until_the_window_is_looked_at_and_highlights_win() -> None:
    windows = Windows("#lobby")
    dev = windows.open(Kind.ROOM, "#dev")
    bob = windows.open(Kind.QUERY, "bob")
    windows.add(None, ["in the current window"], Activity.HIGHLIGHT)
    assert windows.current.activity is Activity.NONE  # being looked at
    windows.add(dev, ["<carol> hi alice"], Activity.HIGHLIGHT)
    windows.add(dev, ["<carol> ordinary"], Activity.ACTIVITY)
    windows.add(bob, ["* bob joined"], Activity.ACTIVITY)
    assert dev.activity is Activity.HIGHLIGHT  # an ordinary line does not lower it
    assert windows.activity_text() == "act: 2!,3"
    windows.select(2)
    assert dev.activity is Activity.NONE and windows.activity_text() == "act: 3"
    windows.next()
    assert windows.current is bob and windows.activity_text() == ""
    windows.next()
    assert windows.current_number == 1  # wraps around
    windows.previous()
    assert windows.current is bob
    assert not windows.select(9) and windows.current is bob


def test_close_clear_and_lastlog() -> None:
    windows = Windows("#lobby")
    dev = windows.open(Kind.ROOM, "#dev", focus=True)
    windows.add(dev, ["10:00 <bob> Deploy at noon", "10:01 <carol> ok", "10:02 <bob> deploy done"])
    assert windows.lastlog("DEPLOY") == ["10:00 <bob> Deploy at noon", "10:02 <bob> deploy done"]
    windows.clear()
    assert windows.lastlog("deploy") == [] and list(dev.lines) == []
    assert windows.close(dev) and windows.current.name == "#lobby"
    assert not windows.close(windows.current)  # the last window stays
    assert len(windows) == 1


def test_scrollback_pages_and_follows_new_lines_only_at_the_bottom() -> None:
    windows = Windows("#lobby", scrollback=100)
    windows.add(None, [f"line {n}" for n in range(150)])
    assert len(windows.current.lines) == 100  # the oldest fell off
    assert windows.view(5, 80) == [f"line {n}" for n in range(145, 150)]
    windows.page_up(5)
    assert windows.view(5, 80) == [f"line {n}" for n in range(141, 146)]
    assert windows.title().endswith("(scrolled)")
    windows.add(None, ["line 150"])  # scrolled back: the view stays put
    assert windows.view(5, 80) == [f"line {n}" for n in range(141, 146)]
    for _ in range(100):
        windows.page_up(5)
    assert windows.view(5, 80) == ["line 51"]  # the oldest kept line (150 pushed 50 out), at most
    for _ in range(100):
        windows.page_down(5)
    assert windows.view(2, 80) == ["line 149", "line 150"] and windows.current.scroll == 0


def test_long_and_wide_lines_wrap_to_the_screen() -> None:
    windows = Windows("#lobby")
    windows.add(None, ["a" * 25, "\U0001f512" * 6, "\x1b[1;33mshort\x1b[0m"])
    assert windows.view(10, 10) == [
        "a" * 10,
        "a" * 10,
        "a" * 5,
        "\U0001f512" * 5,  # two columns each
        "\U0001f512",
        "\x1b[1;33mshort\x1b[0m",  # colour codes take no room: kept on a line that fits
    ]
    assert windows.view(2, 10) == ["\U0001f512", "\x1b[1;33mshort\x1b[0m"]


def test_a_query_follows_a_rename() -> None:
    windows = Windows("#lobby")
    query = windows.open(Kind.QUERY, "alice")
    windows.rename(Kind.QUERY, "alice", "alice2")
    assert query.name == "alice2" and windows.find(Kind.QUERY, "alice") is None


def test_the_users_switches_are_counted_and_the_programs_focus_is_not() -> None:
    windows = Windows("#lobby")
    dev = windows.open(Kind.ROOM, "#dev")
    windows.open(Kind.QUERY, "bob", focus=True)  # /query: the user's
    windows.next()
    windows.previous()
    assert windows.switches == 3
    windows.focus(dev)
    assert windows.current is dev and windows.switches == 3
    windows.close(dev)
    assert windows.switches == 4


def test_a_joined_rooms_window_is_focused_only_if_nothing_moved_meanwhile() -> None:
    """Review 2: a /join whose answer never came (refused, or typed while offline) left its
    room to be focused whenever it was entered later, taking the user out of a whisper."""
    pending = PendingFocus()
    pending.ask("#Dev", now=100.0, switches=2)
    assert pending.due("#dev", now=100.5, switches=2)
    assert not pending.due("#dev", now=100.6, switches=2)  # taken: once only
    pending.ask("#dev", now=100.0, switches=2)
    assert not pending.due("#dev", now=100.5, switches=3)  # the user switched since
    assert not pending.due("#dev", now=100.6, switches=3)  # and it is gone, not left behind
    pending.ask("#dev", now=100.0, switches=2)
    assert not pending.due("#dev", now=100.0 + FOCUS_WAIT + 0.1, switches=2)  # too late
    pending.ask("#dev", now=100.0, switches=2)
    pending.drop("#DEV")  # refused, or never sent
    assert not pending.due("#dev", now=100.1, switches=2)
    pending.ask("#a", now=100.0, switches=0)
    pending.ask("#b", now=100.0 + FOCUS_WAIT + 1, switches=0)
    assert len(pending) == 1  # a request nobody answered does not stay for ever
