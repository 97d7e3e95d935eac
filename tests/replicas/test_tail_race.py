"""A watch that starts while the event tailer is between choosing which jobs to read and taking
its database snapshot must still get every event committed after it started.

The tailer reads only the events of watched jobs, then moves its cursor up to the snapshot's
horizon. A pass that chose its jobs before a watch started, and took its snapshot after an
event of the newly watched job committed, went past that event without reading it: the watcher
never saw it (a gap; a stream that waited for a terminal event waited forever). Here the pass
is held between the two moments (as a busy connection pool holds it), on the real store.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from jobwire_server.engine.hub import EventFilter, WatchHub
from jobwire_server.engine.replicas import ReplicaLink
from jobwire_server.store.postgres import PostgresJobStore

from tests.store.conformance import claim_one, insert, nj

pytestmark = pytest.mark.timeout(60)


class HeldTail:
    """Wraps a store's tail_events: the next call waits for `release` before it reads."""

    def __init__(self, store: PostgresJobStore) -> None:
        self._tail = store.tail_events
        self.hold = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        store.tail_events = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any) -> Any:
        if self.hold:
            self.hold = False
            self.entered.set()
            await self.release.wait()
        return await self._tail(*args)


@pytest.mark.parametrize("watch", ["job", "all"])
async def test_a_watch_started_during_a_tail_pass_gets_what_commits_after_it(pg_url: str, watch: str) -> None:
    here, there = PostgresJobStore(pg_url, pool_size=2), PostgresJobStore(pg_url, pool_size=2)
    await here.open()
    await there.open()
    hub = WatchHub(shared=True)
    link = ReplicaLink(here, hub, wake_claims=lambda: None, wake_webhooks=lambda: None, cancel=lambda _job: None,
                       poll=60.0)
    try:
        (job,) = await insert(there, nj(phases=("only",)))
        held = HeldTail(here)
        await link.start()
        held.hold = True
        link.kick()
        async with asyncio.timeout(10):
            await held.entered.wait()  # a pass chose its jobs (none watched) and waits for the pool
        sub = hub.subscribe_job(job.id) if watch == "job" else hub.subscribe_all(EventFilter())
        await claim_one(there)  # another replica commits STARTED and PHASE_STARTED (2, 3)
        held.release.set()
        passes = link.passes
        async with asyncio.timeout(10):
            while link.passes < passes + 2:  # the held pass, then one more
                link.kick()
                await asyncio.sleep(0.01)  # sleep-ok: the poll interval of a wait with a deadline
        got = [e.sequence for e in sub._buffer if e.job_id == job.id]
        assert got[-2:] == [2, 3], f"the watcher got {got}"
    finally:
        await link.stop()
        await here.close()
        await there.close()
