"""Queue controls over real loopback gRPC on a real SQLite file: a paused queue holds 1,000 jobs
and runs them all once resumed; a rate limit of 50/s measured from the jobs' STARTED events; a key
limit of 1 that never runs two jobs of one key and does not hold other keys back; waiting reasons.

Times are the server's own (the STARTED event carries the claim's time), so a loaded machine
delays the measurement's wake-ups but does not skew what it measures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc import aio
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc
from jobwire_server.app import App
from jobwire_server.domain.clock import SystemClock
from jobwire_server.domain.states import EventType

from tests.testkit import Harness, Recorder, claim_round

pytestmark = pytest.mark.timeout(120)

Stub = jobwire_pb2_grpc.JobServiceStub


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    harness = Harness(tmp_path)
    from jobwire_server.handlers.builtin import noop, sleep  # noqa: PLC0415

    yield await harness.start(noop, sleep, clock=SystemClock(), concurrency=16)  # type: ignore[arg-type]
    await harness.stop_all()


@pytest.fixture
async def stub(app: App) -> AsyncIterator[Stub]:
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


async def enqueue_many(stub: Stub, requests: list[pb.EnqueueRequest]) -> list[pb.Job]:
    jobs: list[pb.Job] = []
    for start in range(0, len(requests), 1000):
        reply = await stub.EnqueueBatch(pb.EnqueueBatchRequest(requests=requests[start:start + 1000]), timeout=30)
        jobs += [r.job for r in reply.responses]
    return jobs


async def wait_count(recorder: Recorder, ids: set[str], event_type: EventType, count: int, within: float) -> None:
    """Until `count` events of `event_type` of the jobs `ids` were published."""
    async with asyncio.timeout(within):
        while sum(1 for e in recorder.events if e.type is event_type and e.job_id in ids) < count:
            await recorder.pump()


async def test_a_paused_queue_starts_nothing_of_1000_jobs_and_runs_them_all_once_resumed(app: App,
                                                                                           stub: Stub) -> None:
    paused = await stub.PauseQueue(pb.PauseQueueRequest(name="bulk"), timeout=10)
    assert paused.settings.paused and paused.name == "bulk"
    recorder = Recorder(app.service.hub)
    jobs = await enqueue_many(stub, [pb.EnqueueRequest(queue="bulk", kind="noop") for _ in range(1000)])
    other = (await stub.Enqueue(pb.EnqueueRequest(queue="elsewhere", kind="noop"), timeout=10)).job
    ids = {j.id for j in jobs}
    await wait_count(recorder, {other.id}, EventType.SUCCEEDED, 1, 30)  # other queues run meanwhile
    await claim_round(app)  # and one more claim round, which must leave the paused queue alone too
    stats = (await stub.GetQueueStats(pb.GetQueueStatsRequest(queue="bulk"), timeout=10)).queues[0]
    assert (stats.queued, stats.running, stats.succeeded, stats.paused) == (1000, 0, 0, True)
    assert stats.settings.paused
    job = await stub.GetJob(pb.GetJobRequest(id=jobs[0].id), timeout=10)
    assert job.waiting_reason == pb.WAITING_REASON_QUEUE_PAUSED
    assert not [e for e in recorder.events if e.type is EventType.STARTED and e.job_id in ids]

    resumed_at = len(recorder.events)
    resumed = await stub.ResumeQueue(pb.ResumeQueueRequest(name="bulk"), timeout=10)
    assert not resumed.settings.paused
    await wait_count(recorder, ids, EventType.SUCCEEDED, 1000, 60)
    started = [i for i, e in enumerate(recorder.events) if e.type is EventType.STARTED and e.job_id in ids]
    assert len(started) == 1000 and min(started) >= resumed_at, "nothing started before the resume"
    stats = (await stub.GetQueueStats(pb.GetQueueStatsRequest(queue="bulk"), timeout=10)).queues[0]
    assert (stats.queued, stats.succeeded, stats.paused) == (0, 1000, False)


async def test_a_rate_limit_of_50_per_second_starts_50_a_second_over_5_seconds(app: App, stub: Stub) -> None:
    await measure_rate_limit(app, stub, "sqlite")


async def test_a_rate_limit_of_50_per_second_holds_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    harness = Harness(tmp_path)
    from jobwire_server.handlers.builtin import noop  # noqa: PLC0415

    app = await harness.start(noop, clock=SystemClock(), concurrency=16, db=pg_url)  # type: ignore[arg-type]
    try:
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            await measure_rate_limit(app, jobwire_pb2_grpc.JobServiceStub(channel), "postgresql")
    finally:
        await harness.stop_all()


async def measure_rate_limit(app: App, stub: Stub, store: str) -> None:
    """50 jobs/s with a burst of 10: the burst at once, then 250 in the next 5 s (within 10 %),
    measured from the times the claims stamped on the STARTED events."""
    burst = 10
    await stub.UpdateQueue(pb.UpdateQueueRequest(name="paced", rate_limit=50, rate_burst=burst), timeout=10)
    recorder = Recorder(app.service.hub)
    jobs = await enqueue_many(stub, [pb.EnqueueRequest(queue="paced", kind="noop") for _ in range(320)])
    ids = {j.id for j in jobs}
    await wait_count(recorder, ids, EventType.STARTED, burst + 275, 30)
    times = sorted(e.time for e in recorder.events if e.type is EventType.STARTED and e.job_id in ids)
    first = times[0]
    assert sum(1 for t in times if t == first) <= burst, "at most a burst starts at once"
    in_window = sum(1 for t in times if first < t <= first + 5.0)
    rate = in_window / 5.0
    print(f"rate limit 50/s ({store}): {in_window} jobs started in the 5 s after the burst, {rate:.1f}/s")
    assert 45.0 <= rate <= 55.0, f"{rate:.1f} jobs/s is not within 10 % of 50"
    last = await stub.GetJob(pb.GetJobRequest(id=jobs[-1].id), timeout=10)  # the last in claim order
    assert last.state == pb.JOB_STATE_QUEUED, "35 jobs still wait: 0.7 s of tokens"
    assert last.waiting_reason in (pb.WAITING_REASON_RATE_LIMIT, pb.WAITING_REASON_NONE)  # a token may have accrued


async def test_a_key_limit_of_1_never_runs_two_of_a_key_and_lets_other_keys_past(app: App, stub: Stub) -> None:
    await stub.UpdateQueue(pb.UpdateQueueRequest(name="tenants", key_limit=1), timeout=10)
    recorder = Recorder(app.service.hub)
    step = json.dumps({"seconds": 0.02}).encode()
    # The hot key's jobs first and at a higher priority: a claim that only looked at the head of
    # the queue would find nothing but them.
    hot = await enqueue_many(stub, [pb.EnqueueRequest(queue="tenants", kind="sleep", payload=step, priority=9,
                                                      concurrency_key="hot") for _ in range(100)])
    others = await enqueue_many(stub, [pb.EnqueueRequest(queue="tenants", kind="sleep", payload=step,
                                                         concurrency_key=f"tenant-{n}") for n in range(100)])
    waiting = await stub.GetJob(pb.GetJobRequest(id=hot[-1].id), timeout=10)
    assert waiting.concurrency_key == "hot"
    assert waiting.waiting_reason == pb.WAITING_REASON_CONCURRENCY_KEY
    hot_ids, other_ids = {j.id for j in hot}, {j.id for j in others}
    await wait_count(recorder, other_ids, EventType.SUCCEEDED, 100, 60)
    hot_done = sum(1 for e in recorder.events if e.type is EventType.SUCCEEDED and e.job_id in hot_ids)
    print(f"key limit 1: {hot_done} of 100 jobs of the hot key had finished when the 100 of other keys had")
    assert hot_done < 50, f"the other keys waited behind the hot key ({hot_done} hot jobs finished first)"
    await wait_count(recorder, hot_ids, EventType.SUCCEEDED, 100, 60)
    running: set[str] = set()
    for event in recorder.events:  # in commit order: never two jobs of the hot key between start and end
        if event.job_id not in hot_ids:
            continue
        if event.type is EventType.STARTED:
            assert not running, f"{event.job_id} started while {running} ran"
            running.add(event.job_id)
        elif event.type is EventType.SUCCEEDED:
            running.discard(event.job_id)


async def test_queue_defaults_apply_to_jobs_that_leave_them_unset(stub: Stub) -> None:
    queue = await stub.UpdateQueue(pb.UpdateQueueRequest(name="defaults", default_priority=8,
                                                         default_max_attempts=4), timeout=10)
    assert (queue.settings.default_priority, queue.settings.default_max_attempts) == (8, 4)
    await stub.PauseQueue(pb.PauseQueueRequest(name="defaults"), timeout=10)
    unset = (await stub.Enqueue(pb.EnqueueRequest(queue="defaults", kind="noop"), timeout=10)).job
    given = (await stub.Enqueue(pb.EnqueueRequest(queue="defaults", kind="noop", priority=2, max_attempts=1),
                                timeout=10)).job
    assert (unset.priority, unset.max_attempts) == (8, 4)
    assert (given.priority, given.max_attempts) == (2, 1)


async def test_pausing_a_queue_lets_its_running_job_finish(app: App, stub: Stub) -> None:
    recorder = Recorder(app.service.hub)
    running = (await stub.Enqueue(pb.EnqueueRequest(queue="busy", kind="sleep",
                                                    payload=json.dumps({"seconds": 0.5}).encode()), timeout=10)).job
    await recorder.wait(running.id, EventType.STARTED, within=10)
    await stub.PauseQueue(pb.PauseQueueRequest(name="busy"), timeout=10)
    waiting = (await stub.Enqueue(pb.EnqueueRequest(queue="busy", kind="noop"), timeout=10)).job
    assert (await recorder.wait_final(running.id, within=10)).type is EventType.SUCCEEDED
    await claim_round(app)  # the claim of the commit that finished it, and one more, leave the queue alone
    held = await stub.GetJob(pb.GetJobRequest(id=waiting.id), timeout=10)
    assert (held.state, held.waiting_reason) == (pb.JOB_STATE_QUEUED, pb.WAITING_REASON_QUEUE_PAUSED)
