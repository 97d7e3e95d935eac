"""SQL of every write (PostgreSQL): coroutines on one asyncpg connection, called inside the
transaction `PostgresJobStore.write` opens. Batches travel as arrays (`unnest($1::…[])`), so a
whole group commit costs a handful of round trips whatever it holds.

Several replicas write the same tables: rows are locked before they are read for a change
(`FOR UPDATE`, in id order so two batches cannot deadlock on each other's jobs), claims skip rows
another transaction holds (`SKIP LOCKED`), and a job's event sequence is computed under its row lock,
so it stays gapless whichever replica writes next.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import asyncpg

from jobwire_server.domain.errors import InvalidTransition, JobNotFound
from jobwire_server.domain.models import Event, Job, NewJob, Phase, evolve
from jobwire_server.domain.states import ACTIVE_STATES, EventType, JobState
from jobwire_server.domain.transitions import JobChange, become_due, claimed, make_stale, start_attempt
from jobwire_server.store import plans, rows
from jobwire_server.store import queue_rows as qrows
from jobwire_server.store.base import (
    ChangeBuilder,
    ClaimParams,
    ClaimResult,
    ClaimScope,
    Committed,
    InsertResult,
    LeaseRenewal,
)
from jobwire_server.store.postgres import batch, outbox, queues

Conn = asyncpg.Connection

PROMOTE_BATCH = 1000
ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATES))

_JOB_TYPES = (
    "uuid", "text", "text", "bytea", "int4", "text", "int4", "int4", "int4", "float8", "float8", "text", "jsonb",
    "jsonb", "text", "jsonb", "jsonb", "bool", "text", "text", "int4", "timestamptz", "timestamptz", "timestamptz",
    "timestamptz", "timestamptz", "text",
)
_PRIORITY, _MAX_ATTEMPTS = rows.JOB_COLUMNS.index("priority"), rows.JOB_COLUMNS.index("max_attempts")
_PRIORITY_UNSET, _MAX_ATTEMPTS_UNSET = len(_JOB_TYPES), len(_JOB_TYPES) + 1


def _insert_column(index: int) -> str:
    """A job column as inserted: the row's value, except a priority or max attempts the request
    left unset, which the queue's stored default (when it has one) replaces, read in this
    statement rather than in a round trip of its own."""
    if index == _PRIORITY:
        return f"CASE WHEN u.c{_PRIORITY_UNSET} AND q.default_priority > 0 THEN q.default_priority ELSE u.c{index} END"
    if index == _MAX_ATTEMPTS:
        return (f"CASE WHEN u.c{_MAX_ATTEMPTS_UNSET} AND q.default_max_attempts > 0 THEN q.default_max_attempts "
                f"ELSE u.c{index} END")
    return f"u.c{index}"


_INSERT_JOBS = (
    f"INSERT INTO jobs ({rows.JOB_SELECT}) "
    f"SELECT {', '.join(_insert_column(i) for i in range(len(_JOB_TYPES)))} "
    f"FROM {batch.rows_of(1, (*_JOB_TYPES, 'bool', 'bool'))} "
    f"AS u({', '.join(f'c{i}' for i in range(len(_JOB_TYPES) + 2))}) LEFT JOIN queues q ON q.name = u.c1 "
    f"ON CONFLICT (queue, dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ({ACTIVE_SQL}) DO NOTHING "
    "RETURNING id, priority, max_attempts"
)
_PHASE_ROW = ("uuid", "int4", "text", "text")
_INSERT_PHASES = "INSERT INTO phases (job_id, idx, name, state) SELECT * FROM {rows} AS u"
EVENT_ROW = ("uuid", "int4", "text", "timestamptz", "text", "text")
#: `{rows}`: a `batch.rows_of` subquery of `EVENT_ROW` columns.
INSERT_EVENTS = "INSERT INTO events (job_id, seq, type, time, phase, detail) SELECT * FROM {rows} AS u"
_PHASE_UPDATE_ROW = ("text", "float8", "text", "bytea", "jsonb", "timestamptz", "timestamptz", "uuid", "int4")
_UPDATE_PHASES = """
UPDATE phases AS p SET state = u.state, progress_pct = u.pct, progress_msg = u.msg, result = u.result,
    error = u.error, start_time = u.start_time, finish_time = u.finish_time
