"""The asynchronous jobwire client (``grpc.aio``) and the handle it returns for each job.

Example::

    async with jobwire.Client("127.0.0.1:50051", token="...") as client:
        handle = await client.enqueue("sleep", payload={"seconds": 1, "phases": 2})
        async for event in handle.watch():
            print(event.type, event.job.progress.percent if event.job else "")
        result = await handle.result(timeout=60)
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from google.protobuf.message import Message
from grpc import aio

from jobwire import _convert
from jobwire._queues import QueueCalls
from jobwire._schedules import ScheduleCalls
from jobwire.errors import (
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobwireError,
    ResourceExhausted,
    Unavailable,
)
from jobwire.models import (
    BulkResult,
    EnqueueSpec,
    EventType,
    Job,
    JobEvent,
    JobState,
    Payload,
    PruneResult,
    QueueStats,
    WebhookDelivery,
)
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
WATCH_TOO_SLOW = "WATCH_TOO_SLOW"
TOO_MANY_STREAMS = "TOO_MANY_STREAMS"

_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp", bound=Message)


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings: PEM file paths. No ``ca`` means the system roots; ``cert`` + ``key`` enable mTLS.

    ``server_name`` overrides the name checked against the server certificate (useful when the
    target is an IP address the certificate does not list).
    """

    ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials built from the PEM files."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLSConfig needs both cert and key for mutual TLS, or neither")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca), private_key=_read(self.key), certificate_chain=_read(self.cert)
        )


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


#: The b64token alphabet of RFC 6750: what a server accepts after ``Bearer``.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


