"""SQL of every read (PostgreSQL): coroutines on a pooled connection, never the writer's."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from jobwire_server.domain.deliveries import DeliveryInfo
from jobwire_server.domain.errors import JobNotFound
from jobwire_server.domain.models import Event, Job, QueueStats
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.states import JobState
from jobwire_server.store import rows
from jobwire_server.store.base import RetentionCounts
from jobwire_server.store.postgres import outbox, search
from jobwire_server.store.postgres.writes import load_jobs

Conn = asyncpg.Connection


async def get_job(conn: Conn, job_id: str) -> Job:
    found = await load_jobs(conn, [job_id])
    if job_id not in found:
        raise JobNotFound(job_id)
    return found[job_id]


async def list_jobs(conn: Conn, query: JobQuery) -> tuple[list[Job], str | None]:
    # One snapshot for the ids and the jobs, so a page is consistent.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        ids = await search.job_ids(conn, query, query.page_size + 1)
        more = len(ids) > query.page_size
        ids = ids[: query.page_size]
        found = await load_jobs(conn, ids)
    page = [found[i] for i in ids if i in found]
    return page, (ids[-1] if more and ids else None)


async def list_job_ids(conn: Conn, query: JobQuery) -> list[str]:
    return await search.job_ids(conn, query, query.page_size)


async def count_jobs(conn: Conn, query: JobQuery) -> int:
    return await search.count_jobs(conn, query)


async def events_after(conn: Conn, job_id: str, sequence: int, limit: int) -> list[Event]:
    # One snapshot, so the job is exactly as of the last event returned.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        found = await conn.fetch(
            "SELECT job_id, seq, type, time, phase, detail FROM events WHERE job_id = $1 AND seq > $2 "
            "ORDER BY seq LIMIT $3", job_id, sequence, limit)
        job = await get_job(conn, job_id)
    return [rows.event_from_row(row, job.queue, job.kind, job) for row in found]


async def queue_stats(conn: Conn, queue: str, now: float) -> list[QueueStats]:
    where, params = ("WHERE queue = $1", (queue,)) if queue else ("", ())
    counts = await conn.fetch(f"SELECT queue, state, count(*) FROM jobs {where} GROUP BY queue, state", *params)
    by_queue: dict[str, dict[JobState, int]] = {queue: {}} if queue else {}
    for name, state, number in counts:
        by_queue.setdefault(name, {})[JobState(state)] = number
    oldest = await conn.fetch(
        f"SELECT queue, min(run_at) FROM jobs {where + (' AND' if where else 'WHERE')} state = 'QUEUED' "
        "GROUP BY queue", *params)
    oldest_at = {name: at for name, at in oldest}
    return [QueueStats(name, by_queue[name], max(0.0, now - oldest_at[name]) if name in oldest_at else 0.0)
            for name in sorted(by_queue)]


async def next_wakeup(conn: Conn) -> float | None:
    value: float | None = await conn.fetchval(
        "SELECT min(run_at) FROM jobs WHERE state IN ('SCHEDULED', 'RETRYING')")
    return value


async def next_lease_expiry(conn: Conn) -> float | None:
    value: float | None = await conn.fetchval("SELECT min(lease_expires) FROM jobs WHERE state = 'RUNNING'")
    return value


async def expired_leases(conn: Conn, now: float, limit: int) -> list[Job]:
    found = await conn.fetch(
        "SELECT id FROM jobs WHERE state = 'RUNNING' AND lease_expires < $1 ORDER BY lease_expires LIMIT $2",
        now, limit)
    return list((await load_jobs(conn, [row[0] for row in found])).values())


async def job_deliveries(conn: Conn, job_id: str) -> list[DeliveryInfo]:
    if await conn.fetchval("SELECT 1 FROM jobs WHERE id = $1", job_id) is None:
        raise JobNotFound(job_id)
    return await outbox.job_deliveries(conn, job_id)


async def retention_preview(conn: Conn, finished_before: Mapping[JobState, float], stale_before: float | None,
                            log_before: float | None) -> RetentionCounts:
    stale = 0
    for state, cutoff in finished_before.items():
        stale += await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE state = $1 AND finish_time < $2", state.value, cutoff)
    deleted = 0 if stale_before is None else await conn.fetchval(
        "SELECT count(*) FROM jobs WHERE state = 'STALE' AND update_time < $1", stale_before)
    log = 0 if log_before is None else await conn.fetchval(
        "SELECT count(*) FROM delivery_attempts WHERE time < $1", log_before)
    return RetentionCounts(marked_stale=stale, deleted=deleted, log_pruned=log)
