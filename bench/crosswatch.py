"""Cross-replica watch latency (`--store postgres` only): an event committed on replica B, seen by
a WatchEvents watcher on replica A.

B is the App hosted in the bench process (so the bench can read when B committed), A a `jobwire
serve` process on the same database (bench/common.py `Replica`, with this module as a handler
module so it knows the probe kind too). A load client (bench/load.py, mode ``events``) holds one
WatchEvents stream on A and, as the floor, one on B itself, both filtered to the probe kind and
ENQUEUED and SUCCEEDED.

Probe jobs are enqueued on B one at a time (`app.service.enqueue`) while both replicas are
otherwise idle, a random 0-20 ms apart so they do not fall into step with anything periodic. B's
hub listener records `app.writer.last_commit_at` when B publishes an event of a probe it committed,
as the pickup and fan-out measures do: ENQUEUED always (B's enqueue), SUCCEEDED when the probe ran
on B (its handler notes the jobs it ran in this process; a probe A happened to claim is counted
for ENQUEUED only). Latency runs from that commit to the event's receipt in the client
(perf_counter is CLOCK_MONOTONIC, shared by every process). The first probes only make sure both
streams are live (WatchEvents sends nothing until an event comes).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

from jobwire_server.domain.models import Event, NewJob
from jobwire_server.handlers.builtin import noop, sleep
from jobwire_server.handlers.kind import JobContext, Kind
from jobwire_server.handlers.registry import Registry

from bench.common import Failed, Figure, LoadClient, Replica, Run, Target, make_app, percentile, start_app, stop_app

TARGET_P99_MS = 100.0
QUEUE = "crosswatch"
WARMUP_TRIES = 50
#: Longest a probe's events may take to reach both watchers.
PROBE_LIMIT = 10.0
TYPES = ("ENQUEUED", "SUCCEEDED")

crossprobe = Kind("bench.crossprobe")
#: Probe jobs whose handler ran in this process.
ran_here: set[str] = set()


@crossprobe.phase("run")
async def _run(ctx: JobContext) -> None:
    ran_here.add(ctx.job_id)


class Receipts:
    """The client's event lines, read as they come: (stream, job id, type) → receipt time."""

    def __init__(self, client: LoadClient) -> None:
        self._client = client
        self.at: dict[tuple[int, str, str], float] = {}
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            line = await self._client.line(3600)
            if "stream" in line:
                self.at[(int(line["stream"]), str(line["job_id"]), str(line["type"]))] = float(line["at"])
                self._changed.set()

    async def wait(self, keys: Sequence[tuple[int, str, str]], limit: float) -> bool:
        """True once every key has arrived, False after `limit` seconds."""
        deadline = time.perf_counter() + limit
        while not all(key in self.at for key in keys):
            if self._task.done():
                self._task.result()  # the client failed: say why
                raise Failed("the watch client stopped")
            left = deadline - time.perf_counter()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return True

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Failed):
            await self._task


async def measure(run: Run) -> None:
    s = run.settings
    if not s.postgres:
        raise Failed("crosswatch needs --store postgres (two servers on one database)")
    db = await run.db("crosswatch")
    b = make_app(s, db, registry=Registry([noop, sleep, crossprobe]))
    committed: dict[tuple[str, str], float] = {}

    def published(events: Sequence[Event]) -> None:
        for event in events:
            if event.kind == crossprobe.name and event.type.name in TYPES:
                committed.setdefault((event.job_id, event.type.name), b.writer.last_commit_at)

    b.hub.add_listener(published)
    ran_here.clear()
    await start_app(b)
    try:
        async with Replica(s, db, name="replica A", args=["--handlers", __name__]) as a:
            spec = {"mode": "events", "targets": [a.target, f"127.0.0.1:{b.port}"], "kinds": [crossprobe.name],
                    "types": list(TYPES), "timeout": 600}
            async with LoadClient(spec) as client:
                await client.line(30)  # ready: the calls are made, not yet known to be live
                receipts = Receipts(client)
                try:
                    samples = await _probe(run, b, receipts, committed)
                finally:
                    await receipts.close()
                    await client.close(kill=True)
            warnings = a.warnings
    finally:
        await stop_app(b)
    _report(run, samples, warnings)


async def _enqueue(app: Any) -> str:
    (result,) = await app.service.enqueue([NewJob(QUEUE, crossprobe.name, b"", 5, time.time(), 1, 0.0, ("run",))])
    return str(result.job.id)


async def _probe(run: Run, b: Any, receipts: Receipts,
                 committed: dict[tuple[str, str], float]) -> dict[str, Any]:
    for attempt in range(WARMUP_TRIES + 1):
        if attempt == WARMUP_TRIES:
            raise Failed(f"the watcher on replica A saw none of {WARMUP_TRIES} probes enqueued on B "
                         "(are events of one replica published to the watchers of another?)")
        job = await _enqueue(b)
        if await receipts.wait([(0, job, "SUCCEEDED"), (1, job, "SUCCEEDED")], 1.0):
            break
    cross: dict[str, list[float]] = {t: [] for t in TYPES}
    local: dict[str, list[float]] = {t: [] for t in TYPES}
    ran_on_a = 0
    for _ in range(run.settings.watch_samples):
        await asyncio.sleep(random.uniform(0, 0.02))
        job = await _enqueue(b)
        keys = [(stream, job, t) for stream in (0, 1) for t in TYPES]
        if not await receipts.wait(keys, PROBE_LIMIT):
            missing = [f"{'AB'[k[0]]}:{k[2]}" for k in keys if k not in receipts.at]
            raise Failed(f"probe {job}: no {', '.join(missing)} within {PROBE_LIMIT:g} s")
        await b.executor.wait_idle()
        for t in TYPES:
            if t == "SUCCEEDED" and job not in ran_here:
                ran_on_a += 1
                continue
            if (job, t) not in committed:
                raise Failed(f"replica B published no {t} for probe {job}")
            cross[t].append((receipts.at[(0, job, t)] - committed[(job, t)]) * 1000)
            local[t].append((receipts.at[(1, job, t)] - committed[(job, t)]) * 1000)
    return {"cross": cross, "local": local, "ran_on_a": ran_on_a}


def _report(run: Run, samples: dict[str, Any], warnings: list[str]) -> None:
    cross = [x for values in samples["cross"].values() for x in values]
    local = [x for values in samples["local"].values() for x in values]
    per_type = {t: {"samples": len(v), "p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99),
                    "local_p50_ms": percentile(samples["local"][t], 0.5)}
                for t, v in samples["cross"].items()}
    extra = {"samples": len(cross), "probes": run.settings.watch_samples, "succeeded_on_a": samples["ran_on_a"],
             "mean_ms": statistics.fmean(cross), "max_ms": max(cross), "per_type": per_type,
             "replica_a_warnings": warnings[:10]}
    run.add(Figure("crosswatch_p50", "Cross-replica watch p50, commit on B → A", "ms", percentile(cross, 0.5),
                   percentile(local, 0.5), "watcher on B itself, p50", extra=extra))
    run.add(Figure("crosswatch_p99", "Cross-replica watch p99, commit on B → A", "ms", percentile(cross, 0.99),
                   percentile(local, 0.99), "watcher on B itself, p99", (Target(TARGET_P99_MS, at_most=True),),
                   extra={"max_ms": max(cross), "local_max_ms": max(local),
                          "over_target": sum(1 for x in cross if x > TARGET_P99_MS),
                          "slowest_ms": sorted(cross)[-10:]}))
