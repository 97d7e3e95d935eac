"""The storage contract: intention-named operations every backend implements.

Writes are operations (`InsertJobs`, `ApplyChange`, `ClaimJobs`…, the `WriteOp` union) that
`JobStore.write` commits together in one transaction: the group commit the engine's writer builds
on. An operation refused for its own reason (a `JobwireError`: not found, invalid transition,
reused request id) writes nothing and comes back as that error, without failing the others in
its batch. The single-operation methods (`insert_jobs`, `apply_changes`…) are `write` with one
operation, for callers outside the engine and for the conformance suite.

State changes are `JobChange`s from the domain state machine, written as guarded updates
(`… WHERE state IN guard AND attempt = fence`) together with their phase and event rows; a change
whose guard no longer holds writes nothing and comes back None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from jobwire_server.domain.deliveries import AttemptOutcome, Delivery, DeliveryInfo
from jobwire_server.domain.kinds import KindSpec
from jobwire_server.domain.models import Event, Job, NewJob, PendingEvent, QueueStats, fast_init
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.queues import QueueSettings
from jobwire_server.domain.schedules import Firing, Schedule
from jobwire_server.domain.states import JobState
from jobwire_server.domain.transitions import JobChange


class StoreError(Exception):
    """The database cannot be opened or used; the message names it (a file, or a URL without its
    password) and what to check."""


@fast_init
@dataclass(frozen=True, slots=True)
class Committed:
    """A change that was written: the job after it and its numbered events."""

    job: Job
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class InsertResult:
    job: Job
    #: True when a dedupe_key folded this request into an active job.
    deduplicated: bool
    #: False when a request_id or dedupe_key returned an existing job.
    created: bool
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class RemoteRoom:
    """Room on remote workers: up to `room` jobs of these kinds (and queues; empty: any queue)."""

    kinds: tuple[str, ...]
    queues: tuple[str, ...]
    room: int


@dataclass(frozen=True, slots=True)
class ClaimScope:
    """Which QUEUED jobs one pass of a claim may take: none of the `exclude` kinds (this process's
    slots never take the kinds remote workers run); with `include`, only jobs of those kinds, and of
    `queues` when it is not empty (a remote worker's room)."""

    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] | None = None
    queues: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClaimParams:
    now: float
    limit: int
    owner: str
    lease_expires: float
    #: Queues with a concurrency limit → how many more jobs of that queue may start now.
    queue_room: Mapping[str, int] = field(default_factory=dict)
    #: Queues whose limit counts the jobs running on every process sharing the store → the limit.
    #: A store that only one process uses ignores it (`queue_room` already says it all).
    global_limits: Mapping[str, int] = field(default_factory=dict)
    #: Kinds that run on remote workers: `limit` (this process's own slots) never claims them.
    remote_kinds: frozenset[str] = frozenset()
    #: Jobs of remote kinds to claim besides `limit`: as many as the connected workers' credit.
    remote: Sequence[RemoteRoom] = ()


@dataclass(frozen=True, slots=True)
class RetentionCounts:
    marked_stale: int = 0
    deleted: int = 0
    log_pruned: int = 0


#: Builds the change to make from the job as stored; None means "nothing to do".
ChangeBuilder = Callable[[Job], JobChange | None]


# ---------------------------------------------------------------------- write operations
# Each names its result type in its docstring. Builders run inside the transaction: keep them pure.


@dataclass(frozen=True, slots=True)
class InsertJobs:
    """→ list[InsertResult]. Create jobs (all or none), honouring request_id and dedupe_key."""

    jobs: Sequence[NewJob]
    now: float
    request_ttl: float


@dataclass(frozen=True, slots=True)
class UpdateJob:
    """→ (Job, Committed | None). Read the job, build a change from it, write it guarded."""

    job_id: str
    build: ChangeBuilder
    #: Only when the job's lease ran out before this time (a rescue): a lease another process
    #: renewed since the rescuer looked makes it "nothing to do".
    lease_expired_before: float | None = None