FROM {rows} AS u(state, pct, msg, result, error, start_time, finish_time, job_id, idx)
WHERE p.job_id = u.job_id AND p.idx = u.idx
"""
# The rows are locked by the caller and checked against each change's guard; the WHERE repeats
# the guard so a row that moved anyway is left alone.
_CHANGE_ROW = ("uuid", "text", "int4", "int4", "float8", "text", "jsonb", "jsonb", "timestamptz", "timestamptz",
               "timestamptz", "timestamptz", "int4", "bool", "text", "text", "int4")
#: `{rows}`: a `batch.rows_of` subquery of `_CHANGE_ROW` columns.
_UPDATE_JOBS = """
UPDATE jobs AS j SET state = u.state, attempt = u.attempt, uncounted_attempts = u.uncounted,
    progress_pct = u.pct, progress_msg = u.msg, error = u.error, error_history = u.history, run_at = u.run_at,
    start_time = u.start_time, finish_time = u.finish_time, update_time = u.update_time, seq = u.seq,
    cancel_requested = u.cancel_requested, cancel_reason = u.cancel_reason,
    lease_owner = CASE WHEN u.state = 'RUNNING' THEN j.lease_owner END,
    lease_expires = CASE WHEN u.state = 'RUNNING' THEN j.lease_expires END
FROM {rows}
    AS u(id, state, attempt, uncounted, pct, msg, error, history, run_at, start_time, finish_time, update_time, seq,
         cancel_requested, cancel_reason, old_state, old_attempt)
WHERE j.id = u.id AND j.state = u.old_state AND j.attempt = u.old_attempt
"""
_APPLY_CHANGES = _UPDATE_JOBS.format(rows=batch.rows_of(1, _CHANGE_ROW))


# A job's phases as a column of its row (a read or a claim gets each job with its phases in one
# round trip; a claim gets them as they are in the table: see `_claim_ready`).
_WITH_PHASES = (
    "ARRAY(SELECT ROW(p.job_id::text, p.idx, p.name, p.state, p.progress_pct, p.progress_msg, p.result, "
    "p.error::text, p.start_time, p.finish_time) FROM phases p WHERE p.job_id = jobs.id ORDER BY p.idx)"
)


class Pending:
    """Rows a transaction writes in one statement just before it commits, not one statement per
    operation: new phases, phase updates, events and outbox rows. Nothing in the transaction
    reads events or the outbox; a read of a job's phases (`load_jobs`, `load_phases`) writes
    what is pending first. A refused operation's rows are dropped with it (`mark`, `drop_to`)."""

    def __init__(self) -> None:
        self.new_phases: list[tuple[Any, ...]] = []
        self.phase_updates: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        self.outbox: list[Event] = []

    def mark(self) -> tuple[int, int, int, int]:
        return len(self.new_phases), len(self.phase_updates), len(self.events), len(self.outbox)

    def drop_to(self, mark: tuple[int, int, int, int]) -> None:
        del self.new_phases[mark[0]:], self.phase_updates[mark[1]:], self.events[mark[2]:], self.outbox[mark[3]:]

    def touches(self, ids: Sequence[str]) -> bool:
        if not (self.new_phases or self.phase_updates):
            return False
        wanted = set(ids)
        return any(r[0] in wanted for r in self.new_phases) or any(r[7] in wanted for r in self.phase_updates)

    async def flush(self, conn: Conn, jobs: Sequence[tuple[Any, ...]] = ()) -> int:
        """One statement: each non-empty part a data-modifying CTE (they see the same snapshot, so
        a phase is never inserted and updated in one flush: a read in between flushes first).
        `jobs`: rows of `_CHANGE_ROW` to write in the same statement (see `apply_locked`); returns
        how many of them were written."""
        parts: list[str] = []
        args: list[Any] = []

        def part(sql: str, types: Sequence[str], table: Sequence[Sequence[Any]]) -> None:
            args.append(batch.encode(table))
            parts.append(sql.format(rows=batch.rows_of(len(args), types)))

        if jobs:
            part(_UPDATE_JOBS + " RETURNING 1", _CHANGE_ROW, jobs)
        if self.new_phases:
            part(_INSERT_PHASES, _PHASE_ROW, self.new_phases)
        if self.phase_updates:
            last = {(r[7], r[8]): r for r in self.phase_updates}  # the last write of a phase wins
            part(_UPDATE_PHASES, _PHASE_UPDATE_ROW, list(last.values()))
        if self.events:
            part(INSERT_EVENTS, EVENT_ROW, self.events)
        deliveries = outbox.delivery_rows(self.outbox)
        if deliveries:
            part(outbox.INSERT, outbox.DELIVERY_ROW, deliveries)
        self.new_phases, self.phase_updates, self.events, self.outbox = [], [], [], []
        if not parts:
            return 0
        names = [f"w{n}" for n in range(len(parts))]
        written = await conn.fetchval(
            "WITH " + ", ".join(f"{name} AS ({sql})" for name, sql in zip(names, parts, strict=True))
            + (" SELECT count(*) FROM w0" if jobs else " SELECT 0"), *args)
        return int(written)


