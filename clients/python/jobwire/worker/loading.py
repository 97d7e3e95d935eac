"""Finding the kinds a handler module defines (the server's `--handlers` and `jobwire worker
--handlers` read modules the same way)."""

from __future__ import annotations

import importlib

from jobwire.worker.kind import Kind


def kinds_in_module(module_name: str) -> list[Kind]:
    """Import `module_name` and return every Kind at its top level; ImportError names the module."""
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ImportError(f"cannot import handler module {module_name!r}: {exc}") from exc
    return [value for value in vars(module).values() if isinstance(value, Kind)]
