"""The dispatcher: the claim policy. It decides when and how many jobs to claim; the writer
claims them in its next commit, together with whatever else that commit writes (the outcomes
of finishing jobs, the enqueue that made a job ready).

No polling interval: claiming happens when an enqueue, a retry or a freed slot wakes it, or when a
timer set to the next run_at of a SCHEDULED or RETRYING job fires.

Jobs of kinds remote workers run are claimed apart from this process's slots: only as many as the
connected workers' credit (`RemoteExecutor.claim_room`), in the same transaction, and handed to the
remote executor; a worker's credit wakes the dispatcher as a freed slot does.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any

from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import JobwireError
from jobwire_server.domain.models import Job
from jobwire_server.domain.states import JobState
from jobwire_server.engine.executor import Executor
from jobwire_server.engine.remote.executor import RemoteExecutor
from jobwire_server.engine.writer import Writer
from jobwire_server.store.base import (
    ApplyChange,
    ClaimParams,
    ClaimResult,
    FireSchedules,
    InsertJobs,
    UpdateJob,
    UpdateJobs,
    WriteOp,
)

MAX_CLAIM = 256


class Dispatcher:
    def __init__(self, writer: Writer, executor: Executor, clock: Clock, *, owner: str, lease_ttl: float,
                 global_limits: dict[str, int] | None = None, remote: RemoteExecutor | None = None) -> None:
        self._writer = writer
        self._executor = executor
        self._remote = remote
        self._clock = clock
        self._owner = owner
        self._lease_ttl = lease_ttl
        self._global_limits = dict(global_limits or {})
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._claiming = False
        self._wanted = False
        #: A remote worker has room (its credit came back): claim for remote workers only.
        self._wanted_remote = False
        #: Counts claim cycles; `claimed` is set after each (tests wait on it instead of sleeping).
        self.rounds = 0
        self.claimed = asyncio.Event()
        #: Called when the timer fires, after the wake-up: other duties share the timer (schedules).
        self.on_timer: list[Callable[[], None]] = []
        writer.claimer = self

    def start(self) -> None:
        self._claiming = True
        self.wake()

    def wake(self) -> None:
        """Something may be ready to run: claim in the next commit."""
        if self._claiming:
            self._wanted = True
            self._writer.kick()

    def wake_remote(self) -> None:
        """A remote worker has room: claim jobs of remote kinds in the next commit."""
        if self._claiming:
            self._wanted_remote = True
            self._writer.kick()

    def note_wakeup(self, at: float) -> None:
        """A job becomes due at `at` (epoch seconds): make sure a timer wakes us then."""
        if at >= self._timer_at or not self._claiming:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        delay = max(0.0, at - self._clock.now())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self.wake()
        for listener in self.on_timer:
            listener()

    async def stop_claiming(self) -> None:
        """Stop taking new jobs (first step of shutdown); running ones are the executor's."""
        self._claiming = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        # A cycle committing now may still claim; wait for it, so the drain that follows sees
        # every job this process started (none can start after it).
        await self._writer.cycle_finished()

    # ------------------------------------------------------------------ Claimer

    def claim_params(self, ops: Sequence[WriteOp]) -> ClaimParams | None:
        """Claim in this transaction when something may be ready and a slot is free: woken, a
        job finishing (its slot is refilled by the same commit), or a write that can make a job
        ready (an enqueue due now, a retry, a rescue)."""
        if not self._claiming:
            return None
        ended = [op.change for op in ops if isinstance(op, ApplyChange) and op.change.job.state not in _BUSY]
        finishing = [change for change in ended if not self._runs_remotely(change.job.id)]
        remote_finishing = [change.job.id for change in ended if self._runs_remotely(change.job.id)]
        remote_kinds = self._remote.kinds.names() if self._remote is not None else frozenset()
        ready_here, ready_remote = _readying(ops, remote_kinds)
        # The claims for this process and for remote workers are asked for apart: a claim for our own
        # slots reads past every QUEUED job of a remote kind, so it runs only when it may find one.
        local = self._wanted or bool(finishing) or ready_here
        elsewhere = self._wanted or self._wanted_remote or bool(remote_finishing) or ready_remote
        if not (local or elsewhere):
            return None
        limit = min(self._executor.free_slots() + len(finishing), MAX_CLAIM) if local else 0
        remote = self._remote.claim_room(remote_finishing) if self._remote is not None and elsewhere else ()
        if limit == 0 and not remote and not self._wanted:
            return None  # nothing could start; a freed slot or the timer claims (and promotes) later
        self._wanted = self._wanted_remote = False
        now = self._clock.now()
        room = self._executor.queue_room()
        for change in finishing:
            if change.job.queue in room:
                room[change.job.queue] += 1
        return ClaimParams(now=now, limit=limit, owner=self._owner, lease_expires=now + self._lease_ttl,
                           queue_room=room, global_limits=self._global_limits,
                           remote_kinds=remote_kinds, remote=remote)

    def _start(self, claimed: ClaimResult, remote_kinds: frozenset[str]) -> int:
        """Hand each claimed job to where its kind runs; returns how many run here."""
        local = 0
        for item in claimed.claimed:
            if item.job.kind in remote_kinds and self._remote is not None:
                self._remote.start(item.job)
            else:
                self._executor.start(item.job)
                local += 1
        return local

    def _runs_remotely(self, job_id: str) -> bool:
        return self._remote is not None and self._remote.holds(job_id)

    def _room(self) -> bool:
        """Could a job start now, here or on a remote worker?"""
        return self._executor.free_slots() > 0 or (self._remote is not None and bool(self._remote.claim_room()))

    def claim_failed(self) -> None:
        self._wanted = True

    def after_cycle(self, ops: Sequence[WriteOp], results: Sequence[Any], claim: ClaimParams | None,
                    claimed: ClaimResult | None) -> None:
        readied = False
        for op, result in zip(ops, results, strict=True):
            for job in _jobs_written(op, result):
                if job.state is JobState.RUNNING:
                    continue
                if isinstance(op, ApplyChange):
                    self._executor.release(job.id)  # committed final: its slot may be refilled now
                if job.state in _WAITING:
                    self.note_wakeup(job.run_at)
                elif job.state is JobState.QUEUED:
                    readied = True
        if claimed is None or claim is None:
            if readied and self._room():
                self.wake()  # a job became ready in a transaction that did not claim (with no slot
            return           # free, the commit that frees one claims it)
        local = self._start(claimed, claim.remote_kinds)
        if claimed.next_due is not None:
            self.note_wakeup(claimed.next_due)
        self.rounds += 1
        self.claimed.set()
        self.claimed = asyncio.Event()
        # More may be ready: ask again, but only when a job could start now. With every slot busy,
        # the next finishing change claims in its own commit anyway, and a due job's timer still fires.
        remote_room = sum(r.room for r in claim.remote)
        if claimed.promoted or (claim.limit > 0 and local == claim.limit):
            if self._room():
                self.wake()
        elif remote_room > 0 and len(claimed.claimed) - local == remote_room and self._room():
            self.wake_remote()


