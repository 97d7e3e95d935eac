"""The write path: every write the service makes is committed here, by group commit.

Enqueues, cancels and retries from the API, the executor's outcomes and progress, claims,
promotions, lease renewals and rescues, webhook outbox bookkeeping and retention batches are all
operations (`store.base.WriteOp`) queued to one writer. It commits whatever is ready in one
transaction (one hop to the database thread, one fsync for many RPCs), with a bounded batch and no
timer: a lone write commits at once, and writes that arrive while a commit runs share the next.
The same transaction claims jobs for the slots that are free, so a job enqueued while a worker
is idle is claimed by its own enqueue's commit.

Each caller's future resolves only after the commit; events are published to the hub first, once
per batch. An operation refused for its own reason gets that error without failing the others.

A bulk action's batch (`UpdateJobs`, jobs enough for about 4 ms) is committed in a transaction of its own,
taking turns with the other writes: when both are waiting, the other writes go first, then one
bulk batch, so an enqueue waits behind at most one batch, and a bulk action still moves on under a
steady stream of other writes.

When the storage cannot take writes (disk full, I/O errors, a read-only or corrupt file: a
`StorageError`), the writer reports it once (`on_storage`: health turns NOT_SERVING), answers the
client's writes (`fail_fast`) with that error at once, and holds the engine's own writes, then
probes the storage with a small write on a backoff; the first probe that commits reports it
healthy again and the held writes are committed in order. Nothing spins, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from jobwire_server.domain.errors import JobwireError, StorageError
from jobwire_server.domain.models import Event
from jobwire_server.domain.transitions import JobChange
from jobwire_server.engine.hub import WatchHub
from jobwire_server.store.base import (
    ApplyChange,
    ClaimJobs,
    ClaimParams,
    ClaimResult,
    Committed,
    DeleteStale,
    FireSchedules,
    InsertJobs,
    JobStore,
    MarkStale,
    RecordDeliveryAttempt,
    UpdateJob,
    UpdateJobs,
    WriteOp,
)

log = logging.getLogger("jobwire.writer")

#: Operations per transaction at most; the rest go into the next one at once.
MAX_BATCH = 1000
#: Loop turns without a new submit before a cycle commits what it has.
GATHER_QUIET_TURNS = 1
#: Seconds before trying again after a transaction failed as a whole (not a storage fault).
ERROR_BACKOFF = 1.0
#: Storage probes: the first after this many seconds, doubling up to the cap.
PROBE_FIRST, PROBE_CAP = 0.25, 5.0

_Pending = tuple[WriteOp, "asyncio.Future[Any]", bool]  # (operation, its caller's future, fail fast)


class Claimer(Protocol):
    """Decides whether a transaction should also claim, and takes what it claimed."""

    def claim_params(self, ops: Sequence[WriteOp]) -> ClaimParams | None: ...

    def after_cycle(self, ops: Sequence[WriteOp], results: Sequence[Any], claim: ClaimParams | None,
                    claimed: ClaimResult | None) -> None: ...

    def claim_failed(self) -> None:
        """The transaction that was to claim failed: claim in the next one."""


class Writer:
    def __init__(self, store: JobStore, hub: WatchHub,
                 on_storage: Callable[[StorageError | None], None] | None = None) -> None:
        self._store = store
        self._hub = hub
        #: Called with the fault when writes start failing, with None when they work again.
        self._on_storage = on_storage
        #: The storage fault writes fail with now (None while the storage is healthy), and an event
        #: set (and replaced) at each change of it (tests wait on it).
        self.storage_error: StorageError | None = None
        self.storage_changed = asyncio.Event()
        #: The fault last reported (health follows it), and the current wait between probes.
        self._reported: StorageError | None = None
        self._probe_delay = 0.0
        self.claimer: Claimer | None = None
        self._pending: list[_Pending] = []
        #: Bulk batches (UpdateJobs) queued, at most (writes dropped on a storage fault are not
        #: subtracted: `_take` counts again), and whether one goes next when other writes wait too.
        self._bulk_queued = 0
        self._bulk_turn = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Set when the service starts shutting down: on broken storage nothing is held any more.
        self._shutting_down = asyncio.Event()
        self._between_cycles = asyncio.Event()
        self._between_cycles.set()
        #: Transactions committed, and `time.perf_counter()` when the last one did (tests and
        #: benchmarks read them: pickup latency is measured from a commit).
        self.commits = 0
        self.last_commit_at = 0.0
        #: Jobs of the last bulk batch (UpdateJobs) committed, and the seconds from its store write
        #: to the hand-out of its results: what an enqueue made meanwhile waited for at most. Bulk
        #: actions size their next batch by it (`domain.bulk.next_batch`).
        self.last_bulk: tuple[int, float] = (0, 0.0)

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="jobwire-writer")

    def kick(self) -> None:
        """Run a cycle soon even with nothing pending (the dispatcher wants to claim)."""
        self._wake.set()

    def write_nowait(self, op: WriteOp, *, fail_fast: bool = False) -> asyncio.Future[Any]:
        """Queue `op`; the future resolves with its result after the commit, or with the error it
        was refused with. Cancelling the future does not withdraw the operation. With
        `fail_fast` (a client's request), a storage fault answers at once instead of holding it."""
        if self._task is None or self._task.done():
            raise RuntimeError("the writer is not running")
        if self.storage_error is not None and (fail_fast or self._shutting_down.is_set()):
            raise _fresh(self.storage_error)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future, fail_fast))
        if isinstance(op, UpdateJobs):
            self._bulk_queued += 1
        self._wake.set()
        return future

    async def write(self, op: WriteOp, *, fail_fast: bool = False) -> Any:
        """Commit `op` and return its result. A caller that is cancelled (a client hanging up)
        stops waiting, but never withdraws an operation that is already on its way."""
        return await self.write_nowait(op, fail_fast=fail_fast)

    async def submit(self, change: JobChange) -> Committed | None:
        """Write a guarded change; None when its guard no longer held."""
        result: Committed | None = await self.write(ApplyChange(change))
        return result

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._gather()
            batch = self._take()
            if self._pending:
                self._wake.set()
            if batch or not self._stopping:
                self._between_cycles.clear()
                try:
                    await self._cycle(batch)
                finally:
                    self._between_cycles.set()
            if self._stopping and not self._pending:
                return

    async def _gather(self) -> None:
        """Yield to the event loop while writes keep arriving, so one commit takes every write
        that is ready now. No timer: a lone write still commits within microseconds."""
        seen, quiet = len(self._pending), 0
        while quiet < GATHER_QUIET_TURNS and len(self._pending) < MAX_BATCH:
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._pending) == seen else 0
            seen = len(self._pending)

    def _take(self) -> list[_Pending]:
        """The writes of the next transaction: up to MAX_BATCH in order, but a bulk batch only on
        its own, taking turns with the others (see the module)."""
        if not self._bulk_queued:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            return batch
        bulk = [item for item in self._pending if isinstance(item[0], UpdateJobs)]
        others = [item for item in self._pending if not isinstance(item[0], UpdateJobs)]
        self._bulk_queued = len(bulk)
        if others and (not bulk or not self._bulk_turn):
            self._bulk_turn = bool(bulk)
            self._pending = others[MAX_BATCH:] + bulk
            return others[:MAX_BATCH]
        self._bulk_turn = False
        if not bulk:
            return []
        self._bulk_queued -= 1
        self._pending = others + bulk[1:]
        return bulk[:1]

    async def _cycle(self, batch: list[_Pending]) -> None:
        ops = [op for op, _, _ in batch]
        claim = None
        if self.claimer is not None and not self._stopping:
            claim = self.claimer.claim_params(ops)
        if not ops and claim is None:
            return
        started = time.perf_counter()
        try:
            results = await self._store.write([*ops, ClaimJobs(claim)] if claim is not None else ops)
        except Exception as exc:
            if claim is not None and self.claimer is not None:
                self.claimer.claim_failed()  # nothing was claimed: ask again in the next transaction
            if isinstance(exc, StorageError):
                await self._storage_failed(batch, exc)
            else:
                await self._failed(batch, exc)
            return
        self.commits += 1
        self.last_commit_at = time.perf_counter()
        if self._reported is not None:
            self._healthy()  # a real commit after a fault: the storage is back
        claimed: ClaimResult | None = results.pop() if claim is not None else None
        try:
            self._after_commit(batch, ops, results, claim, claimed)
        except Exception:  # committed already: every caller still gets its answer, the writer goes on
            log.exception("handing out %d committed writes failed", len(batch))
            _resolve(batch, results)
        bulk = sum(len(op.job_ids) for op in ops if isinstance(op, UpdateJobs))
        if bulk:
            self.last_bulk = (bulk, time.perf_counter() - started)

    def _after_commit(self, batch: list[_Pending], ops: list[WriteOp], results: list[Any],
                      claim: ClaimParams | None, claimed: ClaimResult | None) -> None:
        if claimed is not None and claimed.claimed:
            _show_claims(ops, results, claimed)
        events = _events_of(ops, results, claimed)
        if events:
            self._hub.publish(events)
        _resolve(batch, results)
        if self.claimer is not None:
            self.claimer.after_cycle(ops, results, claim, claimed)

    async def _failed(self, batch: list[_Pending], exc: Exception) -> None:
        """A transaction failed as a whole for a reason that is not the storage's (a bug)."""
        log.exception("committing %d writes failed", len(batch), exc_info=exc)
        for _, future, _ in batch:
            if not future.done():
                future.set_exception(exc)
        await asyncio.sleep(ERROR_BACKOFF)
        self._wake.set()

    async def _storage_failed(self, batch: list[_Pending], fault: StorageError) -> None:
        """Answer the clients' writes with `fault`, hold the engine's (first in line again), and
        probe on a backoff until the storage takes a write."""
        held: list[_Pending] = []
        for op, future, fail_fast in batch:
            if not fail_fast:
                held.append((op, future, fail_fast))  # even when its caller stopped waiting
            elif not future.done():
                future.set_exception(_fresh(fault))
        self._pending[:0] = held
        self._between_cycles.set()  # nothing was committed: a shutdown need not wait for the probes
        self._report(fault)
        while True:
            # Doubles across failures and is reset only by a real commit, so a fault the probe does
            # not see (a damaged table the probe does not touch) still backs off instead of spinning.
            self._probe_delay = min(self._probe_delay * 2, PROBE_CAP) if self._probe_delay else PROBE_FIRST
            if self._shutting_down.is_set():  # shutting down on broken storage: held writes are not written
                self._fail_all(fault)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._shutting_down.wait(), self._probe_delay)
                continue
            try:
                await self._store.probe()
            except StorageError as still:
                self._report(still)
                self._fail_clients(still)
                continue
            except Exception:  # the probe itself failed otherwise: still not known to be healthy
                log.exception("storage probe failed")
                self._fail_clients(fault)
                continue
            break
        if self._pending:
            self.storage_error = None  # clients may write again; the held writes' commit confirms it
        else:
            self._healthy()  # nothing held: the probe is the evidence
        self._wake.set()

    def _healthy(self) -> None:
        self._probe_delay = 0.0
        self._report(None)

    def _fail_all(self, fault: StorageError) -> None:
        """At shutdown: the engine's held writes fail too (their jobs' leases expire, and the next
        start rescues them); the storage never acknowledged them."""
        pending, self._pending = self._pending, []
        for _, future, _ in pending:
            if not future.done():
                future.set_exception(_fresh(fault))

    def _fail_clients(self, fault: StorageError) -> None:
        """Clients queued while a probe was waiting get the fault now rather than after recovery."""
        keep: list[_Pending] = []
        for op, future, fail_fast in self._pending:
            if fail_fast:
                if not future.done():
                    future.set_exception(_fresh(fault))
            else:
                keep.append((op, future, fail_fast))
        self._pending = keep

    def _report(self, fault: StorageError | None) -> None:
        """One log line and one callback per change of the storage's state, not per write."""
        before, self._reported = self._reported, fault
        self.storage_error = fault
        if (before is None) == (fault is None) and (fault is None or type(before) is type(fault)):
            return
        if fault is None:
            log.warning("storage takes writes again; held writes are being committed")
        else:
            log.error("storage cannot take writes (%s); writes are answered %s and retried on a backoff",
                      fault, fault.reason)
        if self._on_storage is not None:
            self._on_storage(fault)
        self.storage_changed.set()
        self.storage_changed = asyncio.Event()

    def begin_shutdown(self) -> None:
        """The service is stopping: if the storage is failing, the engine's writes fail at once
        instead of being held (their jobs' leases expire; the next start rescues them), so the
        shutdown ends within its budget."""
        self._shutting_down.set()
        if self.storage_error is not None:
            self._fail_all(self.storage_error)

    async def cycle_finished(self) -> None:
        """Return once no transaction is being committed: a claim decided before now has been
        handed out."""
        await self._between_cycles.wait()

    async def stop(self) -> None:
        """Commit everything already queued (claiming nothing more), then stop."""
        self.begin_shutdown()
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None


