"""CancelJob in process: waiting jobs are cancelled at once, running ones are asked to stop,
a handler that ignores the request is abandoned, and a cancel racing a phase boundary ends the
job exactly once."""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from jobwire_server.app import App
from jobwire_server.domain.clock import FakeClock
from jobwire_server.domain.errors import InvalidTransition
from jobwire_server.domain.retry import RetryPolicy
from jobwire_server.domain.states import FINAL_EVENTS, EventType, JobState, PhaseState
from jobwire_server.handlers import JobContext, Kind

from tests.testkit import Harness, Recorder, claim_round, enqueue

#: A hang fails the test instead of blocking the run.
pytestmark = pytest.mark.timeout(60)

E = EventType

started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
release: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
got_cancel: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
may_stop: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
returned: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
runs: defaultdict[str, list[str]] = defaultdict(list)

held = Kind("t.held")


@held.phase("hold")
async def hold(ctx: JobContext) -> bytes:
    runs[ctx.job_id].append(ctx.phase)
    started[ctx.job_id].set()
    await release[ctx.job_id].wait()
    return b"released"


three = Kind("t.three", retry=RetryPolicy(base_delay=100.0, max_delay=100.0))


@three.phase("a")
async def three_a(ctx: JobContext) -> bytes:
    runs[ctx.job_id].append(ctx.phase)
    return b"A"


@three.phase("b")
async def three_b(ctx: JobContext) -> bytes:
    runs[ctx.job_id].append(ctx.phase)
    if ctx.json() == "fail-b":
        raise RuntimeError("b broke")
    return b"B"


@three.phase("c")
async def three_c(ctx: JobContext) -> bytes:
    runs[ctx.job_id].append(ctx.phase)
    return b"C"


polite = Kind("t.polite")


@polite.phase("first")
async def polite_first(ctx: JobContext) -> bytes:
    runs[ctx.job_id].append(ctx.phase)
    started[ctx.job_id].set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        got_cancel[ctx.job_id].set()
        await may_stop[ctx.job_id].wait()  # cleaning up, as a real handler might
        raise
    return b"unreachable"


@polite.phase("second")
async def polite_second(ctx: JobContext) -> bytes:
    runs[ctx.job_id].append(ctx.phase)
    return b"never"


stubborn = Kind("t.stubborn")


@stubborn.phase("ignore")
async def ignore(ctx: JobContext) -> bytes:
    started[ctx.job_id].set()
    while True:
        try:
            await release[ctx.job_id].wait()
            break
        except asyncio.CancelledError:
            got_cancel[ctx.job_id].set()
    returned[ctx.job_id].set()
    return b"late result"


boundary = Kind("t.boundary", max_attempts=1)


@boundary.phase("one")
async def boundary_one(ctx: JobContext) -> bytes:
    await asyncio.sleep(ctx.json()["work"][0])  # sleep-ok: the simulated work, 0 to a few milliseconds
    return b"1"


@boundary.phase("two")
async def boundary_two(ctx: JobContext) -> bytes:
    await asyncio.sleep(ctx.json()["work"][1])  # sleep-ok: simulated work
    return b"2"


KINDS = (held, three, polite, stubborn, boundary)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.stop_all()


async def stored_types(app: App, job_id: str) -> list[EventType]:
    return [e.type for e in await app.service.events_after(job_id, 0)]


async def test_cancel_queued_job_is_immediate_and_cancels_every_phase(harness: Harness) -> None:
    app = await harness.start(*KINDS, concurrency=1)
    rec = Recorder(app.hub)
    blocker = await enqueue(app, held)
    async with asyncio.timeout(5):
        await started[blocker.id].wait()
    job = await enqueue(app, three)
    assert job.state is JobState.QUEUED
    cancelled = await app.service.cancel(job.id, "changed my mind")
    assert cancelled.state is JobState.CANCELLED and cancelled.cancel_reason == "changed my mind"
    assert [p.state for p in cancelled.phases] == [PhaseState.CANCELLED] * 3
    assert await app.service.get(job.id) == cancelled
    assert await stored_types(app, job.id) == [E.ENQUEUED, E.CANCELLED]
    await rec.wait(job.id, E.CANCELLED)
    assert rec.types(job.id) == [E.ENQUEUED, E.CANCELLED]
    release[blocker.id].set()
    assert (await rec.wait_final(blocker.id)).type is E.SUCCEEDED
    await claim_round(app)
    assert runs[job.id] == [], "a cancelled job never starts"
    assert (await app.service.get(job.id)).state is JobState.CANCELLED


