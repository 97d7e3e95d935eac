"""The job state machine: which transitions exist, and one constructor per transition.

Every constructor is pure: it takes the job as the writer last saw it and returns a
:class:`JobChange` holding the new job, the states the stored row must still be in (the guard),
the attempt that must still be current (the fence), the phases that changed and the events to
emit. The store writes a change as one guarded ``UPDATE … WHERE state IN (…) AND attempt = ?``
with its phase and event rows; when the guard no longer holds, nothing is written.

Who moves a job out of each state:

========== ======================================================================
SCHEDULED  dispatcher when due (→ QUEUED); CancelJob, CancelJobs (→ CANCELLED)
QUEUED     dispatcher claim (→ RUNNING); CancelJob, CancelJobs (→ CANCELLED)
RUNNING    the executor holding the attempt, in-process or for a remote worker (→ SUCCEEDED,
           RETRYING, FAILED, CANCELLED, QUEUED on shutdown or a hand-back); CancelJob(s) only flag
           it; rescuer on lease expiry (→ QUEUED)
RETRYING   dispatcher when due (→ QUEUED); CancelJob, CancelJobs (→ CANCELLED)
SUCCEEDED  RetryJob(s) with from_start (→ QUEUED); retention (→ STALE)
FAILED     RetryJob(s) (→ QUEUED); retention (→ STALE)
CANCELLED  RetryJob(s) (→ QUEUED); retention (→ STALE)
STALE      RetryJob(s) of a failed/cancelled job (→ QUEUED); retention deletes it
========== ======================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from jobwire_server.domain.models import NO_PROGRESS, Job, JobError, PendingEvent, Phase, Progress, evolve, fast_init
from jobwire_server.domain.states import (
    TERMINAL_STATES,
    UNFINISHED_PHASES,
    WAITING_STATES,
    EventType,
    JobState,
    PhaseState,
)

S = JobState

#: The allowed job-state transitions. A table test checks every constructor against it.
ALLOWED: dict[JobState, frozenset[JobState]] = {
    S.SCHEDULED: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED}),
    S.RUNNING: frozenset({S.RUNNING, S.SUCCEEDED, S.RETRYING, S.FAILED, S.CANCELLED, S.QUEUED}),
    S.RETRYING: frozenset({S.QUEUED, S.CANCELLED}),
    S.SUCCEEDED: frozenset({S.QUEUED, S.STALE}),
    S.FAILED: frozenset({S.QUEUED, S.STALE}),
    S.CANCELLED: frozenset({S.QUEUED, S.STALE}),
    S.STALE: frozenset({S.QUEUED}),
}


class Reason(StrEnum):
    """Why a transition happened; kept with the change for logs and tests."""

    BECAME_DUE = "became due"
    CLAIMED = "claimed by a worker"
    PHASE_STARTED = "phase started"
    PHASE_SUCCEEDED = "phase succeeded"
    PROGRESS = "progress reported"
    COMPLETED = "completed"
    RETRY_AFTER_FAILURE = "retry after failure"
    FAILED_PERMANENTLY = "failed permanently"
    ATTEMPTS_EXHAUSTED = "attempts exhausted"
    CANCEL_REQUESTED = "cancel requested by user"
    CANCELLED_BY_USER = "cancelled by user"
    CANCELLED_WHILE_RUNNING = "cancelled while running"
    INTERRUPTED_BY_SHUTDOWN = "interrupted by shutdown"
    HANDED_BACK = "handed back by a remote worker"
    LEASE_EXPIRED = "lease expired"
    RETRIED_BY_USER = "retried by user"
    MADE_STALE = "made stale by retention"


@fast_init
@dataclass(frozen=True, slots=True)
class JobChange:
    """A guarded write: apply `job` only if the stored row is in `guard` (and at `attempt`)."""

    reason: Reason
    job: Job
    guard: frozenset[JobState]
    events: tuple[PendingEvent, ...]
    changed_phases: tuple[int, ...] = ()
    #: Fence: the attempt that must still be current; None for changes made outside an attempt.
    attempt: int | None = None

    @property
    def target(self) -> JobState:
        return self.job.state


_CLAIM_GUARD = frozenset({S.QUEUED})
#: Guards (the claim's, and every change of the worker holding an attempt) and records shared by
#: every change that needs them (all immutable), rather than built again for each job.
_RUNNING = frozenset({S.RUNNING})
_STARTED = PendingEvent(EventType.STARTED)
_SUCCEEDED = PendingEvent(EventType.SUCCEEDED)
_DONE = Progress(100.0)


def _set_phase(phases: tuple[Phase, ...], index: int, phase: Phase) -> tuple[Phase, ...]:
    return (*phases[:index], phase, *phases[index + 1 :])


def _running_phase_index(job: Job) -> int | None:
    for index, phase in enumerate(job.phases):
        if phase.state is PhaseState.RUNNING:
            return index
    return None


# ----------------------------------------------------------------------------- dispatcher


def become_due(job: Job, now: float) -> JobChange:
    """A SCHEDULED or RETRYING job whose run_at has come joins the queue."""
    new = evolve(job, state=S.QUEUED, update_time=now)
    return JobChange(Reason.BECAME_DUE, new, frozenset({S.SCHEDULED, S.RETRYING}), (PendingEvent(EventType.QUEUED),))


def claim(job: Job, now: float, lease_expires: float) -> JobChange:
    """A worker takes a QUEUED job: a new attempt starts at the first unfinished phase."""
    del lease_expires  # kept by the store beside the row, not part of the job's public state
    phases, started = start_attempt(job.phases, now)
    new = evolve(job, state=S.RUNNING, attempt=job.attempt + 1, phases=phases, start_time=now,
                  finish_time=None, update_time=now)
    return claimed(new, started)


@fast_init
@dataclass(frozen=True, slots=True)
class AttemptStart:
    """What starting an attempt does to the phases: the claim's events and the phases it changed."""

    events: tuple[PendingEvent, ...]
    changed_phases: tuple[int, ...]


