"""Remote workers: drain throughput with one and two `jobwire worker` processes (default slots)
against the in-process drain measured the same way in the same run, and pickup latency with an idle
remote worker.

Each drain starts the server (and its workers, waiting until each is connected), enqueues
`drain_jobs` noop jobs in-process in batches of 1,000 as fast as the writer takes them, and runs from
the first enqueue to the last SUCCEEDED event (a hub listener): the in-process figure uses the
built-in `noop` kind, the remote ones `bench.remote-noop` (bench/remote_kinds.py) on the workers.
Rounds alternate the order of the three drains; medians over the rounds.

Pickup: a probe job is enqueued while the worker is idle; its handler returns the time it started
(`time.perf_counter`, CLOCK_MONOTONIC on Linux: one clock for every process), compared with when the
commit that carried the enqueue ended (`writer.last_commit_at`, the same clock).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence

from jobwire_server.app import App
from jobwire_server.domain.models import Event, NewJob
from jobwire_server.domain.states import EventType

from bench.common import ROOT, Failed, Figure, Run, Target, bounded, make_app, median, percentile, start_app, stop_app

REMOTE_SHARE = 0.5
TWO_WORKERS = 2.0
PICKUP_P50_MS = 2.0
PICKUP_P99_MS = 5.0
BATCH = 1000
NOOP, PROBE = "bench.remote-noop", "bench.remote-probe"


class WorkerProcess:
    """`jobwire worker --handlers bench.remote_kinds` in its own process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, target: str, name: str) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobwire.cli", "worker", "--target", target, "--handlers", "bench.remote_kinds",
            "--worker-id", name, "--drain-timeout", "2", cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        worker = cls(process)
        await bounded(worker._connected(), 30, f"worker {name} connecting")
        return worker

    async def _connected(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            if b"connected to" in line:
                asyncio.get_running_loop().create_task(self._drain_stderr())
                return
        raise Failed(f"worker exited ({await self.process.wait()}) before connecting")

    async def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        async for _ in self.process.stderr:
            pass

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class Span:
    """From the first enqueue to the `jobs`-th SUCCEEDED event, as the hub publishes them."""

    def __init__(self, app: App, jobs: int) -> None:
        self.jobs, self.done, self.last_at = jobs, 0, 0.0
        self.finished = asyncio.Event()
        app.hub.add_listener(self._published)

    def _published(self, events: Sequence[Event]) -> None:
        done = sum(1 for event in events if event.type is EventType.SUCCEEDED)
        if done:
            self.done += done
            self.last_at = time.perf_counter()
            if self.done >= self.jobs:
                self.finished.set()


async def _drain(run: Run, kind: str, workers: int) -> float:
    s = run.settings
    app = make_app(s, await run.db(f"remote-drain-{workers}"))
    span = Span(app, s.drain_jobs)
    await start_app(app)
    started: list[WorkerProcess] = []
    try:
        for number in range(workers):
            started.append(await WorkerProcess.start(f"127.0.0.1:{app.port}", f"bench-{number}"))
        began = time.perf_counter()
        now = time.time()
        for first in range(0, s.drain_jobs, BATCH):
            count = min(BATCH, s.drain_jobs - first)
            await app.service.enqueue([NewJob("default", kind, b"x", 5, now, 1, 0.0, ("run",))] * count)
        await bounded(span.finished.wait(), 60 + s.drain_jobs / 200, f"{span.done} of {s.drain_jobs} jobs drained")
        return s.drain_jobs / (span.last_at - began)
    finally:
        for worker in started:
            await worker.stop()
        await stop_app(app)


async def _pickup(run: Run) -> list[float]:
    s = run.settings
    app = make_app(s, await run.db("remote-pickup"))
    committed: dict[str, float] = {}
    results: dict[str, bytes] = {}
    finished = asyncio.Event()

    def published(events: Sequence[Event]) -> None:
        for event in events:
            if event.kind != PROBE:
                continue
            if event.type is EventType.ENQUEUED:
                committed[event.job_id] = app.writer.last_commit_at
            elif event.type is EventType.SUCCEEDED and event.job is not None:
                results[event.job_id] = event.job.phases[0].result
                finished.set()

    app.hub.add_listener(published)
    await start_app(app)
    worker = None
    samples: list[float] = []
    try:
        worker = await WorkerProcess.start(f"127.0.0.1:{app.port}", "bench-pickup")
        for sample in range(s.pickup_samples + 10):
            finished.clear()
            (result,) = await app.service.enqueue([NewJob("default", PROBE, b"", 5, time.time(), 1, 0.0, ("run",))])
            await bounded(finished.wait(), 5, "probe job finish")
            job_id = result.job.id
            if sample >= 10:  # the first few warm both sides up
                samples.append((float(results[job_id]) - committed[job_id]) * 1000)
    finally:
        if worker is not None:
            await worker.stop()
        await stop_app(app)
    return samples


async def measure(run: Run) -> None:
    s = run.settings
    local: list[float] = []
    one: list[float] = []
    two: list[float] = []
    drains = [(local, "noop", 0), (one, NOOP, 1), (two, NOOP, 2)]
    for number in range(s.drain_rounds):
        for rates, kind, workers in drains if number % 2 == 0 else drains[::-1]:
            rates.append(await _drain(run, kind, workers))
    note = f"median of {s.drain_rounds}" if s.drain_rounds > 1 else ""
    run.add(Figure("remote_drain_1", f"Remote drain of {s.drain_jobs:,} noop jobs, 1 worker process", "jobs/s",
                   median(one), median(local), "in-process drain, same procedure", (Target(REMOTE_SHARE,
                   of_floor=True),), note=note, extra={"rounds": [round(r) for r in one],
                                                       "floor_rounds": [round(r) for r in local]}))
    run.add(Figure("remote_drain_2", "  the same with 2 worker processes", "jobs/s", median(two), median(one),
                   "1 worker process, above", (Target(TWO_WORKERS, of_floor=True),), note=note,
                   extra={"rounds": [round(r) for r in two]}))
    echo = await run.echo(1)
    pickup = await _pickup(run)
    extra = {"samples": len(pickup), "mean_ms": statistics.fmean(pickup), "max_ms": max(pickup)}
    run.add(Figure("remote_pickup_p50", "Pickup with an idle remote worker p50, commit → handler", "ms",
                   percentile(pickup, 0.5), echo["p50_ms"], "gRPC echo round trip p50",
                   (Target(PICKUP_P50_MS, at_most=True),), extra=extra))
    run.add(Figure("remote_pickup_p99", "Pickup with an idle remote worker p99", "ms", percentile(pickup, 0.99),
                   echo["p50_ms"], "gRPC echo round trip p50", (Target(PICKUP_P99_MS, at_most=True),)))

