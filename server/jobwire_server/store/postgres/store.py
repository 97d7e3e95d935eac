"""The PostgreSQL store: any number of jobwire replicas on one database.

Connections: one writer (every `write` is one transaction on it: the group commit), a pool for
reads, and a listener for the replicas' wake-ups. After a commit that made work ready or wrote
events, a debounced `NOTIFY` tells the other replicas (a hint: the truth stays in the tables,
and each replica also looks every `POLL_INTERVAL` because notifications are lost while a
listener reconnects). Each replica reads the others' events by tailing the events table in
transaction order (`tail_events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from jobwire_server.domain.deliveries import AttemptOutcome, DeliveryInfo
from jobwire_server.domain.errors import (
    JobwireError,
    SchemaTooNew,
    StorageCorrupt,
    StorageFull,
    StorageUnavailable,
)
from jobwire_server.domain.kinds import KindSpec
from jobwire_server.domain.models import Event, Job, PendingEvent, QueueStats
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.queues import QueueSettings
from jobwire_server.domain.schedules import Schedule
from jobwire_server.domain.states import EventType, JobState
from jobwire_server.store import rows
from jobwire_server.store.base import (
    ApplyChange,
    ChangeQueue,
    ClaimJobs,
    Committed,
    DeclareKinds,
    DeleteStale,
    FireSchedules,
    InsertJobs,
    MarkStale,
    PruneDeliveryLog,
    PruneRequests,
    RecordDeliveryAttempt,
    ReleaseDeliveryLeases,
    RenewLeases,
    RetentionCounts,
    ScheduleOp,
    SchedulesFired,
    StoreError,
    TakeDeliveries,
    UpdateJob,
    UpdateJobs,
    WriteOp,
)
from jobwire_server.store.operations import SingleOperations
from jobwire_server.store.postgres import batch, bulk, kinds, migrate, outbox, queues, reads, schedules, writes

log = logging.getLogger("jobwire.store")
T = TypeVar("T")
Conn = asyncpg.Connection

#: The NOTIFY channel replicas wake each other on.
CHANNEL = "jobwire"
#: At most one NOTIFY of each kind per this many seconds (the first is sent at once).
NOTIFY_DEBOUNCE = 0.05
#: Job ids per cancel notification (a payload holds at most 8,000 bytes).
CANCELS_PER_NOTIFY = 100
#: How often a replica looks for work and events without being told (lost notifications).
POLL_INTERVAL = 1.0
#: Seconds a connection attempt may take before the database counts as unreachable.
CONNECT_TIMEOUT = 10.0
#: Times a batch is run again after a deadlock or serialization failure (another replica's
#: transaction touched the same rows in another order); each run starts from scratch.
TRANSIENT_RETRIES = 5
#: A replica frozen inside a transaction (SIGSTOP, a paused VM) keeps its row locks, and every
#: other replica's writer waits on them: nothing commits, leases are not renewed, nobody is
#: rescued. The database ends such a session after this long, so the others go on (the frozen
#: replica's transaction rolls back; its jobs are rescued when their leases expire). Keep it
#: well under lease_ttl (the others' own leases lapse while they wait).
IDLE_IN_TRANSACTION_TIMEOUT = "5s"
_EPOCH_2000 = 946_684_800.0

_TRANSIENT = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
#: What a statement may raise when the database or the connection to it fails. asyncpg's
#: InternalClientError is a connection left mid-operation by a session the server ended.
_CONNECTION_TROUBLE = (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                       OSError)


@dataclass(frozen=True, slots=True, order=True)
class TailCursor:
    """A position in the events table: (writing transaction, row id), see `tail_events`."""

    xid: int
    id: int


@dataclass(frozen=True, slots=True)
class RemoteSignal:
    """What another replica's commit announced."""

    work: bool
    events: bool
    #: Jobs whose cancel another replica recorded (their handler may run here).
    cancel: tuple[str, ...] = ()


def _ts_encode(value: float) -> tuple[int]:
    return (round((value - _EPOCH_2000) * 1_000_000),)


def _ts_decode(value: tuple[int]) -> float:
    return value[0] / 1_000_000 + _EPOCH_2000


