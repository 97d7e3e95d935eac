"""Leases: the heartbeat renews this process's running jobs; the rescuer requeues jobs whose
worker stopped renewing (a crashed or frozen process), recording the interrupted phase."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import StorageError
from jobwire_server.domain.models import Job, JobError
from jobwire_server.domain.states import JobState
from jobwire_server.domain.transitions import JobChange, rescue_expired
from jobwire_server.engine.writer import Writer
from jobwire_server.store.base import JobStore, LeaseRenewal, RenewLeases, UpdateJob

log = logging.getLogger("jobwire.leases")

RESCUE_BATCH = 100


class LeaseKeeper:
    def __init__(self, store: JobStore, writer: Writer, clock: Clock, *, owner: str, lease_ttl: float,
                 running_ids: Callable[[], list[str]], on_rescued: Callable[[], None],
                 on_cancel_requested: Callable[[str, str], object] = lambda _job, _reason: None) -> None:
        self._store = store
        self._writer = writer
        self._clock = clock
        self._owner = owner
        self._ttl = lease_ttl
        self._running_ids = running_ids
        self._on_rescued = on_rescued
        self._on_cancel_requested = on_cancel_requested
        self._task: asyncio.Task[None] | None = None
        #: Set after every rescue pass (tests wait on it).
        self.passes = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="jobwire-leases")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        interval = self._ttl / 3
        while True:
            try:
                await self.renew()
                await self.rescue()
            except StorageError:
                pass  # the writer reports storage faults, once per change
            except Exception:
                log.exception("lease upkeep failed")
            await asyncio.sleep(interval)

    async def renew(self) -> None:
        ids = self._running_ids()
        if ids:
            # Fails fast on a storage fault rather than being held: a renewal committed late would
            # write an expiry that has already passed. The next heartbeat renews from a fresh time.
            renewal: LeaseRenewal = await self._writer.write(
                RenewLeases(self._owner, ids, self._clock.now() + self._ttl), fail_fast=True)
            for job_id, reason in renewal.cancel_requested.items():
                self._on_cancel_requested(job_id, reason)  # requested on another replica

    async def rescue(self) -> int:
        """Requeue every RUNNING job whose lease has expired; returns how many."""
        now = self._clock.now()
        rescued = 0
        mine = set(self._running_ids())  # running here: alive, whatever the stored lease says
        for job in await self._store.expired_leases(now, RESCUE_BATCH):
            if job.id in mine:
                continue
            rescue = UpdateJob(job.id, _rescuer(job, now), lease_expired_before=now)
            _, committed = await self._writer.write(rescue, fail_fast=True)
            if committed is not None:
                rescued += 1
                log.warning("job %s: lease expired during attempt %d (phase %s); requeued",
                            job.id, job.attempt, _running_phase(job))
        self.passes += 1
        if rescued:
            self._on_rescued()
        return rescued


def _running_phase(job: Job) -> str:
    return next((p.name for p in job.phases if p.state.value == "RUNNING"), "")


def _rescuer(seen: Job, now: float) -> Callable[[Job], JobChange | None]:
    def build(job: Job) -> JobChange | None:
        if job.state is not JobState.RUNNING or job.attempt != seen.attempt:
            return None  # renewed, finished or already rescued since we looked
        error = JobError(f"worker lost during attempt {job.attempt} (lease expired)", "INTERRUPTED", True,
                         _running_phase(job), job.attempt, True, now)
        return rescue_expired(job, error, now)

    return build
