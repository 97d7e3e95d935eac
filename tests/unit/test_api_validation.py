"""Request validation: every rule, all violations at once, page tokens, and a fuzz test."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobwire.v1 import jobwire_pb2
from jobwire_server.api import validation as v
from jobwire_server.domain.errors import FieldViolation, InvalidArgument, PayloadTooLarge
from jobwire_server.domain.ids import new_job_id
from jobwire_server.domain.queries import JobQuery, filters_digest
from jobwire_server.domain.states import EventType, JobState
from jobwire_server.handlers.kind import JobContext, Kind
from jobwire_server.handlers.registry import Registry, build_registry

NOW = 1_800_000_000.0
LIMITS = v.Limits()
SECRET = b"test-secret"
E = jobwire_pb2


def _registry() -> Registry:
    registry = build_registry([], builtins=True)
    slow = Kind("slow", queue="slowq", max_attempts=7, timeout=30.0)

    @slow.phase("a")
    async def _a(ctx: JobContext) -> bytes:
        return b""

    registry.add(slow)
    return registry


REGISTRY = _registry()


def _violations(req: jobwire_pb2.EnqueueRequest, prefix: str = "") -> list[FieldViolation]:
    with pytest.raises(InvalidArgument) as info:
        v.enqueue_to_new_job(req, REGISTRY, NOW, LIMITS, prefix)
    return list(info.value.violations)


def _fields(req: jobwire_pb2.EnqueueRequest, prefix: str = "") -> list[str]:
    return [x.field for x in _violations(req, prefix)]


def _req(**kwargs: object) -> jobwire_pb2.EnqueueRequest:
    kwargs.setdefault("kind", "noop")
    return jobwire_pb2.EnqueueRequest(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- enqueue: accepted


def test_defaults_come_from_the_kind() -> None:
    job = v.enqueue_to_new_job(_req(payload=b"hi"), REGISTRY, NOW, LIMITS)
    assert (job.queue, job.kind, job.payload, job.priority, job.run_at, job.max_attempts, job.timeout) == (
        "default", "noop", b"hi", 5, NOW, 3, 0.0)
    assert job.phase_names == ("run",)
    assert job.webhook is None and job.dedupe_key == "" and job.request_id == "" and not job.labels
    assert job.fingerprint == "", "only a request_id is ever compared, so only then is a digest made"

    slow = v.enqueue_to_new_job(_req(kind="slow"), REGISTRY, NOW, LIMITS)
    assert (slow.queue, slow.max_attempts, slow.timeout, slow.phase_names) == ("slowq", 7, 30.0, ("a",))


def test_phases_follow_the_payload() -> None:
    job = v.enqueue_to_new_job(_req(kind="sleep", payload=b'{"seconds": 0, "phases": 3}'), REGISTRY, NOW, LIMITS)
    assert job.phase_names == ("step-1", "step-2", "step-3")


def test_explicit_values_are_kept() -> None:
    req = _req(kind="slow", queue="other.q_1-x", priority=10, max_attempts=1000, timeout=timedelta(seconds=2.5),
               dedupe_key="d" * 256, request_id="r" * 128, labels={"a/b.c_d-e": "x" * 256, "k" * 63: ""},
               webhook=E.WebhookConfig(url="http://h.example:8080/p?q=1",
                                       events=[E.EVENT_TYPE_STARTED, E.EVENT_TYPE_STARTED, E.EVENT_TYPE_DELETED]))
    job = v.enqueue_to_new_job(req, REGISTRY, NOW, LIMITS)
    assert (job.queue, job.priority, job.max_attempts, job.timeout) == ("other.q_1-x", 10, 1000, 2.5)
    assert (job.dedupe_key, job.request_id) == ("d" * 256, "r" * 128)
    assert dict(job.labels) == {"a/b.c_d-e": "x" * 256, "k" * 63: ""}
    assert job.webhook is not None
    assert job.webhook.url == "http://h.example:8080/p?q=1"
    assert job.webhook.events == (EventType.STARTED, EventType.DELETED)


def test_priority_one_is_allowed() -> None:
    assert v.enqueue_to_new_job(_req(priority=1), REGISTRY, NOW, LIMITS).priority == 1


def test_webhook_default_events() -> None:
    job = v.enqueue_to_new_job(_req(webhook=E.WebhookConfig(url="https://x.example")), REGISTRY, NOW, LIMITS)
    assert job.webhook is not None
    assert job.webhook.events == (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED)


def test_run_at_in_the_future_past_and_delay() -> None:
    future = timestamp_pb2.Timestamp(seconds=int(NOW) + 60, nanos=500_000_000)
    assert v.enqueue_to_new_job(_req(run_at=future), REGISTRY, NOW, LIMITS).run_at == NOW + 60.5
    past = timestamp_pb2.Timestamp(seconds=int(NOW) - 60)
    assert v.enqueue_to_new_job(_req(run_at=past), REGISTRY, NOW, LIMITS).run_at == NOW
    assert v.enqueue_to_new_job(_req(run_at=timestamp_pb2.Timestamp()), REGISTRY, NOW, LIMITS).run_at == NOW
    delay = duration_pb2.Duration(seconds=5, nanos=250_000_000)
    assert v.enqueue_to_new_job(_req(delay=delay), REGISTRY, NOW, LIMITS).run_at == NOW + 5.25
    assert v.enqueue_to_new_job(_req(delay=duration_pb2.Duration()), REGISTRY, NOW, LIMITS).run_at == NOW


def test_zero_timeout_means_kind_default() -> None:
    job = v.enqueue_to_new_job(_req(kind="slow", timeout=duration_pb2.Duration()), REGISTRY, NOW, LIMITS)
    assert job.timeout == 30.0


def test_fingerprint_ignores_request_id_only() -> None:
    a = v.enqueue_to_new_job(_req(payload=b"1", request_id="r1"), REGISTRY, NOW, LIMITS)
    b = v.enqueue_to_new_job(_req(payload=b"1", request_id="r2"), REGISTRY, NOW, LIMITS)
    c = v.enqueue_to_new_job(_req(payload=b"2", request_id="r1"), REGISTRY, NOW, LIMITS)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    expected = hashlib.sha256(_req(payload=b"1").SerializeToString(deterministic=True)).hexdigest()
    assert a.fingerprint == expected


def test_fingerprint_is_stable_across_label_insertion_order() -> None:
    one = _req(labels={"a": "1", "b": "2"}, request_id="r")
    two = _req(request_id="r")
    two.labels["b"] = "2"
    two.labels["a"] = "1"
    assert (v.enqueue_to_new_job(one, REGISTRY, NOW, LIMITS).fingerprint
            == v.enqueue_to_new_job(two, REGISTRY, NOW, LIMITS).fingerprint)


def test_the_request_is_not_modified() -> None:
    req = _req(request_id="keep-me")
    v.enqueue_to_new_job(req, REGISTRY, NOW, LIMITS)
    assert req.request_id == "keep-me"


# ----------------------------------------------------------------------------- enqueue: one rule each


@pytest.mark.parametrize(("req", "field", "text"), [
    (_req(kind=""), "kind", "required"),
    (_req(kind="bad kind"), "kind", "letters"),
    (_req(kind="noop\n"), "kind", "letters"),
    (_req(kind="k" * 129), "kind", "letters"),
    (_req(queue="bad/queue"), "queue", "letters"),
    (_req(queue="q" * 129), "queue", "letters"),
    (_req(priority=11), "priority", "between 1 and 10"),
    (_req(priority=-1), "priority", "between 1 and 10"),
    (_req(delay=duration_pb2.Duration(seconds=-1)), "delay", "negative"),
    (_req(delay=duration_pb2.Duration(nanos=-1)), "delay", "negative"),
    (_req(delay=duration_pb2.Duration(seconds=1, nanos=-1)), "delay", "valid duration"),
    (_req(delay=duration_pb2.Duration(seconds=10**12)), "delay", "valid duration"),
    (_req(delay=duration_pb2.Duration(seconds=315_576_000_000)), "delay", "9999"),
    (_req(run_at=timestamp_pb2.Timestamp(seconds=10**13)), "run_at", "valid timestamp"),
    (_req(run_at=timestamp_pb2.Timestamp(seconds=1, nanos=-5)), "run_at", "valid timestamp"),
    (_req(max_attempts=-1), "max_attempts", "between 1 and 1000"),
    (_req(max_attempts=1001), "max_attempts", "between 1 and 1000"),
    (_req(timeout=duration_pb2.Duration(seconds=-3)), "timeout", "negative"),
    (_req(dedupe_key="d" * 257), "dedupe_key", "256"),
    (_req(request_id="r" * 129), "request_id", "128"),
    (_req(labels={str(i): "" for i in range(65)}), "labels", "at most 64"),
    (_req(labels={"": "x"}), "labels", "label key"),
    (_req(labels={"k" * 64: "x"}), "labels", "label key"),
    (_req(labels={"a b": "x"}), "labels", "label key"),
    (_req(labels={"ok": "x" * 257}), "labels", "256"),
    (_req(webhook=E.WebhookConfig()), "webhook.url", "required"),
    (_req(webhook=E.WebhookConfig(url="ftp://x.example/f")), "webhook.url", "http"),
    (_req(webhook=E.WebhookConfig(url="/relative/path")), "webhook.url", "http"),
    (_req(webhook=E.WebhookConfig(url="https://")), "webhook.url", "http"),
    (_req(webhook=E.WebhookConfig(url="http://[::1")), "webhook.url", "http"),
    (_req(webhook=E.WebhookConfig(url="http://x.example:99999/")), "webhook.url", "http"),
    (_req(webhook=E.WebhookConfig(url="http://x.example/a b")), "webhook.url", "spaces"),
    (_req(webhook=E.WebhookConfig(url="https://x.example/" + "p" * 2048)), "webhook.url", "2048"),
    (_req(webhook=E.WebhookConfig(url="https://x.example", events=[E.EVENT_TYPE_UNSPECIFIED])),
     "webhook.events[0]", "unknown event type 0"),
    (_req(webhook=E.WebhookConfig(url="https://x.example", events=[E.EVENT_TYPE_FAILED, E.EVENT_TYPE_SNAPSHOT])),
     "webhook.events[1]", "SNAPSHOT"),
    (_req(webhook=E.WebhookConfig(url="https://x.example", events=[E.EVENT_TYPE_WEBHOOK_DELIVERED])),
     "webhook.events[0]", "WEBHOOK_DELIVERED"),
    (_req(webhook=E.WebhookConfig(url="https://x.example", events=[E.EVENT_TYPE_WEBHOOK_FAILED])),
     "webhook.events[0]", "WEBHOOK_FAILED"),
    (_req(webhook=E.WebhookConfig(url="https://x.example", events=[99])),  # type: ignore[list-item]
     "webhook.events[0]", "unknown"),
])
def test_each_rule_gives_one_violation(req: jobwire_pb2.EnqueueRequest, field: str, text: str) -> None:
    violations = _violations(req)
    assert [x.field for x in violations] == [field]
    assert text in violations[0].description


def test_run_at_and_delay_together() -> None:
    req = _req(run_at=timestamp_pb2.Timestamp(seconds=int(NOW)), delay=duration_pb2.Duration(seconds=1))
    assert _fields(req) == ["run_at", "delay"]


def test_invalid_argument_reason_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as info:
        v.enqueue_to_new_job(_req(priority=99), REGISTRY, NOW, LIMITS)
    assert info.value.reason == "INVALID_ARGUMENT"


def test_unknown_kind_has_its_own_reason_and_lists_known_kinds() -> None:
    with pytest.raises(InvalidArgument) as info:
        v.enqueue_to_new_job(_req(kind="nope"), REGISTRY, NOW, LIMITS)
    assert info.value.reason == "UNKNOWN_KIND"
    [violation] = info.value.violations
    assert violation.field == "kind"
    for name in ("noop", "sleep", "slow"):
        assert name in violation.description


def test_unknown_kind_with_other_bad_fields_lists_them_all() -> None:
    with pytest.raises(InvalidArgument) as info:
        v.enqueue_to_new_job(_req(kind="nope", priority=77), REGISTRY, NOW, LIMITS)
    assert info.value.reason == "UNKNOWN_KIND"
    assert [x.field for x in info.value.violations] == ["kind", "priority"]


def test_payload_too_large_is_checked_first() -> None:
    limits = v.Limits(max_payload_bytes=8)
    v.enqueue_to_new_job(_req(payload=b"x" * 8), REGISTRY, NOW, limits)
    with pytest.raises(PayloadTooLarge) as info:
        v.enqueue_to_new_job(_req(kind="", priority=99, payload=b"x" * 9), REGISTRY, NOW, limits)
    assert (info.value.field, info.value.size, info.value.limit) == ("payload", 9, 8)
    with pytest.raises(PayloadTooLarge) as info:
        v.enqueue_to_new_job(_req(payload=b"x" * 9), REGISTRY, NOW, limits, "requests[2].")
    assert info.value.field == "requests[2].payload"


def test_default_payload_cap_is_one_mebibyte() -> None:
    v.enqueue_to_new_job(_req(payload=b"x" * (1 << 20)), REGISTRY, NOW, LIMITS)
    with pytest.raises(PayloadTooLarge):
        v.enqueue_to_new_job(_req(payload=b"x" * ((1 << 20) + 1)), REGISTRY, NOW, LIMITS)


def test_max_labels_comes_from_limits() -> None:
    with pytest.raises(InvalidArgument):
        v.enqueue_to_new_job(_req(labels={"a": "", "b": ""}), REGISTRY, NOW, v.Limits(max_labels=1))


def test_many_bad_fields_are_all_reported() -> None:
    req = jobwire_pb2.EnqueueRequest(
        kind="", queue="bad queue", priority=42, run_at=timestamp_pb2.Timestamp(seconds=1),
        delay=duration_pb2.Duration(seconds=1), max_attempts=-2, timeout=duration_pb2.Duration(seconds=-1),
        dedupe_key="d" * 300, request_id="r" * 200, labels={"bad key": "v"},
        webhook=E.WebhookConfig(url="mailto:x@example.com", events=[E.EVENT_TYPE_SNAPSHOT]),
    )
    assert _fields(req) == ["kind", "queue", "priority", "run_at", "delay", "max_attempts", "timeout",
                            "dedupe_key", "request_id", "labels", "webhook.url", "webhook.events[0]"]


def test_field_prefix_for_batches() -> None:
    assert _fields(_req(kind="", priority=11), "requests[3].") == ["requests[3].kind", "requests[3].priority"]


def test_violations_of_one_map_field_are_capped() -> None:
    labels = {f"bad key {i:03}": "v" for i in range(30)}
    violations = _violations(_req(labels=labels))
    assert len(violations) == v.MAX_VIOLATIONS_PER_FIELD + 1
    assert violations[-1] == FieldViolation("labels", "20 more violations not shown")


def test_long_user_input_is_not_echoed_in_full() -> None:
    [violation] = _violations(_req(queue="x" * 5000))
    assert len(violation.description) < 200


# ----------------------------------------------------------------------------- ids


def test_validate_job_id() -> None:
    job_id = new_job_id(NOW)
    assert v.validate_job_id(job_id) == job_id
    for value, text in (("", "required"), ("nope", "job id"), (job_id.upper(), "job id"),
                        (job_id.replace("-", ""), "job id")):
        with pytest.raises(InvalidArgument) as info:
            v.validate_job_id(value, "requests.id")
        assert info.value.violations == (FieldViolation("requests.id", "required" if not value
                                                        else "must be a job id (UUID)"),)
        assert text in info.value.violations[0].description


# ----------------------------------------------------------------------------- listing


def test_list_defaults() -> None:
    query = v.list_request_to_query(jobwire_pb2.ListJobsRequest(), SECRET)
    assert query == JobQuery(page_size=50)


def test_list_filters() -> None:
    req = jobwire_pb2.ListJobsRequest(queue="q", kind="k", states=[E.JOB_STATE_FAILED, E.JOB_STATE_QUEUED],
                                      labels={"a": "1"}, created_after=timestamp_pb2.Timestamp(seconds=10),
                                      created_before=timestamp_pb2.Timestamp(seconds=20, nanos=500_000_000),
                                      page_size=7)
    query = v.list_request_to_query(req, SECRET)
    assert query.queue == "q" and query.kind == "k"
    assert query.states == frozenset({JobState.FAILED, JobState.QUEUED})
    assert dict(query.labels) == {"a": "1"}
    assert (query.created_after, query.created_before, query.page_size, query.after_id) == (10.0, 20.5, 7, None)


@pytest.mark.parametrize(("size", "expected"), [(0, 50), (1, 1), (1000, 1000), (1001, 1000), (2**31 - 1, 1000)])
def test_page_size(size: int, expected: int) -> None:
    assert v.list_request_to_query(jobwire_pb2.ListJobsRequest(page_size=size), SECRET).page_size == expected


@pytest.mark.parametrize(("req", "field"), [
    (jobwire_pb2.ListJobsRequest(page_size=-1), "page_size"),
    (jobwire_pb2.ListJobsRequest(queue="a b"), "queue"),
    (jobwire_pb2.ListJobsRequest(kind="k" * 200), "kind"),
    (jobwire_pb2.ListJobsRequest(states=[E.JOB_STATE_QUEUED, E.JOB_STATE_UNSPECIFIED]), "states[1]"),
    (jobwire_pb2.ListJobsRequest(states=[42]), "states[0]"),  # type: ignore[list-item]
    (jobwire_pb2.ListJobsRequest(labels={"": "x"}), "labels"),
    (jobwire_pb2.ListJobsRequest(created_after=timestamp_pb2.Timestamp(seconds=-10**12)), "created_after"),
    (jobwire_pb2.ListJobsRequest(created_before=timestamp_pb2.Timestamp(nanos=10**9)), "created_before"),
    (jobwire_pb2.ListJobsRequest(page_token="garbage!"), "page_token"),
    (jobwire_pb2.ListJobsRequest(page_token="Zm9vYmFy"), "page_token"),
    (jobwire_pb2.ListJobsRequest(page_token="A"), "page_token"),
    (jobwire_pb2.ListJobsRequest(page_token="x" * 5000), "page_token"),
])
def test_list_violations(req: jobwire_pb2.ListJobsRequest, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        v.list_request_to_query(req, SECRET)
    assert [x.field for x in info.value.violations] == [field]


def test_list_reports_all_violations() -> None:
    req = jobwire_pb2.ListJobsRequest(queue="a b", states=[0], page_size=-5, page_token="%%%")  # type: ignore[list-item]
    with pytest.raises(InvalidArgument) as info:
        v.list_request_to_query(req, SECRET)
    assert [x.field for x in info.value.violations] == ["queue", "states[0]", "page_size", "page_token"]


def _first_page_token(req: jobwire_pb2.ListJobsRequest, last_id: str) -> str:
    return v.encode_page_token(last_id, filters_digest(v.list_request_to_query(req, SECRET)), SECRET)


def test_page_token_round_trip() -> None:
    last_id = new_job_id(NOW)
    req = jobwire_pb2.ListJobsRequest(queue="q", states=[E.JOB_STATE_QUEUED], labels={"a": "1"}, page_size=10)
    token = _first_page_token(req, last_id)
    assert v.decode_page_token(token, SECRET) == (last_id, filters_digest(v.list_request_to_query(req, SECRET)))
    req.page_token = token
    req.page_size = 20  # the page size may change between pages
    query = v.list_request_to_query(req, SECRET)
    assert query.after_id == last_id and query.page_size == 20 and query.queue == "q"


def test_page_token_tampered_anywhere_is_rejected() -> None:
    req = jobwire_pb2.ListJobsRequest(queue="q")
    token = _first_page_token(req, new_job_id(NOW))
    for index in range(len(token)):
        replacement = "A" if token[index] != "A" else "B"
        req.page_token = token[:index] + replacement + token[index + 1:]
        with pytest.raises(InvalidArgument) as info:
            v.list_request_to_query(req, SECRET)
        assert [x.field for x in info.value.violations] == ["page_token"], index


def test_page_token_with_other_filters_is_rejected() -> None:
    token = _first_page_token(jobwire_pb2.ListJobsRequest(queue="q"), new_job_id(NOW))
    for other in (jobwire_pb2.ListJobsRequest(queue="r"), jobwire_pb2.ListJobsRequest(),
                  jobwire_pb2.ListJobsRequest(queue="q", labels={"a": "b"}),
                  jobwire_pb2.ListJobsRequest(queue="q", states=[E.JOB_STATE_FAILED]),
                  jobwire_pb2.ListJobsRequest(queue="q", created_after=timestamp_pb2.Timestamp(seconds=1))):
        other.page_token = token
        with pytest.raises(InvalidArgument) as info:
            v.list_request_to_query(other, SECRET)
        assert info.value.violations[0].field == "page_token"
        assert "different filters" in info.value.violations[0].description


def test_page_token_from_another_secret_or_not_an_id_is_rejected() -> None:
    req = jobwire_pb2.ListJobsRequest()
    digest = filters_digest(v.list_request_to_query(req, SECRET))
    for token in (v.encode_page_token(new_job_id(NOW), digest, b"other secret"),
                  v.encode_page_token("not-an-id", digest, SECRET)):
        req.page_token = token
        with pytest.raises(InvalidArgument):
            v.list_request_to_query(req, SECRET)


def test_decode_page_token_garbage() -> None:
    for token in ("", "====", "a", "ab", "abc", "a+b/", "Zm9v", "é", "A" * 2000):
        assert v.decode_page_token(token, SECRET) is None


def test_filters_digest_is_normalized() -> None:
    one = v.list_request_to_query(jobwire_pb2.ListJobsRequest(
        states=[E.JOB_STATE_QUEUED, E.JOB_STATE_FAILED], labels={"a": "1", "b": "2"}, page_size=3), SECRET)
    two = v.list_request_to_query(jobwire_pb2.ListJobsRequest(
        states=[E.JOB_STATE_FAILED, E.JOB_STATE_QUEUED, E.JOB_STATE_FAILED], labels={"b": "2", "a": "1"}), SECRET)
    assert filters_digest(one) == filters_digest(two)
    assert filters_digest(one) != filters_digest(JobQuery())
    assert filters_digest(JobQuery(queue="a")) != filters_digest(JobQuery(kind="a"))


# ----------------------------------------------------------------------------- watching


def test_watch_events_filter() -> None:
    req = jobwire_pb2.WatchEventsRequest(queues=["a", "b", "a"], kinds=["noop"],
                                         types=[E.EVENT_TYPE_SUCCEEDED, E.EVENT_TYPE_DELETED])
    assert v.watch_events_filter(req) == (frozenset({"a", "b"}), frozenset({"noop"}),
                                          frozenset({EventType.SUCCEEDED, EventType.DELETED}))
    assert v.watch_events_filter(jobwire_pb2.WatchEventsRequest()) == (frozenset(), frozenset(), frozenset())


def test_watch_events_filter_violations() -> None:
    req = jobwire_pb2.WatchEventsRequest(queues=["ok", "not ok"], kinds=[""],
                                         types=[E.EVENT_TYPE_FAILED, E.EVENT_TYPE_UNSPECIFIED, 1234])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument) as info:
        v.watch_events_filter(req)
    assert [x.field for x in info.value.violations] == ["queues[1]", "kinds[0]", "types[1]", "types[2]"]


# ----------------------------------------------------------------------------- fuzz

_int32 = st.integers(-(2**31), 2**31 - 1)
_int64 = st.integers(-(2**63), 2**63 - 1)
_text = st.one_of(st.text(max_size=20), st.text(alphabet="abc._-/", max_size=70), st.text(min_size=100,
                                                                                         max_size=3000))
_timestamp = st.builds(timestamp_pb2.Timestamp, seconds=st.one_of(_int64, st.integers(0, 4 * 10**9)),
                       nanos=st.one_of(_int32, st.integers(0, 10**9 - 1)))
_duration = st.builds(duration_pb2.Duration, seconds=st.one_of(_int64, st.integers(-10, 10**6)),
                      nanos=st.one_of(_int32, st.integers(-(10**9 - 1), 10**9 - 1)))
_events = st.lists(st.one_of(st.sampled_from(list(jobwire_pb2.EventType.values())), _int32), max_size=5)
_webhook = st.builds(jobwire_pb2.WebhookConfig, url=st.one_of(_text, st.sampled_from(
    ["http://x.example", "https://h:1/p", "http://[::1]:80/", "https://", "http://a b"])), events=_events)


@st.composite
def _requests(draw: st.DrawFn) -> jobwire_pb2.EnqueueRequest:
    req = jobwire_pb2.EnqueueRequest(
        queue=draw(st.one_of(st.just(""), _text)),
        kind=draw(st.one_of(st.sampled_from(["noop", "sleep", "slow", ""]), _text)),
        payload=draw(st.one_of(st.binary(max_size=64), st.sampled_from([b'{"phases": 2}', b"[]", b"null"]))),
        priority=draw(st.one_of(st.integers(-2, 12), _int32)),
        max_attempts=draw(st.one_of(st.integers(-2, 1002), _int32)),
        dedupe_key=draw(_text), request_id=draw(_text),
        labels=draw(st.dictionaries(_text, _text, max_size=70)),
    )
    for name, strategy in (("run_at", _timestamp), ("delay", _duration), ("timeout", _duration),
                           ("webhook", _webhook)):
        if draw(st.booleans()):
            getattr(req, name).CopyFrom(draw(strategy))
    return req


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=_requests(), cap=st.sampled_from([16, 1 << 20]))
def test_arbitrary_requests_only_raise_domain_errors(req: jobwire_pb2.EnqueueRequest, cap: int) -> None:
    try:
        job = v.enqueue_to_new_job(req, REGISTRY, NOW, v.Limits(max_payload_bytes=cap), "requests[0].")
    except InvalidArgument as exc:
        assert exc.violations
        assert all(x.field.startswith("requests[0].") for x in exc.violations)
        assert exc.reason in ("INVALID_ARGUMENT", "UNKNOWN_KIND")
    except PayloadTooLarge:
        assert len(req.payload) > cap
    else:
        assert 1 <= job.priority <= 10 and job.run_at >= NOW and job.max_attempts >= 1 and job.timeout >= 0
        assert job.phase_names and job.kind in REGISTRY


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_domain_errors(data: bytes) -> None:
    checks: list[tuple[type[Message], Callable[[Any], object]]] = [
        (jobwire_pb2.EnqueueRequest, lambda m: v.enqueue_to_new_job(m, REGISTRY, NOW, LIMITS)),
        (jobwire_pb2.ListJobsRequest, lambda m: v.list_request_to_query(m, SECRET)),
        (jobwire_pb2.WatchEventsRequest, v.watch_events_filter),
    ]
    for message_type, check in checks:
        try:
            message = message_type.FromString(data)
        except DecodeError:
            continue
        with contextlib.suppress(InvalidArgument, PayloadTooLarge):
            check(message)


def test_keys_and_label_values_holding_nul_are_refused() -> None:
    for request, field in ((_req(dedupe_key="a\x00b"), "dedupe_key"), (_req(request_id="r\x00"), "request_id"),
                           (_req(labels={"env": "p\x00"}), "labels")):
        problems = [x for x in _violations(request) if x.field == field]
        assert problems and v.NO_NUL in problems[0].description, problems
