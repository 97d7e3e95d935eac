"""Request bytes that do not decode end the call with INVALID_ARGUMENT, for every method at once.

grpc.aio runs a method's request deserializer before the method; when it raises (corrupt wire
format, bad UTF-8 in a string field), gRPC logs a traceback and answers UNKNOWN. This interceptor
gives every handler a deserializer that never raises: bytes it cannot decode become an
:class:`Undecodable` value, and the method's behaviour is wrapped so that such a value ends the
call with INVALID_ARGUMENT (reason ``MALFORMED_REQUEST``) before the method sees it. Request
streams are checked message by message.

Failures are counted and logged at most once per :data:`LOG_INTERVAL` seconds, without a
traceback, so a burst of garbage cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import grpc
from grpc import aio

from jobwire_server.api.errors import status_with

if TYPE_CHECKING:
    Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]]
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]

__all__ = ["LOG_INTERVAL", "MALFORMED_REQUEST", "DecodeGuardInterceptor", "Undecodable"]

MALFORMED_REQUEST: Final = "MALFORMED_REQUEST"
#: Seconds between two log lines about undecodable requests.
LOG_INTERVAL: Final = 60.0
#: Characters of the decoder's own message kept in the status message.
_DETAIL_CHARS: Final = 200

Context = aio.ServicerContext[Any, Any]
_log = logging.getLogger("jobwire.api")


class Undecodable:
    """What the guarded deserializer returns for bytes that are not a valid request message."""

    __slots__ = ("error", "type_name")

    def __init__(self, type_name: str, error: BaseException) -> None:
        self.type_name = type_name
        self.error = error

    def status(self) -> grpc.Status:
        detail = str(self.error).strip() or type(self.error).__name__
        if len(detail) > _DETAIL_CHARS:
            detail = detail[: _DETAIL_CHARS - 1] + "…"
        return status_with(grpc.StatusCode.INVALID_ARGUMENT,
                           f"request bytes are not a valid {self.type_name} message ({detail})", MALFORMED_REQUEST)


class _FailureLog:
    """Counts undecodable requests; one log line per interval at most."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._count = 0
        self._last = -interval

    def note(self, method: str, bad: Undecodable) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        _log.warning("%d request(s) could not be decoded since the last report (latest: %.200s, not a valid %s); "
                     "answered INVALID_ARGUMENT", self._count, method, bad.type_name)
        self._count = 0
        self._last = now


class DecodeGuardInterceptor(aio.ServerInterceptor):
    """Installs the guarded deserializer and the check on every method's handler."""

    def __init__(self, log_interval: float = LOG_INTERVAL) -> None:
        self._failures = _FailureLog(log_interval)
        #: method → (handler as found, guarded handler); handlers are made once per method.
        self._guarded: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # unknown method, or a handler that takes raw bytes (a refusal)
        method = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = _guard(handler, handler.request_deserializer, method, self._failures)
        self._guarded[method] = (handler, guarded)
        return guarded


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) else "request"


def _guard(handler: Handler, deserialize: Callable[[bytes], Any], method: str, failures: _FailureLog) -> Handler:
    type_name = _type_name(deserialize)

    def safe(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # any decoder failure is the client's bytes, not our bug
            return Undecodable(type_name, exc)

    async def refuse(bad: Undecodable, context: Context) -> None:
        failures.note(method, bad)
        await context.abort_with_status(bad.status())

    serializer = handler.response_serializer
    if handler.response_streaming and serializer is not None:
        serializer = _bytes_pass(serializer)
    if handler.request_streaming:
        def checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            return _checked_stream(requests, context, refuse)

        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(_stream_out(handler.stream_stream, checked), safe, serializer)
        return grpc.stream_unary_rpc_method_handler(_unary_out(handler.stream_unary, checked), safe, serializer)

    def single(request: Any, context: Context) -> Any:
        return request

    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_stream_out(handler.unary_stream, single, refuse), safe,
                                                    serializer)
    return grpc.unary_unary_rpc_method_handler(_unary_out(handler.unary_unary, single, refuse), safe, serializer)


Refuse = Callable[[Undecodable, Context], Awaitable[None]]


def _bytes_pass(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A streaming method may send a message already serialized (a watch event encoded once for
    every stream that sends it): bytes go out as they are."""

    def serializer(message: Any) -> bytes:
        return message if message.__class__ is bytes else serialize(message)

    return serializer


async def _checked_stream(requests: AsyncIterator[Any], context: Context, refuse: Refuse) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            await refuse(request, context)
        yield request


def _unary_out(behavior: Any, prepare: Callable[[Any, Context], Any],
               refuse: Refuse | None = None) -> Callable[[Any, Context], Awaitable[Any]]:
    async def run(request: Any, context: Context) -> Any:
        if refuse is not None and isinstance(request, Undecodable):
            await refuse(request, context)
        result = behavior(prepare(request, context), context)
        return await result if hasattr(result, "__await__") else result

    return run


def _stream_out(behavior: Any, prepare: Callable[[Any, Context], Any],
                refuse: Refuse | None = None) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def run(request: Any, context: Context) -> AsyncIterator[Any]:
        if refuse is not None and isinstance(request, Undecodable):
            await refuse(request, context)
        result = behavior(prepare(request, context), context)
        if hasattr(result, "__aiter__"):
            try:
                async for response in result:
                    yield response
            finally:  # run the method's own clean-up now, not when the generator is collected
                close = getattr(result, "aclose", None)
                if close is not None:
                    await close()
        elif hasattr(result, "__await__"):  # a coroutine that sends with context.write()
            await result
        else:  # a plain generator
            for response in result:
                yield response

    return run
