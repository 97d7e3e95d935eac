"""Wire fuzz: thousands of mutated and random request bytes, sent raw to every JobService method and
to the health check of one real server. No call may end UNKNOWN or INTERNAL (an unhandled error);
afterwards the server is SERVING, has logged no traceback and only a few lines, and its RSS and open
file descriptors are back near where they were after a warm-up."""

from __future__ import annotations

import asyncio
import collections
import os
import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from jobwire.v1 import jobwire_pb2 as pb

from tests.conftest import ServerProcess
from tests.testkit import running

pytestmark = pytest.mark.timeout(180)

PER_METHOD = 400
SEED = 20261129
PARALLEL = 32
NOT_ALLOWED = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
JOB_ID = "01a205ce-80e1-70f5-ad86-4a0062fd01dd"

SERVICE = pb.DESCRIPTOR.services_by_name["JobService"]
METHODS: list[MethodDescriptor] = [*SERVICE.methods, health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name[
    "Check"]]

#: Valid requests each method's mutations start from.
TEMPLATES: dict[str, list[Message]] = {
    "Enqueue": [pb.EnqueueRequest(kind="noop", payload=b"{}", queue="fuzz", priority=3, labels={"a": "b"},
                                  delay=duration_pb2.Duration(seconds=3600), request_id="r", dedupe_key="d")],
    "EnqueueBatch": [pb.EnqueueBatchRequest(requests=[pb.EnqueueRequest(kind="noop", queue="fuzz")] * 3)],
    "GetJob": [pb.GetJobRequest(id=JOB_ID)],
    "ListJobs": [pb.ListJobsRequest(queue="fuzz", states=[1, 2], page_size=5, labels={"a": "b"}),
                 pb.ListJobsRequest(label_keys=["a"], label_in={"b": pb.LabelValues(values=["c", "d"])},
                                    finished_after=timestamp_pb2.Timestamp(seconds=1_700_000_000))],
    "CancelJob": [pb.CancelJobRequest(id=JOB_ID, reason="fuzz")],
    "RetryJob": [pb.RetryJobRequest(id=JOB_ID, from_start=True)],
    "GetQueueStats": [pb.GetQueueStatsRequest(queue="fuzz")],
    "ListWebhookDeliveries": [pb.ListWebhookDeliveriesRequest(job_id=JOB_ID)],
    "PruneJobs": [pb.PruneJobsRequest(dry_run=True)],
    "CancelJobs": [pb.CancelJobsRequest(filter=pb.JobFilter(queue="fuzz", states=[2], label_keys=["a"]), dry_run=True,
                                        reason="fuzz")],
    "RetryJobs": [pb.RetryJobsRequest(filter=pb.JobFilter(label_in={"a": pb.LabelValues(values=["b"])},
                                                          finished_before=timestamp_pb2.Timestamp(seconds=1)),
                                      dry_run=True, from_start=True)],
    "WatchJob": [pb.WatchJobRequest(id=JOB_ID, after_sequence=1)],
    "WatchEvents": [pb.WatchEventsRequest(queues=["fuzz"], kinds=["noop"], types=[1, 2])],
    "Check": [health_pb2.HealthCheckRequest(service="jobwire.v1.JobService")],
    "CreateSchedule": [pb.CreateScheduleRequest(id="fuzz", spec=pb.ScheduleSpec(
        template=pb.EnqueueRequest(kind="noop", queue="fuzz", labels={"a": "b"}), cron="0 3 * * *",
        time_zone="Europe/Paris", jitter=duration_pb2.Duration(seconds=30), overlap_policy=2, catchup_policy=2))],
    "UpdateSchedule": [pb.UpdateScheduleRequest(id="fuzz", spec=pb.ScheduleSpec(
        template=pb.EnqueueRequest(kind="noop"), interval=duration_pb2.Duration(seconds=3600)))],
    "GetSchedule": [pb.GetScheduleRequest(id="fuzz")],
    "ListSchedules": [pb.ListSchedulesRequest(page_size=5)],
    "DeleteSchedule": [pb.DeleteScheduleRequest(id="gone")],
    "PauseSchedule": [pb.PauseScheduleRequest(id="fuzz")],
    "ResumeSchedule": [pb.ResumeScheduleRequest(id="fuzz")],
    "TriggerSchedule": [pb.TriggerScheduleRequest(id="fuzz", request_id="r")],
    "PauseQueue": [pb.PauseQueueRequest(name="fuzz")],
    "ResumeQueue": [pb.ResumeQueueRequest(name="fuzz")],
    "GetQueue": [pb.GetQueueRequest(name="fuzz")],
    "ListQueues": [pb.ListQueuesRequest(page_size=5)],
    "UpdateQueue": [pb.UpdateQueueRequest(name="fuzz", concurrency_limit=2, rate_limit=2.5, rate_burst=3, key_limit=1,
                                          default_priority=7, default_max_attempts=4)],
}


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random change (or a few) to `data`, or random bytes altogether."""
    choice = rng.randrange(7)
    raw = bytearray(data)
    if choice == 0 or not raw:
        return rng.randbytes(rng.randrange(0, 64))
    for _ in range(rng.randrange(1, 4)):
        where = rng.randrange(len(raw)) if raw else 0
        if choice == 1 and raw:
            raw[where] ^= 1 << rng.randrange(8)
        elif choice == 2 and raw:
            raw[where] = rng.choice([0x00, 0x7F, 0x80, 0xFF, 0xC0, 0xFE])
        elif choice == 3:
            raw[where:where] = rng.randbytes(rng.randrange(1, 8))
        elif choice == 4:
            del raw[where:where + rng.randrange(1, 4)]
        elif choice == 5:
            raw = raw[:where]
        else:
            raw += raw[: rng.randrange(1, len(raw) + 1)]
    return bytes(raw)


def corpus() -> dict[str, list[bytes]]:
    rng = random.Random(SEED)
    return {method.name: [mutate(rng, rng.choice(TEMPLATES[method.name]).SerializeToString())
                          for _ in range(PER_METHOD)] for method in METHODS}


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(Path(tmp_path_factory.mktemp("wire-fuzz"))) as server:
        yield server


async def fire(channel: grpc.aio.Channel, method: MethodDescriptor, payloads: list[bytes]
               ) -> collections.Counter[str]:
    """Send every payload to `method` (PARALLEL at a time); the status codes they ended with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    gate = asyncio.Semaphore(PARALLEL)
    codes: collections.Counter[str] = collections.Counter()

    async def one(data: bytes) -> None:
        async with gate:
            try:
                if method.server_streaming:
                    call = channel.unary_stream(path)(data, timeout=0.3)
                    try:
                        async for count, _ in aenumerate(call):
                            if count >= 2:
                                break
                    finally:
                        call.cancel()
                else:
                    await channel.unary_unary(path)(data, timeout=10)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                code = error.code()
                assert code not in NOT_ALLOWED, f"{path} {data!r}: {code} {error.details()}"
                codes[code.name] += 1

    await asyncio.gather(*(one(data) for data in payloads))
    return codes


