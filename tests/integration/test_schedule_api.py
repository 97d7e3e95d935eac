"""The schedule RPCs over real loopback gRPC: bad input answered INVALID_ARGUMENT with field
violations, the other error statuses with their details, paging, and what a schedule shows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from grpc import aio
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc
from jobwire_server.app import App
from jobwire_server.domain.clock import FakeClock
from prometheus_client.parser import text_string_to_metric_families

from tests.testkit import Harness, error_details

pytestmark = pytest.mark.timeout(60)

DAY0 = 1_800_057_600.0  # 2027-01-15T00:00:00Z


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    harness = Harness(tmp_path)
    from jobwire_server.handlers.builtin import noop, sleep  # noqa: PLC0415

    yield await harness.start(noop, sleep, clock=FakeClock(DAY0 + 30), max_payload_bytes=1000,
                              schedules=[{"id": "declared", "kind": "noop", "every": "1h"}],
                              metrics_listen="127.0.0.1:0")
    await harness.stop_all()


@pytest.fixture
async def stub(app: App) -> AsyncIterator[jobwire_pb2_grpc.JobServiceStub]:
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


def spec(**fields: object) -> pb.ScheduleSpec:
    values: dict[str, object] = {"template": pb.EnqueueRequest(kind="noop", payload=b"{}"), "cron": "*/5 * * * *"}
    values.update(fields)
    return pb.ScheduleSpec(**values)  # type: ignore[arg-type]


async def failure(call: object) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


BAD_SPECS = [
    pytest.param({"cron": "* * * *"}, {"spec.cron": "must have 5 fields"}, id="four-fields"),
    pytest.param({"cron": "61 * * * *"}, {"spec.cron": "is not a valid cron expression"}, id="out-of-range"),
    pytest.param({"cron": "0 0 30 2 *"}, {"spec.cron": "never matches a date"}, id="never"),
    pytest.param({"cron": "@reboot"}, {"spec.cron": "unknown macro"}, id="macro"),
    pytest.param({"time_zone": "Mars/Base"}, {"spec.time_zone": "unknown time zone"}, id="zone"),
    pytest.param({"cron": None, "interval": duration_pb2.Duration(seconds=-60)},
                 {"spec.interval": "must not be negative"}, id="negative-interval"),
    pytest.param({"cron": None, "interval": duration_pb2.Duration(seconds=0)},
                 {"spec.interval": "whole number of seconds"}, id="zero-interval"),
    pytest.param({"cron": None, "interval": duration_pb2.Duration(seconds=1, nanos=500_000_000)},
                 {"spec.interval": "whole number of seconds"}, id="fractional-interval"),
    pytest.param({"cron": None, "interval": duration_pb2.Duration(seconds=60), "time_zone": "Europe/Paris"},
                 {"spec.time_zone": "applies only to cron"}, id="zone-with-interval"),
    pytest.param({"cron": None}, {"spec.cron": "one of cron and interval is required"}, id="no-timing"),
    pytest.param({"jitter": duration_pb2.Duration(seconds=-1)}, {"spec.jitter": "must not be negative"},
                 id="negative-jitter"),
    pytest.param({"jitter": duration_pb2.Duration(seconds=86_401)}, {"spec.jitter": "at most 24 hours"},
                 id="long-jitter"),
    pytest.param({"overlap_policy": 9}, {"spec.overlap_policy": "unknown overlap policy"}, id="overlap"),
    pytest.param({"catchup_policy": 9}, {"spec.catchup_policy": "unknown catch-up policy"}, id="catchup"),
    pytest.param({"description": "x" * 1025}, {"spec.description": "at most 1024"}, id="description"),
    pytest.param({"template": None}, {"spec.template": "required"}, id="no-template"),
    pytest.param({"template": pb.EnqueueRequest(kind="noop", priority=11, delay=duration_pb2.Duration(seconds=5),
                                                request_id="r", labels={"bad key!": "x"})},
                 {"spec.template.priority": "between 1 and 10", "spec.template.delay": "must be unset",
                  "spec.template.request_id": "must be empty", "spec.template.labels": "label key"},
                 id="template-fields"),
    pytest.param({"template": pb.EnqueueRequest(kind="noop", run_at=timestamp_pb2.Timestamp(seconds=5))},
                 {"spec.template.run_at": "must be unset"}, id="template-run-at"),
]


@pytest.mark.parametrize(("fields", "expected"), BAD_SPECS)
async def test_bad_input_is_invalid_argument_with_every_field_named(
        stub: jobwire_pb2_grpc.JobServiceStub, fields: dict[str, object], expected: dict[str, str]) -> None:
    built = spec()
    for name, value in fields.items():
        if value is None:
            built.ClearField(name)
        elif isinstance(value, (duration_pb2.Duration, pb.EnqueueRequest)):
            getattr(built, name).CopyFrom(value)
        else:
            setattr(built, name, value)
    for call in (stub.CreateSchedule(pb.CreateScheduleRequest(id="s", spec=built)),
                 stub.UpdateSchedule(pb.UpdateScheduleRequest(id="s", spec=built))):
        error = await failure(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        reason, violations = error_details(error)
        assert reason == "INVALID_ARGUMENT"
        assert set(violations) == set(expected), violations
        for field, text in expected.items():
            assert text in violations[field], (field, violations[field])


async def test_every_bad_field_is_reported_at_once(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    bad = spec(cron="nope", time_zone="Nowhere/Land", jitter=duration_pb2.Duration(seconds=-5))
    error = await failure(stub.CreateSchedule(pb.CreateScheduleRequest(id="bad id!", spec=bad)))
    assert set(error_details(error)[1]) == {"id", "spec.cron", "spec.time_zone", "spec.jitter"}
    error = await failure(stub.CreateSchedule(pb.CreateScheduleRequest(id="")))
    assert error_details(error)[1] == {"id": "required", "spec": "required"}


async def test_an_unknown_kind_is_unknown_kind(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    error = await failure(stub.CreateSchedule(pb.CreateScheduleRequest(
        id="s", spec=spec(template=pb.EnqueueRequest(kind="nope"), cron="bad"))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, violations = error_details(error)
    assert reason == "UNKNOWN_KIND" and set(violations) == {"spec.template.kind", "spec.cron"}


async def test_a_payload_over_the_cap_is_resource_exhausted(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    big = spec(template=pb.EnqueueRequest(kind="noop", payload=b"x" * 1001))
    error = await failure(stub.CreateSchedule(pb.CreateScheduleRequest(id="s", spec=big)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_details(error) == ("PAYLOAD_TOO_LARGE", {"spec.template.payload": "must be at most 1000 bytes, "
                                                                                   "got 1001"})


@pytest.mark.parametrize("method", ["GetSchedule", "DeleteSchedule", "PauseSchedule", "ResumeSchedule",
                                    "TriggerSchedule"])
async def test_ids_are_checked_and_unknown_ones_are_not_found(stub: jobwire_pb2_grpc.JobServiceStub,
                                                              method: str) -> None:
    request_type = getattr(pb, f"{method}Request")
    error = await failure(getattr(stub, method)(request_type(id="")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error_details(error)[1] == {"id": "required"}
    error = await failure(getattr(stub, method)(request_type(id="no/such")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await failure(getattr(stub, method)(request_type(id="missing")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    reason, _ = error_details(error)
    assert reason == "SCHEDULE_NOT_FOUND"


async def test_create_get_update_pause_resume_delete(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    created = await stub.CreateSchedule(pb.CreateScheduleRequest(id="five", spec=spec(
        jitter=duration_pb2.Duration(seconds=30), overlap_policy=pb.OVERLAP_POLICY_SKIP, description="every 5")))
    assert created.id == "five" and not created.paused and not created.from_config
    assert [t.ToSeconds() for t in created.next_fire_times] == [DAY0 + 300 * n for n in range(1, 6)]
    effective = created.spec
    assert (effective.cron, effective.time_zone, effective.jitter.seconds) == ("*/5 * * * *", "UTC", 30)
    assert effective.overlap_policy == pb.OVERLAP_POLICY_SKIP
    assert effective.catchup_policy == pb.CATCHUP_POLICY_SKIP
    # Left unset, priority and max attempts stay 0: each firing takes the queue's defaults then.
    assert (effective.template.queue, effective.template.priority, effective.template.max_attempts) == (
        "default", 0, 0)
    assert not created.HasField("last_fire_time") and created.last_job_id == ""
    assert await stub.GetSchedule(pb.GetScheduleRequest(id="five")) == created

    error = await failure(stub.CreateSchedule(pb.CreateScheduleRequest(id="five", spec=spec())))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_details(error)[0] == "SCHEDULE_EXISTS"

    updated = await stub.UpdateSchedule(pb.UpdateScheduleRequest(id="five", spec=spec(
        cron=None, interval=duration_pb2.Duration(seconds=3600))))
    assert updated.spec.WhichOneof("timing") == "interval" and updated.spec.interval.seconds == 3600
    assert updated.spec.overlap_policy == pb.OVERLAP_POLICY_ALLOW  # replaced, not merged
    assert updated.next_fire_times[0].ToSeconds() == DAY0 + 3600

    paused = await stub.PauseSchedule(pb.PauseScheduleRequest(id="five"))
    assert paused.paused and list(paused.next_fire_times) == []
    resumed = await stub.ResumeSchedule(pb.ResumeScheduleRequest(id="five"))
    assert not resumed.paused and len(resumed.next_fire_times) == 5

    assert await stub.DeleteSchedule(pb.DeleteScheduleRequest(id="five")) == pb.DeleteScheduleResponse()
    error = await failure(stub.GetSchedule(pb.GetScheduleRequest(id="five")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_config_schedules_cannot_be_updated_or_deleted(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    declared = await stub.GetSchedule(pb.GetScheduleRequest(id="declared"))
    assert declared.from_config and declared.spec.interval.seconds == 3600
    for call in (stub.UpdateSchedule(pb.UpdateScheduleRequest(id="declared", spec=spec())),
                 stub.DeleteSchedule(pb.DeleteScheduleRequest(id="declared"))):
        error = await failure(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        reason, _ = error_details(error)
        assert reason == "SCHEDULE_FROM_CONFIG"
    assert (await stub.PauseSchedule(pb.PauseScheduleRequest(id="declared"))).paused


async def test_trigger_returns_the_job_and_a_skip_returns_the_previous(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    sleepy = spec(template=pb.EnqueueRequest(kind="sleep", payload=b'{"seconds": 60}'),
                  overlap_policy=pb.OVERLAP_POLICY_SKIP)
    await stub.CreateSchedule(pb.CreateScheduleRequest(id="sleepy", spec=sleepy, paused=True))
    first = await stub.TriggerSchedule(pb.TriggerScheduleRequest(id="sleepy", request_id="r-1"))
    assert not first.skipped and first.job.kind == "sleep" and first.job.labels["jobwire/schedule"] == "sleepy"
    # A slot was free: the firing's own transaction claimed the job, and the reply shows it as committed.
    assert first.job.state == pb.JOB_STATE_RUNNING
    again = await stub.TriggerSchedule(pb.TriggerScheduleRequest(id="sleepy", request_id="r-1"))
    assert again.job.id == first.job.id and not again.skipped
    skipped = await stub.TriggerSchedule(pb.TriggerScheduleRequest(id="sleepy"))
    assert skipped.skipped and skipped.job.id == first.job.id
    shown = await stub.GetSchedule(pb.GetScheduleRequest(id="sleepy"))
    assert shown.last_job_id == first.job.id and shown.HasField("last_fire_time")
    error = await failure(stub.TriggerSchedule(pb.TriggerScheduleRequest(id="sleepy", request_id="r" * 129)))
    assert error_details(error)[1] == {"request_id": "must be at most 128 characters, got 129"}
    await stub.CancelJob(pb.CancelJobRequest(id=first.job.id))


async def test_a_firing_takes_the_queue_defaults_of_its_moment(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    await stub.UpdateQueue(pb.UpdateQueueRequest(name="media", default_priority=8, default_max_attempts=7))
    unset = spec(template=pb.EnqueueRequest(queue="media", kind="noop", payload=b"{}"))
    await stub.CreateSchedule(pb.CreateScheduleRequest(id="plain", spec=unset, paused=True))
    given = spec(template=pb.EnqueueRequest(queue="media", kind="noop", payload=b"{}", priority=2, max_attempts=1))
    await stub.CreateSchedule(pb.CreateScheduleRequest(id="given", spec=given, paused=True))
    plain = (await stub.TriggerSchedule(pb.TriggerScheduleRequest(id="plain", request_id="p-1"))).job
    assert (plain.priority, plain.max_attempts) == (8, 7)
    explicit = (await stub.TriggerSchedule(pb.TriggerScheduleRequest(id="given", request_id="g-1"))).job
    assert (explicit.priority, explicit.max_attempts) == (2, 1)
    # A later change of the queue's defaults reaches the next firing; the schedule still shows 0.
    await stub.UpdateQueue(pb.UpdateQueueRequest(name="media", default_priority=3))
    later = (await stub.TriggerSchedule(pb.TriggerScheduleRequest(id="plain", request_id="p-2"))).job
    assert (later.priority, later.max_attempts) == (3, 7)
    shown = (await stub.GetSchedule(pb.GetScheduleRequest(id="plain"))).spec.template
    assert (shown.priority, shown.max_attempts) == (0, 0)


async def test_firings_are_counted_by_what_they_did(app: App, stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    sleepy = spec(template=pb.EnqueueRequest(kind="sleep", payload=b'{"seconds": 60}'),
                  overlap_policy=pb.OVERLAP_POLICY_SKIP)
    await stub.CreateSchedule(pb.CreateScheduleRequest(id="counted", spec=sleepy, paused=True))
    first = await stub.TriggerSchedule(pb.TriggerScheduleRequest(id="counted", request_id="c-1"))
    await stub.TriggerSchedule(pb.TriggerScheduleRequest(id="counted", request_id="c-1"))  # the same firing
    assert (await stub.TriggerSchedule(pb.TriggerScheduleRequest(id="counted"))).skipped
    assert app.metrics is not None
    body, _ = await app.metrics.render()
    counted = {s.labels["outcome"]: s.value for family in text_string_to_metric_families(body.decode())
               for s in family.samples
               if s.name == "jobwire_schedule_firings_total" and s.labels["schedule"] == "counted"}
    assert counted == {"enqueued": 1.0, "duplicate": 1.0, "skipped": 1.0}
    await stub.CancelJob(pb.CancelJobRequest(id=first.job.id))


async def test_list_pages_by_id_with_a_checked_token(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    for name in ("b", "a", "c"):
        await stub.CreateSchedule(pb.CreateScheduleRequest(id=name, spec=spec()))
    page = await stub.ListSchedules(pb.ListSchedulesRequest(page_size=2))
    assert [s.id for s in page.schedules] == ["a", "b"] and page.next_page_token
    rest = await stub.ListSchedules(pb.ListSchedulesRequest(page_size=2, page_token=page.next_page_token))
    assert [s.id for s in rest.schedules] == ["c", "declared"] and rest.next_page_token == ""
    all_of_them = await stub.ListSchedules(pb.ListSchedulesRequest())
    assert [s.id for s in all_of_them.schedules] == ["a", "b", "c", "declared"]
    jobs_token = (await stub.ListJobs(pb.ListJobsRequest(page_size=1))).next_page_token
    for bad in ("garbage", page.next_page_token[:-2] + "AA", jobs_token):
        if not bad:
            continue
        error = await failure(stub.ListSchedules(pb.ListSchedulesRequest(page_token=bad)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in error_details(error)[1]
    error = await failure(stub.ListSchedules(pb.ListSchedulesRequest(page_size=-1)))
    assert error_details(error)[1] == {"page_size": "must not be negative, got -1"}


async def test_writes_are_refused_while_the_server_stops(app: App, stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    app.service.accepting = False
    error = await failure(stub.CreateSchedule(pb.CreateScheduleRequest(id="late", spec=spec())))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and error_details(error)[0] == "SHUTTING_DOWN"
    assert (await stub.GetSchedule(pb.GetScheduleRequest(id="declared"))).id == "declared"
    app.service.accepting = True
