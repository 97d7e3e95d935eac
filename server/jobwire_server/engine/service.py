"""The job service: the operations the API offers, on top of the store and the engine. Writes go
through the writer (group commit; it publishes their events and claims what they made ready),
reads go to the store's reader."""

from __future__ import annotations

from collections.abc import Sequence

from jobwire_server.domain.actions import plan_cancel, plan_retry
from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import ShuttingDown
from jobwire_server.domain.models import Event, Job, NewJob, QueueStats
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.states import JobState
from jobwire_server.engine.executor import Executor
from jobwire_server.engine.hub import WatchHub
from jobwire_server.engine.writer import Writer
from jobwire_server.store.base import InsertJobs, InsertResult, JobStore, UpdateJob


class JobService:
    def __init__(self, store: JobStore, hub: WatchHub, writer: Writer, executor: Executor, clock: Clock,
                 *, request_ttl: float) -> None:
        self.store = store
        self.hub = hub
        self._writer = writer
        self._executor = executor
        self._clock = clock
        self._request_ttl = request_ttl
        self.accepting = True

    def check_open(self) -> None:
        if not self.accepting:
            raise ShuttingDown

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[InsertResult]:
        """Insert durably (the reply is sent after the commit, which may already have claimed them)."""
        self.check_open()
        op = InsertJobs(jobs, self._clock.now(), self._request_ttl)
        results: list[InsertResult] = await self._writer.write(op, fail_fast=True)
        return results

    async def get(self, job_id: str) -> Job:
        return await self.store.get_job(job_id)

    async def list_jobs(self, query: JobQuery) -> tuple[list[Job], str | None]:
        return await self.store.list_jobs(query)

    async def cancel(self, job_id: str, reason: str) -> Job:
        self.check_open()
        now = self._clock.now()
        job, committed = await self._writer.write(UpdateJob(job_id, lambda j: plan_cancel(j, reason, now)),
                                                  fail_fast=True)
        if committed is not None and job.state is JobState.RUNNING:
            self._executor.request_cancel(job.id, reason)
        return job  # type: ignore[no-any-return]

    async def retry(self, job_id: str, from_start: bool) -> Job:
        self.check_open()
        now = self._clock.now()
        job, _ = await self._writer.write(UpdateJob(job_id, lambda j: plan_retry(j, from_start, now)), fail_fast=True)
        return job  # type: ignore[no-any-return]

    async def events_after(self, job_id: str, sequence: int, limit: int = 10_000) -> list[Event]:
        return await self.store.events_after(job_id, sequence, limit)

    async def queue_stats(self, queue: str) -> list[QueueStats]:
        return await self.store.queue_stats(queue, self._clock.now())
