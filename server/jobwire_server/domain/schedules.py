"""Schedules: a job template and when to enqueue it, and what one firing does (pure code).

A schedule's row says when it next fires (`next_fire`). The engine asks the store to fire every
schedule that is due, and the store calls :func:`plan_firing` with the schedule and the job of its
previous firing, inside the transaction that then writes what the plan says: the new job (with a
request id made from the schedule id and the firing time, so the same firing can never enqueue two
jobs), a cancel of the previous job, and the schedule's new `next_fire`. Everything here is a
function of its arguments, so every replica computes the same plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from jobwire_server.domain.actions import plan_cancel
from jobwire_server.domain.models import Job, NewJob, Webhook, evolve
from jobwire_server.domain.states import ACTIVE_STATES
from jobwire_server.domain.timing import Cron, Timing, interval, show
from jobwire_server.domain.transitions import JobChange

#: A firing made this long after its time is late, not missed: it runs whatever the catch-up policy.
MISFIRE_GRACE: Final = 60.0
#: Next firing times a schedule shows.
UPCOMING: Final = 5
#: The label every job of a schedule carries, with the schedule id.
SCHEDULE_LABEL: Final = "jobwire/schedule"
#: Request ids of firings are longer than any a client may send (128 characters), so the two can
#: never meet.
_KEY_LENGTH: Final = 160
_EMPTY: Mapping[str, str] = MappingProxyType({})


class OverlapPolicy(StrEnum):
    """What a firing does while the previous firing's job is still active."""

    ALLOW = "ALLOW"
    SKIP = "SKIP"
    CANCEL_PREVIOUS = "CANCEL_PREVIOUS"


class CatchupPolicy(StrEnum):
    """What the first firing after a gap does about the firing times it missed."""

    SKIP = "SKIP"
    RUN_ONCE = "RUN_ONCE"


@dataclass(frozen=True, slots=True)
class JobTemplate:
    """The job a firing enqueues, with its kind's defaults applied when the schedule was written.
    A priority or max attempts the schedule left unset takes the queue's stored default at each
    firing, as an Enqueue that leaves it unset does (the `*_unset` flags)."""

    queue: str
    kind: str
    payload: bytes
    priority: int
    max_attempts: int
    timeout: float
    phase_names: tuple[str, ...]
    dedupe_key: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    webhook: Webhook | None = None
    concurrency_key: str = ""
    priority_unset: bool = False
    max_attempts_unset: bool = False


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """What a schedule does and when: a cron expression in a zone, or an interval in seconds."""

    template: JobTemplate
    cron: str = ""
    time_zone: str = ""
    interval: int = 0
    jitter: float = 0.0
    overlap: OverlapPolicy = OverlapPolicy.ALLOW
    catchup: CatchupPolicy = CatchupPolicy.SKIP
    description: str = ""

    def timing(self) -> Timing:
        """The parsed timing (specs are validated before they are stored)."""
        return Cron.parse(self.cron, self.time_zone) if self.cron else interval(self.interval)

    def same_timing(self, other: ScheduleSpec) -> bool:
        return (self.cron, self.time_zone, self.interval) == (other.cron, other.time_zone, other.interval)


@dataclass(frozen=True, slots=True)
class Schedule:
    id: str
    spec: ScheduleSpec
    create_time: float
    update_time: float
    paused: bool = False
    #: Declared in the server's config file: start-up owns it; the API may pause and trigger it.
    from_config: bool = False
    #: When it fires next; None while paused.
    next_fire: float | None = None
    last_fire: float | None = None
    last_job_id: str = ""


def new_schedule(schedule_id: str, spec: ScheduleSpec, now: float, *, paused: bool = False,
                 from_config: bool = False) -> Schedule:
    return Schedule(id=schedule_id, spec=spec, create_time=now, update_time=now, paused=paused,
                    from_config=from_config, next_fire=None if paused else first_after(spec, now))


def first_after(spec: ScheduleSpec, now: float) -> float:
    return spec.timing().after(now)[0]


def with_spec(schedule: Schedule, spec: ScheduleSpec, now: float) -> Schedule:
    """The schedule with a new spec: a new timing starts after now, an unchanged one keeps its
    next firing (so an edit made while a firing is due does not lose it)."""
    next_fire = schedule.next_fire
    if not schedule.paused and not spec.same_timing(schedule.spec):
        next_fire = first_after(spec, now)
    return evolve(schedule, spec=spec, next_fire=next_fire, update_time=now)


def paused(schedule: Schedule, now: float) -> Schedule:
    if schedule.paused:
        return schedule
    return evolve(schedule, paused=True, next_fire=None, update_time=now)


def resumed(schedule: Schedule, now: float) -> Schedule:
    """Firing again from the first time after now: what fell while paused is not made up."""
    if not schedule.paused:
        return schedule
    return evolve(schedule, paused=False, next_fire=first_after(schedule.spec, now), update_time=now)


def upcoming(schedule: Schedule, count: int = UPCOMING) -> list[float]:
    """Its next firing times (none while paused)."""
    if schedule.paused or schedule.next_fire is None:
        return []
    return [schedule.next_fire, *schedule.spec.timing().after(schedule.next_fire, count - 1)]


