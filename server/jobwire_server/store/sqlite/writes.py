"""SQL of every write (SQLite). Plain functions on a `sqlite3.Connection`, called on the writer
connection's thread inside the transaction `SqliteJobStore.write` opens: a whole batch of
operations is one hop from the event loop and one commit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from jobwire_server.domain.errors import InvalidTransition, JobNotFound
from jobwire_server.domain.models import Event, Job, NewJob, Phase, evolve
from jobwire_server.domain.queues import QueueSettings
from jobwire_server.domain.states import ACTIVE_STATES, EventType, JobState
from jobwire_server.domain.transitions import JobChange, become_due, claimed, make_stale, start_attempt
from jobwire_server.store import plans, rows
from jobwire_server.store.base import (
    ChangeBuilder,
    ClaimParams,
    ClaimResult,
    ClaimScope,
    Committed,
    InsertResult,
    LeaseRenewal,
)
from jobwire_server.store.sqlite import outbox, queues

Conn = sqlite3.Connection

PROMOTE_BATCH = 1000
_ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATES))

_INSERT_JOB = f"INSERT INTO jobs ({rows.JOB_SELECT}) VALUES ({', '.join('?' * len(rows.JOB_COLUMNS))})"
_INSERT_PHASE = f"INSERT INTO phases ({rows.PHASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_EVENT = "INSERT INTO events (job_id, seq, type, time, phase, detail) VALUES (?, ?, ?, ?, ?, ?)"
_UPDATE_PHASE = """UPDATE phases SET state = ?, progress_pct = ?, progress_msg = ?, result = ?, error = ?,
    start_time = ?, finish_time = ? WHERE job_id = ? AND idx = ?"""

# A guarded change: the row is written only if it is still in the state and attempt the change
# was computed from (`state = ? AND attempt = ?` below; the caller checked the guard set).
_APPLY_CHANGE = """
UPDATE jobs SET state = ?, attempt = ?, uncounted_attempts = ?, progress_pct = ?, progress_msg = ?, error = ?,
    error_history = ?, run_at = ?, start_time = ?, finish_time = ?, update_time = ?, seq = ?,
    cancel_requested = CASE WHEN ? THEN ? ELSE cancel_requested END,
    cancel_reason = CASE WHEN ? THEN ? ELSE cancel_reason END,
    lease_owner = CASE WHEN ? = 'RUNNING' THEN lease_owner END,
    lease_expires = CASE WHEN ? = 'RUNNING' THEN lease_expires END
