"""Domain records → proto messages (and proto enum numbers → domain enums), in one place.

This runs for every event of every watch stream, so it is written to be cheap: enum maps are built
once at import, messages are filled in place (no intermediate copies), and timestamps are set field
by field instead of going through datetime.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Final, cast

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from jobwire.v1 import jobwire_pb2

from jobwire_server.domain.bulk import BulkSummary, SkipReason
from jobwire_server.domain.deliveries import DeliveryInfo, DeliveryState, strip_query
from jobwire_server.domain.models import Event, Job, JobError, Phase, QueueStats, Webhook
from jobwire_server.domain.states import EventType, JobState, PhaseState

__all__ = [
    "EncodedEvents",
    "cancel_jobs_response",
    "duration_to_proto",
    "event_to_proto",
    "event_type_from_proto",
    "event_type_to_proto",
    "job_state_from_proto",
    "job_state_to_proto",
    "job_to_proto",
    "phase_state_from_proto",
    "phase_state_to_proto",
    "retry_jobs_response",
    "snapshot_event",
    "stats_to_proto",
    "timestamp_to_proto",
]

_NANOS = 1_000_000_000


def _proto_number(enum: EnumTypeWrapper, name: str) -> int:
    return enum.Value(name)


#: Domain enum → proto value, and back. Built once at import; a domain member without a proto
#: value (same name with the proto prefix) fails the import, so the maps are always complete.
_JOB_STATE_TO_PROTO: Final[dict[JobState, jobwire_pb2.JobState]] = {
    m: cast("jobwire_pb2.JobState", _proto_number(jobwire_pb2.JobState, f"JOB_STATE_{m.name}")) for m in JobState
}
_PHASE_STATE_TO_PROTO: Final[dict[PhaseState, jobwire_pb2.PhaseState]] = {
    m: cast("jobwire_pb2.PhaseState", _proto_number(jobwire_pb2.PhaseState, f"PHASE_STATE_{m.name}"))
    for m in PhaseState
}
_EVENT_TYPE_TO_PROTO: Final[dict[EventType, jobwire_pb2.EventType]] = {
    m: cast("jobwire_pb2.EventType", _proto_number(jobwire_pb2.EventType, f"EVENT_TYPE_{m.name}"))
    for m in EventType
}
_SKIP_REASON_TO_PROTO: Final[dict[SkipReason, jobwire_pb2.SkipReason]] = {
    m: cast("jobwire_pb2.SkipReason", _proto_number(jobwire_pb2.SkipReason, f"SKIP_REASON_{m.name}"))
    for m in SkipReason
}
_JOB_STATE_FROM_PROTO: Final[dict[int, JobState]] = {v: k for k, v in _JOB_STATE_TO_PROTO.items()}
_PHASE_STATE_FROM_PROTO: Final[dict[int, PhaseState]] = {v: k for k, v in _PHASE_STATE_TO_PROTO.items()}
_EVENT_TYPE_FROM_PROTO: Final[dict[int, EventType]] = {v: k for k, v in _EVENT_TYPE_TO_PROTO.items()}
_SNAPSHOT: Final = _EVENT_TYPE_TO_PROTO[EventType.SNAPSHOT]


def job_state_to_proto(state: JobState) -> jobwire_pb2.JobState:
    return _JOB_STATE_TO_PROTO[state]


def phase_state_to_proto(state: PhaseState) -> jobwire_pb2.PhaseState:
    return _PHASE_STATE_TO_PROTO[state]


def event_type_to_proto(event_type: EventType) -> jobwire_pb2.EventType:
    return _EVENT_TYPE_TO_PROTO[event_type]


def job_state_from_proto(number: int) -> JobState:
    """The domain state for a proto JobState number; ValueError for UNSPECIFIED or an unknown number."""
    state = _JOB_STATE_FROM_PROTO.get(number)
    if state is None:
        raise ValueError(f"not a job state: {number}")
    return state


def phase_state_from_proto(number: int) -> PhaseState:
    state = _PHASE_STATE_FROM_PROTO.get(number)
    if state is None:
        raise ValueError(f"not a phase state: {number}")
    return state


def event_type_from_proto(number: int) -> EventType:
    """The domain event type for a proto EventType number; ValueError for UNSPECIFIED or an unknown number."""
    event_type = _EVENT_TYPE_FROM_PROTO.get(number)
    if event_type is None:
        raise ValueError(f"not an event type: {number}")
    return event_type


# ----------------------------------------------------------------------------- time


def _set_timestamp(target: timestamp_pb2.Timestamp, seconds: float) -> None:
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * _NANOS)  # exact: seconds - whole is exact for |seconds| >= 1
    if nanos >= _NANOS:
        whole, nanos = whole + 1, nanos - _NANOS
    target.seconds = whole
    target.nanos = nanos


def _set_duration(target: duration_pb2.Duration, seconds: float) -> None:
    whole = math.trunc(seconds)
    nanos = round((seconds - whole) * _NANOS)  # same sign as `whole`, as Duration requires
    if nanos >= _NANOS:
        whole, nanos = whole + 1, nanos - _NANOS
    elif nanos <= -_NANOS:
        whole, nanos = whole - 1, nanos + _NANOS
    target.seconds = whole
    target.nanos = nanos


def timestamp_to_proto(seconds: float) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    _set_timestamp(message, seconds)
    return message


def duration_to_proto(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    _set_duration(message, seconds)
    return message


# ----------------------------------------------------------------------------- records


def _fill_error(target: jobwire_pb2.JobError, error: JobError) -> None:
    target.message = error.message
    target.type = error.type
    target.retryable = error.retryable
    target.phase = error.phase
    target.attempt = error.attempt
    target.interrupted = error.interrupted
    _set_timestamp(target.time, error.time)


def _fill_phase(target: jobwire_pb2.Phase, phase: Phase) -> None:
    target.name = phase.name
    target.state = _PHASE_STATE_TO_PROTO[phase.state]
    progress = target.progress
    progress.percent = phase.progress.percent
    progress.message = phase.progress.message
    if phase.result:
        target.result = phase.result
    if phase.error is not None:
        _fill_error(target.error, phase.error)
    if phase.start_time is not None:
        _set_timestamp(target.start_time, phase.start_time)
    if phase.finish_time is not None:
        _set_timestamp(target.finish_time, phase.finish_time)


def _fill_webhook(target: jobwire_pb2.WebhookConfig, webhook: Webhook) -> None:
    target.url = webhook.url
    target.events.extend([_EVENT_TYPE_TO_PROTO[e] for e in webhook.events])


def _fill_job(target: jobwire_pb2.Job, job: Job) -> None:
    target.id = job.id
    target.queue = job.queue
    target.kind = job.kind
    if job.payload:
        target.payload = job.payload
    target.priority = job.priority
    target.state = _JOB_STATE_TO_PROTO[job.state]
    target.attempt = job.attempt
    target.max_attempts = job.max_attempts
    target.counted_attempts = job.attempt - job.uncounted_attempts
    add_phase = target.phases.add
    for phase in job.phases:
        _fill_phase(add_phase(), phase)
    progress = target.progress
    progress.percent = job.progress.percent
    progress.message = job.progress.message
    result = job.result
    if result:
        target.result = result
    if job.error is not None:
        _fill_error(target.error, job.error)
    if job.error_history:
        add_error = target.error_history.add
        for error in job.error_history:
            _fill_error(add_error(), error)
    target.dedupe_key = job.dedupe_key  # proto3 strings have no presence: "" is "not set"
    if job.concurrency_key:
        target.concurrency_key = job.concurrency_key
    if job.labels:
        target.labels.update(job.labels)
    if job.webhook is not None:
        _fill_webhook(target.webhook, job.webhook)
    target.cancel_requested = job.cancel_requested
    target.cancel_reason = job.cancel_reason
    target.trace_parent = job.trace_parent
    _set_timestamp(target.create_time, job.create_time)
    _set_timestamp(target.update_time, job.update_time)
    _set_timestamp(target.run_at, job.run_at)
    if job.start_time is not None:
        _set_timestamp(target.start_time, job.start_time)
    if job.finish_time is not None:
        _set_timestamp(target.finish_time, job.finish_time)
    target.last_sequence = job.last_sequence
    _set_duration(target.timeout, job.timeout)


def job_to_proto(job: Job) -> jobwire_pb2.Job:
    """The proto form of `job`. Unknown times (None) leave their Timestamp unset; `timeout` is
    always set (zero means the kind has no limit); `progress` is always set."""
    message = jobwire_pb2.Job()
    _fill_job(message, job)
    return message


def event_to_proto(event: Event) -> jobwire_pb2.JobEvent:
    """The proto form of a stored event; `job` is unset when the event has none (DELETED)."""
    message = jobwire_pb2.JobEvent(
        job_id=event.job_id,
        sequence=event.sequence,
        type=_EVENT_TYPE_TO_PROTO[event.type],
        phase=event.phase,
        detail=event.detail,
    )
    _set_timestamp(message.time, event.time)
    if event.job is not None:
        _fill_job(message.job, event.job)
    return message


class EncodedEvents:
    """Each published event serialized once, however many streams send it: the hub hands the same
    `Event` object to every subscriber, so the bytes are kept by that object's identity (holding
    the object, so the identity cannot be reused) for the most recent `capacity` events."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._cache: OrderedDict[int, tuple[Event, bytes]] = OrderedDict()

    def __call__(self, event: Event) -> bytes:
        key = id(event)
        hit = self._cache.get(key)
        if hit is not None:
            return hit[1]
        data: bytes = event_to_proto(event).SerializeToString()
        self._cache[key] = (event, data)
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return data


