"""SQL of the webhook outbox and its delivery log (SQLite): plain functions on a connection, the
writes called inside the store's transactions on the writer thread, the reads on the reader's."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

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

Conn = sqlite3.Connection

# A job whose receiver answered 410 Gone for this URL gets no new deliveries to it: they are
# written STOPPED, so the log still shows them.
_INSERT = """
INSERT INTO deliveries (id, job_id, event_seq, event_type, url, body, state, next_at, create_time, update_time)
VALUES (?, ?, ?, ?, ?, ?,
        CASE WHEN EXISTS (SELECT 1 FROM deliveries WHERE job_id = ?2 AND url = ?5 AND gone = 1)
             THEN 'STOPPED' ELSE 'PENDING' END,
        ?, ?, ?)
"""

_FINAL_STATE = {
    Verdict.DELIVERED: DeliveryState.DELIVERED,
    Verdict.FAILED: DeliveryState.FAILED,
    Verdict.GONE: DeliveryState.FAILED,
    Verdict.RETRY: DeliveryState.PENDING,
}

_DELIVERY_COLUMNS = "id, job_id, event_seq, event_type, url, body, attempts, create_time"


def add_deliveries(conn: Conn, events: Iterable[Event]) -> int:
    """Write an outbox row for each event whose job's webhook wants it; returns how many."""
    rows: list[tuple[Any, ...]] = []
    for event in events:
        new = deliveries_for(event)
        if new is not None:
            rows.append((new.id, new.job_id, new.event_seq, new.event_type, new.url, new.body,
                         new.time, new.time, new.time))
    if rows:
        conn.executemany(_INSERT, rows)
    return len(rows)


def take_due(conn: Conn, now: float, limit: int, lease_until: float) -> list[Delivery]:
    """Lease up to `limit` due deliveries, oldest first, so no other taker sends them meanwhile."""
    found = conn.execute(
        f"UPDATE deliveries SET lease_until = ? WHERE id IN ("
        "  SELECT id FROM deliveries WHERE state = 'PENDING' AND next_at <= ?"
        "  AND (lease_until IS NULL OR lease_until < ?) ORDER BY next_at LIMIT ?)"
        f" RETURNING {_DELIVERY_COLUMNS}", (lease_until, now, now, limit)).fetchall()
    if not found:
        return []
    key = json.dumps(sorted({row[1] for row in found}))
    jobs = {row[0]: row[1:] for row in conn.execute(
        "SELECT id, queue, kind, trace_parent FROM jobs WHERE id IN (SELECT value FROM json_each(?))", (key,))}
    deliveries = [Delivery(*row, *jobs.get(row[1], ("", "", ""))) for row in found]
    deliveries.sort(key=lambda d: (d.create_time, d.id))
    return deliveries


def next_due(conn: Conn) -> float | None:
    """When the earliest waiting (not leased) delivery is due."""
    found = conn.execute(
        "SELECT min(next_at) FROM deliveries WHERE state = 'PENDING' AND lease_until IS NULL").fetchall()
    row = next(iter(found), None)
    return None if row is None or row[0] is None else float(row[0])


def release_leases(conn: Conn) -> int:
    cursor = conn.execute("UPDATE deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL")
    return cursor.rowcount


def record_attempt(conn: Conn, outcome: AttemptOutcome, now: float) -> bool:
    """Log the attempt and move the delivery on. False when the delivery is gone (its job was
    deleted by retention) or no longer pending: then nothing is written."""
    d, r = outcome.delivery, outcome.record
    state = _FINAL_STATE[outcome.verdict]
    found = conn.execute(
        "UPDATE deliveries SET attempts = ?, state = ?, next_at = ?, lease_until = NULL, update_time = ?, "
        "last_error = ?, gone = ? WHERE id = ? AND state = 'PENDING' RETURNING id",
        (r.number, state.value, outcome.next_at or now, now, r.error, int(outcome.verdict is Verdict.GONE), d.id))
    if found.fetchone() is None:
        return False
    conn.execute(
        "INSERT OR REPLACE INTO delivery_attempts (delivery_id, number, job_id, time, url, status_code, latency, "
        "response, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (d.id, r.number, d.job_id, r.time, r.url, r.status_code, r.latency, r.response, r.error))
    if outcome.verdict is Verdict.GONE:
        conn.execute(
            "UPDATE deliveries SET state = 'STOPPED', lease_until = NULL, update_time = ? "
            "WHERE job_id = ? AND url = ? AND state = 'PENDING'", (now, d.job_id, d.url))
    return True


def job_deliveries(conn: Conn, job_id: str) -> list[DeliveryInfo]:
    found = conn.execute(
        "SELECT id, job_id, event_seq, event_type, url, state, attempts, next_at, create_time, last_error "
        "FROM deliveries WHERE job_id = ? ORDER BY event_seq, id", (job_id,)).fetchall()
    log_rows = conn.execute(
        "SELECT delivery_id, number, time, url, status_code, latency, response, error FROM delivery_attempts "
        "WHERE job_id = ? ORDER BY delivery_id, number", (job_id,)).fetchall()
    logs: dict[str, list[AttemptRecord]] = {}
    for row in log_rows:
        logs.setdefault(row[0], []).append(AttemptRecord(*row[1:]))
    return [DeliveryInfo(id=row[0], job_id=row[1], event_seq=row[2], event_type=row[3], url=row[4],
                         state=DeliveryState(row[5]), attempts=row[6], next_at=row[7], create_time=row[8],
                         last_error=row[9], log=tuple(logs.get(row[0], ()))) for row in found]


def delete_for_jobs(conn: Conn, ids_json: str) -> None:
    """Drop the deliveries and log of deleted jobs (`ids_json`: their ids as a JSON array)."""
    key = ids_json
    conn.execute("DELETE FROM deliveries WHERE job_id IN (SELECT value FROM json_each(?))", (key,))
    conn.execute("DELETE FROM delivery_attempts WHERE job_id IN (SELECT value FROM json_each(?))", (key,))


def prune_log(conn: Conn, before: float, limit: int) -> int:
    """Delete up to `limit` log rows older than `before`, and finished deliveries last touched then."""
    cursor = conn.execute(
        "DELETE FROM delivery_attempts WHERE (delivery_id, number) IN "
        "(SELECT delivery_id, number FROM delivery_attempts WHERE time < ? LIMIT ?)",
        (before, limit))
    pruned = cursor.rowcount
    cursor = conn.execute(
        "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE state != 'PENDING' "
        "AND update_time < ? LIMIT ?)", (before, limit))
    return pruned + cursor.rowcount
