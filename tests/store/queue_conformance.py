"""The queue controls every JobStore must enforce in its claim: paused queues, stored concurrency
limits, rate limits (token buckets), concurrency keys, and the queue defaults applied at insert.
Mixed into each store's test class beside `StoreConformance`, with the same fixtures."""

from __future__ import annotations

from dataclasses import replace

import pytest
from jobwire_server.domain.queues import QueueChange, QueueSettings, apply_change
from jobwire_server.domain.transitions import finish_phase
from jobwire_server.store.base import ChangeQueue, ClaimJobs, ClaimParams, Committed, RemoteRoom

from tests.store.conformance import LEASE, OWNER, T0, Store, claim, insert, nj

REST = 60.0  # every test starts its bucket this long after T0


async def set_queue(store: Store, name: str, now: float = T0, **settings: object) -> QueueSettings:
    change = QueueChange(**settings)  # type: ignore[arg-type]
    (result,) = await store.write([_change_op(name, change, now)])
    assert isinstance(result, QueueSettings), result
    return result


def _change_op(name: str, change: QueueChange, now: float) -> ChangeQueue:
    return ChangeQueue(name, lambda q: apply_change(q, change, now), now)


def ids(claimed: list[Committed]) -> list[str]:
    return [c.job.id for c in claimed]


class QueueConformance:
    async def test_settings_round_trip_and_a_queue_without_a_row_has_none(self, store: Store) -> None:
        assert await store.queue_settings("media") is None
        written = await set_queue(store, "media", paused=True, concurrency=3, rate=2.5, burst=4, key_limit=2,
                                  default_priority=8, default_max_attempts=9)
        stored = await store.queue_settings("media")
        assert stored == written
        assert (stored.paused, stored.concurrency, stored.rate, stored.burst, stored.key_limit) == (True, 3, 2.5, 4, 2)
        assert (stored.default_priority, stored.default_max_attempts, stored.tokens) == (8, 9, 4.0)
        await set_queue(store, "alpha", now=T0 + 1, paused=False)
        assert [q.name for q in await store.list_queue_settings()] == ["alpha", "media"]
        cleared = await set_queue(store, "media", now=T0 + 2, paused=False, rate=0)
        assert (cleared.paused, cleared.rate, cleared.burst, cleared.concurrency) == (False, 0.0, 0, 3)
        assert cleared.create_time == pytest.approx(T0) and cleared.update_time == pytest.approx(T0 + 2)

    async def test_a_paused_queue_keeps_its_jobs_queued_and_others_run(self, store: Store) -> None:
        await set_queue(store, "media", paused=True)
        held = await insert(store, nj(queue="media", priority=9), nj(queue="media"))
        (free,) = await insert(store, nj(queue="other", priority=1))
        _, claimed = await claim(store, T0 + 1)
        assert ids(claimed) == [free.id]
        assert {(await store.get_job(j.id)).state.value for j in held} == {"QUEUED"}
        await set_queue(store, "media", now=T0 + 2, paused=False)
        _, claimed = await claim(store, T0 + 3)
        assert ids(claimed) == [held[0].id, held[1].id]

    async def test_a_stored_concurrency_limit_counts_every_running_job_of_the_queue(self, store: Store) -> None:
        await set_queue(store, "media", concurrency=2)
        jobs = await insert(store, *[nj(queue="media") for _ in range(5)])
        _, first = await claim(store, T0 + 1, owner="replica-a")
        _, second = await claim(store, T0 + 2, owner="replica-b")
        assert ids(first) == [j.id for j in jobs[:2]] and second == []
        assert await store.running_counts("media", "") == (2, 0)
        job = first[0].job
        for index in range(len(job.phases)):
            (done,) = await store.apply_changes([finish_phase(job, index, b"", T0 + 3)])
            job = done.job
        _, third = await claim(store, T0 + 4, owner="replica-b")
        assert ids(third) == [jobs[2].id]

    async def test_a_rate_limit_starts_at_most_burst_then_one_per_token(self, store: Store) -> None:
        start = T0 + REST
        await set_queue(store, "media", rate=2.0, burst=3)
        jobs = await insert(store, *[nj(queue="media") for _ in range(10)])
        result = (await store.write([_claim_op(start)]))[0]
        assert ids(result.claimed) == [j.id for j in jobs[:3]], "a full bucket: burst jobs at once"
        assert result.next_token == pytest.approx(start + 0.5), "the next token is due in 1/rate s"
        early = (await store.write([_claim_op(start + 0.25)]))[0]
        assert early.claimed == [] and early.next_token == pytest.approx(start + 0.5)
        due = (await store.write([_claim_op(start + 0.5)]))[0]
        assert ids(due.claimed) == [jobs[3].id]
        later = (await store.write([_claim_op(start + 1.75)]))[0]  # 2.5 tokens accrued: two start
        assert ids(later.claimed) == [j.id for j in jobs[4:6]]
        assert later.next_token == pytest.approx(start + 2.0)

    async def test_a_rate_limited_queue_with_nothing_waiting_sets_no_timer(self, store: Store) -> None:
        await set_queue(store, "media", rate=1.0, burst=1)
        await insert(store, nj(queue="media"))
        result = (await store.write([_claim_op(T0 + REST)]))[0]
        assert len(result.claimed) == 1 and result.next_token is None

    async def test_a_key_limit_passes_over_a_saturated_key_to_the_jobs_behind_it(self, store: Store) -> None:
        await set_queue(store, "media", key_limit=1)
        # 150 jobs of key "a" ahead (higher priority) of one job of key "b" and one without a key:
        # more than a claim's first page, so the claim must read past them.
        many = [replace(nj(queue="media", priority=9), concurrency_key="a") for _ in range(150)]
        await insert(store, *many)
        (b_job, plain) = await insert(store, replace(nj(queue="media", priority=2), concurrency_key="b"),
                                      nj(queue="media", priority=1))
        _, claimed = await claim(store, T0 + 1, limit=10)
        assert [c.job.concurrency_key for c in claimed] == ["a", "b", ""]
        assert ids(claimed)[1:] == [b_job.id, plain.id]
        _, again = await claim(store, T0 + 2, limit=10)
        assert again == [], "key a already has its one running job"
        assert await store.running_counts("media", "a") == (3, 1)

    async def test_a_key_limit_of_two_starts_two_of_a_key_across_claims(self, store: Store) -> None:
        await set_queue(store, "media", key_limit=2)
        await insert(store, *[replace(nj(queue="media"), concurrency_key="k") for _ in range(5)])
        _, first = await claim(store, T0 + 1, limit=1)
        _, second = await claim(store, T0 + 2, limit=5)
        assert len(first) == 1 and len(second) == 1

    async def test_queue_defaults_replace_unset_priority_and_max_attempts(self, store: Store) -> None:
        await set_queue(store, "media", default_priority=8, default_max_attempts=9)
        unset = replace(nj(queue="media"), priority_unset=True, max_attempts_unset=True)
        given = nj(queue="media", priority=3, max_attempts=2)
        elsewhere = replace(nj(queue="plain", priority=5), priority_unset=True, max_attempts_unset=True)
        a, b, c = await insert(store, unset, given, elsewhere)
        assert (a.priority, a.max_attempts) == (8, 9)
        assert (b.priority, b.max_attempts) == (3, 2)
        assert (c.priority, c.max_attempts) == (5, 3)
        assert (await store.get_job(a.id)).priority == 8


