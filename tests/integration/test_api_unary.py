"""Unary RPCs over real loopback gRPC: every error status with its details, and paging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc
from jobwire_server.app import App
from jobwire_server.config import build_config

UNKNOWN_ID = "01a205c2-9858-7285-8416-89234471bb78"
FAR = duration_pb2.Duration(seconds=3600)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    application = App(build_config({"db": str(tmp_path / "j.db"), "listen": "127.0.0.1:0",
                                    "max_payload_bytes": 1000, "max_message_bytes": 64 * 1024}))
    await application.start()
    yield application
    await application.stop()


@pytest.fixture
async def stub(app: App) -> AsyncIterator[jobwire_pb2_grpc.JobServiceStub]:
    async with aio.insecure_channel(f"127.0.0.1:{app.port}", options=[
            ("grpc.max_send_message_length", 8 << 20)]) as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


def _details(error: aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo | None, list[str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    info, fields = None, []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return info, fields


async def _error(call: object) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


BAD_ENQUEUES = [
    (pb.EnqueueRequest(), "kind"),
    (pb.EnqueueRequest(kind="noop", priority=11), "priority"),
    (pb.EnqueueRequest(kind="noop", priority=-1), "priority"),
    (pb.EnqueueRequest(kind="noop", delay=duration_pb2.Duration(seconds=-5)), "delay"),
    (pb.EnqueueRequest(kind="noop", delay=FAR, run_at=timestamp_pb2.Timestamp(seconds=2_000_000_000)), "run_at"),
    (pb.EnqueueRequest(kind="noop", labels={"k" * 64: "v"}), "labels"),
    (pb.EnqueueRequest(kind="noop", labels={"k": "v" * 257}), "labels"),
    (pb.EnqueueRequest(kind="noop", labels={f"k{i}": "v" for i in range(65)}), "labels"),
    (pb.EnqueueRequest(kind="noop", queue="bad queue!"), "queue"),
    (pb.EnqueueRequest(kind="noop", webhook=pb.WebhookConfig(url="ftp://x")), "webhook.url"),
    (pb.EnqueueRequest(kind="noop", webhook=pb.WebhookConfig(url="https://x.example", events=[77])),
     "webhook.events"),
]


@pytest.mark.parametrize(("request_", "field"), BAD_ENQUEUES)
async def test_bad_enqueue_fields_are_invalid_argument_with_field_violations(
        stub: jobwire_pb2_grpc.JobServiceStub, request_: pb.EnqueueRequest, field: str) -> None:
    error = await _error(stub.Enqueue(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = _details(error)
    assert info is not None and info.domain == "jobwire"
    assert any(f.startswith(field) for f in fields), fields


async def test_unknown_kind_is_invalid_argument(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    error = await _error(stub.Enqueue(pb.EnqueueRequest(kind="no.such.kind")))
    info, fields = _details(error)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and info is not None
    assert info.reason == "UNKNOWN_KIND" and "kind" in fields


async def test_payload_over_the_cap_is_resource_exhausted(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    error = await _error(stub.Enqueue(pb.EnqueueRequest(kind="noop", payload=b"x" * 1001)))
    info, _ = _details(error)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and info is not None
    assert info.reason == "PAYLOAD_TOO_LARGE"


async def test_message_over_the_transport_limit_is_resource_exhausted(
        stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    error = await _error(stub.Enqueue(pb.EnqueueRequest(kind="noop", payload=b"x" * (128 * 1024))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("rpc", ["GetJob", "CancelJob", "RetryJob"])
async def test_bad_and_unknown_ids(stub: jobwire_pb2_grpc.JobServiceStub, rpc: str) -> None:
    request_type = {"GetJob": pb.GetJobRequest, "CancelJob": pb.CancelJobRequest, "RetryJob": pb.RetryJobRequest}
    method = getattr(stub, rpc)
    bad = await _error(method(request_type[rpc](id="not-an-id")))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "id" in _details(bad)[1]
    missing = await _error(method(request_type[rpc](id=UNKNOWN_ID)))
    info, _ = _details(missing)
    assert missing.code() == grpc.StatusCode.NOT_FOUND and info is not None and info.reason == "JOB_NOT_FOUND"


async def test_transitions_the_state_does_not_allow_are_failed_precondition(
        stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    queued = (await stub.Enqueue(pb.EnqueueRequest(kind="noop", delay=FAR))).job
    error = await _error(stub.RetryJob(pb.RetryJobRequest(id=queued.id)))
    info, _ = _details(error)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and info is not None
    assert info.reason == "INVALID_TRANSITION"
    done = (await stub.Enqueue(pb.EnqueueRequest(kind="noop"))).job
    async for _ in stub.WatchJob(pb.WatchJobRequest(id=done.id)):
        pass
    error = await _error(stub.CancelJob(pb.CancelJobRequest(id=done.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = await _error(stub.RetryJob(pb.RetryJobRequest(id=done.id, from_start=False)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    again = await stub.RetryJob(pb.RetryJobRequest(id=done.id, from_start=True))
    assert again.state == pb.JOB_STATE_QUEUED


async def test_reused_request_id_with_a_different_request_is_already_exists(
        stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    first = await stub.Enqueue(pb.EnqueueRequest(kind="noop", payload=b"a", request_id="r-1", delay=FAR))
    again = await stub.Enqueue(pb.EnqueueRequest(kind="noop", payload=b"a", request_id="r-1", delay=FAR))
    assert again.job.id == first.job.id
    error = await _error(stub.Enqueue(pb.EnqueueRequest(kind="noop", payload=b"b", request_id="r-1", delay=FAR)))
    info, _ = _details(error)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and info is not None
    assert info.reason == "REQUEST_ID_REUSED"


async def test_enqueue_batch_is_all_or_nothing(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    good = pb.EnqueueRequest(kind="noop", delay=FAR, labels={"batch": "b1"})
    error = await _error(stub.EnqueueBatch(pb.EnqueueBatchRequest(requests=[good, pb.EnqueueRequest(), good])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1].kind" in _details(error)[1]
    listed = await stub.ListJobs(pb.ListJobsRequest(labels={"batch": "b1"}))
    assert len(listed.jobs) == 0
    reply = await stub.EnqueueBatch(pb.EnqueueBatchRequest(requests=[good] * 3))
    assert len({r.job.id for r in reply.responses}) == 3
    too_many = await _error(stub.EnqueueBatch(pb.EnqueueBatchRequest(requests=[good] * 1001)))
    assert too_many.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_writes_while_shutting_down_are_unavailable(app: App, stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    app.service.accepting = False  # the state stop() puts the service in before draining
    error = await _error(stub.Enqueue(pb.EnqueueRequest(kind="noop")))
    info, _ = _details(error)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and info is not None and info.reason == "SHUTTING_DOWN"
    app.service.accepting = True


async def test_list_pages_newest_first_and_stay_stable_under_concurrent_inserts(
        stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    template = pb.EnqueueRequest(kind="noop", delay=FAR, labels={"set": "paging"})
    created = [r.job.id for r in (await stub.EnqueueBatch(pb.EnqueueBatchRequest(requests=[template] * 120))).responses]
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListJobs(pb.ListJobsRequest(labels={"set": "paging"}, page_size=25, page_token=token))
        seen += [j.id for j in page.jobs]
        # Insert more between pages: they are newer, so they never appear on later pages.
        await stub.EnqueueBatch(pb.EnqueueBatchRequest(requests=[template] * 5))
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(created, reverse=True)


async def test_list_rejects_negative_page_size_and_tampered_tokens(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    error = await _error(stub.ListJobs(pb.ListJobsRequest(page_size=-1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in _details(error)[1]
    await stub.EnqueueBatch(pb.EnqueueBatchRequest(requests=[pb.EnqueueRequest(kind="noop", delay=FAR)] * 3))
    page = await stub.ListJobs(pb.ListJobsRequest(page_size=1))
    token = page.next_page_token
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    error = await _error(stub.ListJobs(pb.ListJobsRequest(page_size=1, page_token=tampered)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in _details(error)[1]
    error = await _error(stub.ListJobs(pb.ListJobsRequest(page_size=1, page_token=token, kind="sleep")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_filters_by_state_kind_queue_and_time(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    waiting = (await stub.Enqueue(pb.EnqueueRequest(kind="noop", queue="q1", delay=FAR))).job
    done = (await stub.Enqueue(pb.EnqueueRequest(kind="noop", queue="q1"))).job
    async for _ in stub.WatchJob(pb.WatchJobRequest(id=done.id)):
        pass
    scheduled = await stub.ListJobs(pb.ListJobsRequest(queue="q1", states=[pb.JOB_STATE_SCHEDULED]))
    assert [j.id for j in scheduled.jobs] == [waiting.id]
    succeeded = await stub.ListJobs(pb.ListJobsRequest(kind="noop", states=[pb.JOB_STATE_SUCCEEDED]))
    assert [j.id for j in succeeded.jobs] == [done.id]
    before = await stub.ListJobs(pb.ListJobsRequest(queue="q1", created_before=done.create_time))
    assert [j.id for j in before.jobs] == [waiting.id]


async def test_queue_stats_count_states_and_oldest_queued_age(stub: jobwire_pb2_grpc.JobServiceStub,
                                                              app: App) -> None:
    await app.dispatcher.stop_claiming()  # keep them QUEUED
    await stub.EnqueueBatch(pb.EnqueueBatchRequest(requests=[pb.EnqueueRequest(kind="noop", queue="stats")] * 4))
    await stub.Enqueue(pb.EnqueueRequest(kind="noop", queue="stats", delay=FAR))
    await asyncio.sleep(0.01)  # sleep-ok: lets the oldest job age measurably
    reply = await stub.GetQueueStats(pb.GetQueueStatsRequest(queue="stats"))
    (stats,) = reply.queues
    assert (stats.queued, stats.scheduled, stats.running) == (4, 1, 0)
    assert stats.oldest_queued_age.ToNanoseconds() > 0
    empty = await stub.GetQueueStats(pb.GetQueueStatsRequest(queue="nothing-here"))
    assert [(q.queue, q.queued) for q in empty.queues] == [("nothing-here", 0)]
