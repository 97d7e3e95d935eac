"""Two stores (two replicas' worth of connections) on one PostgreSQL database, racing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from jobwire_server.domain.actions import plan_cancel
from jobwire_server.domain.bulk import Skipped, SkipReason, cancel_builder
from jobwire_server.domain.errors import InvalidTransition
from jobwire_server.domain.models import Job, JobError, Webhook
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.queues import QueueChange, apply_change
from jobwire_server.domain.states import TERMINAL_STATES, EventType, JobState
from jobwire_server.domain.transitions import finish_phase, rescue_expired
from jobwire_server.store.base import ChangeQueue, ClaimParams, InsertJobs, UpdateJob
from jobwire_server.store.postgres import PostgresJobStore

from tests.store.conformance import LEASE, REQUEST_TTL, T0, claim, claim_one, insert, nj, stored_events

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def pair(pg_url: str) -> AsyncIterator[tuple[PostgresJobStore, PostgresJobStore]]:
    a, b = PostgresJobStore(pg_url, pool_size=4), PostgresJobStore(pg_url, pool_size=4)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def assert_gapless(store: PostgresJobStore, job: Job) -> None:
    current = await store.get_job(job.id)
    assert [s for s, _, _ in await stored_events(store, job.id)] == list(range(1, current.last_sequence + 1))


async def test_concurrent_claims_take_disjoint_jobs(pair: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, b = pair
    jobs = await insert(a, *[nj(phases=("only",)) for _ in range(300)])
    taken: dict[str, list[str]] = {"a": [], "b": []}

    async def drain(name: str, store: PostgresJobStore) -> None:
        while True:
            _, claimed = await claim(store, limit=25, owner=name)
            if not claimed:
                return
            taken[name] += [c.job.id for c in claimed]

    await asyncio.gather(drain("a", a), drain("b", b))
    assert not set(taken["a"]) & set(taken["b"]), "a job was claimed by both"
    assert sorted(taken["a"] + taken["b"]) == sorted(j.id for j in jobs)
    assert taken["a"] and taken["b"], "both replicas got work"
    for job in jobs[:20]:
        await assert_gapless(a, job)


async def test_fifty_concurrent_enqueues_with_one_dedupe_key_make_one_job(
        pair: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, b = pair
    results = await asyncio.gather(*[
        (a if n % 2 else b).insert_jobs([nj(dedupe_key="one", payload=str(n).encode())], T0, REQUEST_TTL)
        for n in range(50)])
    ids = {r[0].job.id for r in results}
    assert len(ids) == 1
    assert sum(r[0].created for r in results) == 1
    assert sum(r[0].deduplicated for r in results) == 49


async def test_one_request_id_sent_to_both_replicas_makes_one_job(
        pair: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, b = pair
    new = nj(request_id="req-1", fingerprint="same")
    results = await asyncio.gather(*[(a if n % 2 else b).insert_jobs([new], T0, REQUEST_TTL) for n in range(20)])
    assert len({r[0].job.id for r in results}) == 1
    assert sum(r[0].created for r in results) == 1


async def test_a_batch_refused_on_one_replica_commits_the_rest(pair: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, b = pair
    await insert(a, nj(request_id="taken", fingerprint="first"))
    refused, fine = await b.write([InsertJobs([nj(request_id="taken", fingerprint="other")], T0, REQUEST_TTL),
                                   InsertJobs([nj(request_id="free")], T0, REQUEST_TTL)])
    assert isinstance(refused, Exception) and fine[0].created


async def test_cancel_racing_completion_ends_with_exactly_one_terminal_event(
        pair: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, b = pair
    await insert(a, *[nj(phases=("only",)) for _ in range(30)])
    _, claimed = await claim(a, limit=30)
    assert len(claimed) == 30

    async def cancel(job: Job) -> None:
        with contextlib.suppress(InvalidTransition):  # already finished
            await b.update_job(job.id, lambda j: plan_cancel(j, "race", T0 + 1))

    await asyncio.gather(*[coro for c in claimed for coro in (
        a.apply_changes([finish_phase(c.job, 0, b"r", T0 + 1)]), cancel(c.job))])
    for c in claimed:
        events = await stored_events(a, c.job.id)
        terminal = [t for _, t, _ in events if t.value in {s.value for s in TERMINAL_STATES}]
        assert terminal == [EventType.SUCCEEDED], events
        await assert_gapless(a, c.job)


async def test_cancel_of_a_queued_job_racing_a_claim_never_both_runs_and_cancels(
        pair: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, b = pair
    jobs = await insert(a, *[nj(phases=("only",)) for _ in range(40)])

    async def cancel(job: Job) -> None:
        await b.update_job(job.id, lambda j: plan_cancel(j, "race", T0 + 1))

    _, _ = (await asyncio.gather(claim(a, limit=40), *[cancel(j) for j in jobs]))[0]
    for job in jobs:
        now = await a.get_job(job.id)
        types = [t for _, t, _ in await stored_events(a, job.id)]
        if EventType.STARTED in types:
            assert now.state is JobState.RUNNING and now.cancel_requested
        else:
            assert now.state is JobState.CANCELLED
        await assert_gapless(a, job)


async def test_a_rescue_never_rewrites_a_job_another_replica_finished_or_renewed(
        pair: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, b = pair
    await insert(a, nj(phases=("only",)), nj(phases=("only",)))
    _, (first, second) = await claim(a, limit=2)
    late = T0 + LEASE + 1
    seen = {j.id: j for j in await b.expired_leases(late, 10)}
    assert set(seen) == {first.job.id, second.job.id}
    await a.apply_changes([finish_phase(first.job, 0, b"done", T0 + 2)])  # finished after B looked
    await a.renew_leases("worker-a", [second.job.id], late + LEASE)  # renewed after B looked

    def rescuer(seen_job: Job):  # type: ignore[no-untyped-def]
        def build(job: Job):  # type: ignore[no-untyped-def]
            if job.state is not JobState.RUNNING or job.attempt != seen_job.attempt:
                return None
            return rescue_expired(job, JobError("lost", "INTERRUPTED", True, "only", job.attempt, True, late), late)
        return build

    for job in seen.values():
        (result,) = await b.write([UpdateJob(job.id, rescuer(job), lease_expired_before=late)])
        assert result[1] is None, f"rescue rewrote {job.id}"
    assert (await a.get_job(first.job.id)).state is JobState.SUCCEEDED
    assert (await a.get_job(second.job.id)).state is JobState.RUNNING


async def test_start_up_releases_only_delivery_leases_that_ran_out(pg_url: str) -> None:
    store = PostgresJobStore(pg_url)
    await store.open()
    try:
        for _ in range(2):
            hook = Webhook("https://h.example.com/x", (EventType.SUCCEEDED,))
            await insert(store, replace(nj(phases=("only",)), webhook=hook))
            running = await claim_one(store)
            await store.apply_changes([finish_phase(running, 0, b"", T0 + 1)])
        first, second = (await store.take_deliveries(T0 + 2, 10, lease_until=T0 + 60))[:2]
        assert first and second
        assert await store.release_delivery_leases(T0 + 30) == 0, "a live lease is another replica's"
        assert await store.release_delivery_leases(T0 + 61) >= 2
    finally:
        await store.close()


async def test_a_global_queue_limit_holds_across_replicas(pair: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, b = pair
    await insert(a, *[nj(queue="limited", phases=("only",)) for _ in range(20)])

    async def grab(store: PostgresJobStore, owner: str) -> int:
        params = ClaimParams(now=T0, limit=10, owner=owner, lease_expires=T0 + LEASE, queue_room={"limited": 3},
                             global_limits={"limited": 3})
        _, claimed = await store.claim_jobs(params)
        return len(claimed)

    taken = await asyncio.gather(*[grab(a if n % 2 else b, f"w{n}") for n in range(6)])
    assert sum(taken) == 3, taken
    local = ClaimParams(now=T0, limit=10, owner="w", lease_expires=T0 + LEASE, queue_room={"limited": 3})
    _, claimed = await b.claim_jobs(local)
    assert len(claimed) == 3, "without global_limits the room is this process's own"


async def test_two_replicas_cancelling_the_same_jobs_change_each_once(
        pair: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    """Bulk actions on two replicas over overlapping jobs: rows are locked in id order, so the batches
    wait for each other instead of deadlocking, and each job is cancelled once, with one event."""
    a, b = pair
    jobs = await insert(a, *[nj(payload=bytes([n % 256, n // 256])) for n in range(300)])
    ids = [j.id for j in jobs]
    running = await claim_one(a)  # one of them RUNNING: asked to stop once
    build = cancel_builder(JobQuery(), "two replicas", T0 + 1)
    forward = [a.update_jobs(ids[start:start + 100], build) for start in range(0, 300, 100)]
    backward = [b.update_jobs(list(reversed(ids))[start:start + 100], build) for start in range(0, 300, 100)]
    batches = await asyncio.gather(*[item for pairing in zip(forward, backward, strict=True) for item in pairing])
    changed = [r[0].id for batch in batches for r in batch if isinstance(r, tuple)]
    assert sorted(changed) == sorted(ids), "every job changed exactly once"
    skips = [r.why for batch in batches for r in batch if isinstance(r, Skipped)]
    assert len(skips) == 300
    assert set(skips) == {SkipReason.ALREADY_CANCELLED, SkipReason.CANCEL_ALREADY_REQUESTED}
    for job in [*jobs[::50], running]:
        events = [t for _, t, _ in await stored_events(a, job.id)]
        final = EventType.CANCEL_REQUESTED if job.id == running.id else EventType.CANCELLED
        assert events.count(final) == 1, events
        await assert_gapless(a, job)


# ---------------------------------------------------------------------- queue controls across replicas


async def _set_queue(store: PostgresJobStore, name: str, **settings: Any) -> None:
    change = QueueChange(**settings)
    await store.write([ChangeQueue(name, lambda q: apply_change(q, change, T0), T0)])


async def test_a_key_limit_holds_across_two_replicas_claiming_and_finishing_at_once(
        pair: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, b = pair
    await _set_queue(a, "tenants", key_limit=1)
    keys = [f"tenant-{n}" for n in range(5)]
    jobs = await insert(a, *[replace(nj(queue="tenants", phases=("only",)), concurrency_key=keys[n % 5])
                             for n in range(100)])
    done: dict[str, list[str]] = {"a": [], "b": []}
    racing = True
    seen_over: list[tuple[str, int]] = []

    async def work(name: str, store: PostgresJobStore) -> None:
        idle = 0
        while idle < 3:  # the other replica may hold every key for a moment: look again
            _, claimed = await claim(store, T0 + 1, limit=3, owner=name)
            idle = 0 if claimed else idle + 1
            for item in claimed:
                (finished,) = await store.apply_changes([finish_phase(item.job, 0, b"", T0 + 2)])
                assert finished is not None
                done[name].append(item.job.id)

    async def observe() -> None:
        conn = await asyncpg.connect(a.url)
        try:
            while racing:
                over = await conn.fetch("SELECT concurrency_key, count(*) FROM jobs WHERE state = 'RUNNING' "
                                        "GROUP BY concurrency_key HAVING count(*) > 1")
                seen_over.extend((row[0], row[1]) for row in over)
        finally:
            await conn.close()

    observer = asyncio.get_running_loop().create_task(observe())
    await asyncio.gather(work("a", a), work("b", b))
    racing = False
    await observer
    assert seen_over == [], "two jobs of one key ran at once"
    assert sorted(done["a"] + done["b"]) == sorted(j.id for j in jobs), "every job ran exactly once"
    assert done["a"] and done["b"], "both replicas got work"


async def test_a_concurrency_limit_and_a_rate_limit_hold_across_two_replicas_claiming_at_once(
        pair: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, b = pair
    await _set_queue(a, "capped", concurrency=3)
    await _set_queue(a, "paced", rate=10.0, burst=5)
    await insert(a, *[nj(queue="capped") for _ in range(20)], *[nj(queue="paced") for _ in range(40)])

    async def both(now: float) -> list[Job]:
        results = await asyncio.gather(*[claim(store, now, limit=10, owner=name)
                                         for name, store in (("a", a), ("b", b)) for _ in range(3)])
        return [c.job for _, claimed in results for c in claimed]

    first = await both(T0 + 1)
    assert sum(j.queue == "capped" for j in first) == 3, "the concurrency limit counts both replicas' jobs"
    assert sum(j.queue == "paced" for j in first) == 5, "one bucket: burst jobs in all"
    second = await both(T0 + 2)  # one second: 10 more tokens (the bucket holds at most 5)
    assert sum(j.queue == "paced" for j in second) == 5
    assert sum(j.queue == "capped" for j in second) == 0
