"""Conversion between ``jobwire.v1`` protobuf messages and the SDK's typed models, in one place.

Also turns a failed gRPC call into the matching :class:`~jobwire.errors.JobwireError`, reading the
``google.rpc.Status`` the server sends in the ``grpc-status-details-bin`` trailer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TypeVar, cast

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped,unused-ignore]
from grpc import aio

from jobwire.errors import JobwireError, error_class_for
from jobwire.models import (
    BulkResult,
    CatchupPolicy,
    EnqueueSpec,
    EventType,
    Job,
    JobError,
    JobEvent,
    JobState,
    OverlapPolicy,
    Payload,
    Phase,
    PhaseState,
    Progress,
    PruneResult,
    Queue,
    QueueSettings,
    QueueStats,
    Schedule,
    ScheduleSpec,
    TriggerResult,
    WaitingReason,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
)
from jobwire.v1 import jobwire_pb2 as pb

STATUS_DETAILS_KEY = "grpc-status-details-bin"
_P = TypeVar("_P", OverlapPolicy, CatchupPolicy)

_JOB_STATE_PREFIX = "JOB_STATE_"
_PHASE_STATE_PREFIX = "PHASE_STATE_"
_EVENT_TYPE_PREFIX = "EVENT_TYPE_"


# --- enums -------------------------------------------------------------------------------------


def job_state_from_proto(value: int) -> JobState:
    """A proto ``JobState`` number as a :class:`JobState`; unknown numbers become UNSPECIFIED."""
    try:
        return JobState(pb.JobState.Name(value).removeprefix(_JOB_STATE_PREFIX))
    except ValueError:
        return JobState.UNSPECIFIED


def job_state_to_proto(state: JobState | str) -> pb.JobState:
    """A :class:`JobState` (or its name, any case, with or without prefix) as the proto number."""
    return cast(pb.JobState, pb.JobState.Value(_prefixed(_JOB_STATE_PREFIX, state)))


def phase_state_from_proto(value: int) -> PhaseState:
    try:
        return PhaseState(pb.PhaseState.Name(value).removeprefix(_PHASE_STATE_PREFIX))
    except ValueError:
        return PhaseState.UNSPECIFIED


def event_type_from_proto(value: int) -> EventType:
    try:
        return EventType(pb.EventType.Name(value).removeprefix(_EVENT_TYPE_PREFIX))
    except ValueError:
        return EventType.UNSPECIFIED


def event_type_to_proto(event_type: EventType | str) -> pb.EventType:
    """An :class:`EventType` (or its name, any case, with or without prefix) as the proto number."""
    return cast(pb.EventType, pb.EventType.Value(_prefixed(_EVENT_TYPE_PREFIX, event_type)))


def _prefixed(prefix: str, name: str) -> str:
    upper = str(name).upper()
    return upper if upper.startswith(prefix) else prefix + upper


# --- well-known types --------------------------------------------------------------------------


def _time(message: pb.Job | pb.Phase | pb.JobError | pb.JobEvent | pb.Queue, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    ts: timestamp_pb2.Timestamp = getattr(message, name)
    return ts.ToDatetime(tzinfo=UTC)


def _duration(value: duration_pb2.Duration) -> timedelta:
    return value.ToTimedelta()


def to_duration(value: timedelta | float) -> duration_pb2.Duration:
    """A ``timedelta`` or a number of seconds as a ``google.protobuf.Duration``."""
    delta = value if isinstance(value, timedelta) else timedelta(seconds=value)
    result = duration_pb2.Duration()
    result.FromTimedelta(delta)
    return result


def to_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A datetime as a ``google.protobuf.Timestamp``; naive datetimes are taken as UTC."""
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


# --- messages -> models ------------------------------------------------------------------------


def progress_from_proto(message: pb.Progress) -> Progress:
    return Progress(percent=message.percent, message=message.message)


def job_error_from_proto(message: pb.JobError) -> JobError:
    return JobError(
        message=message.message,
        type=message.type,
        retryable=message.retryable,
        phase=message.phase,
        attempt=message.attempt,
        interrupted=message.interrupted,
        time=_time(message, "time"),
    )


