"""Tracing set-up from OTEL_* settings, traceparent helpers, and the webhook span helper."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from importlib import metadata

import pytest
from jobwire_server.domain.models import Job, JobError, Phase
from jobwire_server.domain.states import JobState
from jobwire_server.telemetry import (
    OTLP_MODULES,
    EndOnExit,
    Tracing,
    TracingConfigError,
    end_job_span,
    end_phase_span,
    format_traceparent,
    jobwire_version,
    parse_traceparent,
    redact_url,
    start_job_span,
    start_phase_span,
    task_in_span,
    tracer_provider_from_env,
    webhook_span,
)
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _otlp_installed() -> bool:
    try:
        import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


OTLP_INSTALLED = _otlp_installed()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test")
    provider.shutdown()


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


# ----------------------------------------------------------------------------- set-up


@pytest.mark.parametrize("environ", [{"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": " None "},
                                     {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"},
                                     {"OTEL_TRACES_EXPORTER": ""}])
def test_tracing_off(environ: dict[str, str]) -> None:
    assert tracer_provider_from_env(environ) is None


def test_console_exporter(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="jobwire.telemetry"):
        provider = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert provider is not None
    assert caplog.messages == ["tracing on: spans go to standard output (console exporter)"]
    try:
        processors = provider._active_span_processor._span_processors
        assert [type(p.span_exporter) for p in processors] == [ConsoleSpanExporter]  # type: ignore[attr-defined]
        assert provider.resource.attributes["service.name"] == "jobwire"
        assert provider.resource.attributes["service.version"] == metadata.version("jobwire") == jobwire_version()
    finally:
        provider.shutdown()


def test_service_name_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "jobs-eu")
    provider = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "jobs-eu"
    finally:
        provider.shutdown()


def test_unknown_exporter_is_a_one_line_error() -> None:
    with pytest.raises(TracingConfigError, match=r"unknown exporter 'zipkin' \(use otlp, console or none\)"):
        tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_unsupported_otlp_protocol_is_an_error() -> None:
    with pytest.raises(TracingConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol 'http/json'"):
        tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


@pytest.mark.skipif(OTLP_INSTALLED, reason="the OTLP exporter is installed here")
def test_otlp_without_the_extra_is_a_clear_error() -> None:
    with pytest.raises(TracingConfigError) as caught:
        tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "otlp"})
    assert "pip install 'jobwire[otlp]'" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.skipif(OTLP_INSTALLED, reason="the OTLP exporter is installed here")
def test_unset_exporter_without_the_extra_means_off() -> None:
    assert tracer_provider_from_env({}) is None


def test_otlp_protocols_name_real_modules() -> None:
    assert set(OTLP_MODULES) == {"grpc", "http/protobuf"}
    assert all(name.startswith("opentelemetry.exporter.otlp.proto.") for name in OTLP_MODULES.values())


# ----------------------------------------------------------------------------- traceparent


def test_traceparent_round_trip() -> None:
    context = parse_traceparent(TRACEPARENT)
    assert context is not None
    assert (context.trace_id, context.span_id) == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)
    assert format_traceparent(context) == TRACEPARENT


@pytest.mark.parametrize("value", ["", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"])
def test_bad_traceparent_is_none(value: str) -> None:
    assert parse_traceparent(value) is None


def test_invalid_context_formats_empty() -> None:
    assert format_traceparent(trace.INVALID_SPAN_CONTEXT) == ""


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.example.com/jobs?token=secret#frag", "https://hooks.example.com/jobs"),
    ("https://user:pw@hooks.example.com:8443/a/b?x=1", "https://hooks.example.com:8443/a/b"),
    ("http://[::1]:9000/hook", "http://[::1]:9000/hook"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# ----------------------------------------------------------------------------- webhook spans


def test_webhook_span_delivered(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    with webhook_span(tracer, "succeeded", "https://hooks.example.com/jobs?sig=abc", job_id="j1", queue="media",
                      kind="resize", attempt=2, trace_parent=TRACEPARENT) as attempt:
        attempt.set_status_code(204)
    span = only(exporter)
    assert span.name == "webhook succeeded" and span.kind is SpanKind.CLIENT and span.parent is None
    assert dict(span.attributes or {}) == {
        "url.full": "https://hooks.example.com/jobs", "http.request.method": "POST", "jobwire.job.id": "j1",
        "jobwire.queue": "media", "jobwire.kind": "resize", "jobwire.attempt": 2,
        "jobwire.webhook.event": "succeeded", "http.response.status_code": 204,
        "server.address": "hooks.example.com", "server.port": 443}
    assert span.status.status_code is StatusCode.UNSET
    assert [link.context.span_id for link in span.links] == [0x00F067AA0BA902B7]


def test_webhook_span_error_status(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    with webhook_span(tracer, "failed", "https://hooks.example.com/", job_id="j1") as attempt:
        attempt.set_status_code(503)
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "HTTP 503"
    assert (span.attributes or {})["error.type"] == "503"
    assert span.links == ()  # no stored traceparent: no link


def test_webhook_span_records_an_exception(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ConnectionRefusedError), webhook_span(tracer, "succeeded", "http://127.0.0.1:9/", job_id="j1"):
        raise ConnectionRefusedError("connection refused")
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]
    assert "http.response.status_code" not in (span.attributes or {})


def test_webhook_span_fail_without_exception(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    with webhook_span(tracer, "succeeded", "http://10.0.0.1/", job_id="j1") as attempt:
        attempt.fail("private address refused", "refused")
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "private address refused"
    assert (span.attributes or {})["error.type"] == "refused"


def test_webhook_span_is_current_inside(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    with webhook_span(tracer, "succeeded", "http://h/", job_id="j1") as attempt:
        assert trace.get_current_span() is attempt.span
    assert only(exporter).name == "webhook succeeded"


def test_webhook_span_with_tracing_off_does_nothing() -> None:
    with webhook_span(None, "succeeded", "http://h/", job_id="j1") as attempt:
        attempt.set_status_code(500)
        attempt.fail("nothing records this")
    assert not attempt.span.is_recording()


# ----------------------------------------------------------------------------- shutdown


class _Unanswered(SpanExporter):
    """An exporter whose collector never answers: export blocks until the test lets it go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(60)
        return SpanExportResult.FAILURE


