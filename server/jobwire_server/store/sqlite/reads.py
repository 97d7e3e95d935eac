"""SQL of every read (SQLite): plain functions on the reader connection, run on its own thread, so
reads never wait behind the writer (WAL lets them see the last commit while it writes)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from jobwire_server.domain.deliveries import DeliveryInfo
from jobwire_server.domain.errors import JobNotFound
from jobwire_server.domain.models import Event, Job, QueueStats
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.states import JobState
from jobwire_server.store import rows
from jobwire_server.store.base import RetentionCounts
from jobwire_server.store.sqlite import outbox, search
from jobwire_server.store.sqlite.writes import load_jobs, scalar

Conn = sqlite3.Connection


def get_job(conn: Conn, job_id: str) -> Job:
    found = load_jobs(conn, [job_id])
    if job_id not in found:
        raise JobNotFound(job_id)
    return found[job_id]


def list_jobs(conn: Conn, query: JobQuery) -> tuple[list[Job], str | None]:
    # One read transaction, so the ids and the jobs come from the same snapshot.
    conn.execute("BEGIN")
    try:
        ids = search.job_ids(conn, query, query.page_size + 1)
        more = len(ids) > query.page_size
        ids = ids[: query.page_size]
        found = load_jobs(conn, ids)
    finally:
        conn.execute("COMMIT")
    page = [found[i] for i in ids if i in found]
    return page, (ids[-1] if more and ids else None)


def list_job_ids(conn: Conn, query: JobQuery) -> list[str]:
    return search.job_ids(conn, query, query.page_size)


def count_jobs(conn: Conn, query: JobQuery) -> int:
    return search.count_jobs(conn, query)


def events_after(conn: Conn, job_id: str, sequence: int, limit: int) -> list[Event]:
    # One read transaction, so the job is exactly as of the last event returned.
    conn.execute("BEGIN")
    try:
        found = conn.execute(
            "SELECT job_id, seq, type, time, phase, detail FROM events WHERE job_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?", (job_id, sequence, limit)).fetchall()
        job = get_job(conn, job_id)
    finally:
        conn.execute("COMMIT")
    return [rows.event_from_row(row, job.queue, job.kind, job) for row in found]


def queue_stats(conn: Conn, queue: str, now: float) -> list[QueueStats]:
    where, params = ("WHERE queue = ?", (queue,)) if queue else ("", ())
    counts = conn.execute(f"SELECT queue, state, count(*) FROM jobs {where} GROUP BY queue, state", params)
    by_queue: dict[str, dict[JobState, int]] = {queue: {}} if queue else {}
    for name, state, count in counts:
        by_queue.setdefault(name, {})[JobState(state)] = count
    oldest = conn.execute(
        f"SELECT queue, min(run_at) FROM jobs {where + (' AND' if where else 'WHERE')} state = 'QUEUED' "
        "GROUP BY queue", params)
    oldest_at = {name: at for name, at in oldest}
    return [QueueStats(name, by_queue[name], max(0.0, now - oldest_at[name]) if name in oldest_at else 0.0)
            for name in sorted(by_queue)]


def next_wakeup(conn: Conn) -> float | None:
    return scalar(conn.execute("SELECT min(run_at) FROM jobs WHERE state IN ('SCHEDULED', 'RETRYING')"))


def next_lease_expiry(conn: Conn) -> float | None:
    return scalar(conn.execute("SELECT min(lease_expires) FROM jobs WHERE state = 'RUNNING'"))


def expired_leases(conn: Conn, now: float, limit: int) -> list[Job]:
    found = conn.execute(
        "SELECT id FROM jobs WHERE state = 'RUNNING' AND lease_expires < ? ORDER BY lease_expires LIMIT ?",
        (now, limit))
    return list(load_jobs(conn, [row[0] for row in found]).values())


def job_deliveries(conn: Conn, job_id: str) -> list[DeliveryInfo]:
    if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
        raise JobNotFound(job_id)
    return outbox.job_deliveries(conn, job_id)


def retention_preview(conn: Conn, finished_before: Mapping[JobState, float], stale_before: float | None,
                      log_before: float | None) -> RetentionCounts:
    stale = 0
    for state, cutoff in finished_before.items():
        stale += int(scalar(conn.execute(
            "SELECT count(*) FROM jobs WHERE state = ? AND finish_time < ?", (state.value, cutoff))) or 0)
    deleted = 0 if stale_before is None else int(scalar(conn.execute(
        "SELECT count(*) FROM jobs WHERE state = 'STALE' AND update_time < ?", (stale_before,))) or 0)
    log = 0 if log_before is None else int(scalar(conn.execute(
        "SELECT count(*) FROM delivery_attempts WHERE time < ?", (log_before,))) or 0)
    return RetentionCounts(marked_stale=stale, deleted=deleted, log_pruned=log)