@dataclass(frozen=True, slots=True)
class UpdateJobs:
    """→ list[(Job, Committed) | JobwireError], one per id in order: UpdateJob for each job of a
    batch (a bulk action), the jobs read and their changes written a statement per table. A job
    the builder refuses (raising a `JobwireError`), or that does not exist (`JobNotFound`), gets
    that error and writes nothing; the others are written."""

    job_ids: Sequence[str]
    build: ChangeBuilder


@fast_init
@dataclass(frozen=True, slots=True)
class ApplyChange:
    """→ Committed | None. A guarded change computed outside (the executor's outcomes, progress)."""

    change: JobChange


@dataclass(frozen=True, slots=True)
class ClaimJobs:
    """→ ClaimResult. Promote due jobs, then claim up to `params.limit` ready ones."""

    params: ClaimParams


@dataclass(frozen=True, slots=True)
class LeaseRenewal:
    renewed: int
    #: Renewed jobs whose cancel was requested → its reason. A backstop for a request made on
    #: another replica whose notification was lost.
    cancel_requested: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RenewLeases:
    """→ LeaseRenewal."""

    owner: str
    job_ids: Sequence[str]
    expires: float


@dataclass(frozen=True, slots=True)
class TakeDeliveries:
    """→ list[Delivery]. Lease up to `limit` due webhook deliveries so they are sent once."""

    now: float
    limit: int
    lease_until: float


@dataclass(frozen=True, slots=True)
class RecordDeliveryAttempt:
    """→ Event | None. Log an attempt; with `event`, append it to the job (numbered)."""

    outcome: AttemptOutcome
    now: float
    event: PendingEvent | None


@dataclass(frozen=True, slots=True)
class ReleaseDeliveryLeases:
    """→ int. At start: deliveries a previous process had taken are due again. A store that only
    one process uses releases every lease; a shared one only those that ran out before `now`
    (another replica's live lease is its own)."""

    now: float


@dataclass(frozen=True, slots=True)
class MarkStale:
    """→ list[Committed]. Up to `limit` terminal jobs finished before their cutoff become STALE."""

    finished_before: Mapping[JobState, float]
    now: float
    limit: int


@dataclass(frozen=True, slots=True)
class DeleteStale:
    """→ list[Event] (DELETED, id only). Delete up to `limit` jobs STALE since before `stale_before`."""

    stale_before: float
    now: float
    limit: int


@dataclass(frozen=True, slots=True)
class PruneDeliveryLog:
    """→ int."""

    before: float
    limit: int


@dataclass(frozen=True, slots=True)
class PruneRequests:
    """→ int."""

    now: float
    limit: int


# ---------------------------------------------------------------------- schedules
# Refused on their own like InsertJobs and UpdateJob (ScheduleNotFound, ScheduleExists, what a
# builder raises).


@dataclass(frozen=True, slots=True)
class FirePlan:
    """How to fire one schedule: the request id its firing would use (None: nothing to fire), and
    the firing itself from the schedule, its previous firing's job and whether that request id is
    known already. Both are pure (`domain.schedules`)."""

    key: Callable[[Schedule], str | None]
    plan: Callable[[Schedule, Job | None, bool], Firing | None]


@dataclass(frozen=True, slots=True)
class Fired:
    #: The schedule as written after the firing.
    schedule: Schedule
    #: The job enqueued, or the one its request id or dedupe key returned; None when none ran.
    inserted: InsertResult | None
    #: The previous job's cancel (overlap policy CANCEL_PREVIOUS).
    cancelled: Committed | None
    #: The overlap policy SKIP enqueued nothing: `previous` is still active.
    skipped: bool
    previous: Job | None


@dataclass(frozen=True, slots=True)
class SchedulesFired:
    fired: list[Fired]
    #: The earliest `next_fire` of any schedule after the firings.
    next_due: float | None


@dataclass(frozen=True, slots=True)
class FireSchedules:
    """→ SchedulesFired. Fire every due schedule (`next_fire <= now`, earliest first, at most
    `limit`), or with `schedule_id` that one whatever its timing (TriggerSchedule; ScheduleNotFound).
    Each firing (its job inserted as InsertJobs does, the previous job's cancel, the schedule's new
    row) is written in this transaction, so it can be neither lost nor doubled."""

    now: float
    plan: FirePlan
    request_ttl: float
    limit: int = 100
    schedule_id: str | None = None


