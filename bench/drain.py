"""Drain throughput: while a producer enqueues, and of a prefilled queue (with and without tracing)
against the plain-sqlite3 claim-and-complete floor, or with `--store postgres` against pgqueuer
draining the same jobs on the same PostgreSQL server (bench/pgqueuer_floor.py, in its own process).

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
from jobwire_server.domain.states import JobState
from jobwire_server.store.sqlite import SqliteJobStore
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench import floors
from bench.common import (
    Completions,
    Failed,
    Figure,
    Run,
    Target,
    make_app,
    median,
    run_client,
    start_app,
    stop_app,
)

PRODUCER_SHARE = 0.90
PRODUCER_16_TARGET = 2500.0
DRAIN_TARGET = 10_000.0
DRAIN_SHARE = 0.85
#: With `--store postgres`: the drain against pgqueuer's, same jobs, same database server, same run.
PGQUEUER_SHARE = 1.5
#: The pgqueuer figure beside the floor: its dequeue batch raised from its default 10 to this.
PGQUEUER_BIG_BATCH = 100
TRACED_SHARE = 0.85
PREFILL_BATCH = 1000
#: What a server with tracing on stores with each job it enqueues (its Enqueue span's traceparent),
#: so the traced drain pays for each attempt's link to it, as a traced server does.
PREFILL_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


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
        app = make_app(s, await run.db(f"produce-{inflight}"))
        done = Completions(app)
        await start_app(app)
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


def _noop_jobs(count: int, now: float) -> list[NewJob]:
    """`count` noop jobs as one traced EnqueueBatch call stores them (its traceparent on each)."""
    return [NewJob("default", "noop", b"x", 5, now, 3, 0.0, ("run",), trace_parent=PREFILL_TRACEPARENT)] * count


async def _prefill(run: Run) -> Path | str:
    """A database holding `drain_jobs` QUEUED noop jobs, written through the store; each round
    drains a copy of it. With `--store postgres`, the name of a template database."""
    s = run.settings
    if s.postgres:
        return await prefill_postgres(run, s.drain_jobs)
    directory = Path(run.directory("prefill"))
    store = SqliteJobStore(str(directory / "bench.db"), synchronous=s.synchronous)
    await store.open()
    try:
        now = time.time()
        for start in range(0, s.drain_jobs, PREFILL_BATCH):
            count = min(PREFILL_BATCH, s.drain_jobs - start)
            await store.insert_jobs(_noop_jobs(count, now), now, 0)
    finally:
        await store.close()
    return directory


async def prefill_postgres(run: Run, jobs: int) -> str:
    """A template database holding `jobs` QUEUED noop jobs, enqueued through a server whose claiming
    is stopped (the PostgreSQL store's own writes, whatever its schema); each round drains a copy
    (`CREATE DATABASE … TEMPLATE`). Returns the template's name."""
    s = run.settings
    name = await run.database("prefill")
    app = make_app(s, run.url(name))
    await start_app(app)
    try:
        await app.dispatcher.stop_claiming()
        now = time.time()
        for start in range(0, jobs, PREFILL_BATCH):
            count = min(PREFILL_BATCH, jobs - start)
            await app.service.enqueue(_noop_jobs(count, now))
        queued = sum(q.counts.get(JobState.QUEUED, 0) for q in await app.store.queue_stats("", time.time()))
    finally:
        await stop_app(app)
    if queued != jobs:
        raise Failed(f"the prefill left {queued} of {jobs} jobs QUEUED")
    return name


def _copy(template: Path, directory: str) -> str:
    for file in template.iterdir():
        if file.name.startswith("bench.db"):
            shutil.copy(file, directory)
    return f"{directory}/bench.db"


async def _copy_of(run: Run, template: Path | str, name: str) -> str:
    """A fresh copy of the prefilled database: its `db` setting."""
    if isinstance(template, str):
        return await run.db(name, template=template)
    return _copy(template, run.directory(name))


async def _drain_app(run: Run, template: Path | str, *, traced: bool) -> tuple[float, dict[str, Any]]:
    s = run.settings
    db = await _copy_of(run, template, "drain-traced" if traced else "drain")
    exporter = DropSpans()
    provider: TracerProvider | None = None
    if traced:
        provider = TracerProvider()  # default sampling: parent-based, always on
        provider.add_span_processor(BatchSpanProcessor(exporter))
    app = make_app(s, db, tracer_provider=provider)
    done = Completions(app)
    started, cpu = time.perf_counter(), time.process_time()
    await start_app(app)
    try:
        up = time.perf_counter() - started
        await done.wait(s.drain_jobs, 60 + s.drain_jobs / 200)
        rate = s.drain_jobs / (done.last_at - started)
        # CPU of the whole process (the server's every thread), which a busy machine moves far less
        # than the rate: what the server itself spends per job.
        cpu_us = (time.process_time() - cpu) / s.drain_jobs * 1e6
    finally:
        await stop_app(app)
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)
    return rate, {"start_s": round(up, 4), "commits": app.writer.commits, "spans": exporter.spans,
                  "cpu_us_per_job": round(cpu_us, 1)}


