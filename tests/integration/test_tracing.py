"""Spans over real loopback gRPC: an in-process app with an in-memory exporter.

The span tree of a three-phase job whose second phase fails once and is retried, with a webhook:
the Enqueue server span (child of the caller's traceparent), one `job <kind>` span per attempt
linked to it, one `phase <name>` span per phase run, with the handler running inside its phase
span, and a `webhook <event>` span for the delivery attempt, linked to the Enqueue span too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc import aio
from jobwire.sync import Client
from jobwire.v1 import jobwire_pb2, jobwire_pb2_grpc
from jobwire_server.app import App
from jobwire_server.domain.states import EventType
from jobwire_server.engine.hub import EventFilter
from jobwire_server.handlers import JobContext, Kind, RetryableError
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import REPO, StartServer, free_port
from tests.receiver import Receiver
from tests.testkit import Harness, finished

CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7
CALLER_TRACEPARENT = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"

flaky = Kind("t.flaky", max_attempts=3)


@flaky.phase("fetch")
async def flaky_fetch(ctx: JobContext) -> bytes:
    return b"fetched"


@flaky.phase("convert")
async def flaky_convert(ctx: JobContext) -> bytes:
    if ctx.attempt == 1:
        raise RetryableError("converter busy", retry_after=0)
    return b"converted"


@flaky.phase("store")
async def flaky_store(ctx: JobContext) -> str:
    # The span current in the handler, so the test can check that it is the phase's span.
    return json.dumps({"span_id": trace.get_current_span().get_span_context().span_id})


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
async def traced(tmp_path: Path, exporter: InMemorySpanExporter) -> AsyncIterator[App]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    harness = Harness(tmp_path)
    yield await harness.start(flaky, tracer_provider=provider, webhook_allow="127.0.0.1/32")
    await harness.stop_all()
    provider.shutdown()


@pytest.fixture
async def stub(traced: App) -> AsyncIterator[jobwire_pb2_grpc.JobServiceStub]:
    async with aio.insecure_channel(f"127.0.0.1:{traced.port}") as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    found = [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return sorted(found, key=lambda s: s.start_time or 0)


async def test_span_tree_of_a_job_with_a_retried_phase_and_a_webhook(
        traced: App, stub: jobwire_pb2_grpc.JobServiceStub, exporter: InMemorySpanExporter) -> None:
    job_id, hook_url, hook_headers = await run_with_webhook(traced, stub)
    await traced.executor.wait_idle()  # the last attempt's span ends after its final commit
    spans = exporter.get_finished_spans()

    # The Enqueue server span continues the caller's trace, and its traceparent is stored.
    (enqueue,) = named(spans, "jobwire.v1.JobService/Enqueue")
    assert enqueue.kind is SpanKind.SERVER and enqueue.context is not None and enqueue.parent is not None
    assert (enqueue.context.trace_id, enqueue.parent.span_id) == (CALLER_TRACE, CALLER_SPAN)
    assert enqueue.attributes is not None
    assert enqueue.attributes["rpc.system"] == "grpc" and enqueue.attributes["rpc.method"] == "Enqueue"
    assert enqueue.attributes["rpc.grpc.status_code"] == 0 and enqueue.attributes["jobwire.job.id"] == job_id
    stored = await traced.service.get(job_id)
    assert stored.trace_parent == f"00-{CALLER_TRACE:032x}-{enqueue.context.span_id:016x}-01"
    got = await stub.GetJob(jobwire_pb2.GetJobRequest(id=job_id))
    assert got.trace_parent == stored.trace_parent, "GetJob returns the stored traceparent"

    # One span per attempt: a new trace each, linked to the Enqueue span.
    attempts = sorted(named(spans, "job t.flaky"), key=lambda s: (s.attributes or {})["jobwire.attempt"])
    assert len(attempts) == 2
    for number, span in enumerate(attempts, start=1):
        assert span.parent is None and span.kind is SpanKind.CONSUMER and span.context is not None
        assert span.context.trace_id != CALLER_TRACE
        assert [link.context.span_id for link in span.links] == [enqueue.context.span_id]
        attributes = dict(span.attributes or {})
        assert {key: attributes[key] for key in ("jobwire.job.id", "jobwire.queue", "jobwire.kind",
                                                 "jobwire.attempt")} == {
            "jobwire.job.id": job_id, "jobwire.queue": "default", "jobwire.kind": "t.flaky", "jobwire.attempt": number}
        assert {key: attributes[key] for key in attributes if key.startswith("messaging.")} == {
            "messaging.system": "jobwire", "messaging.operation.type": "process",
            "messaging.operation.name": "process", "messaging.destination.name": "default",
            "messaging.message.id": job_id}
    first, second = attempts
    assert first.status.status_code is StatusCode.ERROR and first.status.description == "converter busy"
    assert (first.attributes or {})["jobwire.job.state"] == "retrying"
    assert (first.attributes or {})["error.type"] == "RetryableError"
    assert second.status.status_code is StatusCode.UNSET
    assert (second.attributes or {})["jobwire.job.state"] == "succeeded"

    # Phases: fetch and the failing convert in the first attempt; convert again and store in the second.
    assert [s.name for s in children(spans, first)] == ["phase fetch", "phase convert"]
    assert [s.name for s in children(spans, second)] == ["phase convert", "phase store"]
    fetch, failed = children(spans, first)
    retried, store = children(spans, second)
    for phase, number in ((fetch, 1), (failed, 1), (retried, 2), (store, 2)):
        attributes = phase.attributes or {}
        assert attributes["jobwire.job.id"] == job_id and attributes["jobwire.attempt"] == number
        assert attributes["jobwire.phase"] == phase.name.removeprefix("phase ")
        parent = (first if number == 1 else second).context
        assert phase.context is not None and parent is not None and phase.context.trace_id == parent.trace_id
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "RetryableError: converter busy"
    assert (failed.attributes or {})["jobwire.phase.outcome"] == "failed"
    (exception,) = [e for e in failed.events if e.name == "exception"]
    assert (exception.attributes or {})["exception.message"] == "converter busy"
    for ok in (fetch, retried, store):
        assert ok.status.status_code is StatusCode.UNSET
        assert (ok.attributes or {})["jobwire.phase.outcome"] == "succeeded"
    # The handler ran inside its phase span.
    assert store.context is not None
    assert json.loads(stored.result) == {"span_id": store.context.span_id}

    assert_webhook_span(spans, enqueue, job_id, hook_url, hook_headers)


async def run_with_webhook(app: App, stub: jobwire_pb2_grpc.JobServiceStub) -> tuple[str, str, dict[str, str]]:
    """Run a t.flaky job with a webhook to a real receiver, called with a traceparent; the job's id,
    the webhook URL without its query and the headers of the POST, once the delivery is recorded."""
    delivered = app.hub.subscribe_all(EventFilter(types=frozenset({EventType.WEBHOOK_DELIVERED})))
    async with Receiver() as receiver:
        webhook = jobwire_pb2.WebhookConfig(url=receiver.url("/hook?token=s3cret"))
        reply = await stub.Enqueue(jobwire_pb2.EnqueueRequest(kind="t.flaky", webhook=webhook),
                                   metadata=(("traceparent", CALLER_TRACEPARENT),))
        assert (await finished(stub, reply.job.id)).job.state == jobwire_pb2.JOB_STATE_SUCCEEDED
        async with asyncio.timeout(20):
            assert (await delivered.next()) is not None  # the webhook span ends before this is written
    delivered.close()
    (request,) = receiver.requests
    return reply.job.id, receiver.url("/hook"), {k.lower(): v for k, v in request.headers.items()}


def assert_webhook_span(spans: tuple[ReadableSpan, ...], enqueue: ReadableSpan, job_id: str, url: str,
                        headers: dict[str, str]) -> None:
    """The webhook attempt: its own span, linked to the Enqueue span, with the URL's query left out;
    the POST carried the span's traceparent, so the receiver continues its trace."""
    (hook,) = named(spans, "webhook SUCCEEDED")
    assert hook.kind is SpanKind.CLIENT and hook.parent is None and enqueue.context is not None
    assert [link.context.span_id for link in hook.links] == [enqueue.context.span_id]
    attributes = dict(hook.attributes or {})
    assert attributes["url.full"] == url
    assert attributes["http.response.status_code"] == 200
    assert (attributes["jobwire.job.id"], attributes["jobwire.attempt"]) == (job_id, 1)
    assert (attributes["jobwire.queue"], attributes["jobwire.kind"]) == ("default", "t.flaky")
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", port)
    assert hook.status.status_code is StatusCode.UNSET
    assert hook.context is not None
    context = hook.context
    assert headers["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


async def test_a_call_without_traceparent_starts_a_trace(traced: App, stub: jobwire_pb2_grpc.JobServiceStub,
                                                         exporter: InMemorySpanExporter) -> None:
    reply = await stub.Enqueue(jobwire_pb2.EnqueueRequest(kind="t.flaky"))
    await finished(stub, reply.job.id)
    (enqueue,) = named(exporter.get_finished_spans(), "jobwire.v1.JobService/Enqueue")
    assert enqueue.parent is None and enqueue.context is not None
    stored = await traced.service.get(reply.job.id)
    context = enqueue.context
    assert stored.trace_parent == f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


async def test_failed_calls_set_the_grpc_code(traced: App, stub: jobwire_pb2_grpc.JobServiceStub,
                                              exporter: InMemorySpanExporter) -> None:
    missing = "01900000-0000-7000-8000-000000000000"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetJob(jobwire_pb2.GetJobRequest(id=missing))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    (span,) = named(exporter.get_finished_spans(), "jobwire.v1.JobService/GetJob")
    # NOT_FOUND is the caller's error, not the server's: the status stays unset.
    assert (span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert span.status.status_code is StatusCode.UNSET


async def test_health_checks_are_not_traced(traced: App, exporter: InMemorySpanExporter) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    async with aio.insecure_channel(f"127.0.0.1:{traced.port}") as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert not [s for s in exporter.get_finished_spans() if "Health" in s.name]


async def test_with_tracing_off_the_job_keeps_the_callers_traceparent(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    try:
        app = await harness.start(flaky)  # no provider, OTEL_TRACES_EXPORTER=none (conftest)
        assert app.tracing.tracer is None
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = jobwire_pb2_grpc.JobServiceStub(channel)
            reply = await stub.Enqueue(jobwire_pb2.EnqueueRequest(kind="t.flaky"),
                                       metadata=(("traceparent", CALLER_TRACEPARENT),))
            plain = await stub.Enqueue(jobwire_pb2.EnqueueRequest(kind="t.flaky"))
            for job_id in (reply.job.id, plain.job.id):
                await finished(stub, job_id)
        assert (await app.service.get(reply.job.id)).trace_parent == CALLER_TRACEPARENT
        assert (await app.service.get(plain.job.id)).trace_parent == ""
    finally:
        await harness.stop_all()


async def test_http_requests_get_server_spans_named_by_route(tmp_path: Path,
                                                              exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    harness = Harness(tmp_path)
    try:
        app = await harness.start(flaky, tracer_provider=provider, http_listen="127.0.0.1:0")
        assert app.gateway is not None
        base = f"http://127.0.0.1:{app.gateway.port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/jobs", json={"kind": "t.flaky"},
                                 headers={"traceparent": CALLER_TRACEPARENT}) as response:
                assert response.status == 200
                job_id = (await response.json())["job"]["id"]
            missing = "01900000-0000-7000-8000-000000000000"
            async with http.get(f"{base}/v1/jobs/{missing}") as response:
                assert response.status == 404
            async with http.get(f"{base}/v1/openapi.json") as response:
                assert response.status == 200
        spans = exporter.get_finished_spans()
        (enqueue,) = named(spans, "POST /v1/jobs")
        assert enqueue.kind is SpanKind.SERVER and enqueue.parent is not None and enqueue.context is not None
        assert f"{enqueue.parent.trace_id:032x}" == CALLER_TRACEPARENT.split("-")[1]
        assert enqueue.parent.span_id == CALLER_SPAN
        assert dict(enqueue.attributes or {}) == {
            "http.request.method": "POST", "url.path": "/v1/jobs", "url.scheme": "http", "http.route": "/v1/jobs",
            "user_agent.original": aiohttp.http.SERVER_SOFTWARE, "http.response.status_code": 200,
            # What the servicer adds to the current span, as over gRPC.
            "jobwire.job.id": job_id, "jobwire.queue": "default", "jobwire.kind": "t.flaky"}
        # The span is current while the RPC runs: the job names it, as an Enqueue over gRPC does.
        context = enqueue.context
        stored = await app.service.get(job_id)
        assert stored.trace_parent == (f"00-{context.trace_id:032x}-{context.span_id:016x}-"
                                       f"{int(context.trace_flags):02x}")
        (lookup,) = named(spans, "GET /v1/jobs/{id}")
        assert (lookup.attributes or {})["http.response.status_code"] == 404
        assert lookup.status.status_code is StatusCode.UNSET  # the caller's error, not the server's
        assert not [s for s in spans if "openapi" in s.name]
    finally:
        await harness.stop_all()
        provider.shutdown()


def test_bad_otel_settings_stop_the_start_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobwire_server", "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--db", str(tmp_path / "t.db")],
        cwd=REPO, capture_output=True, text=True, timeout=20, check=False,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "zipkin"})
    assert result.returncode == 1
    assert result.stderr.strip() == ("jobwire: error: OTEL_TRACES_EXPORTER: unknown exporter 'zipkin' "
                                     "(use otlp, console or none)")


UNANSWERED_EXPORTER = '''
import threading

from opentelemetry.sdk.trace.export import SpanExporter


class OTLPSpanExporter(SpanExporter):
    """Stands in for the OTLP exporter of a collector that never answers: every export hangs."""

    def export(self, spans):
        threading.Event().wait()
'''


def test_shutdown_is_not_held_by_a_collector_that_does_not_answer(start_server: StartServer, tmp_path: Path) -> None:
    module = tmp_path / "fake" / "opentelemetry" / "exporter" / "otlp" / "proto" / "grpc" / "trace_exporter.py"
    module.parent.mkdir(parents=True)
    module.write_text(UNANSWERED_EXPORTER)
    # The fake module is found where the `otlp` extra installs the real one; spans are exported at once.
    env = {"PYTHONPATH": str(tmp_path / "fake"), "OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_SCHEDULE_DELAY": "10"}
    server = start_server(env=env, shutdown_grace=2)
    with Client(server.target) as client:
        for _ in range(3):
            client.enqueue("noop", b"{}").result(timeout=20)
    started = time.monotonic()
    assert server.stop(timeout=20) == 0
    took = time.monotonic() - started
    log = server.log()
    assert "tracing on: spans go to OTLP/grpc http://localhost:4317" in log
    assert "spans not exported within 3s at shutdown (is the collector reachable?)" in log
    assert took < 2 + 3 + 3, f"shutdown took {took:.1f}s"
