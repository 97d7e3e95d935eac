"""Table test of the job state machine (server/jobwire_server/domain/transitions.py).

Every constructor in ``transitions.CONSTRUCTORS`` has a row below: its guard, the events it emits and
whether it is fenced by the attempt. For each state of the guard a hand-built job in that state is fed to
the constructor, and the change is checked against ``ALLOWED``, the row, and the phases it really changed.
The jobs are built by hand (not by chaining constructors) so one broken constructor fails only its rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from jobwire_server.domain import transitions as t
from jobwire_server.domain.models import Job, JobError, Phase, Progress
from jobwire_server.domain.states import (
    TERMINAL_STATES,
    UNFINISHED_PHASES,
    WAITING_STATES,
    EventType,
    JobState,
    PhaseState,
)
from jobwire_server.domain.transitions import ALLOWED, CONSTRUCTORS, JobChange, Reason

S = JobState
P = PhaseState
E = EventType

NOW = 1_800_000_000.0
EARLIER = NOW - 100.0
NAMES = ("fetch", "resize", "upload")


# ----------------------------------------------------------------------------- building jobs


def error(phase: str = "resize", attempt: int = 1, *, retryable: bool = True, interrupted: bool = False,
          message: str = "boom") -> JobError:
    return JobError(message=message, type="RuntimeError", retryable=retryable, phase=phase, attempt=attempt,
                    interrupted=interrupted, time=EARLIER)


def done(name: str) -> Phase:
    return Phase(name, P.SUCCEEDED, Progress(100.0, ""), f"{name}-result".encode(), None, EARLIER - 10, EARLIER - 5)


def running(name: str) -> Phase:
    return Phase(name, P.RUNNING, Progress(20.0, "working"), b"", None, EARLIER, None)


def failed(name: str, attempt: int = 1) -> Phase:
    return Phase(name, P.FAILED, Progress(20.0, "working"), b"", error(name, attempt), EARLIER, EARLIER + 1)


def cancelled(name: str) -> Phase:
    return Phase(name, P.CANCELLED, finish_time=EARLIER + 1)


def base_job(**changes: object) -> Job:
    job = Job(id="0190a000-0000-7000-8000-000000000001", queue="media", kind="thumbnail", payload=b"{}",
              priority=5, state=S.QUEUED, max_attempts=3, phases=tuple(Phase(n) for n in NAMES),
              create_time=EARLIER - 100, update_time=EARLIER - 100, run_at=EARLIER - 100)
    return replace(job, **changes)  # type: ignore[arg-type]


def job_in(state: JobState) -> Job:
    """A plausible job in `state`. RUNNING jobs are in their first attempt, running phase 1 ("resize")."""
    fetch, resize, upload = NAMES
    if state is S.SCHEDULED:
        return base_job(state=S.SCHEDULED, run_at=NOW + 60)
    if state is S.QUEUED:
        return base_job(state=S.QUEUED)
    if state is S.RUNNING:
        return base_job(state=S.RUNNING, attempt=1, start_time=EARLIER - 10, progress=Progress(40.0, "working"),
                        phases=(done(fetch), running(resize), Phase(upload)))
    if state is S.RETRYING:
        err = error(resize, 1)
        return base_job(state=S.RETRYING, attempt=1, run_at=NOW - 1, error=err, error_history=(err,),
                        phases=(done(fetch), failed(resize), Phase(upload)))
    if state is S.SUCCEEDED:
        return base_job(state=S.SUCCEEDED, attempt=1, phases=tuple(done(n) for n in NAMES),
                        progress=Progress(100.0), start_time=EARLIER - 10, finish_time=EARLIER)
    if state is S.FAILED:
        err = error(resize, 3, retryable=True)
        return base_job(state=S.FAILED, attempt=3, error=err, error_history=(error(resize, 1), error(resize, 2), err),
                        phases=(done(fetch), failed(resize, 3), Phase(upload)), finish_time=EARLIER)
    if state is S.CANCELLED:
        return base_job(state=S.CANCELLED, attempt=1, cancel_requested=True, cancel_reason="user",
                        phases=(done(fetch), cancelled(resize), cancelled(upload)), finish_time=EARLIER)
    if state is S.STALE:
        return replace(job_in(S.FAILED), state=S.STALE)
    raise AssertionError(state)


def running_at(index: int, *, attempt: int = 1, **changes: object) -> Job:
    """A RUNNING job whose phase `index` runs, the ones before it succeeded."""
    phases = tuple(done(n) if i < index else running(n) if i == index else Phase(n) for i, n in enumerate(NAMES))
    return base_job(state=S.RUNNING, attempt=attempt, phases=phases, start_time=EARLIER, **changes)


def differing_phases(before: Job, after: Job) -> tuple[int, ...]:
    assert len(before.phases) == len(after.phases)
    return tuple(i for i, (a, b) in enumerate(zip(before.phases, after.phases, strict=True)) if a != b)


def running_name(job: Job) -> str:
    return next(p.name for p in job.phases if p.state is P.RUNNING)


# ----------------------------------------------------------------------------- the table


ATTEMPT = "attempt"  # fence == job.attempt
NO_FENCE = None


@dataclass(frozen=True)
class Row:
    name: str
    call: Callable[[Job], JobChange]
    guard: frozenset[JobState]
    #: (event type, phase name) expected, from the job fed in.
    events: Callable[[Job], list[tuple[EventType, str]]]
    fence: str | None
    constructor: Callable[..., JobChange]
    prepare: Callable[[Job], Job] = field(default=lambda job: job)


def _cancel_requested(job: Job) -> Job:
    return replace(job, cancel_requested=True, cancel_reason="user")


ROWS: tuple[Row, ...] = (
    Row("become_due", lambda j: t.become_due(j, NOW), frozenset({S.SCHEDULED, S.RETRYING}),
        lambda j: [(E.QUEUED, "")], NO_FENCE, t.become_due),
    Row("claim", lambda j: t.claim(j, NOW, NOW + 30), frozenset({S.QUEUED}),
        lambda j: [(E.STARTED, ""), (E.PHASE_STARTED, j.phases[j.next_phase].name)], NO_FENCE, t.claim),
    Row("report_progress", lambda j: t.report_progress(j, 1, 55.0, "half", NOW), frozenset({S.RUNNING}),
        lambda j: [(E.PROGRESS, "resize")], ATTEMPT, t.report_progress),
    Row("finish_phase", lambda j: t.finish_phase(j, 1, b"resized", NOW), frozenset({S.RUNNING}),
        lambda j: [(E.PHASE_SUCCEEDED, "resize"), (E.PHASE_STARTED, "upload")], ATTEMPT, t.finish_phase),
    Row("finish_phase_then_cancel", lambda j: t.finish_phase_then_cancel(j, 1, b"resized", NOW),
        frozenset({S.RUNNING}), lambda j: [(E.PHASE_SUCCEEDED, "resize"), (E.CANCELLED, "")], ATTEMPT,
        t.finish_phase_then_cancel, _cancel_requested),
    Row("retry_after_failure", lambda j: t.retry_after_failure(j, error("resize", j.attempt), NOW + 5, NOW),
        frozenset({S.RUNNING}), lambda j: [(E.PHASE_FAILED, "resize"), (E.RETRY_SCHEDULED, "resize")], ATTEMPT,
        t.retry_after_failure),
    Row("fail", lambda j: t.fail(j, error("resize", j.attempt, retryable=False), NOW), frozenset({S.RUNNING}),
        lambda j: [(E.PHASE_FAILED, "resize"), (E.FAILED, "resize")], ATTEMPT, t.fail),
    Row("finish_cancel", lambda j: t.finish_cancel(j, NOW), frozenset({S.RUNNING}),
        lambda j: [(E.CANCELLED, "")], ATTEMPT, t.finish_cancel, _cancel_requested),
    Row("interrupt_by_shutdown",
        lambda j: t.interrupt_by_shutdown(j, error("resize", j.attempt, interrupted=True), NOW),
        frozenset({S.RUNNING}), lambda j: [(E.INTERRUPTED, "resize")], ATTEMPT, t.interrupt_by_shutdown),
    Row("hand_back", lambda j: t.hand_back(j, error("resize", j.attempt, interrupted=True), NOW),
        frozenset({S.RUNNING}), lambda j: [(E.INTERRUPTED, "resize")], ATTEMPT, t.hand_back),
    Row("rescue_expired", lambda j: t.rescue_expired(j, error("resize", j.attempt, interrupted=True), NOW),
        frozenset({S.RUNNING}), lambda j: [(E.INTERRUPTED, "resize")], ATTEMPT, t.rescue_expired),
    Row("rescue_expired_exhausted",
        lambda j: t.rescue_expired(j, error("resize", j.attempt, interrupted=True), NOW),
        frozenset({S.RUNNING}), lambda j: [(E.PHASE_FAILED, "resize"), (E.FAILED, "resize")], ATTEMPT,
        t.rescue_expired, lambda j: replace(j, attempt=j.max_attempts)),
    Row("cancel_waiting", lambda j: t.cancel_waiting(j, "user", NOW), WAITING_STATES,
        lambda j: [(E.CANCELLED, "")], NO_FENCE, t.cancel_waiting),
    Row("request_cancel", lambda j: t.request_cancel(j, "user", NOW), frozenset({S.RUNNING}),
        lambda j: [(E.CANCEL_REQUESTED, "")], ATTEMPT, t.request_cancel),
    Row("retry_by_user_partial", lambda j: t.retry_by_user(j, False, NOW), frozenset({S.FAILED, S.CANCELLED, S.STALE}),
        lambda j: [(E.QUEUED, "")], NO_FENCE, t.retry_by_user),
    Row("retry_by_user_from_start", lambda j: t.retry_by_user(j, True, NOW),
        frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.STALE}), lambda j: [(E.QUEUED, "")], NO_FENCE,
        t.retry_by_user),
    Row("make_stale", lambda j: t.make_stale(j, NOW), TERMINAL_STATES, lambda j: [(E.STALE, "")], NO_FENCE,
        t.make_stale),
)

CASES = [pytest.param(row, state, id=f"{row.name}-{state}") for row in ROWS for state in sorted(row.guard)]


def test_every_constructor_has_a_row() -> None:
    assert {row.constructor for row in ROWS} == set(CONSTRUCTORS)


def test_allowed_covers_every_job_state() -> None:
    assert set(ALLOWED) == set(JobState)
    for targets in ALLOWED.values():
        assert targets <= set(JobState)


@pytest.mark.parametrize(("row", "state"), CASES)
def test_transition_table(row: Row, state: JobState) -> None:
    job = row.prepare(job_in(state))
    assert job.state is state
    change = row.call(job)

    # guard as in the table, and every guard state may move to the target
    assert change.guard == row.guard
    for guard_state in change.guard:
        assert change.target in ALLOWED[guard_state], f"{guard_state} -> {change.target} not in ALLOWED"

    # events: types and phase names, in order
    assert [(e.type, e.phase) for e in change.events] == row.events(job)

    # changed_phases is exactly the set of phases that differ
    assert change.changed_phases == differing_phases(job, change.job)

    # fence
    expected_fence = job.attempt if row.fence == ATTEMPT else None
    assert change.attempt == expected_fence

    # the change is stamped with its time and keeps the job's identity
    assert change.job.update_time == NOW
    assert change.job.id == job.id
    assert change.job.max_attempts == job.max_attempts


# ----------------------------------------------------------------------------- claim


def test_claim_starts_the_first_phase_and_counts_an_attempt() -> None:
    job = job_in(S.QUEUED)
    change = t.claim(job, NOW, NOW + 30)
    new = change.job
    assert change.reason is Reason.CLAIMED
    assert new.state is S.RUNNING
    assert new.attempt == job.attempt + 1
    assert new.attempts_left == job.attempts_left - 1
    assert new.start_time == NOW and new.finish_time is None
    assert new.phases[0].state is P.RUNNING
    assert new.phases[0].start_time == NOW
    assert [p.state for p in new.phases[1:]] == [P.PENDING, P.PENDING]
    assert change.changed_phases == (0,)


def test_claim_after_partial_retry_resumes_at_first_unfinished_phase_keeping_results() -> None:
    failed_job = job_in(S.FAILED)
    queued = t.retry_by_user(failed_job, False, NOW).job
    change = t.claim(queued, NOW + 1, NOW + 31)
    new = change.job
    assert new.attempt == failed_job.attempt + 1
    assert new.phases[0] == failed_job.phases[0]  # succeeded phase kept whole, result included
    assert new.phases[0].result == b"fetch-result"
    assert new.results == {"fetch": b"fetch-result"}
    assert new.phases[1].state is P.RUNNING
    assert new.phases[1].error is None
    assert new.phases[1].progress == Progress()
    assert new.phases[2].state is P.PENDING
    assert [(e.type, e.phase) for e in change.events] == [(E.STARTED, ""), (E.PHASE_STARTED, "resize")]
    assert change.changed_phases == (1,)


@pytest.mark.parametrize("before", ["fresh", "partial retry", "every phase done"])
def test_claimed_from_the_updated_row_is_the_change_claim_makes(before: str) -> None:
    """A store's claim UPDATE writes the job row and returns it; `claimed` with the phases
    `start_attempt` gives must be exactly `claim`'s change."""
    queued = {"fresh": lambda: job_in(S.QUEUED),
              "partial retry": lambda: t.retry_by_user(job_in(S.FAILED), False, NOW).job,
              "every phase done": lambda: replace(job_in(S.QUEUED), phases=job_in(S.SUCCEEDED).phases)}[before]()
    expected = t.claim(queued, NOW, NOW + 30)
    as_written = replace(queued, state=S.RUNNING, attempt=queued.attempt + 1, start_time=NOW, finish_time=None,
                         update_time=NOW)
    phases, started = t.start_attempt(as_written.phases, NOW)
    assert t.claimed(replace(as_written, phases=phases), started) == expected


