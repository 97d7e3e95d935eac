"""Counts every RPC for the Prometheus endpoint: ``grpc_server_started_total``,
``grpc_server_handled_total{grpc_code}`` and ``grpc_server_handling_seconds``, as the
grpc-prometheus convention names them.

Installed outermost when metrics are on, so calls that auth refuses are counted too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc import aio

from jobwire_server.api.observe import status_code, watched
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
    return watched(handler, call)
