"""What a write will do, decided in Python from what the store read: shared by both stores, whose
SQL only reads the facts and writes the outcome."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobwire_server.domain.errors import JobNotFound, JobwireError, RequestIdReused
from jobwire_server.domain.ids import new_job_id
from jobwire_server.domain.models import Event, Job, NewJob, Phase, evolve
from jobwire_server.domain.states import ACTIVE_STATES, EventType, JobState
from jobwire_server.domain.transitions import JobChange
from jobwire_server.store import rows
from jobwire_server.store.base import ChangeBuilder, InsertResult

#: The change reasons that set (or clear) the cancel flags; other changes leave the stored ones.
WRITES_CANCEL_FLAGS = frozenset({"cancel requested by user", "cancelled by user", "retried by user"})


_STATES = {s.value: s for s in JobState}


def passes(change: JobChange, state: str, attempt: int) -> bool:
    """Whether a row in `state` at `attempt` is one `change` may be written over."""
    return _STATES[state] in change.guard and (change.attempt is None or change.attempt == attempt)


def plan_updates(job_ids: Sequence[str], found: Mapping[str, Job],
                 build: ChangeBuilder) -> tuple[list[Any], list[tuple[int, Job, JobChange]]]:
    """What an UpdateJobs batch will write, from the jobs as read (`found`): one result per id in
    order, filled for the jobs that write nothing (`JobNotFound`, the builder's refusal, or
    (job, None) when it had nothing to do), and the changes to write with their index and the job
    each was built from."""
    results: list[Any] = [None] * len(job_ids)
    changes: list[tuple[int, Job, JobChange]] = []
    for index, job_id in enumerate(job_ids):
        job = found.get(job_id)
        if job is None:
            results[index] = JobNotFound(job_id)
            continue
        try:
            change = build(job)
        except JobwireError as exc:
            results[index] = exc
            continue
        if change is None:
            results[index] = (job, None)
        else:
            changes.append((index, job, change))
    return results, changes


def takes_dedupe_key(before: Job, change: JobChange) -> bool:
    """Whether writing `change` over `before` may break the unique index of active dedupe keys:
    only a job that becomes active again (a retry) can collide with another active job's key. A
    job that stays active keeps the key it already holds, and one that leaves the active states
    gives it up."""
    return bool(change.job.dedupe_key) and change.job.state in ACTIVE_STATES and before.state not in ACTIVE_STATES


def as_written(before: Job, change: JobChange) -> Job:
    """The job `change` makes of `before`, a job this transaction read and holds (locked, or under
    the write lock), as the guarded write commits it: its sequence advanced by the change's events,
    and the stored cancel flags kept unless the change sets them. A change whose guard does not
    hold on `before` is a bug of its builder."""
    if before.state not in change.guard or (change.attempt is not None and change.attempt != before.attempt):
        raise RuntimeError(f"change of job {before.id} ({change.reason.value}) does not apply to it as read")
    job = change.job
    seq = before.last_sequence + len(change.events)
    if change.reason.value in WRITES_CANCEL_FLAGS:
        requested, reason = job.cancel_requested, job.cancel_reason
    else:
        requested, reason = before.cancel_requested, before.cancel_reason
    if job.cancel_requested != requested or job.cancel_reason != reason or job.last_sequence != seq:
        job = evolve(job, cancel_requested=requested, cancel_reason=reason, last_sequence=seq)
    return job


@dataclass
class InsertPlan:
    """An enqueue batch decided: the jobs to create, each request's outcome in order
    (job id, deduplicated, created) and the request ids to remember (request_id, fingerprint,
    job id, expiry)."""

    created: list[Job] = field(default_factory=list)
    outcome: list[tuple[str, bool, bool]] = field(default_factory=list)
    request_rows: list[tuple[str, str, str, float]] = field(default_factory=list)

    @property
    def existing_ids(self) -> list[str]:
        return [job_id for job_id, _, made in self.outcome if not made]


def plan_inserts(new_jobs: Sequence[NewJob], known_requests: dict[str, tuple[str, str]],
                 active: dict[tuple[str, str], str], now: float, ttl: float,
                 defaults: Mapping[str, tuple[int, int]] | None = None) -> InsertPlan:
    """Honour request ids (`known_requests`: id → (fingerprint, job id); a reused id with another
    request is RequestIdReused) and active dedupe keys (`active`: (queue, key) → job id), the
    batch's own included. Both mappings are updated as the batch is planned. `defaults`: queue →
    its stored (default priority, default max attempts), 0 for none (`queues_needing_defaults`)."""
    plan = InsertPlan()
    for new in new_jobs:
        if new.request_id in known_requests:
            fingerprint, job_id = known_requests[new.request_id]
            if fingerprint != new.fingerprint:
                raise RequestIdReused(new.request_id)
            plan.outcome.append((job_id, False, False))
            continue
        if new.dedupe_key and (new.queue, new.dedupe_key) in active:
            job_id = active[(new.queue, new.dedupe_key)]
            plan.outcome.append((job_id, True, False))
        else:
            job = job_from_new(_with_defaults(new, defaults), now)
            plan.created.append(job)
            job_id = job.id
            plan.outcome.append((job_id, False, True))
            if new.dedupe_key:
                active[(new.queue, new.dedupe_key)] = job_id
        if new.request_id:
            known_requests[new.request_id] = (new.fingerprint, job_id)
            plan.request_rows.append((new.request_id, new.fingerprint, job_id, now + ttl))
    return plan


def queues_needing_defaults(new_jobs: Sequence[NewJob]) -> list[str]:
    """Queues whose stored defaults the batch may need (a request left a defaulted field unset)."""
    return sorted({j.queue for j in new_jobs if j.priority_unset or j.max_attempts_unset})


def _with_defaults(new: NewJob, defaults: Mapping[str, tuple[int, int]] | None) -> NewJob:
    found = defaults.get(new.queue) if defaults else None
    if found is None:
        return new
    priority, max_attempts = found
    changes: dict[str, int] = {}
    if new.priority_unset and priority:
        changes["priority"] = priority
    if new.max_attempts_unset and max_attempts:
        changes["max_attempts"] = max_attempts
    return evolve(new, **changes) if changes else new


def insert_results(plan: InsertPlan, existing: Mapping[str, Job], now: float) -> list[InsertResult]:
    """One result per request: a created job with its ENQUEUED event, or the existing job."""
    fresh = {job.id: job for job in plan.created}
    results = []
    for job_id, deduplicated, made in plan.outcome:
        if made:
            job = fresh[job_id]
            event = Event(job.id, 1, EventType.ENQUEUED, now, job.queue, job.kind, job=job)
            results.append(InsertResult(job, deduplicated=False, created=True, events=(event,)))
        else:
            results.append(InsertResult(existing[job_id], deduplicated=deduplicated, created=False))
    return results


def job_from_new(new: NewJob, now: float) -> Job:
    return Job(
        id=new_job_id(now), queue=new.queue, kind=new.kind, payload=new.payload, priority=new.priority,
        state=JobState.SCHEDULED if new.run_at > now else JobState.QUEUED, max_attempts=new.max_attempts,
        phases=tuple(Phase(name) for name in new.phase_names), create_time=now, update_time=now,
        run_at=max(new.run_at, now), timeout=new.timeout, dedupe_key=new.dedupe_key, labels=new.labels,
        webhook=new.webhook, trace_parent=new.trace_parent, last_sequence=1, concurrency_key=new.concurrency_key,
    )


_QUEUE = rows.JOB_COLUMNS.index("queue")


def started_per_queue(claimed_rows: Sequence[Any]) -> dict[str, int]:
    """Queue → how many of a claim's job rows (in `rows.JOB_COLUMNS` order) it started: what the
    queues' rate buckets are charged."""
    started: dict[str, int] = {}
    for row in claimed_rows:
        started[row[_QUEUE]] = started.get(row[_QUEUE], 0) + 1
    return started


def earliest(a: float | None, b: float | None) -> float | None:
    """The earlier of two wake-up times, either of which may be None (no wake-up)."""
    return b if a is None else a if b is None else min(a, b)