def test_claim_after_retryable_failure_restarts_the_failed_phase() -> None:
    retrying = job_in(S.RETRYING)
    queued = t.become_due(retrying, NOW).job
    new = t.claim(queued, NOW, NOW + 30).job
    assert new.attempt == 2
    assert new.phases[0].state is P.SUCCEEDED
    assert new.phases[1].state is P.RUNNING
    assert new.phases[1].error is None
    assert new.phases[1].finish_time is None


# ----------------------------------------------------------------------------- executor


def test_report_progress_updates_phase_and_overall_progress() -> None:
    job = running_at(1)
    change = t.report_progress(job, 1, 50.0, "half", NOW)
    assert change.job.phases[1].progress == Progress(50.0, "half")
    # (100 + 50 + 0) / 3
    assert change.job.progress.percent == pytest.approx(50.0)
    assert change.job.state is S.RUNNING
    assert change.events[0].detail == "half"


def test_finish_phase_mid_job_starts_the_next_phase() -> None:
    job = running_at(0)
    change = t.finish_phase(job, 0, b"fetched", NOW)
    new = change.job
    assert change.reason is Reason.PHASE_SUCCEEDED
    assert new.state is S.RUNNING
    assert new.phases[0].state is P.SUCCEEDED and new.phases[0].result == b"fetched"
    assert new.phases[0].finish_time == NOW
    assert new.phases[1].state is P.RUNNING and new.phases[1].start_time == NOW
    assert new.result == b""  # not succeeded yet
    assert change.changed_phases == (0, 1)


