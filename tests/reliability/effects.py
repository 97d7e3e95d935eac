"""A handler module for the crash loop: every phase appends one line of JSON to the effects log
named by ``JOBWIRE_EFFECTS_LOG`` and fsyncs it before returning, so the log records what really
ran, whatever the server says afterwards. Loaded by the server with ``--handlers``."""

from __future__ import annotations

import asyncio
import json
import os

from jobwire_server.handlers import JobContext, Kind

effects = Kind("rel.effects", max_attempts=20, timeout=30)


def _append(ctx: JobContext) -> None:
    line = json.dumps({"job": ctx.job_id, "phase": ctx.phase, "attempt": ctx.attempt, "pid": os.getpid()})
    fd = os.open(os.environ["JOBWIRE_EFFECTS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


async def _phase(ctx: JobContext) -> bytes:
    await asyncio.sleep(0.01)  # sleep-ok: the simulated work a kill can interrupt
    await asyncio.to_thread(_append, ctx)
    return ctx.phase.encode()


@effects.phase("fetch")
async def fetch(ctx: JobContext) -> bytes:
    return await _phase(ctx)


@effects.phase("transform")
async def transform(ctx: JobContext) -> bytes:
    return await _phase(ctx)


@effects.phase("store")
async def store(ctx: JobContext) -> bytes:
    return await _phase(ctx)
