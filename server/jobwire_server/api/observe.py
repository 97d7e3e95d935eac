"""Watching each call from its start to its end, for the interceptors that do (server spans, RPC
metrics): one wrapper for every kind of method, so each interceptor says only what it records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeAlias, TypeVar

import grpc
from grpc import aio

if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]

Context = aio.ServicerContext[Any, Any]
S = TypeVar("S")


class CallWatcher(Protocol[S]):
    """Told when one call starts (returning what `end` needs) and how it ended."""

    def start(self) -> S: ...

    def end(self, started: S, context: Context, error: BaseException | None) -> None: ...


def status_code(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with: the one it set, CANCELLED when the client went away, OK, or
    UNKNOWN for an error that set none."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


class _Watched(Generic[S]):
    def __init__(self, watcher: CallWatcher[S],
                 current: Callable[[S], AbstractContextManager[Any]] | None) -> None:
        self._watcher = watcher
        self._current = current

    def unary(self, behavior: Any) -> Callable[[Any, Context], Awaitable[Any]]:
        async def run(request: Any, context: Context) -> Any:
            started = self._watcher.start()
            with self._current(started) if self._current is not None else nullcontext():
                try:
                    response = await behavior(request, context)
                except BaseException as exc:
                    self._watcher.end(started, context, exc)
                    raise
            self._watcher.end(started, context, None)
            return response

        return run

    def stream(self, behavior: Any) -> Callable[[Any, Context], AsyncIterator[Any]]:
        # Never made current: a context attached in an async generator may be detached from another
        # context when the stream is closed.
        async def run(request: Any, context: Context) -> AsyncIterator[Any]:
            started = self._watcher.start()
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
                self._watcher.end(started, context, error)

        return run


def watched(handler: Handler, watcher: CallWatcher[S],
            current: Callable[[S], AbstractContextManager[Any]] | None = None) -> Handler:
    """The same handler, with `watcher` told of each call's start and end. `current`, when given,
    wraps a unary method's run (to make a span current)."""
    wrap = _Watched(watcher, current)
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.response_streaming:
        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(wrap.stream(handler.stream_stream), deserialize, serialize)
        return grpc.unary_stream_rpc_method_handler(wrap.stream(handler.unary_stream), deserialize, serialize)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrap.unary(handler.stream_unary), deserialize, serialize)
    return grpc.unary_unary_rpc_method_handler(wrap.unary(handler.unary_unary), deserialize, serialize)
