"""QueueService: the queue RPCs' operations. A change is one `ChangeQueue` through the writer (the
dispatcher claims in the same commit, so a resumed queue's jobs start right after it); reads go to
the store's reader. The settings hold on every replica because every claim reads them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import QueueNotFound
from jobwire_server.domain.models import Job, QueueStats
from jobwire_server.domain.queues import QueueChange, QueueSettings, WaitingReason, apply_change, waiting_reason
from jobwire_server.domain.states import JobState
from jobwire_server.engine.writer import Writer
from jobwire_server.store.base import ChangeQueue, JobStore


@dataclass(frozen=True, slots=True)
class QueueView:
    """A queue as GetQueue shows it: its stored settings (None: it has none) and its counts."""

    name: str
    settings: QueueSettings | None
    stats: QueueStats


class QueueService:
    def __init__(self, store: JobStore, writer: Writer, clock: Clock, *, check_open: Callable[[], None],
                 process_limits: Mapping[str, int] | None = None, limits_global: bool = False) -> None:
        self.store = store
        self._writer = writer
        self._clock = clock
        self._check_open = check_open
        #: This process's `--queue-concurrency` limits, shown beside the stored settings.
        self.process_limits = dict(process_limits or {})
        self.limits_global = limits_global

    async def change(self, name: str, change: QueueChange) -> QueueView:
        self._check_open()
        now = self._clock.now()
        settings: QueueSettings = await self._writer.write(
            ChangeQueue(name, lambda current: apply_change(current, change, now), now), fail_fast=True)
        (stats,) = await self.store.queue_stats(name, self._clock.now())
        return QueueView(name, settings, stats)

    async def get(self, name: str) -> QueueView:
        settings = await self.store.queue_settings(name)
        (stats,) = await self.store.queue_stats(name, self._clock.now())
        if settings is None and not any(stats.counts.values()):
            raise QueueNotFound(name)
        return QueueView(name, settings, stats)

    async def list(self, after: str, limit: int) -> tuple[list[QueueView], str | None]:
        """One page by name, after `after`, of every queue with settings or jobs; and the name to
        continue after (None on the last page)."""
        settings = {s.name: s for s in await self.store.list_queue_settings()}
        stats = {s.queue: s for s in await self.store.queue_stats("", self._clock.now())}
        names = sorted(name for name in settings.keys() | stats.keys() if name > after)
        page = names[:limit]
        views = [QueueView(name, settings.get(name), stats.get(name) or QueueStats(name, {}, 0.0)) for name in page]
        return views, (page[-1] if len(names) > limit else None)

    async def all_settings(self) -> dict[str, QueueSettings]:
        return {s.name: s for s in await self.store.list_queue_settings()}

    async def waiting_reason(self, job: Job) -> WaitingReason | None:
        """Why a QUEUED job waits (None for a job in any other state)."""
        if job.state is not JobState.QUEUED:
            return None
        settings = await self.store.queue_settings(job.queue)
        if settings is None:
            return WaitingReason.NONE
        running, with_key = await self.store.running_counts(job.queue, job.concurrency_key)
        return waiting_reason(settings, self._clock.now(), key=job.concurrency_key, running=running,
                              running_with_key=with_key)
