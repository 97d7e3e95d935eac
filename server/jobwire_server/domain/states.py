"""Job, phase and event vocabularies, and the state groups the rest of the code reasons with."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    SCHEDULED = "SCHEDULED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    STALE = "STALE"


class PhaseState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class EventType(StrEnum):
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


#: States in which a job still has work ahead of it; a dedupe_key folds into these.
ACTIVE_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING, JobState.RETRYING})
#: States a job waits in without a worker; cancelling them is immediate.
WAITING_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RETRYING})
#: Outcomes that end a job's run.
TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
#: Events after which a watch stream ends.
FINAL_EVENTS = frozenset({EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED, EventType.DELETED})
#: Phases still to run (or running) in the current attempt.
UNFINISHED_PHASES = frozenset({PhaseState.PENDING, PhaseState.RUNNING})
