"""Typed, immutable views of jobwire's jobs and events.

These are what the SDK returns instead of raw protobuf messages. They mirror the messages of
``jobwire.v1`` field for field, with Python types: unset timestamps are ``None``, durations are
``timedelta``, enums are :class:`~enum.StrEnum` members whose values are the short names
(``JobState.SUCCEEDED == "SUCCEEDED"``), so they print and serialise as people expect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    """Where a job is in its life. ``UNSPECIFIED`` also stands for values newer than this SDK."""

    UNSPECIFIED = "UNSPECIFIED"
    SCHEDULED = "SCHEDULED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    STALE = "STALE"

    @property
    def is_terminal(self) -> bool:
        """True for SUCCEEDED, FAILED, CANCELLED and STALE: no worker will touch the job again."""
        return self in _TERMINAL_STATES

    @property
    def is_active(self) -> bool:
        """True for SCHEDULED, QUEUED, RUNNING and RETRYING."""
        return self in _ACTIVE_STATES


_TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.STALE})
_ACTIVE_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING, JobState.RETRYING})


class PhaseState(StrEnum):
    """Where a phase is in its life: PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED."""

    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class EventType(StrEnum):
    """The kind of change a :class:`JobEvent` reports."""

    UNSPECIFIED = "UNSPECIFIED"
    SNAPSHOT = "SNAPSHOT"
    ENQUEUED = "ENQUEUED"
    STARTED = "STARTED"
    PHASE_STARTED = "PHASE_STARTED"
    PROGRESS = "PROGRESS"
    PHASE_SUCCEEDED = "PHASE_SUCCEEDED"
    PHASE_FAILED = "PHASE_FAILED"
    RETRY_SCHEDULED = "RETRY_SCHEDULED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    CANCELLED = "CANCELLED"
    INTERRUPTED = "INTERRUPTED"
    STALE = "STALE"
    DELETED = "DELETED"
    WEBHOOK_DELIVERED = "WEBHOOK_DELIVERED"
    WEBHOOK_FAILED = "WEBHOOK_FAILED"
    QUEUED = "QUEUED"


@dataclass(frozen=True)
class Progress:
    """Progress reported by a handler: ``percent`` from 0 to 100 and a status line."""

    percent: float = 0.0
    message: str = ""


@dataclass(frozen=True)
class JobError:
    """One failure of a job attempt."""

    message: str
    type: str = ""
    retryable: bool = False
    phase: str = ""
    attempt: int = 0
    interrupted: bool = False
    time: datetime | None = None


@dataclass(frozen=True)
class Phase:
    """One step of a job, run in order by the job's handler."""

    name: str
    state: PhaseState = PhaseState.PENDING
    progress: Progress = field(default_factory=Progress)
    result: bytes = b""
    error: JobError | None = None
    start_time: datetime | None = None
    finish_time: datetime | None = None


@dataclass(frozen=True)
class Webhook:
    """Where and for which events the server POSTs a job's events."""

    url: str
    events: tuple[EventType, ...] = ()


@dataclass(frozen=True)
class Job:
    """A unit of work and everything known about its execution, as of one read."""

    id: str
    queue: str = ""
    kind: str = ""
    payload: bytes = b""
    priority: int = 0
    state: JobState = JobState.UNSPECIFIED
    attempt: int = 0
    max_attempts: int = 0
    phases: tuple[Phase, ...] = ()
    progress: Progress = field(default_factory=Progress)
    result: bytes = b""
    error: JobError | None = None
    error_history: tuple[JobError, ...] = ()
    dedupe_key: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    webhook: Webhook | None = None
    cancel_requested: bool = False
    cancel_reason: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None
    run_at: datetime | None = None
    start_time: datetime | None = None
    finish_time: datetime | None = None
    last_sequence: int = 0
    timeout: timedelta | None = None
    #: Attempts counted against ``max_attempts`` (a RetryJob starts a fresh budget; attempts a
    #: shutdown interrupted do not count); ``attempt`` counts every attempt ever made.
    counted_attempts: int = 0
    #: At most the queue's ``key_limit`` jobs with the same key run at once; "" means none.
    concurrency_key: str = ""
    #: Why a QUEUED job has not started, as ``get_job`` read it (UNSPECIFIED elsewhere).
    waiting_reason: WaitingReason = field(default_factory=lambda: WaitingReason.UNSPECIFIED)

    @property
    def attempts_left(self) -> int:
        """Attempts the job may still make before it fails for good."""
        return max(0, self.max_attempts - self.counted_attempts)

    @property
    def is_terminal(self) -> bool:
        """True once the job is SUCCEEDED, FAILED, CANCELLED or STALE."""
        return self.state.is_terminal

    def outcome(self) -> JobState | None:
        """How the job finished: SUCCEEDED, FAILED or CANCELLED; ``None`` while it is not finished.

        A STALE job no longer says how it finished, so the outcome is read from its phases and
        errors: any CANCELLED phase (or a cancel reason) means CANCELLED, a recorded error with
        unfinished phases means FAILED, and otherwise SUCCEEDED.
        """
        if self.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
            return self.state
        if self.state is not JobState.STALE:
            return None
        if any(p.state is PhaseState.CANCELLED for p in self.phases) or self.cancel_reason:
            return JobState.CANCELLED
        if all(p.state is PhaseState.SUCCEEDED for p in self.phases) and (self.phases or not self.error):
            return JobState.SUCCEEDED
        return JobState.FAILED


