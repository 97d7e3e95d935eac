"""`UpdateJobs` (PostgreSQL): UpdateJob for a batch of jobs, on the writer connection inside the
transaction `PostgresJobStore.write` opens.

The jobs are read and locked, with their phases, in one statement (in id order, as every batch
locks, so two replicas acting on the same jobs wait for each other instead of deadlocking). Their
changes are then written in the transaction's last statement together with their phases, events
and outbox rows (`writes.apply_locked`): a batch of cancels is four round trips with BEGIN and
COMMIT, whatever its size. A batch that may break the unique index of active dedupe keys (a
retried job whose key another active job may hold now) is written in a savepoint instead; should
it break it, the savepoint is undone and each job is written on its own, as UpdateJob writes it,
so only that job is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from jobwire_server.domain.errors import JobwireError
from jobwire_server.store import plans
from jobwire_server.store.base import ChangeBuilder
from jobwire_server.store.postgres import writes

Conn = asyncpg.Connection


async def update_jobs(conn: Conn, pending: writes.Pending, job_ids: Sequence[str], build: ChangeBuilder) -> list[Any]:
    """One result per id, in order: (job, committed change), None as the change when the builder
    had nothing to do, or the `JobwireError` the job was refused with."""
    found = await writes.load_jobs(conn, job_ids, lock=True, pending=pending)
    results, changes = plans.plan_updates(job_ids, found, build)
    if not changes:
        return results
    if not any(plans.takes_dedupe_key(before, change) for _, before, change in changes):
        locked = await writes.apply_locked(conn, pending, [(before, change) for _, before, change in changes])
        for (index, _, _), written in zip(changes, locked, strict=True):
            results[index] = (written.job, written)
        return results
    mark = pending.mark()
    try:
        async with conn.transaction():  # a savepoint: the unique violation below must not end the batch
            committed = await writes.apply_changes(conn, pending, [change for _, _, change in changes])
    except asyncpg.UniqueViolationError as exc:
        pending.drop_to(mark)
        if exc.constraint_name != "jobs_dedupe":
            raise
        for index, _, _ in changes:
            results[index] = await _one(conn, pending, job_ids[index], build)
        return results
    for (index, _, change), item in zip(changes, committed, strict=True):
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