@dataclass(frozen=True)
class RetryPolicy:
    """How unary calls are retried when the server answers UNAVAILABLE (nothing else is retried).

    ``max_attempts`` counts the first try; the wait before retry ``n`` (0-based) is
    ``min(max_backoff, initial_backoff * multiplier**n)``, randomised down by up to half (jitter).
    The same budget bounds how often a dropped watch stream is resumed without receiving anything.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("RetryPolicy backoffs must be >= 0 and multiplier >= 1")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0-based), with jitter."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        return ceiling * random.uniform(0.5, 1.0)


class Client(ScheduleCalls, QueueCalls):
    """An asynchronous connection to a jobwire server.

    Use it as an async context manager (``async with Client(...) as client``) or call
    :meth:`close` when done. The channel is opened on first use.

    Args:
        target: ``host:port`` of the server.
        token: bearer token, sent as ``authorization: Bearer <token>`` on every call; letters, digits and
            ``-._~+/`` then any ``=`` padding (RFC 6750), or :class:`ValueError`.
        tls: TLS settings; ``None`` means a plaintext channel.
        timeout: deadline in seconds for each unary call attempt (``None``: no deadline).
            Streams (watches) have no deadline.
        retry: retry policy for UNAVAILABLE; ``RetryPolicy(max_attempts=1)`` disables retries.
        channel_options: extra ``grpc`` channel options.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: TLSConfig | None = None,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if token and _TOKEN.fullmatch(token) is None:
            raise ValueError("a bearer token may hold only letters, digits and -._~+/ then '=' padding (RFC 6750)")
        self.target = target
        self.timeout = timeout
        self.retry_policy = retry or RetryPolicy()
        self._tls = tls
        self._channel_options = list(channel_options)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel: aio.Channel | None = None
        self._stub: pb_grpc.JobServiceAsyncStub | None = None

    def __repr__(self) -> str:
        return f"Client(target={self.target!r}, tls={self._tls is not None})"

    async def __aenter__(self) -> Self:
        self._service()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; open streams are cancelled. Calling it twice is harmless."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    # --- jobs -----------------------------------------------------------------------------------

    async def enqueue(
        self,
        kind: str,
        payload: Payload = None,
        *,
        queue: str = "",
        priority: int = 0,
        delay: timedelta | float | None = None,
        run_at: datetime | None = None,
        max_attempts: int = 0,
        timeout: timedelta | float | None = None,  # noqa: ASYNC109 - the job's per-phase limit
        dedupe_key: str = "",
        request_id: str = "",
        labels: Mapping[str, str] | None = None,
        webhook_url: str = "",
        webhook_events: Iterable[EventType | str] = (),
        concurrency_key: str = "",
    ) -> JobHandle:
        """Create a job and return its handle once the server has stored it durably.

        A mapping or list ``payload`` is sent as JSON, ``str`` as UTF-8, bytes as they are. ``delay``
        and ``timeout`` take a ``timedelta`` or seconds; ``timeout`` limits each phase attempt.
        ``request_id`` is generated when not given, so the automatic retries of this call can never
        create a second job. ``handle.deduplicated`` tells whether an active job with the same
        ``dedupe_key`` was returned instead of a new one. ``concurrency_key``: when the queue has a
        ``key_limit``, at most that many jobs with the same key run at once.
        """
        spec = EnqueueSpec(
            kind=kind,
            payload=payload,
            queue=queue,
            priority=priority,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            timeout=timeout,
            dedupe_key=dedupe_key,
            request_id=request_id,
            labels=dict(labels or {}),
            webhook_url=webhook_url,
            webhook_events=tuple(EventType(str(e).upper().removeprefix("EVENT_TYPE_")) for e in webhook_events),
            concurrency_key=concurrency_key,
        )
        request = _convert.enqueue_request(spec)
        response = await self._unary(self._service().Enqueue, request)
        return self._handle_from(response)

    async def enqueue_many(self, specs: Iterable[EnqueueSpec]) -> list[JobHandle]:
        """Create 1 to 1,000 jobs in one transaction (all or none); handles come back in order."""
        request = pb.EnqueueBatchRequest(requests=[_convert.enqueue_request(s) for s in specs])
        response = await self._unary(self._service().EnqueueBatch, request)
        return [self._handle_from(r) for r in response.responses]

    def handle(self, job_id: str) -> JobHandle:
        """A handle for an existing job, without calling the server."""
        return JobHandle(self, job_id)

    async def get_job(self, job_id: str) -> Job:
        """The job as it is now. Raises :class:`~jobwire.JobNotFound` for an unknown id."""
        message = await self._unary(self._service().GetJob, pb.GetJobRequest(id=job_id))
        return _convert.job_from_proto(message)

    async def list_jobs_page(
        self,
        *,
        queue: str = "",
        kind: str = "",
        states: Iterable[JobState | str] = (),
        labels: Mapping[str, str] | None = None,
        label_keys: Iterable[str] = (),
        label_in: Mapping[str, Iterable[str]] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        finished_after: datetime | None = None,
        finished_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[Job], str]:
        """One page of jobs, newest first, and the token of the next page ("" on the last page).

        Every filter given must match: ``labels`` are exact key/value pairs, ``label_keys`` keys that
        must be present (any value), ``label_in`` keys whose value must be one of the values given
        (``{"env": ["prod", "staging"]}``); the time bounds are inclusive ``_after``, exclusive
        ``_before``, and a ``finished_`` bound matches only finished jobs.
        """
        filters = _convert.Filter(queue, kind, tuple(states), labels, tuple(label_keys), label_in, created_after,
                                  created_before, finished_after, finished_before)
        request = _convert.list_jobs_request(filters, page_size=page_size, page_token=page_token)
        response = await self._unary(self._service().ListJobs, request)
        return [_convert.job_from_proto(j) for j in response.jobs], response.next_page_token

    async def list_jobs(
        self,
        *,
        queue: str = "",
        kind: str = "",
        states: Iterable[JobState | str] = (),
        labels: Mapping[str, str] | None = None,
        label_keys: Iterable[str] = (),
        label_in: Mapping[str, Iterable[str]] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        finished_after: datetime | None = None,
        finished_before: datetime | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[Job]:
        """Every job matching all the filters (as in :meth:`list_jobs_page`), newest first, fetching
        pages as iteration goes."""
        states, label_keys = tuple(states), tuple(label_keys)
        token = ""
        while True:
            jobs, token = await self.list_jobs_page(
                queue=queue,
                kind=kind,
                states=states,
                labels=labels,
                label_keys=label_keys,
                label_in=label_in,
                created_after=created_after,
                created_before=created_before,
                finished_after=finished_after,
                finished_before=finished_before,
                page_size=page_size,
                page_token=token,
            )
            for job in jobs:
                yield job
            if not token:
                return

    async def cancel_jobs(
        self,
        *,
        queue: str = "",
        kind: str = "",
        states: Iterable[JobState | str] = (),
        labels: Mapping[str, str] | None = None,
        label_keys: Iterable[str] = (),
        label_in: Mapping[str, Iterable[str]] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        finished_after: datetime | None = None,
        finished_before: datetime | None = None,
        all_jobs: bool = False,
        dry_run: bool = False,
        reason: str = "",
    ) -> BulkResult:
        """Cancel every job the filters match (as in :meth:`list_jobs_page`), as ``cancel`` does each
        one; with ``dry_run`` only count them. The server works in batches, each committed on its
        own; jobs it cannot cancel are counted in ``skipped``. No filter at all is refused unless
        ``all_jobs`` is set. More than one match needs the ``admin`` scope (:class:`PermissionDenied`).
        """
        filters = _convert.Filter(queue, kind, tuple(states), labels, tuple(label_keys), label_in, created_after,
                                  created_before, finished_after, finished_before)
        request = _convert.cancel_jobs_request(filters, all_jobs=all_jobs, dry_run=dry_run, reason=reason)
        response: pb.CancelJobsResponse = await self._unary(self._service().CancelJobs, request)
        return _convert.bulk_from_proto(response)

    async def retry_jobs(
        self,
        *,
        queue: str = "",
        kind: str = "",
        states: Iterable[JobState | str] = (),
        labels: Mapping[str, str] | None = None,
        label_keys: Iterable[str] = (),
        label_in: Mapping[str, Iterable[str]] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        finished_after: datetime | None = None,
        finished_before: datetime | None = None,
        all_jobs: bool = False,
        dry_run: bool = False,
        from_start: bool = False,
    ) -> BulkResult:
        """Queue again every finished job the filters match, as ``retry`` does each one; with
        ``dry_run`` only count them. Batches, ``all_jobs`` and scope as in :meth:`cancel_jobs`."""
        filters = _convert.Filter(queue, kind, tuple(states), labels, tuple(label_keys), label_in, created_after,
                                  created_before, finished_after, finished_before)
        request = _convert.retry_jobs_request(filters, all_jobs=all_jobs, dry_run=dry_run, from_start=from_start)
        response: pb.RetryJobsResponse = await self._unary(self._service().RetryJobs, request)
        return _convert.bulk_from_proto(response)

    async def watch_events(
        self,
        *,
        queues: Iterable[str] = (),
        kinds: Iterable[str] = (),
        types: Iterable[EventType | str] = (),
    ) -> AsyncIterator[JobEvent]:
        """Live events of every job matching the filters, until the caller stops iterating.

        Nothing is replayed: a dropped stream raises (events missed while away cannot be recovered).
        """
        request = _convert.watch_events_request(queues, kinds, types)
        call = self._service().WatchEvents(request, metadata=self._metadata)
        try:
            async for message in call:
                yield _convert.event_from_proto(message)
        except aio.AioRpcError as exc:
            raise _convert.error_from_rpc(exc) from exc
        finally:
            call.cancel()

    async def queue_stats(self, queue: str = "") -> list[QueueStats]:
        """Job counts per state for one queue, or for every queue holding jobs (sorted by name)."""
        response = await self._unary(self._service().GetQueueStats, pb.GetQueueStatsRequest(queue=queue))
        return [_convert.queue_stats_from_proto(q) for q in response.queues]

    async def webhook_deliveries(self, job_id: str) -> list[WebhookDelivery]:
        """A job's webhook deliveries with their attempt log, oldest event first."""
        request = pb.ListWebhookDeliveriesRequest(job_id=job_id)
        response = await self._unary(self._service().ListWebhookDeliveries, request)
        return [_convert.delivery_from_proto(d) for d in response.deliveries]

    async def prune(self, dry_run: bool = False) -> PruneResult:
        """Run retention now (needs the ``admin`` scope), or with ``dry_run`` count what it would do."""
        response = await self._unary(self._service().PruneJobs, pb.PruneJobsRequest(dry_run=dry_run))
        return _convert.prune_from_proto(response)

    # --- per-job operations (used by JobHandle) -------------------------------------------------

    async def _cancel_job(self, job_id: str, reason: str) -> Job:
        request = pb.CancelJobRequest(id=job_id, reason=reason)
        return _convert.job_from_proto(await self._unary(self._service().CancelJob, request))

    async def _retry_job(self, job_id: str, from_start: bool) -> Job:
        request = pb.RetryJobRequest(id=job_id, from_start=from_start)
        return _convert.job_from_proto(await self._unary(self._service().RetryJob, request))

    async def _watch_job(self, job_id: str, after_sequence: int) -> AsyncGenerator[JobEvent, None]:
        last = after_sequence
        failures = 0
        while True:
            call = self._service().WatchJob(pb.WatchJobRequest(id=job_id, after_sequence=last), metadata=self._metadata)
            try:
                async for message in call:
                    event = _convert.event_from_proto(message)
                    last = max(last, event.sequence)
                    failures = 0
                    yield event
                return
            except aio.AioRpcError as exc:
                error = _convert.error_from_rpc(exc)
                if not _resumable(error) or failures + 1 >= self.retry_policy.max_attempts:
                    raise error from exc
            finally:
                call.cancel()
            # A slow reader is resumed at once; a lost or full server gets the unary backoff.
            if isinstance(error, Unavailable) or error.reason == TOO_MANY_STREAMS:
                await asyncio.sleep(self.retry_policy.backoff(failures))
            failures += 1

    async def _final_job(self, job_id: str) -> Job:
        after = 0
        while True:
            last: Job | None = None
            async with aclosing(self._watch_job(job_id, after)) as events:
                async for event in events:
                    after = event.sequence
                    if event.job is not None:
                        last = event.job
                    elif event.type is EventType.DELETED:
                        raise JobNotFound(grpc.StatusCode.NOT_FOUND, f"job {job_id} was deleted", "JOB_NOT_FOUND")
            if last is not None and last.is_terminal:
                return last
            job = await self.get_job(job_id)
            if job.is_terminal:
                return job
            after = job.last_sequence

    async def _result(self, job_id: str, timeout: float | None) -> bytes:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            job = await self._final_job(job_id)
        outcome = job.outcome()
        if outcome is JobState.SUCCEEDED:
            return job.result
        if outcome is JobState.CANCELLED:
            raise JobCancelled(job)
        raise JobFailed(job)

    # --- plumbing -------------------------------------------------------------------------------

    def _service(self) -> pb_grpc.JobServiceAsyncStub:
        if self._stub is None:
            if self._tls is None:
                self._channel = aio.insecure_channel(self.target, options=self._channel_options)
            else:
                options = list(self._channel_options)
                if self._tls.server_name:
                    options.append(("grpc.ssl_target_name_override", self._tls.server_name))
                self._channel = aio.secure_channel(self.target, self._tls.credentials(), options=options)
            self._stub = pb_grpc.JobServiceStub(self._channel)
        return self._stub

    async def _unary(self, method: aio.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req) -> _Resp:
        retries = 0
        while True:
            try:
                return await method(request, timeout=self.timeout, metadata=self._metadata)
            except aio.AioRpcError as exc:
                error = _convert.error_from_rpc(exc)
                if not isinstance(error, Unavailable) or retries + 1 >= self.retry_policy.max_attempts:
                    raise error from exc
            await asyncio.sleep(self.retry_policy.backoff(retries))
            retries += 1

    def _handle_from(self, response: pb.EnqueueResponse) -> JobHandle:
        job = _convert.job_from_proto(response.job)
        return JobHandle(self, job.id, job=job, deduplicated=response.deduplicated)


def _resumable(error: JobwireError) -> bool:
    if isinstance(error, Unavailable):
        return True
    return isinstance(error, ResourceExhausted) and error.reason in (WATCH_TOO_SLOW, TOO_MANY_STREAMS)


class JobHandle:
    """A reference to one job: read, cancel, retry, watch it or wait for its result.

    Attributes:
        id: the job id.
        job: the job as returned by the call that made the handle (``None`` for ``Client.handle``).
        deduplicated: True when ``enqueue`` folded the request into an existing active job.
    """

    def __init__(self, client: Client, job_id: str, *, job: Job | None = None, deduplicated: bool = False) -> None:
        self.client = client
        self.id = job_id
        self.job = job
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, deduplicated={self.deduplicated})"

    async def get(self) -> Job:
        """The job as it is now."""
        return await self.client.get_job(self.id)

    async def cancel(self, reason: str = "") -> Job:
        """Cancel the job; a RUNNING job is asked to stop and may still be RUNNING in the reply.

        Raises :class:`~jobwire.InvalidTransition` when the job already finished otherwise.
        """
        return await self.client._cancel_job(self.id, reason)

    async def retry(self, from_start: bool = False) -> Job:
        """Queue a finished job again; ``from_start`` also reruns phases that succeeded."""
        return await self.client._retry_job(self.id, from_start)

    def watch(self, after_sequence: int = 0) -> AsyncIterator[JobEvent]:
        """The job's events: a SNAPSHOT first (or the stored events after ``after_sequence``), then live.

        A stream dropped by the server (UNAVAILABLE, or a slow-reader RESOURCE_EXHAUSTED) is resumed
        from the last sequence received, without gaps or repeats; a stream the server refused for now
        (UNAVAILABLE, or RESOURCE_EXHAUSTED with reason TOO_MANY_STREAMS) is tried again after the
        retry policy's backoff. The policy's ``max_attempts`` bounds the tries in a row that receive
        nothing. Iteration ends when the server ends
        the stream, after the event that made the job terminal.
        """
        return self.client._watch_job(self.id, after_sequence)

    async def result(self, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - documented API
        """Wait for the job to finish and return its result bytes.

        Raises :class:`~jobwire.JobFailed` or :class:`~jobwire.JobCancelled` (carrying the job) when it
        did not succeed, and :class:`TimeoutError` when ``timeout`` seconds pass first.
        """
        return await self.client._result(self.id, timeout)
