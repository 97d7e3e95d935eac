"""Tracing of remote jobs: the same spans the in-process executor makes (one `job <kind>` span per
attempt, linked to the Enqueue span, with a `phase <name>` child per phase), opened and closed at
the moments the remote executor commits them."""

from __future__ import annotations

from opentelemetry.trace import Tracer

from jobwire_server.domain.outcomes import Cancelled, Failed, Outcome
from jobwire_server.domain.states import JobState
from jobwire_server.engine.remote.session import Run
from jobwire_server.telemetry import end_job_span, end_phase_span, start_job_span, start_phase_span


class RunSpans:
    def __init__(self, tracer: Tracer | None) -> None:
        #: None when tracing is off: then no span is ever made.
        self._tracer = tracer

    def started(self, run: Run) -> None:
        """The attempt was claimed: its job span, and the span of its first phase."""
        if self._tracer is not None:
            run.span = start_job_span(self._tracer, run.job)
            self._next_phase(run)

    def phase_ended(self, run: Run, outcome: Outcome | None) -> None:
        """A phase's outcome was committed: close its span; open the next phase's if the job goes on."""
        if run.phase_span is None:
            return
        if isinstance(outcome, Failed):
            end_phase_span(run.phase_span, "failed", error_type=outcome.type, message=outcome.message)
        else:
            end_phase_span(run.phase_span, "interrupted" if outcome is None else
                           "cancelled" if isinstance(outcome, Cancelled) else "succeeded")
        run.phase_span.end()
        run.phase_span = None
        if run.job.state is JobState.RUNNING:
            self._next_phase(run)

    def ended(self, run: Run) -> None:
        """The attempt is over for this process: close what is still open."""
        if run.phase_span is not None:
            end_phase_span(run.phase_span, "cancelled" if run.cancel_requested else "interrupted")
            run.phase_span.end()
            run.phase_span = None
        if run.span is not None:
            end_job_span(run.span, run.job)
            run.span.end()
            run.span = None

    def _next_phase(self, run: Run) -> None:
        if self._tracer is None or run.span is None or not run.phase:
            return
        run.phase_span = start_phase_span(self._tracer, run.job, run.phase, run.span)