def test_finish_phase_on_last_phase_succeeds_the_job_with_that_result() -> None:
    job = running_at(2)
    change = t.finish_phase(job, 2, b"uploaded", NOW)
    new = change.job
    assert change.reason is Reason.COMPLETED
    assert new.state is S.SUCCEEDED
    assert new.result == b"uploaded"
    assert new.phases[2].result == b"uploaded"
    assert new.finish_time == NOW
    assert new.progress.percent == 100.0
    assert all(p.state is P.SUCCEEDED for p in new.phases)
    assert [(e.type, e.phase) for e in change.events] == [(E.PHASE_SUCCEEDED, "upload"), (E.SUCCEEDED, "")]
    assert change.changed_phases == (2,)


def test_finish_phase_then_cancel_keeps_the_result_and_cancels_the_rest() -> None:
    job = running_at(0, cancel_requested=True, cancel_reason="user said so")
    change = t.finish_phase_then_cancel(job, 0, b"fetched", NOW)
    new = change.job
    assert new.state is S.CANCELLED
    assert new.phases[0].state is P.SUCCEEDED and new.phases[0].result == b"fetched"
    assert [p.state for p in new.phases[1:]] == [P.CANCELLED, P.CANCELLED]
    assert new.results == {"fetch": b"fetched"}
    assert new.finish_time == NOW
    assert change.changed_phases == (0, 1, 2)
    assert [e.type for e in change.events].count(E.CANCELLED) == 1
    assert change.events[-1].detail == "user said so"


