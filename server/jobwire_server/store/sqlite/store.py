"""The embedded SQLite store (aiosqlite).

One writer connection: every write transaction starts with ``BEGIN IMMEDIATE`` and runs under an
asyncio lock, shielded from the caller's cancellation so a transaction is never left half done.
A separate reader connection serves queries (WAL lets it read while the writer writes).
Batches use set-based statements (``json_each``) and ``executemany``, so a transaction costs a few
thread hops however many jobs it touches.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from jobwire_server.domain.deliveries import AttemptOutcome, Delivery, DeliveryInfo
from jobwire_server.domain.errors import InvalidTransition, JobNotFound, RequestIdReused, SchemaTooNew
from jobwire_server.domain.ids import new_job_id
from jobwire_server.domain.models import Event, Job, NewJob, PendingEvent, Phase, QueueStats, evolve
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.states import ACTIVE_STATES, EventType, JobState
from jobwire_server.domain.transitions import JobChange, become_due, claim, make_stale
from jobwire_server.store.base import ChangeBuilder, ClaimParams, Committed, Cycle, InsertResult, RetentionCounts
from jobwire_server.store.sqlite import outbox, rows
from jobwire_server.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION

T = TypeVar("T")
Conn = aiosqlite.Connection

PROMOTE_BATCH = 1000
_ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATES))

_INSERT_JOB = f"INSERT INTO jobs ({rows.JOB_SELECT}) VALUES ({', '.join('?' * len(rows.JOB_COLUMNS))})"
_INSERT_PHASE = f"INSERT INTO phases ({rows.PHASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_EVENT = "INSERT INTO events (job_id, seq, type, time, phase, detail) VALUES (?, ?, ?, ?, ?, ?)"
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

_WRITES_CANCEL_FLAGS = frozenset({"cancel requested by user", "cancelled by user", "retried by user"})


class StoreError(Exception):
    """The database cannot be opened or used; the message names the file."""


class SqliteJobStore:
    """`JobStore` on one SQLite file."""

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._writer: Conn | None = None
        self._reader: Conn | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self.path != ":memory:" and not Path(self.path).parent.is_dir():
            raise StoreError(f"cannot open database {self.path}: directory {Path(self.path).parent} does not exist")
        try:
            self._writer = await self._connect()
            await self._migrate(self._writer)
            self._reader = await self._connect()
            await self._reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        except BaseException:
            await self.close()  # no connection thread may outlive a refused open
            raise

    async def _connect(self) -> Conn:
        conn = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in ("journal_mode = WAL", f"synchronous = {self.synchronous}", "foreign_keys = ON",
                           "busy_timeout = 5000"):
                await conn.execute(f"PRAGMA {pragma}")
        except BaseException:
            await conn.close()  # its worker thread would otherwise keep the process alive
            raise
        return conn

    async def _migrate(self, conn: Conn) -> None:
        version = int(_scalar(await conn.execute_fetchall("PRAGMA user_version")) or 0)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database {self.path} has schema version {version}, newer than this jobwire knows "
                f"({SCHEMA_VERSION}); upgrade jobwire or use another file")
        for number in range(version, SCHEMA_VERSION):
            # One script per migration, schema change and version bump in one transaction.
            script = f"BEGIN IMMEDIATE;\n{MIGRATIONS[number]}\nPRAGMA user_version = {number + 1};\nCOMMIT;"
            try:
                await conn.executescript(script)
            except BaseException:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
                # close() returns as the worker thread is told to stop; wait for it to be gone so
                # a stopped store leaves no thread behind (aiosqlite keeps it as `_thread`).
                thread = getattr(conn, "_thread", None)
                if thread is not None:
                    thread.join(5.0)  # it is already stopping: a wait of microseconds
        self._reader = self._writer = None

    # ------------------------------------------------------------------ plumbing

    async def _transaction(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `body` in one BEGIN IMMEDIATE transaction. Shielded: a caller that is cancelled
        (a client hanging up) does not abort a transaction half way; it commits or rolls back."""
        return await asyncio.shield(self._locked_transaction(body))

    async def _locked_transaction(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        conn = self._writer
        if conn is None:
            raise StoreError("store is closed")
        async with self._lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                result = await body(conn)
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
            return result

    @property
    def _read(self) -> Conn:
        if self._reader is None:
            raise StoreError("store is closed")
        return self._reader

    @staticmethod
    async def _load_jobs(conn: Conn, ids: Sequence[str]) -> dict[str, Job]:
        if not ids:
            return {}
        key = json.dumps(list(ids))
        job_rows = await conn.execute_fetchall(
            f"SELECT {rows.JOB_SELECT} FROM jobs WHERE id IN (SELECT value FROM json_each(?))", (key,))
        phase_rows = await conn.execute_fetchall(
            f"SELECT {rows.PHASE_COLUMNS} FROM phases WHERE job_id IN (SELECT value FROM json_each(?)) "
            "ORDER BY job_id, idx", (key,))
        phases: dict[str, list[Phase]] = {}
        for row in phase_rows:
            phases.setdefault(row[0], []).append(rows.phase_from_row(row))
        return {row[0]: rows.job_from_row(row, phases.get(row[0], ())) for row in job_rows}

    @staticmethod
    async def _write_details(conn: Conn, written: Iterable[tuple[JobChange, Job]]) -> list[Committed]:
        """Phase rows and numbered event rows of changes whose job row was written. Each change
        comes with the job as committed: its `last_sequence` numbers the change's events
        (last_sequence-n+1 … last_sequence), and every event carries it."""
        phase_params: list[tuple[Any, ...]] = []
        event_params: list[tuple[Any, ...]] = []
        committed: list[Committed] = []
        for change, job in written:
            phase_params.extend(rows.phase_params(job.id, i, job.phases[i]) for i in change.changed_phases)
            first = job.last_sequence - len(change.events) + 1
            events = tuple(
                Event(job.id, first + n, e.type, job.update_time, job.queue, job.kind, e.phase, e.detail, job)
                for n, e in enumerate(change.events))
            event_params.extend((job.id, e.sequence, e.type.value, e.time, e.phase, e.detail) for e in events)
            committed.append(Committed(job, events))
        if phase_params:
            await conn.executemany(_UPDATE_PHASE, phase_params)
        if event_params:
            await conn.executemany(_INSERT_EVENT, event_params)
            await outbox.add_deliveries(conn, (e for c in committed for e in c.events))
        return committed

    # ------------------------------------------------------------------ enqueue

    async def insert_jobs(self, jobs: Sequence[NewJob], now: float, request_ttl: float) -> list[InsertResult]:
        return await self._transaction(lambda conn: self._insert(conn, jobs, now, request_ttl))

    async def _insert(self, conn: Conn, new_jobs: Sequence[NewJob], now: float, ttl: float) -> list[InsertResult]:
        known_requests = await self._known_requests(conn, new_jobs, now)
        active = await self._active_dedupe_keys(conn, new_jobs)
        created: list[Job] = []
        outcome: list[tuple[str, bool, bool]] = []  # (job id, deduplicated, created)
        request_rows: list[tuple[str, str, str, float]] = []
        for new in new_jobs:
            if new.request_id in known_requests:
                fingerprint, job_id = known_requests[new.request_id]
                if fingerprint != new.fingerprint:
                    raise RequestIdReused(new.request_id)
                outcome.append((job_id, False, False))
                continue
            if new.dedupe_key and (new.queue, new.dedupe_key) in active:
                job_id = active[(new.queue, new.dedupe_key)]
                outcome.append((job_id, True, False))
            else:
                job = _job_from_new(new, now)
                created.append(job)
                job_id = job.id
                outcome.append((job_id, False, True))
                if new.dedupe_key:
                    active[(new.queue, new.dedupe_key)] = job_id
            if new.request_id:
                known_requests[new.request_id] = (new.fingerprint, job_id)
                request_rows.append((new.request_id, new.fingerprint, job_id, now + ttl))
        await self._insert_rows(conn, created, request_rows)
        existing = await self._load_jobs(conn, [job_id for job_id, _, made in outcome if not made])
        fresh = {job.id: job for job in created}
        results = []
        for job_id, deduplicated, made in outcome:
            if made:
                job = fresh[job_id]
                event = Event(job.id, 1, EventType.ENQUEUED, now, job.queue, job.kind, job=job)
                results.append(InsertResult(job, deduplicated=False, created=True, events=(event,)))
            else:
                results.append(InsertResult(existing[job_id], deduplicated=deduplicated, created=False))
        await outbox.add_deliveries(conn, (e for r in results for e in r.events))
        return results

    @staticmethod
    async def _known_requests(conn: Conn, new_jobs: Sequence[NewJob], now: float) -> dict[str, tuple[str, str]]:
        request_ids = [j.request_id for j in new_jobs if j.request_id]
        if not request_ids:
            return {}
        found = await conn.execute_fetchall(
            "SELECT request_id, fingerprint, job_id FROM requests "
            "WHERE request_id IN (SELECT value FROM json_each(?)) AND expires > ?", (json.dumps(request_ids), now))
        return {row[0]: (row[1], row[2]) for row in found}

    @staticmethod
    async def _active_dedupe_keys(conn: Conn, new_jobs: Sequence[NewJob]) -> dict[tuple[str, str], str]:
        keys = [[j.queue, j.dedupe_key] for j in new_jobs if j.dedupe_key]
        if not keys:
            return {}
        found = await conn.execute_fetchall(
            f"SELECT queue, dedupe_key, id FROM jobs WHERE dedupe_key IS NOT NULL AND state IN ({_ACTIVE_SQL}) "
            "AND (queue, dedupe_key) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?))", (json.dumps(keys),))
        return {(row[0], row[1]): row[2] for row in found}

    @staticmethod
    async def _insert_rows(
        conn: Conn, jobs: Sequence[Job], request_rows: Sequence[tuple[str, str, str, float]]
    ) -> None:
        if jobs:
            await conn.executemany(_INSERT_JOB, [_job_params(job) for job in jobs])
            await conn.executemany(_INSERT_PHASE, [
                (job.id, i, p.name, p.state.value, 0.0, "", b"", None, None, None)
                for job in jobs for i, p in enumerate(job.phases)])
            await conn.executemany(_INSERT_EVENT, [
                (job.id, 1, EventType.ENQUEUED.value, job.create_time, "", "") for job in jobs])
        if request_rows:
            await conn.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)", request_rows)

    # ------------------------------------------------------------------ reads

    async def get_job(self, job_id: str) -> Job:
        found = await self._load_jobs(self._read, [job_id])
        if job_id not in found:
            raise JobNotFound(job_id)
        return found[job_id]

    async def list_jobs(self, query: JobQuery) -> tuple[list[Job], str | None]:
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("queue", query.queue), ("kind", query.kind)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if query.states:
            where.append("state IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(sorted(s.value for s in query.states)))
        for key, value in sorted(query.labels.items()):
            where.append("EXISTS (SELECT 1 FROM json_each(jobs.labels) AS l WHERE l.key = ? AND l.value = ?)")
            params.extend((key, value))
        if query.created_after is not None:
            where.append("create_time >= ?")
            params.append(query.created_after)
        if query.created_before is not None:
            where.append("create_time < ?")
            params.append(query.created_before)
        if query.after_id:
            where.append("id < ?")
            params.append(query.after_id)
        id_rows = await self._read.execute_fetchall(
            f"SELECT id FROM jobs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?", (*params, query.page_size + 1))
        ids = [row[0] for row in id_rows]
        more = len(ids) > query.page_size
        ids = ids[: query.page_size]
        found = await self._load_jobs(self._read, ids)
        page = [found[i] for i in ids if i in found]
        return page, (ids[-1] if more and ids else None)

    async def events_after(self, job_id: str, sequence: int, limit: int) -> list[Event]:
        found = await self._read.execute_fetchall(
            "SELECT job_id, seq, type, time, phase, detail FROM events WHERE job_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?", (job_id, sequence, limit))
        job = await self.get_job(job_id)  # read after the events, so it is never older than them
        return [rows.event_from_row(row, job.queue, job.kind, job) for row in found]

    async def queue_stats(self, queue: str, now: float) -> list[QueueStats]:
        where, params = ("WHERE queue = ?", (queue,)) if queue else ("", ())
        counts = await self._read.execute_fetchall(
            f"SELECT queue, state, count(*) FROM jobs {where} GROUP BY queue, state", params)
        oldest = await self._read.execute_fetchall(
            f"SELECT queue, min(run_at) FROM jobs {where + (' AND' if where else 'WHERE')} state = 'QUEUED' "
            "GROUP BY queue", params)
        by_queue: dict[str, dict[JobState, int]] = {queue: {}} if queue else {}
        for name, state, count in counts:
            by_queue.setdefault(name, {})[JobState(state)] = count
        oldest_at = {name: at for name, at in oldest}
        return [QueueStats(name, by_queue[name], max(0.0, now - oldest_at[name]) if name in oldest_at else 0.0)
                for name in sorted(by_queue)]

    async def next_wakeup(self) -> float | None:
        found = await self._read.execute_fetchall(
            "SELECT min(run_at) FROM jobs WHERE state IN ('SCHEDULED', 'RETRYING')")
        return _scalar(found)

    async def next_lease_expiry(self) -> float | None:
        found = await self._read.execute_fetchall("SELECT min(lease_expires) FROM jobs WHERE state = 'RUNNING'")
        return _scalar(found)

    async def expired_leases(self, now: float, limit: int) -> list[Job]:
        found = await self._read.execute_fetchall(
            "SELECT id FROM jobs WHERE state = 'RUNNING' AND lease_expires < ? ORDER BY lease_expires LIMIT ?",
            (now, limit))
        jobs = await self._load_jobs(self._read, [row[0] for row in found])
        return list(jobs.values())

    # ------------------------------------------------------------------ dispatcher

    async def claim_jobs(self, params: ClaimParams) -> tuple[list[Committed], list[Committed]]:
        cycle = await self.commit_cycle((), params)
        return cycle.promoted, cycle.claimed

    async def commit_cycle(self, changes: Sequence[JobChange], claim: ClaimParams | None) -> Cycle:
        async def body(conn: Conn) -> Cycle:
            results = await self._apply(conn, changes) if changes else []
            if claim is None:
                return Cycle(results, [], [], None)
            promoted = await self._promote_due(conn, claim.now)
            claimed = await self._claim_ready(conn, claim) if claim.limit > 0 else []
            next_due = _scalar(await conn.execute_fetchall(
                "SELECT min(run_at) FROM jobs WHERE state IN ('SCHEDULED', 'RETRYING')"))
            return Cycle(results, promoted, claimed, next_due)

        return await self._transaction(body)

    async def _promote_due(self, conn: Conn, now: float) -> list[Committed]:
        found = await conn.execute_fetchall(
            "UPDATE jobs SET state = 'QUEUED', seq = seq + 1, update_time = ? WHERE id IN ("
            "  SELECT id FROM jobs WHERE state IN ('SCHEDULED', 'RETRYING') AND run_at <= ? ORDER BY run_at LIMIT ?)"
            " RETURNING id, seq", (now, now, PROMOTE_BATCH))
        if not found:
            return []
        jobs = await self._load_jobs(conn, [row[0] for row in found])
        changes = [become_due(jobs[job_id], now) for job_id, _ in found]
        return await self._write_details(conn, [(c, c.job) for c in changes])  # loaded after the update

    async def _claim_ready(self, conn: Conn, p: ClaimParams) -> list[Committed]:
        candidates, args = _candidate_sql(p)
        found = await conn.execute_fetchall(
            "UPDATE jobs SET state = 'RUNNING', attempt = attempt + 1, seq = seq + 2, start_time = ?, "
            "finish_time = NULL, update_time = ?, lease_owner = ?, lease_expires = ? "
            f"WHERE id IN ({candidates}) RETURNING id, seq",
            (p.now, p.now, p.owner, p.lease_expires, *args))
        if not found:
            return []
        jobs = await self._load_jobs(conn, [row[0] for row in found])
        changes = []
        for job_id, _ in found:
            after = jobs[job_id]  # loaded after the claim UPDATE: its attempt and sequence are current
            change = claim(evolve(after, state=JobState.QUEUED, attempt=after.attempt - 1), p.now, p.lease_expires)
            changes.append((change, change.job))
        return await self._write_details(conn, changes)

    async def renew_leases(self, owner: str, job_ids: Sequence[str], expires: float) -> int:
        async def body(conn: Conn) -> int:
            cursor = await conn.execute(
                "UPDATE jobs SET lease_expires = ? WHERE state = 'RUNNING' AND lease_owner = ? "
                "AND id IN (SELECT value FROM json_each(?))", (expires, owner, json.dumps(list(job_ids))))
            return cursor.rowcount

        return await self._transaction(body)

    # ------------------------------------------------------------------ guarded changes

    async def apply_changes(self, changes: Sequence[JobChange]) -> list[Committed | None]:
        return await self._transaction(lambda conn: self._apply(conn, changes))

    async def _apply(self, conn: Conn, changes: Sequence[JobChange]) -> list[Committed | None]:
        """Check each change's guard against the row as it is now (we hold the write lock, so it
        cannot move), then write the passing ones with `WHERE state = ? AND attempt = ?`.
        Changes to one job apply in order, each seeing the one before."""
        ids = list({c.job.id for c in changes})
        found = await conn.execute_fetchall(
            "SELECT id, state, attempt, seq, cancel_requested, cancel_reason FROM jobs "
            "WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),))
        current: dict[str, list[Any]] = {row[0]: list(row[1:]) for row in found}
        results: list[Committed | None] = [None] * len(changes)
        params: list[tuple[Any, ...]] = []
        written: list[tuple[int, JobChange, int]] = []
        for index, change in enumerate(changes):
            row = current.get(change.job.id)
            if row is None or not _passes(change, row[0], row[1]):
                continue
            state, attempt, seq = row[0], row[1], row[2] + len(change.events)
            params.append(_change_params(change, seq, state, attempt))
            row[0], row[1], row[2] = change.job.state.value, change.job.attempt, seq
            if change.reason.value in _WRITES_CANCEL_FLAGS:
                row[3], row[4] = int(change.job.cancel_requested), change.job.cancel_reason
            written.append((index, change, seq))
        if params:
            await conn.executemany(_APPLY_CHANGE, params)
        finals = []
        for _, change, seq in written:
            requested, reason = current[change.job.id][3], current[change.job.id][4]
            finals.append((change, evolve(change.job, cancel_requested=bool(requested), cancel_reason=reason,
                                          last_sequence=seq)))
        committed = await self._write_details(conn, finals)
        for (index, _, _), item in zip(written, committed, strict=True):
            results[index] = item
        return results

    async def update_job(self, job_id: str, build: ChangeBuilder) -> tuple[Job, Committed | None]:
        async def body(conn: Conn) -> tuple[Job, Committed | None]:
            found = await self._load_jobs(conn, [job_id])
            if job_id not in found:
                raise JobNotFound(job_id)
            change = build(found[job_id])
            if change is None:
                return found[job_id], None
            try:
                (committed,) = await self._apply(conn, [change])
            except sqlite3.IntegrityError as exc:
                if "dedupe" not in str(exc) and "jobs.queue, jobs.dedupe_key" not in str(exc):
                    raise
                raise InvalidTransition(job_id, found[job_id].state.value,
                                        "requeue (another active job holds its dedupe_key)") from None
            if committed is None:  # cannot happen: we hold the write lock since the read
                raise StoreError(f"guarded write of job {job_id} did not apply")
            return committed.job, committed

        return await self._transaction(body)


    # ------------------------------------------------------------------ webhook outbox

    async def take_deliveries(self, now: float, limit: int, lease_until: float) -> list[Delivery]:
        return await self._transaction(lambda conn: outbox.take_due(conn, now, limit, lease_until))

    async def record_delivery_attempt(
        self, outcome: AttemptOutcome, now: float, event: PendingEvent | None
    ) -> Event | None:
        """Log one attempt and move its delivery on; with `event` (the delivery ended), append that
        WEBHOOK_* event to the job in the same transaction and return it numbered. Nothing is
        written, and None returned, when retention deleted the job (and so the delivery) meanwhile."""
        job_id = outcome.delivery.job_id

        async def body(conn: Conn) -> Event | None:
            if not await outbox.record_attempt(conn, outcome, now) or event is None:
                return None
            found = await conn.execute_fetchall("UPDATE jobs SET seq = seq + 1 WHERE id = ? RETURNING seq", (job_id,))
            if not found:
                return None
            seq = int(next(iter(found))[0])
            await conn.execute(_INSERT_EVENT, (job_id, seq, event.type.value, now, event.phase, event.detail))
            job = (await self._load_jobs(conn, [job_id]))[job_id]
            return Event(job_id, seq, event.type, now, job.queue, job.kind, event.phase, event.detail, job)

        return await self._transaction(body)

    async def next_delivery_due(self) -> float | None:
        return await outbox.next_due(self._read)

    async def release_delivery_leases(self) -> int:
        """At start: deliveries a previous process had taken but not finished are due again."""
        return await self._transaction(outbox.release_leases)

    async def job_deliveries(self, job_id: str) -> list[DeliveryInfo]:
        """A job's deliveries with their attempt log; JobNotFound when the job does not exist."""
        exists = await self._read.execute_fetchall("SELECT 1 FROM jobs WHERE id = ?", (job_id,))
        if not exists:
            raise JobNotFound(job_id)
        return await outbox.job_deliveries(self._read, job_id)

    # ------------------------------------------------------------------ retention

    async def mark_stale(self, finished_before: Mapping[JobState, float], now: float, limit: int) -> list[Committed]:
        """Up to `limit` terminal jobs that finished before their state's cutoff become STALE."""
        async def body(conn: Conn) -> list[Committed]:
            ids = await _stale_candidates(conn, finished_before, limit)
            jobs = await self._load_jobs(conn, ids)
            results = await self._apply(conn, [make_stale(jobs[i], now) for i in ids if i in jobs])
            return [c for c in results if c is not None]

        return await self._transaction(body)

    async def delete_stale(self, stale_before: float, now: float, limit: int) -> list[Event]:
        """Delete up to `limit` jobs STALE since before `stale_before`, with everything kept for
        them; returns their DELETED events (no job attached, never stored)."""
        async def body(conn: Conn) -> list[Event]:
            found = await conn.execute_fetchall(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state = 'STALE' AND update_time < ? "
                "ORDER BY update_time LIMIT ?) RETURNING id, queue, kind, seq", (stale_before, limit))
            if not found:
                return []
            key = json.dumps([row[0] for row in found])
            await conn.execute("DELETE FROM events WHERE job_id IN (SELECT value FROM json_each(?))", (key,))
            await conn.execute("DELETE FROM requests WHERE job_id IN (SELECT value FROM json_each(?))", (key,))
            await outbox.delete_for_jobs(conn, key)
            return [Event(row[0], row[3] + 1, EventType.DELETED, now, row[1], row[2]) for row in found]

        return await self._transaction(body)

    async def prune_delivery_log(self, before: float, limit: int) -> int:
        return await self._transaction(lambda conn: outbox.prune_log(conn, before, limit))

    async def prune_requests(self, now: float, limit: int) -> int:
        async def body(conn: Conn) -> int:
            cursor = await conn.execute(
                "DELETE FROM requests WHERE request_id IN (SELECT request_id FROM requests WHERE expires <= ? LIMIT ?)",
                (now, limit))
            return cursor.rowcount

        return await self._transaction(body)

    async def retention_preview(
        self, finished_before: Mapping[JobState, float], stale_before: float | None, log_before: float | None
    ) -> RetentionCounts:
        """What one full retention pass would do now, counted without writing."""
        stale = 0
        for state, cutoff in finished_before.items():
            stale += int(_scalar(await self._read.execute_fetchall(
                "SELECT count(*) FROM jobs WHERE state = ? AND finish_time < ?", (state.value, cutoff))) or 0)
        deleted = 0 if stale_before is None else int(_scalar(await self._read.execute_fetchall(
            "SELECT count(*) FROM jobs WHERE state = 'STALE' AND update_time < ?", (stale_before,))) or 0)
        log = 0 if log_before is None else int(_scalar(await self._read.execute_fetchall(
            "SELECT count(*) FROM delivery_attempts WHERE time < ?", (log_before,))) or 0)
        return RetentionCounts(marked_stale=stale, deleted=deleted, log_pruned=log)


# ---------------------------------------------------------------------- helpers


async def _stale_candidates(conn: Conn, finished_before: Mapping[JobState, float], limit: int) -> list[str]:
    ids: list[str] = []
    for state, cutoff in sorted(finished_before.items()):
        if len(ids) >= limit:
            break
        found = await conn.execute_fetchall(
            "SELECT id FROM jobs WHERE state = ? AND finish_time < ? ORDER BY finish_time LIMIT ?",
            (state.value, cutoff, limit - len(ids)))
        ids.extend(row[0] for row in found)
    return ids


def _scalar(found: Iterable[Any]) -> float | None:
    first = next(iter(found), None)
    return None if first is None or first[0] is None else float(first[0])


def _job_from_new(new: NewJob, now: float) -> Job:
    return Job(
        id=new_job_id(now), queue=new.queue, kind=new.kind, payload=new.payload, priority=new.priority,
        state=JobState.SCHEDULED if new.run_at > now else JobState.QUEUED, max_attempts=new.max_attempts,
        phases=tuple(Phase(name) for name in new.phase_names), create_time=now, update_time=now,
        run_at=max(new.run_at, now), timeout=new.timeout, dedupe_key=new.dedupe_key, labels=new.labels,
        webhook=new.webhook, trace_parent=new.trace_parent, last_sequence=1,
    )


def _job_params(job: Job) -> tuple[Any, ...]:
    return (
        job.id, job.queue, job.kind, job.payload, job.priority, job.state.value, job.attempt,
        job.uncounted_attempts, job.max_attempts, job.timeout, job.progress.percent, job.progress.message,
        rows.error_to_json(job.error), rows.history_to_json(job.error_history), job.dedupe_key or None,
        json.dumps(dict(job.labels)), rows.webhook_to_json(job.webhook), int(job.cancel_requested),
        job.cancel_reason, job.trace_parent, job.last_sequence, job.create_time, job.update_time, job.run_at,
        job.start_time, job.finish_time,
    )


def _passes(change: JobChange, state: str, attempt: int) -> bool:
    return JobState(state) in change.guard and (change.attempt is None or change.attempt == attempt)


def _change_params(change: JobChange, seq: int, state: str, attempt: int) -> tuple[Any, ...]:
    job = change.job
    writes_cancel = change.reason.value in _WRITES_CANCEL_FLAGS
    return (
        job.state.value, job.attempt, job.uncounted_attempts, float(job.progress.percent), job.progress.message,
        rows.error_to_json(job.error), rows.history_to_json(job.error_history), float(job.run_at), job.start_time,
        job.finish_time, float(job.update_time), seq, writes_cancel, int(job.cancel_requested), writes_cancel,
        job.cancel_reason, job.state.value, job.state.value, job.id, state, attempt,
    )


_ORDER = "ORDER BY priority DESC, run_at, id"


def _candidate_sql(p: ClaimParams) -> tuple[str, list[Any]]:
    """The ids to claim: the best `limit` QUEUED jobs, taking at most `room` from each limited queue."""
    limited = sorted(p.queue_room)
    parts = ["SELECT * FROM (SELECT id, priority, run_at FROM jobs WHERE state = 'QUEUED'"
             + (" AND queue NOT IN (SELECT value FROM json_each(?))" if limited else "")
             + f" {_ORDER} LIMIT ?)"]
    args: list[Any] = [json.dumps(limited)] if limited else []
    args.append(p.limit)
    for queue in limited:
        room = min(p.queue_room[queue], p.limit)
        if room > 0:
            parts.append(f"SELECT * FROM (SELECT id, priority, run_at FROM jobs WHERE state = 'QUEUED' "
                         f"AND queue = ? {_ORDER} LIMIT ?)")
            args.extend((queue, room))
    union = " UNION ALL ".join(parts)
    return f"SELECT id FROM ({union}) {_ORDER} LIMIT ?", [*args, p.limit]