async def _setup_connection(conn: Conn) -> None:
    """Types as the domain has them: ids as strings, times as epoch seconds, JSON as text."""
    await conn.set_type_codec("uuid", schema="pg_catalog", encoder=str, decoder=str, format="text")
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=str, decoder=str, format="text")
    await conn.set_type_codec("timestamptz", schema="pg_catalog", encoder=_ts_encode, decoder=_ts_decode,
                              format="tuple")


async def _keep_session(_conn: Conn) -> None:
    """Pooled connections are given back as they were: reads leave no session state (no LISTEN,
    no session locks, no settings), and asyncpg rolls back an open transaction itself. The
    default reset would cost a round trip per read."""


def display_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def connection_settings(url: str) -> tuple[str, dict[str, Any]]:
    """The DSN asyncpg takes, and server settings: `application_name` defaults to "jobwire" and
    `idle_in_transaction_session_timeout` to IDLE_IN_TRANSACTION_TIMEOUT (both may be set in the URL)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    settings = {"application_name": query.pop("application_name", "jobwire"),
                "idle_in_transaction_session_timeout": query.pop("idle_in_transaction_session_timeout",
                                                                 IDLE_IN_TRANSACTION_TIMEOUT)}
    dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query)))
    return dsn, settings


class PostgresJobStore(SingleOperations):
    """`JobStore` on a PostgreSQL database, shared by any number of replicas."""

    #: The engine runs cross-replica duties (tailing events, wake-ups, leader election) on it.
    shared = True

    def __init__(self, url: str, *, pool_size: int = 10, replica: str = "") -> None:
        self.url = url
        self.name = display_url(url)
        self.pool_size = max(2, pool_size)
        self.replica = replica or f"jobwire-{secrets.token_hex(6)}"
        self._dsn, self._settings = connection_settings(url)
        self._pool: asyncpg.Pool | None = None
        self._writer: Conn | None = None
        self._writer_lock = asyncio.Lock()
        self._listener: Conn | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._notify_tasks: dict[str, asyncio.Task[None]] = {}
        self._notify_pending: set[str] = set()
        self._send_lock = asyncio.Lock()
        self._closed = True
        #: Called with what another replica announced (set by the app before `listen`).
        self.on_remote: Callable[[RemoteSignal], None] | None = None
        #: Called when a read or write finds the database corrupt.
        self.on_corrupt: Callable[[StorageCorrupt], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        try:
            self._writer = await self._connect()
            await self._migrate(self._writer)
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self.pool_size, init=_setup_connection, reset=_keep_session,
                server_settings=self._settings, timeout=CONNECT_TIMEOUT)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, SchemaTooNew | StoreError):
                raise
            if isinstance(exc, Exception):
                raise StoreError(self._open_error(exc)) from None
            raise
        self._closed = False

    async def _connect(self) -> Conn:
        conn = await asyncpg.connect(self._dsn, server_settings=self._settings, timeout=CONNECT_TIMEOUT)
        await _setup_connection(conn)
        return conn

    def _open_error(self, exc: Exception) -> str:
        """One line: what failed and what to check."""
        if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
            hint = "check the user and password in the URL"
        elif isinstance(exc, asyncpg.InvalidCatalogNameError):
            hint = "create the database first (createdb), or name one that exists"
        elif isinstance(exc, asyncpg.InsufficientPrivilegeError):
            hint = "the role needs CREATE on the database's schema and rights on jobwire's tables"
        elif isinstance(exc, OSError | asyncio.TimeoutError | asyncpg.CannotConnectNowError):
            hint = "is the server running and reachable at that host and port?"
        else:
            hint = "see the server's log"
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return f"cannot open database {self.name}: {detail} ({hint})"

    async def _migrate(self, conn: Conn) -> None:
        await migrate.migrate(conn, self.name)

    async def schema_version(self) -> int:
        async with self._reader() as conn:
            return int(await conn.fetchval("SELECT max(version) FROM jobwire_schema") or 0)

    async def close(self) -> None:
        self._closed = True
        for task in [self._listen_task, *self._notify_tasks.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._listen_task, self._notify_tasks = None, {}
        for conn in (self._listener, self._writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)
        self._listener = self._writer = None
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)
            self._pool = None

    # ------------------------------------------------------------------ the write path

    async def write(self, ops: Sequence[WriteOp]) -> list[Any]:
        """Every operation in one transaction on the writer connection: one commit for the batch."""
        if self._closed:
            raise StoreError("store is closed")
        batch = list(ops)
        async with self._writer_lock:
            try:
                conn = await self._writer_connection()
                for attempt in range(TRANSIENT_RETRIES + 1):
                    try:
                        async with conn.transaction():
                            pending = writes.Pending()
                            results = await _run_ops(conn, pending, batch)
                            await pending.flush(conn)
                        break
                    except _TRANSIENT:
                        if attempt == TRANSIENT_RETRIES:
                            raise
                        await asyncio.sleep(0.001 * 2 ** attempt)
            except _CONNECTION_TROUBLE as exc:
                mapped = self._storage_error(exc)
                if mapped is not exc and self._writer is not None:
                    # The next write (or probe) starts on a fresh session: the server may have been
                    # restarted, failed over, or made writable again since this one began.
                    self._writer.terminate()
                    self._writer = None
                raise mapped from exc
        self._announce(batch, results)
        return results

    async def _writer_connection(self) -> Conn:
        """The writer connection, opened again after it was lost (a database restart)."""
        if self._writer is None or self._writer.is_closed():
            if self._writer is not None:
                self._writer.terminate()
                self._writer = None
            self._writer = await self._connect()
        return self._writer

    async def probe(self) -> None:
        """A real write: succeeds once the database takes writes again after a StorageError."""
        await self.write([PruneRequests(0.0, 1)])

    def _storage_error(self, exc: BaseException) -> Exception:
        """The storage fault behind `exc`, named for clients; other errors stay as they are (bugs)."""
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, asyncpg.DiskFullError | asyncpg.InsufficientResourcesError):
            return StorageFull(self.name, f"{detail} (free disk space on the database server)")
        if isinstance(exc, asyncpg.DataCorruptedError | asyncpg.IndexCorruptedError):
            corrupt = StorageCorrupt(self.name, f"{detail} (restore it from a backup)")
            if self.on_corrupt is not None:
                self.on_corrupt(corrupt)
            return corrupt
        if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.InterfaceError | asyncpg.InternalClientError
                      | OSError | asyncio.TimeoutError
                      | asyncpg.OperatorInterventionError | asyncpg.ReadOnlySQLTransactionError
                      | asyncpg.InsufficientPrivilegeError | asyncpg.ConnectionDoesNotExistError
                      | asyncpg.DeadlockDetectedError | asyncpg.SerializationError):
            return StorageUnavailable(self.name, detail)
        return exc  # type: ignore[return-value]

    @contextlib.asynccontextmanager
    async def _reader(self) -> Any:
        if self._pool is None or self._closed:
            raise StoreError("store is closed")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except _CONNECTION_TROUBLE as exc:
            mapped = self._storage_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def _read(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        async with self._reader() as conn:
            return await function(conn, *args)

    # ------------------------------------------------------------------ replicas

    def _announce(self, ops: Sequence[WriteOp], results: Sequence[Any]) -> None:
        """Tell the other replicas, after the commit, what it did (debounced)."""
        events, work, cancelled = _schedule_news(ops, results)
        for op, result in zip(ops, results, strict=True):
            if result is None or isinstance(result, JobwireError):
                continue
            match op:
                case InsertJobs():
                    events = events or any(r.created for r in result)
                    work = work or any(r.created and r.job.state is JobState.QUEUED for r in result)
                case UpdateJob() | ApplyChange() | UpdateJobs():
                    for committed in _changes_of(op, result):
                        events = True
                        work = work or committed.job.state is JobState.QUEUED
                        if any(e.type is EventType.CANCEL_REQUESTED for e in committed.events):
                            cancelled.append(committed.job.id)
                case ClaimJobs():
                    events = events or bool(result.promoted or result.claimed)
                    work = work or bool(result.promoted)
                case RecordDeliveryAttempt() | MarkStale():
                    events = True
        if cancelled and not self._closed:  # at once, not debounced: a handler elsewhere should stop now
            for start in range(0, len(cancelled), CANCELS_PER_NOTIFY):
                payload = f"cancel {self.replica} {','.join(cancelled[start:start + CANCELS_PER_NOTIFY])}"
                asyncio.get_running_loop().create_task(self._send(payload))
        if work:
            self._notify("work")
        elif events:
            self._notify("events")

    def _notify(self, kind: str) -> None:
        if self._closed:
            return
        if kind in self._notify_tasks:
            self._notify_pending.add(kind)  # sent when the debounce window ends
            return
        self._notify_tasks[kind] = asyncio.get_running_loop().create_task(self._send_notify(kind))

    async def _send(self, payload: str) -> None:
        try:
            listener = self._listener
            if listener is not None and not listener.is_closed():  # no pool round trip
                async with self._send_lock:  # one query at a time on a connection
                    await listener.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
                return
            async with self._reader() as conn:
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        except Exception as exc:  # a hint only: the other replicas poll, and renewals carry cancels
            log.debug("notify failed: %s", exc)

    async def _send_notify(self, kind: str) -> None:
        try:
            while True:
                self._notify_pending.discard(kind)
                await self._send(f"{kind} {self.replica}")
                await asyncio.sleep(NOTIFY_DEBOUNCE)
                if kind not in self._notify_pending:
                    return
        finally:
            self._notify_tasks.pop(kind, None)

    async def listen(self) -> None:
        """Start listening for the other replicas' announcements (reconnecting as needed)."""
        if self._listen_task is None:
            self._listen_task = asyncio.get_running_loop().create_task(self._keep_listening(), name="jobwire-listen")

    async def _keep_listening(self) -> None:
        delay = 0.1
        while not self._closed:
            lost = asyncio.Event()
            try:
                conn = await self._connect()
                self._listener = conn
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(CHANNEL, self._on_notification)
                delay = 0.1
                if self.on_remote is not None:  # what was announced while not listening
                    self.on_remote(RemoteSignal(work=True, events=True))
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listening for other replicas failed (%s); polling every %.0f s meanwhile", exc,
                            POLL_INTERVAL)
            finally:
                if self._listener is not None and not self._listener.is_closed():
                    self._listener.terminate()
                self._listener = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        kind, sender, *rest = str(payload).split(" ")
        if sender == self.replica or self.on_remote is None:
            return
        cancel = tuple(rest[0].split(",")) if kind == "cancel" and rest else ()
        self.on_remote(RemoteSignal(work=kind == "work", events=True, cancel=cancel))

    async def tail_start(self) -> TailCursor:
        """A cursor from which `tail_events` returns every event not yet committed now (and
        possibly a few just before)."""
        async with self._reader() as conn:
            xmin = await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        return TailCursor(int(xmin), 0)

    async def tail_events(self, cursor: TailCursor, limit: int,
                          job_ids: Sequence[str] | None = None) -> tuple[list[Event], TailCursor]:
        """Every committed event after `cursor`, in (transaction, row) order, only those of
        `job_ids` when given; each carries its job as it is now. The cursor returned moves only
        past transactions below the snapshot's xmin: every transaction that could still add a row
        before them has ended, so none is ever skipped (an identity column alone would skip rows
        that commit late). Rows of later transactions already committed are returned too, so they
        are not held up by an unrelated long transaction, and again on the next call: the caller
        drops what it delivered already (a job's sequence numbers tell)."""
        only = "" if job_ids is None else " AND job_id = ANY($4::uuid[])"
        args: list[Any] = [str(cursor.xid), cursor.id, limit] + ([] if job_ids is None else [list(job_ids)])
        async with self._reader() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                xmin = int(await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))
                found = await conn.fetch(
                    "SELECT xid::text, id, job_id, seq, type, time, phase, detail FROM events "
                    f"WHERE (xid, id) > ($1::text::xid8, $2){only} ORDER BY xid, id LIMIT $3", *args)
            jobs = await writes.load_jobs(conn, sorted({row[2] for row in found})) if found else {}
        events = [rows.event_from_row(row[2:], job.queue, job.kind, job)
                  for row in found if (job := jobs.get(row[2])) is not None]
        safe = TailCursor(xmin, 0)
        if len(found) == limit:  # more to read: the next call goes on after the last row (below the xmin)
            last = TailCursor(int(found[-1][0]), found[-1][1])
            safe = min(safe, last)
        return events, max(cursor, safe)

    async def claim_leadership(self, duty: str, holder: str, term: int, ttl: float) -> int | None:
        """Take or renew the lease row of a singleton duty. Returns the term held (a new one when
        taken over), or None when another holder's lease is live."""
        now = time.time()
        async with self._reader() as conn:
            value: int | None = await conn.fetchval(
                "INSERT INTO leaders (duty, holder, term, expires) VALUES ($1, $2, 1, $3) "
                "ON CONFLICT (duty) DO UPDATE SET holder = excluded.holder, expires = excluded.expires, "
                "term = CASE WHEN leaders.holder = excluded.holder AND leaders.term = $4 THEN leaders.term "
                "ELSE leaders.term + 1 END "
                "WHERE (leaders.holder = excluded.holder AND leaders.term = $4) OR leaders.expires < $5 "
                "RETURNING term", duty, holder, now + ttl, term, now)
        return value

    async def resign_leadership(self, duty: str, holder: str) -> None:
        async with self._reader() as conn:
            await conn.execute("DELETE FROM leaders WHERE duty = $1 AND holder = $2", duty, holder)

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
        return await self._read(reads.job_deliveries, job_id)

    async def retention_preview(
        self, finished_before: Mapping[JobState, float], stale_before: float | None, log_before: float | None
    ) -> RetentionCounts:
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


