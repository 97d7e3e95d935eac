"""The worker pool and phase runner.

Each claimed job gets a runner task that runs its phases in order. A phase runs as its own task
so the runner can enforce the phase timeout, deliver a cancel request as ``CancelledError``, and
abandon a handler that ignores it after a grace period. Every outcome goes through the domain's
``decide`` and is written by the change writer, fenced by the attempt number: once a job has been
cancelled, rescued or interrupted, nothing a late handler returns is written.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobwire.worker.protocol import to_bytes
from opentelemetry.trace import Span, Tracer

from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import StorageError
from jobwire_server.domain.models import Job, JobError, evolve
from jobwire_server.domain.outcomes import Cancelled, Failed, Outcome, Succeeded, decide, failure_from_exception
from jobwire_server.domain.retry import RetryPolicy
from jobwire_server.domain.states import JobState
from jobwire_server.domain.transitions import JobChange, interrupt_by_shutdown, report_progress
from jobwire_server.engine.writer import Writer
from jobwire_server.handlers.kind import JobContext, Kind, PhaseFunction
from jobwire_server.handlers.registry import Registry
from jobwire_server.telemetry import (
    EndOnExit,
    end_job_span,
    end_phase_span,
    start_job_span,
    start_phase_span,
    task_in_span,
)

log = logging.getLogger("jobwire.executor")

DEFAULT_POLICY = RetryPolicy()


class _Interrupted:
    """The phase was stopped because the server is shutting down."""


@dataclass(eq=False)
class Running:
    """A job this process is running."""

    job: Job
    task: asyncio.Task[None] | None = None
    #: Set when the runner should stop the running phase (cancel request or shutdown).
    stopping: bool = False
    #: Resolved when the running phase ends, times out, or must stop.
    waiter: asyncio.Future[None] | None = None
    cancel_requested: bool = False
    shutdown: bool = False
    #: Its slot was given back (its final change committed); the runner is just returning.
    released: bool = False

    def stop(self) -> None:
        self.stopping = True
        self.wake()

    def wake(self, _: object = None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class Executor:
    def __init__(self, registry: Registry, writer: Writer, clock: Clock, *, concurrency: int,
                 queue_limits: dict[str, int], cancel_grace: float, on_slot_free: Callable[[], None],
                 tracer: Tracer | None = None) -> None:
        self._registry = registry
        #: None when tracing is off: then no span is ever made.
        self._tracer = tracer
        self._writer = writer
        self._clock = clock
        self.concurrency = concurrency
        self._queue_limits = dict(queue_limits)
        self._cancel_grace = cancel_grace
        self._on_slot_free = on_slot_free
        self._running: dict[str, Running] = {}
        self._busy = 0
        self._per_queue: dict[str, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ capacity

    def free_slots(self) -> int:
        return max(0, self.concurrency - self._busy)

    def queue_room(self) -> dict[str, int]:
        return {q: max(0, limit - self._per_queue.get(q, 0)) for q, limit in self._queue_limits.items()}

    def running_ids(self) -> list[str]:
        return list(self._running)

    # ------------------------------------------------------------------ control

    def start(self, job: Job) -> None:
        """Run a job the dispatcher just claimed."""
        entry = Running(job)
        if job.cancel_requested:  # asked to stop before this claim (e.g. across a shutdown): don't run it
            entry.cancel_requested = entry.stopping = True
        self._running[job.id] = entry
        self._busy += 1
        self._per_queue[job.queue] = self._per_queue.get(job.queue, 0) + 1
        self._idle.clear()
        entry.task = asyncio.create_task(self._run(entry), name=f"job-{job.id}")

    def release(self, job_id: str) -> None:
        """Give back the slot of a job whose final change has committed (its runner is exiting),
        so the commit that finished it can already claim its successor."""
        entry = self._running.get(job_id)
        if entry is not None:
            self._release(entry)

    def _release(self, entry: Running) -> bool:
        if entry.released:
            return False
        entry.released = True
        self._busy -= 1
        self._per_queue[entry.job.queue] -= 1
        return True

    def request_cancel(self, job_id: str, reason: str) -> bool:
        """Deliver a cancel request (already recorded in the store) to the running handler."""
        entry = self._running.get(job_id)
        if entry is None or entry.released:
            return False
        if entry.cancel_requested:
            return True  # delivered already (a request seen twice: notified, then at renewal)
        entry.cancel_requested = True
        entry.job = evolve(entry.job, cancel_requested=True, cancel_reason=reason)
        entry.stop()
        return True

    async def drain(self, budget: float) -> None:
        """Give running jobs `budget` seconds to finish, then interrupt the rest (back to the queue)."""
        tasks = [e.task for e in self._running.values() if e.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=budget)
        rest = list(self._running.values())
        for entry in rest:
            entry.shutdown = True
            entry.stop()
        tasks = [e.task for e in rest if e.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self._cancel_grace + 5.0)
        if self._running:
            log.warning("%d job runners did not stop; their leases will expire and the rescuer will requeue them",
                        len(self._running))

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # ------------------------------------------------------------------ running

    async def _run(self, entry: Running) -> None:
        try:
            if self._tracer is None:
                await self._run_phases(entry, None)
            else:
                await self._run_traced(entry, self._tracer)
        except StorageError as exc:
            log.warning("job %s: its outcome could not be written (%s); its lease will expire and it will be "
                        "retried", entry.job.id, exc.reason)
        except Exception:
            log.exception("runner of job %s crashed; its lease will expire and it will be retried", entry.job.id)
        finally:
            freed = self._release(entry)
            if self._running.get(entry.job.id) is entry:  # a retried job may already run again
                del self._running[entry.job.id]
            if not self._running:
                self._idle.set()
            if freed:
                self._on_slot_free()

    async def _run_traced(self, entry: Running, tracer: Tracer) -> None:
        span = start_job_span(tracer, entry.job)
        with EndOnExit(span):  # records an exception that crashes the runner
            await self._run_phases(entry, span)
            end_job_span(span, entry.job)

    async def _run_phases(self, entry: Running, job_span: Span | None) -> None:
        kind = self._registry.get(entry.job.kind)
        while entry.job.state is JobState.RUNNING:
            index = entry.job.next_phase
            if self._tracer is None or job_span is None:
                outcome = await self._run_phase(entry, kind, index)
            else:
                outcome = await self._run_phase_traced(entry, kind, index, self._tracer, job_span)
            committed = await self._writer.submit(self._change_for(entry, kind, index, outcome))
            if committed is None:
                log.info("job %s changed under attempt %d; outcome dropped", entry.job.id, entry.job.attempt)
                return
            entry.job = committed.job if not entry.cancel_requested else evolve(
                committed.job, cancel_requested=True, cancel_reason=entry.job.cancel_reason)
            if entry.job.state is JobState.RUNNING and (entry.cancel_requested or entry.shutdown):
                # A cancel or shutdown arrived while the phase boundary was being written.
                outcome = _Interrupted() if entry.shutdown and not entry.cancel_requested else Cancelled()
                index = entry.job.next_phase
                committed = await self._writer.submit(self._change_for(entry, kind, index, outcome))
                if committed is not None:
                    entry.job = committed.job
                return

    def _change_for(self, entry: Running, kind: Kind | None, index: int, outcome: Outcome | _Interrupted) -> JobChange:
        now = self._clock.now()
        job = entry.job
        if isinstance(outcome, _Interrupted):
            phase = job.phases[index].name if index < len(job.phases) else ""
            error = JobError("interrupted by server shutdown", "SHUTDOWN", True, phase, job.attempt, True, now)
            return interrupt_by_shutdown(job, error, now)
        return decide(job, index, outcome, now, kind.retry if kind is not None else DEFAULT_POLICY)

    async def _run_phase_traced(self, entry: Running, kind: Kind | None, index: int, tracer: Tracer,
                                job_span: Span) -> Outcome | _Interrupted:
        phase = entry.job.phases[index].name if index < len(entry.job.phases) else ""
        span = start_phase_span(tracer, entry.job, phase, job_span)
        # `_run_phase` creates the handler's task with this span current, so its spans nest here.
        with EndOnExit(span):
            outcome = await self._run_phase(entry, kind, index, span)
            if isinstance(outcome, Failed):
                end_phase_span(span, "failed", error_type=outcome.type, message=outcome.message)
            else:
                end_phase_span(span, _OUTCOME_NAMES[type(outcome)])
        return outcome

    async def _run_phase(self, entry: Running, kind: Kind | None, index: int,
                         span: Span | None = None) -> Outcome | _Interrupted:
        job = entry.job
        if kind is None:
            return Failed(f"no handler for kind {job.kind!r} on this server", "UNKNOWN_KIND", retryable=False)
        phase = job.phases[index]
        function = kind.function_for(phase.name)
        if function is None:
            return Failed(f"kind {job.kind!r} has no phase {phase.name!r}", "UNKNOWN_PHASE", retryable=False)
        if entry.stopping:
            return Cancelled() if entry.cancel_requested else _Interrupted()
        task = task_in_span(span, self._call(function, self._context(entry, index)))
        if await self._phase_ended(entry, task, job.timeout):
            return _outcome_of(task, entry, span)
        task.cancel()
        await asyncio.wait({task}, timeout=self._cancel_grace)
        if not task.done():
            log.warning("handler of job %s phase %s ignored cancellation for %.1fs; abandoned",
                        job.id, phase.name, self._cancel_grace)
            task.add_done_callback(_discard_result)
        if entry.cancel_requested:
            return Cancelled()
        if entry.shutdown:
            return _Interrupted()
        return Failed(f"phase {phase.name!r} exceeded its timeout of {job.timeout:g}s", "TIMEOUT", retryable=True)

    @staticmethod
    async def _phase_ended(entry: Running, task: asyncio.Future[bytes], limit: float) -> bool:
        """Wait until the phase ends (True), or times out or must stop (False). One future and
        callbacks rather than extra tasks: this runs for every phase of every job."""
        loop = asyncio.get_running_loop()
        entry.waiter = loop.create_future()
        task.add_done_callback(entry.wake)
        timer = loop.call_later(limit, entry.wake) if limit else None
        try:
            await entry.waiter
        finally:
            entry.waiter = None
            if timer is not None:
                timer.cancel()
        return task.done()

    def _context(self, entry: Running, index: int) -> JobContext:
        job = entry.job
        loop = asyncio.get_running_loop()

        async def report(percent: float, message: str) -> None:
            change = report_progress(entry.job, index, percent, message, self._clock.now())
            committed = await self._writer.submit(change)
            if committed is None:
                raise asyncio.CancelledError("job changed under this attempt")
            entry.job = committed.job if not entry.cancel_requested else evolve(
                committed.job, cancel_requested=True, cancel_reason=entry.job.cancel_reason)

        return JobContext(job_id=job.id, kind=job.kind, queue=job.queue, attempt=job.attempt, payload=job.payload,
                          labels=job.labels, results=job.results, phase=job.phases[index].name, report=report,
                          loop=loop)

    @staticmethod
    async def _call(function: PhaseFunction, ctx: JobContext) -> bytes:
        if inspect.iscoroutinefunction(function):
            value = await function(ctx)
        else:
            value = await asyncio.to_thread(function, ctx)
        return to_bytes(value)




_OUTCOME_NAMES: dict[type, str] = {Succeeded: "succeeded", Cancelled: "cancelled", _Interrupted: "interrupted"}


def _outcome_of(task: asyncio.Future[bytes], entry: Running, span: Span | None) -> Outcome | _Interrupted:
    if task.cancelled():
        if entry.cancel_requested:
            return Cancelled()
        return _Interrupted() if entry.shutdown else Failed("phase was cancelled", "CancelledError", True)
    exc = task.exception()
    if exc is not None:
        if span is not None:
            span.record_exception(exc)
        return failure_from_exception(exc)
    return Succeeded(task.result())


def _discard_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieve it so an abandoned handler's late error is not reported as unhandled
