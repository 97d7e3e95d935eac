"""Two replicas, A and B, on one database: what a client of A sees of a job that runs on B.

A runs one job at a time and is kept busy by a job that never ends, so every job enqueued after
it runs on B. The lease ttl is the default (30 s, renewed every 10 s): anything that reaches A
or B within a second did not wait for a lease renewal.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import grpc
import pytest
from jobwire.v1 import jobwire_pb2 as pb

from tests.replicas.cluster import Cluster, Replica, stored_events, stub, wait_until
from tests.replicas.ledger import STEP_REPORTS
from tests.testkit import finished

pytestmark = pytest.mark.timeout(60)

WATCHED = 4
CANCELLED = 3


async def _a_busy_b_free(cluster: Cluster) -> tuple[Replica, Replica]:
    a = cluster.start("a", concurrency=1)
    async with grpc.aio.insecure_channel(a.target) as channel:
        hold = (await stub(channel).Enqueue(pb.EnqueueRequest(kind="rep.hold"), timeout=10)).job
    await wait_until(_started(cluster, {hold.id}, "a.1"), 10, "A to run the job that keeps it busy")
    b = cluster.start("b", concurrency=8)
    return a, b


def _started(cluster: Cluster, job_ids: set[str], replica: str) -> Any:
    async def check() -> bool:
        return job_ids <= {line["job"] for line in cluster.ledger()
                           if line["event"] == "start" and line["replica"] == replica}
    return check


async def _watch(api: Any, job_id: str) -> list[tuple[Any, float]]:
    """One WatchJob stream from its SNAPSHOT to its end, each message with when it arrived."""
    got = []
    async with asyncio.timeout(20):
        async for event in api.WatchJob(pb.WatchJobRequest(id=job_id)):
            got.append((event, time.time()))
    return got


async def test_a_job_run_on_b_is_watched_live_from_a_in_order_without_gaps(
        cluster: Cluster, db: asyncpg.Connection) -> None:
    a, _ = await _a_busy_b_free(cluster)
    async with grpc.aio.insecure_channel(a.target) as channel:
        api = stub(channel)
        watches = {}
        for _ in range(WATCHED):
            job = (await api.Enqueue(pb.EnqueueRequest(kind="rep.steps"), timeout=10)).job
            watches[job.id] = asyncio.create_task(_watch(api, job.id))
        streams = {job_id: await task for job_id, task in watches.items()}
    stored = await stored_events(db, list(streams))
    ledger = cluster.ledger()

    for job_id, stream in streams.items():
        (snapshot, _), live = stream[0], stream[1:]
        assert snapshot.type == pb.EVENT_TYPE_SNAPSHOT
        sequences = [event.sequence for event, _ in live]
        assert sequences == list(range(snapshot.sequence + 1, len(stored[job_id]) + 1)), "in order, no gap"
        assert [pb.EventType.Name(event.type) for event, _ in live] == [
            "EVENT_TYPE_" + e.type for e in stored[job_id][snapshot.sequence:]], "the stored events"
        assert live[-1][0].type == pb.EVENT_TYPE_SUCCEEDED
        runs = [line for line in ledger if line["job"] == job_id]
        assert {line["replica"] for line in runs} == {"b.1"}, "it ran on B"
        # Live: the stream showed the job's progress while B was still running it.
        progress = [at for event, at in live if event.type == pb.EVENT_TYPE_PROGRESS]
        assert len(progress) == 3 * STEP_REPORTS
        assert progress[0] < max(line["time"] for line in runs), "a progress report arrived only after the job ended"
    print("\nwatched from A while running on B: " + ", ".join(
        f"{len(s) - 1} live events after snapshot {s[0][0].sequence}" for s in streams.values()))


async def test_a_cancel_sent_to_a_reaches_the_handler_running_on_b_within_a_second(cluster: Cluster) -> None:
    a, _ = await _a_busy_b_free(cluster)
    latencies = []
    async with grpc.aio.insecure_channel(a.target) as channel:
        api = stub(channel)
        jobs = [(await api.Enqueue(pb.EnqueueRequest(kind="rep.hold"), timeout=10)).job for _ in range(CANCELLED)]
        await wait_until(_started(cluster, {j.id for j in jobs}, "b.1"), 10, "B to run every job")
        for job in jobs:
            sent = time.time()
            await api.CancelJob(pb.CancelJobRequest(id=job.id, reason="from A"), timeout=10)

            async def cancelled(job_id: str = job.id) -> list[dict[str, Any]]:
                return [line for line in cluster.ledger_of(job_id) if line["event"] == "cancelled"]

            (line,) = await wait_until(cancelled, 5, f"the handler of job {job.id} on B to be cancelled")
            assert line["replica"] == "b.1"
            latencies.append(line["time"] - sent)
            final = await finished(api, job.id)
            assert final.job.state == pb.JOB_STATE_CANCELLED
            assert final.job.cancel_reason == "from A"
    print("\ncancel sent to A, handler on B cancelled after " + ", ".join(f"{t * 1000:.0f} ms" for t in latencies))
    assert max(latencies) < 1.0
