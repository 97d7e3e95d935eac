"""Bulk actions' pure parts: which jobs a query matches, what each job becomes, and the summary."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest
from jobwire_server.domain.bulk import (
    BATCH_BUDGET,
    MIN_BATCH,
    Skipped,
    SkipReason,
    Tally,
    cancel_builder,
    next_batch,
    retry_builder,
)
from jobwire_server.domain.errors import InvalidTransition, JobNotFound
from jobwire_server.domain.models import Job, Phase
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.states import JobState, PhaseState
from jobwire_server.domain.transitions import Reason

S = JobState
T0 = 1_900_000_000.0


def job(state: JobState = S.QUEUED, **fields: object) -> Job:
    base = Job(id="01890000-0000-7000-8000-000000000001", queue="media", kind="k", payload=b"", priority=5,
               state=state, max_attempts=3, phases=(Phase("one"),), create_time=T0, update_time=T0, run_at=T0,
               labels=MappingProxyType({"env": "prod", "team": "web"}))
    return replace(base, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("query", "expected"), [
    (JobQuery(), True),
    (JobQuery(queue="media", kind="k", states=frozenset({S.QUEUED})), True),
    (JobQuery(queue="other"), False),
    (JobQuery(states=frozenset({S.FAILED})), False),
    (JobQuery(labels=MappingProxyType({"env": "prod"})), True),
    (JobQuery(labels=MappingProxyType({"env": "dev"})), False),
    (JobQuery(label_keys=frozenset({"env", "team"})), True),
    (JobQuery(label_keys=frozenset({"env", "customer"})), False),
    (JobQuery(label_in=MappingProxyType({"env": frozenset({"prod", "staging"})})), True),
    (JobQuery(label_in=MappingProxyType({"env": frozenset({"dev"})})), False),
    (JobQuery(label_in=MappingProxyType({"customer": frozenset({"c1"})})), False),
    (JobQuery(created_after=T0, created_before=T0 + 1), True),
    (JobQuery(created_after=T0 + 1), False),
    (JobQuery(created_before=T0), False),
    (JobQuery(finished_after=T0), False),
])
def test_a_query_matches_a_job_as_the_store_would_list_it(query: JobQuery, expected: bool) -> None:
    assert query.matches(job()) is expected


def test_finish_bounds_match_finished_jobs_only() -> None:
    done = job(S.CANCELLED, finish_time=T0 + 10)
    assert JobQuery(finished_after=T0 + 10, finished_before=T0 + 11).matches(done)
    assert not JobQuery(finished_before=T0 + 10).matches(done)
    assert JobQuery(finished_before=T0 + 11).matches(replace(done, state=S.STALE))
    assert JobQuery(finished_after=T0).finish_states == frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.STALE})
    assert JobQuery(finished_after=T0, states=frozenset({S.QUEUED, S.FAILED})).finish_states == {S.FAILED}


def test_has_criteria() -> None:
    assert not JobQuery(page_size=10, after_id="x").has_criteria
    assert JobQuery(label_keys=frozenset({"k"})).has_criteria
    assert JobQuery(finished_before=T0).has_criteria


def _skip(build: object, target: Job) -> SkipReason:
    with pytest.raises(Skipped) as caught:
        build(target)  # type: ignore[operator]
    return caught.value.why


def test_cancel_builder_cancels_like_cancel_job_and_names_each_skip() -> None:
    build = cancel_builder(JobQuery(queue="media"), "freeze", T0 + 1)
    assert build(job(S.SCHEDULED)).reason is Reason.CANCELLED_BY_USER
    assert build(job(S.RUNNING, attempt=1)).reason is Reason.CANCEL_REQUESTED
    for state in (S.SUCCEEDED, S.FAILED, S.STALE):
        assert _skip(build, job(state)) is SkipReason.ALREADY_FINISHED
    assert _skip(build, job(S.CANCELLED)) is SkipReason.ALREADY_CANCELLED
    assert _skip(build, job(S.RUNNING, cancel_requested=True)) is SkipReason.CANCEL_ALREADY_REQUESTED
    assert _skip(build, job(queue="other")) is SkipReason.NO_LONGER_MATCHES


def test_retry_builder_retries_like_retry_job_and_names_each_skip() -> None:
    partial, full = retry_builder(JobQuery(), False, T0 + 1), retry_builder(JobQuery(), True, T0 + 1)
    assert partial(job(S.FAILED)).job.state is S.QUEUED
    assert full(job(S.SUCCEEDED)).job.state is S.QUEUED
    for state in (S.SCHEDULED, S.QUEUED, S.RUNNING, S.RETRYING):
        assert _skip(partial, job(state)) is SkipReason.STILL_ACTIVE
    assert _skip(partial, job(S.SUCCEEDED)) is SkipReason.NEEDS_FROM_START
    done = job(S.STALE, phases=(Phase("one", PhaseState.SUCCEEDED),))
    assert _skip(partial, replace(done, state=S.CANCELLED)) is SkipReason.NOTHING_TO_RESUME
    assert _skip(retry_builder(JobQuery(states=frozenset({S.FAILED})), True, T0), job(S.CANCELLED)) is (
        SkipReason.NO_LONGER_MATCHES)


def test_tally_counts_changes_and_skips_in_reason_order() -> None:
    tally = Tally()
    running = job(S.RUNNING, cancel_requested=True)
    changed = tally.add([(job(S.CANCELLED), object()), (running, object()), JobNotFound("x"),
                         Skipped("y", SkipReason.ALREADY_FINISHED), InvalidTransition("z", "FAILED", "requeue"),
                         Skipped("w", SkipReason.ALREADY_FINISHED)])
    assert [j.state for j in changed] == [S.CANCELLED, S.RUNNING]
    summary = tally.summary()
    assert (summary.matched, summary.changed, summary.cancel_requested) == (6, 2, 1)
    assert list(summary.skipped.items()) == [(SkipReason.ALREADY_FINISHED, 2), (SkipReason.DEDUPE_KEY_TAKEN, 1),
                                             (SkipReason.NOT_FOUND, 1)]


@pytest.mark.parametrize(("size", "seconds", "ceiling", "expected"), [
    (10, BATCH_BUDGET / 4, 200, 20),  # fast: grows, but at most twofold
    (40, BATCH_BUDGET / 1.5, 200, 60),  # fills the budget at the last batch's pace
    (100, BATCH_BUDGET, 200, 100),  # on budget: stays
    (100, BATCH_BUDGET * 4, 200, 25),  # slow: shrinks at once
    (50, BATCH_BUDGET * 100, 200, MIN_BATCH),  # however slow, the action moves on
    (150, BATCH_BUDGET / 10, 200, 200),  # never beyond the configured maximum
    (5, 0.0, 5, 5),  # a maximum below the floor wins
    (10, 0.0, 200, 20),  # no measure (too fast to time): grows
])
def test_a_batch_is_sized_to_take_the_budget_at_the_last_ones_pace(size: int, seconds: float, ceiling: int,
                                                                    expected: int) -> None:
    assert next_batch(size, seconds, ceiling=ceiling) == expected
