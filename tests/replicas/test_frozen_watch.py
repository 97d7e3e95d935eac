"""A WatchEvents stream on a replica that was frozen (SIGSTOP) while the others went on.

When it resumes, the replica tails what the others committed meanwhile, all at once: with a
watch buffer smaller than that, the stream is ended with RESOURCE_EXHAUSTED (WATCH_TOO_SLOW),
as for any reader that fell behind, and shows none of the events it could not hold (WatchEvents
does not replay). A new stream on the same replica then shows every terminal event committed
after it subscribed. The freeze lasts until the others have finished their jobs (a condition,
waited for on the database).
"""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from jobwire.v1 import jobwire_pb2 as pb

from tests.replicas.cluster import Cluster, EventStream, count_state, stub, wait_until

pytestmark = pytest.mark.timeout(60)

BUFFER = 5
WHILE_FROZEN = 30
AFTER = BUFFER - 1  # fewer than the buffer holds, however they arrive
WATCH = pb.WatchEventsRequest(types=[pb.EVENT_TYPE_SUCCEEDED, pb.EVENT_TYPE_FAILED, pb.EVENT_TYPE_CANCELLED])


async def _enqueue(target: str, count: int) -> set[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        return {(await stub(channel).Enqueue(pb.EnqueueRequest(kind="noop"), timeout=10)).job.id
                for _ in range(count)}


async def test_a_frozen_replicas_stream_ends_too_slow_and_a_new_one_sees_what_follows(
        cluster: Cluster, db: asyncpg.Connection) -> None:
    frozen = cluster.start("f", watch_buffer=BUFFER)
    other = cluster.start("o")
    first = EventStream("first", frozen.target, WATCH).open()
    second = None
    try:
        await first.wait_jobs(await _enqueue(frozen.target, 1), within=10)  # subscribed
        frozen.freeze()
        try:
            while_frozen = await _enqueue(other.target, WHILE_FROZEN)

            async def all_done() -> bool:
                return await count_state(db, "SUCCEEDED") == 1 + WHILE_FROZEN

            await wait_until(all_done, 20, "the other replica to finish the jobs")
        finally:
            frozen.thaw()
        assert await first.until_ended(within=10) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCH_TOO_SLOW")
        assert not first.jobs() & while_frozen, "the events it could not hold were not sent"

        second = EventStream("second", frozen.target, WATCH).open()
        await second.wait_jobs(await _enqueue(frozen.target, 1), within=10)  # subscribed
        after = await _enqueue(other.target, AFTER)
        await second.wait_jobs(after, within=10)
        assert second.ended is None
        assert after <= second.jobs()
        assert len(second.seen) == len(second.jobs()), "each once"
    finally:
        await first.close()
        if second is not None:
            await second.close()
