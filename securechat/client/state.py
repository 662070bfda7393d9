"""What the terminal shows besides the scrollback: who is here, connection state, unread
whispers, who is ignored. Pure: fed events, asked questions; no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import Joined, Left, Message, Names, Welcome, fold_nick
from .events import Reconnected, Reconnecting, WhisperReceived

__all__ = ["ChatState"]


@dataclass
class ChatState:
    nick: str
    server: str
    users: dict[str, str] = field(default_factory=dict)  # folded -> as spelled
    connection: str = "connected"
    unread_whispers: int = 0
    ignored: set[str] = field(default_factory=set)  # folded nicks

    def apply(self, event: object) -> None:
        """Update from one event the client produced."""
        if isinstance(event, (Welcome, Names)):
            self.users = {fold_nick(n): n for n in event.users}
        elif isinstance(event, Reconnected):
            self.users = {fold_nick(n): n for n in event.users}
            self.connection = "connected"
        elif isinstance(event, Joined):
            self.users[fold_nick(event.nick)] = event.nick
        elif isinstance(event, Left):
            self.users.pop(fold_nick(event.nick), None)
        elif isinstance(event, Reconnecting):
            self.connection = f"reconnecting (attempt {event.attempt})"
        elif isinstance(event, WhisperReceived) and not self.is_ignored(event.sender):
            self.unread_whispers += 1

    def is_ignored(self, nick: str) -> bool:
        return fold_nick(nick) in self.ignored

    def hides(self, event: object) -> bool:
        """True for events from someone the user ignores (their lines and whispers)."""
        if isinstance(event, Message):
            return self.is_ignored(event.nick)
        if isinstance(event, WhisperReceived):
            return self.is_ignored(event.sender)
        return False

    def mentions_me(self, text: str) -> bool:
        """Whether `text` names us as a word (case-insensitive): "alice:", "@alice", "hi alice"."""
        me = fold_nick(self.nick)
        words = "".join(ch if ch.isalnum() or ch in "_-." else " " for ch in text.lower()).split()
        return me in (w.strip(".-") for w in words)

    def status_line(self) -> str:
        unread = (
            f" | {self.unread_whispers} unread whisper{'s' if self.unread_whispers != 1 else ''}"
            if (self.unread_whispers)
            else ""
        )
        return f" {self.server} | {self.nick} | {self.connection} | {len(self.users)} here{unread} "