def test_retry_after_failure_records_error_and_waits() -> None:
    job = running_at(1)
    err = error("resize", 1)
    change = t.retry_after_failure(job, err, NOW + 7, NOW)
    new = change.job
    assert new.state is S.RETRYING
    assert new.run_at == NOW + 7
    assert new.error == err
    assert new.error_history == (err,)
    assert new.phases[1].state is P.FAILED and new.phases[1].error == err
    assert new.phases[0] == job.phases[0]


def test_fail_reason_depends_on_retryable() -> None:
    job = running_at(1)
    assert t.fail(job, error(retryable=False), NOW).reason is Reason.FAILED_PERMANENTLY
    assert t.fail(job, error(retryable=True), NOW).reason is Reason.ATTEMPTS_EXHAUSTED
    assert t.fail(job, error(), NOW).job.finish_time == NOW


def test_finish_cancel_cancels_running_and_pending_phases() -> None:
    job = running_at(1, cancel_requested=True, cancel_reason="user")
    change = t.finish_cancel(job, NOW)
    assert change.job.state is S.CANCELLED
    assert [p.state for p in change.job.phases] == [P.SUCCEEDED, P.CANCELLED, P.CANCELLED]
    assert change.changed_phases == (1, 2)
    assert [e.type for e in change.events] == [E.CANCELLED]


