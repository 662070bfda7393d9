"""The three kinds of server the benchmark can load, and how a client logs in to each.

The generator does not decode frames while it measures: every benchmark line carries a
marker (`~RUN~SENDER~SEQ~MICROSECONDS~`) that reads the same whether it arrives inside a
securechat JSON frame, an IRC PRIVMSG or a raw relayed line. A dialect only knows how to
log in, how to say a line, and how to answer the server's keepalive.
"""

from __future__ import annotations

import json
import socket
import ssl
from typing import Protocol

from ..protocol import PROTOCOL_VERSION, Hello, Join, Pong, Say, encode
from ..protocol.framing import LineBuffer
from ..protocol.limits import MAX_LINE_BYTES

__all__ = ["DIALECTS", "Dialect", "Irc", "LoginRefused", "Plain", "SecureChat", "irc_login_reply"]


class LoginRefused(ConnectionError):
    """The server refused or closed a benchmark client's login."""


class Dialect(Protocol):
    """How to talk to one kind of chat server."""

    #: A short name for tables and `--dialect`.
    name: str

    def login(self, sock: socket.socket, nick: str) -> None:
        """Log in on a connected (blocking) socket; return once the server has us in the room.

        Raises `LoginRefused`, `OSError` or `ssl.SSLError`.
        """

    def say(self, text: str) -> bytes:
        """The bytes that say `text` to the room."""

    def keepalive_answers(self, data: bytes) -> bytes:
        """Answers to any keepalive requests in `data` (complete lines); usually b""."""


def _read_until(sock: socket.socket, nick: str, found: bytes, refused: tuple[bytes, ...]) -> None:
    seen = b""
    while found not in seen:
        data = sock.recv(65536)
        if not data:
            raise LoginRefused(f"{nick}: the server closed the connection during login")
        seen = seen[-4096:] + data
        for word in refused:
            if word in seen:
                raise LoginRefused(f"{nick}: login refused: {seen[-300:]!r}")


class SecureChat:
    """securechat's JSON lines, protocol 2 (as a guest: the benchmark measures the room path).

    `login` returns at the welcome: the session is then in the server's autojoin rooms
    (`#lobby` by default), whose `entered` frame and history follow; `say` speaks there.
    """

    name = "securechat"

    def login(self, sock: socket.socket, nick: str) -> None:
        sock.sendall(encode(Hello(version=PROTOCOL_VERSION, nick=nick, client="securechat-bench")))
        lines = LineBuffer(MAX_LINE_BYTES)
        while True:
            data = sock.recv(65536)
            if not data:
                raise LoginRefused(f"{nick}: the server closed the connection during login")
            lines.feed(data)
            line = lines.next_line()
            if line is not None:
                frame = json.loads(line)
                if frame.get("type") != "welcome":
                    raise LoginRefused(f"{nick}: login refused: {frame}")
                return

    def say(self, text: str) -> bytes:
        return encode(Say(text=text))

    def say_in(self, room: str, text: str) -> bytes:
        """The bytes that say `text` to `room` (protocol 2: a session may be in several)."""
        return encode(Say(room=room, text=text))

    def join(self, room: str) -> bytes:
        """The bytes that enter `room`, creating it if needed; the server answers `entered`."""
        return encode(Join(room=room))

    def keepalive_answers(self, data: bytes) -> bytes:
        if b'"ping"' not in data:
            return b""
        answers = b""
        for line in data.splitlines():
            if b'"ping"' in line:
                frame = json.loads(line)
                if frame.get("type") == "ping":
                    answers += encode(Pong(token=str(frame.get("token", ""))))
        return answers


class Irc:
    """RFC 2812 IRC: NICK, USER, JOIN a channel, PRIVMSG to it, PONG to PING."""

    name = "irc"

    def __init__(self, channel: str = "#bench") -> None:
        self.channel = channel

    def login(self, sock: socket.socket, nick: str) -> None:
        sock.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\nJOIN {self.channel}\r\n".encode())
        # 366 is RPL_ENDOFNAMES, the last reply to our JOIN; 433 nick in use; ERROR a refusal.
        # Judged by each complete line's command, not by searching the text: the NAMES
        # list of a big channel holds every nick, and nicks may contain " 433 " or "ERROR".
        tail = b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise LoginRefused(f"{nick}: the server closed the connection during login")
            *lines, tail = (tail + data).split(b"\n")
            for line in lines:
                if irc_login_reply(line) == "done":
                    return
                if irc_login_reply(line) == "refused":
                    raise LoginRefused(f"{nick}: login refused: {line[:300]!r}")

    def say(self, text: str) -> bytes:
        return f"PRIVMSG {self.channel} :{text}\r\n".encode()

    def keepalive_answers(self, data: bytes) -> bytes:
        if b"PING" not in data:
            return b""
        return b"".join(
            b"PONG" + line[4:] + b"\r\n" for line in data.splitlines() if line.startswith(b"PING ")
        )


def irc_login_reply(line: bytes) -> str:
    """What one line from an IRC server (CRLF or not) says about our login: "done" (366,
    the end of our JOIN's NAMES), "refused" (433 nick in use, or ERROR), or "" (more to come)."""
    words = line.split(b" ", 2)
    if words[0] == b"ERROR":
        return "refused"
    command = words[1] if line.startswith(b":") and len(words) > 1 else words[0]
    return {b"366": "done", b"433": "refused"}.get(command.strip(), "")


class Plain:
    """A classroom relay: raw lines, no login beyond the relay's greeting line."""

    name = "plain"

    def login(self, sock: socket.socket, nick: str) -> None:
        _read_until(sock, nick, b"\n", ())

    def say(self, text: str) -> bytes:
        return text.encode() + b"\n"

    def keepalive_answers(self, data: bytes) -> bytes:
        return b""


DIALECTS: dict[str, type[SecureChat] | type[Irc] | type[Plain]] = {
    "securechat": SecureChat,
    "irc": Irc,
    "plain": Plain,
}


def connect_socket(
    host: str, port: int, context: ssl.SSLContext | None, timeout: float = 30.0
) -> socket.socket:
    """A connected socket, wrapped in TLS when `context` is given. Raises `OSError`/`ssl.SSLError`."""
    raw = socket.create_connection((host, port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if context is None:
        return raw
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise
