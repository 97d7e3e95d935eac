"""Built-in kinds, on by default: `noop` (result = payload) and `sleep` (timed phases with progress)."""

from __future__ import annotations

import asyncio
from typing import Any

from jobwire_server.handlers.kind import JobContext, Kind, MalformedPayload, PhaseFunction

MAX_SLEEP_PHASES = 100
MAX_SLEEP_SECONDS = 86_400.0
PROGRESS_TICKS = 4

noop = Kind("noop")


@noop.phase("run")
async def run_noop(ctx: JobContext) -> bytes:
    return ctx.payload


def _sleep_plan(ctx: JobContext) -> tuple[float, int]:
    spec: Any = ctx.json()
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise MalformedPayload('sleep payload must be a JSON object like {"seconds": 1, "phases": 2}')
    seconds, phases = spec.get("seconds", 1), spec.get("phases", 1)
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds <= MAX_SLEEP_SECONDS:
        raise MalformedPayload(f"sleep: seconds must be a number within 0–{MAX_SLEEP_SECONDS:g}")
    if not isinstance(phases, int) or isinstance(phases, bool) or not 1 <= phases <= MAX_SLEEP_PHASES:
        raise MalformedPayload(f"sleep: phases must be an integer within 1–{MAX_SLEEP_PHASES}")
    return float(seconds), phases


class SleepKind(Kind):
    """`sleep` has as many phases as its payload asks for, so its phase list depends on the payload."""

    def phases_for(self, payload: bytes) -> tuple[str, ...]:
        """step-1…step-n; a malformed payload gets one phase, which then fails permanently."""
        ctx = JobContext(job_id="", kind=self.name, queue=self.queue, attempt=0, payload=payload, labels={},
                         results={}, phase="", report=_ignore_progress)
        try:
            _, count = _sleep_plan(ctx)
        except MalformedPayload:
            count = 1
        return tuple(f"step-{i}" for i in range(1, count + 1))

    def function_for(self, phase_name: str) -> PhaseFunction | None:
        return run_sleep_step if phase_name.startswith("step-") else None


async def _ignore_progress(percent: float, message: str) -> None:
    del percent, message


sleep = SleepKind("sleep")


@sleep.phase("step")
async def run_sleep_step(ctx: JobContext) -> bytes:
    """Every step-N phase: sleep seconds/phases, reporting progress in a few ticks."""
    seconds, phases = _sleep_plan(ctx)
    share = seconds / phases
    for tick in range(1, PROGRESS_TICKS + 1):
        await asyncio.sleep(share / PROGRESS_TICKS)
        await ctx.progress(100.0 * tick / PROGRESS_TICKS, f"{ctx.phase}: {tick}/{PROGRESS_TICKS}")
    return ctx.phase.encode()
