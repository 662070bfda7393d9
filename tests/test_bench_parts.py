"""The benchmark's own logic: markers, dialects' keepalive answers, the progress bar."""

from __future__ import annotations

import json

from securechat.bench.dialects import Irc, Plain, SecureChat, irc_login_reply
from securechat.bench.loadgen import Marker
from securechat.bench.progress import render
from securechat.protocol import Message, encode


def test_markers_are_found_inside_any_framing_and_only_for_this_run() -> None:
    marker, other = Marker(7), Marker(8)
    line = marker.text(3, 41)
    framed = [
        encode(Message(nick="x", text=line, ts=1.0)),  # securechat JSON
        f":x!~x@h PRIVMSG #bench :{line}\r\n".encode(),  # IRC
        line.encode() + b"\n",  # a raw relay
    ]
    for data in framed:
        found = marker.find(data)
        assert len(found) == 1 and found[0][:2] == (b"3", b"41")
        assert other.find(data) == []
    # A line cut in the middle (as a relay without framing does) is not a delivery.
    assert marker.find(line.encode()[:-3] + b"\n") == []


def test_securechat_dialect_answers_pings_and_nothing_else() -> None:
    dialect = SecureChat()
    data = b'{"type":"ping","token":"9"}\n{"type":"message","nick":"a","text":"\\"ping\\"","ts":1}\n'
    answers = dialect.keepalive_answers(data)
    assert [json.loads(x) for x in answers.splitlines()] == [{"type": "pong", "token": "9"}]
    assert dialect.keepalive_answers(b'{"type":"joined","nick":"b"}\n') == b""


def test_irc_dialect_answers_ping_with_pong_and_says_privmsg() -> None:
    irc = Irc("#bench")
    assert irc.keepalive_answers(b":srv 001 a :hi\r\nPING :srv.local\r\n") == b"PONG :srv.local\r\n"
    assert irc.keepalive_answers(b":a!~a@h PRIVMSG #bench :PING me\r\n") == b""
    assert irc.say("hello") == b"PRIVMSG #bench :hello\r\n"
    assert Plain().say("hello") == b"hello\n"


def test_progress_bar_renders_and_clamps() -> None:
    assert render(0, 10, width=10) == "[..........]   0%  0/10"
    assert render(5, 10, width=10) == "[#####.....]  50%  5/10"
    assert render(400_000, 800_000, width=4).endswith("400,000/800,000")
    assert render(20, 10, width=10).startswith("[##########] 100%")
    assert render(1, 0, width=2).startswith("[..]   0%")


def test_irc_login_is_judged_by_each_line_s_command_not_by_the_nicks_it_lists() -> None:
    assert irc_login_reply(b":srv 366 a #bench :End of NAMES list\r") == "done"
    assert irc_login_reply(b":srv 433 * a :Nickname already in use\r") == "refused"
    assert irc_login_reply(b"ERROR :Closing connection\r") == "refused"
    # A NAMES line of a big channel: nicks that look like a refusal are not one.
    assert irc_login_reply(b":srv 353 a = #bench :x 433 ERROR login433 y\r") == ""
    assert irc_login_reply(b"PING :srv\r") == ""
