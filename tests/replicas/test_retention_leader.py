"""Retention runs on one replica only, the holder of the `retention` row of the `leaders` table;
when that replica is killed, another takes the row over once its lease has run out (15 s, the
leadership ttl) and runs retention from then on.

Each replica logs "running retention on this replica (term N)" when it takes the lease, and
"retention: N jobs made stale, …" after a pass that did something: the logs tell which
replica ran retention, the table which replica holds the lease in which term.
"""

from __future__ import annotations

import random
import re
import time
from datetime import datetime
from typing import Any

import asyncpg
import grpc
import pytest
from jobwire.v1 import jobwire_pb2 as pb
from jobwire_server.engine.replicas import LEADER_TTL

from tests.replicas.cluster import Cluster, Replica, count_state, stub, wait_until

pytestmark = pytest.mark.timeout(90)

NAMES = ("r1", "r2", "r3")
JOBS = 20
FLAGS = {"retention_interval": "0.2s", "stale_after": "1s"}
_STALE = re.compile(r"retention: (\d+) jobs made stale")


async def _leader(db: asyncpg.Connection) -> tuple[str, int, float] | None:
    row = await db.fetchrow(
        "SELECT holder, term, extract(epoch FROM expires)::float8 FROM leaders WHERE duty = 'retention'")
    return None if row is None else (row[0], row[1], row[2])


def _took(replica: Replica, term: int) -> float | None:
    """When the replica's log says it took the retention lease in `term` (None if it did not)."""
    for line in replica.log().splitlines():
        if line.endswith(f"running retention on this replica (term {term})"):
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def _made_stale(replica: Replica) -> int:
    return sum(int(m.group(1)) for m in _STALE.finditer(replica.log()))


async def _finish_jobs(replicas: list[Replica], db: asyncpg.Connection, stale: int) -> dict[str, int]:
    """Enqueue JOBS noop jobs through random replicas; wait until retention has made them STALE
    and said so in a log. Returns how many each replica's log says it made stale."""
    rng = random.Random(stale)
    before = {r.name: _made_stale(r) for r in replicas}
    for _ in range(JOBS):
        async with grpc.aio.insecure_channel(rng.choice(replicas).target) as channel:
            await stub(channel).Enqueue(pb.EnqueueRequest(kind="noop"), timeout=10)

    async def all_stale() -> bool:
        return await count_state(db, "STALE") == stale + JOBS

    async def all_logged() -> bool:  # a pass logs after its last batch committed
        return sum(_made_stale(r) for r in replicas) - sum(before.values()) >= JOBS

    await wait_until(all_stale, 20, f"{stale + JOBS} jobs STALE")
    await wait_until(all_logged, 10, "retention to log what it did")
    return {r.name: _made_stale(r) - before[r.name] for r in replicas}


def _took_term(replicas: list[Replica], term: int) -> Any:
    async def check() -> list[Replica]:
        return [r for r in replicas if _took(r, term) is not None]
    return check


async def test_retention_runs_on_the_lease_holder_only_and_moves_when_it_is_killed(
        cluster: Cluster, db: asyncpg.Connection) -> None:
    replicas = [cluster.start(name, **FLAGS) for name in NAMES]
    holder, term, _ = await wait_until(lambda: _leader(db), 10, "a retention lease holder")
    assert term == 1
    (leader,) = await wait_until(_took_term(replicas, 1), 10, "a replica to log that it took the lease")
    made = await _finish_jobs(replicas, db, 0)
    assert made == {r.name: JOBS if r is leader else 0 for r in replicas}, "only the lease holder ran retention"

    leader.kill()
    killed = time.time()
    last = await _leader(db)  # the killed holder renews no more: its lease's last expiry
    assert last is not None and last[:2] == (holder, 1)
    expires = last[2]

    async def taken_over() -> tuple[str, int, float] | None:
        row = await _leader(db)
        return row if row is not None and row[1] == 2 else None

    new_holder, _, _ = await wait_until(taken_over, LEADER_TTL + 10, "another replica to take the retention lease")
    assert new_holder != holder
    survivors = [r for r in replicas if r is not leader]
    (successor,) = await wait_until(_took_term(survivors, 2), 10, "the new holder to log that it took the lease")
    took = _took(successor, 2)
    assert took is not None and took >= expires - 0.001, "taken over only once the old lease had run out"
    made = await _finish_jobs(survivors, db, JOBS)
    assert made == {r.name: JOBS if r is successor else 0 for r in survivors}, "only the new holder ran retention"
    assert all(_took(r, 1) is None and _took(r, 3) is None for r in survivors)
    print(f"\nretention lease: {leader.name} (term 1) killed; {successor.name} took it over (term 2) "
          f"{took - killed:.1f}s later, {took - expires:.2f}s after the lease ran out (ttl {LEADER_TTL:g}s)")