@dataclass(frozen=True)
class JobEvent:
    """One change in a job's life. ``job`` is the job after the change (``None`` on DELETED)."""

    job_id: str
    sequence: int
    type: EventType
    time: datetime | None = None
    phase: str = ""
    job: Job | None = None
    detail: str = ""


class WaitingReason(StrEnum):
    """What holds a QUEUED job back (``Job.waiting_reason``, read by ``get_job``)."""

    UNSPECIFIED = "UNSPECIFIED"
    #: Nothing in its queue's settings: it starts when a worker slot is free.
    NONE = "NONE"
    QUEUE_PAUSED = "QUEUE_PAUSED"
    QUEUE_CONCURRENCY = "QUEUE_CONCURRENCY"
    CONCURRENCY_KEY = "CONCURRENCY_KEY"
    RATE_LIMIT = "RATE_LIMIT"


@dataclass(frozen=True)
class QueueSettings:
    """A queue's stored controls, enforced by every replica; 0 means no limit (or no default)."""

    paused: bool = False
    concurrency_limit: int = 0
    #: Jobs started per second (a token bucket) and the bucket's size.
    rate_limit: float = 0.0
    rate_burst: int = 0
    #: Jobs with the same ``concurrency_key`` running at once.
    key_limit: int = 0
    default_priority: int = 0
    default_max_attempts: int = 0


@dataclass(frozen=True)
class QueueStats:
    """One queue's job counts per state, and the age of its oldest QUEUED job."""

    queue: str
    scheduled: int = 0
    queued: int = 0
    running: int = 0
    retrying: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    stale: int = 0
    oldest_queued_age: timedelta = timedelta(0)
    paused: bool = False
    settings: QueueSettings = field(default_factory=QueueSettings)


@dataclass(frozen=True)
class Queue:
    """One queue: its stored settings, its counts, and the answering server's own limit for it."""

    name: str
    settings: QueueSettings = field(default_factory=QueueSettings)
    stats: QueueStats | None = None
    #: The server's ``--queue-concurrency`` limit (0: none); with ``replica_limit_global`` it counts
    #: every replica's jobs. It applies besides ``settings.concurrency_limit``.
    replica_concurrency_limit: int = 0
    replica_limit_global: bool = False
    #: When its settings last changed (None: it has none).
    update_time: datetime | None = None


@dataclass(frozen=True)
class WebhookAttempt:
    """One POST of a webhook delivery, as the server's delivery log keeps it."""

    number: int
    time: datetime | None
    url: str
    #: 0 when there was no answer (refused address, network error, timeout).
    status_code: int
    latency: timedelta
    #: The start of the answer's body (at most 1 KiB).
    response: str
    error: str


@dataclass(frozen=True)
class WebhookDelivery:
    """One event's delivery to a job's webhook."""

    #: Sent as the ``webhook-id`` header on every attempt.
    id: str
    event_type: EventType
    event_sequence: int
    #: Without its query string.
    url: str
    #: PENDING, DELIVERED, FAILED or STOPPED (after a 410 Gone).
    state: str
    attempts: int
    create_time: datetime | None
    next_attempt_time: datetime | None
    last_error: str
    attempt_log: tuple[WebhookAttempt, ...] = ()