def start_attempt(phases: tuple[Phase, ...], now: float) -> tuple[tuple[Phase, ...], AttemptStart]:
    """The phases of a new attempt (the first unfinished one RUNNING from `now`), and what `claim`
    emits and changes for them."""
    index = 0
    while index < len(phases) and phases[index].state is PhaseState.SUCCEEDED:
        index += 1
    if index == len(phases):  # every phase has succeeded (or there is none): nothing to start
        return phases, AttemptStart((_STARTED,), ())
    running = evolve(phases[index], state=PhaseState.RUNNING, start_time=now, finish_time=None, error=None,
                     progress=NO_PROGRESS)
    events = (_STARTED, PendingEvent(EventType.PHASE_STARTED, running.name))
    return _set_phase(phases, index, running), AttemptStart(events, (index,))


def claimed(job: Job, started: AttemptStart) -> JobChange:
    """`claim`'s change for `job` as the claim made it (RUNNING, its attempt counted, its phases from
    `start_attempt`). A store whose claim is one `UPDATE … RETURNING` builds the job from the
    returned row and the started phases, without building the QUEUED job first."""
    return JobChange(Reason.CLAIMED, job, _CLAIM_GUARD, started.events, started.changed_phases)


# ----------------------------------------------------------------------------- executor


def report_progress(job: Job, index: int, percent: float, message: str, now: float) -> JobChange:
    """The running phase reports progress; the job's overall progress is the phases' average."""
    progress = Progress(percent, message)
    phases = _set_phase(job.phases, index, evolve(job.phases[index], progress=progress))
    overall = Progress(_overall_percent(phases), message)
    new = evolve(job, phases=phases, progress=overall, update_time=now)
    event = PendingEvent(EventType.PROGRESS, phases[index].name, message)
    return JobChange(Reason.PROGRESS, new, _RUNNING, (event,), (index,), job.attempt)


def _overall_percent(phases: tuple[Phase, ...]) -> float:
    if not phases:
        return 100.0
    done = sum(100.0 if p.state is PhaseState.SUCCEEDED else p.progress.percent for p in phases)
    return round(done / len(phases), 3)


def _succeed_phase(job: Job, index: int, result: bytes, now: float) -> tuple[Phase, ...]:
    message = job.phases[index].progress.message
    done = evolve(job.phases[index], state=PhaseState.SUCCEEDED, result=result, finish_time=now,
                   progress=Progress(100.0, message) if message else _DONE)
    return _set_phase(job.phases, index, done)


def finish_phase(job: Job, index: int, result: bytes, now: float) -> JobChange:
    """The running phase returned: record its result, then start the next phase or succeed."""
    phases = _succeed_phase(job, index, result, now)
    done = phases[index]
    events = [PendingEvent(EventType.PHASE_SUCCEEDED, done.name)]
    changed = [index]
    if index + 1 < len(phases):
        following = evolve(phases[index + 1], state=PhaseState.RUNNING, start_time=now, finish_time=None,
                            error=None, progress=NO_PROGRESS)
        phases = _set_phase(phases, index + 1, following)
        events.append(PendingEvent(EventType.PHASE_STARTED, following.name))
        changed.append(index + 1)
        new = evolve(job, phases=phases, progress=Progress(_overall_percent(phases)), update_time=now)
        return JobChange(Reason.PHASE_SUCCEEDED, new, _RUNNING, tuple(events), tuple(changed),
                         job.attempt)
    message = job.progress.message
    new = evolve(job, state=S.SUCCEEDED, phases=phases, progress=Progress(100.0, message) if message else _DONE,
                  error=None, finish_time=now, update_time=now)
    events.append(_SUCCEEDED)
    return JobChange(Reason.COMPLETED, new, _RUNNING, tuple(events), tuple(changed), job.attempt)


