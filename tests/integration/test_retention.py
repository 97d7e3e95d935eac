"""Retention against a real server: finished jobs become STALE, STALE jobs are deleted with
everything kept for them, per-state overrides, `PruneJobs` dry runs, and a job deleted while its
webhook delivery is pending or in flight."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc

from tests.conftest import ServerProcess, StartServer
from tests.receiver import Answer, Receiver
from tests.testkit import FAIL_PERMANENTLY, Gate, finished

pytestmark = pytest.mark.timeout(60)

T = pb.EventType
Stub = jobwire_pb2_grpc.JobServiceStub
#: Keep times short enough that every finished job is past them by the next call, and a retention
#: interval long enough that only PruneJobs runs it.
PROMPT = {"stale_after": "0.000001", "delete_after": "0.000001", "retention_interval": "1h"}


@asynccontextmanager
async def connect(server: ServerProcess) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


@asynccontextmanager
async def retention_events(stub: Stub) -> AsyncIterator[list[pb.JobEvent]]:
    """STALE and DELETED events published while the block runs (the stream is known to be live:
    a probe job's ENQUEUED crossed it first)."""
    seen: list[pb.JobEvent] = []
    arrived = asyncio.Event()
    call = stub.WatchEvents(pb.WatchEventsRequest(
        types=[T.EVENT_TYPE_STALE, T.EVENT_TYPE_DELETED, T.EVENT_TYPE_ENQUEUED], queues=["probe"]))

    async def pump() -> None:
        async for event in call:
            seen.append(event)
            arrived.set()

    task = asyncio.create_task(pump())
    async with asyncio.timeout(10):
        while not seen:
            await stub.Enqueue(pb.EnqueueRequest(kind="noop", queue="probe"), timeout=10)
            try:
                await asyncio.wait_for(arrived.wait(), 0.5)
            except TimeoutError:
                continue
    seen.clear()
    try:
        yield seen
    finally:
        call.cancel()
        task.cancel()


async def prune(stub: Stub, dry_run: bool = False) -> pb.PruneJobsResponse:
    return await stub.PruneJobs(pb.PruneJobsRequest(dry_run=dry_run), timeout=10)


async def run_noop(stub: Stub, queue: str = "probe") -> pb.Job:
    job = (await stub.Enqueue(pb.EnqueueRequest(kind="noop", queue=queue, payload=b"{}"), timeout=10)).job
    assert (await finished(stub, job.id)).job.state == pb.JOB_STATE_SUCCEEDED
    return job


async def test_finished_jobs_become_stale_then_are_deleted_with_events(start_server: StartServer) -> None:
    server = start_server(**PROMPT)
    async with connect(server) as stub, retention_events(stub) as events:
        job = await run_noop(stub)
        preview = await prune(stub, dry_run=True)
        assert preview.dry_run and preview.marked_stale >= 1 and preview.deleted == 0
        assert (await stub.GetJob(pb.GetJobRequest(id=job.id), timeout=10)).state == pb.JOB_STATE_SUCCEEDED

        first = await prune(stub)
        assert first.marked_stale >= 1 and first.deleted == 0, "one pass never deletes what it made stale"
        stale = await stub.GetJob(pb.GetJobRequest(id=job.id), timeout=10)
        assert stale.state == pb.JOB_STATE_STALE

        second = await prune(stub)
        assert second.deleted >= 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetJob(pb.GetJobRequest(id=job.id), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    mine = [e for e in events if e.job_id == job.id and e.type != T.EVENT_TYPE_ENQUEUED]
    assert [e.type for e in mine] == [T.EVENT_TYPE_STALE, T.EVENT_TYPE_DELETED]
    stale_event, deleted_event = mine
    assert stale_event.job.state == pb.JOB_STATE_STALE
    assert not deleted_event.HasField("job") and deleted_event.sequence == stale_event.sequence + 1
    with sqlite3.connect(server.db_path) as db:
        for table in ("jobs", "phases", "events"):
            column = "id" if table == "jobs" else "job_id"
            assert db.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?", (job.id,)).fetchone() == (0,)


async def test_per_state_override_keeps_failed_jobs(start_server: StartServer) -> None:
    server = start_server(handlers="tests.testkit", stale_after_state="FAILED=0", **PROMPT)
    async with Gate() as gate, connect(server) as stub:
        failed = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=gate.payload()), timeout=10)).job
        (await gate.next()).release(FAIL_PERMANENTLY)
        assert (await finished(stub, failed.id)).job.state == pb.JOB_STATE_FAILED
        succeeded = await run_noop(stub, queue="default")
        await prune(stub)
        assert (await stub.GetJob(pb.GetJobRequest(id=failed.id), timeout=10)).state == pb.JOB_STATE_FAILED
        assert (await stub.GetJob(pb.GetJobRequest(id=succeeded.id), timeout=10)).state == pb.JOB_STATE_STALE
        # A STALE job that had failed can still be retried; a deleted one is gone.
        retried = await stub.RetryJob(pb.RetryJobRequest(id=succeeded.id, from_start=True), timeout=10)
        assert retried.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING, pb.JOB_STATE_SUCCEEDED)


async def test_active_jobs_are_never_touched(start_server: StartServer) -> None:
    server = start_server(handlers="tests.testkit", **PROMPT)
    async with Gate() as gate, connect(server) as stub:
        running = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=gate.payload()), timeout=10)).job
        call = await gate.next()
        scheduled = (await stub.Enqueue(pb.EnqueueRequest(kind="noop", delay={"seconds": 3600}), timeout=10)).job
        await prune(stub)
        await prune(stub)
        assert (await stub.GetJob(pb.GetJobRequest(id=running.id), timeout=10)).state == pb.JOB_STATE_RUNNING
        assert (await stub.GetJob(pb.GetJobRequest(id=scheduled.id), timeout=10)).state == pb.JOB_STATE_SCHEDULED
        call.release()
        assert (await finished(stub, running.id)).job.state == pb.JOB_STATE_SUCCEEDED


async def test_deleting_a_job_whose_delivery_is_in_flight_is_harmless(start_server: StartServer) -> None:
    server = start_server(webhook_allow="127.0.0.1/32", webhook_retry_schedule="30s", **PROMPT)
    async with Receiver() as receiver, connect(server) as stub:
        receiver.answer(Answer(500), Answer(hold=True))
        # One job whose delivery waits out a retry, one whose delivery is in flight.
        waiting = (await stub.Enqueue(pb.EnqueueRequest(
            kind="noop", webhook=pb.WebhookConfig(url=receiver.url("/waiting"))), timeout=10)).job
        await receiver.wait_for(1)
        in_flight = (await stub.Enqueue(pb.EnqueueRequest(
            kind="noop", webhook=pb.WebhookConfig(url=receiver.url("/in-flight"))), timeout=10)).job
        await receiver.wait_for(2)
        await prune(stub)
        result = await prune(stub)
        assert result.deleted >= 2
        receiver.release()  # the in-flight attempt now succeeds, for a job that no longer exists
        for job in (waiting, in_flight):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(job_id=job.id), timeout=10)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert server.stop() == 0, "the in-flight attempt finished (or was cut off) during a clean stop"
    assert "Traceback" not in server.log()
    with sqlite3.connect(server.db_path) as db:
        for table in ("deliveries", "delivery_attempts", "events"):
            count = db.execute(f"SELECT count(*) FROM {table} WHERE job_id IN (?, ?)", (waiting.id, in_flight.id))
            assert count.fetchone() == (0,), table
