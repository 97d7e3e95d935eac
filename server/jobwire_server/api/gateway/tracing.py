"""A server span for every HTTP API request, child of the caller's ``traceparent`` header: the
gateway's counterpart of the gRPC `TracingInterceptor`.

Named and attributed as the OpenTelemetry HTTP conventions say (``POST /v1/jobs``: the method and
the route template, never the raw path, so one span name per route). The span is current while
the RPC runs, so an Enqueue over HTTP stores its traceparent with the job, as over gRPC. A stream
(SSE) is one span for its whole length. Only the API under ``/v1/`` is traced: the console's files,
the OpenAPI document and ``/metrics`` would flood the traces, as health checks would over gRPC.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from jobwire_server.telemetry import extract_context

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNTRACED_PATHS: Final = frozenset({"/v1/openapi.json"})
_PROPAGATED: Final = ("traceparent", "tracestate")


def tracing_middleware(tracer: Tracer) -> Middleware:
    """An aiohttp middleware tracing the API requests with `tracer`; put it first (outermost), so
    the span sees the status of every answer, the JSON errors of the router included."""

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v1/") or request.path in UNTRACED_PATHS:
            return await handler(request)
        span = _start(tracer, request)
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # aiohttp's own answers (a 404 outside the routes)
                _end(span, exc.status)
                raise
            except BaseException as exc:
                span.record_exception(exc)
                _end(span, 500)
                raise
        _end(span, response.status)
        return response

    return traced


def _start(tracer: Tracer, request: web.Request) -> Span:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else ""
    carrier = [(name.lower(), value) for name, value in request.headers.items() if name.lower() in _PROPAGATED]
    attributes = {"http.request.method": request.method, "url.path": request.path, "url.scheme": request.scheme}
    if route:
        attributes["http.route"] = route
    agent = request.headers.get("User-Agent")
    if agent:
        attributes["user_agent.original"] = agent
    return tracer.start_span(f"{request.method} {route}" if route else request.method, kind=SpanKind.SERVER,
                             context=extract_context(carrier), attributes=attributes)


def _end(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:  # a 4xx is the caller's error: the status stays unset (the HTTP conventions)
        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
    span.end()
