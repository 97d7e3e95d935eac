"""Schedules with two replicas on one PostgreSQL database: only the leader fires, and even two
replicas that both believe they lead fire each firing time once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from jobwire_server.app import App
from jobwire_server.domain.clock import FakeClock
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.schedules import SCHEDULE_LABEL, JobTemplate, ScheduleSpec
from jobwire_server.handlers import JobContext, Kind

from tests.testkit import Harness

pytestmark = pytest.mark.timeout(120)

DAY0 = 1_800_057_600.0
tick = Kind("t.tick")


@tick.phase("run")
async def tick_run(ctx: JobContext) -> bytes:
    return b"ok"


TEMPLATE = JobTemplate(queue="default", kind="t.tick", payload=b"", priority=5, max_attempts=3, timeout=0.0,
                       phase_names=("run",))


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.stop_all()


async def replicas(harness: Harness, pg_url: str, clock: FakeClock) -> tuple[App, App]:
    a = await harness.start(tick, clock=clock, db=pg_url)
    b = await harness.start(tick, clock=clock, db=pg_url)
    return a, b


async def leader_of(apps: tuple[App, App]) -> App:
    async with asyncio.timeout(30):
        while True:
            held = [app for app in apps if app.schedule_lease is not None and app.schedule_lease.held]
            if held:
                assert len(held) == 1, "two replicas hold the schedules lease"
                return held[0]
            await asyncio.sleep(0.05)  # sleep-ok: the lease is taken by each replica's own task


async def fire_round(app: App) -> None:
    done = app.scheduler.passed
    app.scheduler.tick()
    async with asyncio.timeout(10):
        await done.wait()


async def count_jobs(app: App, schedule_id: str | None = None) -> int:
    labels = {SCHEDULE_LABEL: schedule_id} if schedule_id else {}
    jobs, _ = await app.store.list_jobs(JobQuery(labels=labels, page_size=1000))
    return len([j for j in jobs if SCHEDULE_LABEL in j.labels])


async def test_a_schedule_fires_once_from_the_leader_of_two_replicas(harness: Harness, pg_url: str) -> None:
    clock = FakeClock(DAY0)
    apps = await replicas(harness, pg_url, clock)
    leader = await leader_of(apps)
    other = apps[1] if leader is apps[0] else apps[0]
    await other.schedules.create("shared", ScheduleSpec(template=TEMPLATE, interval=60))  # written elsewhere
    clock.advance(60)
    await fire_round(other)
    assert await count_jobs(other) == 0, "a replica that does not lead fires nothing"
    async with asyncio.timeout(10):  # the leader learns of the other replica's write, then fires it
        while await count_jobs(leader) == 0:
            leader.scheduler.refresh()
            await fire_round(leader)
    for _ in range(3):
        await asyncio.gather(fire_round(leader), fire_round(other))
    assert await count_jobs(leader, "shared") == 1
    stored = await other.schedules.get("shared")
    assert (stored.last_fire, stored.next_fire) == (DAY0 + 60, DAY0 + 120)


async def test_two_replicas_that_both_think_they_lead_fire_each_time_once(harness: Harness, pg_url: str) -> None:
    clock = FakeClock(DAY0)
    a, b = await replicas(harness, pg_url, clock)
    for app in (a, b):
        app.scheduler._may_run = lambda: True  # a lease that lapsed unnoticed, on both at once
    names = [f"s{n:02d}" for n in range(20)]
    for name in names:
        await a.schedules.create(name, ScheduleSpec(template=TEMPLATE, interval=60))
    for round_ in (1, 2, 3):
        clock.advance(60)
        for app in (a, b):
            app.scheduler.refresh()
        await asyncio.gather(*(fire_round(app) for app in (a, b) for _ in range(3)))
        for name in names:
            assert await count_jobs(a, name) == round_, name
