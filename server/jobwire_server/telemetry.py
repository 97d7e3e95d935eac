"""OpenTelemetry tracing: the SDK set up from the standard ``OTEL_*`` variables, and the spans
jobwire makes.

Span tree::

    jobwire.v1.JobService/Enqueue        SERVER, child of the caller's `traceparent`; its own
                                         traceparent is stored with the job (`Job.trace_parent`)
    POST /v1/jobs                        the same over the HTTP gateway (`api/gateway/tracing.py`),
                                         child of the request's `traceparent` header
    job <kind>                           one per attempt, a new trace linked to the Enqueue span
      phase <name>                       one per phase the attempt ran (the handler runs inside it)
    webhook <event type>                 one per delivery attempt, linked to the Enqueue span

With tracing off (``OTEL_TRACES_EXPORTER=none``) the App has no tracer, installs no interceptor,
and the executor skips span creation entirely: a job costs one ``is None`` check per phase.

Which settings are read, and the defaults jobwire picks, are in docs/operations.md ("Tracing").
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import threading
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from jobwire_server.domain.deliveries import strip_query as redact_url
from jobwire_server.domain.models import Job
from jobwire_server.domain.states import JobState

log = logging.getLogger("jobwire.telemetry")

TRACER_NAME = "jobwire_server"
DEFAULT_SERVICE_NAME = "jobwire"

ATTR_JOB_ID = "jobwire.job.id"
ATTR_QUEUE = "jobwire.queue"
ATTR_KIND = "jobwire.kind"
ATTR_ATTEMPT = "jobwire.attempt"
ATTR_PHASE = "jobwire.phase"
#: The job's state after the attempt (job spans) and how a phase ended (phase spans).
ATTR_JOB_STATE = "jobwire.job.state"
ATTR_PHASE_OUTCOME = "jobwire.phase.outcome"
ATTR_WEBHOOK_EVENT = "jobwire.webhook.event"
ATTR_ERROR_TYPE = "error.type"
ATTR_URL_FULL = "url.full"
ATTR_HTTP_STATUS = "http.response.status_code"
ATTR_SERVER_ADDRESS = "server.address"
ATTR_SERVER_PORT = "server.port"
#: OpenTelemetry messaging conventions, on job and phase spans beside the jobwire.* attributes.
ATTR_MESSAGING_SYSTEM = "messaging.system"
ATTR_MESSAGING_OPERATION_TYPE = "messaging.operation.type"
ATTR_MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_ATTRIBUTES = {ATTR_MESSAGING_SYSTEM: "jobwire", ATTR_MESSAGING_OPERATION_TYPE: "process",
                        ATTR_MESSAGING_OPERATION_NAME: "process"}
ATTR_MESSAGING_DESTINATION = "messaging.destination.name"
ATTR_MESSAGING_MESSAGE_ID = "messaging.message.id"
#: Seconds `Tracing.shutdown` waits for the spans still batched to be exported; a collector that does
#: not answer must not hold up a stopping server.
FLUSH_TIMEOUT = 3.0

#: ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` → module of the exporter (from the ``otlp`` extra).
OTLP_MODULES = {
    "grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
}
DEFAULT_OTLP_PROTOCOL = "grpc"

_PROPAGATOR = TraceContextTextMapPropagator()
#: A W3C ``traceparent``: version, trace id, parent id, flags; a future version may add fields.
_TRACEPARENT = re.compile(r"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_TRACEPARENT_MAX_LENGTH = 512
_FAILED_STATES = frozenset({JobState.RETRYING, JobState.FAILED})
T = TypeVar("T")


class TracingConfigError(Exception):
    """The ``OTEL_*`` settings ask for something this installation cannot do; one line."""


# ----------------------------------------------------------------------------- setup


def tracer_provider_from_env(environ: Mapping[str, str]) -> TracerProvider | None:
    """A TracerProvider exporting where ``OTEL_TRACES_EXPORTER`` says, or None when tracing is off.

    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn tracing off. Unset, the
    spec's default ``otlp`` is used when the OTLP exporter is installed and tracing is off
    otherwise (logged). Asking for ``otlp`` explicitly without the exporter raises
    TracingConfigError. The sampler (``OTEL_TRACES_SAMPLER``), the batch processor
    (``OTEL_BSP_*``), the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and the
    exporters' own ``OTEL_EXPORTER_OTLP_*`` settings are read by the SDK from the process
    environment.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    raw = environ.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        protocol = _otlp_protocol(environ)
        if not _installed(OTLP_MODULES[protocol]):
            log.info("tracing off: OTEL_TRACES_EXPORTER is unset and the OTLP exporter is not installed "
                     "(pip install 'jobwire[otlp]', or set OTEL_TRACES_EXPORTER=console)")
            return None
        names = ["otlp"]
    else:
        names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    exporters = [_exporter(name, environ) for name in names if name != "none"]
    if not exporters:
        return None
    provider = TracerProvider(resource=_resource())
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on: spans go to %s", ", ".join(_destination(name, environ) for name in names if name != "none"))
    return provider


