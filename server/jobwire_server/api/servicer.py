"""`jobwire.v1.JobService` over grpc.aio: validate, call the job service, convert, map errors."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc
from grpc import aio
from jobwire.v1 import jobwire_pb2, jobwire_pb2_grpc
from opentelemetry import trace

from jobwire_server.api.auth import ADMIN, TokenAuthInterceptor, scope_refused
from jobwire_server.api.convert import (
    EncodedEvents,
    cancel_jobs_response,
    delivery_to_proto,
    event_to_proto,
    job_to_proto,
    retry_jobs_response,
    snapshot_event,
    stats_to_proto,
)
from jobwire_server.api.errors import abort, abort_with, status_with
from jobwire_server.api.errors import unary as _unary
from jobwire_server.api.schedules import ScheduleMethods
from jobwire_server.api.validation import (
    Limits,
    bulk_request_to_query,
    encode_page_token,
    enqueue_to_new_job,
    list_request_to_query,
    validate_job_id,
    watch_events_filter,
)
from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import FieldViolation, InvalidArgument, JobwireError, ShuttingDown
from jobwire_server.domain.models import Event, Job, NewJob
from jobwire_server.domain.queries import JobQuery, filters_digest
from jobwire_server.domain.states import FINAL_EVENTS, TERMINAL_STATES, JobState
from jobwire_server.engine.hub import EventFilter, Subscription
from jobwire_server.engine.retention import Retention
from jobwire_server.engine.schedules import ScheduleService
from jobwire_server.engine.service import JobService
from jobwire_server.engine.webhooks.guard import AddressGuard, AddressRefused
from jobwire_server.handlers.kind import NAME_PATTERN
from jobwire_server.handlers.registry import Registry
from jobwire_server.telemetry import ATTR_JOB_ID, ATTR_KIND, ATTR_QUEUE, enqueue_traceparent

Context = aio.ServicerContext[Any, Any]


class JobServicer(ScheduleMethods, jobwire_pb2_grpc.JobServiceServicer):
    def __init__(self, service: JobService, registry: Registry, clock: Clock, limits: Limits, *,
                 max_watch_streams: int, page_secret: bytes | None = None,
                 webhook_guard: AddressGuard | None = None, retention: Retention | None = None,
                 schedules: ScheduleService | None = None, auth: TokenAuthInterceptor | None = None,
                 refresh_kinds: Callable[[], Awaitable[int]] | None = None) -> None:
        self._service = service
        #: Reads the kinds remote workers declared (on any replica) when Enqueue meets an unknown one.
        self._refresh_kinds = refresh_kinds
        self._schedules = schedules
        #: Access control, when tokens are configured: bulk actions check the `admin` scope themselves.
        self._auth = auth
        self._guard = webhook_guard or AddressGuard()
        self._retention = retention
        self._registry = registry
        self._clock = clock
        self._limits = limits
        self._max_watches = max_watch_streams
        self._secret = page_secret or secrets.token_bytes(32)
        self._watches = 0
        #: Live events are sent as bytes serialized once for all their streams (the streaming
        #: methods' serializer passes bytes through: see api/decoding.py).
        self._encoded = EncodedEvents()

    # ------------------------------------------------------------------ writes

    async def _learn_kinds(self, kinds: list[str]) -> None:
        """A kind this process does not know may have been declared by a worker of another replica."""
        if self._refresh_kinds is not None and any(kind not in self._registry for kind in kinds):
            await self._refresh_kinds()

    @_unary
    async def Enqueue(self, request: jobwire_pb2.EnqueueRequest, context: Context) -> jobwire_pb2.EnqueueResponse:
        await self._learn_kinds([request.kind])
        new = enqueue_to_new_job(request, self._registry, self._clock.now(), self._limits,
                                 trace_parent=enqueue_traceparent(context.invocation_metadata()))
        await self._check_webhooks([new])
        (result,) = await self._service.enqueue([new])
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({ATTR_JOB_ID: result.job.id, ATTR_QUEUE: result.job.queue, ATTR_KIND: result.job.kind})
        return jobwire_pb2.EnqueueResponse(job=job_to_proto(result.job), deduplicated=result.deduplicated)

    @_unary
    async def EnqueueBatch(self, request: jobwire_pb2.EnqueueBatchRequest,
                           context: Context) -> jobwire_pb2.EnqueueBatchResponse:
        count = len(request.requests)
        if not 1 <= count <= self._limits.max_batch:
            raise InvalidArgument([FieldViolation("requests", f"must hold 1–{self._limits.max_batch} requests, "
                                                              f"got {count}")])
        await self._learn_kinds([item.kind for item in request.requests])
        now = self._clock.now()
        trace_parent = enqueue_traceparent(context.invocation_metadata())
        new_jobs: list[NewJob] = []
        violations: list[FieldViolation] = []
        for index, item in enumerate(request.requests):
            try:
                new_jobs.append(enqueue_to_new_job(item, self._registry, now, self._limits,
                                                   field_prefix=f"requests[{index}].", trace_parent=trace_parent))
            except InvalidArgument as exc:
                violations.extend(exc.violations)
        if violations:
            raise InvalidArgument(violations)
        await self._check_webhooks(new_jobs, batch=True)
        results = await self._service.enqueue(new_jobs)
        return jobwire_pb2.EnqueueBatchResponse(responses=[
            jobwire_pb2.EnqueueResponse(job=job_to_proto(r.job), deduplicated=r.deduplicated) for r in results])

    async def _check_webhooks(self, new_jobs: list[NewJob], *, batch: bool = False) -> None:
        """The SSRF guard at enqueue: every webhook URL must resolve to addresses it may reach."""
        violations: list[FieldViolation] = []
        for index, new in enumerate(new_jobs):
            if new.webhook is None:
                continue
            try:
                await self._guard.target(new.webhook.url)
            except AddressRefused as exc:
                prefix = f"requests[{index}]." if batch else ""
                violations.append(FieldViolation(f"{prefix}webhook.url", str(exc)))
        if violations:
            raise InvalidArgument(violations)

    @_unary
    async def CancelJob(self, request: jobwire_pb2.CancelJobRequest, context: Context) -> jobwire_pb2.Job:
        job_id = validate_job_id(request.id)
        if len(request.reason) > 1024:
            raise InvalidArgument([FieldViolation("reason", "must be at most 1024 characters")])
        return job_to_proto(await self._service.cancel(job_id, request.reason or "cancelled by user"))

    @_unary
    async def RetryJob(self, request: jobwire_pb2.RetryJobRequest, context: Context) -> jobwire_pb2.Job:
        job_id = validate_job_id(request.id)
        return job_to_proto(await self._service.retry(job_id, request.from_start))

    @_unary
    async def CancelJobs(self, request: jobwire_pb2.CancelJobsRequest,
                         context: Context) -> jobwire_pb2.CancelJobsResponse:
        query = bulk_request_to_query(request, limits=self._limits)
        if request.dry_run:
            return cancel_jobs_response(await self._service.count_jobs(query))
        only = await self._limit_to_scope(context, query, "CancelJobs")
        return cancel_jobs_response(
            await self._service.cancel_jobs(query, request.reason or "cancelled by user", only=only))

    @_unary
    async def RetryJobs(self, request: jobwire_pb2.RetryJobsRequest,
                        context: Context) -> jobwire_pb2.RetryJobsResponse:
        query = bulk_request_to_query(request, limits=self._limits)
        if request.dry_run:
            return retry_jobs_response(await self._service.count_jobs(query))
        only = await self._limit_to_scope(context, query, "RetryJobs")
        return retry_jobs_response(await self._service.retry_jobs(query, request.from_start, only=only))

    async def _limit_to_scope(self, context: Context, query: JobQuery, method: str) -> list[str] | None:
        """Acting on more than one job needs `admin`. None: the caller may act on every match (it
        has `admin`, or there is no access control); otherwise the one job it may act on (or none),
        so a job matching after this count is not acted on either. More than one match without
        `admin` is PERMISSION_DENIED, as the interceptor words it."""
        self._service.check_open()
        if self._auth is None:
            return None
        token = self._auth.authenticate(context.invocation_metadata())
        if token is not None and ADMIN in token.scopes:
            return None
        found = await self._service.job_ids(replace(query, page_size=2))
        if len(found) > 1:
            if token is None:  # the interceptor lets no such call through; refused all the same
                await abort_with(context, status_with(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer "
                                                      "token", "UNAUTHENTICATED"))
            await abort_with(context, scope_refused(token, ADMIN, f"{method} on more than one job"))
        return found

    # ------------------------------------------------------------------ reads

    @_unary
    async def GetJob(self, request: jobwire_pb2.GetJobRequest, context: Context) -> jobwire_pb2.Job:
        return job_to_proto(await self._service.get(validate_job_id(request.id)))

    @_unary
    async def ListJobs(self, request: jobwire_pb2.ListJobsRequest, context: Context) -> jobwire_pb2.ListJobsResponse:
        query = list_request_to_query(request, self._secret, limits=self._limits)
        jobs, after = await self._service.list_jobs(query)
        token = encode_page_token(after, filters_digest(query), self._secret) if after else ""
        return jobwire_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs], next_page_token=token)

    @_unary
    async def GetQueueStats(self, request: jobwire_pb2.GetQueueStatsRequest,
                            context: Context) -> jobwire_pb2.GetQueueStatsResponse:
        if request.queue and not NAME_PATTERN.match(request.queue):
            raise InvalidArgument([FieldViolation(
                "queue", "must be 1–128 letters, digits, '.', '-' or '_'")])
        stats = await self._service.queue_stats(request.queue)
        return jobwire_pb2.GetQueueStatsResponse(queues=[stats_to_proto(s) for s in stats])

    @_unary
    async def ListWebhookDeliveries(self, request: jobwire_pb2.ListWebhookDeliveriesRequest,
                                    context: Context) -> jobwire_pb2.ListWebhookDeliveriesResponse:
        deliveries = await self._service.store.job_deliveries(validate_job_id(request.job_id, "job_id"))
        return jobwire_pb2.ListWebhookDeliveriesResponse(deliveries=[delivery_to_proto(d) for d in deliveries])

    @_unary
    async def PruneJobs(self, request: jobwire_pb2.PruneJobsRequest,
                        context: Context) -> jobwire_pb2.PruneJobsResponse:
        if self._retention is None:
            raise ShuttingDown
        if not request.dry_run:
            self._service.check_open()
        counts = await (self._retention.preview() if request.dry_run else self._retention.run_once())
        return jobwire_pb2.PruneJobsResponse(marked_stale=counts.marked_stale, deleted=counts.deleted,
                                             delivery_log_pruned=counts.log_pruned, dry_run=request.dry_run)

    # ------------------------------------------------------------------ streams

    async def WatchJob(self, request: jobwire_pb2.WatchJobRequest,
                       context: Context) -> AsyncIterator[jobwire_pb2.JobEvent]:
        try:
            job_id = validate_job_id(request.id)
        except JobwireError as exc:
            await abort(context, exc)
        await self._admit_watch(context)
        # Subscribe before reading, so nothing committed in between is missed; duplicates are
        # dropped by sequence number.
        sub = self._service.hub.subscribe_job(job_id)
        try:
            try:
                first, last, done = await self._watch_start(job_id, request.after_sequence)
            except JobwireError as exc:
                await abort(context, exc)
            for message in first:
                yield message
            if done:
                return
            async for event in self._live(sub, context, last):
                yield self._encoded(event)  # type: ignore[misc]  # bytes: serialized once for every stream
                if event.type in FINAL_EVENTS:
                    return
        finally:
            sub.close()
            self._watches -= 1

    async def _watch_start(self, job_id: str, after: int) -> tuple[list[jobwire_pb2.JobEvent], int, bool]:
        """(messages to send first, last sequence sent, whether the stream ends after them)."""
        job = await self._service.get(job_id)
        if not after:
            return [snapshot_event(job)], job.last_sequence, _finished(job)
        if after > job.last_sequence:
            raise InvalidArgument([FieldViolation(
                "after_sequence", f"job {job_id} has no event {after}; its last is {job.last_sequence}")])
        messages: list[jobwire_pb2.JobEvent] = []
        last, final = after, False
        while True:  # stored events come in chunks; a long history is replayed whole
            events = await self._service.events_after(job_id, last)
            if not events:
                break
            messages += [event_to_proto(e) for e in events]
            last, final = events[-1].sequence, events[-1].type in FINAL_EVENTS
        # The job was read before its events: it may have finished in between, so the replay's own
        # last event decides too (the hub will not send that terminal event again).
        done = final or (_finished(job) and last >= job.last_sequence)
        return messages, last, done

    async def WatchEvents(self, request: jobwire_pb2.WatchEventsRequest,
                          context: Context) -> AsyncIterator[jobwire_pb2.JobEvent]:
        try:
            queues, kinds, types = watch_events_filter(request)
        except JobwireError as exc:
            await abort(context, exc)
        await self._admit_watch(context)
        sub = self._service.hub.subscribe_all(EventFilter(queues, kinds, types))
        try:
            async for event in self._live(sub, context, 0):
                yield self._encoded(event)  # type: ignore[misc]  # bytes: serialized once for every stream
        finally:
            sub.close()
            self._watches -= 1

    async def _admit_watch(self, context: Context) -> None:
        if self._watches >= self._max_watches:
            await abort_with(context, status_with(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many watch streams (limit {self._max_watches}); retry later",
                "TOO_MANY_STREAMS"))
        self._watches += 1

    async def _live(self, sub: Subscription, context: Context, last: int) -> AsyncIterator[Event]:
        """Events from the hub after sequence `last`, until the subscription ends."""
        while True:
            event = await sub.next()
            if event is None:
                break
            if sub.job_id is not None and event.sequence <= last:
                continue
            last = event.sequence
            yield event
        # Sequence numbers are per job, so only a WatchJob stream can name one to resume from.
        resume = {"last_sequence": str(last)} if sub.job_id is not None else None
        if sub.overflowed:
            await abort_with(context, status_with(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"watcher fell more than {self._service.hub.capacity} events behind"
                + (f"; resume after sequence {last}" if resume else ""), "WATCH_TOO_SLOW", resume))
        await abort_with(context, status_with(
            grpc.StatusCode.UNAVAILABLE, "the server is shutting down; resume on another replica",
            "SHUTTING_DOWN", resume))


def _finished(job: Job) -> bool:
    return job.state in TERMINAL_STATES or job.state is JobState.STALE
