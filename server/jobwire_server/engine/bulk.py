"""Bulk actions (CancelJobs, RetryJobs): the jobs a filter matches, changed batch by batch.

Each batch is listed from the store's reader (newest first, after the previous batch's last id)
and written as one `UpdateJobs` through the writer, which commits it in a transaction of its own
(see `Writer`): enqueues and the engine's writes go on between the batches, never behind a whole
bulk action. The cursor only moves down, so jobs created while the action runs are not included,
and a job is never visited twice. Each job's change is the single-job action's, made from the job
as stored in the batch's transaction (`domain/bulk.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from jobwire_server.domain.bulk import Builder, BulkSummary, Tally
from jobwire_server.domain.clock import Clock
from jobwire_server.domain.models import Job
from jobwire_server.domain.queries import JobQuery
from jobwire_server.engine.writer import Writer
from jobwire_server.store.base import JobStore, UpdateJobs


async def run(store: JobStore, writer: Writer, clock: Clock, query: JobQuery, make_build: Callable[[float], Builder],
              *, batch: int, only: Sequence[str] | None = None, check_open: Callable[[], None],
              on_changed: Callable[[list[Job]], None] | None = None) -> BulkSummary:
    """Apply the builder to every job `query` matches (or only to the ids in `only`), `batch` jobs
    per transaction. `make_build` gets each batch's time; `on_changed` the jobs each batch changed,
    as committed. Stops with `ShuttingDown` between batches when the service closes (what was
    committed stays so)."""
    tally = Tally()
    after: str | None = None
    while True:
        check_open()
        if only is not None:
            ids = list(only[:batch])
            only = only[batch:]
        else:
            ids = await store.list_job_ids(replace(query, page_size=batch, after_id=after))
        if not ids:
            break
        results = await writer.write(UpdateJobs(ids, make_build(clock.now())), fail_fast=True)
        changed = tally.add(results)
        if on_changed is not None and changed:
            on_changed(changed)
        after = ids[-1]
        if only is None and len(ids) < batch:
            break
    return tally.summary()


def dry_run(count: int) -> BulkSummary:
    """What a dry run answers: the jobs matched now, nothing changed."""
    return BulkSummary(matched=count, dry_run=True)
