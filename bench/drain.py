"""Drain throughput: while a producer enqueues, and of a prefilled queue (with and without tracing)
against the plain-sqlite3 claim-and-complete floor.

Completion is seen as it happens: a hub listener counts SUCCEEDED events as the writer publishes
each committed batch, and records when the last one came.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobwire_server.domain.models import NewJob
from jobwire_server.store.sqlite import SqliteJobStore
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench import floors
from bench.common import Completions, Figure, Run, Target, make_app, median, run_client, stop_app

PRODUCER_SHARE = 0.90
PRODUCER_16_TARGET = 2500.0
DRAIN_TARGET = 10_000.0
DRAIN_SHARE = 0.85
TRACED_SHARE = 0.85
PREFILL_BATCH = 1000


class DropSpans(SpanExporter):
    """Takes every span and keeps none (counts them, so the report shows tracing was on)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


# ---------------------------------------------------------------------- while a producer enqueues


async def measure_produce(run: Run) -> None:
    s = run.settings
    for inflight in (1, 16):
        app = make_app(s, run.directory(f"produce-{inflight}"))
        done = Completions(app)
        await app.start()
        try:
            result = await run_client(
                {"mode": "unary", "method": "enqueue", "target": f"127.0.0.1:{app.port}", "inflight": inflight,
                 "seconds": s.produce_seconds, "warmup": 0.0}, s.produce_seconds + 60)
            jobs = int(result["ok"])
            await done.wait(jobs, 60 + jobs / 500)
        finally:
            await stop_app(app)
        produced = jobs / (result["last_reply"] - result["first_send"])
        completed = jobs / (done.last_at - result["first_send"])
        extra = {"jobs": jobs, "errors": result["errors"], "enqueue_p50_ms": result["p50_ms"],
                 "enqueue_p99_ms": result["p99_ms"], "tail_after_last_reply_s": done.last_at - result["last_reply"]}
        if inflight == 1:
            echo = await run.echo(1)
            run.add(Figure("produce_1_enqueue", "  producer: Enqueue while draining, 1 in flight", "jobs/s",
                           produced, echo["rate"], "gRPC echo, 1 in flight", extra={"jobs": jobs}))
            run.add(Figure("produce_1_drain", "Drain while 1 producer enqueues (e2e)", "jobs/s", completed,
                           produced, "that producer's enqueue rate", (Target(PRODUCER_SHARE, of_floor=True),),
                           extra=extra))
        else:
            run.add(Figure("produce_16_drain", "Drain while producer has 16 in flight (e2e)", "jobs/s",
                           completed, produced, "that producer's enqueue rate", (Target(PRODUCER_16_TARGET),),
                           extra=extra))


# ---------------------------------------------------------------------- a prefilled queue


async def _prefill(run: Run) -> Path:
    """A database holding `drain_jobs` QUEUED noop jobs, written through the store; each round
    drains a copy of it."""
    s = run.settings
    directory = Path(run.directory("prefill"))
    store = SqliteJobStore(str(directory / "bench.db"), synchronous=s.synchronous)
    await store.open()
    try:
        now = time.time()
        for start in range(0, s.drain_jobs, PREFILL_BATCH):
            count = min(PREFILL_BATCH, s.drain_jobs - start)
            await store.insert_jobs([NewJob("default", "noop", b"x", 5, now, 3, 0.0, ("run",))] * count, now, 0)
    finally:
        await store.close()
    return directory


def _copy(template: Path, directory: str) -> str:
    for file in template.iterdir():
        if file.name.startswith("bench.db"):
            shutil.copy(file, directory)
    return f"{directory}/bench.db"


async def _drain_app(run: Run, template: Path, *, traced: bool) -> tuple[float, dict[str, Any]]:
    s = run.settings
    directory = run.directory("drain-traced" if traced else "drain")
    _copy(template, directory)
    exporter = DropSpans()
    provider: TracerProvider | None = None
    if traced:
        provider = TracerProvider()  # default sampling: parent-based, always on
        provider.add_span_processor(BatchSpanProcessor(exporter))
    app = make_app(s, directory, tracer_provider=provider)
    done = Completions(app)
    started = time.perf_counter()
    await app.start()
    try:
        up = time.perf_counter() - started
        await done.wait(s.drain_jobs, 60 + s.drain_jobs / 200)
        rate = s.drain_jobs / (done.last_at - started)
    finally:
        await stop_app(app)
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)
    return rate, {"start_s": round(up, 4), "commits": app.writer.commits, "spans": exporter.spans}


async def _drain_floor(run: Run, template: Path) -> float:
    path = _copy(template, run.directory("drain-floor"))
    jobs, seconds = await asyncio.to_thread(
        floors.claim_and_complete, path, run.settings.synchronous, run.settings.claim_batch)
    if jobs != run.settings.drain_jobs:
        raise RuntimeError(f"the floor drained {jobs} of {run.settings.drain_jobs} jobs")
    return jobs / seconds


async def measure_drain(run: Run) -> None:
    """Rounds of the floor and the untraced and traced drains, so each figure and its floor share
    the same moments of the machine's load (the two drains swap places every other round); medians
    over the rounds."""
    s = run.settings
    template = await _prefill(run)
    floor_rates: list[float] = []
    plain: list[float] = []
    traced: list[float] = []
    details: list[dict[str, Any]] = []
    for number in range(s.drain_rounds):
        floor_rates.append(await _drain_floor(run, template))
        detail: dict[str, Any] = {}
        for tracing in (False, True) if number % 2 == 0 else (True, False):
            rate, info = await _drain_app(run, template, traced=tracing)
            (traced if tracing else plain).append(rate)
            detail["traced" if tracing else "untraced"] = info
        details.append(detail)
    rounds = f"median of {s.drain_rounds}" if s.drain_rounds > 1 else ""
    untraced = median(plain)
    run.add(Figure(
        "drain", f"Drain of {s.drain_jobs:,} prefilled noop jobs", "jobs/s", untraced, median(floor_rates),
        f"sqlite3 claim+complete {s.claim_batch}/commit", (Target(DRAIN_TARGET), Target(DRAIN_SHARE, of_floor=True)),
        note=rounds,
        extra={"rounds": [round(r) for r in plain], "floor_rounds": [round(r) for r in floor_rates],
               "per_job_us": 1e6 / untraced, "detail": [d["untraced"] for d in details]}))
    with_tracing = median(traced)
    cost = round(1 - with_tracing / untraced, 3) + 0.0
    paired = median([1 - t / u for t, u in zip(traced, plain, strict=True)])
    run.add(Figure(
        "drain_traced", "Drain with tracing on (default sampling)", "jobs/s", with_tracing, untraced,
        "the untraced drain above", (Target(TRACED_SHARE, of_floor=True),),
        note=f"cost {cost:.0%}; per round, median {paired:.0%}",
        extra={"rounds": [round(r) for r in traced], "cost": cost, "cost_per_round_median": paired,
               "spans_per_job": details[-1]["traced"]["spans"] / s.drain_jobs,
               "detail": [d["traced"] for d in details]}))
