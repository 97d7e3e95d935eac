"""The watch hub: committed events fanned out from memory to watch streams.

Each stream has a bounded buffer. Publishing never waits: a stream whose buffer is full is marked
overflowed and dropped from the hub, and its reader ends it with the last sequence it delivered,
so a slow client costs bounded memory and can resume from storage.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jobwire_server.domain.models import Event
from jobwire_server.domain.states import EventType


@dataclass(frozen=True)
class EventFilter:
    """Empty sets match everything."""

    queues: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    types: frozenset[EventType] = frozenset()

    def matches(self, event: Event) -> bool:
        return ((not self.queues or event.queue in self.queues)
                and (not self.kinds or event.kind in self.kinds)
                and (not self.types or event.type in self.types))


class Subscription:
    """One watch stream's buffer."""

    def __init__(self, hub: WatchHub, capacity: int, job_id: str | None, event_filter: EventFilter | None) -> None:
        self._hub = hub
        self._buffer: deque[Event] = deque()
        self._capacity = capacity
        self._ready = asyncio.Event()
        self.job_id = job_id
        self.filter = event_filter
        self.overflowed = False
        self.closed = False

    def push(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._buffer) >= self._capacity:
            self.overflowed = True
            self._hub.unsubscribe(self)
        else:
            self._buffer.append(event)
        self._ready.set()

    async def next(self) -> Event | None:
        """The next event, or None once the subscription overflowed or was closed."""
        while not self._buffer:
            if self.overflowed or self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self.overflowed:
            return None
        return self._buffer.popleft()

    def close(self) -> None:
        self._hub.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WatchHub:
    """Every committed event passes through `publish`, so it is also where metrics are counted:
    `tap` (when given) sees each batch before the streams do."""

    def __init__(self, capacity: int = 1000, *, tap: Callable[[Sequence[Event]], None] | None = None) -> None:
        self.capacity = capacity
        self._tap = tap
        self._by_job: dict[str, set[Subscription]] = {}
        self._firehose: set[Subscription] = set()
        #: Set each time the number of subscriptions changes (tests wait on it).
        self.changed = asyncio.Event()
        self._listeners: list[Callable[[Sequence[Event]], None]] = []

    def add_listener(self, listener: Callable[[Sequence[Event]], None]) -> None:
        """Call `listener` with every published batch (in-process consumers: the webhook sender)."""
        self._listeners.append(listener)

    def subscribe_job(self, job_id: str) -> Subscription:
        sub = Subscription(self, self.capacity, job_id, None)
        self._by_job.setdefault(job_id, set()).add(sub)
        self._signal()
        return sub

    def subscribe_all(self, event_filter: EventFilter) -> Subscription:
        sub = Subscription(self, self.capacity, None, event_filter)
        self._firehose.add(sub)
        self._signal()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.closed:
            return
        sub.closed = True
        sub._ready.set()
        if sub.job_id is None:
            self._firehose.discard(sub)
        else:
            subs = self._by_job.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_job[sub.job_id]
        self._signal()

    def publish(self, events: Sequence[Event]) -> None:
        if self._tap is not None:
            self._tap(events)
        for listener in self._listeners:
            listener(events)
        if not self._by_job and not self._firehose:
            return
        for event in events:
            for sub in tuple(self._by_job.get(event.job_id, ())):
                sub.push(event)
            for sub in tuple(self._firehose):
                if sub.filter is None or sub.filter.matches(event):
                    sub.push(event)

    def close_all(self) -> None:
        """End every stream (shutdown): readers see the subscription closed."""
        for sub in [*self._firehose, *(s for subs in self._by_job.values() for s in subs)]:
            self.unsubscribe(sub)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._by_job.values()) + len(self._firehose)

    def _signal(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()
