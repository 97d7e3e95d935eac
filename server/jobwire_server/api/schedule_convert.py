"""Schedule records → proto messages."""

from __future__ import annotations

from typing import Final

from jobwire.v1 import jobwire_pb2

from jobwire_server.api.convert import duration_to_proto, event_type_to_proto, timestamp_to_proto
from jobwire_server.domain.schedules import CatchupPolicy, OverlapPolicy, Schedule, ScheduleSpec, upcoming

_OVERLAP: Final = {
    OverlapPolicy.ALLOW: jobwire_pb2.OVERLAP_POLICY_ALLOW,
    OverlapPolicy.SKIP: jobwire_pb2.OVERLAP_POLICY_SKIP,
    OverlapPolicy.CANCEL_PREVIOUS: jobwire_pb2.OVERLAP_POLICY_CANCEL_PREVIOUS,
}
_CATCHUP: Final = {
    CatchupPolicy.SKIP: jobwire_pb2.CATCHUP_POLICY_SKIP,
    CatchupPolicy.RUN_ONCE: jobwire_pb2.CATCHUP_POLICY_RUN_ONCE,
}


def spec_to_proto(spec: ScheduleSpec) -> jobwire_pb2.ScheduleSpec:
    """The spec with its effective values (the template as its kind's defaults made it). A priority
    or max attempts left unset stays 0: each firing takes the queue's default of that moment."""
    t = spec.template
    template = jobwire_pb2.EnqueueRequest(queue=t.queue, kind=t.kind, payload=t.payload,
                                          priority=0 if t.priority_unset else t.priority,
                                          max_attempts=0 if t.max_attempts_unset else t.max_attempts,
                                          dedupe_key=t.dedupe_key, labels=dict(t.labels),
                                          concurrency_key=t.concurrency_key,
                                          timeout=duration_to_proto(t.timeout))
    if t.webhook is not None:
        template.webhook.CopyFrom(jobwire_pb2.WebhookConfig(
            url=t.webhook.url, events=[event_type_to_proto(e) for e in t.webhook.events]))
    message = jobwire_pb2.ScheduleSpec(template=template, time_zone=spec.time_zone, description=spec.description,
                                       overlap_policy=_OVERLAP[spec.overlap], catchup_policy=_CATCHUP[spec.catchup])
    if spec.cron:
        message.cron = spec.cron
    else:
        message.interval.CopyFrom(duration_to_proto(spec.interval))
    if spec.jitter:
        message.jitter.CopyFrom(duration_to_proto(spec.jitter))
    return message


def schedule_to_proto(schedule: Schedule) -> jobwire_pb2.Schedule:
    message = jobwire_pb2.Schedule(id=schedule.id, spec=spec_to_proto(schedule.spec), paused=schedule.paused,
                                   from_config=schedule.from_config, last_job_id=schedule.last_job_id,
                                   create_time=timestamp_to_proto(schedule.create_time),
                                   update_time=timestamp_to_proto(schedule.update_time),
                                   next_fire_times=[timestamp_to_proto(t) for t in upcoming(schedule)])
    if schedule.last_fire is not None:
        message.last_fire_time.CopyFrom(timestamp_to_proto(schedule.last_fire))
    return message