def _fail_running_phase(job: Job, error: JobError, now: float) -> tuple[tuple[Phase, ...], list[int]]:
    index = _running_phase_index(job)
    if index is None:
        return job.phases, []
    failed = evolve(job.phases[index], state=PhaseState.FAILED, error=error, finish_time=now)
    return _set_phase(job.phases, index, failed), [index]


def retry_after_failure(job: Job, error: JobError, run_at: float, now: float) -> JobChange:
    """A retryable failure with attempts left: wait in RETRYING until `run_at`."""
    phases, changed = _fail_running_phase(job, error, now)
    new = evolve(job, state=S.RETRYING, phases=phases, error=error, error_history=(*job.error_history, error),
                  run_at=run_at, update_time=now)
    events = (PendingEvent(EventType.PHASE_FAILED, error.phase, error.message),
              PendingEvent(EventType.RETRY_SCHEDULED, error.phase, error.message))
    return JobChange(Reason.RETRY_AFTER_FAILURE, new, _RUNNING, events if changed else events[1:],
                     tuple(changed), job.attempt)


def fail(job: Job, error: JobError, now: float) -> JobChange:
    """A permanent error, or a retryable one with no attempts left: the job is dead-lettered."""
    phases, changed = _fail_running_phase(job, error, now)
    reason = Reason.ATTEMPTS_EXHAUSTED if error.retryable else Reason.FAILED_PERMANENTLY
    new = evolve(job, state=S.FAILED, phases=phases, error=error, error_history=(*job.error_history, error),
                  finish_time=now, update_time=now)
    events = (PendingEvent(EventType.PHASE_FAILED, error.phase, error.message),
              PendingEvent(EventType.FAILED, error.phase, error.message))
    return JobChange(reason, new, _RUNNING, events if changed else events[1:], tuple(changed),
                     job.attempt)


def _cancel_unfinished(job: Job, now: float) -> tuple[tuple[Phase, ...], tuple[int, ...]]:
    changed = tuple(i for i, p in enumerate(job.phases) if p.state in UNFINISHED_PHASES)
    phases = tuple(
        evolve(p, state=PhaseState.CANCELLED, finish_time=now) if i in changed else p
        for i, p in enumerate(job.phases)
    )
    return phases, changed


def finish_cancel(job: Job, now: float) -> JobChange:
    """The worker of a job whose cancel was requested has stopped (or was abandoned)."""
    phases, changed = _cancel_unfinished(job, now)
    new = evolve(job, state=S.CANCELLED, phases=phases, finish_time=now, update_time=now)
    event = PendingEvent(EventType.CANCELLED, detail=job.cancel_reason)
    return JobChange(Reason.CANCELLED_WHILE_RUNNING, new, _RUNNING, (event,), changed, job.attempt)


def finish_phase_then_cancel(job: Job, index: int, result: bytes, now: float) -> JobChange:
    """A phase returned after a cancel was requested: keep its result, cancel the phases after it."""
    phases = _succeed_phase(job, index, result, now)
    cancelled, changed = _cancel_unfinished(evolve(job, phases=phases), now)
    new = evolve(job, state=S.CANCELLED, phases=cancelled, finish_time=now, update_time=now)
    events = (PendingEvent(EventType.PHASE_SUCCEEDED, phases[index].name),
              PendingEvent(EventType.CANCELLED, detail=job.cancel_reason))
    return JobChange(Reason.CANCELLED_WHILE_RUNNING, new, _RUNNING, events,
                     tuple(sorted({index, *changed})), job.attempt)


def _interrupt(job: Job, error: JobError, now: float, reason: Reason, *, counted: bool) -> JobChange:
    index = _running_phase_index(job)
    phases: tuple[Phase, ...] = job.phases
    changed: tuple[int, ...] = ()
    if index is not None:
        phases = _set_phase(phases, index, evolve(phases[index], state=PhaseState.PENDING, start_time=None,
                                                   progress=NO_PROGRESS))
        changed = (index,)
    new = evolve(job, state=S.QUEUED, phases=phases, error=error, error_history=(*job.error_history, error),
                  uncounted_attempts=job.uncounted_attempts + (0 if counted else 1), run_at=now, update_time=now)
    event = PendingEvent(EventType.INTERRUPTED, error.phase, error.message)
    return JobChange(reason, new, _RUNNING, (event,), changed, job.attempt)


