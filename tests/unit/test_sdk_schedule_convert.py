"""SDK schedule models <-> messages (tests/integration/test_sdk_schedules.py has the server's side)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobwire import _convert
from jobwire.models import CatchupPolicy, EventType, OverlapPolicy, ScheduleSpec
from jobwire.v1 import jobwire_pb2 as pb


def test_a_spec_becomes_its_message_and_back() -> None:
    spec = ScheduleSpec(kind="report", cron="0 3 * * *", time_zone="Europe/Paris", payload={"a": 1}, queue="q",
                        priority=7, max_attempts=2, timeout=90, dedupe_key="d", labels={"t": "x"},
                        webhook_url="https://h.example/x", webhook_events=(EventType.FAILED,), jitter=30.5,
                        overlap_policy=OverlapPolicy.CANCEL_PREVIOUS, catchup_policy=CatchupPolicy.RUN_ONCE,
                        description="d")
    message = _convert.schedule_spec_to_proto(spec)
    assert message.WhichOneof("timing") == "cron" and message.template.request_id == ""
    assert not message.template.HasField("run_at") and not message.template.HasField("delay")
    assert message.overlap_policy == pb.OVERLAP_POLICY_CANCEL_PREVIOUS
    assert message.catchup_policy == pb.CATCHUP_POLICY_RUN_ONCE
    back = _convert.schedule_spec_from_proto(message)
    assert back == ScheduleSpec(kind="report", cron="0 3 * * *", time_zone="Europe/Paris", payload=b'{"a":1}',
                                queue="q", priority=7, max_attempts=2, timeout=timedelta(seconds=90), dedupe_key="d",
                                labels={"t": "x"}, webhook_url="https://h.example/x",
                                webhook_events=(EventType.FAILED,), jitter=timedelta(seconds=30.5),
                                overlap_policy=OverlapPolicy.CANCEL_PREVIOUS, catchup_policy=CatchupPolicy.RUN_ONCE,
                                description="d")


def test_policies_may_be_given_by_name_and_an_interval_by_seconds() -> None:
    spec = ScheduleSpec(kind="k", interval=timedelta(hours=1), overlap_policy="cancel-previous",  # type: ignore[arg-type]
                        catchup_policy="skip")  # type: ignore[arg-type]
    message = _convert.schedule_spec_to_proto(spec)
    assert message.WhichOneof("timing") == "interval" and message.interval.seconds == 3600
    assert (message.overlap_policy, message.catchup_policy) == (pb.OVERLAP_POLICY_CANCEL_PREVIOUS,
                                                                pb.CATCHUP_POLICY_SKIP)
    assert _convert.schedule_spec_from_proto(message).interval == timedelta(hours=1)


def test_a_schedule_message_becomes_the_model() -> None:
    message = pb.Schedule(id="s", paused=True, from_config=True, last_job_id="j",
                          spec=_convert.schedule_spec_to_proto(ScheduleSpec(kind="k", cron="@daily")))
    message.next_fire_times.add(seconds=1_800_000_000)
    message.last_fire_time.FromSeconds(1_799_999_000)
    schedule = _convert.schedule_from_proto(message)
    assert (schedule.id, schedule.paused, schedule.from_config, schedule.last_job_id) == ("s", True, True, "j")
    assert schedule.next_fire_times == (datetime.fromtimestamp(1_800_000_000, UTC),)
    assert schedule.last_fire_time == datetime.fromtimestamp(1_799_999_000, UTC) and schedule.create_time is None
    assert schedule.spec.overlap_policy is OverlapPolicy.UNSPECIFIED  # as sent; the server sends the effective one


def test_a_trigger_request_always_carries_a_request_id() -> None:
    assert _convert.trigger_schedule_request("s", "").request_id
    assert _convert.trigger_schedule_request("s", "mine").request_id == "mine"
    assert _convert.trigger_from_proto(pb.TriggerScheduleResponse(skipped=True)).job is None
