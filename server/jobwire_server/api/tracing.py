"""A server span for every RPC, child of the caller's ``traceparent`` metadata.

Installed first (outermost) when tracing is on, so calls that auth refuses are traced too. Health
checks and reflection are not traced: probes would flood the traces.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc import aio
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

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
        return _traced(handler, _CallSpan(self._tracer, method, handler_call_details.invocation_metadata))


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
        code = _code(context, error)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if error is not None and not isinstance(error, aio.AbortError | asyncio.CancelledError):
            span.record_exception(error)
        if code in ERROR_CODES:
            span.set_status(Status(StatusCode.ERROR, context.details() or code.name))
        span.end()


def _code(context: Context, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


def _traced(handler: Handler, call: _CallSpan) -> Handler:
    """The same handler with its behaviour run inside the call's span."""
    if handler.response_streaming:
        behavior = handler.unary_stream if not handler.request_streaming else handler.stream_stream
        wrapped_stream = _stream_response(behavior, call)
        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(wrapped_stream, handler.request_deserializer,
                                                         handler.response_serializer)
        return grpc.unary_stream_rpc_method_handler(wrapped_stream, handler.request_deserializer,
                                                    handler.response_serializer)
    behavior = handler.unary_unary if not handler.request_streaming else handler.stream_unary
    wrapped = _unary_response(behavior, call)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrapped, handler.request_deserializer,
                                                    handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(wrapped, handler.request_deserializer, handler.response_serializer)


def _unary_response(behavior: Any, call: _CallSpan) -> Callable[[Any, Context], Awaitable[Any]]:
    async def run(request: Any, context: Context) -> Any:
        span = call.start()
        # Current while the method runs, so Enqueue stores this span's traceparent with the job.
        with trace.use_span(span, end_on_exit=False):
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                call.end(span, context, exc)
                raise
        call.end(span, context, None)
        return response

    return run


def _stream_response(behavior: Any, call: _CallSpan) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def run(request: Any, context: Context) -> AsyncIterator[Any]:
        # Not made current: a context attached in an async generator may be detached from another
        # context when the stream is closed, and no streaming method needs the span.
        span = call.start()
        error: BaseException | None = None
        try:
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    yield response
            else:  # a coroutine that sends with context.write()
                await result
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.end(span, context, error)

    return run
