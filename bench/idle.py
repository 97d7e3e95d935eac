"""Idle CPU: the App started and left alone; CPU time of this process (every thread) over wall
time, as % of one core. The floor is the echo server left alone as long."""

from __future__ import annotations

import asyncio
import time

from bench.common import Figure, Run, Target, make_app, start_app, stop_app
from bench.echo import EchoServer

TARGET_PERCENT = 1.0
SETTLE = 0.5


async def _idle_percent(seconds: float) -> float:
    await asyncio.sleep(SETTLE)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    return (time.process_time() - cpu) / (time.perf_counter() - wall) * 100


async def measure(run: Run) -> None:
    s = run.settings
    app = make_app(s, await run.db("idle"))
    await start_app(app)
    try:
        busy = await _idle_percent(s.idle_seconds)
    finally:
        await stop_app(app)
    async with EchoServer():
        floor = await _idle_percent(s.idle_seconds)
    run.add(Figure("idle_cpu", f"Idle server CPU ({s.idle_seconds:g} s)", "% core", busy, floor,
                   "idle gRPC echo server", (Target(TARGET_PERCENT, at_most=True),)))
