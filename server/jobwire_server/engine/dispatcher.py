"""The dispatcher: claims ready jobs in batches and hands them to the executor.

No polling interval: it sleeps until woken by an enqueue, by a freed worker slot, or by a timer
set to the next run_at of a SCHEDULED or RETRYING job.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from jobwire_server.domain.clock import Clock
from jobwire_server.engine.executor import Executor
from jobwire_server.engine.hub import WatchHub
from jobwire_server.store.base import ClaimParams, Committed, JobStore

log = logging.getLogger("jobwire.dispatcher")

MAX_CLAIM = 256
ERROR_BACKOFF = 1.0


class Dispatcher:
    def __init__(self, store: JobStore, executor: Executor, hub: WatchHub, clock: Clock, *, owner: str,
                 lease_ttl: float, on_started: Callable[[list[Committed]], None] | None = None) -> None:
        self._store = store
        self._executor = executor
        self._hub = hub
        self._clock = clock
        self._owner = owner
        self._lease_ttl = lease_ttl
        self._on_started = on_started
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._claiming = True
        #: Counts claim rounds; tests wait on `claimed` instead of sleeping.
        self.rounds = 0
        self.claimed = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="jobwire-dispatcher")
            self.wake()

    def wake(self) -> None:
        self._wake.set()

    def note_wakeup(self, at: float) -> None:
        """A job becomes due at `at` (epoch seconds): make sure a timer wakes us then."""
        if at >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        delay = max(0.0, at - self._clock.now())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self.wake()

    async def stop_claiming(self) -> None:
        """Stop taking new jobs (first step of shutdown); running ones are the executor's."""
        self._claiming = False
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while self._claiming:
            await self._wake.wait()
            self._wake.clear()
            try:
                more = await self._round()
            except Exception:
                log.exception("claim round failed; retrying in %.0fs", ERROR_BACKOFF)
                await asyncio.sleep(ERROR_BACKOFF)
                more = True
            if more:
                self._wake.set()

    async def _round(self) -> bool:
        """One claim round; True when more work is likely ready right now."""
        now = self._clock.now()
        limit = min(self._executor.free_slots(), MAX_CLAIM)
        promoted, claimed = await self._store.claim_jobs(ClaimParams(
            now=now, limit=limit, owner=self._owner, lease_expires=now + self._lease_ttl,
            queue_room=self._executor.queue_room()))
        for item in (*promoted, *claimed):
            self._hub.publish(item.events)
        for item in claimed:
            self._executor.start(item.job)
        if claimed and self._on_started is not None:
            self._on_started(claimed)
        self.rounds += 1
        self.claimed.set()
        self.claimed = asyncio.Event()
        next_due = await self._store.next_wakeup()
        if next_due is not None:
            self.note_wakeup(next_due)
        return bool(promoted) or (limit > 0 and len(claimed) == limit)
