"""Counts every RPC for the Prometheus endpoint: ``grpc_server_started_total``,
``grpc_server_handled_total{grpc_code}`` and ``grpc_server_handling_seconds``, as the
grpc-prometheus convention names them.

Installed outermost when metrics are on, so calls that auth refuses are counted too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc import aio

from jobwire_server.api.tracing import _code as status_code
from jobwire_server.metrics import Metrics

if TYPE_CHECKING:
    Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]]
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]

Context = aio.ServicerContext[Any, Any]


class RpcMetricsInterceptor(aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        return _counted(handler, _Call(self._metrics, _grpc_type(handler), service, method))


class _Call:
    def __init__(self, metrics: Metrics, grpc_type: str, service: str, method: str) -> None:
        self._metrics = metrics
        self._labels = (grpc_type, service, method)

    def start(self) -> float:
        self._metrics.rpc_started(*self._labels)
        return time.perf_counter()

    def end(self, started: float, context: Context, error: BaseException | None) -> None:
        code = status_code(context, error)
        self._metrics.rpc_handled(*self._labels, code.name, time.perf_counter() - started)


def _grpc_type(handler: Handler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _counted(handler: Handler, call: _Call) -> Handler:
    if handler.request_streaming:
        return handler  # no jobwire RPC streams requests; reflection's is left uncounted
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_stream_response(handler.unary_stream, call),
                                                    handler.request_deserializer, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(_unary_response(handler.unary_unary, call),
                                               handler.request_deserializer, handler.response_serializer)


def _unary_response(behavior: Any, call: _Call) -> Callable[[Any, Context], Awaitable[Any]]:
    async def run(request: Any, context: Context) -> Any:
        started = call.start()
        try:
            response = await behavior(request, context)
        except BaseException as exc:
            call.end(started, context, exc)
            raise
        call.end(started, context, None)
        return response

    return run


def _stream_response(behavior: Any, call: _Call) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def run(request: Any, context: Context) -> AsyncIterator[Any]:
        started = call.start()
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
            call.end(started, context, error)

    return run
