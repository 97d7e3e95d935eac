"""A replica killed (SIGKILL) while running jobs: the others rescue them once their leases have
run out, and run them to the end.

The victim starts alone, so the jobs can only be claimed by it; the first attempt of
`rep.sticky` never ends, later ones finish at once. The survivors start before the kill.
"""

from __future__ import annotations

import time

import asyncpg
import grpc
import pytest
from jobwire.v1 import jobwire_pb2 as pb

from tests.replicas.cluster import Cluster, count_state, stored_events, stub, wait_until

pytestmark = pytest.mark.timeout(60)

JOBS = 4
LEASE_TTL = 2.0


async def test_a_killed_replicas_running_jobs_are_rescued_by_the_others_after_the_lease_ttl(
        cluster: Cluster, db: asyncpg.Connection) -> None:
    victim = cluster.start("v", lease_ttl=LEASE_TTL)
    async with grpc.aio.insecure_channel(victim.target) as channel:
        jobs = [(await stub(channel).Enqueue(pb.EnqueueRequest(kind="rep.sticky"), timeout=10)).job.id
                for _ in range(JOBS)]

    async def all_running() -> bool:
        return {line["job"] for line in cluster.ledger() if line["replica"] == "v.1"} == set(jobs)

    await wait_until(all_running, 10, "the victim to run every job")
    survivors = [cluster.start(name, lease_ttl=LEASE_TTL) for name in ("a", "b")]
    victim.kill()
    killed = time.time()
    # The victim renews no more: these are the leases' last expiries.
    leases = dict(await db.fetch(
        "SELECT id::text, extract(epoch FROM lease_expires)::float8 FROM jobs WHERE id = ANY($1::uuid[])", jobs))

    async def all_succeeded() -> bool:
        return await count_state(db, "SUCCEEDED") == JOBS

    await wait_until(all_succeeded, 20, "the survivors to finish every job")
    events = await stored_events(db, jobs)
    ledger = cluster.ledger()

    delays = []
    for job_id in jobs:
        history = events[job_id]
        assert [e.type for e in history] == ["ENQUEUED", "STARTED", "PHASE_STARTED", "INTERRUPTED", "STARTED",
                                             "PHASE_STARTED", "PHASE_SUCCEEDED", "SUCCEEDED"], history
        rescue = history[3]
        assert rescue.detail == "worker lost during attempt 1 (lease expired)"
        assert rescue.time > killed and rescue.time >= leases[job_id], "rescued only once its lease had run out"
        delays.append(rescue.time - leases[job_id])
        runs = [(line["attempt"], line["replica"]) for line in ledger if line["job"] == job_id
                and line["event"] == "start"]
        assert runs[0] == (1, "v.1") and len(runs) == 2 and runs[1][0] == 2, runs
        assert runs[1][1] in {"a.1", "b.1"}, "a survivor ran the second attempt"
    logs = "".join(s.log() for s in survivors)
    assert sum(f"job {job_id}: lease expired during attempt 1" in logs for job_id in jobs) == JOBS
    print(f"\nrescued {JOBS} jobs of the killed replica {min(delays):.2f}-{max(delays):.2f}s after their leases "
          f"ran out (lease ttl {LEASE_TTL:g}s); leases ran out {max(leases.values()) - killed:.2f}s after the kill")
    assert max(delays) < LEASE_TTL, "rescued within a rescue pass or two of the expiry (one every ttl/3)"