WHERE id = ? AND state = ? AND attempt = ?
"""

_NEXT_DUE = "SELECT min(run_at) FROM jobs WHERE state IN ('SCHEDULED', 'RETRYING')"


def scalar(found: Iterable[Any]) -> float | None:
    first = next(iter(found), None)
    return None if first is None or first[0] is None else float(first[0])


def load_jobs(conn: Conn, ids: Sequence[str]) -> dict[str, Job]:
    """The jobs with these ids, with their phases (missing ids are left out)."""
    if not ids:
        return {}
    if len(ids) == 1:  # the common single-job read: plain equality uses the primary key directly
        job_rows = conn.execute(f"SELECT {rows.JOB_SELECT} FROM jobs WHERE id = ?", (ids[0],)).fetchall()
    else:
        job_rows = conn.execute(f"SELECT {rows.JOB_SELECT} FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
                                (json.dumps(list(ids)),)).fetchall()
    phases = load_phases(conn, ids)
    return {row[0]: rows.job_from_row(row, phases.get(row[0], ())) for row in job_rows}


def load_phases(conn: Conn, ids: Sequence[str]) -> dict[str, list[Phase]]:
    if len(ids) == 1:
        phase_rows = conn.execute(
            f"SELECT {rows.PHASE_COLUMNS} FROM phases WHERE job_id = ? ORDER BY idx", (ids[0],))
    else:
        phase_rows = conn.execute(
            f"SELECT {rows.PHASE_COLUMNS} FROM phases WHERE job_id IN (SELECT value FROM json_each(?)) "
            "ORDER BY job_id, idx", (json.dumps(list(ids)),))
    phases: dict[str, list[Phase]] = {}
    for row in phase_rows:
        phases.setdefault(row[0], []).append(rows.phase_from_row(row))
    return phases


def _write_details(conn: Conn, written: Iterable[tuple[JobChange, Job]]) -> list[Committed]:
    """Phase rows and numbered event rows of changes whose job row was written. Each change
    comes with the job as committed: its `last_sequence` numbers the change's events
    (last_sequence-n+1 … last_sequence), and every event carries it."""
    phase_params: list[tuple[Any, ...]] = []
    event_params: list[tuple[Any, ...]] = []
    committed: list[Committed] = []
    hooked: list[Event] = []  # events of jobs with a webhook: only those can need an outbox row
    type_values = rows.EVENT_TYPE_VALUES
    for change, job in written:
        job_id, time, phases = job.id, job.update_time, job.phases
        for i in change.changed_phases:
            phase_params.append(rows.phase_params(job_id, i, phases[i]))
        sequence = job.last_sequence - len(change.events)
        events = []
        for e in change.events:
            sequence += 1
            events.append(Event(job_id, sequence, e.type, time, job.queue, job.kind, e.phase, e.detail, job))
            event_params.append((job_id, sequence, type_values[e.type], time, e.phase, e.detail))
        committed.append(Committed(job, tuple(events)))
        if job.webhook is not None:
            hooked.extend(events)
    if phase_params:
        conn.executemany(_UPDATE_PHASE, phase_params)
    if event_params:
        conn.executemany(INSERT_EVENT, event_params)
    if hooked:
        outbox.add_deliveries(conn, hooked)
    return committed


# ---------------------------------------------------------------------- enqueue


def insert_jobs(conn: Conn, new_jobs: Sequence[NewJob], now: float, ttl: float) -> list[InsertResult]:
    plan = plans.plan_inserts(new_jobs, _known_requests(conn, new_jobs, now), _active_dedupe_keys(conn, new_jobs),
                              now, ttl, queues.defaults(conn, plans.queues_needing_defaults(new_jobs)))
    _insert_rows(conn, plan.created, plan.request_rows)
    results = plans.insert_results(plan, load_jobs(conn, plan.existing_ids), now)
    if any(job.webhook is not None for job in plan.created):
        outbox.add_deliveries(conn, (e for r in results for e in r.events))
    return results


def _known_requests(conn: Conn, new_jobs: Sequence[NewJob], now: float) -> dict[str, tuple[str, str]]:
    request_ids = [j.request_id for j in new_jobs if j.request_id]
    if not request_ids:
        return {}
    found = conn.execute(
        "SELECT request_id, fingerprint, job_id FROM requests "
        "WHERE request_id IN (SELECT value FROM json_each(?)) AND expires > ?", (json.dumps(request_ids), now))
    return {row[0]: (row[1], row[2]) for row in found}


def _active_dedupe_keys(conn: Conn, new_jobs: Sequence[NewJob]) -> dict[tuple[str, str], str]:
    keys = [[j.queue, j.dedupe_key] for j in new_jobs if j.dedupe_key]
    if not keys:
        return {}
    found = conn.execute(
        f"SELECT queue, dedupe_key, id FROM jobs WHERE dedupe_key IS NOT NULL AND state IN ({_ACTIVE_SQL}) "
        "AND (queue, dedupe_key) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?))", (json.dumps(keys),))
    return {(row[0], row[1]): row[2] for row in found}


def _insert_rows(conn: Conn, jobs: Sequence[Job], request_rows: Sequence[tuple[str, str, str, float]]) -> None:
    if jobs:
        conn.executemany(_INSERT_JOB, [_job_params(job) for job in jobs])
        conn.executemany(_INSERT_PHASE, [
            (job.id, i, p.name, p.state.value, 0.0, "", b"", None, None, None)
            for job in jobs for i, p in enumerate(job.phases)])
        conn.executemany(INSERT_EVENT, [
            (job.id, 1, EventType.ENQUEUED.value, job.create_time, "", "") for job in jobs])
    if request_rows:
        conn.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)", request_rows)


def _job_params(job: Job) -> tuple[Any, ...]:
    return (
        job.id, job.queue, job.kind, job.payload, job.priority, job.state.value, job.attempt,
        job.uncounted_attempts, job.max_attempts, job.timeout, job.progress.percent, job.progress.message,
        rows.error_to_json(job.error), rows.history_to_json(job.error_history), job.dedupe_key or None,
        json.dumps(dict(job.labels)), rows.webhook_to_json(job.webhook), int(job.cancel_requested),
        job.cancel_reason, job.trace_parent, job.last_sequence, job.create_time, job.update_time, job.run_at,
        job.start_time, job.finish_time, job.concurrency_key or None,
    )


# ---------------------------------------------------------------------- guarded changes


def apply_changes(conn: Conn, changes: Sequence[JobChange]) -> list[Committed | None]:
    """Check each change's guard against the row as it is now (the transaction holds the write
    lock, so it cannot move), then write the passing ones with `WHERE state = ? AND attempt = ?`.
    Changes to one job apply in order, each seeing the one before."""
    if not changes:
        return []
    ids = list({c.job.id for c in changes})
    found = conn.execute(
        "SELECT id, state, attempt, seq, cancel_requested, cancel_reason FROM jobs "
        "WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),))
    current: dict[str, list[Any]] = {row[0]: list(row[1:]) for row in found}
    results: list[Committed | None] = [None] * len(changes)
    params: list[tuple[Any, ...]] = []
    written: list[tuple[int, JobChange, int]] = []
    for index, change in enumerate(changes):
        row = current.get(change.job.id)
        if row is None or not plans.passes(change, row[0], row[1]):
            continue
        state, attempt, seq = row[0], row[1], row[2] + len(change.events)
        params.append(_change_params(change, seq, state, attempt))
        row[0], row[1], row[2] = change.job.state.value, change.job.attempt, seq
        if change.reason in plans.WRITES_CANCEL_FLAGS:
            row[3], row[4] = int(change.job.cancel_requested), change.job.cancel_reason
        written.append((index, change, seq))
    if params:
        conn.executemany(_APPLY_CHANGE, params)
    finals = []
    for _, change, seq in written:
        requested, reason = bool(current[change.job.id][3]), current[change.job.id][4]
        job = change.job
        if job.cancel_requested != requested or job.cancel_reason != reason or job.last_sequence != seq:
            job = evolve(job, cancel_requested=requested, cancel_reason=reason, last_sequence=seq)
        finals.append((change, job))
    committed = _write_details(conn, finals)
    for (index, _, _), item in zip(written, committed, strict=True):
        results[index] = item
    return results


def apply_locked(conn: Conn, changes: Sequence[tuple[Job, JobChange]]) -> list[Committed]:
    """Write changes to jobs this transaction has read (it holds the write lock since, so they
    cannot have moved), each given with the job as read: the guards are checked on those, with no
    second read. The UPDATE still repeats each guard (state and attempt as read); a row it did not
    write fails the whole transaction, as it cannot happen."""
    finals = [(change, plans.as_written(before, change)) for before, change in changes]
    params = [_change_params(change, job.last_sequence, before.state.value, before.attempt)
              for (before, change), (_, job) in zip(changes, finals, strict=True)]
    written = conn.executemany(_APPLY_CHANGE, params).rowcount
    if written != len(params):
        raise RuntimeError(f"guarded write of {len(params) - written} jobs read in this transaction did not apply")
    return _write_details(conn, finals)


def update_job(conn: Conn, job_id: str, build: ChangeBuilder,
               lease_expired_before: float | None = None) -> tuple[Job, Committed | None]:
    found = load_jobs(conn, [job_id])
    if job_id not in found:
        raise JobNotFound(job_id)
    if lease_expired_before is not None and not _lease_expired(conn, job_id, lease_expired_before):
        return found[job_id], None
    change = build(found[job_id])
    if change is None:
        return found[job_id], None
    try:
        (committed,) = apply_changes(conn, [change])
    except sqlite3.IntegrityError as exc:
        if "jobs.queue, jobs.dedupe_key" not in str(exc):
            raise
        raise InvalidTransition(job_id, found[job_id].state.value,
                                "requeue (another active job holds its dedupe_key)") from None
    if committed is None:  # cannot happen: the transaction holds the write lock since the read
        raise RuntimeError(f"guarded write of job {job_id} did not apply")
    return committed.job, committed


def _lease_expired(conn: Conn, job_id: str, before: float) -> bool:
    found = conn.execute("SELECT 1 FROM jobs WHERE id = ? AND lease_expires < ?", (job_id, before))
    return found.fetchone() is not None


def _change_params(change: JobChange, seq: int, state: str, attempt: int) -> tuple[Any, ...]:
    job = change.job
    writes_cancel = change.reason in plans.WRITES_CANCEL_FLAGS
    new_state = rows.STATE_VALUES[job.state]
    return (
        new_state, job.attempt, job.uncounted_attempts, float(job.progress.percent), job.progress.message,
        None if job.error is None else rows.error_to_json(job.error), rows.history_to_json(job.error_history),
        float(job.run_at), job.start_time, job.finish_time, float(job.update_time), seq, writes_cancel,
        int(job.cancel_requested), writes_cancel, job.cancel_reason, new_state, new_state, job.id, state, attempt,
    )


# ---------------------------------------------------------------------- claims and leases


def claim_jobs(conn: Conn, params: ClaimParams) -> ClaimResult:
    promoted = _promote_due(conn, params.now)
    controls = queues.controls(conn)
    local = ClaimScope(exclude=tuple(sorted(params.remote_kinds)))
    claimed, next_token = _claim_ready(conn, params, controls, local) if params.limit > 0 else ([], None)
    if params.remote:
        more, remote_token = _claim_remote(conn, params, bool(controls))
        claimed += more
        next_token = plans.earliest(next_token, remote_token)
    return ClaimResult(promoted, claimed, scalar(conn.execute(_NEXT_DUE)), next_token)


def _promote_due(conn: Conn, now: float) -> list[Committed]:
    found = conn.execute(
        "UPDATE jobs SET state = 'QUEUED', seq = seq + 1, update_time = ? WHERE id IN ("
        "  SELECT id FROM jobs WHERE state IN ('SCHEDULED', 'RETRYING') AND run_at <= ? ORDER BY run_at LIMIT ?)"
        " RETURNING id, seq", (now, now, PROMOTE_BATCH)).fetchall()
    if not found:
        return []
    jobs = load_jobs(conn, [row[0] for row in found])
    changes = [become_due(jobs[job_id], now) for job_id, _ in found]
    return _write_details(conn, [(c, c.job) for c in changes])  # loaded after the update


_PRIORITY_COLUMN, _RUN_AT = rows.JOB_COLUMNS.index("priority"), rows.JOB_COLUMNS.index("run_at")
_ORDER = "ORDER BY priority DESC, run_at, id"


def _claim_order(row: Any) -> tuple[int, float, str]:
    return -row[_PRIORITY_COLUMN], row[_RUN_AT], row[0]


_CLAIM_SET = ("UPDATE jobs SET state = 'RUNNING', attempt = attempt + 1, seq = seq + 2, start_time = ?, "
              "finish_time = NULL, update_time = ?, lease_owner = ?, lease_expires = ? ")


def _claim_ready(conn: Conn, p: ClaimParams, controls: dict[str, QueueSettings],
                 scope: ClaimScope) -> tuple[list[Committed], float | None]:
    if not (controls or p.queue_room):  # the common case: one statement
        where, args = queues.scope_sql(scope)
        found = conn.execute(
            f"{_CLAIM_SET} WHERE id IN (SELECT id FROM jobs WHERE state = 'QUEUED'{where} {_ORDER} LIMIT ?) "
            f"RETURNING {rows.JOB_SELECT}", (p.now, p.now, p.owner, p.lease_expires, *args, p.limit)).fetchall()
        return _claimed(conn, p, found), None
    found = _claim_ids(conn, p, [row[0] for row in queues.claim_candidates(conn, p, controls, scope)])
    return _claimed(conn, p, found), queues.spend(conn, p.now, controls, plans.started_per_queue(found))


def _claim_remote(conn: Conn, p: ClaimParams, controlled: bool) -> tuple[list[Committed], float | None]:
    """Claim for remote workers, after this process's claim in the same transaction. Without queue
    controls, one query; with them, each worker group's room in turn, through the same limits (the
    counts and buckets then include what the passes before started)."""
    if not controlled:
        sql, args = _remote_candidate_sql(p)
        ids = [row[0] for row in conn.execute(sql, args)]
        return _claimed(conn, p, _claim_ids(conn, p, ids)), None
    claimed: list[Committed] = []
    wake: float | None = None
    for group in p.remote:
        controls = queues.controls(conn)  # as the passes before left them
        room = replace(p, limit=group.room, queue_room={}, global_limits={})
        scope = ClaimScope(include=group.kinds, queues=group.queues)
        found = _claim_ids(conn, p, [row[0] for row in queues.claim_candidates(conn, room, controls, scope)])
        claimed += _claimed(conn, p, found)
        wake = plans.earliest(wake, queues.spend(conn, p.now, controls, plans.started_per_queue(found)))
    return claimed, wake


def _claim_ids(conn: Conn, p: ClaimParams, ids: list[str]) -> list[Any]:
    if not ids:
        return []
    return conn.execute(f"{_CLAIM_SET} WHERE id IN (SELECT value FROM json_each(?)) RETURNING {rows.JOB_SELECT}",
                        (p.now, p.now, p.owner, p.lease_expires, json.dumps(ids))).fetchall()


def _claimed(conn: Conn, p: ClaimParams, found: list[Any]) -> list[Committed]:
    if not found:
        return []
    # In claim order (an UPDATE returns its rows in any order): the executor starts them in this order.
    found = sorted(found, key=_claim_order)
    phases = load_phases(conn, [row[0] for row in found])
    changes = []
    for row in found:
        # The row as updated is the job as `claim` makes it (RUNNING, attempt counted, sequence and
        # times current), but for its phases, which the state machine starts.
        started_phases, started = start_attempt(tuple(phases.get(row[0], ())), p.now)
        job = rows.job_from_row(row, started_phases)
        changes.append((claimed(job, started), job))
    return _write_details(conn, changes)


def _remote_candidate_sql(p: ClaimParams) -> tuple[str, list[Any]]:
    """The ids to claim for remote workers: the best `room` QUEUED jobs of each group's kinds (and
    queues), at most the groups' total room in all (a job two groups could take counts once). One
    subquery per kind, so each reads the `jobs_ready_by_kind` index in claim order and stops at its
    room, however many jobs wait."""
    parts: list[str] = []
    args: list[Any] = []
    for group in p.remote:
        in_queues = " AND queue IN (SELECT value FROM json_each(?))" if group.queues else ""
        for kind in group.kinds:
            parts.append(f"SELECT * FROM (SELECT id, priority, run_at FROM jobs WHERE state = 'QUEUED' "
                         f"AND kind = ?{in_queues} {_ORDER} LIMIT ?)")
            args.extend((kind, *((json.dumps(group.queues),) if group.queues else ()), group.room))
    union = " UNION ".join(parts)
    return f"SELECT id FROM ({union}) {_ORDER} LIMIT ?", [*args, sum(g.room for g in p.remote)]


def renew_leases(conn: Conn, owner: str, job_ids: Sequence[str], expires: float) -> LeaseRenewal:
    found = conn.execute(
        "UPDATE jobs SET lease_expires = ? WHERE state = 'RUNNING' AND lease_owner = ? "
        "AND id IN (SELECT value FROM json_each(?)) RETURNING id, cancel_requested, cancel_reason",
        (expires, owner, json.dumps(list(job_ids)))).fetchall()
    return LeaseRenewal(len(found), {row[0]: row[2] for row in found if row[1]})


# ---------------------------------------------------------------------- retention


def mark_stale(conn: Conn, finished_before: Mapping[JobState, float], now: float, limit: int) -> list[Committed]:
    ids = _stale_candidates(conn, finished_before, limit)
    jobs = load_jobs(conn, ids)
    results = apply_changes(conn, [make_stale(jobs[i], now) for i in ids if i in jobs])
    return [c for c in results if c is not None]


def _stale_candidates(conn: Conn, finished_before: Mapping[JobState, float], limit: int) -> list[str]:
    ids: list[str] = []
    for state, cutoff in sorted(finished_before.items()):
        if len(ids) >= limit:
            break
        found = conn.execute(
            "SELECT id FROM jobs WHERE state = ? AND finish_time < ? ORDER BY finish_time LIMIT ?",
            (state.value, cutoff, limit - len(ids)))
        ids.extend(row[0] for row in found)
    return ids


def delete_stale(conn: Conn, stale_before: float, now: float, limit: int) -> list[Event]:
    found = conn.execute(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state = 'STALE' AND update_time < ? "
        "ORDER BY update_time LIMIT ?) RETURNING id, queue, kind, seq", (stale_before, limit)).fetchall()
    if not found:
        return []
    key = json.dumps([row[0] for row in found])
    conn.execute("DELETE FROM events WHERE job_id IN (SELECT value FROM json_each(?))", (key,))
    conn.execute("DELETE FROM requests WHERE job_id IN (SELECT value FROM json_each(?))", (key,))
    outbox.delete_for_jobs(conn, key)
    return [Event(row[0], row[3] + 1, EventType.DELETED, now, row[1], row[2]) for row in found]


def prune_requests(conn: Conn, now: float, limit: int) -> int:
    cursor = conn.execute(
        "DELETE FROM requests WHERE request_id IN (SELECT request_id FROM requests WHERE expires <= ? LIMIT ?)",
        (now, limit))
    return cursor.rowcount
