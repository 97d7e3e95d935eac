"""SQL of the webhook outbox and its delivery log (PostgreSQL). Every replica sends: deliveries
are leased with `SKIP LOCKED`, so two senders never take the same one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from jobwire_server.domain.deliveries import (
    AttemptOutcome,
    AttemptRecord,
    Delivery,
    DeliveryInfo,
    DeliveryState,
    Verdict,
    deliveries_for,
)
from jobwire_server.domain.models import Event
from jobwire_server.store.postgres import batch

Conn = asyncpg.Connection

# A job whose receiver answered 410 Gone for this URL gets no new deliveries to it: they are
# written STOPPED, so the log still shows them.
#: Columns of a delivery row (`delivery_rows`), read by `INSERT` from its `{rows}`.
DELIVERY_ROW = ("text", "uuid", "int4", "text", "text", "bytea", "timestamptz")
INSERT = """
INSERT INTO deliveries (id, job_id, event_seq, event_type, url, body, state, next_at, create_time, update_time)
SELECT d.id, d.job_id, d.event_seq, d.event_type, d.url, d.body,
       CASE WHEN EXISTS (SELECT 1 FROM deliveries g WHERE g.job_id = d.job_id AND g.url = d.url AND g.gone)
            THEN 'STOPPED' ELSE 'PENDING' END,
       d.time, d.time, d.time
FROM {rows} AS d(id, job_id, event_seq, event_type, url, body, time)
"""

_FINAL_STATE = {
    Verdict.DELIVERED: DeliveryState.DELIVERED,
    Verdict.FAILED: DeliveryState.FAILED,
    Verdict.GONE: DeliveryState.FAILED,
    Verdict.RETRY: DeliveryState.PENDING,
}

_DELIVERY_COLUMNS = "id, job_id, event_seq, event_type, url, body, attempts, create_time"


def delivery_rows(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """The outbox rows (parameters of `INSERT`) of the events whose job's webhook wants them."""
    rows: list[tuple[Any, ...]] = []
    for event in events:
        new = deliveries_for(event)
        if new is not None:
            rows.append((new.id, new.job_id, new.event_seq, new.event_type, new.url, new.body, new.time))
    return rows


async def take_due(conn: Conn, now: float, limit: int, lease_until: float) -> list[Delivery]:
    """Lease up to `limit` due deliveries, oldest first, that no other replica holds."""
    found = await conn.fetch(
        "UPDATE deliveries SET lease_until = $1 WHERE id IN ("
        "  SELECT id FROM deliveries WHERE state = 'PENDING' AND next_at <= $2"
        "  AND (lease_until IS NULL OR lease_until < $2) ORDER BY next_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
        f" RETURNING {_DELIVERY_COLUMNS}", lease_until, now, limit)
    if not found:
        return []
    jobs = {row[0]: tuple(row[1:]) for row in await conn.fetch(
        "SELECT id, queue, kind, trace_parent FROM jobs WHERE id = ANY($1::uuid[])", sorted({r[1] for r in found}))}
    deliveries = [Delivery(*row, *jobs.get(row[1], ("", "", ""))) for row in found]
    deliveries.sort(key=lambda d: (d.create_time, d.id))
    return deliveries


async def next_due(conn: Conn) -> float | None:
    """When the earliest waiting (not leased) delivery is due. A replica that died holding leases
    leaves them to run out; every replica's periodic look finds them then."""
    value: float | None = await conn.fetchval(
        "SELECT min(next_at) FROM deliveries WHERE state = 'PENDING' AND lease_until IS NULL")
    return value


async def release_expired_leases(conn: Conn, now: float) -> int:
    """Leases that ran out (their replica died) are due again; live ones are other replicas' own."""
    return int((await conn.execute(
        "UPDATE deliveries SET lease_until = NULL WHERE lease_until < $1", now)).rsplit(" ", 1)[-1])


async def record_attempt(conn: Conn, outcome: AttemptOutcome, now: float) -> bool:
    """Log the attempt and move the delivery on. False when the delivery is gone (its job was
    deleted by retention) or no longer pending: then nothing is written."""
    d, r = outcome.delivery, outcome.record
    state = _FINAL_STATE[outcome.verdict]
    found = await conn.fetchval(
        "UPDATE deliveries SET attempts = $1, state = $2, next_at = $3, lease_until = NULL, update_time = $4, "
        "last_error = $5, gone = $6 WHERE id = $7 AND state = 'PENDING' RETURNING id",
        r.number, state.value, outcome.next_at or now, now, batch.text(r.error), outcome.verdict is Verdict.GONE, d.id)
    if found is None:
        return False
    await conn.execute(
        "INSERT INTO delivery_attempts (delivery_id, number, job_id, time, url, status_code, latency, response, "
        "error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (delivery_id, number) DO UPDATE SET "
        "time = excluded.time, url = excluded.url, status_code = excluded.status_code, latency = excluded.latency, "
        "response = excluded.response, error = excluded.error",
        d.id, r.number, d.job_id, r.time, r.url, r.status_code, r.latency, batch.text(r.response), batch.text(r.error))
    if outcome.verdict is Verdict.GONE:
        await conn.execute(
            "UPDATE deliveries SET state = 'STOPPED', lease_until = NULL, update_time = $1 "
            "WHERE job_id = $2 AND url = $3 AND state = 'PENDING'", now, d.job_id, d.url)
    return True


async def job_deliveries(conn: Conn, job_id: str) -> list[DeliveryInfo]:
    found = await conn.fetch(
        "SELECT id, job_id, event_seq, event_type, url, state, attempts, next_at, create_time, last_error "
        "FROM deliveries WHERE job_id = $1 ORDER BY event_seq, id", job_id)
    log_rows = await conn.fetch(
        "SELECT delivery_id, number, time, url, status_code, latency, response, error FROM delivery_attempts "
        "WHERE job_id = $1 ORDER BY delivery_id, number", job_id)
    logs: dict[str, list[AttemptRecord]] = {}
    for row in log_rows:
        logs.setdefault(row[0], []).append(AttemptRecord(*row[1:]))
    return [DeliveryInfo(id=row[0], job_id=row[1], event_seq=row[2], event_type=row[3], url=row[4],
                         state=DeliveryState(row[5]), attempts=row[6], next_at=row[7], create_time=row[8],
                         last_error=row[9], log=tuple(logs.get(row[0], ()))) for row in found]


async def delete_for_jobs(conn: Conn, ids: Sequence[str]) -> None:
    """Drop the deliveries and log of deleted jobs."""
    await conn.execute("DELETE FROM deliveries WHERE job_id = ANY($1::uuid[])", list(ids))
    await conn.execute("DELETE FROM delivery_attempts WHERE job_id = ANY($1::uuid[])", list(ids))


async def prune_log(conn: Conn, before: float, limit: int) -> int:
    """Delete up to `limit` log rows older than `before`, and finished deliveries last touched then."""
    status = await conn.execute(
        "DELETE FROM delivery_attempts WHERE (delivery_id, number) IN "
        "(SELECT delivery_id, number FROM delivery_attempts WHERE time < $1 LIMIT $2)", before, limit)
    pruned = int(status.rsplit(" ", 1)[-1])
    status = await conn.execute(
        "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE state != 'PENDING' "
        "AND update_time < $1 LIMIT $2)", before, limit)
    return pruned + int(status.rsplit(" ", 1)[-1])