@dataclass(frozen=True, slots=True)
class CreateSchedule:
    """→ Schedule. ScheduleExists when the id is taken."""

    schedule: Schedule


@dataclass(frozen=True, slots=True)
class ChangeSchedule:
    """→ Schedule. Read the schedule (ScheduleNotFound), build its new row, write it."""

    schedule_id: str
    build: Callable[[Schedule], Schedule]


@dataclass(frozen=True, slots=True)
class DeleteSchedule:
    """→ Schedule (as it was). `check` may refuse by raising."""

    schedule_id: str
    check: Callable[[Schedule], None] | None = None


@dataclass(frozen=True, slots=True)
class SyncSchedules:
    """→ SchedulesSynced. Read every schedule; `plan` returns the rows to write (created or
    replaced) and the ids to delete."""

    plan: Callable[[Sequence[Schedule]], tuple[Sequence[Schedule], Sequence[str]]]


@dataclass(frozen=True, slots=True)
class SchedulesSynced:
    written: list[Schedule]
    deleted: list[str]
    next_due: float | None


# ---------------------------------------------------------------------- kinds


@dataclass(frozen=True, slots=True)
class DeclareKinds:
    """→ list[KindSpec]. Record the kinds a worker declares (new ones, or new defaults of known ones);
    refused as a whole with KindMismatch when one changes a known kind's phases."""

    kinds: Sequence[KindSpec]
    now: float


# ---------------------------------------------------------------------- queue settings


@dataclass(frozen=True, slots=True)
class ChangeQueue:
    """→ QueueSettings. Read the queue's settings (the defaults, created at `now`, when it has no
    row yet), build the new ones, write them. On a shared store the row is locked, so a change and
    a claim of the queue (which locks it too) take turns."""

    name: str
    build: Callable[[QueueSettings], QueueSettings]
    now: float


ScheduleOp = FireSchedules | CreateSchedule | ChangeSchedule | DeleteSchedule | SyncSchedules

WriteOp = (InsertJobs | UpdateJob | ApplyChange | ClaimJobs | RenewLeases | TakeDeliveries | RecordDeliveryAttempt
           | ReleaseDeliveryLeases | MarkStale | DeleteStale | PruneDeliveryLog | PruneRequests
           | ScheduleOp | UpdateJobs | DeclareKinds | ChangeQueue)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    promoted: list[Committed]
    claimed: list[Committed]
    #: Earliest run_at of a SCHEDULED or RETRYING job after the claim.
    next_due: float | None
    #: When a rate-limited queue whose QUEUED jobs wait for tokens next has one (None: none waits).
    next_token: float | None = None


