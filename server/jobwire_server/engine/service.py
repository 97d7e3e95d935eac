"""The job service: the operations the API offers, on top of the store and the engine. Writes go
through the writer (group commit; it publishes their events and claims what they made ready),
reads go to the store's reader."""

from __future__ import annotations

from collections.abc import Sequence

from jobwire_server.domain.actions import plan_cancel, plan_retry
from jobwire_server.domain.bulk import DEFAULT_BATCH, BulkSummary, cancel_builder, retry_builder
from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import ShuttingDown
from jobwire_server.domain.models import Event, Job, NewJob, QueueStats
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.states import JobState
from jobwire_server.engine import bulk
from jobwire_server.engine.execution import Execution
from jobwire_server.engine.hub import WatchHub
from jobwire_server.engine.writer import Writer
from jobwire_server.store.base import InsertJobs, InsertResult, JobStore, UpdateJob


class JobService:
    def __init__(self, store: JobStore, hub: WatchHub, writer: Writer, executor: Execution, clock: Clock,
                 *, request_ttl: float, bulk_batch: int = DEFAULT_BATCH) -> None:
        self.store = store
        self.hub = hub
        self._writer = writer
        self._executor = executor
        self._clock = clock
        self._request_ttl = request_ttl
        self.bulk_batch = bulk_batch
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

    async def job_ids(self, query: JobQuery) -> list[str]:
        return await self.store.list_job_ids(query)

    async def count_jobs(self, query: JobQuery) -> BulkSummary:
        """A bulk action's dry run: the jobs `query` matches now."""
        return bulk.dry_run(await self.store.count_jobs(query))

    async def cancel_jobs(self, query: JobQuery, reason: str, *, only: Sequence[str] | None = None) -> BulkSummary:
        """CancelJob for every job `query` matches (or only the ids in `only`), batch by batch."""
        self.check_open()

        def stop_running(jobs: list[Job]) -> None:
            for job in jobs:
                if job.state is JobState.RUNNING:
                    self._executor.request_cancel(job.id, reason)

        return await bulk.run(self.store, self._writer, self._clock, query,
                              lambda now: cancel_builder(query, reason, now), batch=self.bulk_batch, only=only,
                              check_open=self.check_open, on_changed=stop_running)

    async def retry_jobs(self, query: JobQuery, from_start: bool, *,
                         only: Sequence[str] | None = None) -> BulkSummary:
        """RetryJob for every job `query` matches (or only the ids in `only`), batch by batch."""
        self.check_open()
        return await bulk.run(self.store, self._writer, self._clock, query,
                              lambda now: retry_builder(query, from_start, now), batch=self.bulk_batch, only=only,
                              check_open=self.check_open)

    async def events_after(self, job_id: str, sequence: int, limit: int = 10_000) -> list[Event]:
        return await self.store.events_after(job_id, sequence, limit)

    async def queue_stats(self, queue: str) -> list[QueueStats]:
        return await self.store.queue_stats(queue, self._clock.now())
