"""Domain → proto conversion: every field, None times left unset, enums complete both ways."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from jobwire.v1 import jobwire_pb2
from jobwire_server.api import convert
from jobwire_server.domain.models import Event, Job, JobError, Phase, Progress, QueueStats, Webhook
from jobwire_server.domain.states import EventType, JobState, PhaseState

T0 = 1_800_000_000.123456


def _seconds(ts: timestamp_pb2.Timestamp | duration_pb2.Duration) -> float:
    return ts.seconds + ts.nanos / 1e9


def _error(message: str = "boom", phase: str = "fetch", time: float = T0 + 3) -> JobError:
    return JobError(message=message, type="ValueError", retryable=True, phase=phase, attempt=2,
                    interrupted=False, time=time)


def _full_job(state: JobState = JobState.SUCCEEDED) -> Job:
    first = _error("first", "fetch", T0 + 1.5)
    last = JobError(message="lost", type="INTERRUPTED", retryable=True, phase="resize", attempt=3,
                    interrupted=True, time=T0 + 4.25)
    return Job(
        id="0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
        queue="media",
        kind="thumbnail",
        payload=b'{"src": "x"}',
        priority=7,
        state=state,
        max_attempts=5,
        phases=(
            Phase(name="fetch", state=PhaseState.SUCCEEDED, progress=Progress(100.0, "done"), result=b"raw",
                  error=first, start_time=T0 + 1, finish_time=T0 + 2),
            Phase(name="resize", state=PhaseState.SUCCEEDED, progress=Progress(100.0, ""), result=b"small",
                  start_time=T0 + 2.5, finish_time=T0 + 5),
        ),
        create_time=T0,
        update_time=T0 + 5,
        run_at=T0 + 0.5,
        attempt=3,
        timeout=12.75,
        progress=Progress(100.0, "all done"),
        error=last,
        error_history=(first, last),
        dedupe_key="dk",
        labels=MappingProxyType({"team": "a", "env/stage": "prod"}),
        webhook=Webhook("https://example.com/hook", (EventType.SUCCEEDED, EventType.FAILED)),
        cancel_requested=True,
        cancel_reason="because",
        start_time=T0 + 1,
        finish_time=T0 + 5,
        last_sequence=42,
    )


def _minimal_job() -> Job:
    return Job(id="0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2c", queue="default", kind="noop", payload=b"", priority=5,
               state=JobState.QUEUED, max_attempts=3, phases=(Phase("run"),), create_time=T0, update_time=T0,
               run_at=T0)


def _error_back(msg: jobwire_pb2.JobError) -> JobError:
    return JobError(message=msg.message, type=msg.type, retryable=msg.retryable, phase=msg.phase,
                    attempt=msg.attempt, interrupted=msg.interrupted, time=_seconds(msg.time))


def _time_back(msg: jobwire_pb2.Job | jobwire_pb2.Phase, name: str) -> float | None:
    return _seconds(getattr(msg, name)) if msg.HasField(name) else None


def _phase_back(msg: jobwire_pb2.Phase) -> Phase:
    return Phase(name=msg.name, state=convert.phase_state_from_proto(msg.state),
                 progress=Progress(msg.progress.percent, msg.progress.message), result=msg.result,
                 error=_error_back(msg.error) if msg.HasField("error") else None,
                 start_time=_time_back(msg, "start_time"), finish_time=_time_back(msg, "finish_time"))


def _job_back(msg: jobwire_pb2.Job, original: Job) -> Job:
    """Inverse of job_to_proto, for round-trip checks (fields proto does not carry come from `original`)."""
    webhook = None
    if msg.HasField("webhook"):
        webhook = Webhook(msg.webhook.url, tuple(convert.event_type_from_proto(e) for e in msg.webhook.events))
    return Job(
        id=msg.id, queue=msg.queue, kind=msg.kind, payload=msg.payload, priority=msg.priority,
        state=convert.job_state_from_proto(msg.state), max_attempts=msg.max_attempts,
        phases=tuple(_phase_back(p) for p in msg.phases),
        create_time=_seconds(msg.create_time), update_time=_seconds(msg.update_time), run_at=_seconds(msg.run_at),
        attempt=msg.attempt, uncounted_attempts=original.uncounted_attempts, timeout=_seconds(msg.timeout),
        progress=Progress(msg.progress.percent, msg.progress.message),
        error=_error_back(msg.error) if msg.HasField("error") else None,
        error_history=tuple(_error_back(e) for e in msg.error_history),
        dedupe_key=msg.dedupe_key, labels=MappingProxyType(dict(msg.labels)), webhook=webhook,
        cancel_requested=msg.cancel_requested, cancel_reason=msg.cancel_reason,
        start_time=_time_back(msg, "start_time"), finish_time=_time_back(msg, "finish_time"),
        last_sequence=msg.last_sequence, trace_parent=original.trace_parent,
    )


def test_full_job_round_trips_every_field() -> None:
    job = _full_job()
    msg = convert.job_to_proto(job)
    assert _job_back(msg, job) == job
    assert msg.result == b"small"  # the last phase's result, since the job SUCCEEDED
    assert msg.state == jobwire_pb2.JOB_STATE_SUCCEEDED
    assert list(msg.webhook.events) == [jobwire_pb2.EVENT_TYPE_SUCCEEDED, jobwire_pb2.EVENT_TYPE_FAILED]
    assert dict(msg.labels) == {"team": "a", "env/stage": "prod"}
    assert msg.timeout.seconds == 12 and msg.timeout.nanos == 750_000_000
    assert msg.create_time.seconds == 1_800_000_000 and 0 <= msg.create_time.nanos < 1_000_000_000


def test_result_is_empty_unless_succeeded() -> None:
    msg = convert.job_to_proto(_full_job(JobState.FAILED))
    assert msg.result == b""


def test_minimal_job_leaves_none_times_and_absent_parts_unset() -> None:
    job = _minimal_job()
    msg = convert.job_to_proto(job)
    for name in ("start_time", "finish_time", "error", "webhook"):
        assert not msg.HasField(name), name
    for name in ("create_time", "update_time", "run_at", "timeout", "progress"):
        assert msg.HasField(name), name
    phase = msg.phases[0]
    assert phase.state == jobwire_pb2.PHASE_STATE_PENDING
    for name in ("start_time", "finish_time", "error"):
        assert not phase.HasField(name), name
    assert msg.timeout.seconds == 0 and msg.timeout.nanos == 0
    assert len(msg.error_history) == 0 and not msg.labels
    assert _job_back(msg, job) == job


@pytest.mark.parametrize("seconds", [0.0, 1.0, 0.5, T0, T0 + 0.999_999_999_9, 1_234_567_890.000_001, 4e9 + 0.25])
def test_timestamps_are_normalized_and_round_trip(seconds: float) -> None:
    ts = convert.timestamp_to_proto(seconds)
    assert 0 <= ts.nanos < 1_000_000_000
    assert _seconds(ts) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("seconds", [0.0, 0.001, 1.5, 30.0, 86_400.25, -2.5, 0.999_999_999_9])
def test_durations_keep_one_sign_and_round_trip(seconds: float) -> None:
    d = convert.duration_to_proto(seconds)
    assert abs(d.nanos) < 1_000_000_000
    assert d.seconds * d.nanos >= 0
    assert _seconds(d) == pytest.approx(seconds, abs=1e-9)


def test_event_with_job() -> None:
    job = _full_job()
    event = Event(job_id=job.id, sequence=7, type=EventType.PHASE_SUCCEEDED, time=T0 + 2, queue=job.queue,
                  kind=job.kind, phase="fetch", detail="ok", job=job)
    msg = convert.event_to_proto(event)
    assert (msg.job_id, msg.sequence, msg.type, msg.phase, msg.detail) == (
        job.id, 7, jobwire_pb2.EVENT_TYPE_PHASE_SUCCEEDED, "fetch", "ok")
    assert _seconds(msg.time) == pytest.approx(T0 + 2, abs=1e-9)
    assert msg.job == convert.job_to_proto(job)


def test_deleted_event_has_no_job() -> None:
    event = Event(job_id="0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", sequence=9, type=EventType.DELETED, time=T0,
                  queue="q", kind="k")
    msg = convert.event_to_proto(event)
    assert not msg.HasField("job")
    assert msg.type == jobwire_pb2.EVENT_TYPE_DELETED and msg.sequence == 9
    assert msg.phase == "" and msg.detail == ""


def test_snapshot_event() -> None:
    job = _full_job(JobState.RUNNING)
    msg = convert.snapshot_event(job)
    assert msg.type == jobwire_pb2.EVENT_TYPE_SNAPSHOT
    assert msg.sequence == job.last_sequence == 42
    assert msg.job_id == job.id
    assert msg.time == msg.job.update_time
    assert msg.job == convert.job_to_proto(job)


def test_stats() -> None:
    stats = QueueStats(queue="media", counts={JobState.QUEUED: 3, JobState.FAILED: 1, JobState.STALE: 9},
                       oldest_queued_age=12.5)
    msg = convert.stats_to_proto(stats)
    assert msg.queue == "media"
    assert (msg.scheduled, msg.queued, msg.running, msg.retrying, msg.succeeded, msg.failed, msg.cancelled,
            msg.stale) == (0, 3, 0, 0, 0, 1, 0, 9)
    assert _seconds(msg.oldest_queued_age) == 12.5


def test_stats_every_state_has_a_field() -> None:
    counts = {state: index + 1 for index, state in enumerate(JobState)}
    msg = convert.stats_to_proto(QueueStats("q", counts, 0.0))
    for state, count in counts.items():
        assert getattr(msg, state.name.lower()) == count


# ----------------------------------------------------------------------------- enums


@pytest.mark.parametrize(("domain", "proto_enum", "prefix", "to_proto", "from_proto"), [
    (JobState, jobwire_pb2.JobState, "JOB_STATE_", convert.job_state_to_proto, convert.job_state_from_proto),
    (PhaseState, jobwire_pb2.PhaseState, "PHASE_STATE_", convert.phase_state_to_proto,
     convert.phase_state_from_proto),
    (EventType, jobwire_pb2.EventType, "EVENT_TYPE_", convert.event_type_to_proto, convert.event_type_from_proto),
])
def test_enums_are_complete_both_ways(domain: type, proto_enum: object, prefix: str, to_proto: object,
                                      from_proto: object) -> None:
    names = dict(proto_enum.items())  # type: ignore[attr-defined]
    for member in domain:  # type: ignore[attr-defined]
        number = to_proto(member)  # type: ignore[operator]
        assert number == names[prefix + member.name]
        assert from_proto(number) is member  # type: ignore[operator]
    # every proto value except UNSPECIFIED has a domain member
    assert {n for name, n in names.items() if not name.endswith("_UNSPECIFIED")} == {
        to_proto(m) for m in domain  # type: ignore[attr-defined, operator]
    }
    with pytest.raises(ValueError, match="not a"):
        from_proto(0)  # type: ignore[operator]
    with pytest.raises(ValueError, match="not a"):
        from_proto(max(names.values()) + 1)  # type: ignore[operator]
    with pytest.raises(ValueError, match="not a"):
        from_proto(-1)  # type: ignore[operator]
