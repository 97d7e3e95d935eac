"""`UpdateJobs` (SQLite): UpdateJob for a batch of jobs, on the writer connection inside the
transaction `SqliteJobStore.write` opens.

The jobs are read in one statement and their changes written together (`writes.apply_locked`: one
statement per table, the guards checked on the jobs as read, since the transaction has held the
write lock from that read on). A batch that may break the unique index of active dedupe keys (a
retried job whose key another active job may hold now) is written in a savepoint; should it break
it, the savepoint is undone and each job is written on its own, as UpdateJob writes it, so only
that job is refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from jobwire_server.domain.errors import JobwireError
from jobwire_server.store import plans
from jobwire_server.store.base import ChangeBuilder
from jobwire_server.store.sqlite import writes

Conn = sqlite3.Connection


def update_jobs(conn: Conn, job_ids: Sequence[str], build: ChangeBuilder) -> list[Any]:
    """One result per id, in order: (job, committed change), None as the change when the builder
    had nothing to do, or the `JobwireError` the job was refused with."""
    found = writes.load_jobs(conn, job_ids)
    results, changes = plans.plan_updates(job_ids, found, build)
    if not changes:
        return results
    if not any(plans.takes_dedupe_key(before, change) for _, before, change in changes):
        locked = writes.apply_locked(conn, [(before, change) for _, before, change in changes])
        for (index, _, _), written in zip(changes, locked, strict=True):
            results[index] = (written.job, written)
        return results
    conn.execute("SAVEPOINT update_jobs")
    try:
        committed = writes.apply_changes(conn, [change for _, _, change in changes])
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK TO update_jobs")
        conn.execute("RELEASE update_jobs")
        if "jobs.queue, jobs.dedupe_key" not in str(exc):
            raise
        for index, _, _ in changes:
            results[index] = _one(conn, job_ids[index], build)
        return results
    conn.execute("RELEASE update_jobs")
    for (index, _, change), item in zip(changes, committed, strict=True):
        if item is None:  # cannot happen: the transaction holds the write lock since the jobs were read
            raise RuntimeError(f"guarded write of job {change.job.id} did not apply")
        results[index] = (item.job, item)
    return results


def _one(conn: Conn, job_id: str, build: ChangeBuilder) -> Any:
    """UpdateJob of one job in a savepoint of its own (a refusal undoes only its writes)."""
    conn.execute("SAVEPOINT update_job")
    try:
        result = writes.update_job(conn, job_id, build)
    except JobwireError as exc:
        conn.execute("ROLLBACK TO update_job")
        conn.execute("RELEASE update_job")
        return exc
    conn.execute("RELEASE update_job")
    return result
