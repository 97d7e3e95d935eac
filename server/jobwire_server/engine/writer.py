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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from jobwire_server.domain.errors import JobwireError
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
    InsertJobs,
    JobStore,
    MarkStale,
    RecordDeliveryAttempt,
    UpdateJob,
    WriteOp,
)

log = logging.getLogger("jobwire.writer")

#: Operations per transaction at most; the rest go into the next one at once.
MAX_BATCH = 1000
#: Loop turns without a new submit before a cycle commits what it has.
GATHER_QUIET_TURNS = 1
#: Seconds before trying again after a transaction failed as a whole.
ERROR_BACKOFF = 1.0

_Pending = tuple[WriteOp, "asyncio.Future[Any]"]


class Claimer(Protocol):
    """Decides whether a transaction should also claim, and takes what it claimed."""

    def claim_params(self, ops: Sequence[WriteOp]) -> ClaimParams | None: ...

    def after_cycle(self, ops: Sequence[WriteOp], results: Sequence[Any], claim: ClaimParams | None,
                    claimed: ClaimResult | None) -> None: ...


class Writer:
    def __init__(self, store: JobStore, hub: WatchHub) -> None:
        self._store = store
        self._hub = hub
        self.claimer: Claimer | None = None
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._between_cycles = asyncio.Event()
        self._between_cycles.set()
        #: Transactions committed, and `time.perf_counter()` when the last one did (tests and
        #: benchmarks read them: pickup latency is measured from a commit).
        self.commits = 0
        self.last_commit_at = 0.0

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="jobwire-writer")

    def kick(self) -> None:
        """Run a cycle soon even with nothing pending (the dispatcher wants to claim)."""
        self._wake.set()

    def write_nowait(self, op: WriteOp) -> asyncio.Future[Any]:
        """Queue `op`; the future resolves with its result after the commit, or with the error it
        was refused with. Cancelling the future does not withdraw the operation."""
        if self._task is None or self._task.done():
            raise RuntimeError("the writer is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        self._wake.set()
        return future

    async def write(self, op: WriteOp) -> Any:
        """Commit `op` and return its result. A caller that is cancelled (a client hanging up)
        stops waiting, but never withdraws an operation that is already on its way."""
        return await self.write_nowait(op)

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
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
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

    async def _cycle(self, batch: list[_Pending]) -> None:
        ops = [op for op, _ in batch]
        claim = None
        if self.claimer is not None and not self._stopping:
            claim = self.claimer.claim_params(ops)
        if not ops and claim is None:
            return
        try:
            results = await self._store.write([*ops, ClaimJobs(claim)] if claim is not None else ops)
        except Exception as exc:
            log.exception("committing %d writes failed", len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            await asyncio.sleep(ERROR_BACKOFF)
            self._wake.set()
            return
        self.commits += 1
        self.last_commit_at = time.perf_counter()
        claimed: ClaimResult | None = results.pop() if claim is not None else None
        events = _events_of(ops, results, claimed)
        if events:
            self._hub.publish(events)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, JobwireError):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self.claimer is not None:
            self.claimer.after_cycle(ops, results, claim, claimed)

    async def cycle_finished(self) -> None:
        """Return once no transaction is being committed: a claim decided before now has been
        handed out."""
        await self._between_cycles.wait()

    async def stop(self) -> None:
        """Commit everything already queued (claiming nothing more), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None


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
    MarkStale: lambda committed: (e for c in committed for e in c.events),
    DeleteStale: lambda events: events,
    RecordDeliveryAttempt: lambda event: (event,),
}
