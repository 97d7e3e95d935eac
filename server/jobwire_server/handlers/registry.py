"""Which kinds this server can run: built-ins plus every `Kind` found in the handler modules."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator

from jobwire_server.handlers.kind import Kind


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

    def get(self, name: str) -> Kind | None:
        return self._kinds.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[Kind]:
        return iter(self._kinds.values())

    def add_module(self, module_name: str) -> int:
        """Import `module_name` and register every Kind at its top level; returns how many."""
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise HandlerImportError(f"cannot import handler module {module_name!r}: {exc}") from exc
        found = [value for value in vars(module).values() if isinstance(value, Kind)]
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
