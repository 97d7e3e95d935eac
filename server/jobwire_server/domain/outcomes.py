"""What a phase attempt can end with, and the one pure function that decides what happens next.

The errors a handler raises (`PermanentError`, `RetryableError`) belong to the handler API
(`jobwire.worker`); they are re-exported here."""

from __future__ import annotations

import random
from dataclasses import dataclass

from jobwire.worker.errors import PermanentError, RetryableError

from jobwire_server.domain.models import Job, JobError
from jobwire_server.domain.retry import RetryPolicy
from jobwire_server.domain.transitions import (
    JobChange,
    fail,
    finish_cancel,
    finish_phase,
    finish_phase_then_cancel,
    retry_after_failure,
)

__all__ = ["Cancelled", "Failed", "Outcome", "PermanentError", "RetryableError", "Succeeded", "decide",
           "failure_from_exception"]


@dataclass(frozen=True, slots=True)
class Succeeded:
    result: bytes


@dataclass(frozen=True, slots=True)
class Failed:
    """A failed phase attempt. `type` is the exception type or a code (TIMEOUT, UNKNOWN_KIND…)."""

    message: str
    type: str
    retryable: bool
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The handler stopped (or was abandoned) after a cancel request."""


Outcome = Succeeded | Failed | Cancelled


def failure_from_exception(exc: BaseException) -> Failed:
    """Classify an exception a handler raised."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, PermanentError):
        return Failed(message, type(exc).__name__, retryable=False)
    if isinstance(exc, RetryableError):
        return Failed(message, type(exc).__name__, retryable=True, retry_after=exc.retry_after)
    return Failed(message, type(exc).__name__, retryable=True)


def decide(job: Job, phase_index: int, outcome: Outcome, now: float, policy: RetryPolicy,
           rng: random.Random | None = None) -> JobChange:
    """The next change of a RUNNING job after its phase `phase_index` ended with `outcome`."""
    if isinstance(outcome, Succeeded):
        if job.cancel_requested and phase_index + 1 < len(job.phases):
            return finish_phase_then_cancel(job, phase_index, outcome.result, now)
        return finish_phase(job, phase_index, outcome.result, now)
    if isinstance(outcome, Cancelled) or job.cancel_requested:
        # A failure after a cancel request ends the job as the user asked, not in a retry.
        return finish_cancel(job, now)
    error = JobError(message=outcome.message, type=outcome.type, retryable=outcome.retryable,
                     phase=job.phases[phase_index].name if phase_index < len(job.phases) else "",
                     attempt=job.attempt, interrupted=False, time=now)
    if not outcome.retryable or job.attempts_left <= 0:
        return fail(job, error, now)
    delay = outcome.retry_after if outcome.retry_after is not None else policy.delay(job.attempt, rng)
    return retry_after_failure(job, error, now + delay, now)
