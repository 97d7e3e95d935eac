"""Enqueue latency while a bulk action runs: one CancelJobs of 10,000 jobs (in the server's batches,
each its own transaction sized to take about 4 ms), while four clients keep enqueueing. The floor is the same
clients' enqueue p99 a moment before, without the bulk action; the target is the issue's 20 ms.
"""

from __future__ import annotations

from jobwire_server.domain.bulk import BATCH_BUDGET

from bench.common import Figure, Run, Target, make_app, run_client, start_app, stop_app

P99_TARGET_MS = 20.0
CLIENTS = 4


async def measure(run: Run) -> None:
    s = run.settings
    app = make_app(s, await run.db("bulk"))
    await start_app(app)
    try:
        result = await run_client({"mode": "bulk", "target": f"127.0.0.1:{app.port}", "queue": "media",
                                   "jobs": s.bulk_jobs, "clients": CLIENTS, "baseline": s.seconds}, 300)
        batch = app.config.bulk_batch
    finally:
        await stop_app(app)
    if result["changed"] != s.bulk_jobs:
        raise RuntimeError(f"CancelJobs changed {result['changed']} of {s.bulk_jobs} jobs")
    run.add(Figure(
        "bulk_enqueue_p99", f"Enqueue p99 while {s.bulk_jobs:,} jobs are cancelled", "ms", result["during_p99_ms"],
        result["alone_p99_ms"], f"enqueue p99 alone, {CLIENTS} in flight", (Target(P99_TARGET_MS, at_most=True),),
        note=f"batches of about {BATCH_BUDGET * 1000:g} ms, at most {batch} jobs, {result['during']} enqueues during",
        extra={key: round(value, 3) if isinstance(value, float) else value for key, value in result.items()}))
    run.add(Figure(
        "bulk_cancel_rate", f"CancelJobs of {s.bulk_jobs:,} jobs", "jobs/s", s.bulk_jobs / result["cancel_seconds"],
        note=f"{result['cancel_seconds']:.2f} s, enqueues going on"))
