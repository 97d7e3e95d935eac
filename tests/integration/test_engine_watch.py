"""WatchJob against an in-process app (its real gRPC server on a free port), where the test can
place a job's completion exactly between the reads the servicer makes when a stream starts."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc
from jobwire_server.app import App
from jobwire_server.domain.models import Event
from jobwire_server.domain.states import EventType
from jobwire_server.handlers import JobContext, Kind

from tests.testkit import Harness, Recorder, enqueue, stream

#: A hang fails the test instead of blocking the run.
pytestmark = pytest.mark.timeout(60)

release: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

held = Kind("t.watch.held")


@held.phase("hold")
async def hold(ctx: JobContext) -> bytes:
    started[ctx.job_id].set()
    await release[ctx.job_id].wait()
    return b"done"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.stop_all()


async def channel_to(app: App) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")


def finish_between_reads(app: App, rec: Recorder, job_id: str) -> list[int]:
    """Make the job finish after WatchJob has read the job and before it reads the stored events."""
    original = app.service.events_after
    calls: list[int] = []

    async def events_after(wanted: str, sequence: int, limit: int = 10_000) -> list[Event]:
        if wanted == job_id and not calls:
            calls.append(sequence)
            release[job_id].set()
            await rec.wait_final(job_id)
        return await original(wanted, sequence, limit)

    app.service.events_after = events_after  # type: ignore[method-assign]
    return calls


async def test_watch_from_a_sequence_ends_when_the_job_finished_while_the_stream_started(harness: Harness) -> None:
    app = await harness.start(held)
    rec = Recorder(app.hub)
    job = await enqueue(app, held)
    async with asyncio.timeout(5):
        await started[job.id].wait()
    calls = finish_between_reads(app, rec, job.id)
    async with await channel_to(app) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        try:
            events = await stream(stub, job.id, after=1, within=5)
        except TimeoutError:
            pytest.fail("WatchJob(after_sequence=1) replayed the SUCCEEDED event and then never ended: the job was "
                        "read as RUNNING before the events were, so the stream waits for a terminal event that "
                        "it has already sent (and that the hub will not send again)")
    assert calls == [1]
    assert [e.type for e in events][-1] == pb.EVENT_TYPE_SUCCEEDED
    assert [e.sequence for e in events] == list(range(2, events[-1].sequence + 1))


async def test_watch_from_the_start_cannot_miss_the_end(harness: Harness) -> None:
    app = await harness.start(held)
    rec = Recorder(app.hub)
    job = await enqueue(app, held)
    async with asyncio.timeout(5):
        await started[job.id].wait()
    async with await channel_to(app) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        call = stub.WatchJob(pb.WatchJobRequest(id=job.id))
        snapshot = await asyncio.wait_for(call.read(), 5)
        assert snapshot.type == pb.EVENT_TYPE_SNAPSHOT and snapshot.job.state == pb.JOB_STATE_RUNNING
        release[job.id].set()
        await rec.wait_final(job.id)
        rest = []
        async with asyncio.timeout(5):
            while (event := await call.read()) is not grpc.aio.EOF:
                rest.append(event)
    assert [e.type for e in rest] == [pb.EVENT_TYPE_PHASE_SUCCEEDED, pb.EVENT_TYPE_SUCCEEDED]
    assert [e.sequence for e in rest] == [snapshot.sequence + 1, snapshot.sequence + 2]
    assert rest[-1].job.state == pb.JOB_STATE_SUCCEEDED and rest[-1].job.result == b"done"
    assert EventType.SUCCEEDED in rec.types(job.id)


async def test_a_replayed_event_never_carries_a_job_older_than_the_event(harness: Harness) -> None:
    """JobEvent.job on a replayed event is documented as "the job as it is now": at least as new as
    the event itself. The store reads the events and the job in one read transaction (one
    snapshot); here the job finishes while the stream replays, so an implementation that read
    them apart would give events whose `job` predates them (SUCCEEDED with a RUNNING job)."""
    app = await harness.start(held)
    job = await enqueue(app, held)
    async with asyncio.timeout(5):
        await started[job.id].wait()
    original = app.store.events_after

    async def events_after(wanted: str, sequence: int, limit: int) -> list[Event]:
        release[job.id].set()  # the job finishes while the replay reads
        return await original(wanted, sequence, limit)

    app.store.events_after = events_after  # type: ignore[method-assign]
    async with await channel_to(app) as channel:
        events = await stream(jobwire_pb2_grpc.JobServiceStub(channel), job.id, after=1, within=5)
    assert [e.type for e in events][-1] == pb.EVENT_TYPE_SUCCEEDED
    stale = [(e.sequence, pb.EventType.Name(e.type), e.job.last_sequence, pb.JobState.Name(e.job.state))
             for e in events if e.job.last_sequence < e.sequence]
    assert stale == [], f"replayed events whose job is older than the event: {stale}"
