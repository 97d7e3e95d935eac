"""WatchJob/WatchEvents over real loopback gRPC against an in-process server: snapshot then live
events, resume after a dropped stream, slow watchers ended with a resumable sequence, and
subscriptions freed when clients go away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc
from jobwire_server.app import App
from jobwire_server.config import build_config
from jobwire_server.handlers.builtin import noop, sleep
from jobwire_server.handlers.kind import JobContext, Kind
from jobwire_server.handlers.registry import Registry

gated = Kind("test.gated")
GATES: dict[str, asyncio.Event] = {}


@gated.phase("wait")
async def _wait(ctx: JobContext) -> bytes:
    await GATES[ctx.json()["gate"]].wait()
    return b"released"


@gated.phase("chatter")
async def _chatter(ctx: JobContext) -> bytes:
    pad = "." * int(ctx.json().get("pad", 0))
    for step in range(int(ctx.json().get("progress", 0))):
        await ctx.progress(min(100.0, step), f"step {step}{pad}")
    return b"done"


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    application = App(build_config({"db": str(tmp_path / "j.db"), "listen": "127.0.0.1:0", "watch_buffer": 8}),
                      registry=Registry([noop, sleep, gated]))
    await application.start()
    yield application
    await application.stop()


@pytest.fixture
async def stub(app: App) -> AsyncIterator[jobwire_pb2_grpc.JobServiceStub]:
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


def _payload(**fields: object) -> bytes:
    return json.dumps(fields).encode()


async def _enqueue_gated(stub: jobwire_pb2_grpc.JobServiceStub, gate: str, progress: int = 0, pad: int = 0) -> pb.Job:
    GATES[gate] = asyncio.Event()
    payload = _payload(gate=gate, progress=progress, pad=pad)
    reply = await stub.Enqueue(pb.EnqueueRequest(kind="test.gated", payload=payload))
    return reply.job


async def test_watch_sends_snapshot_then_live_events_and_ends_after_terminal(
        stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    job = await _enqueue_gated(stub, "a", progress=3)
    stream = stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=20)
    first = await stream.read()
    assert first.type == pb.EVENT_TYPE_SNAPSHOT and first.job.id == job.id
    GATES["a"].set()
    events = [first] + await _read_all(stream)
    types = [e.type for e in events]
    assert types[-1] == pb.EVENT_TYPE_SUCCEEDED
    assert types.count(pb.EVENT_TYPE_PROGRESS) == 3
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences)), "sequence numbers strictly increase"
    assert events[-1].job.state == pb.JOB_STATE_SUCCEEDED and events[-1].job.result == b"done"


async def test_resume_after_a_dropped_stream_replays_what_was_missed(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    job = await _enqueue_gated(stub, "b", progress=2)
    stream = stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=20)
    snapshot = await stream.read()
    stream.cancel()  # the client drops the stream
    GATES["b"].set()
    complete = [e async for e in stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=20)]
    assert complete[-1].type == pb.EVENT_TYPE_SUCCEEDED
    resumed = [e async for e in stub.WatchJob(pb.WatchJobRequest(id=job.id, after_sequence=snapshot.sequence),
                                              timeout=20)]
    assert [e.sequence for e in resumed] == list(range(snapshot.sequence + 1, complete[-1].job.last_sequence + 1))
    assert resumed[-1].type == pb.EVENT_TYPE_SUCCEEDED


async def test_after_sequence_beyond_the_last_event_is_invalid(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    reply = await stub.Enqueue(pb.EnqueueRequest(kind="noop"))
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in stub.WatchJob(pb.WatchJobRequest(id=reply.job.id, after_sequence=999), timeout=10):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_of_unknown_job_is_not_found(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in stub.WatchJob(pb.WatchJobRequest(id="01a205c2-9858-7285-8416-89234471bb78"), timeout=10):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_slow_watcher_is_ended_with_the_sequence_to_resume_from(
        app: App, stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    # 150 events of ~10 KB: more than HTTP/2 flow control lets through to a client that does not
    # read (window growth is off on the slow client), so the hub's buffer of 8 overflows.
    job = await _enqueue_gated(stub, "c", progress=150, pad=5000)
    slow = aio.insecure_channel(f"127.0.0.1:{app.port}", options=[("grpc.http2.bdp_probe", 0)])
    call = jobwire_pb2_grpc.JobServiceStub(slow).WatchJob(pb.WatchJobRequest(id=job.id), timeout=20)
    snapshot = await call.read()  # then read nothing while the job races ahead
    GATES["c"].set()
    while app.hub.subscriber_count:  # the hub drops the overflowing subscription
        await app.hub.changed.wait()
    received = [snapshot]
    with pytest.raises(aio.AioRpcError) as caught:
        received.extend(await _read_all(call))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = _error_info(error)
    assert info.reason == "WATCH_TOO_SLOW"
    # The server names the last sequence it handed to the transport; what was still in flight may
    # be lost with the stream, so a client resumes from the last sequence it actually received.
    assert int(info.metadata["last_sequence"]) >= received[-1].sequence
    await slow.close()
    # Resume once the job is done: a resumed stream racing the rest of the 150 large events live
    # could overflow the tiny buffer too, however fast it reads.
    await app.executor.wait_idle()
    resumed = [e async for e in stub.WatchJob(
        pb.WatchJobRequest(id=job.id, after_sequence=received[-1].sequence), timeout=20)]
    assert resumed[-1].type == pb.EVENT_TYPE_SUCCEEDED
    assert resumed[0].sequence == received[-1].sequence + 1


async def test_subscriptions_are_freed_when_clients_go_away(app: App, stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    job = await _enqueue_gated(stub, "d")
    calls = [stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=20) for _ in range(5)]
    calls.append(stub.WatchEvents(pb.WatchEventsRequest(), timeout=20))
    for call in calls[:5]:
        assert (await call.read()).type == pb.EVENT_TYPE_SNAPSHOT
    while app.hub.subscriber_count < 6:
        await app.hub.changed.wait()
    for call in calls:
        call.cancel()
    async with asyncio.timeout(10):
        while app.hub.subscriber_count:
            await app.hub.changed.wait()
    assert app.hub.subscriber_count == 0
    GATES["d"].set()


async def test_watch_events_filters_by_type_queue_and_kind(stub: jobwire_pb2_grpc.JobServiceStub, app: App) -> None:
    stream = stub.WatchEvents(pb.WatchEventsRequest(kinds=["noop"], types=[pb.EVENT_TYPE_SUCCEEDED]), timeout=20)
    while app.hub.subscriber_count < 1:
        await app.hub.changed.wait()
    await stub.Enqueue(pb.EnqueueRequest(kind="sleep", payload=_payload(seconds=0)))
    wanted = (await stub.Enqueue(pb.EnqueueRequest(kind="noop", payload=b"x"))).job
    event = await stream.read()
    assert event.type == pb.EVENT_TYPE_SUCCEEDED and event.job_id == wanted.id and event.job.kind == "noop"
    stream.cancel()


async def test_watch_events_rejects_unknown_event_types(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in stub.WatchEvents(pb.WatchEventsRequest(types=[999]), timeout=10):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _read_all(call: aio.UnaryStreamCall[pb.WatchJobRequest, pb.JobEvent]) -> list[pb.JobEvent]:
    """Read a stream with read() to its end (iteration and read() cannot be mixed on one call)."""
    events = []
    while (event := await call.read()) is not aio.EOF:
        events.append(event)
    return events


def _error_info(error: aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo in the status details")
