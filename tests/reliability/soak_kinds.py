"""Handler kinds for the soak (``make soak``), loaded by its server with ``--handlers``. Each kind
gives the load one kind of path through the engine; the module stays light (asyncio only)."""

from __future__ import annotations

import asyncio

from jobwire_server.handlers import JobContext, Kind, PermanentError, RetryPolicy

#: Two short phases with progress: the bulk of the load.
quick = Kind("soak.quick", queue="soak", max_attempts=3)
#: Fails its first attempt, succeeds on the next: RETRY_SCHEDULED and a second attempt.
flaky = Kind("soak.flaky", queue="soak", max_attempts=3, retry=RetryPolicy(base_delay=0.2, max_delay=0.5))
#: Fails for good: FAILED jobs for the soak to retry.
doomed = Kind("soak.doomed", queue="soak", max_attempts=1)
#: Runs long enough to be cancelled while RUNNING.
slow = Kind("soak.slow", queue="soak", max_attempts=1, timeout=30)


async def _work(seconds: float) -> None:
    await asyncio.sleep(seconds)  # sleep-ok: the simulated work of a phase


@quick.phase("fetch")
async def quick_fetch(ctx: JobContext) -> bytes:
    await _work(0.01)
    await ctx.progress(50, "half")
    await _work(0.01)
    return b"fetched"


@quick.phase("store")
async def quick_store(ctx: JobContext) -> bytes:
    await _work(0.01)
    return ctx.payload


@flaky.phase("run")
async def flaky_run(ctx: JobContext) -> bytes:
    await _work(0.01)
    if ctx.attempt == 1:
        raise RuntimeError("first attempts of soak.flaky fail")
    return b"second time lucky"


@doomed.phase("run")
async def doomed_run(ctx: JobContext) -> bytes:
    await _work(0.01)
    raise PermanentError("soak.doomed always fails")


@slow.phase("run")
async def slow_run(ctx: JobContext) -> bytes:
    await _work(1.5)
    return b"slow"
