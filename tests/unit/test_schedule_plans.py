"""What one firing of a schedule does: policies, catch-up, keys and jitter (pure functions)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from jobwire_server.domain.models import Job, Phase
from jobwire_server.domain.schedules import (
    MISFIRE_GRACE,
    SCHEDULE_LABEL,
    CatchupPolicy,
    JobTemplate,
    OverlapPolicy,
    Schedule,
    ScheduleSpec,
    firing_key,
    firing_key_at,
    jitter,
    new_schedule,
    paused,
    plan_firing,
    plan_trigger,
    resumed,
    trigger_key,
    upcoming,
    with_spec,
)
from jobwire_server.domain.states import EventType, JobState

T0 = 1_800_000_000.0  # a multiple of 60 and of 3600
TEMPLATE = JobTemplate(queue="q", kind="k", payload=b"{}", priority=7, max_attempts=2, timeout=5.0,
                       phase_names=("run",), labels={"team": "data"})


def every(seconds: int, **options: object) -> Schedule:
    spec = ScheduleSpec(template=TEMPLATE, interval=seconds, **options)  # type: ignore[arg-type]
    return new_schedule("s1", spec, T0)


def job(state: JobState, job_id: str = "01a205ce-80e1-70f5-ad86-4a0062fd01dd") -> Job:
    return Job(id=job_id, queue="q", kind="k", payload=b"", priority=5, state=state, max_attempts=1,
               phases=(Phase("run"),), create_time=T0, update_time=T0, run_at=T0, attempt=1)


def test_a_new_schedule_fires_first_after_its_creation() -> None:
    schedule = every(60)
    assert schedule.next_fire == T0 + 60 and not schedule.paused
    assert upcoming(schedule) == [T0 + 60, T0 + 120, T0 + 180, T0 + 240, T0 + 300]
    assert new_schedule("p", schedule.spec, T0, paused=True).next_fire is None


def test_nothing_fires_before_it_is_due_or_while_paused() -> None:
    schedule = every(60)
    assert plan_firing(schedule, None, T0 + 59, False) is None
    assert firing_key_at(schedule, T0 + 59) is None
    assert plan_firing(paused(schedule, T0), None, T0 + 600, False) is None


def test_an_on_time_firing_enqueues_the_template_with_its_key_and_label() -> None:
    schedule = every(60)
    firing = plan_firing(schedule, None, T0 + 60.5, False)
    assert firing is not None and firing.job is not None and firing.cancel is None and not firing.skipped
    new = firing.job
    assert (new.queue, new.kind, new.payload, new.priority, new.max_attempts, new.timeout, new.phase_names) == (
        "q", "k", b"{}", 7, 2, 5.0, ("run",))
    assert dict(new.labels) == {"team": "data", SCHEDULE_LABEL: "s1"}
    assert new.run_at == T0 + 60
    assert new.request_id == firing_key_at(schedule, T0 + 60.5) == firing_key("s1", "2027-01-15T08:01:00Z")
    assert len(new.request_id) > 128  # never a client's (at most 128 characters)
    assert firing.schedule.next_fire == T0 + 120 and firing.schedule.last_fire == T0 + 60


def test_a_late_firing_within_the_grace_runs_and_earlier_missed_times_do_not_pile_up() -> None:
    schedule = every(60)
    firing = plan_firing(schedule, None, T0 + 300 + MISFIRE_GRACE - 1, False)
    assert firing is not None and firing.job is not None
    assert firing.schedule.last_fire == T0 + 300  # the latest time due: one job, not five
    assert firing.schedule.next_fire == T0 + 360


@pytest.mark.parametrize(("catchup", "runs"), [(CatchupPolicy.SKIP, False), (CatchupPolicy.RUN_ONCE, True)])
def test_after_a_gap_catch_up_skips_or_runs_once(catchup: CatchupPolicy, runs: bool) -> None:
    schedule = every(3600, catchup=catchup)
    now = T0 + 5 * 3600 + 1800  # five firing times missed, the last half an hour ago
    firing = plan_firing(schedule, None, now, False)
    assert firing is not None
    assert (firing.job is not None) is runs
    assert firing.schedule.last_fire == T0 + 5 * 3600
    assert firing.schedule.next_fire == T0 + 6 * 3600
    if firing.job is not None:
        assert firing.job.run_at == T0 + 5 * 3600  # the store makes a past run_at "now"


def test_overlap_policies_while_the_previous_job_is_active() -> None:
    now = T0 + 60
    for state in (JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING, JobState.RETRYING):
        previous = job(state)
        allow = plan_firing(every(60), previous, now, False)
        assert allow is not None and allow.job is not None and allow.cancel is None
        skip = plan_firing(every(60, overlap=OverlapPolicy.SKIP), previous, now, False)
        assert skip is not None and skip.job is None and skip.skipped
        assert skip.schedule.next_fire == T0 + 120  # a skipped firing still moves on
        cancel = plan_firing(every(60, overlap=OverlapPolicy.CANCEL_PREVIOUS), previous, now, False)
        assert cancel is not None and cancel.job is not None and cancel.cancel is not None
        expected = EventType.CANCEL_REQUESTED if state is JobState.RUNNING else EventType.CANCELLED
        assert [e.type for e in cancel.cancel.events] == [expected]
        assert "superseded by the firing of schedule s1" in cancel.cancel.job.cancel_reason


def test_overlap_policies_ignore_a_finished_previous_job() -> None:
    for policy in OverlapPolicy:
        firing = plan_firing(every(60, overlap=policy), job(JobState.SUCCEEDED), T0 + 60, False)
        assert firing is not None and firing.job is not None and firing.cancel is None and not firing.skipped


def test_a_firing_made_already_returns_its_job_whatever_the_policy() -> None:
    schedule = every(60, overlap=OverlapPolicy.CANCEL_PREVIOUS)
    firing = plan_firing(schedule, job(JobState.RUNNING), T0 + 60, True)
    assert firing is not None and firing.job is not None and firing.cancel is None


def test_a_trigger_fires_now_without_moving_the_next_firing() -> None:
    schedule = every(3600, jitter=600.0)
    key = trigger_key("s1", T0 + 10, "r-1")
    firing = plan_trigger(schedule, None, T0 + 10, key, False)
    assert firing.job is not None and firing.job.run_at == T0 + 10 and firing.job.request_id == key
    assert firing.schedule.next_fire == schedule.next_fire and firing.schedule.last_fire == T0 + 10
    assert trigger_key("s1", T0 + 99, "r-1") == key != trigger_key("s1", T0 + 10)
    skipped = plan_trigger(every(60, overlap=OverlapPolicy.SKIP), job(JobState.QUEUED), T0, key, False)
    assert skipped.job is None and skipped.skipped


def test_jitter_is_a_fixed_share_of_the_jitter_per_firing() -> None:
    schedule = every(60, jitter=30.0)
    shares = {jitter(schedule, T0 + 60 * n) for n in range(50)}
    assert all(0 <= s < 30 for s in shares) and len(shares) > 40
    assert jitter(schedule, T0 + 60) == jitter(replace(schedule, update_time=T0 + 5), T0 + 60)
    firing = plan_firing(schedule, None, T0 + 60, False)
    assert firing is not None and firing.job is not None
    assert firing.job.run_at == T0 + 60 + jitter(schedule, T0 + 60)
    assert jitter(every(60), T0 + 60) == 0.0


def test_a_new_timing_restarts_from_now_and_an_unchanged_one_keeps_the_next_firing() -> None:
    schedule = every(60)
    same = with_spec(schedule, replace(schedule.spec, description="changed"), T0 + 30)
    assert same.next_fire == schedule.next_fire and same.spec.description == "changed"
    hourly = with_spec(schedule, replace(schedule.spec, interval=3600), T0 + 30)
    assert hourly.next_fire == T0 + 3600


def test_resume_starts_after_now_and_does_not_make_up_the_pause() -> None:
    schedule = paused(every(60), T0)
    assert schedule.paused and schedule.next_fire is None and upcoming(schedule) == []
    back = resumed(schedule, T0 + 3600 + 1)
    assert not back.paused and back.next_fire == T0 + 3660
    assert resumed(back, T0 + 7200) is back and paused(schedule, T0) is schedule
