"""Retention: finished jobs become STALE after a while, STALE jobs are deleted after another while,
and the webhook delivery log and expired request ids are pruned.

Runs on a timer in small batches, each its own short transaction, so enqueues and the engine's
commits take turns with it on the write lock instead of waiting behind one long delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import StorageError
from jobwire_server.domain.states import JobState
from jobwire_server.engine.writer import Writer
from jobwire_server.store.base import DeleteStale, JobStore, MarkStale, PruneDeliveryLog, PruneRequests, RetentionCounts

log = logging.getLogger("jobwire.retention")


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep times in seconds; 0 keeps forever."""

    stale_after: float = 7 * 86_400.0
    delete_after: float = 30 * 86_400.0
    #: Per terminal state, replacing `stale_after` (e.g. keep FAILED jobs longer).
    stale_after_state: Mapping[JobState, float] | None = None
    delivery_log_keep: float = 30 * 86_400.0
    interval: float = 60.0
    batch: int = 500

    def finished_before(self, now: float) -> dict[JobState, float]:
        """Per terminal state: jobs that finished before this become STALE (states kept forever are absent)."""
        overrides = self.stale_after_state or {}
        out: dict[JobState, float] = {}
        for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
            keep = overrides.get(state, self.stale_after)
            if keep > 0:
                out[state] = now - keep
        return out

    def stale_before(self, now: float) -> float | None:
        return now - self.delete_after if self.delete_after > 0 else None

    def log_before(self, now: float) -> float | None:
        return now - self.delivery_log_keep if self.delivery_log_keep > 0 else None


class Retention:
    def __init__(self, store: JobStore, writer: Writer, clock: Clock, policy: RetentionPolicy,
                 *, may_run: Callable[[], bool] = lambda: True) -> None:
        self._store = store
        #: False on a replica that does not hold the retention lease (shared store): its timer
        #: skips the pass. PruneJobs runs anywhere (its batches skip rows another pass holds).
        self._may_run = may_run
        self._writer = writer
        self._clock = clock
        self.policy = policy
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one pass at a time (timer or PruneJobs)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="jobwire-retention")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                counts = await self.run_once() if self._may_run() else RetentionCounts()
                if counts.marked_stale or counts.deleted or counts.log_pruned:
                    log.info("retention: %d jobs made stale, %d deleted, %d delivery log rows pruned",
                             counts.marked_stale, counts.deleted, counts.log_pruned)
            except StorageError:
                pass  # the writer reports storage faults, once per change; try at the next interval
            except Exception:
                log.exception("retention pass failed; trying again at the next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.policy.interval)

    async def run_once(self) -> RetentionCounts:
        """One full pass, batch by batch, until nothing is left to do now. The cutoffs are fixed
        at the start, so a job made STALE by this pass is never deleted by the same pass."""
        async with self._lock:
            now = self._clock.now()
            stale_before, log_before = self.policy.stale_before(now), self.policy.log_before(now)
            stale = await self._make_stale(self.policy.finished_before(now))
            deleted = await self._delete(stale_before)
            pruned = await self._prune(log_before)
        return RetentionCounts(marked_stale=stale, deleted=deleted, log_pruned=pruned)

    async def preview(self) -> RetentionCounts:
        now = self._clock.now()
        p = self.policy
        return await self._store.retention_preview(p.finished_before(now), p.stale_before(now), p.log_before(now))

    async def _batches(self, step: Callable[[int], Awaitable[int]]) -> int:
        """Run `step(batch)` (one transaction, returns how many rows it handled) until a batch comes
        back short or retention is stopping; the total handled. Retention's writes fail fast on a
        storage fault (a pass is simply tried again later), so PruneJobs answers at once then."""
        total = 0
        while not self._stop.is_set():
            done = await step(self.policy.batch)
            total += done
            if done < self.policy.batch:
                break
        return total

    async def _make_stale(self, cutoffs: Mapping[JobState, float]) -> int:
        async def step(limit: int) -> int:
            committed = await self._writer.write(MarkStale(cutoffs, self._clock.now(), limit), fail_fast=True)
            return len(committed)

        return await self._batches(step) if cutoffs else 0

    async def _delete(self, before: float | None) -> int:
        if before is None:
            return 0
        cutoff = before

        async def step(limit: int) -> int:
            events = await self._writer.write(DeleteStale(cutoff, self._clock.now(), limit), fail_fast=True)
            return len(events)

        return await self._batches(step)

    async def _prune(self, before: float | None) -> int:
        pruned = 0
        if before is not None:
            pruned = await self._batches(
                lambda limit: self._writer.write(PruneDeliveryLog(before, limit), fail_fast=True))
        await self._batches(
            lambda limit: self._writer.write(PruneRequests(self._clock.now(), limit), fail_fast=True))
        return pruned