async def test_cancel_scheduled_job_is_immediate_and_it_never_runs(harness: Harness) -> None:
    clock = FakeClock()
    app = await harness.start(*KINDS, clock=clock)
    job = await enqueue(app, three, delay=30)
    cancelled = await app.service.cancel(job.id, "not needed")
    assert cancelled.state is JobState.CANCELLED
    assert [p.state for p in cancelled.phases] == [PhaseState.CANCELLED] * 3
    clock.advance(60)
    await claim_round(app)
    assert runs[job.id] == []
    assert await stored_types(app, job.id) == [E.ENQUEUED, E.CANCELLED]


async def test_cancel_retrying_job_is_immediate(harness: Harness) -> None:
    clock = FakeClock()
    app = await harness.start(*KINDS, clock=clock)
    rec = Recorder(app.hub)
    job = await enqueue(app, three, b'"fail-b"')
    await rec.wait(job.id, E.RETRY_SCHEDULED)
    cancelled = await app.service.cancel(job.id, "stop retrying")
    assert cancelled.state is JobState.CANCELLED
    states = [p.state for p in cancelled.phases]
    assert states[0] is PhaseState.SUCCEEDED and cancelled.phases[0].result == b"A", "finished work is kept"
    assert states[1] in (PhaseState.FAILED, PhaseState.CANCELLED) and states[2] is PhaseState.CANCELLED
    assert not {PhaseState.PENDING, PhaseState.RUNNING} & set(states)
    clock.advance(1000)
    await claim_round(app)
    assert runs[job.id] == ["a", "b"]
    assert (await stored_types(app, job.id)).count(E.CANCELLED) == 1


async def test_cancel_running_job_asks_the_handler_and_ends_when_it_stops(harness: Harness) -> None:
    app = await harness.start(*KINDS, cancel_grace=30.0)
    rec = Recorder(app.hub)
    job = await enqueue(app, polite)
    async with asyncio.timeout(5):
        await started[job.id].wait()
    asked = await app.service.cancel(job.id, "user pressed stop")
    assert asked.state is JobState.RUNNING and asked.cancel_requested and asked.cancel_reason == "user pressed stop"
    async with asyncio.timeout(5):
        await got_cancel[job.id].wait()
    await rec.wait(job.id, E.CANCEL_REQUESTED)
    still = await app.service.get(job.id)
    assert still.state is JobState.RUNNING and still.cancel_requested, "not CANCELLED until the handler stops"
    again = await app.service.cancel(job.id, "twice")
    assert again.state is JobState.RUNNING and again.last_sequence == still.last_sequence, "no second request"
    may_stop[job.id].set()
    final = await rec.wait_final(job.id)
    assert final.type is E.CANCELLED and final.detail == "user pressed stop"
    done = await app.service.get(job.id)
    assert done.state is JobState.CANCELLED
    assert [p.state for p in done.phases] == [PhaseState.CANCELLED, PhaseState.CANCELLED]
    assert runs[job.id] == ["first"]
    types = await stored_types(app, job.id)
    assert types.count(E.CANCEL_REQUESTED) == 1 and types.count(E.CANCELLED) == 1
    assert types.index(E.CANCEL_REQUESTED) < types.index(E.CANCELLED) == len(types) - 1


async def test_handler_that_ignores_cancel_is_abandoned_and_its_result_refused(harness: Harness) -> None:
    app = await harness.start(*KINDS, concurrency=1, cancel_grace=0.3)
    rec = Recorder(app.hub)
    job = await enqueue(app, stubborn)
    async with asyncio.timeout(5):
        await started[job.id].wait()
    await app.service.cancel(job.id, "stop now")
    final = await rec.wait_final(job.id)
    assert final.type is E.CANCELLED
    assert got_cancel[job.id].is_set() and not returned[job.id].is_set(), "abandoned while still running"
    # The abandoned handler no longer holds the only slot.
    follower = await enqueue(app, three)
    assert (await rec.wait_final(follower.id)).type is E.SUCCEEDED
    cancelled = await app.service.get(job.id)
    release[job.id].set()
    async with asyncio.timeout(5):
        await returned[job.id].wait()
    await claim_round(app)  # let the loop run past the late return
    after = await app.service.get(job.id)
    assert after == cancelled, "the late result is not written"
    assert after.phases[0].result == b"" and after.state is JobState.CANCELLED
    assert (await stored_types(app, job.id)).count(E.CANCELLED) == 1