def phase_from_proto(message: pb.Phase) -> Phase:
    return Phase(
        name=message.name,
        state=phase_state_from_proto(message.state),
        progress=progress_from_proto(message.progress),
        result=message.result,
        error=job_error_from_proto(message.error) if message.HasField("error") else None,
        start_time=_time(message, "start_time"),
        finish_time=_time(message, "finish_time"),
    )


def webhook_from_proto(message: pb.WebhookConfig) -> Webhook:
    return Webhook(url=message.url, events=tuple(event_type_from_proto(e) for e in message.events))


def job_from_proto(message: pb.Job) -> Job:
    """A ``jobwire.v1.Job`` message as a :class:`Job`."""
    return Job(
        id=message.id,
        queue=message.queue,
        kind=message.kind,
        payload=message.payload,
        priority=message.priority,
        state=job_state_from_proto(message.state),
        attempt=message.attempt,
        max_attempts=message.max_attempts,
        counted_attempts=message.counted_attempts,
        phases=tuple(phase_from_proto(p) for p in message.phases),
        progress=progress_from_proto(message.progress),
        result=message.result,
        error=job_error_from_proto(message.error) if message.HasField("error") else None,
        error_history=tuple(job_error_from_proto(e) for e in message.error_history),
        dedupe_key=message.dedupe_key,
        concurrency_key=message.concurrency_key,
        waiting_reason=_waiting_reason(message.waiting_reason),
        labels=dict(message.labels),
        webhook=webhook_from_proto(message.webhook) if message.HasField("webhook") else None,
        cancel_requested=message.cancel_requested,
        cancel_reason=message.cancel_reason,
        create_time=_time(message, "create_time"),
        update_time=_time(message, "update_time"),
        run_at=_time(message, "run_at"),
        start_time=_time(message, "start_time"),
        finish_time=_time(message, "finish_time"),
        last_sequence=message.last_sequence,
        timeout=_duration(message.timeout) if message.HasField("timeout") else None,
    )


def event_from_proto(message: pb.JobEvent) -> JobEvent:
    """A ``jobwire.v1.JobEvent`` message as a :class:`JobEvent`."""
    return JobEvent(
        job_id=message.job_id,
        sequence=message.sequence,
        type=event_type_from_proto(message.type),
        time=_time(message, "time"),
        phase=message.phase,
        job=job_from_proto(message.job) if message.HasField("job") else None,
        detail=message.detail,
    )


def _waiting_reason(value: int) -> WaitingReason:
    try:
        return WaitingReason(pb.WaitingReason.Name(value).removeprefix("WAITING_REASON_"))
    except ValueError:  # a number a newer server sends
        return WaitingReason.UNSPECIFIED


def queue_settings_from_proto(message: pb.QueueSettings) -> QueueSettings:
    return QueueSettings(paused=message.paused, concurrency_limit=message.concurrency_limit,
                         rate_limit=message.rate_limit, rate_burst=message.rate_burst, key_limit=message.key_limit,
                         default_priority=message.default_priority, default_max_attempts=message.default_max_attempts)


def queue_from_proto(message: pb.Queue) -> Queue:
    return Queue(name=message.name, settings=queue_settings_from_proto(message.settings),
                 stats=queue_stats_from_proto(message.stats) if message.HasField("stats") else None,
                 replica_concurrency_limit=message.replica_concurrency_limit,
                 replica_limit_global=message.replica_limit_global, update_time=_time(message, "update_time"))


def queue_name_request(method: str, name: str) -> Message:
    """The request of a queue method that takes only a name (PauseQueue, ResumeQueue, GetQueue)."""
    request: Message = getattr(pb, f"{method}Request")(name=name)
    return request


def list_queues_request(page_size: int, page_token: str) -> pb.ListQueuesRequest:
    return pb.ListQueuesRequest(page_size=page_size, page_token=page_token)


def update_queue_request(name: str, settings: Mapping[str, float | int | None]) -> pb.UpdateQueueRequest:
    """An UpdateQueue request setting the fields given (None: left as it is)."""
    request = pb.UpdateQueueRequest(name=name)
    for field_name, value in settings.items():
        if value is not None:
            setattr(request, field_name, value)
    return request


