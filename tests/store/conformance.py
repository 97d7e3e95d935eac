"""The `JobStore` conformance suite: what every storage backend must do, whatever its SQL.

A backend's test module subclasses :class:`StoreConformance` (its name does not start with
``Test``, so it is only collected through a subclass) and provides three fixtures:

``store``
    a fresh, opened store on an empty database; closed after the test.
``reopen``
    a callable returning a new, *unopened* store on the same database as ``store``.
``newer_schema_store``
    an unopened store on a database whose schema version is newer than this code knows.

Times are explicit (the store never reads a clock), so every test is deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import pytest
from jobwire_server.domain.actions import plan_cancel, plan_retry
from jobwire_server.domain.bulk import Skipped, SkipReason, cancel_builder, retry_builder
from jobwire_server.domain.deliveries import AttemptOutcome, AttemptRecord, DeliveryState, Verdict
from jobwire_server.domain.errors import InvalidTransition, JobNotFound, RequestIdReused, SchemaTooNew
from jobwire_server.domain.models import Job, JobError, NewJob, PendingEvent, Webhook
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.states import EventType, JobState, PhaseState
from jobwire_server.domain.transitions import (
    JobChange,
    fail,
    finish_phase,
    interrupt_by_shutdown,
    report_progress,
    retry_after_failure,
)
from jobwire_server.store.base import (
    ApplyChange,
    ClaimJobs,
    ClaimParams,
    Committed,
    InsertJobs,
    JobStore,
    RenewLeases,
    UpdateJob,
)

T0 = 1_900_000_000.0
REQUEST_TTL = 86_400.0
LEASE = 30.0
OWNER = "worker-a"

Store = Any  # a JobStore implementation (the protocol is structural)


def nj(kind: str = "conf.kind", *, queue: str = "default", priority: int = 5, run_at: float = 0.0,
       phases: Sequence[str] = ("one", "two"), max_attempts: int = 3, payload: bytes = b"payload",
       dedupe_key: str = "", request_id: str = "", fingerprint: str = "", labels: dict[str, str] | None = None,
       timeout: float = 0.0) -> NewJob:
    return NewJob(queue=queue, kind=kind, payload=payload, priority=priority, run_at=run_at,
                  max_attempts=max_attempts, timeout=timeout, phase_names=tuple(phases), dedupe_key=dedupe_key,
                  request_id=request_id, fingerprint=fingerprint or f"fp-{kind}-{payload.hex()}",
                  labels=MappingProxyType(labels or {}))


async def insert(store: Store, *jobs: NewJob, now: float = T0) -> list[Job]:
    return [r.job for r in await store.insert_jobs(list(jobs), now, REQUEST_TTL)]


async def claim(store: Store, now: float = T0, limit: int = 100, room: dict[str, int] | None = None,
                owner: str = OWNER) -> tuple[list[Committed], list[Committed]]:
    promoted, claimed = await store.claim_jobs(ClaimParams(now=now, limit=limit, owner=owner,
                                                           lease_expires=now + LEASE, queue_room=room or {}))
    return list(promoted), list(claimed)


@dataclass
class CycleResult:
    """What one engine transaction committed: the changes' results, then what its claim did."""

    results: list[Committed | None]
    promoted: list[Committed]
    claimed: list[Committed]
    next_due: float | None


async def commit_cycle(store: Store, changes: Sequence[JobChange], claim: ClaimParams | None) -> CycleResult:
    """The engine's transaction shape: guarded changes, then a claim for the slots they free."""
    ops: list[Any] = [ApplyChange(c) for c in changes]
    if claim is not None:
        ops.append(ClaimJobs(claim))
    results = await store.write(ops)
    if claim is None:
        return CycleResult(results, [], [], None)
    claimed = results.pop()
    return CycleResult(results, claimed.promoted, claimed.claimed, claimed.next_due)


async def claim_one(store: Store, now: float = T0) -> Job:
    _, claimed = await claim(store, now, limit=1)
    assert len(claimed) == 1, claimed
    return claimed[0].job


async def all_jobs(store: Store) -> list[Job]:
    jobs, _ = await store.list_jobs(JobQuery(page_size=1000))
    return list(jobs)


async def stored_events(store: Store, job_id: str) -> list[tuple[int, EventType, str]]:
    return [(e.sequence, e.type, e.phase) for e in await store.events_after(job_id, 0, 10_000)]


def error(job: Job, kind: str = "RuntimeError", now: float = T0) -> JobError:
    phase = next((p.name for p in job.phases if p.state is PhaseState.RUNNING), "")
    return JobError("boom", kind, True, phase, job.attempt, False, now)