# ----------------------------------------------------------------------------- shutdown and rescue


def test_hand_back_requeues_without_spending_an_attempt() -> None:
    queued = job_in(S.QUEUED)
    claimed = t.claim(queued, NOW, NOW + 30).job
    change = t.hand_back(claimed, error("fetch", claimed.attempt, interrupted=True, message="never started"), NOW)
    assert change.reason is Reason.HANDED_BACK
    assert change.job.state is S.QUEUED
    assert change.job.attempts_left == queued.attempts_left
    assert change.job.phases[0].state is P.PENDING


def test_interrupt_by_shutdown_requeues_without_spending_an_attempt() -> None:
    queued = job_in(S.QUEUED)
    claimed = t.claim(queued, NOW, NOW + 30).job
    claimed = t.finish_phase(claimed, 0, b"fetched", NOW + 1).job  # now "resize" runs
    err = error("resize", claimed.attempt, interrupted=True, message="shutdown")
    change = t.interrupt_by_shutdown(claimed, err, NOW + 2)
    new = change.job
    assert change.reason is Reason.INTERRUPTED_BY_SHUTDOWN
    assert new.state is S.QUEUED
    assert new.attempts_left == queued.attempts_left  # as before the claim
    assert new.attempt == claimed.attempt  # the number keeps rising; only the budget is untouched
    assert new.error_history[-1] == err
    assert new.error_history[-1].interrupted is True
    assert new.error == err
    assert new.phases[1].state is P.PENDING
    assert new.phases[1].start_time is None
    assert new.phases[1].progress == Progress()
    assert new.phases[0].state is P.SUCCEEDED and new.phases[0].result == b"fetched"
    assert new.run_at == NOW + 2
    assert change.changed_phases == (1,)
    # the next claim resumes at the interrupted phase
    assert new.next_phase == 1