def queue_stats_from_proto(message: pb.QueueStats) -> QueueStats:
    return QueueStats(
        paused=message.paused,
        settings=queue_settings_from_proto(message.settings),
        queue=message.queue,
        scheduled=message.scheduled,
        queued=message.queued,
        running=message.running,
        retrying=message.retrying,
        succeeded=message.succeeded,
        failed=message.failed,
        cancelled=message.cancelled,
        stale=message.stale,
        oldest_queued_age=_duration(message.oldest_queued_age),
    )


def delivery_from_proto(message: pb.WebhookDelivery) -> WebhookDelivery:
    state = pb.WebhookDeliveryState.Name(message.state).removeprefix("WEBHOOK_DELIVERY_STATE_")
    return WebhookDelivery(
        id=message.id,
        event_type=event_type_from_proto(message.event_type),
        event_sequence=message.event_sequence,
        url=message.url,
        state=state,
        attempts=message.attempts,
        create_time=message.create_time.ToDatetime(tzinfo=UTC) if message.HasField("create_time") else None,
        next_attempt_time=(
            message.next_attempt_time.ToDatetime(tzinfo=UTC) if message.HasField("next_attempt_time") else None
        ),
        last_error=message.last_error,
        attempt_log=tuple(
            WebhookAttempt(
                number=a.number,
                time=a.time.ToDatetime(tzinfo=UTC) if a.HasField("time") else None,
                url=a.url,
                status_code=a.status_code,
                latency=_duration(a.latency),
                response=a.response,
                error=a.error,
            )
            for a in message.attempt_log
        ),
    )


def prune_from_proto(message: pb.PruneJobsResponse) -> PruneResult:
    return PruneResult(message.marked_stale, message.deleted, message.delivery_log_pruned, message.dry_run)


def bulk_from_proto(message: pb.CancelJobsResponse | pb.RetryJobsResponse) -> BulkResult:
    skipped = {pb.SkipReason.Name(s.reason).removeprefix("SKIP_REASON_"): s.count for s in message.skipped}
    requested = message.cancel_requested if isinstance(message, pb.CancelJobsResponse) else 0
    return BulkResult(message.matched, message.changed, requested, MappingProxyType(skipped), message.dry_run)


# --- models -> requests ------------------------------------------------------------------------


def encode_payload(payload: Payload) -> bytes:
    """Payload bytes: bytes unchanged, ``str`` as UTF-8, a mapping or list as compact JSON."""
    if payload is None:
        return b""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def new_request_id() -> str:
    """A fresh idempotency key for one logical Enqueue."""
    return str(uuid.uuid4())


def enqueue_request(spec: EnqueueSpec) -> pb.EnqueueRequest:
    """The ``EnqueueRequest`` for one spec; a missing ``request_id`` is generated here, once."""
    request = pb.EnqueueRequest(
        queue=spec.queue,
        kind=spec.kind,
        payload=encode_payload(spec.payload),
        priority=spec.priority,
        max_attempts=spec.max_attempts,
        dedupe_key=spec.dedupe_key,
        request_id=spec.request_id or new_request_id(),
        labels=dict(spec.labels),
        concurrency_key=spec.concurrency_key,
    )
    if spec.run_at is not None:
        request.run_at.CopyFrom(to_timestamp(spec.run_at))
    if spec.delay is not None:
        request.delay.CopyFrom(to_duration(spec.delay))
    if spec.timeout is not None:
        request.timeout.CopyFrom(to_duration(spec.timeout))
    if spec.webhook_url or spec.webhook_events:
        request.webhook.CopyFrom(
            pb.WebhookConfig(url=spec.webhook_url, events=[event_type_to_proto(e) for e in spec.webhook_events])
        )
    return request


