"""Kinds whose phases run on remote workers: in the registry beside the in-process kinds (Enqueue
validates and applies defaults the same way), with no function of their own."""

from __future__ import annotations

from jobwire_server.domain.kinds import KindSpec
from jobwire_server.domain.retry import RetryPolicy
from jobwire_server.handlers.kind import Kind, PhaseFunction, PhaseSpec


async def _runs_remotely(ctx: object) -> bytes:
    raise RuntimeError("this phase runs on a remote worker")


class RemoteKind(Kind):
    """A kind as a remote worker declared it: phase names and defaults."""

    @classmethod
    def from_spec(cls, spec: KindSpec) -> RemoteKind:
        kind = cls(spec.name, queue=spec.queue, max_attempts=spec.max_attempts, timeout=spec.timeout,
                   retry=RetryPolicy(spec.retry_base_delay, spec.retry_max_delay))
        kind.phases.extend(PhaseSpec(name, _runs_remotely) for name in spec.phases)
        return kind

    def function_for(self, phase_name: str) -> PhaseFunction | None:
        return None  # never run in this process (the claim for its own slots leaves remote kinds alone)