def _destination(name: str, environ: Mapping[str, str]) -> str:
    """Where an exporter sends spans, for the start-up log line (the SDK's defaults when unset)."""
    if name == "console":
        return "standard output (console exporter)"
    protocol = _otlp_protocol(environ)
    default = "http://localhost:4317" if protocol == "grpc" else "http://localhost:4318/v1/traces"
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint and protocol != "grpc" and not environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return f"OTLP/{protocol} {redact_url(endpoint or default)}"


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (use otlp, console or none)")
    module_name = OTLP_MODULES[_otlp_protocol(environ)]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter, which is not installed: "
                                 f"pip install 'jobwire[otlp]' (no module {module_name})") from None
    exporter: SpanExporter = module.OTLPSpanExporter()
    return exporter


def _otlp_protocol(environ: Mapping[str, str]) -> str:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = environ.get(variable, "").strip().lower()
        if value:
            if value not in OTLP_MODULES:
                raise TracingConfigError(f"{variable}: unsupported protocol {value!r} "
                                         f"(use {' or '.join(OTLP_MODULES)})")
            return value
    return DEFAULT_OTLP_PROTOCOL


def _installed(module_name: str) -> bool:
    try:
        importlib.import_module(module_name)
    except ImportError:
        return False
    return True


def _resource() -> Resource:
    resource = Resource.create()
    # Resource.create falls back to "unknown_service:<executable>"; name ourselves instead, but
    # never over OTEL_SERVICE_NAME or a service.name in OTEL_RESOURCE_ATTRIBUTES.
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    if SERVICE_VERSION not in resource.attributes:
        resource = resource.merge(Resource({SERVICE_VERSION: jobwire_version()}))
    return resource


