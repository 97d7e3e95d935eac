"""What every store must do with schedules, whatever its SQL: mixed into each backend's test class
beside `StoreConformance` (same fixtures). Firings use the domain's plans, as the engine does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest
from jobwire_server.domain.errors import ScheduleExists, ScheduleFromConfig, ScheduleNotFound
from jobwire_server.domain.models import Webhook
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.schedules import (
    CatchupPolicy,
    JobTemplate,
    OverlapPolicy,
    Schedule,
    ScheduleSpec,
    firing_key_at,
    new_schedule,
    paused,
    plan_firing,
    plan_trigger,
    trigger_key,
)
from jobwire_server.domain.states import EventType, JobState
from jobwire_server.store.base import (
    ChangeSchedule,
    CreateSchedule,
    DeleteSchedule,
    FirePlan,
    FireSchedules,
    InsertJobs,
    SchedulesFired,
    SyncSchedules,
)

from tests.store.conformance import REQUEST_TTL, claim_one, nj

#: A multiple of an hour (the conformance suite's T0 is not), so interval schedules fire at T0 + n·interval.
T0 = 1_900_000_800.0

Store = Any
TEMPLATE = JobTemplate(queue="sched", kind="conf.kind", payload=b"\x00{}", priority=8, max_attempts=4, timeout=2.5,
                       phase_names=("one", "two"), dedupe_key="", labels=MappingProxyType({"team": "data"}),
                       webhook=Webhook("https://hooks.example.com/x", (EventType.SUCCEEDED,)))


def schedule(schedule_id: str = "s1", *, every: int = 60, now: float = T0, **options: Any) -> Schedule:
    return new_schedule(schedule_id, ScheduleSpec(template=TEMPLATE, interval=every, **options), now)


def timed(now: float) -> FirePlan:
    return FirePlan(key=lambda s: firing_key_at(s, now), plan=lambda s, prev, made: plan_firing(s, prev, now, made))


def trigger(now: float, request_id: str = "") -> FirePlan:
    def key(s: Schedule) -> str:
        return trigger_key(s.id, now, request_id)

    return FirePlan(key=key, plan=lambda s, prev, made: plan_trigger(s, prev, now, key(s), made))


async def one(store: Store, op: Any) -> Any:
    (result,) = await store.write([op])
    if isinstance(result, Exception):
        raise result
    return result


async def fire(store: Store, now: float, limit: int = 100) -> SchedulesFired:
    result: SchedulesFired = await one(store, FireSchedules(now, timed(now), REQUEST_TTL, limit))
    return result


class ScheduleConformance:
    async def test_create_then_get_round_trips_every_field(self, store: Store) -> None:
        cron = new_schedule("nightly", ScheduleSpec(
            template=TEMPLATE, cron="30 2 * * *", time_zone="Europe/Paris", jitter=12.5,
            overlap=OverlapPolicy.CANCEL_PREVIOUS, catchup=CatchupPolicy.RUN_ONCE, description="ünï"), T0,
            from_config=True)
        for item in (cron, schedule(), paused(schedule("p"), T0)):
            assert await one(store, CreateSchedule(item)) == item
            assert await store.get_schedule(item.id) == item

    async def test_ids_are_unique_and_unknown_ids_are_not_found(self, store: Store) -> None:
        await one(store, CreateSchedule(schedule()))
        with pytest.raises(ScheduleExists):
            await one(store, CreateSchedule(schedule(every=5)))
        assert (await store.get_schedule("s1")).spec.interval == 60
        with pytest.raises(ScheduleNotFound):
            await store.get_schedule("nope")
        for op in (ChangeSchedule("nope", lambda s: s), DeleteSchedule("nope"),
                   FireSchedules(T0, trigger(T0), REQUEST_TTL, schedule_id="nope")):
            with pytest.raises(ScheduleNotFound):
                await one(store, op)

    async def test_list_pages_by_id(self, store: Store) -> None:
        for name in ("c", "a", "b", "d"):
            await one(store, CreateSchedule(schedule(name)))
        first, after = await store.list_schedules("", 3)
        assert [s.id for s in first] == ["a", "b", "c"] and after == "c"
        rest, after = await store.list_schedules("c", 3)
        assert [s.id for s in rest] == ["d"] and after is None

    async def test_change_and_delete_write_what_the_builder_says_or_nothing(self, store: Store) -> None:
        await one(store, CreateSchedule(schedule()))
        changed = await one(store, ChangeSchedule("s1", lambda s: paused(s, T0 + 1)))
        assert changed.paused and (await store.get_schedule("s1")) == changed

        def refuse(s: Schedule) -> Schedule:
            raise ScheduleFromConfig(s.id, "update")

        results = await store.write([ChangeSchedule("s1", refuse), CreateSchedule(schedule("s2")),
                                     DeleteSchedule("s2", lambda s: None)])
        assert isinstance(results[0], ScheduleFromConfig)
        assert results[2].id == "s2"
        with pytest.raises(ScheduleNotFound):
            await store.get_schedule("s2")
        assert (await store.get_schedule("s1")) == changed

    async def test_next_schedule_fire_is_the_earliest_of_the_running_ones(self, store: Store) -> None:
        assert await store.next_schedule_fire() is None
        await one(store, CreateSchedule(schedule("hourly", every=3600)))
        await one(store, CreateSchedule(paused(schedule("minutely", every=60), T0)))
        assert await store.next_schedule_fire() == T0 + 3600

    async def test_a_firing_writes_its_job_and_the_schedule_together(self, store: Store) -> None:
        await one(store, CreateSchedule(schedule()))
        assert (await fire(store, T0 + 59)).fired == []
        result = await fire(store, T0 + 60.25)
        (fired,) = result.fired
        assert fired.inserted is not None and fired.inserted.created and not fired.skipped
        job = fired.inserted.job
        assert (job.queue, job.kind, job.payload, job.priority, job.max_attempts, job.timeout) == (
            "sched", "conf.kind", b"\x00{}", 8, 4, 2.5)
        assert [p.name for p in job.phases] == ["one", "two"] and job.state is JobState.QUEUED
        assert dict(job.labels) == {"team": "data", "jobwire/schedule": "s1"}
        assert [e.type for e in fired.inserted.events] == [EventType.ENQUEUED]
        stored = await store.get_schedule("s1")
        assert stored == fired.schedule
        assert (stored.next_fire, stored.last_fire, stored.last_job_id) == (T0 + 120, T0 + 60, job.id)
        assert result.next_due == T0 + 120
        assert await store.get_job(job.id) == job

    async def test_the_same_firing_twice_returns_the_first_job(self, store: Store) -> None:
        await one(store, CreateSchedule(schedule()))
        (first,) = (await fire(store, T0 + 60)).fired
        # Put the row back as it was before the firing: its request id still makes no second job.
        await one(store, ChangeSchedule("s1", lambda s: replace(s, next_fire=T0 + 60)))
        (again,) = (await fire(store, T0 + 61)).fired
        assert first.inserted is not None and again.inserted is not None
        assert again.inserted.job.id == first.inserted.job.id and not again.inserted.created
        jobs = [j for j in (await store.list_jobs(_all()))[0] if j.labels.get("jobwire/schedule") == "s1"]
        assert len(jobs) == 1

    async def test_paused_schedules_do_not_fire_and_a_pass_takes_at_most_limit(self, store: Store) -> None:
        for name in ("a", "b", "c"):
            await one(store, CreateSchedule(schedule(name)))
        await one(store, CreateSchedule(paused(schedule("p"), T0)))
        first = await fire(store, T0 + 60, limit=2)
        assert [f.schedule.id for f in first.fired] == ["a", "b"] and first.next_due == T0 + 60
        rest = await fire(store, T0 + 60, limit=2)
        assert [f.schedule.id for f in rest.fired] == ["c"] and rest.next_due == T0 + 120

    async def test_cancel_previous_cancels_the_active_job_in_the_same_transaction(self, store: Store) -> None:
        await one(store, CreateSchedule(schedule(overlap=OverlapPolicy.CANCEL_PREVIOUS)))
        (first,) = (await fire(store, T0 + 60)).fired
        assert first.inserted is not None
        running = await claim_one(store, T0 + 61)
        assert running.id == first.inserted.job.id
        (second,) = (await fire(store, T0 + 120)).fired
        assert second.cancelled is not None and second.cancelled.job.id == running.id
        assert [e.type for e in second.cancelled.events] == [EventType.CANCEL_REQUESTED]
        assert (await store.get_job(running.id)).cancel_requested
        assert second.inserted is not None and second.inserted.created
        (third,) = (await fire(store, T0 + 180)).fired  # the second job was still QUEUED: cancelled at once
        assert third.cancelled is not None and third.cancelled.job.state is JobState.CANCELLED

    async def test_skip_leaves_the_active_job_alone(self, store: Store) -> None:
        await one(store, CreateSchedule(schedule(overlap=OverlapPolicy.SKIP)))
        (first,) = (await fire(store, T0 + 60)).fired
        (second,) = (await fire(store, T0 + 120)).fired
        assert second.skipped and second.inserted is None and second.previous is not None
        assert first.inserted is not None and second.previous.id == first.inserted.job.id
        assert (await store.get_schedule("s1")).next_fire == T0 + 180

    async def test_a_trigger_fires_one_schedule_now_even_paused(self, store: Store) -> None:
        await one(store, CreateSchedule(paused(schedule(), T0)))
        result = await one(store, FireSchedules(T0 + 5, trigger(T0 + 5, "r-1"), REQUEST_TTL, schedule_id="s1"))
        (fired,) = result.fired
        assert fired.inserted is not None and fired.inserted.created and fired.inserted.job.run_at == T0 + 5
        again = await one(store, FireSchedules(T0 + 9, trigger(T0 + 9, "r-1"), REQUEST_TTL, schedule_id="s1"))
        assert again.fired[0].inserted.job.id == fired.inserted.job.id and not again.fired[0].inserted.created
        stored = await store.get_schedule("s1")
        assert stored.paused and stored.next_fire is None and stored.last_job_id == fired.inserted.job.id

    async def test_a_firing_batched_with_other_writes_commits_with_them(self, store: Store) -> None:
        await one(store, CreateSchedule(schedule()))
        results = await store.write([InsertJobs([nj(payload=b"a")], T0 + 60, REQUEST_TTL),
                                     FireSchedules(T0 + 60, timed(T0 + 60), REQUEST_TTL),
                                     InsertJobs([nj(payload=b"b")], T0 + 60, REQUEST_TTL)])
        assert results[1].fired[0].inserted.created
        assert len((await store.list_jobs(_all()))[0]) == 3

    async def test_sync_writes_and_deletes_what_its_plan_says(self, store: Store) -> None:
        await one(store, CreateSchedule(schedule("keep")))
        await one(store, CreateSchedule(schedule("drop")))
        seen: list[list[str]] = []

        def plan(found: Sequence[Schedule]) -> tuple[list[Schedule], list[str]]:
            seen.append([s.id for s in found])
            return [schedule("new", every=3600), replace(schedule("keep"), paused=True, next_fire=None)], ["drop"]

        result = await one(store, SyncSchedules(plan))
        assert seen == [["drop", "keep"]]
        assert [s.id for s in result.written] == ["new", "keep"] and result.deleted == ["drop"]
        assert result.next_due == T0 + 3600
        assert [s.id for s in (await store.list_schedules("", 10))[0]] == ["keep", "new"]
        assert (await store.get_schedule("keep")).paused

    async def test_schedules_survive_close_and_reopen(self, store: Store, reopen: Callable[[], Store]) -> None:
        item = schedule()
        await one(store, CreateSchedule(item))
        await store.close()
        again = reopen()
        await again.open()
        try:
            assert await again.get_schedule("s1") == item
        finally:
            await again.close()


def _all() -> JobQuery:
    return JobQuery(page_size=1000)
