"""Group commit: the one place the engine's writes are committed.

Every change submitted while a commit is running goes into the next transaction, and the same
transaction claims new jobs for the slots the finishing ones free (when the dispatcher wants
work). Events are published to the hub only after the commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from jobwire_server.domain.states import JobState
from jobwire_server.domain.transitions import JobChange
from jobwire_server.engine.hub import WatchHub
from jobwire_server.store.base import ClaimParams, Committed, Cycle, JobStore

log = logging.getLogger("jobwire.writer")

MAX_BATCH = 1000
#: Loop turns without a new submit before a cycle commits what it has.
GATHER_QUIET_TURNS = 1
ERROR_BACKOFF = 1.0


class Claimer(Protocol):
    """Decides whether a cycle should claim, and takes what it claimed."""

    def claim_params(self, finishing: list[JobChange]) -> ClaimParams | None: ...

    def after_cycle(self, params: ClaimParams, cycle: Cycle) -> None: ...


class ChangeWriter:
    def __init__(self, store: JobStore, hub: WatchHub, on_commit: Callable[[list[Committed]], None]) -> None:
        self._store = store
        self._hub = hub
        self._on_commit = on_commit
        self.claimer: Claimer | None = None
        self._pending: list[tuple[JobChange, asyncio.Future[Committed | None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._between_cycles = asyncio.Event()
        self._between_cycles.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="jobwire-writer")

    def kick(self) -> None:
        """Run a cycle soon even with no changes pending (the dispatcher wants to claim)."""
        self._wake.set()

    async def submit(self, change: JobChange) -> Committed | None:
        """Write `change` (guarded); None when its guard no longer held. Shielded so the caller's
        cancellation never loses a change that is already on its way."""
        if self._task is None or self._task.done():
            raise RuntimeError("change writer is not running")
        future: asyncio.Future[Committed | None] = asyncio.get_running_loop().create_future()
        self._pending.append((change, future))
        self._wake.set()
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._gather()
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            if self._pending:
                self._wake.set()
            if batch or not self._stopping:
                self._between_cycles.clear()
                try:
                    await self._cycle(batch)
                finally:
                    self._between_cycles.set()
            if self._stopping and not self._pending:
                return

    async def _gather(self) -> None:
        """Yield to the event loop while runners keep submitting, so one commit takes every change
        that is ready now. A runner needs a few loop turns from being woken to submitting, so a
        few quiet turns are allowed; no timer, so a lone submit still commits within microseconds."""
        seen, quiet = len(self._pending), 0
        while quiet < GATHER_QUIET_TURNS and len(self._pending) < MAX_BATCH:
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._pending) == seen else 0
            seen = len(self._pending)

    async def _cycle(self, batch: list[tuple[JobChange, asyncio.Future[Committed | None]]]) -> None:
        changes = [change for change, _ in batch]
        finishing = [c for c in changes if c.job.state is not JobState.RUNNING]
        params = self.claimer.claim_params(finishing) if self.claimer is not None and not self._stopping else None
        if not changes and params is None:
            return
        try:
            cycle = await self._store.commit_cycle(changes, params)
        except Exception as exc:
            log.exception("committing %d job changes failed", len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            await asyncio.sleep(ERROR_BACKOFF)
            self._wake.set()
            return
        committed = [c for c in cycle.results if c is not None]
        for item in committed:
            self._hub.publish(item.events)
        self._on_commit(committed)
        for (_, future), result in zip(batch, cycle.results, strict=True):
            if not future.done():
                future.set_result(result)
        if params is not None and self.claimer is not None:
            self.claimer.after_cycle(params, cycle)

    async def cycle_finished(self) -> None:
        """Return once no cycle is being committed: a claim decided before now has been handed out."""
        await self._between_cycles.wait()

    async def stop(self) -> None:
        """Write everything already submitted (claiming nothing more), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
