"""Fair sharing of webhook attempts between destinations.

Deliveries taken from the outbox wait in one lane per destination (the host and port of the URL).
Lanes are served round-robin, and each may have at most ``per_destination`` attempts in flight,
so receivers that hang or answer slowly hold only their own lane's slots: deliveries to everyone
else keep the remaining slots of the ``total``.
"""

from __future__ import annotations

from collections import deque
from urllib.parse import urlsplit

from jobwire_server.domain.deliveries import Delivery

#: How many taken deliveries may wait per attempt slot (bounds memory when lanes are stuck).
HELD_PER_SLOT = 8


def destination(url: str) -> str:
    """The lane of a URL: ``host:port`` (lower-case host, default port by scheme)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    host = (parts.hostname or "").rstrip(".")
    return f"{host}:{port or (443 if parts.scheme.lower() == 'https' else 80)}"


class Lanes:
    """Taken deliveries by destination; which one starts next; how many more to take."""

    def __init__(self, total: int, per_destination: int, held_limit: int | None = None) -> None:
        self.total = total
        self.per_destination = per_destination
        self.held_limit = held_limit if held_limit is not None else total * HELD_PER_SLOT
        self._held: set[str] = set()
        self._waiting: dict[str, deque[Delivery]] = {}
        #: Lanes with waiting deliveries, in the order they are served next.
        self._turns: deque[str] = deque()
        self._active: dict[str, int] = {}
        self.in_flight = 0

    def hold(self, delivery: Delivery) -> bool:
        """Queue a taken delivery in its lane; False when it is held already (taken again)."""
        if delivery.id in self._held:
            return False
        self._held.add(delivery.id)
        lane = destination(delivery.url)
        waiting = self._waiting.get(lane)
        if waiting is None:
            waiting = self._waiting[lane] = deque()
            self._turns.append(lane)
        waiting.append(delivery)
        return True

    def next_ready(self) -> Delivery | None:
        """The next delivery that may start now (its slot is taken), or None."""
        if self.in_flight >= self.total:
            return None
        for _ in range(len(self._turns)):
            lane = self._turns[0]
            self._turns.rotate(-1)
            if self._active.get(lane, 0) >= self.per_destination:
                continue
            waiting = self._waiting[lane]
            delivery = waiting.popleft()
            if not waiting:
                del self._waiting[lane]
                self._turns.remove(lane)
            self._active[lane] = self._active.get(lane, 0) + 1
            self.in_flight += 1
            return delivery
        return None

    def finished(self, delivery: Delivery) -> None:
        """An attempt started by :meth:`next_ready` ended: its slot and its hold are free."""
        lane = destination(delivery.url)
        left = self._active.get(lane, 0) - 1
        if left > 0:
            self._active[lane] = left
        else:
            self._active.pop(lane, None)
        self.in_flight -= 1
        self._held.discard(delivery.id)

    def room(self) -> int:
        """How many more deliveries to take now: free slots, within the bound on held ones."""
        return max(0, min(self.total - self.in_flight, self.held_limit - len(self._held)))

    @property
    def held(self) -> int:
        return len(self._held)

    def waiting(self, lane: str) -> int:
        return len(self._waiting.get(lane, ()))