@dataclass(frozen=True)
class PruneResult:
    """What a retention pass did, or with ``dry_run`` would do."""

    marked_stale: int
    deleted: int
    delivery_log_pruned: int
    dry_run: bool


@dataclass(frozen=True)
class BulkResult:
    """What ``cancel_jobs`` or ``retry_jobs`` did, or with ``dry_run`` would act on.

    ``skipped`` counts the matched jobs left unchanged per reason: ``ALREADY_FINISHED``,
    ``ALREADY_CANCELLED``, ``CANCEL_ALREADY_REQUESTED``, ``STILL_ACTIVE``, ``NEEDS_FROM_START``,
    ``NOTHING_TO_RESUME``, ``DEDUPE_KEY_TAKEN``, ``NO_LONGER_MATCHES``, ``NOT_FOUND``.
    ``cancel_requested`` counts the RUNNING jobs among ``changed`` that were asked to stop.
    """

    matched: int
    changed: int
    cancel_requested: int
    skipped: Mapping[str, int]
    dry_run: bool


Payload = bytes | str | Mapping[str, Any] | list[Any] | None
"""A job payload: bytes are sent as they are, ``str`` as UTF-8, a mapping or list as compact JSON."""


@dataclass(frozen=True)
class EnqueueSpec:
    """One job to create with :meth:`jobwire.Client.enqueue_many`; fields as in ``Client.enqueue``.

    ``request_id`` is generated (a UUID4) when left empty, so a retried batch never creates a job twice.
    """

    kind: str
    payload: Payload = None
    queue: str = ""
    priority: int = 0
    delay: timedelta | float | None = None
    run_at: datetime | None = None
    max_attempts: int = 0
    timeout: timedelta | float | None = None
    dedupe_key: str = ""
    request_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    webhook_url: str = ""
    webhook_events: tuple[EventType, ...] = ()
    concurrency_key: str = ""


class OverlapPolicy(StrEnum):
    """What a schedule's firing does while the previous firing's job is still active."""

    #: Not given: the server uses ALLOW.
    UNSPECIFIED = "UNSPECIFIED"
    ALLOW = "ALLOW"
    SKIP = "SKIP"
    CANCEL_PREVIOUS = "CANCEL_PREVIOUS"


class CatchupPolicy(StrEnum):
    """What a schedule does about firing times it missed (the server was down)."""

    #: Not given: the server uses SKIP.
    UNSPECIFIED = "UNSPECIFIED"
    SKIP = "SKIP"
    RUN_ONCE = "RUN_ONCE"


@dataclass(frozen=True)
class ScheduleSpec:
    """What a schedule does and when: the job to enqueue (fields as in ``Client.enqueue``) and exactly
    one of ``cron`` (read in ``time_zone``, UTC by default) and ``interval``.

    Durations take a ``timedelta`` or seconds. The server returns the spec with its effective values:
    ``payload`` as bytes, durations as ``timedelta``, the kind's defaults and the policies filled in.
    ``priority`` and ``max_attempts`` left 0 stay 0: each firing takes the queue's defaults of that moment.
    """

    kind: str
    cron: str = ""
    interval: timedelta | float | None = None
    time_zone: str = ""
    payload: Payload = None
    queue: str = ""
    priority: int = 0
    max_attempts: int = 0
    timeout: timedelta | float | None = None
    dedupe_key: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    webhook_url: str = ""
    webhook_events: tuple[EventType, ...] = ()
    jitter: timedelta | float | None = None
    overlap_policy: OverlapPolicy = OverlapPolicy.UNSPECIFIED
    catchup_policy: CatchupPolicy = CatchupPolicy.UNSPECIFIED
    description: str = ""
    concurrency_key: str = ""


@dataclass(frozen=True)
class Schedule:
    """A stored schedule and where it stands."""

    id: str
    spec: ScheduleSpec
    paused: bool = False
    #: Declared in the server's config file: it can be paused and triggered, not updated or deleted.
    from_config: bool = False
    #: Its next firing times (at most 5), the earliest first; empty while paused.
    next_fire_times: tuple[datetime, ...] = ()
    last_fire_time: datetime | None = None
    last_job_id: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True)
class TriggerResult:
    """What ``trigger_schedule`` did: the job it enqueued, or with ``skipped`` (overlap policy SKIP)
    the previous firing's job, still active."""

    job: Job | None
    skipped: bool = False
