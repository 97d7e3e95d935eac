"""Schedules in the engine: the operations the API calls (`ScheduleService`) and the service that
fires them (`Scheduler`).

No polling loop: the scheduler keeps the earliest `next_fire` of all schedules and arms the
dispatcher's timer for it (`Dispatcher.note_wakeup`, the timer of the next run_at). When the timer
fires, the scheduler asks the writer to fire whatever is due, as one operation (`FireSchedules`)
committed in the writer's next transaction: each firing's job, the cancel of the previous job and
the schedule's new `next_fire` together, so a crash can neither lose nor double a firing.

On a shared store only the replica holding the `schedules` lease fires (`may_run`). Writes made by
other replicas are not this replica's own, so it reads the earliest `next_fire` again when they
say they wrote (a notification) and at their slow look of their own (`refresh`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Final

from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import ScheduleExists, ScheduleFromConfig, StorageError
from jobwire_server.domain.schedules import (
    Schedule,
    ScheduleSpec,
    firing_key_at,
    new_schedule,
    paused,
    plan_firing,
    plan_trigger,
    resumed,
    trigger_key,
    with_spec,
)
from jobwire_server.domain.states import JobState
from jobwire_server.domain.timing import show
from jobwire_server.engine.writer import Writer
from jobwire_server.store.base import (
    ChangeSchedule,
    CreateSchedule,
    DeleteSchedule,
    Fired,
    FirePlan,
    FireSchedules,
    JobStore,
    SchedulesFired,
    SchedulesSynced,
    SyncSchedules,
)

log = logging.getLogger("jobwire.schedules")

#: Schedules fired per transaction; more due ones are fired by the next pass, at once.
FIRE_BATCH: Final = 100
#: Seconds before trying again after a pass failed (the storage, or a bug).
RETRY_AFTER: Final = 1.0
#: A replica reads the earliest firing of schedules others wrote at most this often.
REFRESH_EVERY: Final = 0.5


class Scheduler:
    """Fires due schedules from the dispatcher's timer."""

    def __init__(self, store: JobStore, writer: Writer, clock: Clock, *, arm: Callable[[float], None],
                 request_ttl: float, on_cancel: Callable[[str, str], object],
                 may_run: Callable[[], bool] = lambda: True,
                 on_firing: Callable[[str, str], None] | None = None) -> None:
        self._store = store
        self._writer = writer
        self._clock = clock
        #: Arms the shared timer for an instant (the dispatcher's `note_wakeup`).
        self._arm = arm
        self._request_ttl = request_ttl
        #: Asks the executor to stop a running job that a firing cancelled.
        self._on_cancel = on_cancel
        self._may_run = may_run
        #: Told (schedule id, outcome) of each firing after its commit (the metrics).
        self._on_firing = on_firing
        self._next: float | None = None
        self._stale = True  # read the earliest next firing from the store at the next pass
        self._read_at = -REFRESH_EVERY
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Passes made, and an event set after each (tests wait on it instead of sleeping).
        self.passes = 0
        self.passed = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jobwire-schedules")
            self._wake.set()

    async def stop(self) -> None:
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
            self._refresh_timer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def tick(self) -> None:
        """The timer fired: fire what is due now."""
        self._wake.set()

    def refresh(self) -> None:
        """Schedules may have been written elsewhere (another replica): read the earliest next
        firing again and fire what is due. Reads are at least REFRESH_EVERY seconds apart: one
        asked for sooner is made when that time is up."""
        self._stale = True
        if self._refresh_timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._read_at + REFRESH_EVERY - loop.time()
        if wait <= 0:
            self._wake.set()
        else:
            self._refresh_timer = loop.call_later(wait, self._refresh_due)

    def _refresh_due(self) -> None:
        self._refresh_timer = None
        self._wake.set()

    def note(self, next_fire: float | None) -> None:
        """A write of this process may have moved the earliest next firing to `next_fire`."""
        if next_fire is None:
            return
        if self._next is None or next_fire < self._next:
            self._next = next_fire
        self._arm(next_fire)
        if next_fire <= self._clock.now():
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._pass()
            except Exception as exc:
                if not isinstance(exc, StorageError):  # the writer reports storage faults, once
                    log.exception("firing schedules failed; trying again in %.0f s", RETRY_AFTER)
                self._stale = True
                self._arm(self._clock.now() + RETRY_AFTER)
            self.passes += 1
            self.passed.set()
            self.passed = asyncio.Event()

    async def _pass(self) -> None:
        if not self._may_run():
            return
        if self._stale:
            self._stale = False
            self._read_at = asyncio.get_running_loop().time()
            self._next = await self._store.next_schedule_fire()
        now = self._clock.now()
        if self._next is None:
            return
        if self._next > now:
            self._arm(self._next)
            return
        plan = FirePlan(key=lambda s: firing_key_at(s, now),
                        plan=lambda s, previous, made: plan_firing(s, previous, now, made))
        # A periodic duty: on a storage fault it fails at once (and is tried again) rather than being held.
        result: SchedulesFired = await self._writer.write(FireSchedules(now, plan, self._request_ttl, FIRE_BATCH),
                                                          fail_fast=True)
        self.fired(result.fired)
        self._next = result.next_due
        if self._next is None:
            return
        if len(result.fired) == FIRE_BATCH:
            self._wake.set()  # more were due than one batch holds
        else:
            # Still due after a pass that was not full: another transaction holds that row (another
            # replica's write, on a shared store). Look again shortly rather than at once.
            self._arm(self._next if self._next > now else now + RETRY_AFTER)

    def fired(self, fired: Sequence[Fired]) -> None:
        """After the commit: a running job a firing cancelled is asked to stop; each firing is logged."""
        for item in fired:
            if item.cancelled is not None and item.cancelled.job.state is JobState.RUNNING:
                self._on_cancel(item.cancelled.job.id, item.cancelled.job.cancel_reason)
            s = item.schedule
            when = show(s.last_fire) if s.last_fire is not None else "?"
            if item.inserted is not None:
                outcome = "enqueued" if item.inserted.created else "duplicate"
                log.info("schedule %s fired for %s: job %s%s", s.id, when, item.inserted.job.id,
                         "" if item.inserted.created else " (already enqueued)")
            elif item.skipped:
                outcome = "skipped"
                log.info("schedule %s skipped its firing for %s: job %s is still active", s.id, when,
                         item.previous.id if item.previous is not None else "?")
            else:
                outcome = "missed"
                log.warning("schedule %s missed its firing times up to %s (catch-up policy SKIP); next at %s",
                            s.id, when, show(s.next_fire) if s.next_fire is not None else "-")
            if self._on_firing is not None:
                self._on_firing(s.id, outcome)


