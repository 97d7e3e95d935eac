"""The gRPC floor: a trivial grpc.aio server hosted in the bench process exactly like the App.

``/bench.Echo/Echo`` returns the request bytes untouched (no deserialization, no work): what a
unary call costs on this machine with this stack. ``/bench.Echo/Watch`` is the fan-out floor: each
stream gets a first message at once, then one message when `fire()` is called, and ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
from grpc import aio

#: First message of every Watch stream (a stand-in for WatchJob's SNAPSHOT).
HELLO = b"\x08\x01"


class EchoServer:
    def __init__(self, *, max_concurrent_streams: int = 1000) -> None:
        self._max_streams = max_concurrent_streams
        self._server: aio.Server | None = None
        self._fired = asyncio.Event()
        self.port = 0
        self.streams = 0
        self.message = HELLO
        self.fired_at = 0.0

    async def start(self) -> None:
        server = aio.server(options=[("grpc.so_reuseport", 0),
                                     ("grpc.max_concurrent_streams", self._max_streams)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {
            "Echo": grpc.unary_unary_rpc_method_handler(self._echo),
            "Watch": grpc.unary_stream_rpc_method_handler(self._watch),
        }),))
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        self._fired.set()
        if self._server is not None:
            await self._server.stop(1.0)
            self._server = None

    def fire(self) -> None:
        """Send `message` on every open Watch stream."""
        self.fired_at = time.perf_counter()
        self._fired.set()

    async def __aenter__(self) -> EchoServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @staticmethod
    async def _echo(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def _watch(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        self.streams += 1
        try:
            yield HELLO
            await self._fired.wait()
            yield self.message
        finally:
            self.streams -= 1
