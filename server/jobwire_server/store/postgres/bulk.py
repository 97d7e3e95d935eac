"""`UpdateJobs` (PostgreSQL): UpdateJob for a batch of jobs, on the writer connection inside the
transaction `PostgresJobStore.write` opens.

The jobs are read and locked in one statement (in id order, as every batch locks, so two replicas
acting on the same jobs wait for each other instead of deadlocking) and their changes written
together (`writes.apply_changes`: guarded by state and attempt, events and outbox rows queued for the
transaction's last statement). Should that write break the unique index of active dedupe keys (a
retried job whose key another active job holds now), it is undone and each job is written on its
own, as UpdateJob writes it, so only that job is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from jobwire_server.domain.errors import JobNotFound, JobwireError
from jobwire_server.domain.transitions import JobChange
from jobwire_server.store.base import ChangeBuilder
from jobwire_server.store.postgres import writes

Conn = asyncpg.Connection


async def update_jobs(conn: Conn, pending: writes.Pending, job_ids: Sequence[str], build: ChangeBuilder) -> list[Any]:
    """One result per id, in order: (job, committed change), None as the change when the builder
    had nothing to do, or the `JobwireError` the job was refused with."""
    found = await writes.load_jobs(conn, job_ids, lock=True, pending=pending)
    results: list[Any] = [None] * len(job_ids)
    changes: list[tuple[int, JobChange]] = []
    for index, job_id in enumerate(job_ids):
        job = found.get(job_id)
        if job is None:
            results[index] = JobNotFound(job_id)
            continue
        try:
            change = build(job)
        except JobwireError as exc:
            results[index] = exc
            continue
        if change is None:
            results[index] = (job, None)
        else:
            changes.append((index, change))
    if not changes:
        return results
    mark = pending.mark()
    try:
        async with conn.transaction():  # a savepoint: the unique violation below must not end the batch
            committed = await writes.apply_changes(conn, pending, [change for _, change in changes])
    except asyncpg.UniqueViolationError as exc:
        pending.drop_to(mark)
        if exc.constraint_name != "jobs_dedupe":
            raise
        for index, _ in changes:
            results[index] = await _one(conn, pending, job_ids[index], build)
        return results
    for (index, change), item in zip(changes, committed, strict=True):
        if item is None:  # cannot happen: the rows have been locked since the read
            raise RuntimeError(f"guarded write of job {change.job.id} did not apply")
        results[index] = (item.job, item)
    return results


async def _one(conn: Conn, pending: writes.Pending, job_id: str, build: ChangeBuilder) -> Any:
    """UpdateJob of one job in a savepoint of its own (a refusal undoes only its writes)."""
    mark = pending.mark()
    try:
        async with conn.transaction():
            return await writes.update_job(conn, pending, job_id, build)
    except JobwireError as exc:
        pending.drop_to(mark)
        return exc
