"""SQL of schedules (SQLite): plain functions on a connection, run inside the transaction
`SqliteJobStore.write` opens (the writes) or on the reader (the reads). A firing reuses the job
writes of `writes.py`, so its job is inserted, and the previous job cancelled, exactly as an
Enqueue and a CancelJob would, in the same transaction as the schedule's new row."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from jobwire_server.domain.errors import ScheduleExists, ScheduleNotFound
from jobwire_server.domain.models import evolve
from jobwire_server.domain.schedules import Schedule
from jobwire_server.store import schedule_rows as srows
from jobwire_server.store.base import (
    ChangeSchedule,
    CreateSchedule,
    DeleteSchedule,
    Fired,
    FireSchedules,
    ScheduleOp,
    SchedulesFired,
    SchedulesSynced,
    SyncSchedules,
)
from jobwire_server.store.sqlite import writes

Conn = sqlite3.Connection

_INSERT = f"INSERT INTO schedules ({srows.SELECT}) VALUES ({', '.join('?' * len(srows.COLUMNS))})"
_REPLACE = _INSERT.replace("INSERT", "INSERT OR REPLACE", 1)
_UPDATE = ("UPDATE schedules SET spec = ?, paused = ?, from_config = ?, next_fire = ?, last_fire = ?, "
           "last_job_id = ?, create_time = ?, update_time = ? WHERE id = ?")
_NEXT_DUE = "SELECT min(next_fire) FROM schedules"


def run(conn: Conn, op: ScheduleOp) -> Any:
    match op:
        case FireSchedules():
            return fire(conn, op)
        case CreateSchedule(schedule):
            return create(conn, schedule)
        case ChangeSchedule(schedule_id, build):
            return _write(conn, build(get(conn, schedule_id)))
        case DeleteSchedule(schedule_id, check):
            return delete(conn, schedule_id, check)
        case SyncSchedules(plan):
            return sync(conn, plan)
    raise TypeError(f"unknown schedule operation {op!r}")


def get(conn: Conn, schedule_id: str) -> Schedule:
    row = conn.execute(f"SELECT {srows.SELECT} FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
    if row is None:
        raise ScheduleNotFound(schedule_id)
    return srows.from_row(row)


def list_page(conn: Conn, after_id: str, limit: int) -> tuple[list[Schedule], str | None]:
    found = conn.execute(f"SELECT {srows.SELECT} FROM schedules WHERE id > ? ORDER BY id LIMIT ?",
                         (after_id, limit + 1)).fetchall()
    page = [srows.from_row(row) for row in found[:limit]]
    return page, (page[-1].id if len(found) > limit else None)


def next_due(conn: Conn) -> float | None:
    return writes.scalar(conn.execute(_NEXT_DUE))


def create(conn: Conn, schedule: Schedule) -> Schedule:
    try:
        conn.execute(_INSERT, srows.params(schedule))
    except sqlite3.IntegrityError:
        raise ScheduleExists(schedule.id) from None
    return schedule


def _write(conn: Conn, schedule: Schedule) -> Schedule:
    values = srows.params(schedule)
    conn.execute(_UPDATE, (*values[1:], values[0]))
    return schedule


def delete(conn: Conn, schedule_id: str, check: Callable[[Schedule], None] | None) -> Schedule:
    schedule = get(conn, schedule_id)
    if check is not None:
        check(schedule)
    conn.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
    return schedule


def sync(conn: Conn, plan: Callable[[Sequence[Schedule]], tuple[Sequence[Schedule], Sequence[str]]]
         ) -> SchedulesSynced:
    found = [srows.from_row(row) for row in conn.execute(f"SELECT {srows.SELECT} FROM schedules ORDER BY id")]
    written, deleted = plan(found)
    if written:
        conn.executemany(_REPLACE, [srows.params(s) for s in written])
    for schedule_id in deleted:
        conn.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
    return SchedulesSynced(list(written), list(deleted), next_due(conn))


def fire(conn: Conn, op: FireSchedules) -> SchedulesFired:
    if op.schedule_id is not None:
        due = [get(conn, op.schedule_id)]
    else:
        due = [srows.from_row(row) for row in conn.execute(
            f"SELECT {srows.SELECT} FROM schedules WHERE next_fire <= ? ORDER BY next_fire, id LIMIT ?",
            (op.now, op.limit))]
    fired: list[Fired] = []
    for schedule in due:
        previous = writes.load_jobs(conn, [schedule.last_job_id]).get(schedule.last_job_id) \
            if schedule.last_job_id else None
        key = op.plan.key(schedule)
        firing = op.plan.plan(schedule, previous, key is not None and _known(conn, key, op.now))
        if firing is None:
            continue
        cancelled = writes.apply_changes(conn, [firing.cancel])[0] if firing.cancel is not None else None
        inserted = None
        after = firing.schedule
        if firing.job is not None:
            (inserted,) = writes.insert_jobs(conn, [firing.job], op.now, op.request_ttl)
            after = evolve(after, last_job_id=inserted.job.id)
        _write(conn, after)
        fired.append(Fired(after, inserted, cancelled, firing.skipped, previous))
    return SchedulesFired(fired, next_due(conn))


def _known(conn: Conn, request_id: str, now: float) -> bool:
    found = conn.execute("SELECT 1 FROM requests WHERE request_id = ? AND expires > ?", (request_id, now))
    return found.fetchone() is not None