async def aenumerate(stream: grpc.aio.UnaryStreamCall) -> collections.abc.AsyncIterator[tuple[int, object]]:  # type: ignore[type-arg]
    count = 0
    async for item in stream:
        count += 1
        yield count, item


async def test_mutated_and_random_bytes_never_fail_internally(server: ServerProcess) -> None:
    payloads = corpus()
    pid = server.process.pid
    async with grpc.aio.insecure_channel(server.target) as channel:
        for method in METHODS:  # warm-up: every code path once, so the baseline includes its memory
            await fire(channel, method, payloads[method.name][:50])
        rss_before, fds_before, log_before = rss(pid), fds(pid), len(server.log())
        outcomes = {method.name: await fire(channel, method, payloads[method.name]) for method in METHODS}
        health = await channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )(health_pb2.HealthCheckRequest(service="jobwire.v1.JobService"), timeout=10)
        rss_after, fds_after = rss(pid), fds(pid)
    written = server.log()[log_before:]
    total = sum(sum(c.values()) for c in outcomes.values())
    print(f"\nwire fuzz: {total} calls over {len(METHODS)} methods; RSS {rss_before / 2**20:.1f} → "
          f"{rss_after / 2**20:.1f} MiB; fds {fds_before} → {fds_after}; log +{len(written)} bytes")
    for name, codes in outcomes.items():
        print(f"  {name}: {dict(codes)}")
    assert total == PER_METHOD * len(METHODS)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert server.process.poll() is None
    assert "Traceback" not in written
    assert len(written) < 20_000, written[-3000:]
    assert fds_after <= fds_before + 4
    assert rss_after <= rss_before + 32 * 2**20
    assert sum(c["INVALID_ARGUMENT"] for c in outcomes.values()) > PER_METHOD, "most mutations are refused"
