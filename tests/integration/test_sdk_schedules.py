"""Schedules through the Python SDK (async and sync) against a real server over loopback gRPC."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import jobwire
import pytest
from jobwire import CatchupPolicy, OverlapPolicy, ScheduleSpec

from tests.conftest import ServerProcess

WAIT = 30.0


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[jobwire.Client]:
    async with jobwire.Client(server.target) as client:
        yield client


def _id() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


async def test_a_schedule_round_trips_with_its_effective_values(client: jobwire.Client) -> None:
    name = _id()
    spec = ScheduleSpec(kind="noop", cron="0 3 * * *", time_zone="Europe/Paris", payload={"day": "yesterday"},
                        labels={"team": "data"}, jitter=timedelta(minutes=5), overlap_policy=OverlapPolicy.SKIP,
                        catchup_policy="run-once", description="nightly")  # type: ignore[arg-type]
    created = await client.create_schedule(name, spec)
    assert created.id == name and not created.paused and not created.from_config
    assert len(created.next_fire_times) == 5 and created.next_fire_times[0].tzinfo is not None
    effective = created.spec
    assert (effective.kind, effective.cron, effective.time_zone, effective.interval) == (
        "noop", "0 3 * * *", "Europe/Paris", None)
    assert effective.payload == b'{"day":"yesterday"}' and effective.labels == {"team": "data"}
    assert effective.jitter == timedelta(minutes=5) and effective.description == "nightly"
    assert (effective.overlap_policy, effective.catchup_policy) == (OverlapPolicy.SKIP, CatchupPolicy.RUN_ONCE)
    assert (effective.queue, effective.priority, effective.max_attempts, effective.timeout) == (
        "default", 0, 0, timedelta(0))
    assert await client.get_schedule(name) == created
    assert name in [s.id async for s in client.list_schedules(page_size=1)]

    every = await client.update_schedule(name, ScheduleSpec(kind="noop", interval=3600))
    assert every.spec.interval == timedelta(hours=1) and every.spec.cron == ""
    assert every.spec.overlap_policy is OverlapPolicy.ALLOW  # replaced: defaults again
    assert (await client.pause_schedule(name)).next_fire_times == ()
    assert len((await client.resume_schedule(name)).next_fire_times) == 5
    await client.delete_schedule(name)
    with pytest.raises(jobwire.ScheduleNotFound) as caught:
        await client.get_schedule(name)
    assert caught.value.reason == "SCHEDULE_NOT_FOUND"


async def test_a_triggered_job_runs_and_its_retry_does_not_fire_twice(client: jobwire.Client) -> None:
    name = _id()
    await client.create_schedule(name, ScheduleSpec(kind="noop", interval=86_400, payload="hi"), paused=True)
    result = await client.trigger_schedule(name, request_id="once")
    assert not result.skipped and result.job is not None
    assert result.job.labels["jobwire/schedule"] == name
    async with asyncio.timeout(WAIT):
        assert await client.handle(result.job.id).result() == b"hi"
    again = await client.trigger_schedule(name, request_id="once")
    assert again.job is not None and again.job.id == result.job.id
    assert (await client.get_schedule(name)).last_job_id == result.job.id


async def test_errors_are_typed(client: jobwire.Client) -> None:
    name = _id()
    with pytest.raises(jobwire.InvalidArgument) as caught:
        await client.create_schedule(name, ScheduleSpec(kind="noop", cron="61 * * * *", time_zone="Nowhere"))
    assert {field for field, _ in caught.value.violations} == {"spec.cron", "spec.time_zone"}
    with pytest.raises(jobwire.InvalidArgument) as caught:
        await client.create_schedule(name, ScheduleSpec(kind="noop", interval=-5))
    assert [field for field, _ in caught.value.violations] == ["spec.interval"]
    await client.create_schedule(name, ScheduleSpec(kind="noop", cron="@daily"))
    with pytest.raises(jobwire.AlreadyExists) as exists:
        await client.create_schedule(name, ScheduleSpec(kind="noop", cron="@daily"))
    assert exists.value.reason == "SCHEDULE_EXISTS"
    await client.delete_schedule(name)


def test_the_sync_client_has_the_same_methods(server: ServerProcess) -> None:
    name = _id()
    with jobwire.sync.Client(server.target) as client:
        created = client.create_schedule(name, ScheduleSpec(kind="noop", cron="*/10 * * * *"))
        assert client.get_schedule(name) == created
        assert name in [s.id for s in client.list_schedules()]
        page, _ = client.list_schedules_page(page_size=1000)
        assert name in [s.id for s in page]
        assert client.update_schedule(name, ScheduleSpec(kind="noop", cron="@hourly")).spec.cron == "@hourly"
        assert client.pause_schedule(name).paused
        assert not client.resume_schedule(name).paused
        result = client.trigger_schedule(name)
        assert result.job is not None and client.handle(result.job.id).result(timeout=WAIT) == b""
        client.delete_schedule(name)
        with pytest.raises(jobwire.ScheduleNotFound):
            client.get_schedule(name)
