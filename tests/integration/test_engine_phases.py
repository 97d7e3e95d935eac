"""Phases and handlers in process: phase order, ctx.results, the job result, progress events,
the handler context, synchronous handlers, and one slow job never blocking the others."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from jobwire_server.domain.clock import FakeClock
from jobwire_server.domain.states import EventType, JobState, PhaseState
from jobwire_server.handlers import JobContext, Kind

from tests.testkit import Harness, Recorder, enqueue

#: A hang fails the test instead of blocking the run.
pytestmark = pytest.mark.timeout(60)

E = EventType

seen: dict[str, list[tuple[str, dict[str, bytes]]]] = {}

pipeline = Kind("t.pipeline", queue="images")


@pipeline.phase("fetch")
async def fetch(ctx: JobContext) -> bytes:
    seen.setdefault(ctx.job_id, []).append((ctx.phase, dict(ctx.results)))
    return b"raw:" + ctx.payload


@pipeline.phase("resize")
async def resize(ctx: JobContext) -> str:
    seen.setdefault(ctx.job_id, []).append((ctx.phase, dict(ctx.results)))
    return "small:" + ctx.results["fetch"].decode()


@pipeline.phase("store")
async def store(ctx: JobContext) -> dict[str, Any]:
    seen.setdefault(ctx.job_id, []).append((ctx.phase, dict(ctx.results)))
    return {"stored": ctx.results["resize"].decode(), "phases_before": sorted(ctx.results)}


reporter = Kind("t.reporter")
allowed_to_finish: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)


@reporter.phase("one")
async def report_one(ctx: JobContext) -> None:
    await ctx.progress(25, "a quarter")
    await ctx.progress(75, "three quarters")
    await allowed_to_finish[ctx.job_id].wait()


@reporter.phase("two")
async def report_two(ctx: JobContext) -> None:
    return None


inspector = Kind("t.inspector", queue="inspect", max_attempts=4)
contexts: dict[str, dict[str, Any]] = {}


@inspector.phase("look")
async def look(ctx: JobContext) -> bytes:
    contexts[ctx.job_id] = {"job_id": ctx.job_id, "kind": ctx.kind, "queue": ctx.queue, "attempt": ctx.attempt,
                            "payload": ctx.payload, "json": ctx.json(), "labels": dict(ctx.labels),
                            "phase": ctx.phase, "results": dict(ctx.results)}
    with pytest.raises(ValueError, match="0–100"):
        await ctx.progress(101)
    return b""


blocking = Kind("t.blocking")
threads: dict[str, int] = {}


@blocking.phase("compute")
def compute(ctx: JobContext) -> bytes:
    threads[ctx.job_id] = threading.get_ident()
    ctx.progress_sync(50, "halfway, from a thread")
    return b"computed in a thread"


slow = Kind("t.slow")
#: Per job id, made on first use (a handler may start before the test looks its job up).
release_slow: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
slow_running: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)


@slow.phase("crawl")
async def crawl(ctx: JobContext) -> bytes:
    slow_running[ctx.job_id].set()
    await release_slow[ctx.job_id].wait()
    return b"finally"


quick = Kind("t.quick")


@quick.phase("run")
async def quick_run(ctx: JobContext) -> bytes:
    return ctx.payload


KINDS = (pipeline, reporter, inspector, blocking, slow, quick)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.stop_all()


async def test_phases_run_in_order_and_see_earlier_results(harness: Harness) -> None:
    app = await harness.start(*KINDS)
    rec = Recorder(app.hub)
    job = await enqueue(app, pipeline, b"cat.png")
    assert job.queue == "images" and [p.name for p in job.phases] == ["fetch", "resize", "store"]
    assert (await rec.wait_final(job.id)).type is E.SUCCEEDED
    assert seen[job.id] == [
        ("fetch", {}),
        ("resize", {"fetch": b"raw:cat.png"}),
        ("store", {"fetch": b"raw:cat.png", "resize": b"small:raw:cat.png"}),
    ]
    done = await app.service.get(job.id)
    assert [(p.name, p.state) for p in done.phases] == [(n, PhaseState.SUCCEEDED) for n in ("fetch", "resize", "store")]
    assert done.phases[1].result == b"small:raw:cat.png"
    assert done.result == b'{"stored":"small:raw:cat.png","phases_before":["fetch","resize"]}', "last phase's result"
    assert done.progress.percent == 100.0 and done.attempt == 1
    assert [(e.type, e.phase) for e in rec.of(job.id)] == [
        (E.ENQUEUED, ""), (E.STARTED, ""),
        (E.PHASE_STARTED, "fetch"), (E.PHASE_SUCCEEDED, "fetch"),
        (E.PHASE_STARTED, "resize"), (E.PHASE_SUCCEEDED, "resize"),
        (E.PHASE_STARTED, "store"), (E.PHASE_SUCCEEDED, "store"), (E.SUCCEEDED, "")]


async def test_progress_is_stored_and_published(harness: Harness) -> None:
    app = await harness.start(*KINDS)
    rec = Recorder(app.hub)
    job = await enqueue(app, reporter)
    second = await rec.wait(job.id, E.PROGRESS, count=2)
    first = rec.of(job.id)[[e.type for e in rec.of(job.id)].index(E.PROGRESS)]
    assert (first.phase, first.detail) == ("one", "a quarter")
    assert (second.phase, second.detail) == ("one", "three quarters")
    running = await app.service.get(job.id)
    assert running.state is JobState.RUNNING
    assert running.phases[0].progress.percent == 75 and running.phases[0].progress.message == "three quarters"
    assert running.progress.percent == 37.5, "the job's progress is the mean over its phases"
    allowed_to_finish[job.id].set()
    assert (await rec.wait_final(job.id)).type is E.SUCCEEDED
    done = await app.service.get(job.id)
    assert done.result == b"" and done.progress.percent == 100.0
    sequences = [e.sequence for e in rec.of(job.id)]
    assert sequences == list(range(1, len(sequences) + 1)), "per-job sequence numbers increase by one"
    stored = await app.service.events_after(job.id, 0)
    assert [(e.sequence, e.type, e.phase, e.detail) for e in stored] == [
        (e.sequence, e.type, e.phase, e.detail) for e in rec.of(job.id)]


async def test_the_context_describes_the_job(harness: Harness) -> None:
    app = await harness.start(*KINDS)
    rec = Recorder(app.hub)
    job = await enqueue(app, inspector, b'{"size": 3}', labels={"team": "vision"})
    assert (await rec.wait_final(job.id)).type is E.SUCCEEDED
    assert contexts[job.id] == {"job_id": job.id, "kind": "t.inspector", "queue": "inspect", "attempt": 1,
                                "payload": b'{"size": 3}', "json": {"size": 3}, "labels": {"team": "vision"},
                                "phase": "look", "results": {}}


async def test_synchronous_handler_runs_in_a_worker_thread(harness: Harness) -> None:
    app = await harness.start(*KINDS)
    rec = Recorder(app.hub)
    job = await enqueue(app, blocking)
    assert (await rec.wait_final(job.id)).type is E.SUCCEEDED
    assert threads[job.id] != threading.get_ident(), "not on the event loop's thread"
    progress = [e for e in rec.of(job.id) if e.type is E.PROGRESS]
    assert [(e.phase, e.detail) for e in progress] == [("compute", "halfway, from a thread")]
    assert (await app.service.get(job.id)).result == b"computed in a thread"


async def test_one_slow_job_never_blocks_the_others(harness: Harness) -> None:
    app = await harness.start(*KINDS, concurrency=2)
    rec = Recorder(app.hub)
    hog = await enqueue(app, slow)
    async with asyncio.timeout(5):
        await slow_running[hog.id].wait()
    quick_jobs = [await enqueue(app, quick, str(i).encode()) for i in range(12)]
    for job in quick_jobs:
        assert (await rec.wait_final(job.id)).type is E.SUCCEEDED
    assert (await app.service.get(hog.id)).state is JobState.RUNNING, "the slow one is still running"
    release_slow[hog.id].set()
    assert (await rec.wait_final(hog.id)).type is E.SUCCEEDED


async def test_global_concurrency_limit_in_process(harness: Harness) -> None:
    app = await harness.start(*KINDS, concurrency=2, clock=FakeClock())
    rec = Recorder(app.hub)
    hogs = [await enqueue(app, slow) for _ in range(3)]
    await rec.wait(hogs[0].id, E.STARTED)
    await rec.wait(hogs[1].id, E.STARTED)
    assert (await app.service.get(hogs[2].id)).state is JobState.QUEUED
    assert app.executor.free_slots() == 0
    release_slow[hogs[0].id].set()
    await rec.wait(hogs[2].id, E.STARTED)
    assert (await app.service.get(hogs[0].id)).state is JobState.SUCCEEDED, "the third started after a slot freed"
    for hog in hogs[1:]:
        release_slow[hog.id].set()
        assert (await rec.wait_final(hog.id)).type is E.SUCCEEDED