# ---------------------------------------------------------------------- firing


@dataclass(frozen=True, slots=True)
class Firing:
    """What one firing writes, in one transaction."""

    #: The schedule as it is after the firing (its next firing time, last firing).
    schedule: Schedule
    #: The job to enqueue; None when nothing runs (skipped by a policy).
    job: NewJob | None
    #: The cancel of the previous job (CANCEL_PREVIOUS).
    cancel: JobChange | None = None
    #: True when the overlap policy SKIP kept the job from being enqueued.
    skipped: bool = False


def firing_time(schedule: Schedule, now: float) -> float | None:
    """The time a firing of the schedule at `now` is for: the latest firing time at or before
    `now` (None when the schedule is not due, or paused)."""
    due = schedule.next_fire
    if schedule.paused or due is None or due > now:
        return None
    return max(due, schedule.spec.timing().latest(now) or due)


def firing_key_at(schedule: Schedule, now: float) -> str | None:
    """The request id of the firing :func:`plan_firing` makes at `now` (None: it makes none)."""
    moment = firing_time(schedule, now)
    return None if moment is None else firing_key(schedule.id, show(moment))


def plan_firing(schedule: Schedule, previous: Job | None, now: float, made: bool) -> Firing | None:
    """The firing of a due schedule (None when it is not due, or paused); `made` says its request
    id is known already (it was fired before: it returns that job, whatever the policies).

    The firing is for the latest firing time at or before `now`. It runs when that time is at
    most MISFIRE_GRACE ago, or when the catch-up policy is RUN_ONCE; earlier times of the gap
    are missed. Either way the schedule goes on from its first time after `now`.
    """
    latest = firing_time(schedule, now)
    if latest is None:
        return None
    after = evolve(schedule, next_fire=schedule.spec.timing().after(now)[0], last_fire=latest, update_time=now)
    runs = now - latest <= MISFIRE_GRACE or schedule.spec.catchup is CatchupPolicy.RUN_ONCE
    if not runs:
        return Firing(after, None)
    run_at = latest + jitter(schedule, latest)
    return _overlapping(after, previous, now, firing_key(schedule.id, show(latest)), made, run_at, latest)


def trigger_key(schedule_id: str, now: float, request_id: str = "") -> str:
    """The request id of a TriggerSchedule: the client's, or the call's time."""
    return firing_key(schedule_id, f"trigger/{request_id}" if request_id else f"trigger/{show(now)}")


def plan_trigger(schedule: Schedule, previous: Job | None, now: float, key: str, made: bool) -> Firing:
    """TriggerSchedule: one firing now, outside the timing (no jitter, `next_fire` unchanged)."""
    after = evolve(schedule, last_fire=now, update_time=now)
    return _overlapping(after, previous, now, key, made, now, now)


def _overlapping(after: Schedule, previous: Job | None, now: float, key: str, made: bool, run_at: float,
                 fire_time: float) -> Firing:
    """The firing under the overlap policy, given the previous firing's job. A firing made
    already (its request id is known: a retried trigger) returns its job, whatever the policy."""
    if made:
        return Firing(after, job_of(after, key, run_at))
    active = previous is not None and previous.state in ACTIVE_STATES
    policy = after.spec.overlap
    if active and policy is OverlapPolicy.SKIP:
        return Firing(after, None, skipped=True)
    cancel = None
    if active and previous is not None and policy is OverlapPolicy.CANCEL_PREVIOUS:
        cancel = plan_cancel(previous, f"superseded by the firing of schedule {after.id} at {show(fire_time)}",
                             now)
    return Firing(after, job_of(after, key, run_at), cancel)


def job_of(schedule: Schedule, key: str, run_at: float) -> NewJob:
    template = schedule.spec.template
    labels = MappingProxyType({**template.labels, SCHEDULE_LABEL: schedule.id})
    return NewJob(queue=template.queue, kind=template.kind, payload=template.payload, priority=template.priority,
                  run_at=run_at, max_attempts=template.max_attempts, timeout=template.timeout,
                  phase_names=template.phase_names, dedupe_key=template.dedupe_key, request_id=key,
                  fingerprint=key, labels=labels, webhook=template.webhook,
                  concurrency_key=template.concurrency_key, priority_unset=template.priority_unset,
                  max_attempts_unset=template.max_attempts_unset)


def firing_key(schedule_id: str, moment: str) -> str:
    """The request id of one firing: the same schedule and firing always give the same key."""
    key = f"jobwire.schedule/{schedule_id}/{moment}/"
    return key.ljust(_KEY_LENGTH, "~")


def jitter(schedule: Schedule, fire_time: float) -> float:
    """The delay of a firing's job: a share of the schedule's jitter fixed by the schedule id and
    the firing time (every replica computes the same)."""
    if schedule.spec.jitter <= 0:
        return 0.0
    digest = hashlib.sha256(f"{schedule.id}/{fire_time!r}".encode()).digest()
    share = int.from_bytes(digest[:8]) / 2**64
    return round(share * schedule.spec.jitter, 3)

