"""What the user-facing actions (CancelJob, RetryJob) do to a job in each state."""

from __future__ import annotations

from jobwire_server.domain.errors import InvalidTransition
from jobwire_server.domain.models import Job
from jobwire_server.domain.states import WAITING_STATES, JobState
from jobwire_server.domain.transitions import JobChange, cancel_waiting, request_cancel, retry_by_user


def plan_cancel(job: Job, reason: str, now: float) -> JobChange | None:
    """Waiting jobs are cancelled at once; a running one is asked to stop; a cancelled one is left
    as it is (no new event); a finished one cannot be cancelled."""
    if job.state is JobState.CANCELLED:
        return None
    if job.state in WAITING_STATES:
        return cancel_waiting(job, reason, now)
    if job.state is JobState.RUNNING:
        return None if job.cancel_requested else request_cancel(job, reason, now)
    raise InvalidTransition(job.id, job.state.value, "cancel")


def plan_retry(job: Job, from_start: bool, now: float) -> JobChange:
    """FAILED or CANCELLED (or STALE) jobs go back to the queue; SUCCEEDED ones only from the start."""
    if job.state is JobState.SUCCEEDED and not from_start:
        raise InvalidTransition(job.id, job.state.value, "retry without from_start")
    if job.state not in (JobState.FAILED, JobState.CANCELLED, JobState.STALE, JobState.SUCCEEDED):
        raise InvalidTransition(job.id, job.state.value, "retry")
    if not from_start and job.next_phase >= len(job.phases):
        raise InvalidTransition(job.id, job.state.value, "resume (every phase already succeeded; use from_start)")
    return retry_by_user(job, from_start, now)