def _fresh(fault: StorageError) -> StorageError:
    """A new exception per caller: one shared object would collect every raiser's traceback (and
    the frames, requests included, they hold) for as long as the fault lasts."""
    return type(fault)(fault.path, fault.cause)


def _show_claims(ops: Sequence[WriteOp], results: list[Any], claimed: ClaimResult) -> None:
    """An enqueue (or a schedule's firing) whose job the same transaction claimed answers with the
    job as committed (RUNNING), not as it was inserted."""
    if not any(isinstance(op, InsertJobs | FireSchedules) for op in ops):
        return  # the common case in a drain: nothing to show
    running = {item.job.id: item.job for item in claimed.claimed}

    def shown(r: Any) -> Any:
        return replace(r, job=running[r.job.id]) if r.created and r.job.id in running else r

    for index, op in enumerate(ops):
        result = results[index]
        if isinstance(result, JobwireError):
            continue
        if isinstance(op, InsertJobs):
            results[index] = [shown(r) for r in result]
        elif isinstance(op, FireSchedules):
            results[index] = replace(result, fired=[
                replace(f, inserted=shown(f.inserted)) if f.inserted is not None else f for f in result.fired])


def _resolve(batch: list[_Pending], results: Sequence[Any]) -> None:
    for (_, future, _), result in zip(batch, results, strict=True):
        if future.done():
            continue
        if isinstance(result, JobwireError):
            future.set_exception(result)
        else:
            future.set_result(result)


