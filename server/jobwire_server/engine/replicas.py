"""Keeping one replica in step with the others on a shared (PostgreSQL) store.

- Wake-ups: another replica's commit that made work ready wakes the dispatcher; a cancel it
  recorded reaches the handler if it runs here. Notifications are hints and get lost while the
  listener reconnects, so every `poll` seconds the replica also claims, looks for due webhook
  deliveries, and tails events without being told.
- Events: the tailer reads the events table in transaction order (`tail_events`) and hands what
  the watch streams want to the hub, which sequences each job's events. With nobody watching it
  only moves its cursor forward, one cheap query per look.
- Singleton duties (retention) run only on the replica holding the duty's lease row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from jobwire_server.domain.models import Event
from jobwire_server.engine.hub import WatchHub
from jobwire_server.store.postgres import RemoteSignal, TailCursor

log = logging.getLogger("jobwire.replicas")

#: Events read per tail query.
TAIL_BATCH = 2000
#: After a notification, further tail passes this many seconds apart: an event committed by
#: another replica is only read once every transaction that began before it has ended (see
#: `tail_events`), which may be just after the pass the notification started.
FOLLOW_UPS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
#: Seconds a leadership lease lasts; renewed every third of it.
LEADER_TTL = 15.0


class SharedStore(Protocol):
    on_remote: Callable[[RemoteSignal], None] | None

    async def listen(self) -> None: ...

    async def tail_start(self) -> TailCursor: ...

    async def tail_events(self, cursor: TailCursor, limit: int,
                          job_ids: list[str] | None = None) -> tuple[list[Event], TailCursor]: ...

    async def claim_leadership(self, duty: str, holder: str, term: int, ttl: float) -> int | None: ...

    async def resign_leadership(self, duty: str, holder: str) -> None: ...


class ReplicaLink:
    def __init__(self, store: SharedStore, hub: WatchHub, *, wake_claims: Callable[[], None],
                 wake_webhooks: Callable[[], None], cancel: Callable[[str], object], poll: float = 1.0) -> None:
        self._store = store
        self._hub = hub
        self._wake_claims = wake_claims
        self._wake_webhooks = wake_webhooks
        self._cancel = cancel
        self._poll = poll
        self._kicked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cursor: TailCursor | None = None
        #: Tail passes done (tests wait on it).
        self.passes = 0

    async def start(self) -> None:
        self._store.on_remote = self._on_remote
        self._hub.on_waiting = self.kick
        self._cursor = await self._store.tail_start()
        await self._store.listen()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="jobwire-replicas")

    async def stop(self) -> None:
        self._store.on_remote = None
        self._hub.on_waiting = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def kick(self) -> None:
        self._kicked.set()

    def _on_remote(self, signal: RemoteSignal) -> None:
        if signal.work:
            self._wake_claims()
        for job_id in signal.cancel:
            self._cancel(job_id)
        self.kick()

    async def _run(self) -> None:
        follow_ups = 0  # passes left after the last notification, while streams want events
        while True:
            told = False
            wait = FOLLOW_UPS[len(FOLLOW_UPS) - follow_ups] if follow_ups else self._poll
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation (stop())
            # that arrives with a kick, and this loop would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._kicked.wait()
                told = True
            self._kicked.clear()
            if told:
                follow_ups = len(FOLLOW_UPS) if self._hub.wanted() != frozenset() else 0
            elif follow_ups:
                follow_ups -= 1
            else:  # a look of our own: what lost notifications would have said
                self._wake_claims()
                self._wake_webhooks()
            try:
                await self.tail()
            except Exception as exc:  # storage trouble: the writer reports it; look again later
                log.debug("tailing events failed: %s", exc)

    async def tail(self) -> None:
        """Hand the hub every event it wants that committed since the last look."""
        assert self._cursor is not None
        while True:
            wanted = self._hub.wanted()
            ids = None if wanted is None else sorted(wanted)  # none wanted: only the cursor moves
            before = self._cursor
            events, cursor = await self._store.tail_events(self._cursor, TAIL_BATCH, ids)
            now = self._hub.wanted()
            if wanted is not None and (now is None or not now <= wanted):
                continue  # a watch started during the read, which skipped its job's events: read again
            self._cursor = cursor
            if events:
                self._hub.deliver_remote(_by_job_sequence(events))  # it drops what it delivered already
            if len(events) < TAIL_BATCH or self._cursor == before:
                break  # all read, or the rest waits behind a transaction still running
        self.passes += 1


def _by_job_sequence(events: list[Event]) -> list[Event]:
    """Each job's events in sequence order. Rows come in transaction order, and a transaction that
    began first may have committed a job's later event (it took the row lock second)."""
    first: dict[str, int] = {}
    for index, event in enumerate(events):
        first.setdefault(event.job_id, index)
    return sorted(events, key=lambda e: (first[e.job_id], e.sequence))


class Leadership:
    """The lease of one singleton duty: held while renewals are confirmed, given up when one is
    not (a replica that cannot reach the database must assume another took over)."""

    def __init__(self, store: SharedStore, duty: str, holder: str, *, ttl: float = LEADER_TTL) -> None:
        self._store = store
        self.duty = duty
        self._holder = holder
        self._ttl = ttl
        self._term = 0
        self._until = 0.0
        self._task: asyncio.Task[None] | None = None
        #: Set whenever leadership is taken (tests wait on it).
        self.changed = asyncio.Event()

    @property
    def held(self) -> bool:
        return asyncio.get_running_loop().time() < self._until

    def is_held(self) -> bool:
        return self.held

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"jobwire-leader-{self.duty}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.held:
            with contextlib.suppress(Exception):
                await self._store.resign_leadership(self.duty, self._holder)
        self._until = 0.0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            try:
                term = await self._store.claim_leadership(self.duty, self._holder, self._term, self._ttl)
            except Exception as exc:
                term = None
                log.debug("renewing the %s lease failed: %s", self.duty, exc)
            was = self.held
            if term is None:
                self._until = 0.0
                if was:
                    log.warning("no longer running %s on this replica (lease not renewed)", self.duty)
            else:
                # Counted from when we asked, a little short of the row's expiry, so this replica
                # stops before another may start.
                self._until = asyncio.get_running_loop().time() + self._ttl * 0.8 - (loop.time() - asked)
                if not was or term != self._term:
                    log.info("running %s on this replica (term %d)", self.duty, term)
                    self.changed.set()
                    self.changed = asyncio.Event()
                self._term = term
            await asyncio.sleep(self._ttl / 3)
