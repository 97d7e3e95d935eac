"""Crash and shutdown of a real `jobwire serve`: SIGKILL while jobs run, then a restart on the
same database recovers every job through lease expiry with the interrupted phase recorded;
SIGTERM drains, then requeues what could not finish without spending its attempt."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc
from jobwire_server.domain.states import JobState
from jobwire_server.store.sqlite import SqliteJobStore

from tests.conftest import ServerProcess, StartServer
from tests.testkit import FAIL, Gate, GateCall, finished, until_event

#: A hang fails the test instead of blocking the run.
pytestmark = pytest.mark.timeout(60)

S = pb.JobState
T = pb.EventType
Stub = jobwire_pb2_grpc.JobServiceStub


@asynccontextmanager
async def connect(server: ServerProcess) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


async def hold_jobs(stub: Stub, gate: Gate, plan: list[str]) -> dict[str, str]:
    """Enqueue one tk.two job per entry of `plan` and hold it in that phase; job id → held phase."""
    held: dict[str, str] = {}
    for phase in plan:
        job = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.two", payload=gate.payload(), max_attempts=3),
                                  timeout=10)).job
        call = await gate.next()
        assert (call.job, call.phase) == (job.id, "one")
        if phase == "two":
            call.release()
            call = await gate.next()
            assert (call.job, call.phase) == (job.id, "two")
        held[job.id] = phase
    return held


async def release_until_done(stub: Stub, gate: Gate, jobs: dict[str, str]) -> list[GateCall]:
    """Release every phase that arrives until every job in `jobs` has succeeded."""
    arrivals: list[GateCall] = []
    done: set[str] = set()
    async with asyncio.timeout(30):
        while done != set(jobs):
            call = await gate.next(within=30)
            arrivals.append(call)
            call.release()
            if call.phase == "two":
                final = await finished(stub, call.job)
                assert final.job.state == S.JOB_STATE_SUCCEEDED
                done.add(call.job)
    return arrivals


async def test_sigkill_while_jobs_run_then_restart_recovers_every_job(start_server: StartServer) -> None:
    server = start_server(handlers="tests.testkit", lease_ttl=2, concurrency=4)
    async with Gate() as gate:
        async with connect(server) as stub:
            held = await hold_jobs(stub, gate, ["one", "two", "one", "two"])
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)

        restarted = start_server(db=server.db_path, handlers="tests.testkit", lease_ttl=2, concurrency=4)
        async with connect(restarted) as stub:
            arrivals = await release_until_done(stub, gate, held)
            resumed_at = {c.job: c.phase for c in arrivals if c.attempt == 2 and c.phase == held.get(c.job)}
            assert resumed_at == held, "each job resumed at the phase that was running when the server died"
            assert not [c for c in arrivals if c.phase == "one" and held.get(c.job) == "two"], (
                "a phase that had succeeded before the crash did not run again")
            for job_id, phase in held.items():
                job = await stub.GetJob(pb.GetJobRequest(id=job_id), timeout=10)
                assert job.state == S.JOB_STATE_SUCCEEDED and job.attempt == 2
                (error,) = job.error_history
                assert (error.type, error.interrupted, error.phase, error.attempt) == ("INTERRUPTED", True, phase, 1)
                assert "lease expired" in error.message
                types = [e.type for e in await stream_after(stub, job_id)]
                assert types.count(T.EVENT_TYPE_INTERRUPTED) == 1 and types[-1] == T.EVENT_TYPE_SUCCEEDED


async def stream_after(stub: Stub, job_id: str, after: int = 1) -> list[pb.JobEvent]:
    async with asyncio.timeout(10):
        return [e async for e in stub.WatchJob(pb.WatchJobRequest(id=job_id, after_sequence=after))]


async def test_sigterm_requeues_unfinished_jobs_without_spending_an_attempt(start_server: StartServer) -> None:
    server = start_server(handlers="tests.testkit", shutdown_grace=1.5, cancel_grace=0.5, concurrency=4)
    async with Gate() as gate:
        async with connect(server) as stub:
            held = await hold_jobs(stub, gate, ["one", "two"])
            finishing = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=gate.payload()),
                                            timeout=10)).job
            finishing_call = await gate.next()
            assert finishing_call.job == finishing.id
            server.process.send_signal(signal.SIGTERM)
            finishing_call.release()  # finishes within the drain budget
            assert server.process.wait(15) == 0

        store = SqliteJobStore(str(server.db_path))
        await store.open()
        try:
            assert (await store.get_job(finishing.id)).state is JobState.SUCCEEDED, "drained, not interrupted"
            for job_id, phase in held.items():
                job = await store.get_job(job_id)
                assert job.state is JobState.QUEUED and job.attempt == 1
                assert job.attempts_left == job.max_attempts, "the interrupted attempt is not spent"
                (error,) = job.error_history
                assert (error.type, error.interrupted, error.phase, error.attempt) == ("SHUTDOWN", True, phase, 1)
                running = [p.name for p in job.phases if p.state.value == "RUNNING"]
                assert running == [], "no phase is left RUNNING"
        finally:
            await store.close()

        restarted = start_server(db=server.db_path, handlers="tests.testkit", concurrency=4)
        async with connect(restarted) as stub:
            one_job = next(j for j, p in held.items() if p == "one")
            first = await gate.next()
            second = await gate.next()
            calls = {c.job: c for c in (first, second)}
            assert {c.job: c.phase for c in calls.values()} == held, "each resumes at its interrupted phase"
            # A retryable failure now would be the third attempt if the interrupted one had counted.
            calls[one_job].release(FAIL)
            await until_event(stub, one_job, T.EVENT_TYPE_RETRY_SCHEDULED)
            # (A replayed event's `job` may be read before the event was written; ask for it.)
            retrying = await stub.GetJob(pb.GetJobRequest(id=one_job), timeout=10)
            assert retrying.state == S.JOB_STATE_RETRYING and retrying.attempt == 2
            await stub.CancelJob(pb.CancelJobRequest(id=one_job), timeout=10)
            other = next(j for j in held if j != one_job)
            calls[other].release()
            final = await finished(stub, other)
            assert final.job.state == S.JOB_STATE_SUCCEEDED and final.job.attempt == 2
            assert [e.type for e in final.job.error_history] == ["SHUTDOWN"]


async def test_a_cancel_requested_before_a_crash_is_not_forgotten(start_server: StartServer) -> None:
    server = start_server(handlers="tests.testkit", lease_ttl=2, cancel_grace=60)
    async with Gate() as gate:
        async with connect(server) as stub:
            job = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.stubborn", payload=gate.payload(), max_attempts=3),
                                      timeout=10)).job
            call = await gate.next()
            asked = await stub.CancelJob(pb.CancelJobRequest(id=job.id, reason="stop it"), timeout=10)
            assert asked.cancel_requested and asked.state == S.JOB_STATE_RUNNING
            assert await call.line() == "cancel-ignored"  # still running when the server dies
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)

        restarted = start_server(db=server.db_path, handlers="tests.testkit", lease_ttl=2)
        async with connect(restarted) as stub:
            ending = asyncio.create_task(finished(stub, job.id, within=30))
            rerun = asyncio.create_task(gate.next(within=30))
            done, _ = await asyncio.wait({ending, rerun}, return_when=asyncio.FIRST_COMPLETED)
            if rerun in done:
                rerun.result().release()
                final = await ending
                raise AssertionError(
                    "the job whose cancel was acknowledged (CANCEL_REQUESTED) ran again after the crash and ended "
                    f"{pb.JobState.Name(final.job.state)}: the lease rescue requeued it instead of cancelling it")
            rerun.cancel()
            final = ending.result()
            assert final.job.state == S.JOB_STATE_CANCELLED and final.job.cancel_reason == "stop it"