class Conflict(Exception):
    """Another transaction committed a row this operation must see (a request id or an active
    dedupe key); the operation is run again from its savepoint, and then finds it."""


def count(status: str) -> int:
    """Rows an UPDATE or DELETE touched, from its command tag ("UPDATE 3")."""
    return int(status.rsplit(" ", 1)[-1])


async def load_jobs(conn: Conn, ids: Sequence[str], *, lock: bool = False,
                    pending: Pending | None = None) -> dict[str, Job]:
    """The jobs with these ids, with their phases (missing ids are left out); `lock` takes their
    row locks, in id order."""
    if not ids:
        return {}
    if pending is not None and pending.touches(ids):
        await pending.flush(conn)
    suffix = " ORDER BY id FOR UPDATE" if lock else ""
    # Each job with its phases: one round trip.
    select = f"SELECT {rows.JOB_RETURNING}, {_WITH_PHASES} FROM jobs"
    if len(ids) == 1:
        job_rows = await conn.fetch(f"{select} WHERE id = $1{suffix}", ids[0])
    else:
        job_rows = await conn.fetch(f"{select} WHERE id = ANY($1::uuid[]){suffix}", list(ids))
    return {row[0]: rows.job_from_row(row[:-1], [rows.phase_from_row(p) for p in row[-1]]) for row in job_rows}


async def load_phases(conn: Conn, ids: Sequence[str], pending: Pending | None = None) -> dict[str, list[Phase]]:
    if not ids:
        return {}
    if pending is not None and pending.touches(ids):
        await pending.flush(conn)
    if len(ids) == 1:
        phase_rows = await conn.fetch(f"SELECT {rows.PHASE_COLUMNS} FROM phases WHERE job_id = $1 ORDER BY idx", ids[0])
    else:
        phase_rows = await conn.fetch(
            f"SELECT {rows.PHASE_COLUMNS} FROM phases WHERE job_id = ANY($1::uuid[]) ORDER BY job_id, idx", list(ids))
    phases: dict[str, list[Phase]] = {}
    for row in phase_rows:
        phases.setdefault(row[0], []).append(rows.phase_from_row(row))
    return phases


def write_details(pending: Pending, written: Sequence[tuple[JobChange, Job]]) -> list[Committed]:
    """Phase rows and numbered event rows of changes whose job row was written, queued for the
    transaction's last statement (see the SQLite store: each job's `last_sequence` numbers its
    change's events)."""
    committed: list[Committed] = []
    for change, job in written:
        pending.phase_updates.extend(rows.phase_params(job.id, i, job.phases[i]) for i in change.changed_phases)
        first = job.last_sequence - len(change.events) + 1
        events = tuple(
            Event(job.id, first + n, e.type, job.update_time, job.queue, job.kind, e.phase, e.detail, job)
            for n, e in enumerate(change.events))
        pending.events.extend((job.id, e.sequence, e.type.value, e.time, e.phase, e.detail) for e in events)
        if job.webhook is not None:
            pending.outbox.extend(events)
        committed.append(Committed(job, events))
    return committed


# ---------------------------------------------------------------------- enqueue


async def insert_jobs(conn: Conn, pending: Pending, new_jobs: Sequence[NewJob], now: float,
                      ttl: float) -> list[InsertResult]:
    plan = plans.plan_inserts(new_jobs, await _known_requests(conn, new_jobs, now),
                              await _active_dedupe_keys(conn, new_jobs), now, ttl)
    unset = {job_id: (new.priority_unset, new.max_attempts_unset)
             for new, (job_id, _, made) in zip(new_jobs, plan.outcome, strict=True) if made}
    written = await _insert_rows(conn, pending, plan.created, unset, plan.request_rows, now)
    plan.created = [job if (job.priority, job.max_attempts) == written[job.id]
                    else evolve(job, priority=written[job.id][0], max_attempts=written[job.id][1])
                    for job in plan.created]  # a queue's defaults applied by the INSERT
    results = plans.insert_results(plan, await load_jobs(conn, plan.existing_ids, pending=pending), now)
    pending.outbox.extend(e for r in results if r.job.webhook is not None for e in r.events)
    return results