def interrupt_by_shutdown(job: Job, error: JobError, now: float) -> JobChange:
    """Shutdown stopped the attempt: back to the queue, the attempt not spent."""
    return _interrupt(job, error, now, Reason.INTERRUPTED_BY_SHUTDOWN, counted=False)


def hand_back(job: Job, error: JobError, now: float) -> JobChange:
    """A remote worker never started its assignment (no `started` in time) or gave the job back
    without an outcome: back to the queue, the attempt not spent."""
    return _interrupt(job, error, now, Reason.HANDED_BACK, counted=False)


def rescue_expired(job: Job, error: JobError, now: float) -> JobChange:
    """The worker's lease ran out (it crashed): back to the queue; the attempt counts, so a job
    that kills its worker every time still ends in FAILED."""
    if job.cancel_requested:  # the user's cancel outlives the crashed worker
        return finish_cancel(job, now)
    if job.attempts_left <= 0:
        return fail(job, error, now)
    return _interrupt(job, error, now, Reason.LEASE_EXPIRED, counted=True)


# ----------------------------------------------------------------------------- user actions


def cancel_waiting(job: Job, reason: str, now: float) -> JobChange:
    """Cancel a job no worker holds: immediate, all unfinished phases cancelled."""
    phases, changed = _cancel_unfinished(job, now)
    new = evolve(job, state=S.CANCELLED, phases=phases, cancel_requested=True, cancel_reason=reason,
                  finish_time=now, update_time=now)
    event = PendingEvent(EventType.CANCELLED, detail=reason)
    return JobChange(Reason.CANCELLED_BY_USER, new, WAITING_STATES, (event,), changed)


def request_cancel(job: Job, reason: str, now: float) -> JobChange:
    """Ask the worker holding a RUNNING job to stop; it finishes the cancel when it does."""
    new = evolve(job, cancel_requested=True, cancel_reason=reason, update_time=now)
    event = PendingEvent(EventType.CANCEL_REQUESTED, detail=reason)
    return JobChange(Reason.CANCEL_REQUESTED, new, _RUNNING, (event,), (), job.attempt)


def retry_by_user(job: Job, from_start: bool, now: float) -> JobChange:
    """RetryJob: back to the queue with a fresh attempt budget (the attempt number keeps rising,
    so a worker of an earlier attempt stays fenced out)."""
    # Nothing left to resume (a STALE job that had succeeded): run it again from the start.
    reset_all = from_start or job.next_phase >= len(job.phases)

    def reset(p: Phase) -> Phase:
        if not reset_all and p.state is PhaseState.SUCCEEDED:
            return p
        return Phase(name=p.name)

    phases = tuple(reset(p) for p in job.phases)
    changed = tuple(i for i, (old, p) in enumerate(zip(job.phases, phases, strict=True)) if old != p)
    new = evolve(job, state=S.QUEUED, phases=phases, uncounted_attempts=job.attempt, cancel_requested=False,
                  cancel_reason="", progress=Progress(_overall_percent(phases)) if not reset_all else NO_PROGRESS,
                  error=None, run_at=now, start_time=None, finish_time=None, update_time=now)
    guard = frozenset({S.FAILED, S.CANCELLED, S.STALE} | ({S.SUCCEEDED} if from_start else set()))
    detail = "retried from the start" if from_start else "retried from the first unfinished phase"
    return JobChange(Reason.RETRIED_BY_USER, new, guard, (PendingEvent(EventType.QUEUED, detail=detail),), changed)


def make_stale(job: Job, now: float) -> JobChange:
    """Retention: a terminal job past its keep time becomes STALE."""
    new = evolve(job, state=S.STALE, update_time=now)
    return JobChange(Reason.MADE_STALE, new, TERMINAL_STATES, (PendingEvent(EventType.STALE),))


#: Every constructor, for the table test that checks each against ALLOWED.
CONSTRUCTORS: tuple[Callable[..., JobChange], ...] = (
    become_due, claim, report_progress, finish_phase, finish_phase_then_cancel, retry_after_failure, fail,
    finish_cancel,
    interrupt_by_shutdown, hand_back, rescue_expired, cancel_waiting, request_cancel, retry_by_user, make_stale,
)
