"""Bulk actions (CancelJobs, RetryJobs): what each listed job becomes, and the summary.

A bulk action lists the jobs its filter matches and hands each batch to the store with a builder
made here. The builder runs inside the write transaction on the job as stored: it checks the job
still matches, then asks the same planner as CancelJob or RetryJob (`domain/actions.py`), so every
change, event and guard is the one the single-job action makes. A job left unchanged raises
`Skipped` with the reason, which the store hands back as that job's result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from jobwire_server.domain.actions import plan_cancel, plan_retry
from jobwire_server.domain.errors import InvalidTransition, JobNotFound, JobwireError
from jobwire_server.domain.models import Job
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.states import ACTIVE_STATES, JobState
from jobwire_server.domain.transitions import JobChange

#: Jobs per batch at most: each batch is one transaction of its own, sized to `BATCH_BUDGET`.
DEFAULT_BATCH = 200
#: Seconds a batch's transaction should take: an enqueue made meanwhile waits for at most about
#: this long (besides its own commit). Each batch is sized by how long the one before took.
BATCH_BUDGET = 0.004
#: Jobs per batch at least, however slow the transactions are, so a bulk action always moves on;
#: also the first batch's size.
MIN_BATCH = 20


class SkipReason(StrEnum):
    """Why a matched job was left unchanged (the proto's SkipReason, without its prefix)."""

    ALREADY_FINISHED = "ALREADY_FINISHED"
    ALREADY_CANCELLED = "ALREADY_CANCELLED"
    CANCEL_ALREADY_REQUESTED = "CANCEL_ALREADY_REQUESTED"
    STILL_ACTIVE = "STILL_ACTIVE"
    NEEDS_FROM_START = "NEEDS_FROM_START"
    NOTHING_TO_RESUME = "NOTHING_TO_RESUME"
    DEDUPE_KEY_TAKEN = "DEDUPE_KEY_TAKEN"
    NO_LONGER_MATCHES = "NO_LONGER_MATCHES"
    NOT_FOUND = "NOT_FOUND"


class Skipped(JobwireError):
    """A bulk action leaves this job as it is (raised by a builder, so the store writes nothing)."""

    reason = "SKIPPED"

    def __init__(self, job_id: str, why: SkipReason) -> None:
        super().__init__(f"job {job_id} left unchanged: {why.value}")
        self.job_id, self.why = job_id, why


@dataclass(frozen=True, slots=True)
class BulkSummary:
    """What a bulk action did: jobs matched, changed, and skipped per reason."""

    matched: int = 0
    changed: int = 0
    #: Of `changed`, RUNNING jobs whose handler was asked to stop (CancelJobs only).
    cancel_requested: int = 0
    skipped: Mapping[SkipReason, int] = field(default_factory=lambda: MappingProxyType({}))
    dry_run: bool = False


Builder = Callable[[Job], JobChange]


def next_batch(size: int, seconds: float, *, ceiling: int, budget: float = BATCH_BUDGET,
               floor: int = MIN_BATCH) -> int:
    """The size of the batch after one of `size` jobs whose transaction took `seconds`: what fits
    in `budget` at that pace, between `floor` and `ceiling`. It grows at most twofold per batch (a
    batch that happened to be fast is not trusted far) and shrinks at once."""
    fits = size * 2 if seconds <= 0 else min(size * 2, int(size * budget / seconds))
    return max(min(floor, ceiling), min(ceiling, fits))


def cancel_builder(query: JobQuery, reason: str, now: float) -> Builder:
    """CancelJob's change for each job that still matches `query`."""

    def build(job: Job) -> JobChange:
        _check_match(query, job)
        try:
            change = plan_cancel(job, reason, now)
        except InvalidTransition:
            raise Skipped(job.id, SkipReason.ALREADY_FINISHED) from None
        if change is None:
            raise Skipped(job.id, SkipReason.ALREADY_CANCELLED if job.state is JobState.CANCELLED
                          else SkipReason.CANCEL_ALREADY_REQUESTED)
        return change

    return build


def retry_builder(query: JobQuery, from_start: bool, now: float) -> Builder:
    """RetryJob's change for each job that still matches `query`."""

    def build(job: Job) -> JobChange:
        _check_match(query, job)
        try:
            return plan_retry(job, from_start, now)
        except InvalidTransition:
            if job.state in ACTIVE_STATES:
                why = SkipReason.STILL_ACTIVE
            elif job.state is JobState.SUCCEEDED and not from_start:
                why = SkipReason.NEEDS_FROM_START
            else:
                why = SkipReason.NOTHING_TO_RESUME
            raise Skipped(job.id, why) from None

    return build


def _check_match(query: JobQuery, job: Job) -> None:
    # Listed a moment before, in another transaction: the job may have moved since.
    if not query.matches(job):
        raise Skipped(job.id, SkipReason.NO_LONGER_MATCHES)


def skip_reason(result: Any) -> SkipReason | None:
    """The reason a store result of one job of a batch is a skip; None when the job was changed.

    `result` is what the store returned for the job: (job, committed change) or an error.
    """
    if isinstance(result, Skipped):
        return result.why
    if isinstance(result, JobNotFound):
        return SkipReason.NOT_FOUND
    if isinstance(result, InvalidTransition):
        # Not from a builder (those raise Skipped): the store refused to requeue a job whose
        # dedupe key another active job holds now.
        return SkipReason.DEDUPE_KEY_TAKEN
    if isinstance(result, JobwireError):
        raise result
    return None


class Tally:
    """Adds up the batches of one bulk action."""

    def __init__(self) -> None:
        self.matched = 0
        self.changed = 0
        self.cancel_requested = 0
        self.skipped: Counter[SkipReason] = Counter()

    def add(self, results: Iterable[Any]) -> list[Job]:
        """Count one batch's results; returns the jobs changed, as committed."""
        changed: list[Job] = []
        for result in results:
            self.matched += 1
            why = skip_reason(result)
            if why is not None:
                self.skipped[why] += 1
                continue
            job = result[0]
            changed.append(job)
            self.changed += 1
            if job.state is JobState.RUNNING:
                self.cancel_requested += 1
        return changed

    def summary(self) -> BulkSummary:
        ordered = {why: self.skipped[why] for why in SkipReason if self.skipped[why]}
        return BulkSummary(self.matched, self.changed, self.cancel_requested, MappingProxyType(ordered))