@dataclass(frozen=True)
class Filter:
    """The filters ListJobs, CancelJobs and RetryJobs share (see ``Client.list_jobs``)."""

    queue: str = ""
    kind: str = ""
    states: Iterable[JobState | str] = ()
    labels: Mapping[str, str] | None = None
    label_keys: Iterable[str] = ()
    label_in: Mapping[str, Iterable[str]] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    finished_after: datetime | None = None
    finished_before: datetime | None = None

    def fill(self, target: pb.ListJobsRequest | pb.JobFilter) -> None:
        """Set the filter fields of a ListJobsRequest or a JobFilter (they have the same names)."""
        target.queue, target.kind = self.queue, self.kind
        target.states.extend(job_state_to_proto(s) for s in self.states)
        target.labels.update(dict(self.labels or {}))
        target.label_keys.extend(self.label_keys)
        for key, values in (self.label_in or {}).items():
            target.label_in[key].values.extend([values] if isinstance(values, str) else values)
        for name in ("created_after", "created_before", "finished_after", "finished_before"):
            value = getattr(self, name)
            if value is not None:
                getattr(target, name).CopyFrom(to_timestamp(value))


def list_jobs_request(filters: Filter = Filter(), *, page_size: int = 0, page_token: str = "") -> pb.ListJobsRequest:
    request = pb.ListJobsRequest(page_size=page_size, page_token=page_token)
    filters.fill(request)
    return request


def cancel_jobs_request(filters: Filter, *, all_jobs: bool, dry_run: bool, reason: str) -> pb.CancelJobsRequest:
    request = pb.CancelJobsRequest(all=all_jobs, dry_run=dry_run, reason=reason)
    filters.fill(request.filter)
    return request


def retry_jobs_request(filters: Filter, *, all_jobs: bool, dry_run: bool, from_start: bool) -> pb.RetryJobsRequest:
    request = pb.RetryJobsRequest(all=all_jobs, dry_run=dry_run, from_start=from_start)
    filters.fill(request.filter)
    return request


def watch_events_request(
    queues: Iterable[str] = (), kinds: Iterable[str] = (), types: Iterable[EventType | str] = ()
) -> pb.WatchEventsRequest:
    return pb.WatchEventsRequest(queues=list(queues), kinds=list(kinds), types=[event_type_to_proto(t) for t in types])


# --- schedules ---------------------------------------------------------------------------------


def schedule_spec_to_proto(spec: ScheduleSpec) -> pb.ScheduleSpec:
    """The ``ScheduleSpec`` message; a spec with both or neither of cron and interval is sent as it
    is, for the server to refuse."""
    template = pb.EnqueueRequest(
        queue=spec.queue,
        kind=spec.kind,
        payload=encode_payload(spec.payload),
        priority=spec.priority,
        max_attempts=spec.max_attempts,
        dedupe_key=spec.dedupe_key,
        labels=dict(spec.labels),
        concurrency_key=spec.concurrency_key,
    )
    if spec.timeout is not None:
        template.timeout.CopyFrom(to_duration(spec.timeout))
    if spec.webhook_url or spec.webhook_events:
        template.webhook.CopyFrom(
            pb.WebhookConfig(url=spec.webhook_url, events=[event_type_to_proto(e) for e in spec.webhook_events])
        )
    message = pb.ScheduleSpec(
        template=template,
        time_zone=spec.time_zone,
        description=spec.description,
        overlap_policy=cast(pb.OverlapPolicy, pb.OverlapPolicy.Value(_policy_name("OVERLAP_POLICY_",
                                                                                  spec.overlap_policy))),
        catchup_policy=cast(pb.CatchupPolicy, pb.CatchupPolicy.Value(_policy_name("CATCHUP_POLICY_",
                                                                                  spec.catchup_policy))),
    )
    if spec.cron or spec.interval is None:
        message.cron = spec.cron
    if spec.interval is not None:
        message.interval.CopyFrom(to_duration(spec.interval))
    if spec.jitter is not None:
        message.jitter.CopyFrom(to_duration(spec.jitter))
    return message


def _policy_name(prefix: str, value: str) -> str:
    """A policy (member or name: ``"skip"``, ``"cancel-previous"``, ``"OVERLAP_POLICY_SKIP"``) as its proto name."""
    return _prefixed(prefix, str(value).replace("-", "_"))