def snapshot_event(job: Job) -> jobwire_pb2.JobEvent:
    """The SNAPSHOT that opens a WatchJob stream: the job now, at its `last_sequence`."""
    message = jobwire_pb2.JobEvent(job_id=job.id, sequence=job.last_sequence, type=_SNAPSHOT)
    _set_timestamp(message.time, job.update_time)
    _fill_job(message.job, job)
    return message


def stats_to_proto(stats: QueueStats) -> jobwire_pb2.QueueStats:
    """Counts per state (missing states count zero) and the age of the oldest QUEUED job."""
    counts: Mapping[JobState, int] = stats.counts
    message = jobwire_pb2.QueueStats(
        queue=stats.queue,
        scheduled=counts.get(JobState.SCHEDULED, 0),
        queued=counts.get(JobState.QUEUED, 0),
        running=counts.get(JobState.RUNNING, 0),
        retrying=counts.get(JobState.RETRYING, 0),
        succeeded=counts.get(JobState.SUCCEEDED, 0),
        failed=counts.get(JobState.FAILED, 0),
        cancelled=counts.get(JobState.CANCELLED, 0),
        stale=counts.get(JobState.STALE, 0),
    )
    _set_duration(message.oldest_queued_age, max(stats.oldest_queued_age, 0.0))
    return message


