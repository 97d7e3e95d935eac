"""A burst of WatchJob streams opened at once: every stream is served, or refused with a status a
client retries (never CANCELLED, which gRPC used to answer when its backlog of not-yet-taken calls
overflowed); the SDK's watch retries refusals with backoff and reaches the end of the job."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from pathlib import Path

import grpc
import jobwire
import pytest
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc

from tests.conftest import ServerProcess
from tests.testkit import Gate, error_details, running

pytestmark = pytest.mark.timeout(120)

BURST = 2000
CONNECTIONS = 4
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(Path(tmp_path_factory.mktemp("burst")), handlers="tests.testkit") as server:
        yield server


def channels(target: str, count: int) -> list[grpc.aio.Channel]:
    """`count` channels with a connection each (no shared subchannel)."""
    return [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(count)]


async def burst(target: str, job_id: str, count: int, gate_call: object) -> collections.Counter[str]:
    """Open `count` WatchJob streams at once over CONNECTIONS connections; once each has its snapshot
    or has ended, release the job; each stream's ending, by status (and reason)."""
    opened = channels(target, CONNECTIONS)
    started = 0
    everyone_in = asyncio.Event()

    def arrived() -> None:
        nonlocal started
        started += 1
        if started == count:
            everyone_in.set()

    async def watch(index: int) -> str:
        stub = jobwire_pb2_grpc.JobServiceStub(opened[index % CONNECTIONS])
        seen_snapshot = False
        try:
            async for _event in stub.WatchJob(pb.WatchJobRequest(id=job_id), timeout=60):
                if not seen_snapshot:
                    seen_snapshot = True
                    arrived()
            return "OK"
        except grpc.aio.AioRpcError as error:
            if not seen_snapshot:
                arrived()
            return f"{error.code().name}:{error_details(error)[0]}"

    try:
        tasks = [asyncio.create_task(watch(i)) for i in range(count)]
        async with asyncio.timeout(60):
            await everyone_in.wait()
        gate_call.release()  # type: ignore[attr-defined]
        return collections.Counter(await asyncio.gather(*tasks))
    finally:
        for channel in opened:
            await channel.close()


async def test_a_burst_of_2000_watch_streams_is_served(server: ServerProcess) -> None:
    async with Gate() as gate, grpc.aio.insecure_channel(server.target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        job = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=gate.payload()), timeout=10)).job
        endings = await burst(server.target, job.id, BURST, await gate.next())
    print(f"\n{BURST} WatchJob streams over {CONNECTIONS} connections: {dict(endings)}")
    assert endings == {"OK": BURST}


async def test_streams_over_the_limit_are_refused_with_a_retryable_status(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = Path(tmp_path_factory.mktemp("limit"))
    with running(folder, handlers="tests.testkit", max_watch_streams=300) as limited:
        async with Gate() as gate, grpc.aio.insecure_channel(limited.target) as channel:
            stub = jobwire_pb2_grpc.JobServiceStub(channel)
            job = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=gate.payload()), timeout=10)).job
            endings = await burst(limited.target, job.id, 1000, await gate.next())
    print(f"\n1000 WatchJob streams against max_watch_streams=300: {dict(endings)}")
    assert endings["OK"] >= 300
    assert set(endings) <= {"OK", "RESOURCE_EXHAUSTED:TOO_MANY_STREAMS"}, endings


async def test_sdk_watch_refused_for_too_many_streams_retries_until_admitted(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """600 SDK watches against a limit of 300: the first 300 get their snapshot and hold their slot
    until the job finishes; the others are refused (TOO_MANY_STREAMS), retried with backoff, and
    admitted once slots free up, so every watch reaches the job's end."""
    folder = Path(tmp_path_factory.mktemp("sdk-limit"))
    policy = jobwire.RetryPolicy(max_attempts=30, initial_backoff=0.05, max_backoff=0.5)
    with running(folder, handlers="tests.testkit", max_watch_streams=300) as limited:
        async with Gate() as gate, jobwire.Client(limited.target, retry=policy) as client:
            handle = await client.enqueue("tk.gate", payload=gate.payload())
            call = await gate.next()
            snapshots = 0
            limit_reached = asyncio.Event()

            async def watch() -> jobwire.JobState | None:
                nonlocal snapshots
                last = None
                async for event in handle.watch():
                    if event.type is jobwire.EventType.SNAPSHOT:
                        snapshots += 1
                        if snapshots == 300:
                            limit_reached.set()
                    last = event.job.state if event.job is not None else last
                return last

            tasks = [asyncio.create_task(watch()) for _ in range(600)]
            async with asyncio.timeout(60):
                await limit_reached.wait()
            call.release()
            states = collections.Counter(await asyncio.gather(*tasks))
        refusals = limited.log().count("TOO_MANY_STREAMS")
    assert states == {jobwire.JobState.SUCCEEDED: 600}
    assert refusals == 0  # refusals are answers, not log lines
