"""Queue controls on two replicas sharing one database: a key limit of 1 holds while both claim
and finish, and a queue paused on one replica and resumed on the other runs the jobs it held.

What ran is read from the ledger the handlers write (tests/replicas/ledger.py), whatever the
service says: a job's phases run while it is RUNNING, so two jobs of one key whose ledger spans
overlap were RUNNING at once."""

from __future__ import annotations

import itertools

import asyncpg
import grpc
import pytest
from jobwire.v1 import jobwire_pb2 as pb

from tests.replicas.cluster import Cluster, count_state, stub, wait_until

pytestmark = pytest.mark.timeout(120)

HOT = 30
OTHERS = 30


def _spans(cluster: Cluster, job_ids: set[str]) -> list[tuple[float, float, str, str]]:
    """(first phase start, last phase end, job, replica) of each job, by start."""
    spans: dict[str, tuple[float, float, str]] = {}
    for line in cluster.ledger():
        if line["job"] not in job_ids:
            continue
        start, end, replica = spans.get(line["job"], (line["time"], line["time"], line["replica"]))
        spans[line["job"]] = (min(start, line["time"]), max(end, line["time"]), replica)
    return sorted((start, end, job, replica) for job, (start, end, replica) in spans.items())


async def test_a_key_limit_of_1_holds_across_two_replicas(cluster: Cluster, db: asyncpg.Connection) -> None:
    a, b = cluster.start("a", concurrency=8), cluster.start("b", concurrency=8)
    hot: set[str] = set()
    others: set[str] = set()
    async with grpc.aio.insecure_channel(a.target) as ca, grpc.aio.insecure_channel(b.target) as cb:
        await stub(ca).UpdateQueue(pb.UpdateQueueRequest(name="tenants", key_limit=1), timeout=10)
        for n in range(HOT):  # both replicas enqueue, and each commit claims: both run jobs
            api = stub(ca if n % 2 else cb)
            hot.add((await api.Enqueue(pb.EnqueueRequest(kind="rep.ledger", queue="tenants",
                                                         concurrency_key="hot"), timeout=10)).job.id)
            others.add((await api.Enqueue(pb.EnqueueRequest(kind="rep.ledger", queue="tenants",
                                                            concurrency_key=f"t-{n}"), timeout=10)).job.id)

    async def all_done() -> bool:
        return await count_state(db, "SUCCEEDED", "rep.ledger") == HOT + OTHERS

    await wait_until(all_done, 60, "every job to succeed")
    spans = _spans(cluster, hot)
    assert len(spans) == HOT
    for (_, end, job, replica), (start, _, following, other) in itertools.pairwise(spans):
        assert end <= start, f"hot jobs {job} on {replica} and {following} on {other} ran at once"
    ran_on = {replica for *_, replica in _spans(cluster, hot | others)}
    assert ran_on == {"a.1", "b.1"}, ran_on


async def test_a_queue_paused_on_one_replica_and_resumed_on_the_other(cluster: Cluster,
                                                                      db: asyncpg.Connection) -> None:
    a, b = cluster.start("a", concurrency=8), cluster.start("b", concurrency=8)
    async with grpc.aio.insecure_channel(a.target) as ca, grpc.aio.insecure_channel(b.target) as cb:
        await stub(ca).PauseQueue(pb.PauseQueueRequest(name="held"), timeout=10)
        batch = await stub(cb).EnqueueBatch(pb.EnqueueBatchRequest(requests=[
            pb.EnqueueRequest(kind="rep.ledger", queue="held") for _ in range(10)]), timeout=10)
        ids = {r.job.id for r in batch.responses}
        # B's enqueue committed with a claim that left the paused queue alone; so did the claim of
        # a later commit on A (an enqueue elsewhere, which A runs).
        other = (await stub(ca).Enqueue(pb.EnqueueRequest(kind="rep.ledger"), timeout=10)).job

        async def other_done() -> bool:
            return await count_state(db, "SUCCEEDED", "rep.ledger") == 1

        await wait_until(other_done, 30, "the job of another queue to succeed")
        stats = (await stub(cb).GetQueueStats(pb.GetQueueStatsRequest(queue="held"), timeout=10)).queues[0]
        assert (stats.queued, stats.running, stats.paused) == (10, 0, True)
        assert not {line["job"] for line in cluster.ledger()} & ids, "nothing of the paused queue ran"
        assert other.id in {line["job"] for line in cluster.ledger()}
        await stub(ca).ResumeQueue(pb.ResumeQueueRequest(name="held"), timeout=10)

    async def all_done() -> bool:
        return await count_state(db, "SUCCEEDED", "rep.ledger") == 11

    await wait_until(all_done, 30, "the resumed queue's jobs to succeed")