class ScheduleService:
    """The schedule operations the API offers: writes through the writer, reads from the store."""

    def __init__(self, store: JobStore, writer: Writer, scheduler: Scheduler, clock: Clock, *,
                 request_ttl: float, check_open: Callable[[], None]) -> None:
        self.store = store
        self._writer = writer
        self._scheduler = scheduler
        self._clock = clock
        self._request_ttl = request_ttl
        self._check_open = check_open

    async def create(self, schedule_id: str, spec: ScheduleSpec, *, paused: bool = False) -> Schedule:
        self._check_open()
        schedule = new_schedule(schedule_id, spec, self._clock.now(), paused=paused)
        return await self._written(CreateSchedule(schedule))

    async def get(self, schedule_id: str) -> Schedule:
        return await self.store.get_schedule(schedule_id)

    async def list(self, after_id: str, limit: int) -> tuple[list[Schedule], str | None]:
        return await self.store.list_schedules(after_id, limit)

    async def update(self, schedule_id: str, spec: ScheduleSpec) -> Schedule:
        self._check_open()
        now = self._clock.now()

        def build(schedule: Schedule) -> Schedule:
            if schedule.from_config:
                raise ScheduleFromConfig(schedule_id, "update")
            return with_spec(schedule, spec, now)

        return await self._written(ChangeSchedule(schedule_id, build))

    async def delete(self, schedule_id: str) -> None:
        self._check_open()

        def check(schedule: Schedule) -> None:
            if schedule.from_config:
                raise ScheduleFromConfig(schedule_id, "delete")

        await self._writer.write(DeleteSchedule(schedule_id, check), fail_fast=True)

    async def pause(self, schedule_id: str) -> Schedule:
        self._check_open()
        now = self._clock.now()
        return await self._written(ChangeSchedule(schedule_id, lambda s: paused(s, now)))

    async def resume(self, schedule_id: str) -> Schedule:
        self._check_open()
        now = self._clock.now()
        return await self._written(ChangeSchedule(schedule_id, lambda s: resumed(s, now)))

    async def trigger(self, schedule_id: str, request_id: str = "") -> Fired:
        """One firing now; `Fired.inserted` is its job, or `skipped` with the previous job."""
        self._check_open()
        now = self._clock.now()

        def key(schedule: Schedule) -> str:
            return trigger_key(schedule.id, now, request_id)

        plan = FirePlan(key=key, plan=lambda s, previous, made: plan_trigger(s, previous, now, key(s), made))
        result: SchedulesFired = await self._writer.write(
            FireSchedules(now, plan, self._request_ttl, schedule_id=schedule_id), fail_fast=True)
        self._scheduler.fired(result.fired)
        (fired,) = result.fired
        return fired

    async def sync(self, declared: Sequence[tuple[str, ScheduleSpec]]) -> SchedulesSynced:
        """Make the schedules declared in the config file the stored ones: create the new, replace
        the changed (keeping their paused state and last firing), delete those no longer declared.
        ScheduleExists when a declared id belongs to a schedule created through the API."""
        now = self._clock.now()
        wanted = dict(declared)

        def plan(found: Sequence[Schedule]) -> tuple[list[Schedule], list[str]]:
            existing = {s.id: s for s in found}
            written: list[Schedule] = []
            for schedule_id, spec in wanted.items():
                current = existing.get(schedule_id)
                if current is None:
                    written.append(new_schedule(schedule_id, spec, now, from_config=True))
                elif not current.from_config:
                    raise ScheduleExists(schedule_id)
                elif current.spec != spec:
                    written.append(with_spec(current, spec, now))
            return written, [s.id for s in found if s.from_config and s.id not in wanted]

        result: SchedulesSynced = await self._writer.write(SyncSchedules(plan))
        self._scheduler.note(result.next_due)
        return result

    async def _written(self, op: CreateSchedule | ChangeSchedule) -> Schedule:
        schedule: Schedule = await self._writer.write(op, fail_fast=True)
        self._scheduler.note(schedule.next_fire)
        return schedule
