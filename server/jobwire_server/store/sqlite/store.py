"""The embedded SQLite store.

Two connections, each on its own thread (`ConnectionThread`): the writer, whose every call is one
whole ``BEGIN IMMEDIATE … COMMIT`` transaction over a batch of operations, and a read-only
reader (WAL lets it read the last commit while the writer writes). A batch costs one hop from the
event loop and one commit however many operations it holds; the SQL lives in `writes`, `reads`
and `outbox`, as plain functions on a connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from jobwire_server.domain.deliveries import AttemptOutcome, DeliveryInfo
from jobwire_server.domain.errors import (
    JobwireError,
    StorageCorrupt,
    StorageFull,
    StorageUnavailable,
)
from jobwire_server.domain.kinds import KindSpec
from jobwire_server.domain.models import Event, Job, PendingEvent, QueueStats
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.queues import QueueSettings
from jobwire_server.domain.schedules import Schedule
from jobwire_server.domain.states import JobState
from jobwire_server.store.base import (
    ApplyChange,
    ChangeQueue,
    ClaimJobs,
    DeclareKinds,
    DeleteStale,
    InsertJobs,
    MarkStale,
    PruneDeliveryLog,
    PruneRequests,
    RecordDeliveryAttempt,
    ReleaseDeliveryLeases,
    RenewLeases,
    RetentionCounts,
    ScheduleOp,
    StoreError,
    TakeDeliveries,
    UpdateJob,
    UpdateJobs,
    WriteOp,
)
from jobwire_server.store.operations import SingleOperations
from jobwire_server.store.sqlite import bulk, kinds, migrate, outbox, queues, reads, schedules, writes
from jobwire_server.store.sqlite.thread import ConnectionClosed, ConnectionThread

Conn = sqlite3.Connection
T = TypeVar("T")


class SqliteJobStore(SingleOperations):
    """`JobStore` on one SQLite file."""

    def __init__(self, path: str, *, synchronous: str = "FULL", integrity_check: bool = True) -> None:
        self.path = path
        self.synchronous = synchronous
        self.integrity_check = integrity_check
        self._writer: ConnectionThread | None = None
        self._reader: ConnectionThread | None = None
        #: Called when a read or write finds the file corrupt (the app turns health NOT_SERVING).
        self.on_corrupt: Callable[[StorageCorrupt], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self.path != ":memory:" and not Path(self.path).parent.is_dir():
            raise StoreError(f"cannot open database {self.path}: directory {Path(self.path).parent} does not exist")
        try:
            self._writer = ConnectionThread(self.path, "jobwire-db-writer")
            await self._writer.open(self._setup)
            if self.integrity_check:
                await self._writer.run(self._check_integrity)
            await self._writer.run(self._migrate)
            self._reader = ConnectionThread(self.path, "jobwire-db-reader")
            await self._reader.open(self._setup_reader)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        except BaseException:
            await self.close()  # no connection thread may outlive a refused open
            raise

    def _setup(self, conn: Conn) -> None:
        for pragma in ("journal_mode = WAL", f"synchronous = {self.synchronous}", "foreign_keys = ON",
                       "busy_timeout = 5000"):
            conn.execute(f"PRAGMA {pragma}")

    def _setup_reader(self, conn: Conn) -> None:
        self._setup(conn)
        conn.execute("PRAGMA query_only = ON")

    def _check_integrity(self, conn: Conn) -> None:
        """`PRAGMA quick_check` (a full pass over the file, without cross-checking indexes against
        tables): a damaged file is refused before it serves anything."""
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            found = " ".join(" ".join(problems).replace("*** in database main ***", "").split())
            raise StoreError(f"database {self.path} is corrupt ({found[:300]}): restore it from a backup "
                             "(see docs/operations.md), or move it aside to start empty")

    def _migrate(self, conn: Conn) -> None:
        migrate.migrate(conn, self.path)

    async def close(self) -> None:
        for thread in (self._reader, self._writer):
            if thread is not None:
                await thread.close()
        self._reader = self._writer = None

    # ------------------------------------------------------------------ the write path

    async def write(self, ops: Sequence[WriteOp]) -> list[Any]:
        """Every operation in one transaction on the writer thread: one hop, one commit."""
        if self._writer is None:
            raise StoreError("store is closed")
        try:
            return await self._writer.run(_transaction, list(ops))
        except ConnectionClosed:
            raise StoreError("store is closed") from None
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc

    async def probe(self) -> None:
        """A small real write (a page written and synced, then freed): succeeds once the database
        takes writes again after a StorageError."""
        if self._writer is None:
            raise StoreError("store is closed")
        try:
            await self._writer.run(_probe)
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc

    def _storage_error(self, exc: sqlite3.Error) -> Exception:
        """The storage fault behind `exc`, named for clients; other errors stay as they are (bugs)."""
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith("SQLITE_FULL"):
            return StorageFull(self.path, f"{exc} (free disk space)")
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            corrupt = StorageCorrupt(self.path, f"{exc} (restore it from a backup)")
            if self.on_corrupt is not None:
                self.on_corrupt(corrupt)
            return corrupt
        if name.startswith(("SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_BUSY", "SQLITE_PERM")):
            return StorageUnavailable(self.path, str(exc))
        return exc

    async def _read(self, function: Callable[..., T], *args: Any) -> T:
        if self._reader is None:
            raise StoreError("store is closed")
        try:
            return await self._reader.run(function, *args)
        except ConnectionClosed:
            raise StoreError("store is closed") from None
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc

    # ------------------------------------------------------------------ reads

    async def get_job(self, job_id: str) -> Job:
        return await self._read(reads.get_job, job_id)

    async def list_jobs(self, query: JobQuery) -> tuple[list[Job], str | None]:
        return await self._read(reads.list_jobs, query)

    async def list_job_ids(self, query: JobQuery) -> list[str]:
        return await self._read(reads.list_job_ids, query)

    async def count_jobs(self, query: JobQuery) -> int:
        return await self._read(reads.count_jobs, query)

    async def events_after(self, job_id: str, sequence: int, limit: int) -> list[Event]:
        return await self._read(reads.events_after, job_id, sequence, limit)

    async def queue_stats(self, queue: str, now: float) -> list[QueueStats]:
        return await self._read(reads.queue_stats, queue, now)

    async def next_wakeup(self) -> float | None:
        return await self._read(reads.next_wakeup)

    async def next_lease_expiry(self) -> float | None:
        return await self._read(reads.next_lease_expiry)

    async def expired_leases(self, now: float, limit: int) -> list[Job]:
        return await self._read(reads.expired_leases, now, limit)

    async def next_delivery_due(self) -> float | None:
        return await self._read(outbox.next_due)

    async def job_deliveries(self, job_id: str) -> list[DeliveryInfo]:
        """A job's deliveries with their attempt log; JobNotFound when the job does not exist."""
        return await self._read(reads.job_deliveries, job_id)

    async def retention_preview(
        self, finished_before: Mapping[JobState, float], stale_before: float | None, log_before: float | None
    ) -> RetentionCounts:
        """What one full retention pass would do now, counted without writing."""
        return await self._read(reads.retention_preview, finished_before, stale_before, log_before)

    async def get_schedule(self, schedule_id: str) -> Schedule:
        return await self._read(schedules.get, schedule_id)

    async def list_schedules(self, after_id: str, limit: int) -> tuple[list[Schedule], str | None]:
        return await self._read(schedules.list_page, after_id, limit)

    async def next_schedule_fire(self) -> float | None:
        return await self._read(schedules.next_due)

    async def list_kinds(self) -> list[KindSpec]:
        return await self._read(kinds.list_all)

    async def queue_settings(self, name: str) -> QueueSettings | None:
        return await self._read(queues.get, name)

    async def list_queue_settings(self) -> list[QueueSettings]:
        return await self._read(queues.list_all)

    async def running_counts(self, queue: str, key: str) -> tuple[int, int]:
        return await self._read(queues.running_counts, queue, key)


