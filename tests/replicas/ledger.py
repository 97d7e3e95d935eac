"""A handler module for the replica tests, loaded by each `jobwire serve` with ``--handlers``.

Every phase run appends lines of JSON to a ledger outside the service: one when it starts, one
when it ends (or is cancelled), each with the job, its attempt, the phase and the replica that
ran it. ``JOBWIRE_LEDGER`` names the directory and ``JOBWIRE_REPLICA`` the replica (one file per
replica, so processes never share a file). The ledger records what really ran, whatever the
service says afterwards; a line is written with one ``write`` before the phase goes on, so a
SIGKILL loses nothing already written.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from jobwire_server.handlers import JobContext, Kind

#: Seconds each phase of `rep.ledger` works (short: thousands of jobs run in a test).
WORK = 0.005
#: Long enough to count as "until cancelled or killed" in any test.
FOREVER = 3600.0

_fd: int | None = None


def replica() -> str:
    return os.environ.get("JOBWIRE_REPLICA", "?")


def record(ctx: JobContext, event: str, **extra: object) -> None:
    """Append one line to this replica's ledger file."""
    global _fd
    if _fd is None:
        path = os.path.join(os.environ["JOBWIRE_LEDGER"], f"{replica()}.jsonl")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = {"job": ctx.job_id, "attempt": ctx.attempt, "phase": ctx.phase, "replica": replica(), "event": event,
            "time": time.time(), **extra}
    os.write(_fd, json.dumps(line).encode() + b"\n")


async def _work(ctx: JobContext, seconds: float) -> bytes:
    record(ctx, "start")
    await asyncio.sleep(seconds)  # sleep-ok: the simulated work a kill or a stop can interrupt
    record(ctx, "end")
    return f"{ctx.phase}@{replica()}".encode()


async def _until_cancelled(ctx: JobContext) -> bytes:
    record(ctx, "start")
    try:
        await asyncio.sleep(FOREVER)  # sleep-ok: held until the test cancels the job or kills the replica
    except asyncio.CancelledError:
        record(ctx, "cancelled")
        raise
    record(ctx, "end")
    return b""


# Three short phases: the load of the proof with replicas.
ledger = Kind("rep.ledger", max_attempts=20, timeout=30)


@ledger.phase("fetch")
async def fetch(ctx: JobContext) -> bytes:
    return await _work(ctx, WORK)


@ledger.phase("transform")
async def transform(ctx: JobContext) -> bytes:
    return await _work(ctx, WORK)


@ledger.phase("store")
async def store(ctx: JobContext) -> bytes:
    return await _work(ctx, WORK)


# Runs until cancelled (cancel tests), and keeps a replica's slot busy.
hold = Kind("rep.hold", max_attempts=1)


@hold.phase("hold")
async def hold_phase(ctx: JobContext) -> bytes:
    return await _until_cancelled(ctx)


# Its first attempt never ends (the replica running it is killed); later attempts finish at once.
sticky = Kind("rep.sticky", max_attempts=5)


@sticky.phase("work")
async def sticky_work(ctx: JobContext) -> bytes:
    if ctx.attempt == 1:
        return await _until_cancelled(ctx)
    return await _work(ctx, 0.0)


# Three phases that report progress as they go: many events to watch, spread over a while.
steps = Kind("rep.steps", max_attempts=1)
STEP_REPORTS = 5
STEP_SECONDS = 0.02


async def _steps(ctx: JobContext) -> bytes:
    record(ctx, "start")
    for n in range(1, STEP_REPORTS + 1):
        await asyncio.sleep(STEP_SECONDS)  # sleep-ok: simulated work between progress reports
        await ctx.progress(100.0 * n / STEP_REPORTS, f"{ctx.phase} {n}/{STEP_REPORTS}")
    record(ctx, "end")
    return ctx.phase.encode()


@steps.phase("one")
async def step_one(ctx: JobContext) -> bytes:
    return await _steps(ctx)


@steps.phase("two")
async def step_two(ctx: JobContext) -> bytes:
    return await _steps(ctx)


@steps.phase("three")
async def step_three(ctx: JobContext) -> bytes:
    return await _steps(ctx)
