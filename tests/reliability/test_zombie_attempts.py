"""Zombie attempts against a real server: handlers that ignore cancellation outlive their attempt
(timed out, abandoned after the cancel grace, the job retried as a new attempt). When a zombie
finally returns, its result is refused: the job's outcome and result come from the live attempt,
and its history shows one SUCCEEDED, after the live attempt's phase."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc

from tests.conftest import StartServer
from tests.testkit import CANCEL_IGNORED, Gate, finished, stream

pytestmark = pytest.mark.timeout(90)

ZOMBIES = 6
T = pb.EventType


async def test_late_results_of_abandoned_attempts_are_refused(start_server: StartServer) -> None:
    server = start_server(handlers="tests.testkit", cancel_grace=0.3, lease_ttl=2, concurrency=2 * ZOMBIES)
    async with Gate() as gate, grpc.aio.insecure_channel(server.target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        request = pb.EnqueueRequest(kind="tk.stubborn", payload=gate.payload(), max_attempts=2,
                                    timeout=duration_pb2.Duration(seconds=3))
        jobs = [(await stub.Enqueue(request, timeout=10)).job for _ in range(ZOMBIES)]
        first = {call.job: call for call in await gate.take(ZOMBIES)}
        assert {c.attempt for c in first.values()} == {1}
        for call in first.values():  # each attempt times out; its handler ignores the cancel
            assert await call.line() == CANCEL_IGNORED
        second = {call.job: call for call in await gate.take(ZOMBIES, within=20)}
        assert {c.attempt for c in second.values()} == {2}, "abandoned attempts were retried as new ones"

        for call in first.values():  # the zombies return now, long after their attempt ended
            call.release()
            await call.closed()
        barrier = (await stub.Enqueue(pb.EnqueueRequest(kind="noop"), timeout=10)).job
        await finished(stub, barrier.id)  # a full commit cycle after the zombies' late outcomes
        during = [await stub.GetJob(pb.GetJobRequest(id=job.id), timeout=10) for job in jobs]

        for call in second.values():
            call.release()
        finals = [(await finished(stub, job.id)).job for job in jobs]
        histories = [await stream(stub, job.id, after=1) for job in jobs]

    assert [(j.state, j.attempt) for j in during] == [(pb.JOB_STATE_RUNNING, 2)] * ZOMBIES
    assert all(j.phases[0].state == pb.PHASE_STATE_RUNNING for j in during), "no zombie result was stored"
    for job, history in zip(finals, histories, strict=True):
        assert (job.state, job.attempt) == (pb.JOB_STATE_SUCCEEDED, 2)
        assert b'"attempt": 2' in job.result, job.result
        assert [e.type for e in history].count(T.EVENT_TYPE_SUCCEEDED) == 1
        assert [e.type for e in history].count(T.EVENT_TYPE_PHASE_SUCCEEDED) == 1
        assert [e.job.attempt for e in history if e.type == T.EVENT_TYPE_PHASE_SUCCEEDED] == [2]
        assert any(err.type == "TIMEOUT" for err in job.error_history)
    print(f"\nzombie attempts: {ZOMBIES} handlers outlived their attempt; {ZOMBIES} late results refused")
