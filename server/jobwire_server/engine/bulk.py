"""Bulk actions (CancelJobs, RetryJobs): the jobs a filter matches, changed batch by batch.

The ids are listed from the store's reader, newest first, `LIST_PAGE` at a time (after the
previous page's last id), and written in batches, each one `UpdateJobs` through the writer, which
commits it in a transaction of its own (see `Writer`): enqueues and the engine's writes go on
between the batches, never behind a whole bulk action. Each batch is sized by how long the one
before took (`domain.bulk.next_batch`), so its transaction stays near `BATCH_BUDGET` however fast
the store is, between `MIN_BATCH` and the configured maximum. The cursor only moves down, so jobs
created while the action runs are not included, and a job is never visited twice. Each job's
change is the single-job action's, made from the job as stored in the batch's transaction
(`domain/bulk.py`): a job that changed since it was listed is checked again there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from jobwire_server.domain.bulk import MIN_BATCH, Builder, BulkSummary, Tally, next_batch
from jobwire_server.domain.clock import Clock
from jobwire_server.domain.models import Job
from jobwire_server.domain.queries import JobQuery
from jobwire_server.engine.writer import Writer
from jobwire_server.store.base import JobStore, UpdateJobs

#: Ids listed per read. One read serves many batches: a listing costs about the same for 50 ids
#: as for 1,000 (SQLite sorts every job of a queue filter to find the newest), and reads are
#: made while the writer commits other work.
LIST_PAGE = 1000


async def run(store: JobStore, writer: Writer, clock: Clock, query: JobQuery, make_build: Callable[[float], Builder],
              *, batch: int, only: Sequence[str] | None = None, check_open: Callable[[], None],
              on_changed: Callable[[list[Job]], None] | None = None) -> BulkSummary:
    """Apply the builder to every job `query` matches (or only to the ids in `only`), at most
    `batch` jobs per transaction. `make_build` gets each batch's time; `on_changed` the jobs each
    batch changed, as committed. Stops with `ShuttingDown` between batches when the service closes
    (what was committed stays so)."""
    tally = Tally()
    listed = _Listing(store, query, only)
    size = min(batch, MIN_BATCH)
    while True:
        check_open()
        ids = await listed.take(size)
        if not ids:
            break
        results = await writer.write(UpdateJobs(ids, make_build(clock.now())), fail_fast=True)
        changed = tally.add(results)
        if on_changed is not None and changed:
            on_changed(changed)
        jobs, seconds = writer.last_bulk
        size = next_batch(jobs or len(ids), seconds, ceiling=batch)
    return tally.summary()


class _Listing:
    """The ids still to visit, listed a page ahead of the batches (or given)."""

    def __init__(self, store: JobStore, query: JobQuery, only: Sequence[str] | None) -> None:
        self._store = store
        self._query = query
        self._ids: list[str] = list(only) if only is not None else []
        self._next = 0
        self._after: str | None = None
        self._exhausted = only is not None

    async def take(self, count: int) -> list[str]:
        """Up to `count` ids, in order; empty once every match has been taken."""
        if len(self._ids) - self._next < count and not self._exhausted:
            page = await self._store.list_job_ids(replace(self._query, page_size=LIST_PAGE, after_id=self._after))
            self._exhausted = len(page) < LIST_PAGE
            if page:
                self._after = page[-1]
            self._ids = self._ids[self._next:] + page
            self._next = 0
        taken = self._ids[self._next:self._next + count]
        self._next += len(taken)
        return taken


def dry_run(count: int) -> BulkSummary:
    """What a dry run answers: the jobs matched now, nothing changed."""
    return BulkSummary(matched=count, dry_run=True)
