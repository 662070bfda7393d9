from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechat.protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Bye,
    Code,
    Connection,
    Error,
    Event,
    Hello,
    Joined,
    LocalProtocolError,
    Message,
    Ping,
    ProtocolError,
    Quit,
    RemoteProtocolError,
    Role,
    Say,
    State,
    Welcome,
)

HELLO = b'{"type":"hello","version":1,"nick":"alice"}\n'


def events_of(conn: Connection) -> list[Event]:
    out: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is CLOSED:
            return out
        assert isinstance(event, Event)
        out.append(event)


def logged_in_server() -> Connection:
    conn = Connection(Role.SERVER)
    conn.receive_data(HELLO)
    assert events_of(conn) == [Hello(version=1, nick="alice")]
    conn.send(Welcome(version=1, nick="alice"))
    assert conn.state is State.READY
    return conn


def test_full_client_server_exchange() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive_data(client.send(Hello(version=1, nick="alice")))
    assert events_of(server) == [Hello(version=1, nick="alice")]
    client.receive_data(server.send(Welcome(version=1, nick="alice", users=("alice",))))
    assert events_of(client) == [Welcome(version=1, nick="alice", users=("alice",))]
    assert client.state is server.state is State.READY
    server.receive_data(client.send(Say(text="hi")))
    assert events_of(server) == [Say(text="hi")]
    client.receive_data(server.send(Message(nick="alice", text="hi", ts=1.0)))
    assert events_of(client) == [Message(nick="alice", text="hi", ts=1.0)]


def test_server_reader_fed_one_byte_at_a_time() -> None:
    stream = HELLO + b'{"type":"say","text":"a"}\r\n\n{"type":"ping","token":"p"}\n'
    conn = Connection(Role.SERVER)
    got: list[Event] = []
    for i in range(len(stream)):
        conn.receive_data(stream[i : i + 1])
        got += events_of(conn)
        if got and conn.state is State.HANDSHAKE:
            conn.send(Welcome(version=1, nick="alice"))
    assert got == [Hello(version=1, nick="alice"), Say(text="a"), Ping(token="p")]


def test_trailing_partial_frame_waits_for_more_data() -> None:
    conn = logged_in_server()
    conn.receive_data(b'{"type":"say","text":"one"}\n{"type":"say","te')
    assert events_of(conn) == [Say(text="one")]
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b'xt":"two"}\n')
    assert events_of(conn) == [Say(text="two")]


def test_end_of_stream_is_closed_and_partial_line_dropped() -> None:
    conn = logged_in_server()
    conn.receive_data(b'{"type":"say","te')
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED
    assert conn.state is State.CLOSED


def test_chat_before_hello_is_fatal() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(b'{"type":"say","text":"hi"}\n')
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.code == Code.HELLO_REQUIRED and info.value.fatal
    with pytest.raises(RemoteProtocolError):  # stays failed
        conn.next_event()
    assert conn.state is State.CLOSED


def test_ping_and_quit_are_allowed_before_hello() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(b'{"type":"ping"}\n{"type":"quit"}\n')
    assert events_of(conn) == [Ping(), Quit()]


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_every_supported_version_is_accepted(version: int) -> None:
    # A version-1 client is still served (#lobby only), a version-2 one without KEM
    # prekeys, a version-3 one as its person's one device; the session reads the version.
    conn = Connection(Role.SERVER)
    conn.receive_data(b'{"type":"hello","version":%d,"nick":"alice"}\n' % version)
    assert events_of(conn) == [Hello(version=version, nick="alice")]
    assert SUPPORTED_VERSIONS == (1, 2, 3, 4) and PROTOCOL_VERSION == 4


def test_wrong_version_is_fatal() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(b'{"type":"hello","version":5,"nick":"alice"}\n')
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.code == Code.UNSUPPORTED_VERSION and info.value.fatal
    assert info.value.reason == "this server speaks protocol versions 1, 2, 3 and 4"


def test_second_hello_is_refused() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(HELLO + HELLO)
    events_of_first = conn.next_event()
    assert isinstance(events_of_first, Hello)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.fatal
    ready = logged_in_server()
    ready.receive_data(HELLO)
    with pytest.raises(RemoteProtocolError) as info:
        ready.next_event()
    assert info.value.code == Code.UNEXPECTED and not info.value.fatal


def test_nonfatal_error_consumes_only_the_bad_line() -> None:
    conn = logged_in_server()
    conn.receive_data(
        b'{"type":"say"}\n{"type":"teleport"}\n{"type":"joined","nick":"x"}\n{"type":"say","text":"ok"}\n'
    )
    codes = []
    for _ in range(3):
        with pytest.raises(RemoteProtocolError) as info:
            conn.next_event()
        assert not info.value.fatal
        codes.append(info.value.code)
    assert codes == [Code.INVALID, Code.UNKNOWN_TYPE, Code.UNEXPECTED]
    assert events_of(conn) == [Say(text="ok")]


def test_client_refuses_chat_before_welcome() -> None:
    conn = Connection(Role.CLIENT)
    conn.send(Hello(version=1, nick="a"))
    conn.receive_data(b'{"type":"joined","nick":"b"}\n')
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.fatal
    other = Connection(Role.CLIENT)
    other.receive_data(b'{"type":"error","code":"nick-taken","reason":"x","fatal":true}\n')
    assert events_of(other) == [Error(code="nick-taken", reason="x", fatal=True)]


def test_local_misuse_raises_local_errors() -> None:
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        client.send(Say(text="too early"))
    with pytest.raises(LocalProtocolError):
        client.send(Joined(nick="servers-only"))
    client.send(Hello(version=1, nick="a"))
    with pytest.raises(LocalProtocolError):
        client.send(Hello(version=1, nick="a"))
    server = logged_in_server()
    with pytest.raises(LocalProtocolError):
        server.send(Say(text="clients only"))
    server.send(Bye(reason="done"))
    assert server.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        server.send(Ping())


def test_over_long_line_is_fatal_at_the_connection_level() -> None:
    conn = Connection(Role.SERVER, max_line=100)
    conn.receive_data(b"x" * 200)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.code == Code.TOO_LONG


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_arbitrary_byte_streams_raise_only_protocol_errors(chunks: list[bytes]) -> None:
    for role in Role:
        conn = Connection(role, max_line=256)
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            while True:
                try:
                    event = conn.next_event()
                except ProtocolError as exc:
                    if getattr(exc, "fatal", True):
                        break
                    continue
                if event is NEED_DATA or event is CLOSED:
                    break
