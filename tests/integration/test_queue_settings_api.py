"""The queue RPCs over real loopback gRPC: bad input answered INVALID_ARGUMENT with a field
violation per bad field, NOT_FOUND for a queue nobody knows, paging, and what a queue shows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc
from jobwire_server.app import App

from tests.testkit import Harness, error_details

pytestmark = pytest.mark.timeout(60)

Stub = jobwire_pb2_grpc.JobServiceStub


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    harness = Harness(tmp_path)
    from jobwire_server.handlers.builtin import noop  # noqa: PLC0415

    yield await harness.start(noop, queue_concurrency={"media": 2})
    await harness.stop_all()


@pytest.fixture
async def stub(app: App) -> AsyncIterator[Stub]:
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


async def failure(call: object) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


BAD_UPDATES = [
    pytest.param({"rate_limit": -1.0}, {"rate_limit": "between 0 and 10,000"}, id="negative-rate"),
    pytest.param({"rate_limit": float("nan")}, {"rate_limit": "between 0 and 10,000"}, id="nan-rate"),
    pytest.param({"rate_limit": 10_001.0}, {"rate_limit": "between 0 and 10,000"}, id="rate-over-max"),
    pytest.param({"rate_limit": 5.0, "rate_burst": -1}, {"rate_burst": "between 1 and 100,000"}, id="burst-below-1"),
    pytest.param({"concurrency_limit": 100_001}, {"concurrency_limit": "between 1 and 100,000"}, id="limit-over-max"),
    pytest.param({"concurrency_limit": -3}, {"concurrency_limit": "between 1 and 100,000"}, id="negative-limit"),
    pytest.param({"key_limit": 10_001}, {"key_limit": "between 1 and 10,000"}, id="key-limit-over-max"),
    pytest.param({"default_priority": 11}, {"default_priority": "between 1 and 10"}, id="priority"),
    pytest.param({"default_max_attempts": 1001}, {"default_max_attempts": "between 1 and 1,000"}, id="attempts"),
    pytest.param({}, {"name": "no setting given"}, id="nothing-to-change"),
]


@pytest.mark.parametrize(("fields", "expected"), BAD_UPDATES)
async def test_bad_updates_are_invalid_argument_with_the_field_named(stub: Stub, fields: dict[str, object],
                                                                     expected: dict[str, str]) -> None:
    error = await failure(stub.UpdateQueue(pb.UpdateQueueRequest(name="media", **fields)))  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    reason, violations = error_details(error)
    assert reason == "INVALID_ARGUMENT" and set(violations) == set(expected), violations
    for field, text in expected.items():
        assert text in violations[field], (field, violations[field])


async def test_every_bad_field_is_reported_at_once(stub: Stub) -> None:
    error = await failure(stub.UpdateQueue(pb.UpdateQueueRequest(name="bad name!", rate_limit=-5, key_limit=-1,
                                                                 default_priority=99)))
    assert set(error_details(error)[1]) == {"name", "rate_limit", "key_limit", "default_priority"}


async def test_fields_this_server_does_not_know_are_refused_not_ignored(app: App) -> None:
    # A newer client's UpdateQueue with a setting at field 99 (varint 7): applying the rest would
    # leave the caller believing a limit is in force.
    raw = pb.UpdateQueueRequest(name="media", rate_limit=5).SerializeToString() + bytes([0x98, 0x06, 0x07])
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        call = channel.unary_unary("/jobwire.v1.JobService/UpdateQueue", request_serializer=None,
                                   response_deserializer=pb.Queue.FromString)
        error = await failure(call(raw))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "99" in error_details(error)[1]["(unknown fields)"]
    assert await app.store.queue_settings("media") is None, "nothing was written"


@pytest.mark.parametrize("method", ["PauseQueue", "ResumeQueue", "GetQueue"])
async def test_names_are_checked_and_an_unknown_queue_is_not_found(stub: Stub, method: str) -> None:
    request_type = getattr(pb, f"{method}Request")
    error = await failure(getattr(stub, method)(request_type(name="")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error_details(error)[1] == {"name": "required"}
    error = await failure(getattr(stub, method)(request_type(name="no/such")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in error_details(error)[1]
    error = await failure(stub.GetQueue(pb.GetQueueRequest(name="nobody")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and error_details(error)[0] == "QUEUE_NOT_FOUND"


async def test_a_concurrency_key_over_256_characters_is_refused(stub: Stub) -> None:
    error = await failure(stub.Enqueue(pb.EnqueueRequest(kind="noop", concurrency_key="k" * 257)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 256" in error_details(error)[1]["concurrency_key"]


async def test_a_queue_shows_its_settings_counts_and_this_replicas_limit(stub: Stub) -> None:
    await stub.Enqueue(pb.EnqueueRequest(queue="plain", kind="noop"))
    updated = await stub.UpdateQueue(pb.UpdateQueueRequest(name="media", concurrency_limit=5, rate_limit=2.5,
                                                           key_limit=1))
    assert (updated.settings.concurrency_limit, updated.settings.rate_limit, updated.settings.key_limit) == (5, 2.5, 1)
    assert updated.settings.rate_burst == 3, "an unset burst is one second's worth of the rate, rounded up"
    assert updated.replica_concurrency_limit == 2 and not updated.replica_limit_global
    assert updated.HasField("update_time")
    kept = await stub.UpdateQueue(pb.UpdateQueueRequest(name="media", rate_limit=0))
    assert (kept.settings.concurrency_limit, kept.settings.rate_limit, kept.settings.rate_burst) == (5, 0.0, 0)
    plain = await stub.GetQueue(pb.GetQueueRequest(name="plain"))
    assert not plain.HasField("update_time") and plain.settings == pb.QueueSettings()
    stats = await stub.GetQueueStats(pb.GetQueueStatsRequest(queue="media"))
    assert stats.queues[0].settings.key_limit == 1 and not stats.queues[0].paused


async def test_list_queues_pages_by_name_over_settings_and_jobs(stub: Stub) -> None:
    for name in ("c", "a"):
        await stub.PauseQueue(pb.PauseQueueRequest(name=name))
    await stub.Enqueue(pb.EnqueueRequest(queue="b", kind="noop"))
    first = await stub.ListQueues(pb.ListQueuesRequest(page_size=2))
    assert [q.name for q in first.queues] == ["a", "b"] and first.next_page_token
    second = await stub.ListQueues(pb.ListQueuesRequest(page_size=2, page_token=first.next_page_token))
    assert [q.name for q in second.queues] == ["c"] and not second.next_page_token
    assert second.queues[0].settings.paused
    error = await failure(stub.ListQueues(pb.ListQueuesRequest(page_size=-1, page_token="forged")))
    assert set(error_details(error)[1]) == {"page_size", "page_token"}


async def test_a_schedule_template_keeps_its_concurrency_key(stub: Stub) -> None:
    template = pb.EnqueueRequest(kind="noop", queue="tenants", concurrency_key="tenant-9")
    created = await stub.CreateSchedule(pb.CreateScheduleRequest(
        id="per-tenant", spec=pb.ScheduleSpec(template=template, cron="@daily"), paused=True))
    assert created.spec.template.concurrency_key == "tenant-9"
    fired = await stub.TriggerSchedule(pb.TriggerScheduleRequest(id="per-tenant"))
    assert fired.job.concurrency_key == "tenant-9" and fired.job.queue == "tenants"