class JobStore(Protocol):
    async def open(self) -> None:
        """Connect and migrate; raises a clear error when the schema is newer than the code."""
        ...

    async def close(self) -> None: ...

    async def probe(self) -> None:
        """A small real write; raises the `StorageError` that keeps writes failing, if any."""
        ...

    async def write(self, ops: Sequence[WriteOp]) -> list[Any]:
        """Run every operation, in order, in one transaction; one result per operation (the
        `JobwireError` it was refused with, for one that was). Any other error fails them all."""
        ...

    async def insert_jobs(self, jobs: Sequence[NewJob], now: float, request_ttl: float) -> list[InsertResult]:
        """Create jobs (all or none), honouring request_id and dedupe_key."""
        ...

    async def get_job(self, job_id: str) -> Job:
        """The job, or JobNotFound."""
        ...

    async def list_jobs(self, query: JobQuery) -> tuple[list[Job], str | None]:
        """One page, newest first, and the id to continue after (None on the last page)."""
        ...

    async def list_job_ids(self, query: JobQuery) -> list[str]:
        """Ids of up to `query.page_size` matching jobs, newest first, after its cursor."""
        ...

    async def count_jobs(self, query: JobQuery) -> int:
        """How many jobs match the query's filters (its page size and cursor are ignored)."""
        ...

    async def update_jobs(self, job_ids: Sequence[str], build: ChangeBuilder) -> list[Any]:
        """`UpdateJobs` in a transaction of its own."""
        ...

    async def claim_jobs(self, params: ClaimParams) -> tuple[list[Committed], list[Committed]]:
        """Promote due SCHEDULED/RETRYING jobs, then claim up to `limit` QUEUED ones in priority,
        run_at, id order, in one transaction. Returns (promoted, claimed)."""
        ...

    async def apply_changes(self, changes: Sequence[JobChange]) -> list[Committed | None]:
        """Write many guarded changes in one transaction (group commit)."""
        ...


    async def update_job(self, job_id: str, build: ChangeBuilder) -> tuple[Job, Committed | None]:
        """Read the job inside a write transaction, build a change from it, write it guarded."""
        ...

    async def renew_leases(self, owner: str, job_ids: Sequence[str], expires: float) -> int: ...

    async def expired_leases(self, now: float, limit: int) -> list[Job]:
        """RUNNING jobs whose lease ran out before `now`."""
        ...

    async def next_wakeup(self) -> float | None:
        """Earliest run_at of a SCHEDULED or RETRYING job."""
        ...

    async def next_lease_expiry(self) -> float | None: ...

    async def events_after(self, job_id: str, sequence: int, limit: int) -> list[Event]: ...

    async def queue_stats(self, queue: str, now: float) -> list[QueueStats]: ...

    # Webhook outbox: rows are written with their events by every write above.

    async def take_deliveries(self, now: float, limit: int, lease_until: float) -> list[Delivery]:
        """Lease up to `limit` due deliveries so they are sent once."""
        ...

    async def record_delivery_attempt(
        self, outcome: AttemptOutcome, now: float, event: PendingEvent | None
    ) -> Event | None:
        """Log an attempt; with `event`, append it to the job (numbered) in the same transaction.
        A delivery whose job retention deleted is a no-op (None)."""
        ...

    async def next_delivery_due(self) -> float | None: ...

    async def release_delivery_leases(self, now: float) -> int: ...

    async def job_deliveries(self, job_id: str) -> list[DeliveryInfo]: ...

    # Retention: each call is one short transaction over at most `limit` rows.

    async def mark_stale(self, finished_before: Mapping[JobState, float], now: float, limit: int) -> list[Committed]:
        ...

    async def delete_stale(self, stale_before: float, now: float, limit: int) -> list[Event]: ...

    async def prune_delivery_log(self, before: float, limit: int) -> int: ...

    async def prune_requests(self, now: float, limit: int) -> int: ...

    async def retention_preview(
        self, finished_before: Mapping[JobState, float], stale_before: float | None, log_before: float | None
    ) -> RetentionCounts: ...

    # Schedules: written by the operations above (FireSchedules, CreateSchedule…).

    async def get_schedule(self, schedule_id: str) -> Schedule:
        """The schedule, or ScheduleNotFound."""
        ...

    async def list_schedules(self, after_id: str, limit: int) -> tuple[list[Schedule], str | None]:
        """One page by id, after `after_id` (all when empty), and the id to continue after (None on
        the last page)."""
        ...

    async def next_schedule_fire(self) -> float | None:
        """The earliest `next_fire` of any schedule (paused ones have none)."""
        ...

    # Kinds remote workers declared (written by DeclareKinds).

    async def list_kinds(self) -> list[KindSpec]:
        """Every declared kind, by name."""
        ...

    # Queue settings: written by ChangeQueue, read by every claim.

    async def queue_settings(self, name: str) -> QueueSettings | None:
        """The queue's stored settings; None when it has none (every default)."""
        ...

    async def list_queue_settings(self) -> list[QueueSettings]:
        """Every queue's stored settings, by name."""
        ...

    async def running_counts(self, queue: str, key: str) -> tuple[int, int]:
        """RUNNING jobs of `queue`, and of those the ones with concurrency key `key` (0 for no key)."""
        ...
