"""The kinds remote workers run: declared through the writer (kept in the store, so Enqueue knows
them with no worker connected, and on every replica after a refresh) and put in the one registry
the in-process kinds are in."""

from __future__ import annotations

from collections.abc import Sequence

from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import KindInProcess
from jobwire_server.domain.kinds import KindSpec
from jobwire_server.engine.writer import Writer
from jobwire_server.handlers.kind import Kind
from jobwire_server.handlers.registry import Registry
from jobwire_server.handlers.remote import RemoteKind
from jobwire_server.store.base import DeclareKinds, JobStore


class RemoteKinds:
    def __init__(self, registry: Registry, writer: Writer, store: JobStore, clock: Clock) -> None:
        self._registry = registry
        self._writer = writer
        self._store = store
        self._clock = clock

    async def load(self) -> int:
        """Put every stored kind in the registry (at start, and when Enqueue meets a kind declared on
        another replica); kinds a handler here runs stay in-process. Returns how many."""
        loaded = 0
        for spec in await self._store.list_kinds():
            if self._registry.get(spec.name) is None or self._registry.is_remote(spec.name):
                self._registry.put_remote(RemoteKind.from_spec(spec))
                loaded += 1
        return loaded

    async def declare(self, specs: Sequence[KindSpec]) -> None:
        """Record a worker's kinds (KindInProcess, KindMismatch) and make them known here."""
        for spec in specs:
            if self._registry.get(spec.name) is not None and not self._registry.is_remote(spec.name):
                raise KindInProcess(spec.name)
        declared: list[KindSpec] = await self._writer.write(DeclareKinds(list(specs), self._clock.now()))
        for spec in declared:
            self._registry.put_remote(RemoteKind.from_spec(spec))

    def get(self, name: str) -> Kind | None:
        return self._registry.get(name)

    def names(self) -> frozenset[str]:
        return self._registry.remote_names()
