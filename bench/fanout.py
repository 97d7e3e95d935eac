"""Watch fan-out: N WatchJob streams on one job, one event for all of them at once.

The job is enqueued in-process, SCHEDULED an hour ahead, so nothing happens to it until the bench
cancels it. The load client opens the streams over a few connections and waits for each stream's
SNAPSHOT; the server's RSS (VmRSS of this process) is read before and after, and the difference
divided by N is the memory per stream. Then the job is cancelled through the service: one
CANCELLED event for every stream. Delivery latency runs from that commit
(`app.writer.last_commit_at`, read when the hub publishes the event) to each stream's receipt in
the client (perf_counter is CLOCK_MONOTONIC, shared by both processes).

The floor is the same client against the echo server's Watch, which holds N streams and sends
each the same bytes at once (the CANCELLED message the real server sent): what holding and
waking N grpc.aio streams costs with nothing else in the way.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from jobwire_server.domain.models import Event, NewJob
from jobwire_server.domain.states import EventType

from bench.common import Failed, Figure, LoadClient, Run, Target, make_app, percentile, rss_bytes, start_app, stop_app
from bench.echo import EchoServer

TARGET_KIB = 50.0
TARGET_P99_MS = 100.0


def _open_limit(streams: int) -> float:
    return 60 + streams / 100


async def _watch(run: Run, port: int, method: str, job_id: str, streams: int, trigger: Callable[[], Awaitable[float]],
                 opened: Callable[[], int]) -> tuple[dict[str, Any], dict[str, Any], int, int]:
    """Open the streams, call `opened()` (→ subscribers the server sees), `trigger()` (→ the perf
    counter the event left at), collect the receipts. (ready line, result, rss before, rss after)."""
    channels = max(1, math.ceil(streams / run.settings.streams_per_channel))
    gc.collect()
    before = rss_bytes()
    spec = {"mode": "watch", "method": method, "target": f"127.0.0.1:{port}", "job_id": job_id,
            "streams": streams, "channels": channels, "timeout": _open_limit(streams)}
    async with LoadClient(spec) as client:
        ready = await client.line(_open_limit(streams) + 10)
        seen = opened()
        after = rss_bytes()
        if ready["errors"] or seen != streams:
            raise Failed(f"{method}: {seen} of {streams} streams open on the server, client errors {ready['errors']}")
        sent_at = await trigger()
        result = await client.line(_open_limit(streams) + 10)
    result["sent_at"] = sent_at
    result["open_seconds"] = ready["open_seconds"]
    return ready, result, before, after


async def _real(run: Run, streams: int) -> dict[str, Any]:
    s = run.settings
    per_channel = s.streams_per_channel
    app = make_app(s, await run.db(f"fanout-{streams}"), max_concurrent_streams=2 * per_channel,
                   max_watch_streams=streams + 100)
    commit: dict[str, float] = {}

    def published(events: Sequence[Event]) -> None:
        for event in events:
            if event.type is EventType.CANCELLED:
                commit[event.job_id] = app.writer.last_commit_at

    app.hub.add_listener(published)
    await start_app(app)
    try:
        (result,) = await app.service.enqueue(
            [NewJob("default", "noop", b"x", 5, time.time() + 3600, 1, 0.0, ("run",))])
        job_id = result.job.id

        async def cancel() -> float:
            await app.service.cancel(job_id, "fan-out")
            return commit[job_id]

        _, out, before, after = await _watch(run, app.port, "watch_job", job_id, streams, cancel,
                                              lambda: app.hub.subscriber_count)
    finally:
        await stop_app(app)
    return {**out, "rss_before": before, "rss_after": after}


async def _floor(run: Run, streams: int, message: bytes) -> dict[str, Any]:
    async with EchoServer(max_concurrent_streams=2 * run.settings.streams_per_channel) as server:
        server.message = message

        async def fire() -> float:
            server.fire()
            return server.fired_at

        _, out, before, after = await _watch(run, server.port, "echo_watch", "floor", streams, fire,
                                              lambda: server.streams)
    return {**out, "rss_before": before, "rss_after": after}


def _summary(out: dict[str, Any], streams: int) -> dict[str, float]:
    latencies = [(t - out["sent_at"]) * 1000 for t in out["receipts"]]
    if len(latencies) != streams or out["errors"]:
        raise Failed(f"{len(latencies)} of {streams} streams got the event; client errors {out['errors']}")
    return {"p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99), "max_ms": max(latencies),
            "kib_per_stream": (out["rss_after"] - out["rss_before"]) / streams / 1024,
            "open_seconds": out["open_seconds"]}


async def measure(run: Run) -> None:
    for streams in run.settings.fanout:
        real_out = await _real(run, streams)
        real = _summary(real_out, streams)
        floor = _summary(await _floor(run, streams, bytes.fromhex(real_out["sample"])), streams)
        big = streams >= 10_000
        label = f"Fan-out, {streams:,} WatchJob streams:"
        run.add(Figure(f"fanout_{streams}_p50", f"{label} delivery p50", "ms", real["p50_ms"],
                       floor["p50_ms"], "grpc.aio streams, same bytes",
                       extra={"open_seconds": real["open_seconds"], "floor_open_seconds": floor["open_seconds"]}))
        run.add(Figure(f"fanout_{streams}_p99", f"{label} delivery p99", "ms", real["p99_ms"],
                       floor["p99_ms"], "grpc.aio streams, same bytes",
                       (Target(TARGET_P99_MS, at_most=True),) if big else (),
                       extra={"max_ms": real["max_ms"], "floor_max_ms": floor["max_ms"]}))
        run.add(Figure(f"fanout_{streams}_memory", f"{label} memory/stream", "KiB",
                       real["kib_per_stream"], floor["kib_per_stream"], "grpc.aio streams, same bytes",
                       (Target(TARGET_KIB, at_most=True),) if big else ()))