def _schedule_news(ops: Sequence[WriteOp], results: Sequence[Any]) -> tuple[bool, bool, list[str]]:
    """What a batch's schedule (and queue settings) operations tell the other replicas: (events
    written, work made ready, jobs whose cancel was requested). Any schedule write is work: the replica leading
    schedules then looks at their next firing again."""
    events = work = False
    cancelled: list[str] = []
    for op, result in zip(ops, results, strict=True):
        if isinstance(op, ChangeQueue) and not isinstance(result, JobwireError):
            work = True  # a queue resumed or a limit raised: the other replicas claim again
        if not isinstance(op, ScheduleOp) or isinstance(result, JobwireError):
            continue
        work = True
        if isinstance(op, FireSchedules):
            jobs = _fired_jobs(result)
            events = events or bool(jobs)
            cancelled += [c.job.id for c in jobs if any(e.type is EventType.CANCEL_REQUESTED for e in c.events)]
    return events, work, cancelled


def _fired_jobs(result: SchedulesFired) -> list[Committed]:
    """The jobs a firing pass created or cancelled, with their events."""
    out: list[Committed] = []
    for fired in result.fired:
        if fired.inserted is not None and fired.inserted.created:
            out.append(Committed(fired.inserted.job, fired.inserted.events))
        if fired.cancelled is not None:
            out.append(fired.cancelled)
    return out


