"""Schedule requests → validated domain values, every bad field reported at once.

The template is validated by the Enqueue rules (`enqueue_to_new_job`, field paths prefixed with
``spec.template.``), so a schedule can only hold a job an Enqueue would accept. Schedules declared
in the config file are turned into the same `ScheduleSpec` message first, and so follow the same
rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, cast

from google.protobuf import duration_pb2
from jobwire.v1 import jobwire_pb2

from jobwire_server.api.convert import event_type_to_proto
from jobwire_server.api.validation import (
    DEFAULT_LIMITS,
    MAX_REQUEST_ID,
    Limits,
    enqueue_to_new_job,
    named_page,
)
from jobwire_server.domain.errors import FieldViolation, InvalidArgument
from jobwire_server.domain.schedules import CatchupPolicy, JobTemplate, OverlapPolicy, ScheduleSpec
from jobwire_server.domain.states import EventType
from jobwire_server.domain.timing import Cron, TimingError, interval, zone
from jobwire_server.handlers.kind import NAME_PATTERN
from jobwire_server.handlers.registry import Registry
from jobwire_server.schedule_file import DeclaredSchedule

MAX_JITTER: Final = 86_400.0
MAX_DESCRIPTION: Final = 1024
#: What a ListSchedules page token carries instead of a filters digest (so a ListJobs token is refused).
PAGE_TOKEN_KIND: Final = "schedules"

_OVERLAP: Final = {
    jobwire_pb2.OVERLAP_POLICY_UNSPECIFIED: OverlapPolicy.ALLOW,
    jobwire_pb2.OVERLAP_POLICY_ALLOW: OverlapPolicy.ALLOW,
    jobwire_pb2.OVERLAP_POLICY_SKIP: OverlapPolicy.SKIP,
    jobwire_pb2.OVERLAP_POLICY_CANCEL_PREVIOUS: OverlapPolicy.CANCEL_PREVIOUS,
}
_CATCHUP: Final = {
    jobwire_pb2.CATCHUP_POLICY_UNSPECIFIED: CatchupPolicy.SKIP,
    jobwire_pb2.CATCHUP_POLICY_SKIP: CatchupPolicy.SKIP,
    jobwire_pb2.CATCHUP_POLICY_RUN_ONCE: CatchupPolicy.RUN_ONCE,
}
_NAME_RULE: Final = "must be 1–128 letters, digits, '.', '-' or '_'"


def schedule_id_problem(value: str) -> str | None:
    if not value:
        return "required"
    if NAME_PATTERN.fullmatch(value) is None:
        return f"{_NAME_RULE}, got {value[:40]!r}"
    return None


def validate_schedule_id(value: str, field: str = "id") -> str:
    problem = schedule_id_problem(value)
    if problem is not None:
        raise InvalidArgument([FieldViolation(field, problem)])
    return value


def validate_request_id(value: str) -> str:
    if len(value) > MAX_REQUEST_ID:
        raise InvalidArgument([FieldViolation("request_id", f"must be at most {MAX_REQUEST_ID} characters, "
                                                            f"got {len(value)}")])
    return value


def spec_from_proto(spec: jobwire_pb2.ScheduleSpec, registry: Registry, now: float, *,
                    limits: Limits = DEFAULT_LIMITS, field: str = "spec",
                    extra: Iterable[FieldViolation] = ()) -> ScheduleSpec:
    """Validate a ScheduleSpec (and apply the template kind's defaults). Raises PayloadTooLarge, or
    one InvalidArgument listing every bad field, also those in `extra` (reason UNKNOWN_KIND when
    the template's kind has no handler)."""
    violations = list(extra)
    reason = "INVALID_ARGUMENT"
    template: JobTemplate | None = None
    if not spec.HasField("template"):
        violations.append(FieldViolation(f"{field}.template", "required"))
    else:
        for name in ("run_at", "delay"):
            if spec.template.HasField(name):
                violations.append(FieldViolation(f"{field}.template.{name}",
                                                 "must be unset: a firing's job is due at the firing time"))
        if spec.template.request_id:
            violations.append(FieldViolation(f"{field}.template.request_id",
                                             "must be empty: each firing's request id is made by the server"))
        try:
            new = enqueue_to_new_job(spec.template, registry, now, limits, f"{field}.template.")
        except InvalidArgument as exc:
            violations.extend(exc.violations)
            reason = exc.reason
        else:
            template = JobTemplate(queue=new.queue, kind=new.kind, payload=new.payload, priority=new.priority,
                                   max_attempts=new.max_attempts, timeout=new.timeout, phase_names=new.phase_names,
                                   dedupe_key=new.dedupe_key, labels=new.labels, webhook=new.webhook,
                                   concurrency_key=new.concurrency_key, priority_unset=new.priority_unset,
                                   max_attempts_unset=new.max_attempts_unset)
    cron, seconds, zone = _timing(spec, field, violations)
    jitter = _duration(spec.jitter, f"{field}.jitter", violations) if spec.HasField("jitter") else 0.0
    if jitter > MAX_JITTER:
        violations.append(FieldViolation(f"{field}.jitter", "must be at most 24 hours"))
    overlap = _OVERLAP.get(spec.overlap_policy)
    if overlap is None:
        violations.append(FieldViolation(f"{field}.overlap_policy", f"unknown overlap policy {spec.overlap_policy}"))
    catchup = _CATCHUP.get(spec.catchup_policy)
    if catchup is None:
        violations.append(FieldViolation(f"{field}.catchup_policy", f"unknown catch-up policy {spec.catchup_policy}"))
    if len(spec.description) > MAX_DESCRIPTION:
        violations.append(FieldViolation(f"{field}.description", f"must be at most {MAX_DESCRIPTION} characters"))
    if violations:
        raise InvalidArgument(violations, reason=reason)
    assert template is not None and overlap is not None and catchup is not None
    return ScheduleSpec(template=template, cron=cron, time_zone=zone, interval=seconds, jitter=jitter,
                        overlap=overlap, catchup=catchup, description=spec.description)


def _timing(spec: jobwire_pb2.ScheduleSpec, field: str, out: list[FieldViolation]) -> tuple[str, int, str]:
    """(cron, interval seconds, time zone) of a valid timing."""
    which = spec.WhichOneof("timing")
    if which is None:
        out.append(FieldViolation(f"{field}.cron", "one of cron and interval is required"))
        return "", 0, ""
    if which == "interval":
        if spec.time_zone:
            out.append(FieldViolation(f"{field}.time_zone", "applies only to cron; an interval is counted in UTC"))
        seconds = _duration(spec.interval, f"{field}.interval", out)
        try:
            return "", interval(seconds).seconds, ""
        except TimingError as exc:
            if seconds >= 0:
                out.append(FieldViolation(f"{field}.interval", str(exc)))
            return "", 0, ""
    try:
        cron = Cron.parse(spec.cron)
    except TimingError as exc:
        out.append(FieldViolation(f"{field}.cron", str(exc)))
        cron = None
    name = spec.time_zone or "UTC"
    try:
        zone(name)
    except TimingError as exc:
        out.append(FieldViolation(f"{field}.time_zone", str(exc)))
    return (cron.expression if cron is not None else ""), 0, name


def _duration(value: duration_pb2.Duration, field: str, out: list[FieldViolation]) -> float:
    seconds, nanos = value.seconds, value.nanos
    if abs(nanos) >= 1_000_000_000 or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        out.append(FieldViolation(field, "must be a valid duration"))
        return -1.0
    if seconds < 0 or nanos < 0:
        out.append(FieldViolation(field, "must not be negative"))
        return -1.0
    return seconds + nanos / 1_000_000_000


def page_from_proto(req: jobwire_pb2.ListSchedulesRequest, secret: bytes) -> tuple[str, int]:
    """(the id to list after, the page size) of a ListSchedules request."""
    return named_page(req.page_size, req.page_token, secret, PAGE_TOKEN_KIND, schedule_id_problem, [])


# ----------------------------------------------------------------------------- the config file


def declared_to_proto(item: DeclaredSchedule) -> jobwire_pb2.ScheduleSpec:
    """A ``[[schedules]]`` table as the ScheduleSpec a CreateSchedule would carry."""
    template = jobwire_pb2.EnqueueRequest(queue=item.queue, kind=item.kind, payload=item.payload,
                                          priority=item.priority, max_attempts=item.max_attempts,
                                          dedupe_key=item.dedupe_key, labels=dict(item.labels))
    if item.timeout:
        template.timeout.FromNanoseconds(round(item.timeout * 1e9))
    if item.webhook_url or item.webhook_events:
        events = []
        for name in item.webhook_events:
            try:
                events.append(event_type_to_proto(EventType(name)))
            except ValueError:
                events.append(jobwire_pb2.EVENT_TYPE_UNSPECIFIED)
        template.webhook.CopyFrom(jobwire_pb2.WebhookConfig(url=item.webhook_url, events=events))
    overlap = cast(jobwire_pb2.OverlapPolicy, jobwire_pb2.OverlapPolicy.Value(
        f"OVERLAP_POLICY_{item.overlap or 'UNSPECIFIED'}"))
    catchup = cast(jobwire_pb2.CatchupPolicy, jobwire_pb2.CatchupPolicy.Value(
        f"CATCHUP_POLICY_{item.catchup or 'UNSPECIFIED'}"))
    spec = jobwire_pb2.ScheduleSpec(template=template, time_zone=item.time_zone, description=item.description,
                                    overlap_policy=overlap, catchup_policy=catchup)
    if item.cron or not item.every:
        spec.cron = item.cron
    else:
        spec.interval.FromNanoseconds(round(item.every * 1e9))
    if item.jitter:
        spec.jitter.FromNanoseconds(round(item.jitter * 1e9))
    return spec


def declared_specs(items: Iterable[DeclaredSchedule], registry: Registry,
                   limits: Limits = DEFAULT_LIMITS) -> list[tuple[str, ScheduleSpec]]:
    """The config file's schedules, validated as CreateSchedule requests; InvalidArgument names the
    schedule and the bad fields (paths as in CreateSchedule)."""
    out = []
    for item in items:
        extra = [] if schedule_id_problem(item.id) is None else [FieldViolation("id", schedule_id_problem(item.id)
                                                                                  or "")]
        if item.cron and item.every:
            extra.append(FieldViolation("spec.cron", "give cron or every, not both"))
        try:
            out.append((item.id, spec_from_proto(declared_to_proto(item), registry, 0.0, limits=limits,
                                                 extra=extra)))
        except InvalidArgument as exc:
            raise InvalidArgument([FieldViolation(f"{item.id!r}: {v.field}", v.description)
                                   for v in exc.violations], reason=exc.reason) from None
    return out