def _events_of(ops: Sequence[WriteOp], results: Sequence[Any], claimed: ClaimResult | None) -> list[Event]:
    """Every event the batch committed, in commit order: published once for all watchers."""
    events: list[Event] = []
    for op, result in zip(ops, results, strict=True):
        extract = _EVENTS.get(type(op))
        if extract is not None and result is not None and not isinstance(result, JobwireError):
            events.extend(extract(result))
    if claimed is not None:
        for item in (*claimed.promoted, *claimed.claimed):
            events.extend(item.events)
    return events


#: Where each kind of write's result keeps its events (writes that emit none are left out).
_EVENTS: dict[type, Callable[[Any], Iterable[Event]]] = {
    ApplyChange: lambda committed: committed.events,
    InsertJobs: lambda inserted: (e for r in inserted for e in r.events),
    UpdateJob: lambda pair: pair[1].events if pair[1] is not None else (),
    UpdateJobs: lambda results: (e for r in results if isinstance(r, tuple) and r[1] is not None for e in r[1].events),
    MarkStale: lambda committed: (e for c in committed for e in c.events),
    DeleteStale: lambda events: events,
    RecordDeliveryAttempt: lambda event: (event,),
    FireSchedules: lambda result: (e for f in result.fired for e in (
        *(f.cancelled.events if f.cancelled is not None else ()), *(f.inserted.events if f.inserted else ()))),
}