def _changes_of(op: UpdateJob | ApplyChange | UpdateJobs, result: Any) -> list[Committed]:
    """The changes a job update committed (an UpdateJobs result holds one entry per job)."""
    if isinstance(op, ApplyChange):
        return [result] if result is not None else []
    pairs = result if isinstance(op, UpdateJobs) else [result]
    return [pair[1] for pair in pairs if isinstance(pair, tuple) and pair[1] is not None]


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()


# ---------------------------------------------------------------------- one transaction


async def _run_ops(conn: Conn, pending: writes.Pending, ops: list[WriteOp]) -> list[Any]:
    results: list[Any] = []
    index = 0
    while index < len(ops):
        op = ops[index]
        if isinstance(op, ApplyChange):
            # A run of changes is one statement: the executor's outcomes arrive in bulk.
            end = index
            while end < len(ops) and isinstance(ops[end], ApplyChange):
                end += 1
            changes = [o.change for o in ops[index:end]]  # type: ignore[union-attr]
            results.extend(await writes.apply_changes(conn, pending, changes))
            index = end
            continue
        if isinstance(op, InsertJobs | UpdateJob | ScheduleOp | DeclareKinds | ChangeQueue):
            results.append(await _refusable(conn, pending, op))
        elif isinstance(op, UpdateJobs):
            results.append(await bulk.update_jobs(conn, pending, op.job_ids, op.build))
        else:
            if not isinstance(op, ClaimJobs | RenewLeases):
                await pending.flush(conn)  # the rest read or delete rows it may hold; they are rare
            results.append(await _run_one(conn, pending, op))
        index += 1
    return results


