"""The single-operation methods every store offers: `write` with one operation, its refusal
raised. For callers outside the engine (the conformance suite, the commands) that want one write
done now rather than a batch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from jobwire_server.domain.deliveries import AttemptOutcome, Delivery
from jobwire_server.domain.errors import JobwireError
from jobwire_server.domain.models import Event, Job, NewJob, PendingEvent
from jobwire_server.domain.states import JobState
from jobwire_server.domain.transitions import JobChange
from jobwire_server.store.base import (
    ApplyChange,
    ChangeBuilder,
    ClaimJobs,
    ClaimParams,
    ClaimResult,
    Committed,
    DeleteStale,
    InsertJobs,
    InsertResult,
    LeaseRenewal,
    MarkStale,
    PruneDeliveryLog,
    PruneRequests,
    RecordDeliveryAttempt,
    ReleaseDeliveryLeases,
    RenewLeases,
    TakeDeliveries,
    UpdateJob,
    UpdateJobs,
    WriteOp,
)


class SingleOperations:
    """Mixed into a store that defines `write`."""

    #: The store's own `write` (one transaction for the whole batch), which every method here calls.
    write: Callable[[Sequence[WriteOp]], Awaitable[list[Any]]]

    async def _one(self, op: WriteOp) -> Any:
        (result,) = await self.write([op])
        if isinstance(result, JobwireError):
            raise result
        return result

    async def insert_jobs(self, jobs: Sequence[NewJob], now: float, request_ttl: float) -> list[InsertResult]:
        result: list[InsertResult] = await self._one(InsertJobs(jobs, now, request_ttl))
        return result

    async def claim_jobs(self, params: ClaimParams) -> tuple[list[Committed], list[Committed]]:
        result: ClaimResult = await self._one(ClaimJobs(params))
        return result.promoted, result.claimed

    async def apply_changes(self, changes: Sequence[JobChange]) -> list[Committed | None]:
        return await self.write([ApplyChange(c) for c in changes])

    async def update_job(self, job_id: str, build: ChangeBuilder) -> tuple[Job, Committed | None]:
        result: tuple[Job, Committed | None] = await self._one(UpdateJob(job_id, build))
        return result

    async def update_jobs(self, job_ids: Sequence[str], build: ChangeBuilder) -> list[Any]:
        result: list[Any] = await self._one(UpdateJobs(job_ids, build))
        return result

    async def renew_leases(self, owner: str, job_ids: Sequence[str], expires: float) -> int:
        result: LeaseRenewal = await self._one(RenewLeases(owner, job_ids, expires))
        return result.renewed

    async def take_deliveries(self, now: float, limit: int, lease_until: float) -> list[Delivery]:
        result: list[Delivery] = await self._one(TakeDeliveries(now, limit, lease_until))
        return result

    async def record_delivery_attempt(
        self, outcome: AttemptOutcome, now: float, event: PendingEvent | None
    ) -> Event | None:
        result: Event | None = await self._one(RecordDeliveryAttempt(outcome, now, event))
        return result

    async def release_delivery_leases(self, now: float) -> int:
        result: int = await self._one(ReleaseDeliveryLeases(now))
        return result

    async def mark_stale(self, finished_before: Mapping[JobState, float], now: float, limit: int) -> list[Committed]:
        result: list[Committed] = await self._one(MarkStale(finished_before, now, limit))
        return result

    async def delete_stale(self, stale_before: float, now: float, limit: int) -> list[Event]:
        result: list[Event] = await self._one(DeleteStale(stale_before, now, limit))
        return result

    async def prune_delivery_log(self, before: float, limit: int) -> int:
        result: int = await self._one(PruneDeliveryLog(before, limit))
        return result

    async def prune_requests(self, now: float, limit: int) -> int:
        result: int = await self._one(PruneRequests(now, limit))
        return result
