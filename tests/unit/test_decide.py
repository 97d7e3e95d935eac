"""outcomes.decide(): what happens to a RUNNING job after one phase attempt ends, and how a handler's
exception is classified (server/jobwire_server/domain/outcomes.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jobwire_server.domain.models import Job, PendingEvent, Phase, Progress
from jobwire_server.domain.outcomes import (
    Cancelled,
    Failed,
    Outcome,
    PermanentError,
    RetryableError,
    Succeeded,
    decide,
    failure_from_exception,
)
from jobwire_server.domain.retry import RetryPolicy
from jobwire_server.domain.states import EventType, JobState, PhaseState
from jobwire_server.domain.transitions import Reason
from jobwire_server.handlers.kind import MalformedPayload

S = JobState
P = PhaseState
E = EventType

NOW = 1_800_000_000.0
NAMES = ("fetch", "resize", "upload")
POLICY = RetryPolicy(base_delay=2.0, max_delay=60.0)


def running_job(index: int = 0, *, attempt: int = 1, max_attempts: int = 3, uncounted: int = 0,
                cancel_requested: bool = False) -> Job:
    phases = tuple(
        Phase(n, P.SUCCEEDED, Progress(100.0), f"{n}-result".encode(), finish_time=NOW - 20) if i < index
        else Phase(n, P.RUNNING, start_time=NOW - 10) if i == index
        else Phase(n)
        for i, n in enumerate(NAMES)
    )
    return Job(id="0190a000-0000-7000-8000-000000000002", queue="default", kind="thumbnail", payload=b"",
               priority=5, state=S.RUNNING, max_attempts=max_attempts, phases=phases, create_time=NOW - 100,
               update_time=NOW - 10, run_at=NOW - 100, attempt=attempt, uncounted_attempts=uncounted,
               cancel_requested=cancel_requested, cancel_reason="user" if cancel_requested else "",
               start_time=NOW - 30)


def events(change_events: tuple[PendingEvent, ...]) -> list[tuple[EventType, str]]:
    return [(e.type, e.phase) for e in change_events]


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class DecideCase:
    name: str
    job: Job
    index: int
    outcome: Outcome
    state: JobState
    reason: Reason
    events: list[tuple[EventType, str]]


TABLE = [
    DecideCase("success mid-job", running_job(0), 0, Succeeded(b"x"), S.RUNNING, Reason.PHASE_SUCCEEDED,
               [(E.PHASE_SUCCEEDED, "fetch"), (E.PHASE_STARTED, "resize")]),
    DecideCase("success last phase", running_job(2), 2, Succeeded(b"x"), S.SUCCEEDED, Reason.COMPLETED,
               [(E.PHASE_SUCCEEDED, "upload"), (E.SUCCEEDED, "")]),
    DecideCase("success mid-job, cancel requested", running_job(1, cancel_requested=True), 1, Succeeded(b"x"),
               S.CANCELLED, Reason.CANCELLED_WHILE_RUNNING, [(E.PHASE_SUCCEEDED, "resize"), (E.CANCELLED, "")]),
    DecideCase("success last phase, cancel requested too late", running_job(2, cancel_requested=True), 2,
               Succeeded(b"x"), S.SUCCEEDED, Reason.COMPLETED, [(E.PHASE_SUCCEEDED, "upload"), (E.SUCCEEDED, "")]),
    DecideCase("retryable, attempts left", running_job(1, attempt=1), 1, Failed("boom", "IOError", True),
               S.RETRYING, Reason.RETRY_AFTER_FAILURE, [(E.PHASE_FAILED, "resize"), (E.RETRY_SCHEDULED, "resize")]),
    DecideCase("retryable, no attempts left", running_job(1, attempt=3), 1, Failed("boom", "IOError", True),
               S.FAILED, Reason.ATTEMPTS_EXHAUSTED, [(E.PHASE_FAILED, "resize"), (E.FAILED, "resize")]),
    DecideCase("not retryable, first attempt", running_job(0, attempt=1), 0, Failed("bad", "PermanentError", False),
               S.FAILED, Reason.FAILED_PERMANENTLY, [(E.PHASE_FAILED, "fetch"), (E.FAILED, "fetch")]),
    DecideCase("cancelled", running_job(1, cancel_requested=True), 1, Cancelled(), S.CANCELLED,
               Reason.CANCELLED_WHILE_RUNNING, [(E.CANCELLED, "")]),
]


@pytest.mark.parametrize("case", TABLE, ids=lambda c: c.name)
def test_decide_table(case: DecideCase) -> None:
    change = decide(case.job, case.index, case.outcome, NOW, POLICY, random.Random(1))
    assert change.job.state is case.state
    assert change.reason is case.reason
    assert events(change.events) == case.events
    assert change.guard == frozenset({S.RUNNING})
    assert change.attempt == case.job.attempt  # every outcome is fenced by the attempt that reported it
    assert change.job.update_time == NOW


# ----------------------------------------------------------------------------- success


def test_success_mid_job_moves_to_the_next_phase() -> None:
    change = decide(running_job(0), 0, Succeeded(b"fetched"), NOW, POLICY)
    phases = change.job.phases
    assert phases[0].state is P.SUCCEEDED and phases[0].result == b"fetched"
    assert phases[1].state is P.RUNNING and phases[1].start_time == NOW
    assert phases[2].state is P.PENDING
    assert change.job.next_phase == 1


def test_success_on_last_phase_succeeds_with_its_result() -> None:
    change = decide(running_job(2), 2, Succeeded(b"final"), NOW, POLICY)
    assert change.job.state is S.SUCCEEDED
    assert change.job.result == b"final"
    assert change.job.finish_time == NOW
    assert change.job.results == {"fetch": b"fetch-result", "resize": b"resize-result", "upload": b"final"}


def test_success_with_cancel_requested_mid_job_cancels_keeping_the_result() -> None:
    change = decide(running_job(0, cancel_requested=True), 0, Succeeded(b"fetched"), NOW, POLICY)
    job = change.job
    assert job.state is S.CANCELLED
    assert job.phases[0].state is P.SUCCEEDED
    assert job.phases[0].result == b"fetched"
    assert [p.state for p in job.phases[1:]] == [P.CANCELLED, P.CANCELLED]
    assert [e.type for e in change.events].count(E.CANCELLED) == 1
    assert job.result == b""  # a cancelled job has no job result, only phase results
    assert job.results == {"fetch": b"fetched"}


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("seed", [0, 1, 42, 12345])
@pytest.mark.parametrize("attempt", [1, 2])
def test_retryable_failure_with_attempts_left_waits_the_policy_delay(seed: int, attempt: int) -> None:
    job = running_job(1, attempt=attempt)
    assert job.attempts_left > 0
    change = decide(job, 1, Failed("boom", "OSError", True), NOW, POLICY, random.Random(seed))
    expected = POLICY.delay(attempt, random.Random(seed))
    assert change.job.state is S.RETRYING
    assert change.job.run_at == NOW + expected
    ceiling = min(POLICY.max_delay, POLICY.base_delay * 2 ** (attempt - 1))
    assert ceiling / 2 <= change.job.run_at - NOW <= ceiling


def test_retryable_failure_records_the_error() -> None:
    job = running_job(1, attempt=2)
    change = decide(job, 1, Failed("disk full", "OSError", True), NOW, POLICY, random.Random(3))
    err = change.job.error
    assert err is not None
    assert (err.message, err.type, err.retryable, err.phase, err.attempt, err.interrupted, err.time) == (
        "disk full", "OSError", True, "resize", 2, False, NOW)
    assert change.job.error_history == (err,)
    assert change.job.phases[1].state is P.FAILED
    assert change.job.phases[1].error == err
    assert change.events[0].detail == "disk full"


@pytest.mark.parametrize("retry_after", [0.0, 0.5, 42.0, 10_000.0])
def test_retry_after_overrides_the_backoff(retry_after: float) -> None:
    job = running_job(1, attempt=1)
    change = decide(job, 1, Failed("slow down", "RetryableError", True, retry_after=retry_after), NOW, POLICY,
                    random.Random(0))
    assert change.job.state is S.RETRYING
    assert change.job.run_at == NOW + retry_after


def test_retry_after_from_a_raised_retryable_error() -> None:
    outcome = failure_from_exception(RetryableError("rate limited", retry_after=17.0))
    change = decide(running_job(0), 0, outcome, NOW, POLICY, random.Random(0))
    assert change.job.run_at == NOW + 17.0


def test_retryable_failure_with_no_attempts_left_fails() -> None:
    job = running_job(1, attempt=3, max_attempts=3)
    assert job.attempts_left == 0
    change = decide(job, 1, Failed("boom", "OSError", True), NOW, POLICY, random.Random(0))
    assert change.job.state is S.FAILED
    assert change.reason is Reason.ATTEMPTS_EXHAUSTED
    assert change.job.error is not None and change.job.error.retryable is True
    assert change.job.finish_time == NOW


def test_uncounted_attempts_do_not_exhaust_the_budget() -> None:
    # attempt 3, one of them interrupted by shutdown: one attempt left
    job = running_job(1, attempt=3, max_attempts=3, uncounted=1)
    change = decide(job, 1, Failed("boom", "OSError", True), NOW, POLICY, random.Random(0))
    assert change.job.state is S.RETRYING


def test_permanent_failure_on_first_attempt_fails_at_once() -> None:
    job = running_job(0, attempt=1, max_attempts=10)
    change = decide(job, 0, Failed("bad payload", "MalformedPayload", False), NOW, POLICY, random.Random(0))
    assert change.job.state is S.FAILED
    assert change.reason is Reason.FAILED_PERMANENTLY
    assert change.job.error is not None and change.job.error.retryable is False
    assert change.job.phases[0].state is P.FAILED


def test_cancelled_outcome_cancels_the_job() -> None:
    job = running_job(1, cancel_requested=True)
    change = decide(job, 1, Cancelled(), NOW, POLICY)
    assert change.job.state is S.CANCELLED
    assert [p.state for p in change.job.phases] == [P.SUCCEEDED, P.CANCELLED, P.CANCELLED]
    assert change.job.phases[0].result == b"fetch-result"
    assert [(e.type, e.detail) for e in change.events] == [(E.CANCELLED, "user")]


@given(
    max_attempts=st.integers(min_value=1, max_value=20),
    attempt=st.integers(min_value=1, max_value=40),
    uncounted=st.integers(min_value=0, max_value=40),
    retryable=st.booleans(),
)
def test_failure_retries_exactly_while_attempts_are_left(max_attempts: int, attempt: int, uncounted: int,
                                                        retryable: bool) -> None:
    uncounted = min(uncounted, attempt - 1)
    job = running_job(0, attempt=attempt, max_attempts=max_attempts, uncounted=uncounted)
    change = decide(job, 0, Failed("x", "E", retryable), NOW, POLICY, random.Random(0))
    if retryable and job.attempts_left > 0:
        assert change.job.state is S.RETRYING
        assert change.job.run_at >= NOW
    else:
        assert change.job.state is S.FAILED


def test_decide_is_deterministic_for_a_seed() -> None:
    job = running_job(1, attempt=2)
    first = decide(job, 1, Failed("x", "E", True), NOW, POLICY, random.Random(99))
    second = decide(job, 1, Failed("x", "E", True), NOW, POLICY, random.Random(99))
    assert first == second


# ----------------------------------------------------------------------------- classification


def test_permanent_error_is_not_retryable() -> None:
    assert failure_from_exception(PermanentError("no such image")) == Failed(
        "no such image", "PermanentError", retryable=False)


def test_malformed_payload_is_a_permanent_error() -> None:
    failure = failure_from_exception(MalformedPayload("payload is not valid JSON"))
    assert failure.retryable is False
    assert failure.type == "MalformedPayload"


def test_retryable_error_keeps_retry_after() -> None:
    assert failure_from_exception(RetryableError("busy", retry_after=12.5)) == Failed(
        "busy", "RetryableError", retryable=True, retry_after=12.5)
    assert failure_from_exception(RetryableError("busy")).retry_after is None


def test_retryable_error_rejects_negative_retry_after() -> None:
    with pytest.raises(ValueError, match="retry_after"):
        RetryableError("busy", retry_after=-1.0)


@pytest.mark.parametrize("exc", [ValueError("bad value"), RuntimeError("oops"), KeyError("k"), OSError("io")])
def test_any_other_exception_is_retryable(exc: Exception) -> None:
    failure = failure_from_exception(exc)
    assert failure.retryable is True
    assert failure.retry_after is None
    assert failure.type == type(exc).__name__
    assert failure.message == str(exc)


def test_empty_message_falls_back_to_the_type_name() -> None:
    assert failure_from_exception(ValueError()).message == "ValueError"
    assert failure_from_exception(PermanentError()).message == "PermanentError"


def test_classified_exception_drives_decide() -> None:
    job = running_job(0, attempt=1)
    permanent = decide(job, 0, failure_from_exception(PermanentError("no")), NOW, POLICY, random.Random(0))
    transient = decide(job, 0, failure_from_exception(ValueError("flaky")), NOW, POLICY, random.Random(0))
    assert permanent.job.state is S.FAILED
    assert transient.job.state is S.RETRYING


def test_decide_does_not_mutate_the_job() -> None:
    job = running_job(1, attempt=2)
    before = replace(job)
    decide(job, 1, Failed("x", "E", True), NOW, POLICY, random.Random(0))
    assert job == before
