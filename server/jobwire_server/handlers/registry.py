"""Which kinds this server knows: built-ins, every `Kind` found in the handler modules (run here),
and the kinds remote workers declared (`RemoteKind`, run on them)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from jobwire.worker.loading import kinds_in_module

from jobwire_server.domain.errors import KindInProcess
from jobwire_server.handlers.kind import Kind
from jobwire_server.handlers.remote import RemoteKind


class HandlerImportError(Exception):
    """A --handlers module could not be imported or defines a bad kind."""


class Registry:
    def __init__(self, kinds: Iterable[Kind] = ()) -> None:
        self._kinds: dict[str, Kind] = {}
        for kind in kinds:
            self.add(kind)

    def add(self, kind: Kind) -> None:
        if not kind.phases:
            raise HandlerImportError(f"kind {kind.name!r} has no phases")
        if kind.name in self._kinds and self._kinds[kind.name] is not kind:
            raise HandlerImportError(f"kind {kind.name!r} is defined twice")
        self._kinds[kind.name] = kind

    def put_remote(self, kind: RemoteKind) -> None:
        """Add or replace a kind remote workers run; KindInProcess when a handler here runs it."""
        known = self._kinds.get(kind.name)
        if known is not None and not isinstance(known, RemoteKind):
            raise KindInProcess(kind.name)
        self._kinds[kind.name] = kind

    def is_remote(self, name: str) -> bool:
        return isinstance(self._kinds.get(name), RemoteKind)

    def remote_names(self) -> frozenset[str]:
        return frozenset(name for name, kind in self._kinds.items() if isinstance(kind, RemoteKind))

    def get(self, name: str) -> Kind | None:
        return self._kinds.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[Kind]:
        return iter(self._kinds.values())

    def add_module(self, module_name: str) -> int:
        """Import `module_name` and register every Kind at its top level; returns how many."""
        try:
            found = kinds_in_module(module_name)
        except ImportError as exc:
            raise HandlerImportError(str(exc)) from exc
        for kind in found:
            self.add(kind)
        return len(found)


def build_registry(modules: Iterable[str], *, builtins: bool = True) -> Registry:
    registry = Registry()
    if builtins:
        registry.add_module("jobwire_server.handlers.builtin")
    for module in modules:
        if registry.add_module(module) == 0:
            raise HandlerImportError(f"handler module {module!r} defines no Kind at its top level")
    return registry
