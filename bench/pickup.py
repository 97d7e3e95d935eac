"""Pickup latency: from the commit that carried an enqueue to its handler starting.

A probe job is enqueued in-process (`app.service.enqueue`) while the server is idle. A hub
listener records `app.writer.last_commit_at` when the probe's ENQUEUED event is published (the
writer sets it right after the commit and publishes right after that); the probe's handler
records when it starts. Also reported: from the enqueue call to the handler start. The floor is
what one gRPC round trip costs on this machine (echo, 1 in flight, p50).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence

from jobwire_server.domain.models import Event, NewJob
from jobwire_server.domain.states import EventType
from jobwire_server.handlers.builtin import noop, sleep
from jobwire_server.handlers.kind import JobContext, Kind
from jobwire_server.handlers.registry import Registry

from bench.common import Failed, Figure, Run, Target, bounded, make_app, percentile, start_app, stop_app

P50_TARGET_MS = 0.5
P99_TARGET_MS = 2.0
#: With `--store postgres` the commit is a round trip to the database server.
PG_P50_TARGET_MS = 2.0
PG_P99_TARGET_MS = 5.0

probe = Kind("bench.probe")
_started: dict[str, float] = {}
_signal: asyncio.Event | None = None


@probe.phase("run")
async def _probe_run(ctx: JobContext) -> None:
    _started[ctx.job_id] = time.perf_counter()
    if _signal is not None:
        _signal.set()


async def measure(run: Run) -> None:
    global _signal
    s = run.settings
    echo = await run.echo(1)
    app = make_app(s, await run.db("pickup"), registry=Registry([noop, sleep, probe]))
    committed: dict[str, float] = {}

    def published(events: Sequence[Event]) -> None:
        for event in events:
            if event.type is EventType.ENQUEUED and event.kind == probe.name:
                committed[event.job_id] = app.writer.last_commit_at

    app.hub.add_listener(published)
    pickup: list[float] = []
    from_call: list[float] = []
    await start_app(app)
    try:
        for sample in range(s.pickup_samples + 10):
            _signal = asyncio.Event()
            called = time.perf_counter()
            (result,) = await app.service.enqueue(
                [NewJob("default", probe.name, b"", 5, time.time(), 1, 0.0, ("run",))])
            await bounded(_signal.wait(), 5, "probe handler start")
            job_id = result.job.id
            if job_id not in committed:
                raise Failed(f"no ENQUEUED event published for probe {job_id}")
            if sample >= 10:  # the first few warm the server up
                pickup.append((_started[job_id] - committed[job_id]) * 1000)
                from_call.append((_started[job_id] - called) * 1000)
            await bounded(app.executor.wait_idle(), 5, "probe job finish")
    finally:
        _signal = None
        await stop_app(app)
    floor = echo["p50_ms"]
    p50_target, p99_target = (PG_P50_TARGET_MS, PG_P99_TARGET_MS) if s.postgres else (P50_TARGET_MS, P99_TARGET_MS)
    extra = {"samples": len(pickup), "mean_ms": statistics.fmean(pickup), "max_ms": max(pickup)}
    run.add(Figure("pickup_p50", "Pickup latency p50, commit → handler start", "ms", percentile(pickup, 0.5),
                   floor, "gRPC echo round trip p50", (Target(p50_target, at_most=True),), extra=extra))
    run.add(Figure("pickup_p99", "Pickup latency p99, commit → handler start", "ms", percentile(pickup, 0.99),
                   floor, "gRPC echo round trip p50", (Target(p99_target, at_most=True),)))
    run.add(Figure("pickup_call_p50", "  enqueue call → handler start, p50", "ms", percentile(from_call, 0.5),
                   floor, "gRPC echo round trip p50"))
    run.add(Figure("pickup_call_p99", "  enqueue call → handler start, p99", "ms", percentile(from_call, 0.99),
                   echo["p99_ms"], "gRPC echo round trip p99"))
