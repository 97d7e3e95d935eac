"""The dispatcher: the claim policy. It decides when and how many jobs to claim; the change
writer claims them in its next commit, together with the outcomes of finishing jobs.

No polling interval: claiming happens when an enqueue, a retry or a freed slot wakes it, or when a
timer set to the next run_at of a SCHEDULED or RETRYING job fires.
"""

from __future__ import annotations

import asyncio
import math

from jobwire_server.domain.clock import Clock
from jobwire_server.domain.states import JobState
from jobwire_server.domain.transitions import JobChange
from jobwire_server.engine.executor import Executor
from jobwire_server.engine.hub import WatchHub
from jobwire_server.engine.writer import ChangeWriter
from jobwire_server.store.base import ClaimParams, Cycle

MAX_CLAIM = 256


class Dispatcher:
    def __init__(self, writer: ChangeWriter, executor: Executor, hub: WatchHub, clock: Clock, *, owner: str,
                 lease_ttl: float) -> None:
        self._writer = writer
        self._executor = executor
        self._hub = hub
        self._clock = clock
        self._owner = owner
        self._lease_ttl = lease_ttl
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._claiming = False
        self._wanted = False
        #: Counts claim cycles; `claimed` is set after each (tests wait on it instead of sleeping).
        self.rounds = 0
        self.claimed = asyncio.Event()
        writer.claimer = self

    def start(self) -> None:
        self._claiming = True
        self.wake()

    def wake(self) -> None:
        """Something may be ready to run: claim in the next commit."""
        if self._claiming:
            self._wanted = True
            self._writer.kick()

    def note_wakeup(self, at: float) -> None:
        """A job becomes due at `at` (epoch seconds): make sure a timer wakes us then."""
        if at >= self._timer_at or not self._claiming:
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
            self._timer, self._timer_at = None, math.inf
        # A cycle committing now may still claim; wait for it, so the drain that follows sees
        # every job this process started (none can start after it).
        await self._writer.cycle_finished()

    # ------------------------------------------------------------------ Claimer

    def claim_params(self, finishing: list[JobChange]) -> ClaimParams | None:
        if not self._claiming or not (self._wanted or finishing):
            return None
        self._wanted = False
        now = self._clock.now()
        room = self._executor.queue_room()
        for change in finishing:
            if change.job.queue in room:
                room[change.job.queue] += 1
        limit = min(self._executor.free_slots() + len(finishing), MAX_CLAIM)
        return ClaimParams(now=now, limit=limit, owner=self._owner, lease_expires=now + self._lease_ttl,
                           queue_room=room)

    def after_cycle(self, params: ClaimParams, cycle: Cycle) -> None:
        for item in cycle.results:
            if item is not None and item.job.state is not JobState.RUNNING:
                self._executor.release(item.job.id)
        for item in (*cycle.promoted, *cycle.claimed):
            self._hub.publish(item.events)
        for item in cycle.claimed:
            self._executor.start(item.job)
        if cycle.next_due is not None:
            self.note_wakeup(cycle.next_due)
        self.rounds += 1
        self.claimed.set()
        self.claimed = asyncio.Event()
        # More may be ready: ask again, but only when a job could start now. With every slot busy,
        # the next finishing change claims in its own commit anyway, and a due job's timer still fires.
        more = cycle.promoted or (params.limit > 0 and len(cycle.claimed) == params.limit)
        if more and self._executor.free_slots() > 0:
            self.wake()
