"""`UpdateJobs` (SQLite): UpdateJob for a batch of jobs, on the writer connection inside the
transaction `SqliteJobStore.write` opens.

The jobs are read in one statement and their changes written together (`writes.apply_changes`:
one statement per table). Should that write break the unique index of active dedupe keys (a retried
job whose key another active job holds now), it is undone and each job is written on its own, as
UpdateJob writes it, so only that job is refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from jobwire_server.domain.errors import JobNotFound, JobwireError
from jobwire_server.domain.transitions import JobChange
from jobwire_server.store.base import ChangeBuilder
from jobwire_server.store.sqlite import writes

Conn = sqlite3.Connection


def update_jobs(conn: Conn, job_ids: Sequence[str], build: ChangeBuilder) -> list[Any]:
    """One result per id, in order: (job, committed change), None as the change when the builder
    had nothing to do, or the `JobwireError` the job was refused with."""
    found = writes.load_jobs(conn, job_ids)
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
    conn.execute("SAVEPOINT update_jobs")
    try:
        committed = writes.apply_changes(conn, [change for _, change in changes])
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK TO update_jobs")
        conn.execute("RELEASE update_jobs")
        if "jobs.queue, jobs.dedupe_key" not in str(exc):
            raise
        for index, _ in changes:
            results[index] = _one(conn, job_ids[index], build)
        return results
    conn.execute("RELEASE update_jobs")
    for (index, change), item in zip(changes, committed, strict=True):
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
