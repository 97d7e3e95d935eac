"""Group commit for the executor's changes: every change submitted while a commit is running is
written together in the next transaction, then its events are published to the hub."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from jobwire_server.domain.transitions import JobChange
from jobwire_server.engine.hub import WatchHub
from jobwire_server.store.base import Committed, JobStore

log = logging.getLogger("jobwire.writer")

MAX_BATCH = 1000


class ChangeWriter:
    def __init__(self, store: JobStore, hub: WatchHub, on_commit: Callable[[list[Committed]], None]) -> None:
        self._store = store
        self._hub = hub
        self._on_commit = on_commit
        self._pending: list[tuple[JobChange, asyncio.Future[Committed | None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="jobwire-writer")

    async def submit(self, change: JobChange) -> Committed | None:
        """Write `change` (guarded); None when its guard no longer held. Shielded so the caller's
        cancellation never loses a change that is already on its way."""
        if self._task is None or self._task.done():
            raise RuntimeError("change writer is not running")
        future: asyncio.Future[Committed | None] = asyncio.get_running_loop().create_future()
        self._pending.append((change, future))
        self._wake.set()
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[JobChange, asyncio.Future[Committed | None]]]) -> None:
        try:
            results = await self._store.apply_changes([change for change, _ in batch])
        except Exception as exc:
            log.exception("writing %d job changes failed", len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        committed = [c for c in results if c is not None]
        for c in committed:
            self._hub.publish(c.events)
        self._on_commit(committed)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def stop(self) -> None:
        """Write everything already submitted, then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