def jobwire_version() -> str:
    """The installed jobwire's version ("0+unknown" when run from a tree that was never installed)."""
    try:
        return metadata.version("jobwire")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Tracing:
    """The App's tracing: a tracer, or None when tracing is off. A provider the App was given is the
    caller's to shut down; one built from the environment is shut down (flushed) by `shutdown`."""

    def __init__(self, provider: TracerProvider | None, *, owned: bool) -> None:
        self.provider = provider
        self.tracer: Tracer | None = provider.get_tracer(TRACER_NAME) if provider is not None else None
        self._owned = owned

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Tracing:
        return cls(tracer_provider_from_env(environ), owned=True)

    def shutdown(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Export what is still batched and stop, waiting at most `timeout` seconds: an exporter whose
        collector does not answer is left behind (its thread is a daemon) and the rest is dropped."""
        if not self._owned or self.provider is None:
            return
        self._owned = False
        provider = self.provider
        done = threading.Event()

        def flush() -> None:
            try:
                provider.shutdown()
            finally:
                done.set()

        threading.Thread(target=flush, name="jobwire-trace-flush", daemon=True).start()
        if not done.wait(timeout):
            log.warning("spans not exported within %gs at shutdown (is the collector reachable?); "
                        "the rest are dropped", timeout)


# ----------------------------------------------------------------------------- traceparent


def format_traceparent(context: SpanContext) -> str:
    """W3C ``traceparent`` of a span context ('' when it is not valid)."""
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parse_traceparent(value: str) -> SpanContext | None:
    """The span context a W3C ``traceparent`` names, or None when it is empty or malformed.

    What the SDK's TraceContext propagator accepts (a test holds them to each other), read
    directly: each traced job's stored traceparent is parsed for its link, and the propagator
    builds a Context and a span around the result that would be thrown away."""
    if not value or len(value) > _TRACEPARENT_MAX_LENGTH:
        return None
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    context = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16)))
    return context if context.is_valid else None


def extract_context(metadata: Any) -> Context:
    """The trace context of a call's ``traceparent``/``tracestate`` metadata (empty when absent)."""
    carrier = {key: value for key, value in (metadata or ()) if key in ("traceparent", "tracestate")}
    return _PROPAGATOR.extract(carrier)


def enqueue_traceparent(metadata: Any) -> str:
    """The traceparent to store with an enqueued job: the current (Enqueue server) span's, or with
    tracing off the caller's own, so the job still names the trace it came from."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return format_traceparent(context)
    return format_traceparent(trace.get_current_span(extract_context(metadata)).get_span_context())


def _links(trace_parent: str) -> list[Link] | None:
    parent = parse_traceparent(trace_parent)
    return [Link(parent)] if parent is not None else None


# ----------------------------------------------------------------------------- job and phase spans
#
# These run for every job attempt and every phase, so they do no more than the SDK needs: every
# attribute known at the start is passed once to `start_span` (each `set_attribute` takes the
# span's lock and validates again), the job span is never made current (its phases are started
# with it as their parent explicitly), and only the handler's task is created with its phase span
# current. The SDK's own work per span (ids, sampler, attribute validation, the processors) is the
# rest: see docs/performance.md ("Tracing").

#: Job spans start a new trace whatever is current where the runner started.
_NEW_TRACE = Context()
#: `jobwire.job.state` of each state, lower case.
_STATE_NAMES = {state: state.name.lower() for state in JobState}


def start_job_span(tracer: Tracer, job: Job) -> Span:
    """The span of one attempt: a new trace (whatever context the runner was started from),
    linked to the Enqueue span. Never made current: `start_phase_span` takes it as the parent."""
    attributes: dict[str, str | int] = {
        ATTR_JOB_ID: job.id, ATTR_QUEUE: job.queue, ATTR_KIND: job.kind, ATTR_ATTEMPT: job.attempt,
        ATTR_MESSAGING_SYSTEM: "jobwire", ATTR_MESSAGING_OPERATION_TYPE: "process",
        ATTR_MESSAGING_OPERATION_NAME: "process", ATTR_MESSAGING_DESTINATION: job.queue,
        ATTR_MESSAGING_MESSAGE_ID: job.id}
    links = _links(job.trace_parent) if job.trace_parent else None
    return tracer.start_span(f"job {job.kind}", context=_NEW_TRACE, kind=SpanKind.CONSUMER,
                             attributes=attributes, links=links)


def end_job_span(span: Span, job: Job) -> None:
    """Record how the attempt left the job: ERROR when it failed (RETRYING or FAILED)."""
    state = _STATE_NAMES[job.state]
    if job.state not in _FAILED_STATES:
        span.set_attribute(ATTR_JOB_STATE, state)
        return
    error = job.error
    if error is None:
        span.set_attribute(ATTR_JOB_STATE, state)
        span.set_status(Status(StatusCode.ERROR))
        return
    span.set_attributes({ATTR_JOB_STATE: state, ATTR_ERROR_TYPE: error.type})
    span.set_status(Status(StatusCode.ERROR, error.message))


def start_phase_span(tracer: Tracer, job: Job, phase: str, job_span: Span) -> Span:
    """A phase's span, a child of its attempt's `job_span` (which need not be current)."""
    attributes: dict[str, str | int] = {ATTR_JOB_ID: job.id, ATTR_QUEUE: job.queue, ATTR_KIND: job.kind,
                                        ATTR_ATTEMPT: job.attempt, ATTR_PHASE: phase}
    return tracer.start_span(f"phase {phase}", context=trace.set_span_in_context(job_span), attributes=attributes)


def end_phase_span(span: Span, outcome: str, *, error_type: str = "", message: str = "") -> None:
    """`outcome` is succeeded, failed, cancelled or interrupted; a failure sets status ERROR."""
    if outcome != "failed":
        span.set_attribute(ATTR_PHASE_OUTCOME, outcome)
        return
    span.set_attributes({ATTR_PHASE_OUTCOME: outcome, ATTR_ERROR_TYPE: error_type})
    span.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}" if message else error_type))


class EndOnExit:
    """``with EndOnExit(span):`` ends `span` when the block is left; an exception (not a
    BaseException such as CancelledError) leaving it is recorded on the span, with status ERROR.
    What ``trace.use_span(span, end_on_exit=True)`` does, without making the span current."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        return self.span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, Exception):
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.span.end()


def task_in_span(span: Span | None, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task for `coroutine` created with `span` current: a task keeps the context it was created
    in, so the spans its code makes nest in `span` (a plain task when `span` is None)."""
    if span is None:
        return asyncio.ensure_future(coroutine)
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        return asyncio.ensure_future(coroutine)
    finally:
        otel_context.detach(token)


# ----------------------------------------------------------------------------- webhook spans


class WebhookSpan:
    """What a webhook sender reports on its attempt's span."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def set_status_code(self, code: int) -> None:
        """The HTTP response status; 4xx and 5xx mark the span ERROR (the delivery failed)."""
        self.span.set_attribute(ATTR_HTTP_STATUS, code)
        if code >= 400:
            self.span.set_attribute(ATTR_ERROR_TYPE, str(code))
            self.span.set_status(Status(StatusCode.ERROR, f"HTTP {code}"))

    def headers(self) -> dict[str, str]:
        """``traceparent`` of this attempt's span, for the POST, so the receiver continues the trace
        (none with tracing off)."""
        value = format_traceparent(self.span.get_span_context())
        return {"traceparent": value} if value else {}

    def fail(self, message: str, error_type: str = "") -> None:
        """Mark the attempt failed without an exception (refused, bad redirect…)."""
        self.span.set_attribute(ATTR_ERROR_TYPE, error_type or "failed")
        self.span.set_status(Status(StatusCode.ERROR, message))


def _server_attributes(url: str) -> dict[str, str | int]:
    """``server.address`` and ``server.port`` of a URL (the scheme's port when none is given)."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return {}
    found: dict[str, str | int] = {}
    if parts.hostname:
        found[ATTR_SERVER_ADDRESS] = parts.hostname
    if port:
        found[ATTR_SERVER_PORT] = port
    return found


@contextmanager
def webhook_span(tracer: Tracer | None, event_type: str, url: str, *, job_id: str, queue: str = "",
                 kind: str = "", attempt: int = 1, trace_parent: str = "") -> Iterator[WebhookSpan]:
    """The span of one webhook delivery attempt, named ``webhook <event_type>``.

    A CLIENT span, current inside the block, in a new trace linked to the job's Enqueue span
    (`trace_parent`, the job's stored traceparent). Attributes: ``url.full`` without query,
    fragment or credentials, ``http.request.method`` POST, ``jobwire.job.id``, ``jobwire.queue``,
    ``jobwire.kind``, ``jobwire.attempt`` (the delivery attempt, from 1), ``jobwire.webhook.event``,
    ``server.address`` and ``server.port``. `WebhookSpan.headers` gives the ``traceparent`` to send.
    The caller reports the response with `WebhookSpan.set_status_code` (sets
    ``http.response.status_code``; ≥ 400 is an error) or `WebhookSpan.fail`. An exception
    leaving the block is recorded on the span, which gets status ERROR, and is re-raised. With
    `tracer` None (tracing off) the handle does nothing.
    """
    if tracer is None:
        yield WebhookSpan(trace.INVALID_SPAN)
        return
    attributes: dict[str, str | int] = {
        ATTR_URL_FULL: redact_url(url), "http.request.method": "POST", ATTR_JOB_ID: job_id,
        ATTR_ATTEMPT: attempt, ATTR_WEBHOOK_EVENT: event_type}
    attributes.update(_server_attributes(url))
    if queue:
        attributes[ATTR_QUEUE] = queue
    if kind:
        attributes[ATTR_KIND] = kind
    with tracer.start_as_current_span(f"webhook {event_type}", context=Context(), kind=SpanKind.CLIENT,
                                      attributes=attributes, links=_links(trace_parent)) as span:
        yield WebhookSpan(span)