# ---------------------------------------------------------------------- one transaction


def _transaction(conn: Conn, ops: list[WriteOp]) -> list[Any]:
    """Run `ops` in order in one BEGIN IMMEDIATE transaction (on the writer thread)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = _run_ops(conn, ops)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


#: Longer than any request_id a client may send (128), so the probe's row can never be a client's.
_PROBE_KEY = "jobwire.storage-probe/" + "-" * 200


def _probe(conn: Conn) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT OR REPLACE INTO requests VALUES (?, '', '', 0)", (_PROBE_KEY,))
        conn.execute("UPDATE requests SET fingerprint = printf('%4096s', '') WHERE request_id = ?", (_PROBE_KEY,))
        conn.execute("DELETE FROM requests WHERE request_id = ?", (_PROBE_KEY,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _run_ops(conn: Conn, ops: list[WriteOp]) -> list[Any]:
    results: list[Any] = []
    index = 0
    while index < len(ops):
        op = ops[index]
        if isinstance(op, ApplyChange):
            # A run of changes is one executemany: the executor's outcomes arrive in bulk.
            end = index
            while end < len(ops) and isinstance(ops[end], ApplyChange):
                end += 1
            results.extend(writes.apply_changes(conn, [o.change for o in ops[index:end]]))  # type: ignore[union-attr]
            index = end
            continue
        if isinstance(op, InsertJobs | UpdateJob | ScheduleOp | DeclareKinds | ChangeQueue):
            results.append(_refusable(conn, op))
        elif isinstance(op, UpdateJobs):
            results.append(bulk.update_jobs(conn, op.job_ids, op.build))
        else:
            results.append(_run_one(conn, op))
        index += 1
    return results


def _refusable(conn: Conn, op: InsertJobs | UpdateJob | ScheduleOp | DeclareKinds | ChangeQueue) -> Any:
    """An operation a client asked for, which may be refused on its own: inside a savepoint, so a
    refusal undoes only its own writes and the rest of the batch commits."""
    conn.execute("SAVEPOINT op")
    try:
        result = _run_one(conn, op)
    except JobwireError as exc:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return exc
    conn.execute("RELEASE op")
    return result


def _run_one(conn: Conn, op: WriteOp) -> Any:
    match op:
        case InsertJobs(jobs, now, ttl):
            return writes.insert_jobs(conn, jobs, now, ttl)
        case UpdateJob(job_id, build, lease_expired_before):
            return writes.update_job(conn, job_id, build, lease_expired_before)
        case ApplyChange(change):
            return writes.apply_changes(conn, [change])[0]
        case ClaimJobs(params):
            return writes.claim_jobs(conn, params)
        case RenewLeases(owner, job_ids, expires):
            return writes.renew_leases(conn, owner, job_ids, expires)
        case UpdateJobs(job_ids, build):
            return bulk.update_jobs(conn, job_ids, build)
        case DeclareKinds(specs, now):
            return kinds.declare(conn, specs, now)
        case ChangeQueue(name, build, now):
            return queues.change(conn, name, build, now)
    return _run_upkeep(conn, op)


def _run_upkeep(conn: Conn, op: WriteOp) -> Any:
    """The outbox's and retention's writes, then the schedules'."""
    match op:
        case TakeDeliveries(now, limit, lease_until):
            return outbox.take_due(conn, now, limit, lease_until)
        case RecordDeliveryAttempt(outcome, now, event):
            return _record_delivery_attempt(conn, outcome, now, event)
        case ReleaseDeliveryLeases():
            return outbox.release_leases(conn)
        case MarkStale(finished_before, now, limit):
            return writes.mark_stale(conn, finished_before, now, limit)
        case DeleteStale(stale_before, now, limit):
            return writes.delete_stale(conn, stale_before, now, limit)
        case PruneDeliveryLog(before, limit):
            return outbox.prune_log(conn, before, limit)
        case PruneRequests(now, limit):
            return writes.prune_requests(conn, now, limit)
    if not isinstance(op, ScheduleOp):
        raise TypeError(f"unknown write operation {op!r}")
    return schedules.run(conn, op)  # the schedule operations (anything else: TypeError)


def _record_delivery_attempt(conn: Conn, outcome: AttemptOutcome, now: float,
                             event: PendingEvent | None) -> Event | None:
    """Log one attempt and move its delivery on; with `event` (the delivery ended), append that
    WEBHOOK_* event to the job and return it numbered. Nothing is written, and None returned,
    when retention deleted the job (and so the delivery) meanwhile."""
    job_id = outcome.delivery.job_id
    if not outbox.record_attempt(conn, outcome, now) or event is None:
        return None
    found = conn.execute("UPDATE jobs SET seq = seq + 1 WHERE id = ? RETURNING seq", (job_id,)).fetchone()
    if found is None:
        return None
    seq = int(found[0])
    conn.execute(writes.INSERT_EVENT, (job_id, seq, event.type.value, now, event.phase, event.detail))
    job = writes.load_jobs(conn, [job_id])[job_id]
    return Event(job_id, seq, event.type, now, job.queue, job.kind, event.phase, event.detail, job)
