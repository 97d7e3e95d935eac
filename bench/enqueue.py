"""Enqueue throughput: one at a time (1 and 16 calls in flight) against the gRPC echo floor, and
EnqueueBatch of 1,000 against a plain-sqlite3 batched insert of the same rows (on PostgreSQL,
without a floor).

Workers do not take the jobs here (claiming is stopped once the server is up), so these figures
are the enqueue path alone; `produce` measures enqueueing while the workers drain.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench import floors
from bench.common import Figure, Run, Target, make_app, median, run_client, start_app, stop_app

#: Ratio of the echo floor each in-flight count must reach.
ENQUEUE_TARGETS = {1: 0.70, 16: 0.80}
BATCH_TARGET = 100_000.0


async def _enqueue(run: Run, inflight: int) -> dict[str, Any]:
    s = run.settings
    app = make_app(s, await run.db(f"enqueue-{inflight}"))
    await start_app(app)
    try:
        await app.dispatcher.stop_claiming()
        return await run_client(
            {"mode": "unary", "method": "enqueue", "target": f"127.0.0.1:{app.port}", "inflight": inflight,
             "seconds": s.seconds, "warmup": s.warmup}, s.seconds + s.warmup + 60)
    finally:
        await stop_app(app)


async def measure(run: Run) -> None:
    """Rounds of (echo, enqueue) for each in-flight count, so each figure and its floor share the
    same moments of the machine's load; medians over the rounds."""
    for inflight, share in ENQUEUE_TARGETS.items():
        echoes, enqueues = [], []
        for _ in range(run.settings.rounds):
            echoes.append(await run.echo(inflight, fresh=True))
            enqueues.append(await _enqueue(run, inflight))
        echo = run.keep_echo(inflight, echoes)
        rates = [r["rate"] for r in enqueues]
        result = next(r for r in enqueues if r["rate"] == sorted(rates)[len(rates) // 2])
        run.add(Figure(
            f"enqueue_{inflight}", f"Enqueue, {inflight} in flight", "jobs/s", median(rates),
            echo["rate"], f"gRPC echo, {inflight} in flight", (Target(share, of_floor=True),),
            note=f"median of {len(rates)}" if len(rates) > 1 else "",
            extra={"rounds": [round(r) for r in rates], "echo_rounds": [round(e["rate"]) for e in echoes],
                   "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
                   "errors": sum(r["errors"] for r in enqueues), "echo_p50_ms": echo["p50_ms"],
                   "echo_p99_ms": echo["p99_ms"]}))


async def measure_batch(run: Run) -> None:
    s = run.settings
    app = make_app(s, await run.db("batch"))
    await start_app(app)
    try:
        await app.dispatcher.stop_claiming()
        result = await run_client({"mode": "batch", "target": f"127.0.0.1:{app.port}", "size": s.batch_size,
                                   "calls": s.batch_calls, "warmup_calls": 2}, 120)
    finally:
        await stop_app(app)
    if s.postgres:  # the sqlite3 insert bounds nothing on PostgreSQL; there is no floor for it yet
        run.add(Figure("enqueue_batch", f"EnqueueBatch, {s.batch_size:,} per call", "jobs/s", result["rate"],
                       None, "none on PostgreSQL", (Target(BATCH_TARGET),), extra={"call_p50_ms": result["p50_ms"]}))
        return
    jobs, seconds, spent = await asyncio.to_thread(
        floors.batched_insert, f"{run.directory('batch-floor')}/floor.db", s.synchronous, s.batch_size,
        s.batch_calls)
    run.add(Figure(
        "enqueue_batch", f"EnqueueBatch, {s.batch_size:,} per call", "jobs/s", result["rate"], jobs / seconds,
        "sqlite3 executemany insert", (Target(BATCH_TARGET),), extra={"call_p50_ms": result["p50_ms"], "floor": spent}))
