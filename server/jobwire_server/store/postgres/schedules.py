"""SQL of schedules (PostgreSQL): coroutines on the writer connection inside the transaction
`PostgresJobStore.write` opens (the writes) or on a pooled reader (the reads).

Replicas share the rows: a schedule is locked before it is changed, and the firing pass takes the
due rows `FOR UPDATE SKIP LOCKED`, so two replicas firing at once never fire one schedule twice
(each row is fired by one of them; the other finds it no longer due once the first commits). A
firing's job carries a request id made from the schedule id and the firing time: even a second
firing of the same time (were the guard ever bypassed) returns the first job instead of making one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

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
from jobwire_server.store.postgres import writes

Conn = asyncpg.Connection

_TYPES = ("text", "jsonb", "bool", "bool", "timestamptz", "timestamptz", "uuid", "timestamptz", "timestamptz")
_VALUES = ", ".join(f"${n}::{t}" for n, t in enumerate(_TYPES, 1))
_INSERT = f"INSERT INTO schedules ({srows.SELECT}) VALUES ({_VALUES})"
_UPSERT = (f"{_INSERT} ON CONFLICT (id) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in srows.COLUMNS[1:]))
_UPDATE = ("UPDATE schedules SET " + ", ".join(f"{c} = ${n}::{t}" for n, (c, t) in
                                               enumerate(zip(srows.COLUMNS[1:], _TYPES[1:], strict=True), 2))
           + " WHERE id = $1")
_NEXT_DUE = "SELECT min(next_fire) FROM schedules"


async def run(conn: Conn, pending: writes.Pending, op: ScheduleOp) -> Any:
    match op:
        case FireSchedules():
            return await fire(conn, pending, op)
        case CreateSchedule(schedule):
            return await create(conn, schedule)
        case ChangeSchedule(schedule_id, build):
            return await _write(conn, build(await _locked(conn, schedule_id)))
        case DeleteSchedule(schedule_id, check):
            return await delete(conn, schedule_id, check)
        case SyncSchedules(plan):
            return await sync(conn, plan)
    raise TypeError(f"unknown schedule operation {op!r}")


async def get(conn: Conn, schedule_id: str) -> Schedule:
    row = await conn.fetchrow(f"SELECT {srows.SELECT} FROM schedules WHERE id = $1", schedule_id)
    if row is None:
        raise ScheduleNotFound(schedule_id)
    return srows.from_row(row)


async def list_page(conn: Conn, after_id: str, limit: int) -> tuple[list[Schedule], str | None]:
    found = await conn.fetch(f"SELECT {srows.SELECT} FROM schedules WHERE id > $1 ORDER BY id LIMIT $2",
                             after_id, limit + 1)
    page = [srows.from_row(row) for row in found[:limit]]
    return page, (page[-1].id if len(found) > limit else None)


async def next_due(conn: Conn) -> float | None:
    value = await conn.fetchval(_NEXT_DUE)
    return None if value is None else float(value)


async def _locked(conn: Conn, schedule_id: str) -> Schedule:
    row = await conn.fetchrow(f"SELECT {srows.SELECT} FROM schedules WHERE id = $1 FOR UPDATE", schedule_id)
    if row is None:
        raise ScheduleNotFound(schedule_id)
    return srows.from_row(row)


async def create(conn: Conn, schedule: Schedule) -> Schedule:
    try:
        async with conn.transaction():  # a savepoint: the violation must not end the batch
            await conn.execute(_INSERT, *srows.params(schedule))
    except asyncpg.UniqueViolationError:
        raise ScheduleExists(schedule.id) from None
    return schedule


async def _write(conn: Conn, schedule: Schedule) -> Schedule:
    await conn.execute(_UPDATE, *srows.params(schedule))
    return schedule


async def delete(conn: Conn, schedule_id: str, check: Callable[[Schedule], None] | None) -> Schedule:
    schedule = await _locked(conn, schedule_id)
    if check is not None:
        check(schedule)
    await conn.execute("DELETE FROM schedules WHERE id = $1", schedule_id)
    return schedule


async def sync(conn: Conn, plan: Callable[[Sequence[Schedule]], tuple[Sequence[Schedule], Sequence[str]]]
               ) -> SchedulesSynced:
    # Replicas starting together sync one after the other: the second sees the first's rows.
    await conn.execute("LOCK TABLE schedules IN SHARE ROW EXCLUSIVE MODE")
    found = [srows.from_row(row) for row in await conn.fetch(f"SELECT {srows.SELECT} FROM schedules ORDER BY id")]
    written, deleted = plan(found)
    if written:
        await conn.executemany(_UPSERT, [srows.params(s) for s in written])
    if deleted:
        await conn.execute("DELETE FROM schedules WHERE id = ANY($1::text[])", list(deleted))
    return SchedulesSynced(list(written), list(deleted), await next_due(conn))


async def fire(conn: Conn, pending: writes.Pending, op: FireSchedules) -> SchedulesFired:
    if op.schedule_id is not None:
        due = [await _locked(conn, op.schedule_id)]
    else:
        due = [srows.from_row(row) for row in await conn.fetch(
            f"SELECT {srows.SELECT} FROM schedules WHERE next_fire <= $1 ORDER BY next_fire, id LIMIT $2 "
            "FOR UPDATE SKIP LOCKED", op.now, op.limit)]
    fired: list[Fired] = []
    for schedule in due:
        previous = None
        if schedule.last_job_id:
            previous = (await writes.load_jobs(conn, [schedule.last_job_id], pending=pending)).get(schedule.last_job_id)
        key = op.plan.key(schedule)
        firing = op.plan.plan(schedule, previous, key is not None and await _known(conn, key, op.now))
        if firing is None:
            continue
        cancelled = None
        if firing.cancel is not None:
            (cancelled,) = await writes.apply_changes(conn, pending, [firing.cancel])
        inserted = None
        after = firing.schedule
        if firing.job is not None:
            (inserted,) = await writes.insert_jobs(conn, pending, [firing.job], op.now, op.request_ttl)
            after = evolve(after, last_job_id=inserted.job.id)
        await _write(conn, after)
        fired.append(Fired(after, inserted, cancelled, firing.skipped, previous))
    return SchedulesFired(fired, await next_due(conn))


async def _known(conn: Conn, request_id: str, now: float) -> bool:
    found = await conn.fetchval("SELECT true FROM requests WHERE request_id = $1 AND expires > $2", request_id, now)
    return bool(found)