_BUSY = frozenset({JobState.RUNNING})
_WAITING = frozenset({JobState.SCHEDULED, JobState.RETRYING})


def _readying(ops: Sequence[WriteOp], remote_kinds: frozenset[str]) -> tuple[bool, bool]:
    """Whether the batch may make a job ready (an enqueue due now, a retry, a rescue, a firing):
    (one this process runs, one a remote worker runs)."""
    here = remote = False
    for op in ops:
        if isinstance(op, InsertJobs):
            due = [job.kind in remote_kinds for job in op.jobs if job.run_at <= op.now]
            here, remote = here or not all(due), remote or any(due)
        elif isinstance(op, UpdateJob | UpdateJobs | FireSchedules):
            return True, True
    return here, remote


def _jobs_written(op: WriteOp, result: Any) -> list[Job]:
    """Jobs a write changed (or created), as committed."""
    if result is None or isinstance(result, JobwireError):
        return []
    if isinstance(op, ApplyChange):
        return [result.job]
    if isinstance(op, InsertJobs):
        return [r.job for r in result if r.created]
    if isinstance(op, UpdateJob) and result[1] is not None:
        return [result[0]]
    if isinstance(op, FireSchedules):
        return [job for f in result.fired for job in (
            *([f.cancelled.job] if f.cancelled is not None else ()),
            *([f.inserted.job] if f.inserted is not None and f.inserted.created else ()))]
    if isinstance(op, UpdateJobs):
        return [item[0] for item in result if isinstance(item, tuple) and item[1] is not None]
    return []