class StoreConformance:
    """Behaviour every JobStore must have. Subclass it with the three fixtures described above."""

    # ------------------------------------------------------------------ insert and read

    async def test_insert_then_get_round_trips_every_field(self, store: Store) -> None:
        new = nj(payload=b"\x00\xffbinary", priority=7, max_attempts=4, timeout=12.5, dedupe_key="dk",
                 labels={"team": "a", "env": "test"})
        (result,) = await store.insert_jobs([new], T0, REQUEST_TTL)
        assert result.created and not result.deduplicated
        assert [(e.sequence, e.type) for e in result.events] == [(1, EventType.ENQUEUED)]
        job = await store.get_job(result.job.id)
        assert job == result.job
        assert (job.queue, job.kind, job.payload, job.priority) == ("default", "conf.kind", b"\x00\xffbinary", 7)
        assert job.state is JobState.QUEUED and job.attempt == 0
        assert (job.max_attempts, job.timeout, job.dedupe_key) == (4, 12.5, "dk")
        assert dict(job.labels) == {"team": "a", "env": "test"}
        assert [(p.name, p.state, p.result) for p in job.phases] == [
            ("one", PhaseState.PENDING, b""), ("two", PhaseState.PENDING, b"")]
        assert job.create_time == job.update_time == job.run_at == T0
        assert job.last_sequence == 1 and job.error is None and job.error_history == ()
        assert await stored_events(store, job.id) == [(1, EventType.ENQUEUED, "")]

    async def test_run_at_in_the_future_is_scheduled_and_in_the_past_is_now(self, store: Store) -> None:
        later, earlier = await insert(store, nj(run_at=T0 + 60), nj(run_at=T0 - 60))
        assert later.state is JobState.SCHEDULED and later.run_at == T0 + 60
        assert earlier.state is JobState.QUEUED and earlier.run_at == T0
        assert await store.next_wakeup() == T0 + 60

    async def test_get_unknown_job_is_not_found(self, store: Store) -> None:
        with pytest.raises(JobNotFound):
            await store.get_job("01890000-0000-7000-8000-000000000000")
        with pytest.raises(JobNotFound):
            await store.events_after("01890000-0000-7000-8000-000000000000", 0, 10)

    async def test_ids_are_unique_and_increase_in_insert_order(self, store: Store) -> None:
        jobs = await insert(store, *[nj(payload=bytes([i])) for i in range(20)])
        ids = [j.id for j in jobs]
        assert ids == sorted(ids) and len(set(ids)) == 20

    async def test_request_id_returns_the_job_the_first_request_created(self, store: Store) -> None:
        (first,) = await insert(store, nj(request_id="r-1", fingerprint="same"))
        (again,) = await store.insert_jobs([nj(request_id="r-1", fingerprint="same")], T0 + 5, REQUEST_TTL)
        assert again.job.id == first.id and not again.created and not again.deduplicated
        assert again.events == ()
        assert len(await all_jobs(store)) == 1

    async def test_reused_request_id_with_another_request_fails_the_whole_batch(self, store: Store) -> None:
        await insert(store, nj(request_id="r-1", fingerprint="one"))
        with pytest.raises(RequestIdReused):
            await store.insert_jobs([nj(payload=b"fresh"), nj(request_id="r-1", fingerprint="two")], T0 + 1,
                                    REQUEST_TTL)
        assert len(await all_jobs(store)) == 1, "nothing of the refused batch is written"

    async def test_request_id_is_forgotten_after_its_ttl(self, store: Store) -> None:
        (first,) = await insert(store, nj(request_id="r-1", fingerprint="one"))
        (later,) = await store.insert_jobs([nj(request_id="r-1", fingerprint="two")], T0 + REQUEST_TTL + 1,
                                           REQUEST_TTL)
        assert later.created and later.job.id != first.id

    async def test_dedupe_key_folds_into_an_active_job_of_the_same_queue(self, store: Store) -> None:
        (first,) = await insert(store, nj(dedupe_key="k", run_at=T0 + 100))
        folded, other_queue = await store.insert_jobs(
            [nj(dedupe_key="k", payload=b"other"), nj(dedupe_key="k", queue="elsewhere")], T0 + 1, REQUEST_TTL)
        assert folded.deduplicated and not folded.created and folded.job.id == first.id
        assert folded.job.payload == b"payload", "the active job is returned unchanged"
        assert other_queue.created and other_queue.job.id != first.id
        # RUNNING and RETRYING are active too.
        (queued,) = await insert(store, nj(dedupe_key="r", queue="q9"), now=T0 + 2)
        _, claimed = await claim(store, T0 + 3, room={"default": 0, "elsewhere": 0})
        assert [c.job.id for c in claimed] == [queued.id]
        (while_running,) = await store.insert_jobs([nj(dedupe_key="r", queue="q9")], T0 + 4, REQUEST_TTL)
        assert while_running.deduplicated and while_running.job.id == queued.id
        running = claimed[0].job
        await store.apply_changes([retry_after_failure(running, error(running), T0 + 60, T0 + 5)])
        (while_retrying,) = await store.insert_jobs([nj(dedupe_key="r", queue="q9")], T0 + 6, REQUEST_TTL)
        assert while_retrying.deduplicated and while_retrying.job.id == queued.id
        assert while_retrying.job.state is JobState.RETRYING

    async def test_dedupe_key_folds_within_one_batch(self, store: Store) -> None:
        a, b = await store.insert_jobs([nj(dedupe_key="k"), nj(dedupe_key="k", payload=b"x")], T0, REQUEST_TTL)
        assert a.created and b.deduplicated and b.job.id == a.job.id
        assert len(await all_jobs(store)) == 1

    async def test_dedupe_key_does_not_fold_into_a_finished_job(self, store: Store) -> None:
        (first,) = await insert(store, nj(dedupe_key="k"))
        await store.update_job(first.id, lambda j: plan_cancel(j, "no", T0 + 1))
        (again,) = await store.insert_jobs([nj(dedupe_key="k")], T0 + 2, REQUEST_TTL)
        assert again.created and not again.deduplicated and again.job.id != first.id

    async def test_requeue_onto_a_dedupe_key_another_active_job_holds_is_refused(self, store: Store) -> None:
        (old,) = await insert(store, nj(dedupe_key="k", payload=b"old"))
        await store.update_job(old.id, lambda j: plan_cancel(j, "bye", T0 + 1))
        (new,) = await insert(store, nj(dedupe_key="k", payload=b"new"), now=T0 + 2)
        assert new.id != old.id
        before = await store.get_job(old.id)
        with pytest.raises(InvalidTransition):
            await store.update_job(old.id, lambda j: plan_retry(j, True, T0 + 3))
        assert await store.get_job(old.id) == before, "nothing written"
        assert (await store.get_job(new.id)).state is JobState.QUEUED
        (again,) = await store.insert_jobs([nj(dedupe_key="k")], T0 + 4, REQUEST_TTL)
        assert again.deduplicated and again.job.id == new.id, "the store still works after the refusal"

    async def test_list_pages_newest_first_and_the_cursor_is_stable_under_inserts(self, store: Store) -> None:
        jobs = await insert(store, *[nj(payload=bytes([i])) for i in range(7)])
        newest_first = [j.id for j in reversed(jobs)]
        page, after = await store.list_jobs(JobQuery(page_size=3))
        assert [j.id for j in page] == newest_first[:3] and after == newest_first[2]
        await insert(store, nj(payload=b"late-1"), nj(payload=b"late-2"), now=T0 + 10)
        seen = [j.id for j in page]
        while after is not None:
            page, after = await store.list_jobs(JobQuery(page_size=3, after_id=after))
            seen += [j.id for j in page]
        assert seen == newest_first, "no job skipped or repeated, and none inserted later shows up"
        everything, cursor = await store.list_jobs(JobQuery(page_size=100))
        assert len(everything) == 9 and cursor is None
        exact, cursor = await store.list_jobs(JobQuery(page_size=9))
        assert len(exact) == 9 and cursor is None, "no cursor when the page holds the last job"

    async def test_list_filters(self, store: Store) -> None:
        a, b, c = await insert(store, nj("k.a", queue="q1", labels={"env": "prod"}),
                               nj("k.b", queue="q2", labels={"env": "dev", "team": "x"}),
                               nj("k.a", queue="q2", run_at=T0 + 50))
        (d,) = await insert(store, nj("k.a", queue="q1"), now=T0 + 100)

        async def ids(**query: Any) -> set[str]:
            page, _ = await store.list_jobs(JobQuery(**query))
            return {j.id for j in page}

        assert await ids(queue="q1") == {a.id, d.id}
        assert await ids(kind="k.a") == {a.id, c.id, d.id}
        assert await ids(queue="q2", kind="k.a") == {c.id}
        assert await ids(states=frozenset({JobState.SCHEDULED})) == {c.id}
        assert await ids(labels=MappingProxyType({"env": "dev"})) == {b.id}
        assert await ids(labels=MappingProxyType({"env": "dev", "team": "y"})) == set()
        assert await ids(created_after=T0 + 100) == {d.id}
        assert await ids(created_before=T0 + 100) == {a.id, b.id, c.id}

    async def test_list_filters_by_label_keys_and_any_of_label_values(self, store: Store) -> None:
        a, b, c, d = await insert(store, nj(labels={"env": "prod", "team": "x"}), nj(labels={"env": "staging"}),
                                  nj(labels={"env": "dev", "customer": "c1"}), nj())

        async def ids(**query: Any) -> list[str]:
            listed = await store.list_job_ids(JobQuery(**query))
            page, _ = await store.list_jobs(JobQuery(**query))
            assert [j.id for j in page] == listed, "ListJobs and the id listing agree"
            assert await store.count_jobs(JobQuery(**query)) == len(listed)
            return listed

        def values(**keys: set[str]) -> MappingProxyType[str, frozenset[str]]:
            return MappingProxyType({key: frozenset(v) for key, v in keys.items()})

        assert await ids(label_keys=frozenset({"team"})) == [a.id]
        assert await ids(label_keys=frozenset({"env"})) == [c.id, b.id, a.id], "newest first"
        assert await ids(label_keys=frozenset({"env", "customer"})) == [c.id]
        assert await ids(label_keys=frozenset({"nope"})) == []
        assert await ids(label_in=values(env={"prod", "staging"})) == [b.id, a.id]
        assert await ids(label_in=values(env={"prod", "staging"}, team={"x", "y"})) == [a.id]
        assert await ids(label_in=values(env={"prod", "dev"}), label_keys=frozenset({"customer"})) == [c.id]
        assert await ids(label_in=values(env={"dev"}), labels=MappingProxyType({"customer": "c2"})) == []
        assert await ids(labels=MappingProxyType({"env": "staging"}), label_keys=frozenset({"env"})) == [b.id]
        assert await ids(label_in=values(env={"prod", "staging", "dev"}), queue="other") == []
        assert d.id in await ids(), "no filter lists the unlabelled job too"

    async def test_label_filters_page_newest_first_without_gaps(self, store: Store) -> None:
        jobs = await insert(store, *[nj(payload=bytes([i]), labels={"env": ("prod", "dev", "qa")[i % 3]})
                                     for i in range(10)])
        wanted = [j.id for j in reversed(jobs) if j.labels["env"] != "qa"]
        for query in (JobQuery(label_in=MappingProxyType({"env": frozenset({"prod", "dev"})}), page_size=3),
                      JobQuery(label_keys=frozenset({"env"}), states=frozenset({JobState.QUEUED}), page_size=4)):
            seen: list[str] = []
            after: str | None = None
            while True:
                page, after = await store.list_jobs(replace(query, after_id=after))
                seen += [j.id for j in page]
                if after is None:
                    break
            assert seen == (wanted if query.label_in else [j.id for j in reversed(jobs)])

    async def test_list_filters_by_finish_time(self, store: Store) -> None:
        a, b, c = await insert(store, nj(), nj(), nj())
        await store.update_job(a.id, lambda j: plan_cancel(j, "", T0 + 10))
        await store.update_job(b.id, lambda j: plan_cancel(j, "", T0 + 20))

        async def ids(**query: Any) -> list[str]:
            listed = await store.list_job_ids(JobQuery(**query))
            assert await store.count_jobs(JobQuery(**query)) == len(listed)
            return listed

        assert await ids(finished_after=T0 + 10) == [b.id, a.id], "inclusive, and an unfinished job has no time"
        assert await ids(finished_after=T0 + 11) == [b.id]
        assert await ids(finished_before=T0 + 20) == [a.id], "exclusive"
        assert await ids(finished_after=T0 + 10, finished_before=T0 + 20) == [a.id]
        assert await ids(finished_after=T0, states=frozenset({JobState.QUEUED})) == [], "not finished: no match"
        assert await ids(finished_after=T0, states=frozenset({JobState.CANCELLED, JobState.QUEUED})) == [b.id, a.id]
        assert await ids(states=frozenset({JobState.QUEUED})) == [c.id]
        (stale,) = await store.mark_stale({JobState.CANCELLED: T0 + 15}, T0 + 30, 10)
        assert stale.job.id == a.id
        assert await ids(finished_before=T0 + 15) == [a.id], "a STALE job keeps its finish time"
        assert await ids(finished_before=T0 + 15, states=frozenset({JobState.STALE})) == [a.id]

    async def test_created_after_is_exact_whatever_order_the_ids_were_made_in(self, store: Store) -> None:
        # Ids never go back in time, even when the clock does: a job created "earlier" may get a later id.
        (late,) = await insert(store, nj(), now=T0 + 100)
        (early,) = await insert(store, nj(), now=T0 + 50)
        assert early.id > late.id
        assert await store.list_job_ids(JobQuery(created_after=T0 + 50)) == [early.id, late.id]
        assert await store.list_job_ids(JobQuery(created_after=T0 + 51)) == [late.id]
        assert await store.list_job_ids(JobQuery(created_before=T0 + 100)) == [early.id]
        assert await store.count_jobs(JobQuery(created_after=T0 + 51)) == 1

    async def test_list_job_ids_pages_with_the_cursor(self, store: Store) -> None:
        jobs = await insert(store, *[nj(payload=bytes([i])) for i in range(5)])
        newest_first = [j.id for j in reversed(jobs)]
        assert await store.list_job_ids(JobQuery(page_size=2)) == newest_first[:2]
        assert await store.list_job_ids(JobQuery(page_size=2, after_id=newest_first[1])) == newest_first[2:4]
        assert await store.count_jobs(JobQuery(page_size=1, after_id=newest_first[1])) == 5, "the cursor is no filter"

    # ------------------------------------------------------------------ claim and promote

    async def test_claim_order_is_priority_then_run_at_then_id(self, store: Store) -> None:
        # Inserted with falling `now`, so later ids have earlier run_at: order must follow run_at, not id.
        (late,) = await insert(store, nj(payload=b"late"), now=T0 + 3)
        (mid,) = await insert(store, nj(payload=b"mid"), now=T0 + 2)
        twin_a, twin_b = await insert(store, nj(payload=b"t1"), nj(payload=b"t2"), now=T0 + 1)
        (urgent,) = await insert(store, nj(payload=b"urgent", priority=10), now=T0 + 4)
        (low,) = await insert(store, nj(payload=b"low", priority=1), now=T0)
        assert twin_a.id < twin_b.id < urgent.id and late.id < mid.id < twin_a.id
        order = [(await claim_one(store, T0 + 10)).id for _ in range(6)]
        assert order == [urgent.id, twin_a.id, twin_b.id, mid.id, late.id, low.id]
        _, nothing = await claim(store, T0 + 10)
        assert nothing == []

    async def test_claim_starts_an_attempt_at_the_first_phase_with_numbered_events(self, store: Store) -> None:
        (job,) = await insert(store, nj())
        _, (committed,) = await claim(store, T0 + 1)
        got = committed.job
        assert got.state is JobState.RUNNING and got.attempt == 1 and got.start_time == T0 + 1
        assert [p.state for p in got.phases] == [PhaseState.RUNNING, PhaseState.PENDING]
        assert [(e.sequence, e.type, e.phase) for e in committed.events] == [
            (2, EventType.STARTED, ""), (3, EventType.PHASE_STARTED, "one")]
        assert got.last_sequence == 3
        stored = await store.get_job(job.id)
        assert stored.state is JobState.RUNNING and stored.attempt == 1 and stored.last_sequence == 3
        assert stored.phases[0].state is PhaseState.RUNNING and stored.phases[0].start_time == T0 + 1
        assert await stored_events(store, job.id) == [
            (1, EventType.ENQUEUED, ""), (2, EventType.STARTED, ""), (3, EventType.PHASE_STARTED, "one")]

    async def test_claim_takes_at_most_limit(self, store: Store) -> None:
        jobs = await insert(store, *[nj(payload=bytes([i])) for i in range(5)])
        _, claimed = await claim(store, limit=3)
        assert {c.job.id for c in claimed} == {j.id for j in jobs[:3]}
        _, rest = await claim(store, limit=3)
        assert {c.job.id for c in rest} == {j.id for j in jobs[3:]}

    async def test_claim_honours_queue_room(self, store: Store) -> None:
        media = await insert(store, *[nj(queue="media", payload=bytes([i]), priority=9) for i in range(3)])
        plain = await insert(store, *[nj(payload=bytes([i])) for i in range(2)])
        _, claimed = await claim(store, limit=10, room={"media": 1})
        assert {c.job.id for c in claimed} == {media[0].id, plain[0].id, plain[1].id}
        _, none_left = await claim(store, limit=10, room={"media": 0})
        assert none_left == [], "a queue with no room is not claimed from"
        _, two = await claim(store, limit=10, room={"media": 5, "other": 0})
        assert {c.job.id for c in two} == {media[1].id, media[2].id}

    async def test_limit_zero_claims_nothing_but_still_promotes(self, store: Store) -> None:
        (due,) = await insert(store, nj(run_at=T0 + 5))
        await insert(store, nj())
        promoted, claimed = await claim(store, T0 + 5, limit=0)
        assert claimed == []
        assert [c.job.id for c in promoted] == [due.id]
        assert (await store.get_job(due.id)).state is JobState.QUEUED

    async def test_due_jobs_are_promoted_with_an_event_and_can_be_claimed_at_once(self, store: Store) -> None:
        (job,) = await insert(store, nj(run_at=T0 + 10))
        promoted, claimed = await claim(store, T0 + 9.5)
        assert promoted == [] and claimed == []
        assert (await store.get_job(job.id)).state is JobState.SCHEDULED
        assert await store.next_wakeup() == T0 + 10
        promoted, claimed = await claim(store, T0 + 10)
        assert [c.job.id for c in promoted] == [job.id]
        assert [(e.sequence, e.type) for e in promoted[0].events] == [(2, EventType.QUEUED)]
        assert promoted[0].job.state is JobState.QUEUED
        assert [c.job.id for c in claimed] == [job.id], "promoted and claimed in one call"
        assert [e.sequence for e in claimed[0].events] == [3, 4]
        assert await store.next_wakeup() is None

    async def test_retrying_job_is_promoted_when_due(self, store: Store) -> None:
        await insert(store, nj())
        running = await claim_one(store)
        (committed,) = await store.apply_changes([retry_after_failure(running, error(running), T0 + 20, T0 + 1)])
        assert committed is not None and committed.job.state is JobState.RETRYING
        assert await store.next_wakeup() == T0 + 20
        promoted, _ = await claim(store, T0 + 19, limit=0)
        assert promoted == []
        promoted, claimed = await claim(store, T0 + 20)
        assert [c.job.id for c in promoted] == [running.id]
        assert claimed[0].job.attempt == 2
        assert claimed[0].job.phases[0].state is PhaseState.RUNNING

    # ------------------------------------------------------------------ guarded changes

    async def test_apply_changes_writes_job_phases_and_events_together(self, store: Store) -> None:
        await insert(store, nj())
        running = await claim_one(store)
        (done,) = await store.apply_changes([finish_phase(running, 0, b"r1", T0 + 2)])
        assert done is not None
        assert [(e.sequence, e.type, e.phase) for e in done.events] == [
            (4, EventType.PHASE_SUCCEEDED, "one"), (5, EventType.PHASE_STARTED, "two")]
        assert done.job.last_sequence == 5
        stored = await store.get_job(running.id)
        assert [(p.state, p.result) for p in stored.phases] == [
            (PhaseState.SUCCEEDED, b"r1"), (PhaseState.RUNNING, b"")]
        assert stored.last_sequence == 5
        (last,) = await store.apply_changes([finish_phase(done.job, 1, b"r2", T0 + 3)])
        assert last is not None and last.job.state is JobState.SUCCEEDED
        stored = await store.get_job(running.id)
        assert stored.state is JobState.SUCCEEDED and stored.result == b"r2" and stored.finish_time == T0 + 3
        assert [t for _, t, _ in await stored_events(store, running.id)][-2:] == [
            EventType.PHASE_SUCCEEDED, EventType.SUCCEEDED]

    async def test_a_change_whose_guard_no_longer_holds_writes_nothing(self, store: Store) -> None:
        await insert(store, nj(phases=("only",)))
        running = await claim_one(store)
        (done,) = await store.apply_changes([finish_phase(running, 0, b"first", T0 + 2)])
        assert done is not None and done.job.state is JobState.SUCCEEDED
        before = await store.get_job(running.id)
        events_before = await stored_events(store, running.id)
        (again,) = await store.apply_changes([fail(running, error(running), T0 + 3)])
        assert again is None
        assert await store.get_job(running.id) == before
        assert await stored_events(store, running.id) == events_before

    async def test_a_stale_attempt_is_fenced_out(self, store: Store) -> None:
        await insert(store, nj())
        first = await claim_one(store)
        err = JobError("shutdown", "SHUTDOWN", True, "one", 1, True, T0 + 1)
        (requeued,) = await store.apply_changes([interrupt_by_shutdown(first, err, T0 + 1)])
        assert requeued is not None and requeued.job.state is JobState.QUEUED
        second = await claim_one(store, T0 + 2)
        assert second.attempt == 2 and second.state is JobState.RUNNING
        before = await store.get_job(first.id)
        events_before = await stored_events(store, first.id)
        # The first attempt's worker reports late; the state guard (RUNNING) holds, the fence does not.
        late = [finish_phase(first, 0, b"late", T0 + 3), report_progress(first, 0, 50, "late", T0 + 3)]
        assert await store.apply_changes(late) == [None, None]
        assert await store.get_job(first.id) == before
        assert await stored_events(store, first.id) == events_before
        (current,) = await store.apply_changes([finish_phase(second, 0, b"ok", T0 + 4)])
        assert current is not None and current.job.phases[0].result == b"ok"

    async def test_one_call_applies_many_changes_including_several_of_one_job(self, store: Store) -> None:
        await insert(store, nj(payload=b"a"), nj(payload=b"b"))
        _, claimed = await claim(store)
        a, b = sorted((c.job for c in claimed), key=lambda j: j.id)
        progress = report_progress(a, 0, 40, "forty", T0 + 1)
        finish = finish_phase(progress.job, 0, b"ra", T0 + 2)
        other = report_progress(b, 0, 10, "ten", T0 + 1)
        results = await store.apply_changes([progress, other, finish])
        assert all(r is not None for r in results)
        assert [e.sequence for r in results if r is not None for e in r.events] == [4, 4, 5, 6]
        stored_a = await store.get_job(a.id)
        assert stored_a.last_sequence == 6 and stored_a.phases[0].result == b"ra"
        assert [t for _, t, _ in await stored_events(store, a.id)][3:] == [
            EventType.PROGRESS, EventType.PHASE_SUCCEEDED, EventType.PHASE_STARTED]
        stored_b = await store.get_job(b.id)
        assert stored_b.phases[0].progress.percent == 10 and stored_b.phases[0].progress.message == "ten"

    async def test_a_refused_change_does_not_stop_the_others_in_its_call(self, store: Store) -> None:
        await insert(store, nj(payload=b"a"), nj(payload=b"b"))
        _, claimed = await claim(store)
        a, b = sorted((c.job for c in claimed), key=lambda j: j.id)
        stale_a = replace(a, attempt=a.attempt + 7)  # a change fenced at a wrong attempt
        results = await store.apply_changes([finish_phase(stale_a, 0, b"x", T0 + 1), finish_phase(b, 0, b"y", T0 + 1)])
        assert results[0] is None and results[1] is not None
        assert (await store.get_job(a.id)).phases[0].state is PhaseState.RUNNING
        assert (await store.get_job(b.id)).phases[0].result == b"y"

    async def test_cancel_request_survives_a_worker_change_that_did_not_know_of_it(self, store: Store) -> None:
        await insert(store, nj())
        running = await claim_one(store)
        job, committed = await store.update_job(running.id, lambda j: plan_cancel(j, "please stop", T0 + 1))
        assert committed is not None and job.cancel_requested and job.cancel_reason == "please stop"
        assert [e.type for e in committed.events] == [EventType.CANCEL_REQUESTED]
        # The worker still holds the job as it was before the request.
        (done,) = await store.apply_changes([finish_phase(running, 0, b"r", T0 + 2)])
        assert done is not None
        assert done.job.cancel_requested and done.job.cancel_reason == "please stop"
        stored = await store.get_job(running.id)
        assert stored.cancel_requested and stored.cancel_reason == "please stop"

    async def test_update_job_reads_builds_and_writes_in_one_step(self, store: Store) -> None:
        (job,) = await insert(store, nj(run_at=T0 + 100))
        unchanged, nothing = await store.update_job(job.id, lambda j: None)
        assert nothing is None and unchanged == job
        seen: list[Job] = []

        def build(current: Job) -> Any:
            seen.append(current)
            return plan_cancel(current, "bye", T0 + 1)

        cancelled, committed = await store.update_job(job.id, build)
        assert seen == [job]
        assert committed is not None and cancelled.state is JobState.CANCELLED
        assert [p.state for p in cancelled.phases] == [PhaseState.CANCELLED, PhaseState.CANCELLED]
        assert [(e.sequence, e.type, e.detail) for e in committed.events] == [(2, EventType.CANCELLED, "bye")]
        assert await store.get_job(job.id) == cancelled
        again, none = await store.update_job(job.id, lambda j: plan_cancel(j, "bye", T0 + 2))
        assert none is None and again == cancelled, "cancelling a cancelled job writes nothing"
        with pytest.raises(JobNotFound):
            await store.update_job("01890000-0000-7000-8000-000000000000", lambda j: None)

    async def test_update_job_writes_nothing_when_the_builder_raises(self, store: Store) -> None:
        await insert(store, nj(phases=("only",)))
        running = await claim_one(store)
        await store.apply_changes([finish_phase(running, 0, b"r", T0 + 1)])
        before = await store.get_job(running.id)
        with pytest.raises(InvalidTransition):
            await store.update_job(running.id, lambda j: plan_cancel(j, "late", T0 + 2))
        with pytest.raises(InvalidTransition):
            await store.update_job(running.id, lambda j: plan_retry(j, False, T0 + 2))
        assert await store.get_job(running.id) == before
        retried, committed = await store.update_job(running.id, lambda j: plan_retry(j, True, T0 + 3))
        assert committed is not None and retried.state is JobState.QUEUED
        assert [p.state for p in retried.phases] == [PhaseState.PENDING]

    # ------------------------------------------------------------------ one transaction, many writes

    async def test_update_jobs_changes_each_job_as_update_job_would(self, store: Store) -> None:
        failed, scheduled, running, queued = await insert(store, nj(), nj(run_at=T0 + 100), nj(), nj())
        first = await claim_one(store)
        assert first.id == failed.id
        await store.apply_changes([fail(first, error(first), T0 + 1)])
        assert (await claim_one(store)).id == running.id
        missing = "01890000-0000-7000-8000-000000000000"
        ids = [failed.id, scheduled.id, running.id, missing, queued.id]
        results = await store.update_jobs(ids, cancel_builder(JobQuery(), "tidy up", T0 + 2))
        assert isinstance(results[0], Skipped) and results[0].why is SkipReason.ALREADY_FINISHED
        job, committed = results[1]
        assert job.state is JobState.CANCELLED and [e.type for e in committed.events] == [EventType.CANCELLED]
        assert committed.events[0].detail == "tidy up" and job == await store.get_job(scheduled.id)
        job, committed = results[2]
        assert (job.state, job.cancel_requested) == (JobState.RUNNING, True)
        assert [e.type for e in committed.events] == [EventType.CANCEL_REQUESTED]
        assert isinstance(results[3], JobNotFound)
        job, committed = results[4]
        assert (job.id, job.state) == (queued.id, JobState.CANCELLED)
        assert [p.state for p in job.phases] == [PhaseState.CANCELLED, PhaseState.CANCELLED]
        assert (await stored_events(store, scheduled.id))[-1][1] is EventType.CANCELLED
        again = await store.update_jobs([scheduled.id, running.id], cancel_builder(JobQuery(), "x", T0 + 3))
        assert [r.why for r in again] == [SkipReason.ALREADY_CANCELLED, SkipReason.CANCEL_ALREADY_REQUESTED]
        assert (await store.get_job(queued.id)).last_sequence == job.last_sequence, "a skip writes nothing"

    async def test_update_jobs_rechecks_the_filter_on_each_job_as_stored(self, store: Store) -> None:
        a, b = await insert(store, nj(queue="media"), nj(queue="media"))
        await store.update_job(a.id, lambda j: plan_cancel(j, "meanwhile", T0 + 1))
        query = JobQuery(queue="media", states=frozenset({JobState.QUEUED}))
        results = await store.update_jobs([a.id, b.id], cancel_builder(query, "bulk", T0 + 2))
        assert isinstance(results[0], Skipped) and results[0].why is SkipReason.NO_LONGER_MATCHES
        assert results[1][0].state is JobState.CANCELLED
        assert (await store.get_job(a.id)).cancel_reason == "meanwhile"

    async def test_update_jobs_refuses_only_the_retry_whose_dedupe_key_is_taken(self, store: Store) -> None:
        old, twin, other = await insert(store, nj(dedupe_key="k", payload=b"old"), nj(dedupe_key="t", payload=b"1"),
                                        nj(payload=b"other"))
        await store.update_jobs([old.id, twin.id, other.id], cancel_builder(JobQuery(), "", T0 + 1))
        (new,) = await insert(store, nj(dedupe_key="k", payload=b"new"), now=T0 + 2)
        (twin2,) = await insert(store, nj(dedupe_key="t", payload=b"2"), now=T0 + 2)
        await store.update_job(twin2.id, lambda j: plan_cancel(j, "", T0 + 3))
        results = await store.update_jobs([old.id, twin.id, twin2.id, other.id],
                                          retry_builder(JobQuery(), True, T0 + 4))
        assert isinstance(results[0], InvalidTransition), "another active job holds k"
        assert (await store.get_job(old.id)).state is JobState.CANCELLED
        assert results[1][0].state is JobState.QUEUED, "the first of two with key t takes it"
        assert isinstance(results[2], InvalidTransition)
        assert results[3][0].state is JobState.QUEUED
        assert (await store.get_job(new.id)).state is JobState.QUEUED
        assert [e[1] for e in await stored_events(store, other.id)][-1] is EventType.QUEUED

    async def test_update_jobs_numbers_each_jobs_events_without_gaps_across_batches(self, store: Store) -> None:
        jobs = await insert(store, nj(), nj(run_at=T0 + 100), nj(payload=b"third"))
        ids = [job.id for job in jobs]
        cancelled = await store.update_jobs(ids, cancel_builder(JobQuery(), "first", T0 + 1))
        retried = await store.update_jobs(ids, retry_builder(JobQuery(), True, T0 + 2))
        again = await store.update_jobs(ids, cancel_builder(JobQuery(), "second", T0 + 3))
        for job_id, (_, c1), (job, c2), (last, c3) in zip(ids, cancelled, retried, again, strict=True):
            assert job.state is JobState.QUEUED and not job.cancel_requested and job.cancel_reason == ""
            assert [p.state for p in job.phases] == [PhaseState.PENDING, PhaseState.PENDING]
            assert last == await store.get_job(job_id) and last.cancel_reason == "second"
            events = await stored_events(store, job_id)
            assert [e[0] for e in events] == list(range(1, len(events) + 1)) == list(range(1, last.last_sequence + 1))
            assert [e[1] for e in events] == [EventType.ENQUEUED, EventType.CANCELLED, EventType.QUEUED,
                                              EventType.CANCELLED]
            assert [e.sequence for c in (c1, c2, c3) for e in c.events] == [2, 3, 4], "as committed"

    async def test_update_jobs_writes_the_webhook_deliveries_of_its_events(self, store: Store) -> None:
        hooked = replace(nj(), webhook=Webhook("https://hooks.example.com/x", (EventType.CANCELLED,)))
        a, b = await insert(store, hooked, hooked)
        await store.update_jobs([a.id, b.id], cancel_builder(JobQuery(), "", T0 + 1))
        taken = await store.take_deliveries(T0 + 2, 10, lease_until=T0 + 60)
        assert sorted((d.job_id, d.event_type) for d in taken) == sorted([(a.id, "CANCELLED"), (b.id, "CANCELLED")])

    async def test_write_commits_many_operations_in_order_and_refuses_each_on_its_own(self, store: Store) -> None:
        await insert(store, nj(request_id="r-1", fingerprint="one"))
        missing = "01890000-0000-7000-8000-000000000000"
        results = await store.write([
            InsertJobs([nj(payload=b"a")], T0 + 1, REQUEST_TTL),
            # refused as a whole: its first job must not be written either
            InsertJobs([nj(payload=b"b"), nj(request_id="r-1", fingerprint="two")], T0 + 1, REQUEST_TTL),
            UpdateJob(missing, lambda j: plan_cancel(j, "x", T0 + 1)),
            InsertJobs([nj(payload=b"c")], T0 + 1, REQUEST_TTL),
            ClaimJobs(ClaimParams(now=T0 + 1, limit=10, owner=OWNER, lease_expires=T0 + 1 + LEASE)),
        ])
        assert len(results) == 5
        (a,), refused, not_found, (c,), claimed = results
        assert isinstance(refused, RequestIdReused) and isinstance(not_found, JobNotFound)
        assert a.created and c.created
        payloads = sorted(j.payload for j in await all_jobs(store))
        assert payloads == [b"a", b"c", b"payload"], "nothing of the refused operation is written"
        # The claim in the same transaction sees the jobs inserted before it.
        assert {item.job.id for item in claimed.claimed} >= {a.job.id, c.job.id}
        assert all(item.job.state is JobState.RUNNING for item in claimed.claimed)

    async def test_write_applies_changes_to_one_job_in_their_order(self, store: Store) -> None:
        await insert(store, nj())
        running = await claim_one(store)
        first = report_progress(running, 0, 50, "half", T0 + 1)
        results = await store.write([ApplyChange(first), ApplyChange(finish_phase(first.job, 0, b"r", T0 + 2))])
        assert [r is not None for r in results] == [True, True]
        assert [e.type for r in results for e in r.events] == [
            EventType.PROGRESS, EventType.PHASE_SUCCEEDED, EventType.PHASE_STARTED]
        assert [e.sequence for r in results for e in r.events] == [4, 5, 6]

    async def test_partial_retry_keeps_succeeded_phases(self, store: Store) -> None:
        await insert(store, nj(phases=("a", "b", "c")))
        running = await claim_one(store)
        (after_a,) = await store.apply_changes([finish_phase(running, 0, b"ra", T0 + 1)])
        assert after_a is not None
        (failed,) = await store.apply_changes([fail(after_a.job, error(after_a.job, "PermanentError"), T0 + 2)])
        assert failed is not None and failed.job.state is JobState.FAILED
        retried, _ = await store.update_job(running.id, lambda j: plan_retry(j, False, T0 + 3))
        assert [(p.state, p.result) for p in retried.phases] == [
            (PhaseState.SUCCEEDED, b"ra"), (PhaseState.PENDING, b""), (PhaseState.PENDING, b"")]
        again = await claim_one(store, T0 + 4)
        assert again.attempt == 2 and [p.state for p in again.phases] == [
            PhaseState.SUCCEEDED, PhaseState.RUNNING, PhaseState.PENDING]
        assert again.attempts_left == again.max_attempts - 1, "a retried job gets a fresh attempt budget"

    # ------------------------------------------------------------------ group commit with claim

    async def test_commit_cycle_applies_changes_then_refills_the_freed_slots(self, store: Store) -> None:
        await insert(store, nj(phases=("only",), payload=b"a"))
        running = await claim_one(store)
        (waiting,) = await insert(store, nj(payload=b"next"), now=T0 + 1)
        (due,) = await insert(store, nj(payload=b"due", run_at=T0 + 2), now=T0 + 1)
        (later,) = await insert(store, nj(payload=b"later", run_at=T0 + 50), now=T0 + 1)
        params = ClaimParams(now=T0 + 3, limit=1, owner=OWNER, lease_expires=T0 + 3 + LEASE)
        cycle = await commit_cycle(store, [finish_phase(running, 0, b"r", T0 + 3)], params)
        (done,) = cycle.results
        assert done is not None and done.job.state is JobState.SUCCEEDED
        assert [c.job.id for c in cycle.promoted] == [due.id]
        assert [c.job.id for c in cycle.claimed] == [waiting.id], "claimed in priority, run_at, id order"
        assert cycle.claimed[0].job.state is JobState.RUNNING and cycle.claimed[0].job.attempt == 1
        assert cycle.next_due == later.run_at
        assert (await store.get_job(running.id)).state is JobState.SUCCEEDED
        assert (await store.get_job(waiting.id)).state is JobState.RUNNING
        assert (await store.get_job(due.id)).state is JobState.QUEUED

    async def test_commit_cycle_without_a_claim_only_applies_changes(self, store: Store) -> None:
        await insert(store, nj(phases=("only",)))
        running = await claim_one(store)
        (queued,) = await insert(store, nj(payload=b"q"), now=T0 + 1)
        (due,) = await insert(store, nj(payload=b"d", run_at=T0 + 2), now=T0 + 1)
        cycle = await commit_cycle(store, [finish_phase(running, 0, b"r", T0 + 5)], None)
        assert [r is not None for r in cycle.results] == [True]
        assert (cycle.promoted, cycle.claimed, cycle.next_due) == ([], [], None)
        assert (await store.get_job(queued.id)).state is JobState.QUEUED
        assert (await store.get_job(due.id)).state is JobState.SCHEDULED

    async def test_commit_cycle_with_a_refused_change_still_claims(self, store: Store) -> None:
        await insert(store, nj(phases=("only",)))
        running = await claim_one(store)
        (queued,) = await insert(store, nj(payload=b"q"), now=T0 + 1)
        stale = replace(running, attempt=running.attempt + 3)
        params = ClaimParams(now=T0 + 2, limit=5, owner=OWNER, lease_expires=T0 + 2 + LEASE)
        cycle = await commit_cycle(store, [finish_phase(stale, 0, b"x", T0 + 2)], params)
        assert cycle.results == [None]
        assert [c.job.id for c in cycle.claimed] == [queued.id]
        assert (await store.get_job(running.id)).state is JobState.RUNNING
        empty = await commit_cycle(store, [], params)
        assert (empty.results, empty.promoted, empty.claimed, empty.next_due) == ([], [], [], None)

    # ------------------------------------------------------------------ leases

    async def test_leases_renew_and_expire(self, store: Store) -> None:
        await insert(store, nj(payload=b"a"), nj(payload=b"b"))
        _, claimed = await claim(store, T0)
        a, b = sorted((c.job for c in claimed), key=lambda j: j.id)
        assert await store.next_lease_expiry() == T0 + LEASE
        assert await store.expired_leases(T0 + LEASE, 10) == [], "a lease expires after its time, not at it"
        assert {j.id for j in await store.expired_leases(T0 + LEASE + 1, 10)} == {a.id, b.id}
        assert await store.renew_leases("someone-else", [a.id], T0 + 500) == 0
        assert await store.renew_leases(OWNER, [a.id], T0 + 500) == 1
        assert [j.id for j in await store.expired_leases(T0 + LEASE + 1, 10)] == [b.id]
        assert len(await store.expired_leases(T0 + 1000, 1)) == 1, "limit is honoured"
        assert await store.next_lease_expiry() == T0 + LEASE
        (finished,) = await store.apply_changes([fail(b, error(b, "PermanentError"), T0 + 2)])
        assert finished is not None
        assert [j.id for j in await store.expired_leases(T0 + 1000, 10)] == [a.id], "only RUNNING jobs have leases"
        assert await store.next_lease_expiry() == T0 + 500
        assert await store.renew_leases(OWNER, [b.id], T0 + 900) == 0, "a finished job's lease is not renewed"

    async def test_renewal_reports_cancel_requests_made_elsewhere(self, store: Store) -> None:
        await insert(store, nj(payload=b"a"), nj(payload=b"b"))
        _, claimed = await claim(store, T0)
        a, b = (c.job for c in claimed)
        await store.update_job(a.id, lambda j: plan_cancel(j, "stop it", T0 + 1))
        (renewal,) = await store.write([RenewLeases(OWNER, [a.id, b.id], T0 + 100)])
        assert renewal.renewed == 2
        assert dict(renewal.cancel_requested) == {a.id: "stop it"}

    # ------------------------------------------------------------------ events and stats

    async def test_events_after_returns_stored_events_in_order(self, store: Store) -> None:
        await insert(store, nj())
        running = await claim_one(store)
        (p1,) = await store.apply_changes([report_progress(running, 0, 50, "half", T0 + 1)])
        assert p1 is not None
        (f1,) = await store.apply_changes([finish_phase(p1.job, 0, b"r", T0 + 2)])
        assert f1 is not None
        (f2,) = await store.apply_changes([finish_phase(f1.job, 1, b"r2", T0 + 3)])
        assert f2 is not None
        events = await store.events_after(running.id, 0, 100)
        assert [e.sequence for e in events] == list(range(1, 9))
        assert [e.type for e in events] == [
            EventType.ENQUEUED, EventType.STARTED, EventType.PHASE_STARTED, EventType.PROGRESS,
            EventType.PHASE_SUCCEEDED, EventType.PHASE_STARTED, EventType.PHASE_SUCCEEDED, EventType.SUCCEEDED]
        assert events[3].phase == "one" and events[3].detail == "half" and events[3].time == T0 + 1
        assert all(e.job_id == running.id and e.queue == "default" and e.kind == "conf.kind" for e in events)
        assert [e.sequence for e in await store.events_after(running.id, 5, 100)] == [6, 7, 8]
        assert [e.sequence for e in await store.events_after(running.id, 2, 2)] == [3, 4]
        assert await store.events_after(running.id, 8, 100) == []
        assert f2.job.last_sequence == 8

    async def test_queue_stats_count_states_per_queue(self, store: Store) -> None:
        await insert(store, nj(queue="q1"), nj(queue="q1"), nj(queue="q1", run_at=T0 + 99), now=T0)
        await insert(store, nj(queue="q2"), now=T0 + 10)
        _, claimed = await claim(store, T0 + 20, limit=1)
        assert claimed[0].job.queue == "q1"
        stats = {s.queue: s for s in await store.queue_stats("", T0 + 30)}
        assert set(stats) == {"q1", "q2"}
        assert dict(stats["q1"].counts) == {JobState.QUEUED: 1, JobState.RUNNING: 1, JobState.SCHEDULED: 1}
        assert dict(stats["q2"].counts) == {JobState.QUEUED: 1}
        assert stats["q1"].oldest_queued_age == pytest.approx(30)
        assert stats["q2"].oldest_queued_age == pytest.approx(20)
        (only,) = await store.queue_stats("q2", T0 + 30)
        assert only.queue == "q2" and dict(only.counts) == {JobState.QUEUED: 1}
        (empty,) = await store.queue_stats("nothing-here", T0)
        assert empty.queue == "nothing-here" and not any(empty.counts.values()) and empty.oldest_queued_age == 0

    # ------------------------------------------------------------------ lifecycle

    async def test_data_survives_close_and_reopen(self, store: Store, reopen: Callable[[], Store]) -> None:
        (job,) = await insert(store, nj(labels={"a": "b"}))
        running = await claim_one(store)
        await store.apply_changes([finish_phase(running, 0, b"kept", T0 + 1)])
        expected = await store.get_job(job.id)
        await store.close()
        again: JobStore = reopen()
        await again.open()
        try:
            assert await again.get_job(job.id) == expected
            assert len(await again.events_after(job.id, 0, 100)) == expected.last_sequence
        finally:
            await again.close()
        await store.open()  # the fixture closes it

    async def test_a_schema_newer_than_the_code_is_refused_at_open(self, newer_schema_store: Store) -> None:
        with pytest.raises(SchemaTooNew) as info:
            await newer_schema_store.open()
        assert "newer" in str(info.value)

    # ------------------------------------------------------------------ webhook outbox

    async def _succeeded_with_webhook(self, store: Store, events: tuple[EventType, ...] = (EventType.SUCCEEDED,)
                                      ) -> Job:
        await insert(store, replace(nj(phases=("only",)), webhook=Webhook("https://hooks.example.com/x", events)))
        running = await claim_one(store)
        (done,) = await store.apply_changes([finish_phase(running, 0, b"r", T0 + 1)])
        assert done is not None and done.job.state is JobState.SUCCEEDED
        return done.job

    async def test_an_event_the_webhook_wants_is_written_to_the_outbox_with_it(self, store: Store) -> None:
        job = await self._succeeded_with_webhook(store)
        await insert(store, nj())  # no webhook: nothing in the outbox
        assert await store.next_delivery_due() == T0 + 1
        (taken,) = await store.take_deliveries(T0 + 2, 10, lease_until=T0 + 60)
        assert (taken.job_id, taken.event_type, taken.event_seq) == (job.id, "SUCCEEDED", job.last_sequence)
        assert json.loads(taken.body)["data"]["jobId"] == job.id
        assert await store.take_deliveries(T0 + 3, 10, lease_until=T0 + 60) == [], "a taken delivery is leased"
        assert await store.next_delivery_due() is None
        assert await store.release_delivery_leases(T0 + 61) == 1
        assert [d.id for d in await store.take_deliveries(T0 + 3, 10, lease_until=T0 + 60)] == [taken.id]

    async def test_a_retry_logs_the_attempt_and_the_last_attempt_appends_an_event(self, store: Store) -> None:
        job = await self._succeeded_with_webhook(store)
        (taken,) = await store.take_deliveries(T0 + 2, 10, lease_until=T0 + 60)
        first = AttemptRecord(1, T0 + 2, "https://hooks.example.com/x", 503, 0.1, "busy", "HTTP 503")
        assert await store.record_delivery_attempt(
            AttemptOutcome(taken, first, Verdict.RETRY, next_at=T0 + 10), T0 + 2, None) is None
        assert await store.next_delivery_due() == T0 + 10
        (again,) = await store.take_deliveries(T0 + 10, 10, lease_until=T0 + 60)
        second = AttemptRecord(2, T0 + 10, "https://hooks.example.com/x", 200, 0.1, "ok", "")
        event = await store.record_delivery_attempt(AttemptOutcome(again, second, Verdict.DELIVERED), T0 + 10,
                                                    PendingEvent(EventType.WEBHOOK_DELIVERED, detail="done"))
        assert event is not None and event.sequence == job.last_sequence + 1
        assert event.job is not None and event.job.last_sequence == event.sequence
        (info,) = await store.job_deliveries(job.id)
        assert (info.state, info.attempts, [a.status_code for a in info.log]) == (DeliveryState.DELIVERED, 2,
                                                                                 [503, 200])
        assert (await stored_events(store, job.id))[-1][1] is EventType.WEBHOOK_DELIVERED

    async def test_410_stops_the_jobs_other_deliveries_to_the_url(self, store: Store) -> None:
        job = await self._succeeded_with_webhook(store, (EventType.STARTED, EventType.SUCCEEDED))
        started, succeeded = await store.take_deliveries(T0 + 2, 10, lease_until=T0 + 60)
        assert (started.event_type, succeeded.event_type) == ("STARTED", "SUCCEEDED")
        gone = AttemptRecord(1, T0 + 2, "https://hooks.example.com/x", 410, 0.1, "", "HTTP 410")
        await store.record_delivery_attempt(AttemptOutcome(started, gone, Verdict.GONE), T0 + 2,
                                            PendingEvent(EventType.WEBHOOK_FAILED))
        states = {d.event_type: d.state for d in await store.job_deliveries(job.id)}
        assert states == {"STARTED": DeliveryState.FAILED, "SUCCEEDED": DeliveryState.STOPPED}
        late = AttemptRecord(1, T0 + 3, "https://hooks.example.com/x", 200, 0.1, "", "")
        assert await store.record_delivery_attempt(AttemptOutcome(succeeded, late, Verdict.DELIVERED), T0 + 3,
                                                   PendingEvent(EventType.WEBHOOK_DELIVERED)) is None

    # ------------------------------------------------------------------ retention

    async def test_retention_makes_stale_then_deletes_everything_kept_for_a_job(self, store: Store) -> None:
        job = await self._succeeded_with_webhook(store)
        waiting = (await insert(store, nj(run_at=T0 + 10_000)))[0]
        cutoffs = {JobState.SUCCEEDED: T0 + 5}
        preview = await store.retention_preview(cutoffs, T0 + 5, T0 + 5)
        assert (preview.marked_stale, preview.deleted) == (1, 0)
        (stale,) = await store.mark_stale(cutoffs, T0 + 6, 100)
        assert stale.job.id == job.id and stale.job.state is JobState.STALE
        assert [e.type for e in stale.events] == [EventType.STALE]
        assert await store.mark_stale(cutoffs, T0 + 6, 100) == []
        assert await store.delete_stale(T0 + 6, T0 + 7, 100) == [], "STALE since T0+6 is not before T0+6"
        (deleted,) = await store.delete_stale(T0 + 7, T0 + 7, 100)
        assert (deleted.job_id, deleted.type, deleted.job) == (job.id, EventType.DELETED, None)
        assert deleted.sequence == stale.job.last_sequence + 1
        with pytest.raises(JobNotFound):
            await store.get_job(job.id)
        with pytest.raises(JobNotFound):
            await store.job_deliveries(job.id)
        assert await store.events_after(waiting.id, 0, 10) != []
        assert await store.take_deliveries(T0 + 8, 10, lease_until=T0 + 60) == []
        assert (await store.get_job(waiting.id)).state is JobState.SCHEDULED

    async def test_retention_batches_respect_their_limit(self, store: Store) -> None:
        for _ in range(3):
            await insert(store, nj(phases=("only",)))
            running = await claim_one(store)
            await store.apply_changes([finish_phase(running, 0, b"", T0 + 1)])
        cutoffs = {JobState.SUCCEEDED: T0 + 5}
        assert len(await store.mark_stale(cutoffs, T0 + 6, 2)) == 2
        assert len(await store.mark_stale(cutoffs, T0 + 6, 2)) == 1
        assert len(await store.delete_stale(T0 + 7, T0 + 7, 2)) == 2
        assert len(await store.delete_stale(T0 + 7, T0 + 7, 2)) == 1

    async def test_a_delivery_whose_job_was_deleted_records_nothing(self, store: Store) -> None:
        job = await self._succeeded_with_webhook(store)
        (taken,) = await store.take_deliveries(T0 + 2, 10, lease_until=T0 + 60)
        await store.mark_stale({JobState.SUCCEEDED: T0 + 5}, T0 + 6, 100)
        await store.delete_stale(T0 + 7, T0 + 7, 100)
        record = AttemptRecord(1, T0 + 8, "https://hooks.example.com/x", 200, 0.1, "", "")
        assert await store.record_delivery_attempt(AttemptOutcome(taken, record, Verdict.DELIVERED), T0 + 8,
                                                   PendingEvent(EventType.WEBHOOK_DELIVERED)) is None
        with pytest.raises(JobNotFound):
            await store.get_job(job.id)