async def _refusable(conn: Conn, pending: writes.Pending,
                     op: InsertJobs | UpdateJob | ScheduleOp | DeclareKinds | ChangeQueue) -> Any:
    """An operation a client asked for, which may be refused on its own: inside a savepoint, so a
    refusal undoes only its own writes and the rest of the batch commits. A conflict with another
    replica's commit (a request id or dedupe key it took meanwhile) runs it again, and then it
    sees that commit."""
    if _may_read_pending(pending, op):
        # Written outside the savepoint: a refusal must not undo other operations' rows.
        await pending.flush(conn)
    for _ in range(TRANSIENT_RETRIES):
        mark = pending.mark()
        try:
            async with conn.transaction():
                return await _run_one(conn, pending, op)
        except JobwireError as exc:
            pending.drop_to(mark)
            return exc
        except writes.Conflict:
            pending.drop_to(mark)
            continue
    raise StorageUnavailable("(shared)", "a write kept conflicting with other replicas' commits; retry it")


def _may_read_pending(pending: writes.Pending,
                      op: InsertJobs | UpdateJob | ScheduleOp | DeclareKinds | ChangeQueue) -> bool:
    """Whether `op` may read phases still pending (which a read writes first)."""
    if isinstance(op, DeclareKinds | ChangeQueue):
        return False  # the kinds table, or one queue's row, only
    if isinstance(op, ScheduleOp):
        return True  # a firing reads and writes jobs; schedule operations are rare
    if isinstance(op, UpdateJob):
        return pending.touches([op.job_id])
    # An enqueue reads existing jobs only when a request id or dedupe key returns one.
    return bool(pending.new_phases or pending.phase_updates) and any(j.request_id or j.dedupe_key for j in op.jobs)


