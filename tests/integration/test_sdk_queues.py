"""Queue controls through the Python SDK (async and sync) against a real server over loopback gRPC."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import jobwire
import jobwire.sync
import pytest
from jobwire import JobState, QueueSettings, WaitingReason

from tests.conftest import ServerProcess


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[jobwire.Client]:
    async with jobwire.Client(server.target) as client:
        yield client


def _name() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


async def test_pause_update_and_resume_a_queue_and_see_why_its_jobs_wait(client: jobwire.Client) -> None:
    name = _name()
    paused = await client.pause_queue(name)
    assert paused.name == name and paused.settings.paused and paused.update_time is not None
    handle = await client.enqueue("noop", {"n": 1}, queue=name, concurrency_key="tenant-a")
    job = await client.get_job(handle.id)
    assert (job.state, job.waiting_reason, job.concurrency_key) == (
        JobState.QUEUED, WaitingReason.QUEUE_PAUSED, "tenant-a")
    updated = await client.update_queue(name, rate_limit=20, rate_burst=5, key_limit=1, default_priority=7)
    assert updated.settings == QueueSettings(paused=True, rate_limit=20.0, rate_burst=5, key_limit=1,
                                             default_priority=7)
    assert updated.stats is not None and updated.stats.queued == 1 and updated.stats.paused
    assert (await client.enqueue("noop", queue=name)).job.priority == 7, "the queue's default priority"
    assert name in [q.name async for q in client.list_queues(page_size=1)]
    (stats,) = await client.queue_stats(name)
    assert stats.paused and stats.settings.key_limit == 1
    resumed = await client.resume_queue(name)
    assert not resumed.settings.paused
    assert (await handle.result(timeout=30)) == b'{"n":1}'


async def test_bad_settings_and_unknown_queues_raise_typed_errors(client: jobwire.Client) -> None:
    with pytest.raises(jobwire.InvalidArgument) as bad:
        await client.update_queue(_name(), rate_limit=-1, rate_burst=-2)
    assert {field for field, _ in bad.value.violations} == {"rate_limit", "rate_burst"}
    with pytest.raises(jobwire.QueueNotFound):
        await client.get_queue(_name())


def test_the_sync_client_has_the_queue_methods(server: ServerProcess) -> None:
    name = _name()
    with jobwire.sync.Client(server.target) as client:
        assert client.update_queue(name, concurrency_limit=3).settings.concurrency_limit == 3
        assert client.pause_queue(name).settings.paused
        assert client.get_queue(name).settings == QueueSettings(paused=True, concurrency_limit=3)
        queues, _ = client.list_queues_page(page_size=1000)
        assert name in [q.name for q in queues]
        assert name in [q.name for q in client.list_queues()]
        assert not client.resume_queue(name).settings.paused


async def test_a_schedule_spec_carries_a_concurrency_key(client: jobwire.Client) -> None:
    name = _name()
    spec = jobwire.ScheduleSpec(kind="noop", cron="@daily", queue=name, concurrency_key="tenant-3")
    created = await client.create_schedule(name, spec, paused=True)
    assert created.spec.concurrency_key == "tenant-3"
    fired = await client.trigger_schedule(name)
    assert fired.job is not None and fired.job.concurrency_key == "tenant-3"
