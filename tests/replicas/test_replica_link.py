"""ReplicaLink.stop() ends its task even when a wake-up arrives as it stops.

Another replica's notification can kick the link in the same loop iteration as the stop: on
Python 3.11, `asyncio.wait_for` then returns the wake-up and drops the cancellation, the loop
went on tailing, and `stop()` (and with it a replica's graceful shutdown) waited forever.
"""

from __future__ import annotations

import asyncio

import pytest
from jobwire_server.engine.hub import WatchHub
from jobwire_server.engine.replicas import ReplicaLink
from jobwire_server.store.postgres import TailCursor

pytestmark = pytest.mark.timeout(30)


class QuietStore:
    """A shared store where nothing happens."""

    on_remote = None

    async def listen(self) -> None:
        pass

    async def tail_start(self) -> TailCursor:
        return TailCursor(1, 0)

    async def tail_events(self, cursor: TailCursor, limit: int, job_ids: list[str] | None = None) -> tuple[
            list[object], TailCursor]:
        return [], cursor


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_stop_ends_the_link_when_a_wake_up_arrives_with_it(turns: int) -> None:
    link = ReplicaLink(QuietStore(), WatchHub(shared=True), wake_claims=lambda: None,
                       wake_webhooks=lambda: None, cancel=lambda _job: None, poll=60.0)
    await link.start()
    await asyncio.sleep(0)  # sleep-ok: one loop turn, so the link waits for a wake-up
    link.kick()
    for _ in range(turns):  # the stop lands at each step of the wake-up reaching the link
        await asyncio.sleep(0)  # sleep-ok: one loop turn
    stopping = asyncio.create_task(link.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    assert stopping in done, "stop() did not end the link's task"