async def _known_requests(conn: Conn, new_jobs: Sequence[NewJob], now: float) -> dict[str, tuple[str, str]]:
    request_ids = [j.request_id for j in new_jobs if j.request_id]
    if not request_ids:
        return {}
    found = await conn.fetch(
        "SELECT request_id, fingerprint, job_id FROM requests WHERE request_id = ANY($1::text[]) AND expires > $2",
        request_ids, now)
    return {row[0]: (row[1], row[2]) for row in found}


async def _active_dedupe_keys(conn: Conn, new_jobs: Sequence[NewJob]) -> dict[tuple[str, str], str]:
    keys = [(j.queue, j.dedupe_key) for j in new_jobs if j.dedupe_key]
    if not keys:
        return {}
    found = await conn.fetch(
        f"SELECT queue, dedupe_key, id FROM jobs WHERE dedupe_key IS NOT NULL AND state IN ({ACTIVE_SQL}) "
        "AND (queue, dedupe_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(row[0], row[1]): row[2] for row in found}


async def _insert_rows(conn: Conn, pending: Pending, jobs: Sequence[Job], unset: dict[str, tuple[bool, bool]],
                       request_rows: Sequence[tuple[str, str, str, float]],
                       now: float) -> dict[str, tuple[int, int]]:
    """Insert jobs and remembered request ids; `Conflict` when another transaction committed an
    active job with one of their dedupe keys, or one of their request ids, since they were read.
    Returns each job's priority and max attempts as written (`unset`: which the request left unset)."""
    written: dict[str, tuple[int, int]] = {}
    if jobs:
        inserted = await conn.fetch(_INSERT_JOBS, batch.encode([(*_job_params(job), *unset[job.id]) for job in jobs]))
        if len(inserted) != len(jobs):
            raise Conflict
        written = {row[0]: (row[1], row[2]) for row in inserted}
        pending.new_phases.extend((job.id, i, p.name, p.state.value) for job in jobs for i, p in enumerate(job.phases))
        pending.events.extend((job.id, 1, EventType.ENQUEUED.value, job.create_time, "", "") for job in jobs)
    if request_rows:
        # An expired row is replaced; a live one that appeared since the read is a conflict.
        claimed = await conn.fetch(
            "INSERT INTO requests (request_id, fingerprint, job_id, expires) "
            f"SELECT * FROM {batch.rows_of(1, ('text', 'text', 'uuid', 'timestamptz'))} AS u "
            "ON CONFLICT (request_id) DO UPDATE SET fingerprint = excluded.fingerprint, job_id = excluded.job_id, "
            "expires = excluded.expires WHERE requests.expires <= $2 RETURNING request_id",
            batch.encode(request_rows), now)
        if len(claimed) != len(request_rows):
            raise Conflict
    return written


def _job_params(job: Job) -> tuple[Any, ...]:
    return (
        job.id, job.queue, job.kind, job.payload, job.priority, job.state.value, job.attempt,
        job.uncounted_attempts, job.max_attempts, job.timeout, job.progress.percent, job.progress.message,
        rows.error_to_json(job.error), rows.history_to_json(job.error_history), job.dedupe_key or None,
        json.dumps(dict(job.labels)) if job.labels else "{}", rows.webhook_to_json(job.webhook),
        job.cancel_requested, job.cancel_reason, job.trace_parent, job.last_sequence, job.create_time,
        job.update_time, job.run_at, job.start_time, job.finish_time, job.concurrency_key or None,
    )


# ---------------------------------------------------------------------- guarded changes


async def apply_changes(conn: Conn, pending: Pending, changes: Sequence[JobChange]) -> list[Committed | None]:
    """Write each change whose guard holds on the row as it is. One change per job (the common
    case: the executor's outcomes) is one statement, guard checked by the UPDATE itself; several
    changes to one job lock its row first and apply in order, each seeing the one before."""
    if not changes:
        return []
    ids = sorted({c.job.id for c in changes})
    if len(ids) == len(changes):
        return await _apply_each_once(conn, pending, changes)
    found = await conn.fetch(
        "SELECT id, state, attempt, seq, cancel_requested, cancel_reason FROM jobs "
        "WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", ids)
    current: dict[str, list[Any]] = {row[0]: list(row[1:]) for row in found}
    before = {job_id: (row[0], row[1]) for job_id, row in current.items()}
    results: list[Committed | None] = [None] * len(changes)
    written: list[tuple[int, JobChange, int]] = []
    for index, change in enumerate(changes):
        row = current.get(change.job.id)
        if row is None or not plans.passes(change, row[0], row[1]):
            continue
        seq = row[2] + len(change.events)
        row[0], row[1], row[2] = change.job.state.value, change.job.attempt, seq
        if change.reason.value in plans.WRITES_CANCEL_FLAGS:
            row[3], row[4] = change.job.cancel_requested, change.job.cancel_reason
        written.append((index, change, seq))
    if not written:
        return results
    finals: list[tuple[JobChange, Job]] = []
    last_write: dict[str, Job] = {}
    for _, change, seq in written:
        requested, reason = bool(current[change.job.id][3]), current[change.job.id][4]
        job = change.job
        if job.cancel_requested != requested or job.cancel_reason != reason or job.last_sequence != seq:
            job = evolve(job, cancel_requested=requested, cancel_reason=reason, last_sequence=seq)
        finals.append((change, job))
        last_write[job.id] = job
    await conn.execute(_APPLY_CHANGES, batch.encode([_change_params(job, *before[job.id])
                                                     for job in last_write.values()]))
    committed = write_details(pending, finals)
    for (index, _, _), item in zip(written, committed, strict=True):
        results[index] = item
    return results


async def apply_locked(conn: Conn, pending: Pending, changes: Sequence[tuple[Job, JobChange]]) -> list[Committed]:
    """Write changes to jobs this transaction has read and locked (`load_jobs(lock=True)`), each
    given with the job as read: the guards are checked on those rows (they cannot have moved), so
    the job rows are written in the transaction's last statement, with every detail row pending
    (phases, events, outbox): one round trip. The UPDATE still repeats each guard (state and
    attempt as read); a row it did not write fails the whole transaction, as it cannot happen.
    A change that may break the unique index of active dedupe keys (`plans.takes_dedupe_key`)
    does not belong here: the failure would end the transaction, not only that job's write."""
    finals = [(change, plans.as_written(before, change)) for before, change in changes]
    params = sorted((_change_params(job, before.state.value, before.attempt)
                     for (before, _), (_, job) in zip(changes, finals, strict=True)), key=lambda row: row[0])
    committed = write_details(pending, finals)
    written = await pending.flush(conn, params)
    if written != len(params):
        raise RuntimeError(f"guarded write of {len(params) - written} locked jobs did not apply")
    return committed


async def _apply_each_once(conn: Conn, pending: Pending, changes: Sequence[JobChange]) -> list[Committed | None]:
    params = sorted((_guarded_params(c) for c in changes), key=lambda row: row[0])  # rows locked in id order
    found = await conn.fetch(_APPLY_GUARDED, batch.encode(params))
    written = {row[0]: row for row in found}
    finals: list[tuple[JobChange, Job]] = []
    results: list[Committed | None] = [None] * len(changes)
    indexes: list[int] = []
    for index, change in enumerate(changes):
        row = written.get(change.job.id)
        if row is None:
            continue  # its guard no longer held
        job, (_, seq, requested, reason) = change.job, row
        if job.cancel_requested != requested or job.cancel_reason != reason or job.last_sequence != seq:
            job = evolve(job, cancel_requested=requested, cancel_reason=reason, last_sequence=seq)
        finals.append((change, job))
        indexes.append(index)
    for index, item in zip(indexes, write_details(pending, finals), strict=True):
        results[index] = item
    return results


def _guarded_params(change: JobChange) -> tuple[Any, ...]:
    job = change.job
    return (*_change_params(job, "", 0)[:12], change.reason.value in plans.WRITES_CANCEL_FLAGS, job.cancel_requested,
            job.cancel_reason, ",".join(s.value for s in change.guard), change.attempt, len(change.events))


# A guarded change of a job changed once in its batch: the guard (states, attempt) is checked on
# the row under its lock, the sequence advanced by the change's events, the cancel flags written
# only by the changes that set them; the row as written comes back (none: the guard failed).
_GUARDED_ROW = (*_CHANGE_ROW[:12], "bool", "bool", "text", "text", "int4", "int4")
_APPLY_GUARDED = f"""
UPDATE jobs AS j SET state = u.state, attempt = u.attempt, uncounted_attempts = u.uncounted,
    progress_pct = u.pct, progress_msg = u.msg, error = u.error, error_history = u.history, run_at = u.run_at,
    start_time = u.start_time, finish_time = u.finish_time, update_time = u.update_time, seq = j.seq + u.events,
    cancel_requested = CASE WHEN u.writes_cancel THEN u.cancel_requested ELSE j.cancel_requested END,
    cancel_reason = CASE WHEN u.writes_cancel THEN u.cancel_reason ELSE j.cancel_reason END,
    lease_owner = CASE WHEN u.state = 'RUNNING' THEN j.lease_owner END,
    lease_expires = CASE WHEN u.state = 'RUNNING' THEN j.lease_expires END
FROM {batch.rows_of(1, _GUARDED_ROW)}
    AS u(id, state, attempt, uncounted, pct, msg, error, history, run_at, start_time, finish_time, update_time,
         writes_cancel, cancel_requested, cancel_reason, guard, fence, events)
WHERE j.id = u.id AND j.state = ANY(string_to_array(u.guard, ',')) AND (u.fence IS NULL OR j.attempt = u.fence)
RETURNING j.id, j.seq, j.cancel_requested, j.cancel_reason
"""


async def update_job(conn: Conn, pending: Pending, job_id: str, build: ChangeBuilder,
                     lease_expired_before: float | None = None) -> tuple[Job, Committed | None]:
    found = await load_jobs(conn, [job_id], lock=True, pending=pending)
    if job_id not in found:
        raise JobNotFound(job_id)
    if lease_expired_before is not None and not await conn.fetchval(
            "SELECT lease_expires < $2 FROM jobs WHERE id = $1", job_id, lease_expired_before):
        return found[job_id], None
    change = build(found[job_id])
    if change is None:
        return found[job_id], None
    try:
        async with conn.transaction():  # a savepoint: the unique violation below must not end the batch
            (committed,) = await apply_changes(conn, pending, [change])
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "jobs_dedupe":
            raise
        raise InvalidTransition(job_id, found[job_id].state.value,
                                "requeue (another active job holds its dedupe_key)") from None
    if committed is None:  # cannot happen: the row has been locked since the read
        raise RuntimeError(f"guarded write of job {job_id} did not apply")
    return committed.job, committed


def _change_params(job: Job, old_state: str, old_attempt: int) -> tuple[Any, ...]:
    return (
        job.id, job.state.value, job.attempt, job.uncounted_attempts, float(job.progress.percent),
        job.progress.message, rows.error_to_json(job.error), rows.history_to_json(job.error_history),
        float(job.run_at), job.start_time, job.finish_time, float(job.update_time), job.last_sequence,
        job.cancel_requested, job.cancel_reason, old_state, old_attempt,
    )


# ---------------------------------------------------------------------- claims and leases


async def claim_jobs(conn: Conn, pending: Pending, params: ClaimParams) -> ClaimResult:
    promoted, next_due = await _promote_due(conn, pending, params.now)
    claimed, next_token = await _claim_ready(conn, pending, params) if params.limit > 0 else ([], None)
    if params.remote:
        more, remote_token = await _claim_remote(conn, pending, params)
        claimed += more
        next_token = plans.earliest(next_token, remote_token)
    return ClaimResult(promoted, claimed, next_due, next_token)


# The due jobs become QUEUED, and the earliest run_at of those still waiting, in one round trip
# (the outer query sees the table as before the update: the promoted rows are left out by id).
_PROMOTE = """
WITH promoted AS (
    UPDATE jobs SET state = 'QUEUED', seq = seq + 1, update_time = $1 WHERE id IN (
        SELECT id FROM jobs WHERE state IN ('SCHEDULED', 'RETRYING') AND run_at <= $1 ORDER BY run_at LIMIT $2
        FOR UPDATE SKIP LOCKED)
    RETURNING id)
SELECT (SELECT array_agg(id::text) FROM promoted),
       (SELECT min(run_at) FROM jobs WHERE state IN ('SCHEDULED', 'RETRYING')
            AND id <> ALL(ARRAY(SELECT id FROM promoted)))
"""


async def _promote_due(conn: Conn, pending: Pending, now: float) -> tuple[list[Committed], float | None]:
    row = await conn.fetchrow(_PROMOTE, now, PROMOTE_BATCH)
    ids, next_due = (row[0], row[1]) if row is not None else (None, None)
    if not ids:
        return [], next_due
    jobs = await load_jobs(conn, ids, pending=pending)
    changes = [become_due(jobs[job_id], now) for job_id in ids]
    return write_details(pending, [(c, c.job) for c in changes]), next_due  # loaded after the update


_PRIORITY_COLUMN, _RUN_AT = rows.JOB_COLUMNS.index("priority"), rows.JOB_COLUMNS.index("run_at")
_ORDER = "ORDER BY priority DESC, run_at, id"


def _claim_order(row: Any) -> tuple[int, float, str]:
    return -row[_PRIORITY_COLUMN], row[_RUN_AT], row[0]


_CLAIM_SET = (
    "UPDATE jobs SET state = 'RUNNING', attempt = attempt + 1, seq = seq + 2, start_time = $1, "
    "finish_time = NULL, update_time = $1, lease_owner = $2, lease_expires = $3 "
)
_CLAIM = f"{_CLAIM_SET} WHERE id = ANY($4::uuid[]) RETURNING {rows.JOB_RETURNING}, {_WITH_PHASES}"
# Without limited queues (the common case) candidates and claim are one round trip. It claims
# nothing while any queue is paused or limited (its settings are then read, and the limited claim
# below is made): so a deployment that uses no queue controls pays nothing for them.
_CLAIM_BEST = (
    f"WITH best AS (SELECT id FROM jobs WHERE state = 'QUEUED' AND kind <> ALL($5::text[]) "
    f"AND NOT EXISTS (SELECT 1 FROM queues WHERE {qrows.CONTROLS}) {_ORDER} LIMIT $4 FOR UPDATE SKIP LOCKED) "
    f"{_CLAIM_SET} FROM best WHERE jobs.id = best.id RETURNING {rows.JOB_RETURNING}, {_WITH_PHASES}"
)


async def _claim_ready(conn: Conn, pending: Pending, p: ClaimParams) -> tuple[list[Committed], float | None]:
    local = sorted(p.remote_kinds)
    if not p.queue_room:
        found = await conn.fetch(_CLAIM_BEST, p.now, p.owner, p.lease_expires, p.limit, local)
        if found:
            return await _claimed(conn, pending, p, found), None
    controls = await queues.controls(conn)  # nothing claimed: nothing ready, or some queue is limited
    if not (p.queue_room or controls):
        return [], None
    ids = await queues.claim_candidates(conn, p, controls, ClaimScope(exclude=tuple(local)))
    found = await conn.fetch(_CLAIM, p.now, p.owner, p.lease_expires, ids) if ids else []
    claimed = await _claimed(conn, pending, p, found)
    return claimed, await queues.spend(conn, p.now, controls, plans.started_per_queue(found))


async def _claim_remote(conn: Conn, pending: Pending, p: ClaimParams) -> tuple[list[Committed], float | None]:
    """Claim for remote workers, after this process's claim in the same transaction. Without queue
    controls, one query per kind; with them, each worker group's room in turn, through the same
    limits (the counts and buckets then include what the passes before started)."""
    claimed = await _claim_remote_free(conn, pending, p)
    if claimed:
        return claimed, None
    controls = await queues.controls(conn)  # nothing claimed: nothing ready, or some queue is limited
    if not controls:
        return [], None
    wake: float | None = None
    for group in p.remote:
        room = replace(p, limit=group.room, queue_room={}, global_limits={})
        ids = await queues.claim_candidates(conn, room, controls, ClaimScope(include=group.kinds, queues=group.queues))
        found = await conn.fetch(_CLAIM, p.now, p.owner, p.lease_expires, ids) if ids else []
        claimed += await _claimed(conn, pending, p, found)
        wake = plans.earliest(wake, await queues.spend(conn, p.now, controls, plans.started_per_queue(found)))
        controls = await queues.controls(conn)  # as this pass left them
    return claimed, wake


async def _claim_remote_free(conn: Conn, pending: Pending, p: ClaimParams) -> list[Committed]:
    """The best `room` QUEUED jobs of each group's kinds (and queues), at most the groups' total
    room in all (a job two groups could take counts once); none while any queue is paused or limited
    (as `_CLAIM_BEST`)."""
    found: dict[str, Any] = {}
    for group in p.remote:
        for kind in group.kinds:  # one query per kind: each reads jobs_ready_by_kind in claim order
            group_rows = await conn.fetch(
                f"SELECT id, priority, run_at FROM jobs WHERE state = 'QUEUED' AND kind = $1 "
                f"AND (cardinality($2::text[]) = 0 OR queue = ANY($2::text[])) "
                f"AND NOT EXISTS (SELECT 1 FROM queues WHERE {qrows.CONTROLS}) {_ORDER} LIMIT $3 "
                "FOR UPDATE SKIP LOCKED", kind, list(group.queues), group.room)
            found.update((row[0], row) for row in group_rows if row[0] not in found)
    best = sorted(found.values(), key=lambda row: (-row[1], row[2], row[0]))[: sum(g.room for g in p.remote)]
    if not best:
        return []
    claimed = await conn.fetch(_CLAIM, p.now, p.owner, p.lease_expires, [r[0] for r in best])
    return await _claimed(conn, pending, p, claimed)


async def _claimed(conn: Conn, pending: Pending, p: ClaimParams, found: list[Any]) -> list[Committed]:
    if not found:
        return []
    # In claim order (an UPDATE returns its rows in any order): the executor starts them in this order.
    found = sorted(found, key=_claim_order)
    ids = [row[0] for row in found]
    if pending.touches(ids):  # a job retried in this transaction: its phases are not written yet
        phases = await load_phases(conn, ids, pending)
    else:
        phases = {row[0]: [rows.phase_from_row(p) for p in row[-1]] for row in found}
    changes = []
    for row in found:
        # The row as updated (its last column: the phases) is the job as `claim` makes it (RUNNING,
        # attempt counted, sequence and times current), but for its phases, which the state machine starts.
        started_phases, started = start_attempt(tuple(phases.get(row[0], ())), p.now)
        job = rows.job_from_row(list(row)[:-1], started_phases)
        changes.append((claimed(job, started), job))
    return write_details(pending, changes)


async def renew_leases(conn: Conn, owner: str, job_ids: Sequence[str], expires: float) -> LeaseRenewal:
    found = await conn.fetch(
        "UPDATE jobs SET lease_expires = $1 WHERE state = 'RUNNING' AND lease_owner = $2 AND id = ANY($3::uuid[]) "
        "RETURNING id, cancel_requested, cancel_reason", expires, owner, list(job_ids))
    return LeaseRenewal(len(found), {row[0]: row[2] for row in found if row[1]})


# ---------------------------------------------------------------------- retention


async def mark_stale(conn: Conn, pending: Pending, finished_before: Mapping[JobState, float], now: float,
                     limit: int) -> list[Committed]:
    ids = await _stale_candidates(conn, finished_before, limit)
    jobs = await load_jobs(conn, ids, pending=pending)
    results = await apply_changes(conn, pending, [make_stale(jobs[i], now) for i in ids if i in jobs])
    return [c for c in results if c is not None]


async def _stale_candidates(conn: Conn, finished_before: Mapping[JobState, float], limit: int) -> list[str]:
    ids: list[str] = []
    for state, cutoff in sorted(finished_before.items()):
        if len(ids) >= limit:
            break
        found = await conn.fetch(
            "SELECT id FROM jobs WHERE state = $1 AND finish_time < $2 ORDER BY finish_time LIMIT $3 "
            "FOR UPDATE SKIP LOCKED", state.value, cutoff, limit - len(ids))
        ids.extend(row[0] for row in found)
    return ids


async def delete_stale(conn: Conn, stale_before: float, now: float, limit: int) -> list[Event]:
    found = await conn.fetch(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state = 'STALE' AND update_time < $1 "
        "ORDER BY update_time LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id, queue, kind, seq", stale_before, limit)
    if not found:
        return []
    ids = [row[0] for row in found]
    await conn.execute("DELETE FROM events WHERE job_id = ANY($1::uuid[])", ids)
    await conn.execute("DELETE FROM requests WHERE job_id = ANY($1::uuid[])", ids)
    await outbox.delete_for_jobs(conn, ids)
    return [Event(row[0], row[3] + 1, EventType.DELETED, now, row[1], row[2]) for row in found]


async def prune_requests(conn: Conn, now: float, limit: int) -> int:
    return count(await conn.execute(
        "DELETE FROM requests WHERE request_id IN (SELECT request_id FROM requests WHERE expires <= $1 LIMIT $2 "
        "FOR UPDATE SKIP LOCKED)", now, limit))