def delivery_to_proto(delivery: DeliveryInfo) -> jobwire_pb2.WebhookDelivery:
    """A delivery with its attempt log; URLs lose their query strings (they may hold secrets)."""
    message = jobwire_pb2.WebhookDelivery(
        id=delivery.id,
        event_type=_EVENT_TYPE_TO_PROTO[EventType(delivery.event_type)],
        event_sequence=delivery.event_seq,
        url=strip_query(delivery.url),
        state=cast(jobwire_pb2.WebhookDeliveryState, _proto_number(
            jobwire_pb2.WebhookDeliveryState, f"WEBHOOK_DELIVERY_STATE_{delivery.state.value}")),
        attempts=delivery.attempts,
        last_error=delivery.last_error,
    )
    _set_timestamp(message.create_time, delivery.create_time)
    if delivery.state is DeliveryState.PENDING:
        _set_timestamp(message.next_attempt_time, delivery.next_at)
    for record in delivery.log:
        attempt = message.attempt_log.add(number=record.number, url=record.url, status_code=record.status_code,
                                          response=record.response, error=record.error)
        _set_timestamp(attempt.time, record.time)
        _set_duration(attempt.latency, record.latency)
    return message


def _skipped(summary: BulkSummary) -> list[jobwire_pb2.SkippedJobs]:
    return [jobwire_pb2.SkippedJobs(reason=_SKIP_REASON_TO_PROTO[why], count=count)
            for why, count in summary.skipped.items()]


def cancel_jobs_response(summary: BulkSummary) -> jobwire_pb2.CancelJobsResponse:
    return jobwire_pb2.CancelJobsResponse(matched=summary.matched, changed=summary.changed,
                                          cancel_requested=summary.cancel_requested, skipped=_skipped(summary),
                                          dry_run=summary.dry_run)


def retry_jobs_response(summary: BulkSummary) -> jobwire_pb2.RetryJobsResponse:
    return jobwire_pb2.RetryJobsResponse(matched=summary.matched, changed=summary.changed,
                                         skipped=_skipped(summary), dry_run=summary.dry_run)