def _claim_op(now: float) -> ClaimJobs:
    return ClaimJobs(ClaimParams(now=now, limit=100, owner=OWNER, lease_expires=now + LEASE))


def _split(now: float, *, limit: int, remote: tuple[RemoteRoom, ...]) -> ClaimJobs:
    kinds = frozenset(k for group in remote for k in group.kinds)
    return ClaimJobs(ClaimParams(now=now, limit=limit, owner=OWNER, lease_expires=now + LEASE, remote_kinds=kinds,
                                 remote=remote))


class RemoteQueueConformance:
    """Claims for remote workers go through the same stored queue controls as this process's claims."""

    async def test_a_paused_queue_hands_nothing_to_remote_workers(self, store: Store) -> None:
        await set_queue(store, "media", paused=True)
        (other,) = (await insert(store, nj("remote.kind", queue="media"), nj("remote.kind")))[1:]
        room = (RemoteRoom(("remote.kind",), (), 10),)
        result = (await store.write([_split(T0 + 1, limit=0, remote=room)]))[0]
        assert ids(result.claimed) == [other.id], "only the job of the queue that is not paused"

    async def test_a_key_limit_counts_local_and_remote_claims_together(self, store: Store) -> None:
        await set_queue(store, "media", key_limit=1)
        local = replace(nj("local.kind", queue="media", priority=9), concurrency_key="tenant")
        remote = [replace(nj("remote.kind", queue="media"), concurrency_key=key) for key in ("tenant", "other")]
        await insert(store, local, *remote)
        room = (RemoteRoom(("remote.kind",), (), 10),)
        result = (await store.write([_split(T0 + 1, limit=10, remote=room)]))[0]
        assert sorted((c.job.kind, c.job.concurrency_key) for c in result.claimed) == [
            ("local.kind", "tenant"), ("remote.kind", "other")], "one 'tenant' job runs, wherever it runs"

    async def test_a_rate_limit_is_one_bucket_for_local_and_remote_claims(self, store: Store) -> None:
        start = T0 + REST
        await set_queue(store, "media", rate=1.0, burst=3)
        await insert(store, *[nj("local.kind", queue="media") for _ in range(2)],
                     *[nj("remote.kind", queue="media") for _ in range(2)])
        room = (RemoteRoom(("remote.kind",), (), 10),)
        result = (await store.write([_split(start, limit=10, remote=room)]))[0]
        assert len(result.claimed) == 3, "a burst of 3 in all, not 3 each"
        assert result.next_token == pytest.approx(start + 1.0)
