"""Metrics counted from events, and the exposition a scrape gets."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from jobwire_server.domain.models import Event, Job, Phase, QueueStats, evolve
from jobwire_server.domain.states import EventType as E
from jobwire_server.domain.states import JobState, PhaseState
from jobwire_server.metrics import SCHEDULE_OUTCOMES, WEBHOOK_OUTCOMES, Metrics
from prometheus_client.parser import text_string_to_metric_families

JOB = Job(id="j1", queue="media", kind="resize", payload=b"", priority=5, state=JobState.RUNNING, max_attempts=3,
          phases=(Phase("fetch", PhaseState.SUCCEEDED, start_time=100.0, finish_time=101.5),
                  Phase("scale", PhaseState.RUNNING, start_time=101.5)),
          create_time=90.0, update_time=101.5, run_at=90.0)


def event(event_type: E, time: float, phase: str = "", job: Job | None = JOB) -> Event:
    return Event(job_id="j1", sequence=1, type=event_type, time=time, queue="media", kind="resize", phase=phase,
                 job=job)


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


async def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, parsed as Prometheus would: (name, sorted labels) → value."""
    body, content_type = await metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


async def test_events_are_counted() -> None:
    metrics = Metrics()
    metrics.observe((event(E.ENQUEUED, 90.0),))
    metrics.observe((event(E.STARTED, 100.0), event(E.PHASE_STARTED, 100.0, "fetch")))
    metrics.observe((event(E.PHASE_SUCCEEDED, 101.5, "fetch"), event(E.PHASE_STARTED, 101.5, "scale")))
    failed = evolve(JOB, phases=(JOB.phases[0], evolve(JOB.phases[1], state=PhaseState.FAILED, finish_time=104.0)))
    metrics.observe((event(E.PHASE_FAILED, 104.0, "scale", failed), event(E.FAILED, 104.0, job=failed)))
    metrics.observe((event(E.ENQUEUED, 91.0), event(E.CANCELLED, 95.0)))
    got = await samples(metrics)
    job = {"queue": "media", "kind": "resize"}
    assert got[key("jobwire_jobs_enqueued_total", **job)] == 2
    assert got[key("jobwire_jobs_finished_total", **job, outcome="failed")] == 1
    assert got[key("jobwire_jobs_finished_total", **job, outcome="cancelled")] == 1
    assert got[key("jobwire_job_duration_seconds_sum", **job, outcome="failed")] == 14.0  # created 90, failed 104
    assert got[key("jobwire_phase_duration_seconds_sum", **job, phase="fetch", outcome="succeeded")] == 1.5
    scale = {**job, "phase": "scale", "outcome": "failed"}
    assert got[key("jobwire_phase_duration_seconds_sum", **scale)] == 2.5
    assert got[key("jobwire_phase_duration_seconds_count", **scale)] == 1
    assert got[key("jobwire_phase_duration_seconds_bucket", **scale, le="2.5")] == 1
    assert got[key("jobwire_phase_duration_seconds_bucket", **scale, le="1.0")] == 0


async def test_webhook_attempts() -> None:
    metrics = Metrics()
    metrics.webhook_attempt("delivered", 0.2)
    metrics.webhook_attempt("delivered", 0.3)
    metrics.webhook_attempt("retry", 10.0)
    got = await samples(metrics)
    assert got[key("jobwire_webhook_attempts_total", outcome="delivered")] == 2
    assert got[key("jobwire_webhook_attempts_total", outcome="retry")] == 1
    assert got[key("jobwire_webhook_attempt_duration_seconds_sum", outcome="delivered")] == pytest.approx(0.5)
    assert got[key("jobwire_webhook_attempt_duration_seconds_count", outcome="retry")] == 1


def test_webhook_outcome_is_checked() -> None:
    assert WEBHOOK_OUTCOMES == ("delivered", "retry", "failed", "refused")
    with pytest.raises(ValueError, match="webhook outcome must be one of delivered, retry, failed, refused"):
        Metrics().webhook_attempt("ok", 0.1)


async def test_scrape_time_gauges() -> None:
    metrics = Metrics()
    reads = []

    async def queue_stats() -> list[QueueStats]:
        reads.append(1)
        return [QueueStats("media", MappingProxyType({JobState.QUEUED: 3, JobState.RUNNING: 2}), 42.5)]

    metrics.bind(watch_streams=lambda: 7, queue_stats=queue_stats)
    got = await samples(metrics)
    assert reads == [1], "one store read per scrape"
    assert got[key("jobwire_queue_jobs", queue="media", state="queued")] == 3
    assert got[key("jobwire_queue_jobs", queue="media", state="running")] == 2
    assert got[key("jobwire_queue_jobs", queue="media", state="failed")] == 0
    assert got[key("jobwire_queue_oldest_queued_age_seconds", queue="media")] == 42.5
    assert got[key("jobwire_watch_streams")] == 7


async def test_a_failing_stats_read_still_serves_the_counters(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()

    async def broken() -> list[QueueStats]:
        raise RuntimeError("database is closed")

    metrics.bind(watch_streams=lambda: 0, queue_stats=broken)
    metrics.observe((event(E.ENQUEUED, 1.0),))
    got = await samples(metrics)
    assert got[key("jobwire_jobs_enqueued_total", queue="media", kind="resize")] == 1
    assert "reading queue stats for metrics failed" in caplog.text


async def test_openmetrics_on_request() -> None:
    body, content_type = await Metrics().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_schedule_firings_are_counted_and_their_outcome_checked() -> None:
    metrics = Metrics()
    metrics.schedule_firing("nightly", "enqueued")
    metrics.schedule_firing("nightly", "missed")
    got = await samples(metrics)
    assert got[key("jobwire_schedule_firings_total", schedule="nightly", outcome="enqueued")] == 1
    assert got[key("jobwire_schedule_firings_total", schedule="nightly", outcome="missed")] == 1
    assert SCHEDULE_OUTCOMES == ("enqueued", "duplicate", "skipped", "missed")
    with pytest.raises(ValueError, match="schedule outcome must be one of enqueued, duplicate, skipped, missed"):
        metrics.schedule_firing("nightly", "fired")
