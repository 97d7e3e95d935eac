"""Kinds the remote worker processes of `bench/remote.py` run (`jobwire worker --handlers
bench.remote_kinds`): only the client package's handler API."""

from __future__ import annotations

import time

from jobwire.worker import JobContext, Kind

noop = Kind("bench.remote-noop", max_attempts=1)


@noop.phase("run")
async def noop_run(ctx: JobContext) -> bytes:
    return ctx.payload


probe = Kind("bench.remote-probe", max_attempts=1)


@probe.phase("run")
async def probe_run(ctx: JobContext) -> str:
    """When the handler started, on the machine's monotonic clock (`time.perf_counter` is
    CLOCK_MONOTONIC on Linux, the same clock in every process), for the pickup latency."""
    return repr(time.perf_counter())
