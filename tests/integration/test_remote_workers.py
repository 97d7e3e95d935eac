"""Remote workers end to end: a real `jobwire serve` and real `jobwire worker` processes running the
kinds of tests/workerkit.py, driven through the gate (tests/testkit.py) and watched over gRPC."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest
from grpc import aio
from jobwire.v1 import jobwire_pb2, jobwire_pb2_grpc

from tests.conftest import StartServer
from tests.remote import RawSession, hello, workers
from tests.testkit import FAIL_PERMANENTLY, Gate, finished, until_event, watch

pytestmark = pytest.mark.timeout(120)

E = jobwire_pb2
THREE = ("fetch", "resize", "upload")


async def _enqueue(stub: Any, kind: str, payload: bytes, **fields: Any) -> Any:
    return (await stub.Enqueue(E.EnqueueRequest(kind=kind, payload=payload, **fields))).job


def _result(job: Any, index: int) -> dict[str, Any]:
    return json.loads(job.phases[index].result)  # type: ignore[no-any-return]


async def _three_phases(server_target: str) -> None:
    async with workers() as start, Gate() as gate, aio.insecure_channel(server_target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        await start(server_target)
        job = await _enqueue(stub, "wk.three", gate.payload())
        for index, phase in enumerate(THREE):
            call = await gate.next()
            assert (call.job, call.phase, call.attempt) == (job.id, phase, 1)
            assert call.results == sorted(THREE[:index])  # the results of the phases before it
            call.release()
        events = await watch(stub, job.id)
        done = await stub.GetJob(E.GetJobRequest(id=job.id))
    assert done.state == E.JOB_STATE_SUCCEEDED
    assert [_result(done, i)["phase"] for i in range(3)] == list(THREE)
    expected = [(E.EVENT_TYPE_STARTED, "")]
    for phase in THREE:
        expected += [(E.EVENT_TYPE_PHASE_STARTED, phase), (E.EVENT_TYPE_PROGRESS, phase),
                     (E.EVENT_TYPE_PHASE_SUCCEEDED, phase)]
    expected.append((E.EVENT_TYPE_SUCCEEDED, ""))
    assert [(e.type, e.phase) for e in events] == expected
    progress = [e for e in events if e.type == E.EVENT_TYPE_PROGRESS]
    assert [e.detail for e in progress] == [f"{phase} half way" for phase in THREE]


async def test_three_phases_run_on_a_remote_worker_as_in_process(start_server: StartServer) -> None:
    await _three_phases(start_server().target)


async def test_three_phases_run_on_a_remote_worker_on_postgresql(start_server: StartServer, pg_url: str) -> None:
    await _three_phases(start_server(db=pg_url).target)


async def _killed_worker(server_target: str) -> None:
    async with workers() as start, Gate() as gate, aio.insecure_channel(server_target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        first = await start(server_target)
        job = await _enqueue(stub, "wk.three", gate.payload())
        (await gate.next()).release()  # fetch
        resize = await gate.next()
        assert (resize.phase, resize.attempt) == ("resize", 1)
        first.signal(signal.SIGKILL)
        interrupted = await until_event(stub, job.id, E.EVENT_TYPE_INTERRUPTED, within=30)
        assert interrupted.phase == "resize"
        await start(server_target)
        again = await gate.next(within=30)
        assert (again.phase, again.attempt, again.results) == ("resize", 2, ["fetch"])
        again.release()
        (await gate.next()).release()  # upload
        final = await finished(stub, job.id)
        done = await stub.GetJob(E.GetJobRequest(id=job.id))
    assert final.job.state == E.JOB_STATE_SUCCEEDED
    assert _result(done, 0)["attempt"] == 1  # fetch ran once, on the killed worker
    assert [_result(done, i)["attempt"] for i in (1, 2)] == [2, 2]
    assert [(e.type, e.phase, e.interrupted) for e in done.error_history] == [("INTERRUPTED", "resize", True)]


async def test_a_worker_killed_mid_phase_is_interrupted_and_another_finishes(start_server: StartServer) -> None:
    await _killed_worker(start_server(lease_ttl=2).target)


async def test_a_worker_killed_mid_phase_on_postgresql(start_server: StartServer, pg_url: str) -> None:
    await _killed_worker(start_server(db=pg_url, lease_ttl=2).target)


async def test_a_frozen_worker_past_its_lease_is_fenced(start_server: StartServer) -> None:
    server = start_server(lease_ttl=2)
    async with workers() as start, Gate() as gate, aio.insecure_channel(server.target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        frozen = await start(server.target)
        job = await _enqueue(stub, "wk.three", gate.payload())
        late = await gate.next()
        frozen.signal(signal.SIGSTOP)
        await until_event(stub, job.id, E.EVENT_TYPE_INTERRUPTED, within=30)
        await start(server.target)
        current = await gate.next(within=30)
        assert (current.phase, current.attempt) == ("fetch", 2)
        frozen.signal(signal.SIGCONT)
        late.release()  # attempt 1 returns: its report must not be written
        back = await frozen.line("connected to", count=2, within=30)  # it came back...
        assert "0 jobs kept" in back  # ...and the server dropped its job
        before = await stub.GetJob(E.GetJobRequest(id=job.id))
        assert before.phases[0].state == E.PHASE_STATE_RUNNING and before.attempt == 2
        current.release()
        for _ in range(2):
            (await gate.next()).release()
        await finished(stub, job.id)
        done = await stub.GetJob(E.GetJobRequest(id=job.id))
        events = await watch(stub, job.id)
    assert done.state == E.JOB_STATE_SUCCEEDED
    assert _result(done, 0)["attempt"] == 2
    assert [e.phase for e in events if e.type == E.EVENT_TYPE_PHASE_SUCCEEDED] == list(THREE)


async def test_cancel_reaches_a_remote_handler_at_once(start_server: StartServer) -> None:
    server = start_server(cancel_grace=30)
    async with workers() as start, Gate() as gate, aio.insecure_channel(server.target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        await start(server.target)
        job = await _enqueue(stub, "wk.three", gate.payload())
        call = await gate.next()
        asked = time.perf_counter()
        await stub.CancelJob(E.CancelJobRequest(id=job.id, reason="no longer needed"))
        await call.closed()  # the handler was cancelled: its connection closes
        reached = time.perf_counter() - asked
        final = await finished(stub, job.id)
        events = await watch(stub, job.id)
    requested = next(e for e in events if e.type == E.EVENT_TYPE_CANCEL_REQUESTED)
    cancelled = next(e for e in events if e.type == E.EVENT_TYPE_CANCELLED)
    committed = cancelled.time.ToDatetime() - requested.time.ToDatetime()
    print(f"cancel reached the remote handler in {reached * 1000:.1f} ms; CANCEL_REQUESTED -> CANCELLED "
          f"{committed.total_seconds() * 1000:.1f} ms")
    assert final.job.state == E.JOB_STATE_CANCELLED
    # 100 ms on an idle machine (typically a few ms); generous here for a shared, loaded one.
    assert reached < 1.0, f"cancel took {reached:.3f}s to reach the handler"
    assert committed.total_seconds() < 1.0


async def test_partial_retry_resumes_at_the_first_unfinished_phase_on_a_remote_worker(
        start_server: StartServer) -> None:
    server = start_server()
    async with workers() as start, Gate() as gate, aio.insecure_channel(server.target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        await start(server.target)
        job = await _enqueue(stub, "wk.three", gate.payload(), max_attempts=1)
        (await gate.next()).release()  # fetch
        (await gate.next()).release(FAIL_PERMANENTLY)  # resize
        assert (await finished(stub, job.id)).job.state == E.JOB_STATE_FAILED
        await stub.RetryJob(E.RetryJobRequest(id=job.id))
        resumed = await gate.next()
        assert (resumed.phase, resumed.results) == ("resize", ["fetch"])
        resumed.release()
        (await gate.next()).release()  # upload
        await finished(stub, job.id)
        done = await stub.GetJob(E.GetJobRequest(id=job.id))
    assert done.state == E.JOB_STATE_SUCCEEDED
    assert [_result(done, i)["attempt"] for i in range(3)] == [1, 2, 2]


async def test_a_worker_never_runs_more_jobs_than_its_slots(start_server: StartServer) -> None:
    server = start_server()
    async with workers() as start, Gate() as gate, aio.insecure_channel(server.target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        await start(server.target, slots=2)
        ids = [(await _enqueue(stub, "wk.three", gate.payload())).id for _ in range(5)]
        for _ in range(5 * len(THREE)):
            call = await gate.next()
            (stats,) = (await stub.GetQueueStats(E.GetQueueStatsRequest(queue="default"))).queues
            assert stats.running <= 2
            assert gate.waiting() <= 1  # at most the other slot's phase waits at the gate
            call.release()
        states = [(await finished(stub, job_id)).job.state for job_id in ids]
    assert states == [E.JOB_STATE_SUCCEEDED] * 5


async def test_sigterm_drains_a_worker_and_gives_back_what_did_not_finish(start_server: StartServer) -> None:
    server = start_server()
    async with workers() as start, Gate() as gate, aio.insecure_channel(server.target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        worker = await start(server.target)
        job = await _enqueue(stub, "wk.three", gate.payload())
        await gate.next()
        worker.signal(signal.SIGTERM)  # --drain-timeout 2: the phase does not finish in time
        assert await worker.stop() == 0
        queued = await until_event(stub, job.id, E.EVENT_TYPE_INTERRUPTED)
        again = await stub.GetJob(E.GetJobRequest(id=job.id))
    assert queued.phase == "fetch"
    assert again.state == E.JOB_STATE_QUEUED
    assert again.counted_attempts == 0  # given back: the attempt was not spent


async def test_a_worker_the_server_refuses_exits_1_naming_the_reason(start_server: StartServer) -> None:
    server = start_server()
    other = RawSession(server.target)
    other.send(hello(("wk.noop", ("different",))))  # wk.noop is now known with other phases
    await other.recv_only("welcome")
    await other.close()
    async with workers() as start:
        refused = await start(server.target, connected=False)
        assert await refused.process.wait() == 1
        await refused.line("KIND_MISMATCH")


async def test_server_shutdown_requeues_a_remote_job_without_spending_its_attempt(start_server: StartServer) -> None:
    server = start_server(shutdown_grace=2, cancel_grace=1)
    async with workers() as start, Gate() as gate:
        async with aio.insecure_channel(server.target) as channel:
            stub = jobwire_pb2_grpc.JobServiceStub(channel)
            worker = await start(server.target)
            job = await _enqueue(stub, "wk.three", gate.payload())
            await gate.next()
        assert server.stop() == 0  # the worker's handler is cancelled (reason shutdown) and it reports so
        await worker.line("reconnecting")  # the worker outlives the server and keeps trying
        again = start_server(db=server.db_path)
        async with aio.insecure_channel(again.target) as channel:
            stub = jobwire_pb2_grpc.JobServiceStub(channel)
            stored = await stub.GetJob(E.GetJobRequest(id=job.id))
            assert stored.counted_attempts == 0
            assert [(e.type, e.phase) for e in stored.error_history] == [("SHUTDOWN", "fetch")]
            await start(again.target)
            retried = await gate.next(within=30)
            assert (retried.phase, retried.attempt) == ("fetch", 2)