def test_repeated_shutdowns_never_exhaust_the_budget() -> None:
    job = job_in(S.QUEUED)
    for n in range(10):
        job = t.claim(job, NOW + n, NOW + n + 30).job
        job = t.interrupt_by_shutdown(job, error("fetch", job.attempt, interrupted=True), NOW + n).job
    assert job.attempt == 10
    assert job.attempts_left == job.max_attempts
    assert len(job.error_history) == 10


def test_rescue_expired_counts_the_attempt() -> None:
    queued = job_in(S.QUEUED)
    claimed = t.claim(queued, NOW, NOW + 30).job
    err = error("fetch", claimed.attempt, interrupted=True, message="lease expired")
    change = t.rescue_expired(claimed, err, NOW + 31)
    new = change.job
    assert change.reason is Reason.LEASE_EXPIRED
    assert new.state is S.QUEUED
    assert new.attempts_left == queued.attempts_left - 1
    assert new.error_history == (err,)
    assert new.phases[0].state is P.PENDING


def test_rescue_expired_with_no_attempts_left_fails_the_job() -> None:
    job = running_at(1, attempt=3)
    assert job.attempts_left == 0
    err = error("resize", 3, interrupted=True, message="lease expired")
    change = t.rescue_expired(job, err, NOW)
    new = change.job
    assert new.state is S.FAILED
    assert new.finish_time == NOW
    assert new.phases[1].state is P.FAILED
    assert new.error_history[-1].message == "lease expired"
    assert new.error_history[-1].interrupted is True
    assert change.attempt == 3


def test_a_job_that_kills_its_worker_every_time_ends_failed() -> None:
    job = job_in(S.QUEUED)
    for _ in range(job.max_attempts + 1):
        job = t.claim(job, NOW, NOW + 30).job
        job = t.rescue_expired(job, error("fetch", job.attempt, interrupted=True), NOW).job
        if job.state is S.FAILED:
            break
    assert job.state is S.FAILED
    assert job.attempt == job.max_attempts


# ----------------------------------------------------------------------------- user actions


@pytest.mark.parametrize("state", sorted(WAITING_STATES))
def test_cancel_waiting_cancels_all_unfinished_phases_with_one_event(state: JobState) -> None:
    job = job_in(state)
    change = t.cancel_waiting(job, "no longer needed", NOW)
    new = change.job
    assert new.state is S.CANCELLED
    assert new.cancel_requested is True
    assert new.cancel_reason == "no longer needed"
    assert not any(p.state in UNFINISHED_PHASES for p in new.phases)
    for before, after in zip(job.phases, new.phases, strict=True):
        if before.state in UNFINISHED_PHASES:
            assert after.state is P.CANCELLED
        else:
            assert after == before
    assert [(e.type, e.detail) for e in change.events] == [(E.CANCELLED, "no longer needed")]


def test_request_cancel_only_flags_the_running_job() -> None:
    job = running_at(1)
    change = t.request_cancel(job, "user", NOW)
    assert change.job.state is S.RUNNING
    assert change.job.cancel_requested is True
    assert change.job.cancel_reason == "user"
    assert change.job.phases == job.phases
    assert change.changed_phases == ()
    assert change.attempt == job.attempt


