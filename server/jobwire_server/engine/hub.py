"""The watch hub: committed events fanned out from memory to watch streams.

Each stream has a bounded buffer. Publishing never waits: a stream whose buffer is full is marked
overflowed and dropped from the hub, and its reader ends it with the last sequence it delivered,
so a slow client costs bounded memory and can resume from storage.

On a shared store (several replicas on one database) a job's events come from two places: this
replica's commits (`publish`, at once) and the other replicas' commits (`deliver_remote`, from
tailing the events table, which also brings back this replica's own). The hub then sequences each
job's events: one arriving ahead of a missing predecessor waits for it, and one already delivered
is dropped, so every stream still sees each job's events once, in order and without gaps.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
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


#: Jobs whose last delivered sequence the hub remembers on a shared store (least recent forgotten).
SEQUENCED_JOBS = 100_000


class WatchHub:
    """Every event this process commits passes through `publish`, so it is also where metrics
    are counted: `tap` (when given) sees each batch before the streams do. With `shared`, the
    streams are also fed other replicas' events (`deliver_remote`) and sequenced per job."""

    def __init__(self, capacity: int = 1000, *, tap: Callable[[Sequence[Event]], None] | None = None,
                 shared: bool = False) -> None:
        self.capacity = capacity
        self.shared = shared
        self._tap = tap
        self._delivered: OrderedDict[str, int] = OrderedDict()  # job id → last sequence delivered
        self._waiting: dict[str, dict[int, Event]] = {}  # job id → events ahead of a missing one
        #: Called when an event waits for its predecessors (the tailer should look now).
        self.on_waiting: Callable[[], None] | None = None
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
            if not self._firehose:
                for job_id in [*self._delivered, *self._waiting]:
                    if job_id not in self._by_job:
                        self._forget(job_id)
        else:
            subs = self._by_job.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_job[sub.job_id]
                    if not self._firehose:
                        self._forget(sub.job_id)
        self._signal()

    def publish(self, events: Sequence[Event]) -> None:
        """Events this process committed, in commit order."""
        if self._tap is not None:
            self._tap(events)
        for listener in self._listeners:
            listener(events)
        if self.shared:
            events = self._sequence(events, local=True)
        self._fan_out(events)

    def deliver_remote(self, events: Sequence[Event]) -> None:
        """Events tailed from the shared store (every replica's, this one's included, some more
        than once)."""
        self._fan_out(self._sequence(events, local=False))

    @property
    def pending(self) -> int:
        """Events held back until a missing predecessor arrives."""
        return sum(len(w) for w in self._waiting.values())

    def wanted(self) -> frozenset[str] | None:
        """What the streams need from other replicas: None for every job (a firehose is open),
        else the ids of the jobs watched (empty: nothing)."""
        if self._firehose:
            return None
        return frozenset(self._by_job) | frozenset(self._waiting)

    def _sequence(self, events: Sequence[Event], *, local: bool) -> list[Event]:
        """The events a stream may see now, each job's in order. A local event of a watched job
        this hub has not seen yet waits for the tail, unless it is the job's first: its earlier
        events may still be on their way from another replica. Otherwise an event of an unknown
        job starts its sequence (nobody watching it can miss what came before)."""
        ready: list[Event] = []
        for event in events:
            if not self._watched(event.job_id):
                continue  # nobody to show it to (and the tail does not bring an unwatched job's events)
            last = self._delivered.get(event.job_id)
            if last is None:
                if local and event.sequence > 1 and self._watched(event.job_id):
                    self._waiting.setdefault(event.job_id, {})[event.sequence] = event
                    if self.on_waiting is not None:
                        self.on_waiting()
                    continue
                last = event.sequence - 1
            if event.sequence <= last:
                continue  # delivered already (a local event the tail brings back)
            if event.sequence > last + 1:
                self._waiting.setdefault(event.job_id, {})[event.sequence] = event
                continue
            ready.append(event)
            last = event.sequence
            waiting = self._waiting.get(event.job_id)
            while waiting and last + 1 in waiting:
                last += 1
                ready.append(waiting.pop(last))
            if waiting is not None and not any(seq > last for seq in waiting):
                del self._waiting[event.job_id]
            elif waiting:
                for seq in [s for s in waiting if s <= last]:
                    del waiting[seq]
            self._remember(event.job_id, last)
        return ready

    def _forget(self, job_id: str) -> None:
        """A job nobody watches any more: the tail stops bringing its events, so what the hub
        knows of it would go stale and make a later watcher wait for events long gone by."""
        self._delivered.pop(job_id, None)
        self._waiting.pop(job_id, None)

    def _watched(self, job_id: str) -> bool:
        return bool(self._firehose) or job_id in self._by_job

    def _remember(self, job_id: str, last: int) -> None:
        self._delivered[job_id] = last
        self._delivered.move_to_end(job_id)
        if len(self._delivered) > SEQUENCED_JOBS:
            self._delivered.popitem(last=False)

    def _fan_out(self, events: Sequence[Event]) -> None:
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