async def _run_one(conn: Conn, pending: writes.Pending, op: WriteOp) -> Any:
    match op:
        case InsertJobs(jobs, now, ttl):
            return await writes.insert_jobs(conn, pending, jobs, now, ttl)
        case UpdateJob(job_id, build, lease_expired_before):
            return await writes.update_job(conn, pending, job_id, build, lease_expired_before)
        case ApplyChange(change):
            return (await writes.apply_changes(conn, pending, [change]))[0]
        case ClaimJobs(params):
            return await writes.claim_jobs(conn, pending, params)
        case RenewLeases(owner, job_ids, expires):
            return await writes.renew_leases(conn, owner, job_ids, expires)
        case UpdateJobs(job_ids, build):
            return await bulk.update_jobs(conn, pending, job_ids, build)
        case DeclareKinds(specs, now):
            return await kinds.declare(conn, specs, now)
        case ChangeQueue(name, build, now):
            return await queues.change(conn, name, build, now)
    return await _run_upkeep(conn, pending, op)


async def _run_upkeep(conn: Conn, pending: writes.Pending, op: WriteOp) -> Any:
    """The outbox's and retention's writes, then the schedules'."""
    match op:
        case TakeDeliveries(now, limit, lease_until):
            return await outbox.take_due(conn, now, limit, lease_until)
        case RecordDeliveryAttempt(outcome, now, event):
            return await _record_delivery_attempt(conn, outcome, now, event)
        case ReleaseDeliveryLeases(now):
            return await outbox.release_expired_leases(conn, now)
        case MarkStale(finished_before, now, limit):
            return await writes.mark_stale(conn, pending, finished_before, now, limit)
        case DeleteStale(stale_before, now, limit):
            return await writes.delete_stale(conn, stale_before, now, limit)
        case PruneDeliveryLog(before, limit):
            return await outbox.prune_log(conn, before, limit)
        case PruneRequests(now, limit):
            return await writes.prune_requests(conn, now, limit)
    if not isinstance(op, ScheduleOp):
        raise TypeError(f"unknown write operation {op!r}")
    return await schedules.run(conn, pending, op)  # the schedule operations (anything else: TypeError)


async def _record_delivery_attempt(conn: Conn, outcome: AttemptOutcome, now: float,
                                   event: PendingEvent | None) -> Event | None:
    """See the SQLite store: log one attempt; with `event`, append it to the job, numbered under
    the job's row lock."""
    job_id = outcome.delivery.job_id
    if not await outbox.record_attempt(conn, outcome, now) or event is None:
        return None
    seq = await conn.fetchval("UPDATE jobs SET seq = seq + 1 WHERE id = $1 RETURNING seq", job_id)
    if seq is None:
        return None
    await conn.execute(writes.INSERT_EVENTS.format(rows=batch.rows_of(1, writes.EVENT_ROW)),
                       batch.encode([(job_id, seq, event.type.value, now, event.phase, event.detail)]))
    job = (await writes.load_jobs(conn, [job_id]))[job_id]
    return Event(job_id, seq, event.type, now, job.queue, job.kind, event.phase, event.detail, job)

