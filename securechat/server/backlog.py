"""The whispers that waited for a recipient, handed out a page at a time after login.

A queue may hold up to a recipient's quota (thousands of whispers, megabytes). Loading
it whole at login and putting it into the outbox at once cost the server its memory and
got a recipient on a slow link dropped as "not reading". So a page goes out, and more
follow only as acks come back: the server holds, and the outbox carries, about one page
of them, whatever the queue holds.

Only whispers queued before the login are paged (up to the newest id then): those queued
after it are pushed live, as to any online recipient. A whisper pushed while the backlog
is still going out can therefore arrive before older ones: the ratchet decrypts out of
order, and each carries its time.
"""

from __future__ import annotations

from collections.abc import Callable

from ..protocol import Delivery

__all__ = ["Backlog"]


class Backlog:
    """One recipient's backlog. `load(after, limit)` returns up to `limit` deliveries with
    ids above `after`, oldest first (the relay's `pending`, bounded by the login's newest id).

    Owned by the recipient session's reader thread: the login and every ack arrive there.
    """

    def __init__(self, load: Callable[[int, int], list[Delivery]], page: int) -> None:
        if page < 1:
            raise ValueError("page must be at least 1")
        self._load = load
        self._page = page
        self._after = 0  # the highest id handed out
        #: Ids handed out whose fate the client has not shown yet, in the order sent.
        self._out: list[int] = []
        self.done = False  # everything up to the login's newest id has been handed out

    def start(self) -> list[Delivery]:
        """The first page."""
        return self._more()

    def acked(self, delivery_id: str) -> list[Delivery]:
        """The client acked `delivery_id` (one of these or any other): the next deliveries
        due, if any. Clients handle deliveries in the order they came, so an ack also
        settles every delivery before it that was not acked: held back (a changed key
        awaiting the user) or kept for a later try. Waiting for those would stall the
        backlog behind them.
        """
        if delivery_id.isdigit() and int(delivery_id) in self._out:
            del self._out[: self._out.index(int(delivery_id)) + 1]
        # Topped up at half a page, so that the client never waits for the next page.
        return self._more() if len(self._out) <= self._page // 2 else []

    def _more(self) -> list[Delivery]:
        if self.done:
            return []
        wanted = self._page - len(self._out)
        batch = self._load(self._after, wanted)
        if len(batch) < wanted:
            self.done = True
        if batch:
            self._after = int(batch[-1].id)
            self._out += [int(d.id) for d in batch]
        return batch
