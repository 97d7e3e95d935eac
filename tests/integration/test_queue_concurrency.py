"""Concurrency limits over gRPC: the global limit and a per-queue limit, on one server started
with ``--concurrency 3 --queue-concurrency media=1``. Each test uses queues of its own and
releases every job it started, so the next test finds all slots free."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc

from tests.conftest import ServerProcess
from tests.testkit import Gate, finished, running

#: A hang fails the test instead of blocking the run.
pytestmark = pytest.mark.timeout(60)

S = pb.JobState
Stub = jobwire_pb2_grpc.JobServiceStub


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(tmp_path_factory.mktemp("queue-limits"), handlers="tests.testkit", concurrency=3,
                 queue_concurrency="media=1") as server:
        yield server


@pytest.fixture
async def stub(limited: ServerProcess) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(limited.target) as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


async def states(stub: Stub, jobs: list[pb.Job]) -> list[int]:
    return [(await stub.GetJob(pb.GetJobRequest(id=j.id), timeout=10)).state for j in jobs]


async def test_global_limit_keeps_extra_jobs_queued_until_a_slot_frees(stub: Stub) -> None:
    queue = f"g-{uuid.uuid4().hex[:8]}"
    async with Gate() as gate:
        batch = await stub.EnqueueBatch(pb.EnqueueBatchRequest(requests=[
            pb.EnqueueRequest(kind="tk.gate", payload=gate.payload(), queue=queue) for _ in range(4)]), timeout=10)
        jobs = [r.job for r in batch.responses]
        first = await gate.take(3)
        assert {c.job for c in first} == {j.id for j in jobs[:3]}, "the three best, in claim order"
        fourth = jobs[3]
        assert (await states(stub, [fourth])) == [S.JOB_STATE_QUEUED]
        stats = await stub.GetQueueStats(pb.GetQueueStatsRequest(queue=queue), timeout=10)
        assert (stats.queues[0].running, stats.queues[0].queued) == (3, 1)
        assert gate.waiting() == 0
        first[0].release()
        late = await gate.next()
        assert late.job == fourth.id
        assert (await finished(stub, first[0].job)).job.state == S.JOB_STATE_SUCCEEDED
        for call in (*first[1:], late):
            call.release()
        for job in jobs:
            assert (await finished(stub, job.id)).job.state == S.JOB_STATE_SUCCEEDED


async def test_queue_limit_holds_back_only_its_queue(stub: Stub) -> None:
    other = f"o-{uuid.uuid4().hex[:8]}"
    async with Gate() as gate:
        media = [(await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate.media", payload=gate.payload()),
                                     timeout=10)).job for _ in range(2)]
        assert {j.queue for j in media} == {"media"}
        plain = [(await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=gate.payload(), queue=other),
                                     timeout=10)).job for _ in range(2)]
        calls = await gate.take(3)
        assert sorted(c.kind for c in calls) == ["tk.gate", "tk.gate", "tk.gate.media"]
        media_call = next(c for c in calls if c.kind == "tk.gate.media")
        assert media_call.job == media[0].id
        assert await states(stub, [media[1]]) == [S.JOB_STATE_QUEUED], "media=1 although a global slot is free"
        # Free a slot of another queue: media is still full, so nothing new starts there. A low
        # priority probe proves a claim round ran: the waiting media job would have come first.
        plain_call = next(c for c in calls if c.kind == "tk.gate")
        plain_call.release()
        assert (await finished(stub, plain_call.job)).job.state == S.JOB_STATE_SUCCEEDED
        probe = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=gate.payload(), queue=other,
                                                      priority=1), timeout=10)).job
        probe_call = await gate.next()
        assert probe_call.job == probe.id
        assert await states(stub, [media[1]]) == [S.JOB_STATE_QUEUED]
        probe_call.release()
        # …until the media job finishes.
        media_call.release()
        second_media = await gate.next()
        assert second_media.job == media[1].id
        second_media.release()
        for call in calls:
            call.release()
        for job in (*media, *plain, probe):
            assert (await finished(stub, job.id)).job.state == S.JOB_STATE_SUCCEEDED
