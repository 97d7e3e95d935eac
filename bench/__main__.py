"""`make bench`: enqueue/s, drain jobs/s, pickup latency and watch fan-out latency.

Each benchmark runs the real service (the App with its gRPC server, SQLite in a temporary
directory, synchronous=FULL unless told otherwise). Results are printed and written to
bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from grpc import aio
from jobwire.v1 import jobwire_pb2, jobwire_pb2_grpc
from jobwire_server.app import App
from jobwire_server.config import build_config
from jobwire_server.domain.models import NewJob
from jobwire_server.handlers.builtin import noop, sleep
from jobwire_server.handlers.kind import JobContext, Kind
from jobwire_server.handlers.registry import Registry
from jobwire_server.store.sqlite import SqliteJobStore

RESULTS = Path(__file__).parent / "results"
TARGETS = {"drain_jobs_per_s": 5000.0, "pickup_p50_ms": 2.0, "pickup_p99_ms": 10.0}


def _app(directory: str, **settings: Any) -> App:
    config = build_config({"db": f"{directory}/bench.db", "listen": "127.0.0.1:0", **settings})
    return App(config, registry=Registry([noop, sleep, _probe]))


_probe = Kind("bench.probe")
_started: dict[str, float] = {}
_started_signal: asyncio.Event | None = None


@_probe.phase("run")
async def _probe_run(ctx: JobContext) -> None:
    _started[ctx.job_id] = time.perf_counter()
    if _started_signal is not None:
        _started_signal.set()


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _until(predicate: Callable[[], Awaitable[bool]], limit: float) -> None:
    """Harness-side check every 20 ms (the service under test is event-driven)."""
    deadline = time.monotonic() + limit
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        await asyncio.sleep(0.02)


async def bench_drain(jobs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        store = SqliteJobStore(f"{directory}/bench.db")
        await store.open()
        now = time.time()
        batch = [NewJob("default", "noop", b"x", 5, now, 3, 0.0, ("run",)) for _ in range(1000)]
        for _ in range(jobs // 1000):
            await store.insert_jobs(batch, now, 0)
        await store.close()
        app = _app(directory)
        started = time.perf_counter()
        await app.start()

        async def done() -> bool:
            (stats,) = await app.service.queue_stats("default")
            return stats.counts.get(_succeeded(), 0) == jobs

        await _until(done, limit=300)
        elapsed = time.perf_counter() - started
        await app.stop()
    return {"drain_jobs": jobs, "drain_seconds": round(elapsed, 3), "drain_jobs_per_s": round(jobs / elapsed, 1)}


def _succeeded() -> Any:
    from jobwire_server.domain.states import JobState  # noqa: PLC0415

    return JobState.SUCCEEDED


async def bench_pickup(samples: int) -> dict[str, float]:
    global _started_signal
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as directory:
        app = _app(directory)
        await app.start()
        now = time.time()
        for _ in range(samples):
            _started_signal = asyncio.Event()
            (result,) = await app.service.enqueue([NewJob("default", "bench.probe", b"", 5, now, 1, 0.0, ("run",))])
            committed = time.perf_counter()
            await asyncio.wait_for(_started_signal.wait(), 5)
            latencies.append((_started[result.job.id] - committed) * 1000)
            await app.executor.wait_idle()
        await app.stop()
    return {"pickup_samples": samples, "pickup_p50_ms": round(_percentile(latencies, 0.5), 3),
            "pickup_p99_ms": round(_percentile(latencies, 0.99), 3),
            "pickup_mean_ms": round(statistics.fmean(latencies), 3)}


async def bench_enqueue(total: int, clients: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        app = _app(directory, concurrency=1, queue_concurrency={"held": 1})
        await app.start()
        await app.dispatcher.stop_claiming()  # measure enqueue alone
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = jobwire_pb2_grpc.JobServiceStub(channel)

            async def worker(count: int) -> None:
                for _ in range(count):
                    await stub.Enqueue(jobwire_pb2.EnqueueRequest(kind="noop", payload=b"x"))

            started = time.perf_counter()
            await asyncio.gather(*(worker(total // clients) for _ in range(clients)))
            single = (total // clients * clients) / (time.perf_counter() - started)

            batch = jobwire_pb2.EnqueueBatchRequest(
                requests=[jobwire_pb2.EnqueueRequest(kind="noop", payload=b"x") for _ in range(1000)])
            started = time.perf_counter()
            for _ in range(10):
                await stub.EnqueueBatch(batch)
            batched = 10_000 / (time.perf_counter() - started)
        await app.stop()
    return {"enqueue_single_per_s": round(single, 1), "enqueue_clients": clients,
            "enqueue_batch_per_s": round(batched, 1)}


async def bench_fanout(watchers: int, events: int) -> dict[str, float]:
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as directory:
        app = _app(directory)
        await app.start()
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = jobwire_pb2_grpc.JobServiceStub(channel)
            received: list[asyncio.Queue[float]] = [asyncio.Queue() for _ in range(watchers)]
            request = jobwire_pb2.WatchEventsRequest(types=[jobwire_pb2.EVENT_TYPE_ENQUEUED])

            async def watch(inbox: asyncio.Queue[float]) -> None:
                async for _ in stub.WatchEvents(request):
                    inbox.put_nowait(time.perf_counter())

            tasks = [asyncio.create_task(watch(q)) for q in received]
            while app.hub.subscriber_count < watchers:
                await app.hub.changed.wait()
            now = time.time()
            for _ in range(events):
                await app.service.enqueue([NewJob("default", "sleep", b'{"seconds": 0}', 5, now + 3600, 1, 0.0,
                                                  ("step-1",))])
                committed = time.perf_counter()
                arrivals = [await q.get() for q in received]
                latencies.append((max(arrivals) - committed) * 1000)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await app.stop()
    return {"fanout_watchers": watchers, "fanout_p50_ms": round(_percentile(latencies, 0.5), 3),
            "fanout_p99_ms": round(_percentile(latencies, 0.99), 3)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results |= await bench_enqueue(args.enqueue, args.clients)
    results |= await bench_drain(args.jobs)
    results |= await bench_pickup(args.samples)
    results |= await bench_fanout(args.watchers, args.fanout_events)
    return results


def _report(results: dict[str, Any]) -> None:
    print(f"{'metric':<24}{'value':>14}  target")
    for key, value in results.items():
        if isinstance(value, int | float):
            target = TARGETS.get(key)
            verdict = ""
            if target is not None:
                ok = value >= target if key.endswith("per_s") else value <= target
                verdict = f"{'≥' if key.endswith('per_s') else '≤'} {target:g}  {'PASS' if ok else 'MISS'}"
            print(f"{key:<24}{value:>14}  {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000, help="noop jobs to drain (default 20000)")
    parser.add_argument("--samples", type=int, default=500, help="pickup latency samples (default 500)")
    parser.add_argument("--enqueue", type=int, default=4000, help="single Enqueue calls (default 4000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent Enqueue callers (default 16)")
    parser.add_argument("--watchers", type=int, default=100, help="WatchEvents streams for fan-out (default 100)")
    parser.add_argument("--fanout-events", type=int, default=200, help="events for fan-out (default 200)")
    outcome = asyncio.run(main(parser.parse_args()))
    _report(outcome)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(outcome, indent=2) + "\n")
