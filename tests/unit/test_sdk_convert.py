"""Proto <-> model conversion of the SDK."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st
from jobwire import EnqueueSpec, EventType, JobState, PhaseState, _convert
from jobwire.v1 import jobwire_pb2 as pb

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _full_job() -> pb.Job:
    error = pb.JobError(
        message="boom", type="ValueError", retryable=True, phase="p2", attempt=2, interrupted=False, time=_ts(T0)
    )
    return pb.Job(
        id="0190-abc",
        queue="reports",
        kind="sleep",
        payload=b'{"seconds":1}',
        priority=7,
        state=pb.JOB_STATE_RETRYING,
        attempt=2,
        max_attempts=3,
        phases=[
            pb.Phase(
                name="p1",
                state=pb.PHASE_STATE_SUCCEEDED,
                progress=pb.Progress(percent=100, message="done"),
                result=b"r1",
                start_time=_ts(T0),
                finish_time=_ts(T0 + timedelta(seconds=1)),
            ),
            pb.Phase(name="p2", state=pb.PHASE_STATE_FAILED, error=error),
        ],
        progress=pb.Progress(percent=50, message="half"),
        error=error,
        error_history=[error, error],
        dedupe_key="dk",
        labels={"team": "data"},
        webhook=pb.WebhookConfig(url="https://example.test/hook", events=[pb.EVENT_TYPE_SUCCEEDED]),
        cancel_requested=False,
        create_time=_ts(T0),
        update_time=_ts(T0 + timedelta(seconds=2)),
        run_at=_ts(T0 + timedelta(seconds=10)),
        start_time=_ts(T0 + timedelta(seconds=1)),
        last_sequence=9,
        timeout=duration_pb2.Duration(seconds=30),
    )


def test_job_from_proto_maps_every_field() -> None:
    job = _convert.job_from_proto(_full_job())
    assert job.id == "0190-abc"
    assert (job.queue, job.kind, job.payload, job.priority) == ("reports", "sleep", b'{"seconds":1}', 7)
    assert job.state is JobState.RETRYING
    assert job.state == "RETRYING"
    assert (job.attempt, job.max_attempts, job.last_sequence) == (2, 3, 9)
    assert [p.name for p in job.phases] == ["p1", "p2"]
    assert job.phases[0].state is PhaseState.SUCCEEDED
    assert job.phases[0].progress.percent == 100
    assert job.phases[0].result == b"r1"
    assert job.phases[0].finish_time == T0 + timedelta(seconds=1)
    assert job.phases[1].error is not None and job.phases[1].error.type == "ValueError"
    assert job.phases[1].start_time is None
    assert job.progress.message == "half"
    assert job.error is not None and job.error.retryable and job.error.attempt == 2
    assert job.error.time == T0 and job.error.time.tzinfo is not None
    assert len(job.error_history) == 2
    assert job.labels == {"team": "data"}
    assert job.webhook is not None and job.webhook.events == (EventType.SUCCEEDED,)
    assert job.create_time == T0
    assert job.finish_time is None
    assert job.timeout == timedelta(seconds=30)
    assert not job.is_terminal
    assert job.outcome() is None


def test_unset_fields_are_none_or_empty() -> None:
    job = _convert.job_from_proto(pb.Job(id="x"))
    assert job.error is None and job.webhook is None and job.timeout is None
    assert job.create_time is None and job.run_at is None
    assert job.phases == () and job.labels == {}
    assert job.state is JobState.UNSPECIFIED


@pytest.mark.parametrize(
    ("enum", "model", "prefix"),
    [
        (pb.JobState, JobState, "JOB_STATE_"),
        (pb.PhaseState, PhaseState, "PHASE_STATE_"),
        (pb.EventType, EventType, "EVENT_TYPE_"),
    ],
)
def test_every_proto_enum_value_has_a_model_member(enum: object, model: type, prefix: str) -> None:
    names = {value.name.removeprefix(prefix) for value in enum.DESCRIPTOR.values}  # type: ignore[attr-defined]
    assert names == {m.value for m in model}


def test_unknown_enum_numbers_become_unspecified() -> None:
    assert _convert.job_state_from_proto(999) is JobState.UNSPECIFIED
    assert _convert.event_type_from_proto(999) is EventType.UNSPECIFIED
    assert _convert.phase_state_from_proto(999) is PhaseState.UNSPECIFIED


def test_enum_names_to_proto_accept_short_and_long_names() -> None:
    assert _convert.job_state_to_proto(JobState.FAILED) == pb.JOB_STATE_FAILED
    assert _convert.job_state_to_proto("failed") == pb.JOB_STATE_FAILED
    assert _convert.event_type_to_proto("EVENT_TYPE_PROGRESS") == pb.EVENT_TYPE_PROGRESS
    with pytest.raises(ValueError, match="NOPE"):
        _convert.job_state_to_proto("nope")


def test_event_from_proto() -> None:
    event = _convert.event_from_proto(
        pb.JobEvent(
            job_id="j",
            sequence=4,
            type=pb.EVENT_TYPE_PROGRESS,
            phase="p1",
            detail="3/10",
            time=_ts(T0),
            job=pb.Job(id="j", state=pb.JOB_STATE_RUNNING),
        )
    )
    assert (event.job_id, event.sequence, event.type, event.phase, event.detail) == ("j", 4, "PROGRESS", "p1", "3/10")
    assert event.job is not None and event.job.state is JobState.RUNNING
    deleted = _convert.event_from_proto(pb.JobEvent(job_id="j", sequence=9, type=pb.EVENT_TYPE_DELETED))
    assert deleted.job is None and deleted.type is EventType.DELETED


def test_queue_stats_from_proto() -> None:
    stats = _convert.queue_stats_from_proto(
        pb.QueueStats(queue="q", queued=3, failed=1, oldest_queued_age=duration_pb2.Duration(seconds=90))
    )
    assert (stats.queue, stats.queued, stats.failed, stats.running) == ("q", 3, 1, 0)
    assert stats.oldest_queued_age == timedelta(seconds=90)


def test_enqueue_request_from_spec() -> None:
    request = _convert.enqueue_request(
        EnqueueSpec(
            kind="sleep",
            payload={"seconds": 0.2, "phases": 2},
            queue="q",
            priority=9,
            delay=1.5,
            max_attempts=4,
            timeout=timedelta(seconds=3),
            dedupe_key="d",
            labels={"a": "b"},
            webhook_url="http://h/x",
            webhook_events=(EventType.FAILED,),
        )
    )
    assert json.loads(request.payload) == {"seconds": 0.2, "phases": 2}
    assert (request.kind, request.queue, request.priority, request.max_attempts) == ("sleep", "q", 9, 4)
    assert request.delay.ToTimedelta() == timedelta(seconds=1.5)
    assert not request.HasField("run_at")
    assert request.timeout.ToTimedelta() == timedelta(seconds=3)
    assert dict(request.labels) == {"a": "b"}
    assert request.webhook.url == "http://h/x" and list(request.webhook.events) == [pb.EVENT_TYPE_FAILED]
    assert len(request.request_id) == 36  # a generated UUID


def test_enqueue_request_keeps_given_request_id_and_run_at() -> None:
    request = _convert.enqueue_request(EnqueueSpec(kind="noop", run_at=T0, request_id="rid-1"))
    assert request.request_id == "rid-1"
    assert request.run_at.ToDatetime(tzinfo=UTC) == T0
    assert not request.HasField("delay") and not request.HasField("webhook")
    assert request.payload == b""


def test_each_spec_gets_its_own_request_id() -> None:
    ids = {_convert.enqueue_request(EnqueueSpec(kind="noop")).request_id for _ in range(20)}
    assert len(ids) == 20


def test_payload_encoding() -> None:
    assert _convert.encode_payload(None) == b""
    assert _convert.encode_payload(b"\x00\xff") == b"\x00\xff"
    assert _convert.encode_payload("héllo") == "héllo".encode()
    assert _convert.encode_payload([1, 2]) == b"[1,2]"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), json_values, max_size=5))
def test_dict_payloads_round_trip_through_json(payload: dict[str, object]) -> None:
    assert json.loads(_convert.encode_payload(payload)) == payload


def test_list_request_filters() -> None:
    filters = _convert.Filter(queue="q", kind="k", states=[JobState.FAILED, "cancelled"], labels={"a": "1"},
                              label_keys=["team"], label_in={"env": ["prod", "staging"], "zone": "eu"},
                              created_after=T0, finished_before=T0)
    request = _convert.list_jobs_request(filters, page_size=10, page_token="tok")
    assert list(request.states) == [pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED]
    assert request.created_after.ToDatetime(tzinfo=UTC) == T0
    assert request.finished_before.ToDatetime(tzinfo=UTC) == T0
    assert not request.HasField("created_before") and not request.HasField("finished_after")
    assert (request.page_size, request.page_token, dict(request.labels)) == (10, "tok", {"a": "1"})
    assert list(request.label_keys) == ["team"]
    assert {k: list(v.values) for k, v in request.label_in.items()} == {"env": ["prod", "staging"], "zone": ["eu"]}


def test_bulk_requests_carry_the_same_filter() -> None:
    filters = _convert.Filter(queue="media", states=["QUEUED"])
    cancel = _convert.cancel_jobs_request(filters, all_jobs=False, dry_run=True, reason="freeze")
    assert (cancel.filter.queue, list(cancel.filter.states), cancel.dry_run, cancel.reason) == (
        "media", [pb.JOB_STATE_QUEUED], True, "freeze")
    retry = _convert.retry_jobs_request(_convert.Filter(), all_jobs=True, dry_run=False, from_start=True)
    assert (retry.all, retry.from_start, retry.HasField("filter")) == (True, True, True)


def test_bulk_result_from_proto() -> None:
    reply = pb.CancelJobsResponse(matched=5, changed=3, cancel_requested=1, skipped=[
        pb.SkippedJobs(reason=pb.SKIP_REASON_ALREADY_FINISHED, count=2)])
    result = _convert.bulk_from_proto(reply)
    assert (result.matched, result.changed, result.cancel_requested, dict(result.skipped), result.dry_run) == (
        5, 3, 1, {"ALREADY_FINISHED": 2}, False)
    assert _convert.bulk_from_proto(pb.RetryJobsResponse(matched=2, dry_run=True)).dry_run


def test_stale_job_outcome_is_inferred() -> None:
    def stale(**fields: object) -> pb.Job:
        return pb.Job(id="s", state=pb.JOB_STATE_STALE, **fields)  # type: ignore[arg-type]

    ok = stale(phases=[pb.Phase(name="a", state=pb.PHASE_STATE_SUCCEEDED)])
    failed = stale(phases=[pb.Phase(name="a", state=pb.PHASE_STATE_FAILED)], error=pb.JobError(message="x"))
    cancelled = stale(phases=[pb.Phase(name="a", state=pb.PHASE_STATE_CANCELLED)])
    assert _convert.job_from_proto(ok).outcome() is JobState.SUCCEEDED
    assert _convert.job_from_proto(failed).outcome() is JobState.FAILED
    assert _convert.job_from_proto(cancelled).outcome() is JobState.CANCELLED
    assert _convert.job_from_proto(pb.Job(id="d", state=pb.JOB_STATE_FAILED)).outcome() is JobState.FAILED
