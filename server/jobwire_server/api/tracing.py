"""A server span for every RPC, child of the caller's ``traceparent`` metadata.

Installed first (outermost) when tracing is on, so calls that auth refuses are traced too. Health
checks and reflection are not traced: probes would flood the traces.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc import aio
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from jobwire_server.api.observe import status_code, watched
from jobwire_server.telemetry import extract_context

if TYPE_CHECKING:
    Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]]
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]

Context = aio.ServicerContext[Any, Any]

UNTRACED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
#: Server-side codes that are the server's fault (OpenTelemetry RPC conventions); the rest are the
#: caller's and leave the span status unset.
ERROR_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                         grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})


class TracingInterceptor(aio.ServerInterceptor):
    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(UNTRACED_PREFIXES):
            return handler
        # Current while a unary method runs, so Enqueue stores this span's traceparent with the job.
        return watched(handler, _CallSpan(self._tracer, method, handler_call_details.invocation_metadata),
                       current=lambda span: trace.use_span(span, end_on_exit=False))


class _CallSpan:
    """Starts and ends the span of one call."""

    def __init__(self, tracer: Tracer, method: str, metadata: Any) -> None:
        self._tracer = tracer
        self._name = method.lstrip("/")
        self._metadata = metadata

    def start(self) -> Span:
        service, _, name = self._name.rpartition("/")
        return self._tracer.start_span(self._name, context=extract_context(self._metadata), kind=SpanKind.SERVER,
                                       attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name})

    @staticmethod
    def end(span: Span, context: Context, error: BaseException | None) -> None:
        code = status_code(context, error)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if error is not None and not isinstance(error, aio.AbortError | asyncio.CancelledError):
            span.record_exception(error)
        if code in ERROR_CODES:
            span.set_status(Status(StatusCode.ERROR, context.details() or code.name))
        span.end()
