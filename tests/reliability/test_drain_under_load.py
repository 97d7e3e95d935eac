"""Drain under load: SIGTERM to a real server with 100 jobs running and 50 WatchJob streams open.
Health turns NOT_SERVING at once; new writes answer UNAVAILABLE; every stream ends UNAVAILABLE /
SHUTTING_DOWN with a `last_sequence` to resume from; the process exits inside its grace period;
after a restart every job completes without having spent an attempt (max_attempts is 1), and every
watch resumed from its `last_sequence` sees the rest of its job's events without a gap."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc

from tests.conftest import StartServer
from tests.testkit import Gate, error_details, finished

pytestmark = pytest.mark.timeout(120)

JOBS = 100
STREAMS = 50
SHUTDOWN_GRACE = 2.0
CANCEL_GRACE = 1.0


async def test_sigterm_with_jobs_running_and_streams_open(start_server: StartServer) -> None:
    flags = {"handlers": "tests.testkit", "concurrency": JOBS, "shutdown_grace": SHUTDOWN_GRACE,
             "cancel_grace": CANCEL_GRACE}
    server = start_server(**flags)
    async with Gate() as gate:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = jobwire_pb2_grpc.JobServiceStub(channel)
            jobs = [(await stub.Enqueue(pb.EnqueueRequest(kind="tk.two", payload=gate.payload(), max_attempts=1),
                                        timeout=10)).job for _ in range(JOBS)]
            held = await gate.take(JOBS, within=30)
            assert {c.phase for c in held} == {"one"}

            received: dict[str, list[pb.JobEvent]] = {job.id: [] for job in jobs[:STREAMS]}
            endings: dict[str, grpc.aio.AioRpcError] = {}
            ready = asyncio.Event()

            async def watch(job_id: str) -> None:
                try:
                    async for event in stub.WatchJob(pb.WatchJobRequest(id=job_id)):
                        received[job_id].append(event)
                        if sum(1 for events in received.values() if events) == STREAMS:
                            ready.set()
                except grpc.aio.AioRpcError as error:
                    endings[job_id] = error

            watchers = [asyncio.create_task(watch(job_id)) for job_id in received]
            async with asyncio.timeout(20):
                await ready.wait()
            health = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="jobwire.v1.JobService"))
            assert (await health.read()).status == health_pb2.HealthCheckResponse.SERVING

            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                assert (await health.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            not_serving_after = time.monotonic() - signalled
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Enqueue(pb.EnqueueRequest(kind="noop"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.gather(*watchers)
            code = await asyncio.to_thread(server.process.wait, SHUTDOWN_GRACE + CANCEL_GRACE + 10)
            exited_after = time.monotonic() - signalled

        assert code == 0
        resume = _resume_points(endings, received)
        restarted = start_server(db=server.db_path, **flags)
        finals, tails = await _finish(restarted.target, gate, [job.id for job in jobs], resume)

    print(f"\ndrain under load: {JOBS} jobs running, {STREAMS} streams; NOT_SERVING after "
          f"{not_serving_after * 1000:.0f} ms, exit after {exited_after:.2f} s (grace {SHUTDOWN_GRACE:g} s + "
          f"cancel grace {CANCEL_GRACE:g} s); all {JOBS} SUCCEEDED after restart")
    assert not_serving_after < 1.0
    assert exited_after < SHUTDOWN_GRACE + CANCEL_GRACE + 2
    assert all(job.state == pb.JOB_STATE_SUCCEEDED for job in finals), "no attempt was spent by the drain"
    assert all([e.type for e in job.error_history] == ["SHUTDOWN"] for job in finals)
    for job_id, tail in tails.items():
        sequences = [e.sequence for e in received[job_id]] + [e.sequence for e in tail]
        assert sequences == list(range(sequences[0], sequences[-1] + 1)), f"gap or repeat for {job_id}"
        assert tail[-1].type == pb.EVENT_TYPE_SUCCEEDED


def _resume_points(endings: dict[str, grpc.aio.AioRpcError], received: dict[str, list[pb.JobEvent]]
                   ) -> dict[str, int]:
    """Each stream's `last_sequence`, checked: UNAVAILABLE / SHUTTING_DOWN, the last event it sent."""
    assert set(endings) == set(received), "every stream ended with an error status"
    resume: dict[str, int] = {}
    for job_id, error in endings.items():
        reason, _ = error_details(error)
        assert (error.code(), reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        resume[job_id] = int(_error_metadata(error)["last_sequence"])
        assert resume[job_id] == received[job_id][-1].sequence
    return resume


async def _finish(target: str, gate: Gate, job_ids: list[str], resume: dict[str, int]
                  ) -> tuple[list[pb.Job], dict[str, list[pb.JobEvent]]]:
    """Resume the watches, let every job run to its end; (final jobs, events each resumed watch got)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        resumed = {job_id: asyncio.create_task(_all(stub, job_id, after)) for job_id, after in resume.items()}
        done: set[str] = set()
        async with asyncio.timeout(60):
            while len(done) < len(job_ids):
                call = await gate.next(within=30)
                call.release()
                if call.phase == "two":
                    done.add(call.job)
        finals = [(await finished(stub, job_id)).job for job_id in job_ids]
        return finals, {job_id: await task for job_id, task in resumed.items()}


async def _all(stub: jobwire_pb2_grpc.JobServiceStub, job_id: str, after: int) -> list[pb.JobEvent]:
    async with asyncio.timeout(60):
        return [e async for e in stub.WatchJob(pb.WatchJobRequest(id=job_id, after_sequence=after))]


def _error_metadata(error: grpc.aio.AioRpcError) -> dict[str, str]:
    from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # noqa: PLC0415

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return dict(info.metadata)
    return {}
