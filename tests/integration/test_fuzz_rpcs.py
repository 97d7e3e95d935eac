"""Generated requests against every JobService RPC of one real server.

Whatever a client sends, each call ends OK or with a deliberate status (never UNKNOWN or INTERNAL,
which mean an unhandled exception), and the server is still up and SERVING afterwards. Streams are
read for a few messages under a short deadline, so DEADLINE_EXCEEDED is a fine end for them.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jobwire.v1 import jobwire_pb2, jobwire_pb2_grpc

from tests.conftest import REPO, ServerProcess, free_port, wait_serving

EXAMPLES = 150
CALL_TIMEOUT = 10.0
STREAM_TIMEOUT = 0.1  # a valid watch stays open; this bounds how long each example waits on one
STREAM_MESSAGES = 3
NOT_ALLOWED = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# ----------------------------------------------------------------------------- strategies

INT32 = st.one_of(st.integers(-(2**31), 2**31 - 1),
                  st.sampled_from([0, 1, 5, 10, 11, -1, 1000, 1001, 2**31 - 1, -(2**31)]))
INT64 = st.one_of(st.integers(-(2**63), 2**63 - 1),
                  st.integers(-62_135_596_801, -62_135_596_799), st.integers(253_402_300_798, 253_402_300_800),
                  st.integers(315_576_000_000 - 1, 315_576_000_000 + 1), st.integers(-10, 10))
NANOS = st.one_of(INT32, st.sampled_from([0, 999_999_999, 1_000_000_000, -999_999_999, -1_000_000_000]))
UINT64 = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 20), st.sampled_from([2**63 - 1, 2**63, 2**64 - 1]))
HUGE_TEXT = st.builds(lambda ch, n: ch * n, st.sampled_from(["x", "é", "😀", "\x00"]), st.integers(129, 300_000))
NAMES = st.sampled_from(["", "default", "noop", "sleep", "a" * 128, "a" * 129, "é", " ", "a.b-c_d", "a/b"])
TEXT = st.one_of(st.text(), st.text(st.characters(codec="ascii")), NAMES,
                 st.from_regex(r"[A-Za-z0-9._-]{1,130}", fullmatch=True), HUGE_TEXT)
KIND = st.one_of(st.sampled_from(["noop", "sleep", "", "nope"]), TEXT)
PAYLOAD = st.one_of(
    st.binary(),
    st.sampled_from([b"", b"{}", b"null", b"[]", b'{"seconds": 0.01}', b'{"seconds": -1}', b'{"seconds": 1e999}',
                     b'{"seconds": 0, "phases": 100}', b'{"phases": 101}', b'{"phases": true}',
                     b'{"seconds": ' + b"1" * 5000 + b"}", b"[" * 100_000, b"\xff\xfe"]),
    st.builds(lambda chunk, n: chunk * n, st.binary(min_size=1, max_size=3),
              st.integers((1 << 20) // 3 - 2, (1 << 20) // 3 + 2)),
)
TIMESTAMP = st.builds(timestamp_pb2.Timestamp, seconds=INT64, nanos=NANOS)
DURATION = st.builds(duration_pb2.Duration, seconds=INT64, nanos=NANOS)
ENUMS = st.lists(st.one_of(st.integers(-1, 20), INT32), max_size=8)
LABELS = st.dictionaries(TEXT, TEXT, max_size=8) | st.builds(
    lambda n: {f"k{i}": "v" for i in range(n)}, st.integers(60, 70))
#: Only URLs that fail validation, or loopback ones: a test never sends traffic off this machine.
WEBHOOK_URL = st.one_of(
    st.text().filter(lambda url: not url.strip().lower().startswith(("http:", "https:"))),
    st.sampled_from(["", "http://127.0.0.1:9/hook", "https://127.0.0.1:9/", "http://127.0.0.1:99999/",
                     "http://[::1]:9/", "http:///nohost", "ftp://127.0.0.1/"]),
)

# Values a valid request could hold: a request is mostly valid with a few wild fields, so generated
# requests get past the first check and reach the store, the engine and the converters.
NAME = st.sampled_from(["default", "q-fuzz", "a" * 128, "A.b-c_9"])
LABEL_KEY = st.from_regex(r"[A-Za-z0-9._/-]{1,63}", fullmatch=True)
VALID_TIMESTAMP = st.builds(timestamp_pb2.Timestamp, seconds=st.integers(-62_135_596_800, 253_402_300_799),
                            nanos=st.integers(0, 999_999_999))
VALID_DURATION = st.builds(duration_pb2.Duration, seconds=st.integers(0, 10**6), nanos=st.integers(0, 999_999_999))
VALID_ENQUEUE: dict[str, st.SearchStrategy[Any]] = {
    "queue": NAME,
    "kind": st.sampled_from(["noop", "sleep"]),
    "payload": st.sampled_from([b"", b"{}", b'{"seconds": 0.01, "phases": 2}', b'{"seconds": 0}']),
    "priority": st.integers(0, 10),
    "run_at": VALID_TIMESTAMP,
    "delay": VALID_DURATION,
    "max_attempts": st.integers(0, 1000),
    "timeout": VALID_DURATION,
    "dedupe_key": st.sampled_from(["", "d1", "d2"]),
    "request_id": st.sampled_from(["", "r1", "r2"]),
    "labels": st.dictionaries(LABEL_KEY, st.text(max_size=256), max_size=4),
    "webhook": st.builds(jobwire_pb2.WebhookConfig, url=st.just("http://127.0.0.1:9/hook"),
                         events=st.lists(st.sampled_from([9, 10, 12, 2, 18]), max_size=3)),
}
WILD_ENQUEUE: dict[str, st.SearchStrategy[Any]] = {
    "queue": TEXT, "kind": KIND, "payload": PAYLOAD, "priority": INT32, "run_at": TIMESTAMP, "delay": DURATION,
    "max_attempts": INT32, "timeout": DURATION, "dedupe_key": TEXT, "request_id": TEXT, "labels": LABELS,
    "webhook": st.builds(jobwire_pb2.WebhookConfig, url=WEBHOOK_URL, events=ENUMS),
}


@st.composite
def _mutated(draw: st.DrawFn, cls: Any, valid: dict[str, st.SearchStrategy[Any]],
             wild: dict[str, st.SearchStrategy[Any]]) -> Any:
    """A `cls` message: usually valid values with one or two wild fields, sometimes wild throughout."""
    if draw(st.integers(0, 3), label="wild throughout") == 0:
        return cls(**draw(st.fixed_dictionaries({}, optional=wild)))
    values = draw(st.fixed_dictionaries({}, optional=valid))
    for name in draw(st.sets(st.sampled_from(sorted(wild)), max_size=2), label="wild fields"):
        values[name] = draw(wild[name], label=name)
    return cls(**values)


def _page_token() -> st.SearchStrategy[str]:
    encoded = st.binary(max_size=200).map(lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode())
    return st.one_of(TEXT, encoded)


ENQUEUE = _mutated(jobwire_pb2.EnqueueRequest, VALID_ENQUEUE, WILD_ENQUEUE)
#: For the 1,000-request batches: small requests, so a batch stays a few hundred KiB.
SMALL_ENQUEUE = st.fixed_dictionaries({}, optional=VALID_ENQUEUE).map(lambda v: jobwire_pb2.EnqueueRequest(**v))
BATCH = st.one_of(
    st.lists(ENQUEUE, max_size=4),
    st.builds(lambda request, n: [request] * n, SMALL_ENQUEUE, st.sampled_from([1000, 1001])),
).map(lambda requests: jobwire_pb2.EnqueueBatchRequest(requests=requests))


#: A schedule's template: an enqueue without run_at, delay and request_id.
VALID_TEMPLATE = st.fixed_dictionaries(
    {"kind": st.sampled_from(["noop", "sleep"])},
    optional={k: v for k, v in VALID_ENQUEUE.items() if k not in ("kind", "run_at", "delay", "request_id")},
).map(lambda values: jobwire_pb2.EnqueueRequest(**values))
CRON = st.sampled_from(["* * * * *", "*/5 * * * *", "0 9 * * MON-FRI", "@daily", "@hourly", "30 2 * * *",
                        "0 0 L * *", "0 0 * * 1#2", "0 0 29 2 *", "59 23 31 12 *", "0 0 31 2 *", "@reboot"])
ZONES = st.sampled_from(["", "UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Pacific/Apia",
                         "Asia/Kathmandu", "Mars/Base"])
VALID_SPEC: dict[str, st.SearchStrategy[Any]] = {
    "template": VALID_TEMPLATE,
    "cron": CRON,
    "time_zone": ZONES,
    "jitter": st.builds(duration_pb2.Duration, seconds=st.integers(0, 86_400)),
    "overlap_policy": st.integers(0, 3),
    "catchup_policy": st.integers(0, 2),
    "description": st.text(max_size=50),
}
WILD_SPEC: dict[str, st.SearchStrategy[Any]] = {
    "template": ENQUEUE, "cron": TEXT, "time_zone": TEXT, "interval": DURATION, "jitter": DURATION,
    "overlap_policy": INT32, "catchup_policy": INT32, "description": TEXT,
}
SCHEDULE_SPEC = st.one_of(
    st.fixed_dictionaries({"template": VALID_TEMPLATE, "cron": CRON},
                          optional={k: v for k, v in VALID_SPEC.items() if k not in ("template", "cron")}
                          ).map(lambda values: jobwire_pb2.ScheduleSpec(**values)),
    _mutated(jobwire_pb2.ScheduleSpec, VALID_SPEC, WILD_SPEC))
SCHEDULE_IDS = {"id": st.one_of(st.sampled_from(["s1", "s2", "nightly"]),
                                st.from_regex(r"[a-z]{1,12}", fullmatch=True))}
WILD_SCHEDULE_IDS = {"id": TEXT}


def _schedule_requests(method: str) -> st.SearchStrategy[Any]:
    return {
        "CreateSchedule": st.one_of(
            st.builds(jobwire_pb2.CreateScheduleRequest, id=SCHEDULE_IDS["id"], spec=SCHEDULE_SPEC,
                      paused=st.booleans()),
            _mutated(jobwire_pb2.CreateScheduleRequest, {**SCHEDULE_IDS, "spec": SCHEDULE_SPEC},
                     {**WILD_SCHEDULE_IDS, "spec": SCHEDULE_SPEC})),
        "UpdateSchedule": st.one_of(
            st.builds(jobwire_pb2.UpdateScheduleRequest, id=SCHEDULE_IDS["id"], spec=SCHEDULE_SPEC),
            _mutated(jobwire_pb2.UpdateScheduleRequest, {**SCHEDULE_IDS, "spec": SCHEDULE_SPEC},
                     {**WILD_SCHEDULE_IDS, "spec": SCHEDULE_SPEC})),
        "GetSchedule": _mutated(jobwire_pb2.GetScheduleRequest, SCHEDULE_IDS, WILD_SCHEDULE_IDS),
        "ListSchedules": _mutated(jobwire_pb2.ListSchedulesRequest, {"page_size": st.integers(0, 2000)},
                                  {"page_size": INT32, "page_token": _page_token()}),
        "DeleteSchedule": _mutated(jobwire_pb2.DeleteScheduleRequest, SCHEDULE_IDS, WILD_SCHEDULE_IDS),
        "PauseSchedule": _mutated(jobwire_pb2.PauseScheduleRequest, SCHEDULE_IDS, WILD_SCHEDULE_IDS),
        "ResumeSchedule": _mutated(jobwire_pb2.ResumeScheduleRequest, SCHEDULE_IDS, WILD_SCHEDULE_IDS),
        "TriggerSchedule": _mutated(jobwire_pb2.TriggerScheduleRequest,
                                    {**SCHEDULE_IDS, "request_id": st.sampled_from(["", "r1"])},
                                    {**WILD_SCHEDULE_IDS, "request_id": TEXT}),
    }[method]


QUEUE_NAMES = {"name": st.sampled_from(["q-fuzz", "media", "a" * 128])}
WILD_QUEUE_NAMES = {"name": TEXT}
QUEUE_SETTINGS = {"concurrency_limit": st.integers(0, 10), "rate_limit": st.floats(0, 100),
                  "rate_burst": st.integers(0, 5), "key_limit": st.integers(0, 5),
                  "default_priority": st.integers(0, 10), "default_max_attempts": st.integers(0, 10)}
WILD_QUEUE_SETTINGS = {"concurrency_limit": INT32, "rate_limit": st.floats(), "rate_burst": INT32, "key_limit": INT32,
                       "default_priority": INT32, "default_max_attempts": INT32}


def _queue_requests(method: str) -> st.SearchStrategy[Any]:
    return {
        "PauseQueue": _mutated(jobwire_pb2.PauseQueueRequest, QUEUE_NAMES, WILD_QUEUE_NAMES),
        "ResumeQueue": _mutated(jobwire_pb2.ResumeQueueRequest, QUEUE_NAMES, WILD_QUEUE_NAMES),
        "GetQueue": _mutated(jobwire_pb2.GetQueueRequest, QUEUE_NAMES, WILD_QUEUE_NAMES),
        "ListQueues": _mutated(jobwire_pb2.ListQueuesRequest, {"page_size": st.integers(0, 2000)},
                               {"page_size": INT32, "page_token": _page_token()}),
        "UpdateQueue": _mutated(jobwire_pb2.UpdateQueueRequest, {**QUEUE_NAMES, **QUEUE_SETTINGS},
                                {**WILD_QUEUE_NAMES, **WILD_QUEUE_SETTINGS}),
    }[method]


def _requests(method: str, known: list[str]) -> st.SearchStrategy[Any]:
    if method.endswith(("Schedule", "Schedules")):
        return _schedule_requests(method)
    if method.endswith(("Queue", "Queues")):
        return _queue_requests(method)
    ids = {"id": st.sampled_from(known)}
    wild_ids = {"id": st.one_of(st.uuids().map(str), st.uuids(version=4).map(str), TEXT)}
    return {
        "Enqueue": ENQUEUE,
        "EnqueueBatch": BATCH,
        "GetJob": _mutated(jobwire_pb2.GetJobRequest, ids, wild_ids),
        "ListJobs": _mutated(
            jobwire_pb2.ListJobsRequest,
            {"queue": NAME, "kind": st.sampled_from(["noop", "sleep"]), "states": st.lists(st.integers(1, 8)),
             "labels": st.dictionaries(LABEL_KEY, st.text(max_size=20), max_size=2), "created_after": VALID_TIMESTAMP,
             "created_before": VALID_TIMESTAMP, "page_size": st.integers(0, 2000)},
            {"queue": TEXT, "kind": TEXT, "states": ENUMS, "labels": LABELS, "created_after": TIMESTAMP,
             "created_before": TIMESTAMP, "page_size": INT32, "page_token": _page_token()}),
        "CancelJob": _mutated(jobwire_pb2.CancelJobRequest, {**ids, "reason": st.text(max_size=50)},
                              {**wild_ids, "reason": TEXT}),
        "RetryJob": _mutated(jobwire_pb2.RetryJobRequest, {**ids, "from_start": st.booleans()}, wild_ids),
        "GetQueueStats": _mutated(jobwire_pb2.GetQueueStatsRequest, {"queue": NAME}, {"queue": TEXT}),
        "ListWebhookDeliveries": _mutated(jobwire_pb2.ListWebhookDeliveriesRequest, {"job_id": ids["id"]},
                                          {"job_id": wild_ids["id"]}),
        "PruneJobs": st.builds(jobwire_pb2.PruneJobsRequest, dry_run=st.booleans()),
        "WatchJob": _mutated(jobwire_pb2.WatchJobRequest, {**ids, "after_sequence": st.integers(0, 5)},
                             {**wild_ids, "after_sequence": UINT64}),
        "WatchEvents": _mutated(
            jobwire_pb2.WatchEventsRequest,
            {"queues": st.lists(NAME, max_size=2), "kinds": st.lists(st.sampled_from(["noop", "sleep"]), max_size=2),
             "types": st.lists(st.integers(1, 18), max_size=3)},
            {"queues": st.lists(TEXT, max_size=5), "kinds": st.lists(TEXT, max_size=5), "types": ENUMS}),
    }[method]


UNARY = ["Enqueue", "EnqueueBatch", "GetJob", "ListJobs", "CancelJob", "RetryJob", "GetQueueStats",
         "ListWebhookDeliveries", "PruneJobs", "CreateSchedule", "UpdateSchedule", "GetSchedule", "ListSchedules",
         "DeleteSchedule", "PauseSchedule", "ResumeSchedule", "TriggerSchedule", "PauseQueue", "ResumeQueue",
         "GetQueue", "ListQueues", "UpdateQueue"]
STREAMS = ["WatchJob", "WatchEvents"]


# ----------------------------------------------------------------------------- one server for the module


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    log_path = folder / "server.log"
    args = [sys.executable, "-m", "jobwire_server", "serve", "--listen", f"127.0.0.1:{port}",
            "--db", str(folder / "fuzz.db"), "--shutdown-grace", "2", "--cancel-grace", "1"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(process, f"127.0.0.1:{port}", Path(folder / "fuzz.db"), log_path)
    try:
        wait_serving(server.target, process)
    except Exception:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"server failed to start:\n{server.log()}") from None
    yield server
    if process.poll() is None:
        server.stop(timeout=30)


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def known_ids(channel: grpc.Channel) -> list[str]:
    """Ids of real jobs in several states, so generated requests reach past the id check."""
    stub = jobwire_pb2_grpc.JobServiceStub(channel)

    def enqueue(**fields: Any) -> str:
        reply = stub.Enqueue(jobwire_pb2.EnqueueRequest(**fields), timeout=CALL_TIMEOUT)
        return str(reply.job.id)

    done = enqueue(kind="noop", payload=b"{}")
    scheduled = enqueue(kind="noop", delay=duration_pb2.Duration(seconds=3600))
    cancelled = enqueue(kind="noop", delay=duration_pb2.Duration(seconds=3600))
    stub.CancelJob(jobwire_pb2.CancelJobRequest(id=cancelled), timeout=CALL_TIMEOUT)
    failed = enqueue(kind="sleep", payload=b"not json")
    return [done, scheduled, cancelled, failed]


def _status_of(error: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = error.code()
    assert code not in NOT_ALLOWED, f"{code}: {error.details()}"
    return code


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("method", UNARY)
@FUZZ
@given(data=st.data())
def test_unary_rpc_never_fails_internally(channel: grpc.Channel, known_ids: list[str], fuzz_server: ServerProcess,
                                          method: str, data: st.DataObject) -> None:
    request = data.draw(_requests(method, known_ids), label="request")
    call = getattr(jobwire_pb2_grpc.JobServiceStub(channel), method)
    try:
        call(request, timeout=CALL_TIMEOUT)
        event("OK")  # `--hypothesis-show-statistics` shows how deep the requests got
    except grpc.RpcError as error:
        event(_status_of(error).name)
    assert fuzz_server.process.poll() is None, "the server exited"


@pytest.mark.parametrize("method", STREAMS)
@FUZZ
@given(data=st.data())
def test_stream_rpc_never_fails_internally(channel: grpc.Channel, known_ids: list[str], fuzz_server: ServerProcess,
                                           method: str, data: st.DataObject) -> None:
    request = data.draw(_requests(method, known_ids), label="request")
    stream = getattr(jobwire_pb2_grpc.JobServiceStub(channel), method)(request, timeout=STREAM_TIMEOUT)
    try:
        for count, _ in enumerate(stream, start=1):
            if count >= STREAM_MESSAGES:
                break
        event("OK")
    except grpc.RpcError as error:
        event(_status_of(error).name)
    finally:
        stream.cancel()
    assert fuzz_server.process.poll() is None, "the server exited"


#: JSON that Python's decoder rejects with something other than JSONDecodeError (deep nesting:
#: RecursionError; an over-long integer: ValueError). Rare for the generator to hit, so pinned here.
HOSTILE_JSON = {
    "deep-nesting": b"[" * 100_000,
    "deep-object": b'{"a":' * 50_000,
    "long-integer": b'{"seconds": ' + b"1" * 5000 + b"}",
    "long-phases": b'{"phases": ' + b"9" * 5000 + b"}",
    "nan": b'{"seconds": NaN}',
    "infinity": b'{"seconds": -Infinity}',
}


@pytest.mark.parametrize("kind", ["sleep", "noop"])
@pytest.mark.parametrize("payload", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_hostile_json_payload_never_fails_internally(channel: grpc.Channel, kind: str, payload: bytes) -> None:
    try:
        jobwire_pb2_grpc.JobServiceStub(channel).Enqueue(jobwire_pb2.EnqueueRequest(kind=kind, payload=payload),
                                                         timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        _status_of(error)


def test_server_still_serving_after_fuzzing(channel: grpc.Channel, fuzz_server: ServerProcess) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="jobwire.v1.JobService"),
                                                      timeout=CALL_TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert fuzz_server.process.poll() is None


def test_server_logged_no_traceback(fuzz_server: ServerProcess) -> None:
    """An exception that escapes a servicer (or a background task) is logged with a traceback."""
    log = fuzz_server.log()
    assert "Traceback" not in log, log[max(0, log.index("Traceback") - 300):][:3000]