async def test_cancelling_a_cancelled_job_returns_it_without_a_new_event(harness: Harness) -> None:
    app = await harness.start(*KINDS, clock=FakeClock())
    job = await enqueue(app, three, delay=100)
    first = await app.service.cancel(job.id, "once")
    second = await app.service.cancel(job.id, "twice")
    assert second == first and second.cancel_reason == "once"
    assert await stored_types(app, job.id) == [E.ENQUEUED, E.CANCELLED]


async def test_cancelling_a_succeeded_job_is_refused(harness: Harness) -> None:
    app = await harness.start(*KINDS)
    rec = Recorder(app.hub)
    job = await enqueue(app, three)
    assert (await rec.wait_final(job.id)).type is E.SUCCEEDED
    with pytest.raises(InvalidTransition):
        await app.service.cancel(job.id, "too late")
    assert (await app.service.get(job.id)).state is JobState.SUCCEEDED
    assert E.CANCELLED not in await stored_types(app, job.id)


async def test_cancel_racing_phase_boundaries_ends_each_job_exactly_once(harness: Harness) -> None:
    app = await harness.start(*KINDS, concurrency=16)
    rec = Recorder(app.hub)
    rng = random.Random(20240607)
    count = 60
    # Each job is cancelled when one of its events, chosen at random, is published (or right after
    # its enqueue), while the jobs run: the cancels land before, between and after phase boundaries.
    triggers = [E.STARTED, E.PHASE_STARTED, E.PHASE_SUCCEEDED, None]
    # Planned up front, by enqueue order: a job's first events may be published before its
    # enqueue returns (the enqueue's own commit can claim it), so the k-th ENQUEUED is job k.
    plan_list = [(rng.choice(triggers), rng.randrange(1, 3)) for _ in range(count)]
    plans: dict[str, tuple[EventType | None, int]] = {}
    outcomes: dict[str, str] = {}
    tasks: list[asyncio.Task[None]] = []

    async def cancel(job_id: str) -> None:
        try:
            await app.service.cancel(job_id, "race")
            outcomes[job_id] = "accepted"
        except InvalidTransition:
            outcomes[job_id] = "refused"

    async def watch_and_cancel() -> None:
        finished: set[str] = set()
        seen_count: defaultdict[tuple[str, EventType], int] = defaultdict(int)
        while len(finished) < count:
            event = await rec.pump()
            seen_count[(event.job_id, event.type)] += 1
            if event.type is E.ENQUEUED:
                plans[event.job_id] = plan_list[len(plans)]
            trigger, nth = plans[event.job_id]
            if event.type is trigger and seen_count[(event.job_id, event.type)] == nth:
                tasks.append(asyncio.create_task(cancel(event.job_id)))
            if event.type in FINAL_EVENTS:
                finished.add(event.job_id)

    watcher = asyncio.create_task(watch_and_cancel())
    jobs = []
    for index in range(count):
        work = [rng.choice([0, 0, 0.001, 0.003, 0.01]) for _ in range(2)]
        job = await enqueue(app, boundary, json.dumps({"work": work}).encode())
        jobs.append(job)
        if plan_list[index][0] is None:
            tasks.append(asyncio.create_task(cancel(job.id)))
    async with asyncio.timeout(20):
        await watcher
        await asyncio.gather(*tasks)
    cancelled = [await ended_exactly_once(app, rec, job.id, outcomes.get(job.id)) for job in jobs]
    assert count // 4 < sum(cancelled) < count, f"{sum(cancelled)} of {count} cancels took effect: no race"


async def ended_exactly_once(app: App, rec: Recorder, job_id: str, cancel_outcome: str | None) -> bool:
    """Check one raced job's stored and published history; True when it ended CANCELLED."""
    stored = await app.service.events_after(job_id, 0)
    types = [e.type for e in stored]
    assert [e.sequence for e in stored] == list(range(1, len(stored) + 1)), types
    terminal = [t for t in types if t in FINAL_EVENTS]
    assert len(terminal) == 1, f"job {job_id}: terminal events {terminal} in {types}"
    assert types[-1] == terminal[0], types
    assert [t for t in rec.types(job_id) if t in FINAL_EVENTS] == terminal, "published once, as stored"
    final = await app.service.get(job_id)
    assert final.state.value == terminal[0].value
    if cancel_outcome == "refused":
        assert final.state is JobState.SUCCEEDED
    if final.state is JobState.SUCCEEDED:
        assert [p.state for p in final.phases] == [PhaseState.SUCCEEDED] * 2
        return False
    assert final.state is JobState.CANCELLED
    assert not {PhaseState.PENDING, PhaseState.RUNNING} & {p.state for p in final.phases}
    assert final.phases[-1].state is PhaseState.CANCELLED
    return True
