"""Kinds that run on remote workers: what a worker declares, and whether a declaration agrees with
the one the server keeps. A kind becomes known when a worker first declares it; its phase list is
then fixed (jobs already enqueued were given it), while its defaults follow the last declaration."""

from __future__ import annotations

from dataclasses import dataclass

from jobwire_server.domain.errors import KindMismatch


@dataclass(frozen=True, slots=True)
class KindSpec:
    """A kind as a worker declares it and the store keeps it."""

    name: str
    phases: tuple[str, ...]
    queue: str
    max_attempts: int
    #: Per-phase timeout in seconds; 0 means none.
    timeout: float = 0.0
    retry_base_delay: float = 1.0
    retry_max_delay: float = 300.0


def check_declared(known: KindSpec | None, declared: KindSpec) -> None:
    """Raise KindMismatch when `declared` changes the phases of a known kind."""
    if known is not None and known.phases != declared.phases:
        raise KindMismatch(declared.name, known.phases, declared.phases)
