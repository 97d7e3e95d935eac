"""What the remote executor answers and records, as pure functions of a run and a report: the
outcome the engine records for what a worker reported, and the acks."""

from __future__ import annotations

from jobwire_server.domain.outcomes import Cancelled, Failed, Outcome, Succeeded
from jobwire_server.domain.states import PhaseState
from jobwire_server.engine.remote.messages import Ack, AckReason, AckStatus, PhaseDone, Released, Report
from jobwire_server.engine.remote.session import Run


def recorded_outcome(run: Run, reported: Outcome) -> Outcome | None:
    """What the engine records (None: interrupted by shutdown). A phase stopped by the timeout
    is a TIMEOUT failure, as in-process; a phase stopped with no cancel asked is a failure."""
    if isinstance(reported, Succeeded):
        return reported
    if run.cancel_requested:
        return Cancelled()
    if run.shutdown:
        return None
    if run.timed_out:
        return timeout_failure(run)
    if isinstance(reported, Cancelled):
        return Failed("phase was cancelled on the worker", "CancelledError", retryable=True)
    return reported


def earlier_phase_ack(run: Run, report: PhaseDone) -> Ack:
    """A phase done resent for a phase this attempt already committed: the same answer again."""
    for phase in run.job.phases[: run.index]:
        if phase.name == report.phase and phase.state is PhaseState.SUCCEEDED:
            return ack_of(report, AckStatus.OK, next_phase=run.phase)
    return ack_of(report, AckStatus.REJECTED, AckReason.WRONG_PHASE, detail=f"the running phase is {run.phase!r}")


def timeout_failure(run: Run) -> Failed:
    """A phase stopped because it ran past the job's timeout (retryable, as in-process)."""
    return Failed(f"phase {run.phase!r} exceeded its timeout of {run.job.timeout:g}s", "TIMEOUT", retryable=True)


def ack_of(report: Report, status: AckStatus, reason: AckReason = AckReason.NONE, *, next_phase: str = "",
           detail: str = "") -> Ack:
    phase = "" if isinstance(report, Released) else report.phase
    return Ack(report.job_id, report.attempt, phase, status, next_phase, reason, detail)