@pytest.mark.parametrize("state", [S.FAILED, S.CANCELLED, S.STALE])
def test_partial_retry_keeps_succeeded_phases_and_results(state: JobState) -> None:
    job = job_in(state)
    new = t.retry_by_user(job, False, NOW).job
    assert new.state is S.QUEUED
    assert new.phases[0] == job.phases[0]
    assert new.results == {"fetch": b"fetch-result"}
    assert [p for p in new.phases[1:]] == [Phase("resize"), Phase("upload")]
    assert new.next_phase == 1
    assert new.error is None
    assert new.error_history == job.error_history
    assert new.cancel_requested is False and new.cancel_reason == ""
    assert new.run_at == NOW
    assert new.start_time is None and new.finish_time is None


@pytest.mark.parametrize("state", [S.SUCCEEDED, S.FAILED, S.CANCELLED, S.STALE])
def test_retry_from_start_resets_every_phase(state: JobState) -> None:
    job = job_in(state)
    new = t.retry_by_user(job, True, NOW).job
    assert new.state is S.QUEUED
    assert new.phases == tuple(Phase(n) for n in NAMES)
    assert new.results == {}
    assert new.progress == Progress()
    assert new.next_phase == 0


@pytest.mark.parametrize("from_start", [False, True])
def test_retry_by_user_gives_a_fresh_budget_but_attempts_keep_counting(from_start: bool) -> None:
    job = job_in(S.FAILED)
    assert job.attempts_left == 0
    new = t.retry_by_user(job, from_start, NOW).job
    assert new.attempts_left == new.max_attempts
    assert new.attempt == job.attempt
    claimed = t.claim(new, NOW, NOW + 30)
    assert claimed.job.attempt == job.attempt + 1  # an earlier attempt's worker stays fenced out
    assert claimed.job.attempts_left == new.max_attempts - 1


def test_partial_retry_is_not_allowed_for_a_succeeded_job() -> None:
    change = t.retry_by_user(job_in(S.SUCCEEDED), False, NOW)
    assert S.SUCCEEDED not in change.guard


def test_partial_retry_changed_phases_lists_only_reset_phases() -> None:
    """A FAILED job's never-started tail phase equals its reset value, so it did not change."""
    job = job_in(S.FAILED)
    change = t.retry_by_user(job, False, NOW)
    assert change.changed_phases == differing_phases(job, change.job) == (1,)


@pytest.mark.parametrize("previous", [S.SUCCEEDED, S.FAILED, S.CANCELLED])
@pytest.mark.parametrize("from_start", [False, True])
def test_a_retried_job_always_has_a_phase_to_run(previous: JobState, from_start: bool) -> None:
    """A QUEUED job with every phase already succeeded would be claimed with nothing to run.
    SUCCEEDED is kept out of the partial-retry guard for that reason; a STALE job that had
    succeeded is in the guard (STALE), so the change itself must not produce such a job."""
    stale = replace(job_in(previous), state=S.STALE)
    change = t.retry_by_user(stale, from_start, NOW)
    assert S.STALE in change.guard
    assert change.job.next_phase < len(change.job.phases)


def test_make_stale_keeps_everything_but_the_state() -> None:
    job = job_in(S.SUCCEEDED)
    new = t.make_stale(job, NOW).job
    assert new.state is S.STALE
    assert replace(new, state=S.SUCCEEDED, update_time=job.update_time) == job


def test_become_due_queues_without_touching_phases() -> None:
    job = job_in(S.RETRYING)
    change = t.become_due(job, NOW)
    assert change.job.state is S.QUEUED
    assert change.job.phases == job.phases
    assert change.job.attempt == job.attempt
    assert change.changed_phases == ()


def test_constructors_do_not_mutate_their_input() -> None:
    job = running_at(1, cancel_requested=True)
    snapshot = replace(job)
    for row in ROWS:
        if S.RUNNING in row.guard:
            row.call(job)
    assert job == snapshot
