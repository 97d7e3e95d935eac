"""Schedules in process, on the injectable clock: cron and interval firing, time zones and a
daylight saving change, overlap and catch-up policies, a restart between firings, pause and resume,
triggers, and the config file's schedules."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from jobwire_server.app import App, StartupError
from jobwire_server.domain.clock import FakeClock
from jobwire_server.domain.errors import ScheduleFromConfig, ScheduleNotFound
from jobwire_server.domain.models import Job
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.schedules import (
    SCHEDULE_LABEL,
    CatchupPolicy,
    JobTemplate,
    OverlapPolicy,
    ScheduleSpec,
    upcoming,
)
from jobwire_server.domain.states import ACTIVE_STATES, EventType, JobState
from jobwire_server.domain.timing import show
from jobwire_server.handlers import JobContext, Kind

from tests.testkit import Harness, Recorder

pytestmark = pytest.mark.timeout(60)

#: A multiple of a day: 2027-01-15T00:00:00Z... plus an offset the tests pick.
DAY0 = 1_800_057_600.0
started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
release: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
cancelled: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

work = Kind("t.work")


@work.phase("run")
async def work_run(ctx: JobContext) -> bytes:
    return ctx.payload


held = Kind("t.held", max_attempts=1)


@held.phase("hold")
async def hold(ctx: JobContext) -> bytes:
    started[ctx.job_id].set()
    try:
        await release[ctx.job_id].wait()
    except asyncio.CancelledError:
        cancelled[ctx.job_id].set()
        raise
    return b"released"


KINDS = (work, held)


def template(kind: Kind = work, payload: bytes = b"tick") -> JobTemplate:
    return JobTemplate(queue=kind.queue, kind=kind.name, payload=payload, priority=5,
                       max_attempts=kind.max_attempts, timeout=0.0, phase_names=kind.phase_names)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.stop_all()


async def start(harness: Harness, clock: FakeClock, **settings: object) -> App:
    app = await harness.start(*KINDS, clock=clock, **settings)
    await settled(app)
    return app


async def settled(app: App) -> None:
    """The scheduler has made its first pass (at start)."""
    async with asyncio.timeout(5):
        while app.scheduler.passes == 0:
            await app.scheduler.passed.wait()


async def fire_round(app: App) -> None:
    """Tick the scheduler (as the dispatcher's timer does) and wait for its pass."""
    done = app.scheduler.passed
    app.scheduler.tick()
    async with asyncio.timeout(5):
        await done.wait()


async def jobs_of(app: App, schedule_id: str) -> list[Job]:
    jobs, _ = await app.store.list_jobs(JobQuery(labels={SCHEDULE_LABEL: schedule_id}, page_size=1000))
    return sorted(jobs, key=lambda j: j.id)


async def finished(rec: Recorder, jobs: list[Job]) -> None:
    for job in jobs:
        await rec.wait_final(job.id)


# ---------------------------------------------------------------------- firing


async def test_an_interval_schedule_fires_each_time_it_is_due(harness: Harness) -> None:
    clock = FakeClock(DAY0 + 10)
    app = await start(harness, clock)
    rec = Recorder(app.hub)
    schedule = await app.schedules.create("minutely", ScheduleSpec(template=template(), interval=60))
    assert schedule.next_fire == DAY0 + 60
    clock.advance(49)
    await fire_round(app)
    assert await jobs_of(app, "minutely") == []
    for n in (1, 2):
        clock.advance(60 if n == 2 else 1)
        await fire_round(app)
        jobs = await jobs_of(app, "minutely")
        assert len(jobs) == n
        await finished(rec, jobs)
    first, second = await jobs_of(app, "minutely")
    assert (first.run_at, second.run_at) == (DAY0 + 60, DAY0 + 120)
    stored = await app.schedules.get("minutely")
    assert (stored.last_fire, stored.next_fire, stored.last_job_id) == (DAY0 + 120, DAY0 + 180, second.id)
    assert (await app.service.get(second.id)).result == b"tick"
    assert [e.type for e in rec.of(second.id)][:1] == [EventType.ENQUEUED]


async def test_a_cron_schedule_fires_in_its_time_zone(harness: Harness) -> None:
    paris = ZoneInfo("Europe/Paris")
    nine = datetime(2027, 1, 15, 9, 0, tzinfo=paris).timestamp()
    clock = FakeClock(nine - 30)
    app = await start(harness, clock)
    schedule = await app.schedules.create("paris", ScheduleSpec(template=template(), cron="0 9 * * MON-FRI",
                                                                 time_zone="Europe/Paris"))
    assert [show(t) for t in upcoming(schedule, 3)] == ["2027-01-15T08:00:00Z", "2027-01-18T08:00:00Z",
                                                        "2027-01-19T08:00:00Z"]
    clock.advance(30)
    await fire_round(app)
    (job,) = await jobs_of(app, "paris")
    assert job.run_at == nine


async def test_a_daylight_saving_change_fires_as_cron_does(harness: Harness) -> None:
    new_york = ZoneInfo("America/New_York")
    # 14 March 2027: New York's clocks jump from 02:00 EST to 03:00 EDT.
    clock = FakeClock(datetime(2027, 3, 14, 0, 30, tzinfo=new_york).timestamp())
    app = await start(harness, clock)
    daily = await app.schedules.create("daily", ScheduleSpec(template=template(), cron="30 2 * * *",
                                                             time_zone="America/New_York"))
    hourly = await app.schedules.create("hourly", ScheduleSpec(template=template(), cron="0 * * * *",
                                                               time_zone="America/New_York"))

    def local(times: list[float]) -> list[str]:
        return [datetime.fromtimestamp(t, new_york).strftime("%d %H:%M %Z") for t in times]

    assert local(upcoming(daily, 2)) == ["14 03:00 EDT", "15 02:30 EDT"]  # the skipped 02:30 fires at the jump
    assert local(upcoming(hourly, 3)) == ["14 01:00 EST", "14 03:00 EDT", "14 04:00 EDT"]  # no 02:00
    for _ in range(3):  # 01:00 EST, then 03:00 EDT (one real hour later) for both
        assert hourly.next_fire is not None
        clock.advance(hourly.next_fire - clock.now())
        await fire_round(app)
        hourly = await app.schedules.get("hourly")
    assert local([j.run_at for j in await jobs_of(app, "hourly")]) == ["14 01:00 EST", "14 03:00 EDT",
                                                                      "14 04:00 EDT"]
    assert local([j.run_at for j in await jobs_of(app, "daily")]) == ["14 03:00 EDT"]


async def test_jitter_delays_each_firings_job_by_a_fixed_share(harness: Harness) -> None:
    clock = FakeClock(DAY0)
    app = await start(harness, clock)
    await app.schedules.create("jittery", ScheduleSpec(template=template(), interval=3600, jitter=600.0))
    clock.advance(3600)
    await fire_round(app)
    (job,) = await jobs_of(app, "jittery")
    assert job.state is JobState.SCHEDULED and DAY0 + 3600 < job.run_at < DAY0 + 3600 + 600


# ---------------------------------------------------------------------- overlap


async def held_schedule(app: App, clock: FakeClock, overlap: OverlapPolicy) -> list[Job]:
    """Two firings of a schedule whose jobs hold until released; the jobs of the schedule after them."""
    await app.schedules.create("held", ScheduleSpec(template=template(held), interval=60, overlap=overlap))
    clock.advance(60)
    await fire_round(app)
    (first,) = await jobs_of(app, "held")
    async with asyncio.timeout(5):
        await started[first.id].wait()
    clock.advance(60)
    await fire_round(app)
    return await jobs_of(app, "held")


async def test_overlap_allow_runs_both(harness: Harness) -> None:
    clock = FakeClock(DAY0)
    app = await start(harness, clock)
    first, second = await held_schedule(app, clock, OverlapPolicy.ALLOW)
    async with asyncio.timeout(5):
        await started[second.id].wait()
    assert (await app.service.get(first.id)).state is JobState.RUNNING
    release[first.id].set()
    release[second.id].set()


async def test_overlap_skip_enqueues_nothing_while_the_previous_job_runs(harness: Harness) -> None:
    clock = FakeClock(DAY0)
    app = await start(harness, clock)
    rec = Recorder(app.hub)
    (first,) = await held_schedule(app, clock, OverlapPolicy.SKIP)
    stored = await app.schedules.get("held")
    assert stored.last_job_id == first.id and stored.last_fire == DAY0 + 120 and stored.next_fire == DAY0 + 180
    release[first.id].set()
    await rec.wait_final(first.id)
    clock.advance(60)
    await fire_round(app)
    assert len(await jobs_of(app, "held")) == 2  # the previous job finished: the next firing runs


async def test_overlap_cancel_previous_stops_the_running_job_first(harness: Harness) -> None:
    clock = FakeClock(DAY0)
    app = await start(harness, clock)
    rec = Recorder(app.hub)
    first, second = await held_schedule(app, clock, OverlapPolicy.CANCEL_PREVIOUS)
    final = await rec.wait_final(first.id)
    assert final.type is EventType.CANCELLED and cancelled[first.id].is_set()
    assert final.detail.startswith("superseded by the firing of schedule held at")
    async with asyncio.timeout(5):
        await started[second.id].wait()
    release[second.id].set()


# ---------------------------------------------------------------------- gaps, restarts, pauses


@pytest.mark.parametrize(("catchup", "expected"), [(CatchupPolicy.SKIP, 0), (CatchupPolicy.RUN_ONCE, 1)])
async def test_after_downtime_catch_up_skips_the_missed_window_or_runs_it_once(
        harness: Harness, catchup: CatchupPolicy, expected: int) -> None:
    clock = FakeClock(DAY0)
    app = await start(harness, clock, db="gap.db")
    await app.schedules.create("hourly", ScheduleSpec(template=template(), interval=3600, catchup=catchup))
    await harness.stop_all()
    clock.advance(5 * 3600 + 1800)  # down through five firing times; back half an hour after the last
    app = await start(harness, clock, db="gap.db")
    jobs = await jobs_of(app, "hourly")
    assert len(jobs) == expected
    stored = await app.schedules.get("hourly")
    assert (stored.last_fire, stored.next_fire) == (DAY0 + 5 * 3600, DAY0 + 6 * 3600)
    clock.advance(1800)
    await fire_round(app)
    assert len(await jobs_of(app, "hourly")) == expected + 1  # then on schedule again


async def test_a_restart_between_firings_neither_doubles_nor_misses_one(harness: Harness) -> None:
    clock = FakeClock(DAY0)
    app = await start(harness, clock, db="restart.db")
    await app.schedules.create("hourly", ScheduleSpec(template=template(), interval=3600))
    clock.advance(3600)
    await fire_round(app)
    assert len(await jobs_of(app, "hourly")) == 1
    await harness.stop_all()
    app = await start(harness, clock, db="restart.db")  # at the same moment: nothing is due again
    assert len(await jobs_of(app, "hourly")) == 1
    await harness.stop_all()
    clock.advance(3600 + 45)  # back 45 s after the next firing time: late, not missed
    app = await start(harness, clock, db="restart.db")
    jobs = await jobs_of(app, "hourly")
    assert [j.run_at for j in jobs] == [DAY0 + 3600, clock.now()]  # the late one is due at once
    assert (await app.schedules.get("hourly")).last_fire == DAY0 + 7200
    await fire_round(app)
    assert len(await jobs_of(app, "hourly")) == 2


async def test_pause_stops_firing_and_resume_starts_after_now(harness: Harness) -> None:
    clock = FakeClock(DAY0)
    app = await start(harness, clock)
    await app.schedules.create("minutely", ScheduleSpec(template=template(), interval=60))
    paused = await app.schedules.pause("minutely")
    assert paused.paused and paused.next_fire is None and upcoming(paused) == []
    assert await app.schedules.pause("minutely") == paused  # again: nothing changes
    clock.advance(600)
    await fire_round(app)
    assert await jobs_of(app, "minutely") == []
    clock.advance(30)
    resumed = await app.schedules.resume("minutely")
    assert not resumed.paused and resumed.next_fire == DAY0 + 660  # the paused ten minutes are not made up
    await fire_round(app)
    assert await jobs_of(app, "minutely") == []
    clock.advance(30)
    await fire_round(app)
    assert len(await jobs_of(app, "minutely")) == 1


async def test_a_trigger_fires_now_once_per_request_id_paused_or_not(harness: Harness) -> None:
    clock = FakeClock(DAY0)
    app = await start(harness, clock)
    await app.schedules.create("manual", ScheduleSpec(template=template(), interval=86_400), paused=True)
    fired = await app.schedules.trigger("manual", "req-1")
    assert fired.inserted is not None and fired.inserted.created and fired.inserted.job.run_at == DAY0
    clock.advance(5)
    again = await app.schedules.trigger("manual", "req-1")
    assert again.inserted is not None and again.inserted.job.id == fired.inserted.job.id
    other = await app.schedules.trigger("manual")
    assert other.inserted is not None and other.inserted.created
    stored = await app.schedules.get("manual")
    assert stored.paused and stored.next_fire is None and stored.last_job_id == other.inserted.job.id
    with pytest.raises(ScheduleNotFound):
        await app.schedules.trigger("nope")


async def test_the_timer_fires_schedules_without_being_told(harness: Harness) -> None:
    clock = FakeClock(DAY0 + 60 - 0.05)
    app = await start(harness, clock)
    rec = Recorder(app.hub)
    # Due 50 ms from now: the dispatcher's timer is armed for that (in real time); the fake clock is
    # then moved to the firing time, so the timer's pass finds the schedule due.
    await app.schedules.create("soon", ScheduleSpec(template=template(), interval=60))
    clock.advance(0.05)
    async with asyncio.timeout(5):
        while not await jobs_of(app, "soon"):
            await app.scheduler.passed.wait()
    await finished(rec, await jobs_of(app, "soon"))


async def test_schedules_still_fire_while_jobs_wait_for_a_slot(harness: Harness) -> None:
    clock = FakeClock(DAY0)
    app = await start(harness, clock, concurrency=1)
    await app.schedules.create("busy", ScheduleSpec(template=template(held), interval=60))
    clock.advance(60)
    await fire_round(app)
    clock.advance(60)
    await fire_round(app)
    jobs = await jobs_of(app, "busy")
    assert len(jobs) == 2 and all(j.state in ACTIVE_STATES for j in jobs)
    for job in jobs:
        release[job.id].set()


# ---------------------------------------------------------------------- the config file


def declared(**overrides: object) -> dict[str, object]:
    return {"id": "nightly", "kind": "t.work", "cron": "0 3 * * *", "time_zone": "Europe/Paris",
            "payload": {"day": "yesterday"}, "overlap": "skip", "catchup": "run_once", **overrides}


async def test_config_file_schedules_are_synced_at_start(harness: Harness) -> None:
    clock = FakeClock(DAY0)
    hourly = declared(id="other", cron="", time_zone="", every="1h")
    app = await start(harness, clock, db="config.db", schedules=[declared(), hourly])
    nightly = await app.schedules.get("nightly")
    assert nightly.from_config and nightly.spec.cron == "0 3 * * *" and nightly.spec.time_zone == "Europe/Paris"
    assert nightly.spec.overlap is OverlapPolicy.SKIP and nightly.spec.catchup is CatchupPolicy.RUN_ONCE
    assert nightly.spec.template.payload == b'{"day":"yesterday"}'
    assert (await app.schedules.get("other")).spec.interval == 3600
    with pytest.raises(ScheduleFromConfig):
        await app.schedules.update("nightly", nightly.spec)
    with pytest.raises(ScheduleFromConfig):
        await app.schedules.delete("nightly")
    await app.schedules.pause("nightly")  # operations are allowed
    await app.schedules.create("from-api", ScheduleSpec(template=template(), interval=60))
    await harness.stop_all()

    clock.advance(10)
    app = await start(harness, clock, db="config.db", schedules=[declared(), hourly])
    assert (await app.schedules.get("other")).update_time == DAY0, "an unchanged declaration is not rewritten"
    await harness.stop_all()

    app = await start(harness, clock, db="config.db", schedules=[declared(cron="0 4 * * *")])
    changed = await app.schedules.get("nightly")
    assert changed.spec.cron == "0 4 * * *" and changed.paused  # the paused state is the operators'
    with pytest.raises(ScheduleNotFound):
        await app.schedules.get("other")  # no longer declared: deleted
    assert not (await app.schedules.get("from-api")).from_config  # the API's are left alone
    await harness.stop_all()

    with pytest.raises(StartupError, match="declares schedule 'from-api', which was created through the API"):
        await harness.start(*KINDS, clock=clock, db="config.db", schedules=[declared(id="from-api")])


@pytest.mark.parametrize(("table", "message"), [
    (declared(kind="nope"), "'nightly': spec.template.kind: no handler is registered for kind 'nope'"),
    (declared(cron="0 25 * * *"), "'nightly': spec.cron:"),
    (declared(time_zone="Mars/Base"), "'nightly': spec.time_zone: unknown time zone"),
    (declared(cron="", every="90s", time_zone=""), None),
    (declared(cron="", every="1.5s", time_zone=""), "'nightly': spec.interval: must be a whole number"),
])
async def test_config_file_schedules_are_validated_like_the_api(harness: Harness, table: dict[str, object],
                                                               message: str | None) -> None:
    if message is None:
        app = await harness.start(*KINDS, clock=FakeClock(DAY0), schedules=[table])
        assert (await app.schedules.get("nightly")).spec.interval == 90
        return
    with pytest.raises(StartupError, match="config file schedules: " + message.replace("(", r"\(")):
        await harness.start(*KINDS, clock=FakeClock(DAY0), schedules=[table])

