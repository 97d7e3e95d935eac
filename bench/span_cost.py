"""CPU per job of the spans a traced noop job makes, beside the OpenTelemetry SDK's own minimum.

`python -m bench.span_cost [--jobs N] [--rounds R] [--profile ours|bare]`

Each variant runs N jobs' worth of spans in a loop on one asyncio task, with the drain bench's
provider (default sampler, a BatchSpanProcessor, an exporter that keeps nothing), and reports
CPU seconds per job (`time.process_time`, every thread: the export thread's share counts) minus
the same loop with no spans at all:

- `bare`: the SDK's floor, two `start_span` + `end` (the second a child of the first), no
  attributes, no context made current;
- `attributes`: the same two spans with every attribute, link and kind jobwire records, made
  with plain SDK calls (what the SDK charges for what users see);
- `ours`: what the executor does for one noop job with tracing on (engine/executor.py's
  `_run_traced` and `_run_phase_traced`, through telemetry.py: the job span, its phase span,
  the handler's task created with the phase span current, the end attributes).

`ours` minus `attributes` is jobwire's own glue; `attributes` minus `bare` is the SDK's work on
the attributes and link; `bare` is the SDK's floor for two spans.

Rounds alternate the variants; medians and spreads are printed. `--profile` runs one variant
under cProfile and prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable

from jobwire_server.domain.models import Job, Phase, evolve
from jobwire_server.domain.states import JobState
from jobwire_server.telemetry import (
    EndOnExit,
    end_job_span,
    end_phase_span,
    parse_traceparent,
    start_job_span,
    start_phase_span,
    task_in_span,
)
from opentelemetry.context import Context, attach, detach
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind, Tracer, set_span_in_context

from bench.drain import DropSpans

Loop = Callable[[Tracer, Job, int], Awaitable[None]]


async def _noop() -> bytes:
    return b""


async def no_spans(tracer: Tracer, job: Job, jobs: int) -> None:
    """The loop's own cost: the handler task of each job and nothing else."""
    for _ in range(jobs):
        await asyncio.ensure_future(_noop())


async def bare(tracer: Tracer, job: Job, jobs: int) -> None:
    """The SDK's minimum for two spans per job, the second a child of the first."""
    for _ in range(jobs):
        span = tracer.start_span("job noop")
        child = tracer.start_span("phase run", context=set_span_in_context(span))
        await asyncio.ensure_future(_noop())
        child.end()
        span.end()


async def attributes(tracer: Tracer, job: Job, jobs: int) -> None:
    """The spans, attributes and link of a noop job, with nothing of jobwire's in between."""
    parent = parse_traceparent(job.trace_parent)
    links = [Link(parent)] if parent is not None else None
    for _ in range(jobs):
        span = tracer.start_span("job noop", context=Context(), kind=SpanKind.CONSUMER, links=links, attributes={
            "jobwire.job.id": job.id, "jobwire.queue": job.queue, "jobwire.kind": job.kind,
            "jobwire.attempt": job.attempt, "messaging.system": "jobwire", "messaging.operation.type": "process",
            "messaging.operation.name": "process", "messaging.destination.name": job.queue,
            "messaging.message.id": job.id})
        child = tracer.start_span("phase run", context=set_span_in_context(span), attributes={
            "jobwire.job.id": job.id, "jobwire.queue": job.queue, "jobwire.kind": job.kind,
            "jobwire.attempt": job.attempt, "jobwire.phase": "run"})
        token = attach(set_span_in_context(child))
        task = asyncio.ensure_future(_noop())
        detach(token)
        await task
        child.set_attribute("jobwire.phase.outcome", "succeeded")
        child.end()
        span.set_attribute("jobwire.job.state", "succeeded")
        span.end()


async def ours(tracer: Tracer, job: Job, jobs: int) -> None:
    """The executor's spans of one noop job (a one-phase attempt that succeeds)."""
    done = evolve(job, state=JobState.SUCCEEDED)
    for _ in range(jobs):
        job_span = start_job_span(tracer, job)
        with EndOnExit(job_span):
            phase_span = start_phase_span(tracer, job, "run", job_span)
            with EndOnExit(phase_span):
                await task_in_span(phase_span, _noop())
                end_phase_span(phase_span, "succeeded")
            end_job_span(job_span, done)


VARIANTS: dict[str, Loop] = {"none": no_spans, "bare": bare, "attributes": attributes, "ours": ours}


def _job(trace_parent: str) -> Job:
    now = time.time()
    return Job("01900000-0000-7000-8000-000000000001", "default", "noop", b"x", 5, JobState.RUNNING, 3,
               (Phase("run"),), now, now, now, attempt=1, trace_parent=trace_parent)


def _provider() -> tuple[TracerProvider, DropSpans]:
    exporter = DropSpans()
    provider = TracerProvider()
    # Room for every span: a loop that never waits starves the export thread of the GIL, and a
    # full queue drops spans (less work, a lower figure).
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 20))
    return provider, exporter


def run_once(name: str, jobs: int, job: Job, profile: cProfile.Profile | None = None) -> float:
    """CPU seconds per job of one variant, its export thread's share included (flushed before the
    clock stops)."""
    provider, exporter = _provider()
    tracer = provider.get_tracer("jobwire_server")
    loop = asyncio.new_event_loop()
    try:
        started = time.process_time()
        if profile is not None:
            profile.enable()
        loop.run_until_complete(VARIANTS[name](tracer, job, jobs))
        provider.force_flush()
        if profile is not None:
            profile.disable()
        took = time.process_time() - started
    finally:
        loop.close()
        provider.shutdown()
    expected = (0 if name == "none" else 2) * jobs
    if exporter.spans != expected:
        raise SystemExit(f"{name}: {exporter.spans} spans exported, {expected} expected")
    return took / jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.span_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--linked", action="store_true", help="jobs carry an Enqueue traceparent (one link each)")
    parser.add_argument("--profile", choices=tuple(VARIANTS), help="profile one variant instead")
    args = parser.parse_args(argv)
    job = _job("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" if args.linked else "")
    if args.profile:
        profile = cProfile.Profile()
        run_once(args.profile, args.jobs, job, profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    run_once("ours", 2000, job)  # warm-up: imports, first spans
    per_job: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for number in range(args.rounds):
        for name in VARIANTS if number % 2 == 0 else reversed(VARIANTS):
            per_job[name].append(run_once(name, args.jobs, job))
    floor = statistics.median(per_job["none"])
    for name, values in per_job.items():
        spans = [1e6 * (v - floor) for v in values]
        print(f"{name:10} {1e6 * statistics.median(values):7.1f} µs/job CPU, spans alone "
              f"{statistics.median(spans):6.1f} µs/job (rounds {min(spans):.1f}–{max(spans):.1f})")
    median = {name: 1e6 * statistics.median(values) for name, values in per_job.items()}
    print(f"SDK floor {median['bare'] - median['none']:.1f} µs/job, SDK work on attributes and link "
          f"{median['attributes'] - median['bare']:.1f}, jobwire's own {median['ours'] - median['attributes']:.1f}")


if __name__ == "__main__":
    main()