def test_shutdown_does_not_wait_for_a_collector_that_does_not_answer(caplog: pytest.LogCaptureFixture) -> None:
    exporter = _Unanswered()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    for n in range(3):
        provider.get_tracer("test").start_span(f"job {n}").end()
    tracing = Tracing(provider, owned=True)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="jobwire.telemetry"):
            tracing.shutdown(timeout=0.5)
        took = time.monotonic() - started
        assert exporter.entered.is_set()  # the flush did try to export
        assert 0.5 <= took < 3.0
        assert caplog.messages == ["spans not exported within 0.5s at shutdown (is the collector reachable?); "
                                   "the rest are dropped"]
        tracing.shutdown(timeout=0.5)  # a second call does nothing
        assert time.monotonic() - started - took < 0.5
    finally:
        exporter.release.set()


def test_webhook_span_headers_carry_its_traceparent(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    with webhook_span(tracer, "succeeded", "http://127.0.0.1:8080/hook", job_id="j1") as attempt:
        headers = attempt.headers()
    span = only(exporter)
    assert span.context is not None
    assert headers == {"traceparent": format_traceparent(span.context)}
    assert (span.attributes or {})["server.address"] == "127.0.0.1"
    assert (span.attributes or {})["server.port"] == 8080
    with webhook_span(None, "succeeded", "http://h/", job_id="j1") as untraced:
        assert untraced.headers() == {}


# ----------------------------------------------------------------------------- job and phase spans


@pytest.mark.parametrize("value", [
    TRACEPARENT, TRACEPARENT[:-2] + "00", " \t" + TRACEPARENT + " ", TRACEPARENT + "\n",
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next", TRACEPARENT + "-extra",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", TRACEPARENT.upper(), TRACEPARENT[1:],
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", TRACEPARENT + " " * 600, "", "-", "garbage"])
def test_traceparent_is_read_as_the_sdk_propagator_reads_it(value: str) -> None:
    extracted = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": value}))
    expected = extracted.get_span_context() if extracted.get_span_context().is_valid else None
    assert parse_traceparent(value) == expected


def _job(state: JobState = JobState.RUNNING, *, trace_parent: str = "", error: JobError | None = None) -> Job:
    return Job("j1", "media", "resize", b"", 5, state, 3, (Phase("fetch"),), 0.0, 0.0, 0.0, attempt=2,
               trace_parent=trace_parent, error=error)


def test_job_and_phase_spans(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    with trace.use_span(tracer.start_span("elsewhere"), end_on_exit=True):  # not the job's parent
        job_span = start_job_span(tracer, _job(trace_parent=TRACEPARENT))
    assert trace.get_current_span() is trace.INVALID_SPAN, "the job span is never made current"
    phase_span = start_phase_span(tracer, _job(), "fetch", job_span)
    end_phase_span(phase_span, "succeeded")
    phase_span.end()
    end_job_span(job_span, _job(JobState.SUCCEEDED))
    job_span.end()
    _elsewhere, phase, job = exporter.get_finished_spans()
    assert job.name == "job resize" and job.kind is SpanKind.CONSUMER and job.parent is None
    assert job.context is not None and _elsewhere.context is not None
    assert job.context.trace_id != _elsewhere.context.trace_id
    assert [link.context.span_id for link in job.links] == [0x00F067AA0BA902B7]
    assert dict(job.attributes or {}) == {
        "jobwire.job.id": "j1", "jobwire.queue": "media", "jobwire.kind": "resize", "jobwire.attempt": 2,
        "messaging.system": "jobwire", "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.destination.name": "media", "messaging.message.id": "j1", "jobwire.job.state": "succeeded"}
    assert job.status.status_code is StatusCode.UNSET
    assert phase.name == "phase fetch" and phase.parent is not None and phase.parent.span_id == job.context.span_id
    assert phase.context is not None and phase.context.trace_id == job.context.trace_id
    assert dict(phase.attributes or {}) == {
        "jobwire.job.id": "j1", "jobwire.queue": "media", "jobwire.kind": "resize", "jobwire.attempt": 2,
        "jobwire.phase": "fetch", "jobwire.phase.outcome": "succeeded"}
    assert phase.status.status_code is StatusCode.UNSET


def test_failed_attempt_and_phase(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    job_span = start_job_span(tracer, _job())
    phase_span = start_phase_span(tracer, _job(), "fetch", job_span)
    end_phase_span(phase_span, "failed", error_type="RetryableError", message="busy")
    phase_span.end()
    error = JobError("busy", "RetryableError", True, "fetch", 2, False, 0.0)
    end_job_span(job_span, _job(JobState.RETRYING, error=error))
    job_span.end()
    phase, job = exporter.get_finished_spans()
    assert (phase.status.status_code, phase.status.description) == (StatusCode.ERROR, "RetryableError: busy")
    assert {k: (phase.attributes or {})[k] for k in ("jobwire.phase.outcome", "error.type")} == {
        "jobwire.phase.outcome": "failed", "error.type": "RetryableError"}
    assert (job.status.status_code, job.status.description) == (StatusCode.ERROR, "busy")
    assert {k: (job.attributes or {})[k] for k in ("jobwire.job.state", "error.type")} == {
        "jobwire.job.state": "retrying", "error.type": "RetryableError"}
    assert job.links == ()  # no stored traceparent: no link


def test_end_on_exit_records_an_error_and_ends(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="bad row"), EndOnExit(tracer.start_span("crashed")):
        raise ValueError("bad row")
    with pytest.raises(asyncio.CancelledError), EndOnExit(tracer.start_span("cancelled")):
        raise asyncio.CancelledError
    with EndOnExit(tracer.start_span("fine")):
        pass
    crashed, cancelled, fine = exporter.get_finished_spans()
    assert (crashed.status.status_code, crashed.status.description) == (StatusCode.ERROR, "ValueError: bad row")
    assert [e.name for e in crashed.events] == ["exception"]
    # Not an error: a BaseException such as a cancellation ends the span and records nothing.
    assert cancelled.status.status_code is StatusCode.UNSET and cancelled.events == ()
    assert fine.status.status_code is StatusCode.UNSET and fine.end_time is not None


async def test_a_task_in_a_span_sees_it_current(tracer: Tracer) -> None:
    span = tracer.start_span("phase fetch")

    async def current() -> Span:
        return trace.get_current_span()

    assert await task_in_span(span, current()) is span
    assert trace.get_current_span() is trace.INVALID_SPAN, "the caller's context is left as it was"
    assert await task_in_span(None, current()) is trace.INVALID_SPAN
    span.end()
