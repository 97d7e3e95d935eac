"""Enqueue semantics that need their own server process: durability across SIGKILL, priority
order of the claim, kinds that lost their handler across a restart, and start-up refusals."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc
from jobwire_server.store.sqlite.schema import SCHEMA_VERSION

from tests.conftest import REPO, ServerProcess, StartServer, free_port
from tests.testkit import Gate, error_details, finished, until_event, watch

#: A hang fails the test instead of blocking the run.
pytestmark = pytest.mark.timeout(60)

S = pb.JobState
T = pb.EventType
Stub = jobwire_pb2_grpc.JobServiceStub


@asynccontextmanager
async def connect(server: ServerProcess) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


async def test_an_acknowledged_enqueue_survives_sigkill(start_server: StartServer) -> None:
    server = start_server(lease_ttl=1)
    async with connect(server) as stub:
        due_soon = await stub.Enqueue(pb.EnqueueRequest(kind="noop", payload=b"later",
                                                        delay=duration_pb2.Duration(nanos=300_000_000)), timeout=10)
        batch = await stub.EnqueueBatch(pb.EnqueueBatchRequest(requests=[
            pb.EnqueueRequest(kind="noop", payload=str(i).encode()) for i in range(20)]), timeout=10)
        last = await stub.Enqueue(pb.EnqueueRequest(kind="noop", payload=b"last"), timeout=10)
    server.process.send_signal(signal.SIGKILL)  # right after the last reply
    server.process.wait(10)
    acknowledged = [due_soon.job, *(r.job for r in batch.responses), last.job]

    restarted = start_server(db=server.db_path, lease_ttl=1)
    async with connect(restarted) as stub:
        for job in acknowledged:
            found = await stub.GetJob(pb.GetJobRequest(id=job.id), timeout=10)
            assert found.payload == job.payload
            final = await finished(stub, job.id)
            assert final.job.state == S.JOB_STATE_SUCCEEDED and final.job.result == job.payload


async def test_claim_order_is_priority_then_run_at_then_id(start_server: StartServer) -> None:
    server = start_server(handlers="tests.testkit", concurrency=1)
    async with Gate() as gate, connect(server) as stub:
        async def enqueue(priority: int, delay_ms: int = 0, tag: str = "") -> pb.Job:
            request = pb.EnqueueRequest(kind="tk.gate", payload=gate.payload(tag=tag), priority=priority)
            if delay_ms:
                request.delay.FromMilliseconds(delay_ms)
            return (await stub.Enqueue(request, timeout=10)).job

        blocker = await enqueue(5, tag="blocker")
        holding = await gate.next()
        assert holding.job == blocker.id
        # Enqueued first (smallest id) but due last among the priority-5 jobs: run_at must beat id.
        late = await enqueue(5, delay_ms=400, tag="late")
        waiting = [await enqueue(p, tag=f"p{p}-{i}") for i, p in enumerate([5, 9, 1, 9, 5, 10, 1])]
        await until_event(stub, late.id, T.EVENT_TYPE_QUEUED)
        assert (await stub.GetJob(pb.GetJobRequest(id=late.id), timeout=10)).state == S.JOB_STATE_QUEUED
        jobs = [late, *waiting]
        latest_p5 = max(j.run_at.ToNanoseconds() for j in waiting if j.priority == 5)
        assert late.id < min(j.id for j in waiting) and late.run_at.ToNanoseconds() > latest_p5, (
            "the scenario needs run_at and id to disagree")
        expected = [j.id for j in sorted(jobs, key=lambda j: (-j.priority, j.run_at.ToNanoseconds(), j.id))]

        holding.release()
        started = []
        for _ in jobs:
            call = await gate.next()
            started.append(call.job)
            assert gate.waiting() == 0, "concurrency 1: one job at a time"
            call.release()
        assert started == expected
        assert started[0] == waiting[5].id and started[-1] == waiting[6].id
        assert started.index(late.id) == len(jobs) - 3, "late runs after the priority-5 jobs that were due earlier"
        for job in jobs:
            assert (await finished(stub, job.id)).job.state == S.JOB_STATE_SUCCEEDED


async def test_a_kind_without_handler_after_a_restart_fails_permanently(start_server: StartServer) -> None:
    server = start_server(handlers="tests.testkit", concurrency=1, shutdown_grace=1, cancel_grace=0.3)
    async with Gate() as gate, connect(server) as stub:
        running = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=gate.payload(), max_attempts=3),
                                      timeout=10)).job
        await gate.next()
        queued = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.two", payload=gate.payload(), max_attempts=3),
                                     timeout=10)).job
        delayed = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.three", payload=gate.payload(), max_attempts=3,
                                                        delay=duration_pb2.Duration(nanos=500_000_000)),
                                      timeout=10)).job
        assert delayed.state == S.JOB_STATE_SCHEDULED
    assert server.stop(signal.SIGTERM) == 0  # the running one goes back to the queue

    restarted = start_server(db=server.db_path)  # built-in kinds only
    async with connect(restarted) as stub:
        for job, phase in ((running, "run"), (queued, "one"), (delayed, "a")):
            events = await watch(stub, job.id)
            assert events[-1].type == T.EVENT_TYPE_FAILED
            assert T.EVENT_TYPE_RETRY_SCHEDULED not in [e.type for e in events]
            failed = await stub.GetJob(pb.GetJobRequest(id=job.id), timeout=10)
            error = failed.error_history[-1]
            assert (error.type, error.retryable, error.phase) == ("UNKNOWN_KIND", False, phase)
            assert "tk." in error.message
            assert failed.error == error
        err_call = stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=b"{}"), timeout=10)
        try:
            await err_call
            raise AssertionError("enqueue of a kind this server does not know was accepted")
        except grpc.aio.AioRpcError as err:
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and error_details(err)[0] == "UNKNOWN_KIND"


def test_a_database_with_a_newer_schema_is_a_clear_startup_error(tmp_path: Path) -> None:
    db = tmp_path / "newer.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "jobwire_server", "serve", "--listen",
                                 f"127.0.0.1:{free_port()}", "--db", str(db)], cwd=REPO, capture_output=True,
                                text=True, timeout=10, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"`jobwire serve` printed {exc.stderr!r} but did not exit within 10 s: the connection its refused "
            "open() left behind keeps the process alive") from None
    assert result.returncode == 1
    assert "newer than this jobwire knows" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 10