def schedule_spec_from_proto(message: pb.ScheduleSpec) -> ScheduleSpec:
    t = message.template
    return ScheduleSpec(
        kind=t.kind,
        cron=message.cron,
        interval=_duration(message.interval) if message.HasField("interval") else None,
        time_zone=message.time_zone,
        payload=t.payload,
        queue=t.queue,
        priority=t.priority,
        max_attempts=t.max_attempts,
        timeout=_duration(t.timeout) if t.HasField("timeout") else None,
        dedupe_key=t.dedupe_key,
        labels=dict(t.labels),
        webhook_url=t.webhook.url,
        webhook_events=tuple(event_type_from_proto(e) for e in t.webhook.events),
        jitter=_duration(message.jitter) if message.HasField("jitter") else None,
        overlap_policy=_policy(OverlapPolicy, pb.OverlapPolicy.Name(message.overlap_policy), "OVERLAP_POLICY_"),
        catchup_policy=_policy(CatchupPolicy, pb.CatchupPolicy.Name(message.catchup_policy), "CATCHUP_POLICY_"),
        description=message.description,
        concurrency_key=t.concurrency_key,
    )


def _policy(enum: type[_P], name: str, prefix: str) -> _P:
    try:
        return enum(name.removeprefix(prefix))
    except ValueError:
        return enum("UNSPECIFIED")


def schedule_from_proto(message: pb.Schedule) -> Schedule:
    """A ``jobwire.v1.Schedule`` message as a :class:`Schedule`."""
    return Schedule(
        id=message.id,
        spec=schedule_spec_from_proto(message.spec),
        paused=message.paused,
        from_config=message.from_config,
        next_fire_times=tuple(t.ToDatetime(tzinfo=UTC) for t in message.next_fire_times),
        last_fire_time=message.last_fire_time.ToDatetime(tzinfo=UTC) if message.HasField("last_fire_time") else None,
        last_job_id=message.last_job_id,
        create_time=message.create_time.ToDatetime(tzinfo=UTC) if message.HasField("create_time") else None,
        update_time=message.update_time.ToDatetime(tzinfo=UTC) if message.HasField("update_time") else None,
    )


def create_schedule_request(schedule_id: str, spec: ScheduleSpec, paused: bool) -> pb.CreateScheduleRequest:
    return pb.CreateScheduleRequest(id=schedule_id, spec=schedule_spec_to_proto(spec), paused=paused)


def update_schedule_request(schedule_id: str, spec: ScheduleSpec) -> pb.UpdateScheduleRequest:
    return pb.UpdateScheduleRequest(id=schedule_id, spec=schedule_spec_to_proto(spec))


def schedule_id_request(method: str, schedule_id: str) -> Message:
    """The request of GetSchedule, DeleteSchedule, PauseSchedule or ResumeSchedule."""
    request: Message = getattr(pb, f"{method}Request")(id=schedule_id)
    return request


def list_schedules_request(page_size: int, page_token: str) -> pb.ListSchedulesRequest:
    return pb.ListSchedulesRequest(page_size=page_size, page_token=page_token)


def trigger_schedule_request(schedule_id: str, request_id: str) -> pb.TriggerScheduleRequest:
    """A missing ``request_id`` is generated here, once, so retries of the call never fire twice."""
    return pb.TriggerScheduleRequest(id=schedule_id, request_id=request_id or new_request_id())


def trigger_from_proto(message: pb.TriggerScheduleResponse) -> TriggerResult:
    return TriggerResult(job=job_from_proto(message.job) if message.HasField("job") else None,
                         skipped=message.skipped)


# --- errors ------------------------------------------------------------------------------------


def rich_status(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` carried in the trailers, if any (and if it parses)."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # a garbled trailer must not hide the real error
                return None
            return status
    return None


def error_from_status(code: grpc.StatusCode, message: str, status: status_pb2.Status | None) -> JobwireError:
    """The typed error for a status code and the optional rich status details."""
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and not reason:
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
    return error_class_for(code, reason)(code, message, reason, metadata, violations)


def error_from_rpc(error: aio.AioRpcError | grpc.RpcError) -> JobwireError:
    """The typed SDK error for a failed gRPC call."""
    if isinstance(error, aio.AioRpcError):
        code, message = error.code(), error.details() or ""
        trailers: Iterable[tuple[str, str | bytes]] | None = error.trailing_metadata()
    elif isinstance(error, grpc.Call):
        code, message = error.code(), error.details() or ""
        trailers = error.trailing_metadata()
    else:
        code, message, trailers = grpc.StatusCode.UNKNOWN, str(error), None
    return error_from_status(code, message, rich_status(trailers))