async def pgqueuer_drain(run: Run, *, batch: int | None = None) -> dict[str, Any]:
    """One pgqueuer drain of `drain_jobs` prefilled noop jobs on a scratch database of the same
    PostgreSQL server, in its own process (bench/pgqueuer_floor.py): its JSON result."""
    s = run.settings
    spec = {"admin_url": s.pg_url, "database": run.reserve("pgqueuer"), "jobs": s.drain_jobs,
            "consumers": s.pgq_consumers, "batch_size": batch or s.pgq_batch, "timeout": 60 + s.drain_jobs / 200}
    return await run_client(spec, 120 + s.drain_jobs / 200, module="bench.pgqueuer_floor")


def pgqueuer_label(run: Run, batch: int | None = None) -> str:
    s = run.settings
    consumers = f"{s.pgq_consumers} consumers" if s.pgq_consumers > 1 else "1 consumer"
    return f"pgqueuer, {consumers}, batch {batch or s.pgq_batch}"


async def _drain_floor(run: Run, template: Path | str) -> float:
    if isinstance(template, str):
        return float((await pgqueuer_drain(run))["rate"])
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
    targets: tuple[Target, ...]
    if s.postgres:
        floor_label, targets = pgqueuer_label(run), (Target(PGQUEUER_SHARE, of_floor=True),)
    else:
        floor_label = f"sqlite3 claim+complete {s.claim_batch}/commit"
        targets = (Target(DRAIN_TARGET), Target(DRAIN_SHARE, of_floor=True))
    run.add(Figure(
        "drain", f"Drain of {s.drain_jobs:,} prefilled noop jobs", "jobs/s", untraced, median(floor_rates),
        floor_label, targets, note=rounds,
        extra={"rounds": [round(r) for r in plain], "floor_rounds": [round(r) for r in floor_rates],
               "per_job_us": 1e6 / untraced,
               "cpu_us_per_job": median([d["untraced"]["cpu_us_per_job"] for d in details]),
               "detail": [d["untraced"] for d in details]}))
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


# ---------------------------------------------------------------------- the pgqueuer floor alone


async def measure_pgqueuer(run: Run) -> None:
    """The PostgreSQL drain floor on its own: pgqueuer as `drain` compares to it, and beside it
    with a bigger dequeue batch, to show how much its batch size moves it (rounds alternate)."""
    s = run.settings
    results: dict[int, list[dict[str, Any]]] = {s.pgq_batch: [], PGQUEUER_BIG_BATCH: []}
    for number in range(s.rounds):
        for batch in list(results) if number % 2 == 0 else list(results)[::-1]:
            results[batch].append(await pgqueuer_drain(run, batch=batch))
    note = f"median of {s.rounds}" if s.rounds > 1 else ""
    for batch, rounds in results.items():
        rates = [float(r["rate"]) for r in rounds]
        key = "pgqueuer" if batch == s.pgq_batch else f"pgqueuer_batch_{batch}"
        label = (f"pgqueuer drain of {s.drain_jobs:,} prefilled noop jobs" if batch == s.pgq_batch
                 else f"  pgqueuer with batch {batch}")
        run.add(Figure(key, label, "jobs/s", median(rates), note=f"{pgqueuer_label(run, batch)}; {note}".rstrip("; "),
                       extra={"rounds": [round(r) for r in rates], "settings": rounds[-1]["settings"],
                              "loop": rounds[-1]["loop"], "log_flushes": rounds[-1]["log_flushes"]}))
