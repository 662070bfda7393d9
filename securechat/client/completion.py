"""Tab completion for the input line: commands at the start, nicks anywhere."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from .commands import COMMANDS

__all__ = ["ChatCompleter"]


class ChatCompleter(Completer):
    """Completes `/com` to a command, `#de` to a room from `rooms()`, and a word to a nick
    from `nicks()` (case-insensitive). Called on prompt_toolkit's event loop thread.

    A nick completed as the first word of a line gets ": " after it, as IRC users expect.
    """

    def __init__(
        self, nicks: Callable[[], Iterable[str]], rooms: Callable[[], Iterable[str]] = lambda: ()
    ) -> None:
        self._nicks = nicks
        self._rooms = rooms

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        before = document.text_before_cursor
        word = document.get_word_before_cursor(WORD=True)
        if before.startswith("/") and " " not in before:
            for name in COMMANDS:
                if name.startswith(word[1:].lower()):
                    yield Completion(f"/{name} ", start_position=-len(word), display=f"/{name}")
            return
        if not word:
            return
        if word.startswith("#"):
            for room in sorted(self._rooms(), key=str.lower):
                if room.lower().startswith(word.lower()):
                    yield Completion(room + " ", start_position=-len(word), display=room)
            return
        first_word = before == word
        for nick in sorted(self._nicks(), key=str.lower):
            if nick.lower().startswith(word.lower()):
                suffix = ": " if first_word else " "
                yield Completion(nick + suffix, start_position=-len(word), display=nick)
