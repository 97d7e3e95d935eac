"""The streaming RPCs as Server-Sent Events, run by the servicer's own stream methods.

The servicer does the work of a gRPC stream: admission (``--max-watch-streams``), the snapshot or
the replay after a sequence, the hub subscription and its slow-reader policy (a stream that falls
``--watch-buffer`` events behind is ended with WATCH_TOO_SLOW and the last sequence sent). Here each
message becomes one event: ``id`` is the job's sequence on a job's stream (so a browser's automatic
``Last-Event-ID`` resumes without gaps) and absent on the firehose (its sequences belong to many jobs);
``data`` is the JobEvent as proto3 JSON. A stream that ends on its own (the job's terminal event) sends
``event: end``; one the server ends sends ``event: status`` with the ``google.rpc.Status``. Between
events, a comment line every heartbeat interval keeps proxies from closing an idle stream. A request
that fails before anything is sent gets the ordinary JSON error, and a resume with nothing left to send
gets 204, which tells a browser's EventSource to stop reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from aiohttp import web
from jobwire.v1 import jobwire_pb2

from jobwire_server.api.gateway.codec import message_json, status_json

T = TypeVar("T")
HEARTBEAT = b": heartbeat\n\n"


class EventWriter:
    """One Server-Sent Events response; the headers go out with the first thing written."""

    def __init__(self, request: web.Request, *, with_ids: bool) -> None:
        self._request = request
        self._with_ids = with_ids
        self.response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})  # nginx: pass each event on at once

    @property
    def started(self) -> bool:
        return self.response.prepared

    async def send(self, item: jobwire_pb2.JobEvent | bytes) -> None:
        if isinstance(item, bytes):  # a live event, serialized once for every stream
            data, sequence = _event_json(item)
        else:
            data, sequence = json.dumps(message_json(item)), item.sequence
        head = f"id: {sequence}\n" if self._with_ids else ""
        await self._write(f"{head}data: {data}\n\n".encode())

    async def heartbeat(self) -> None:
        await self._write(HEARTBEAT)

    async def finish(self, status: grpc.Status | None) -> None:
        if status is None:
            await self._write(b"event: end\ndata: {}\n\n")
        else:
            await self._write(f"event: status\ndata: {json.dumps(status_json(status))}\n\n".encode())
        await self.response.write_eof()

    async def _write(self, data: bytes) -> None:
        if not self.response.prepared:
            await self.response.prepare(self._request)
        await self.response.write(data)  # waits while the client is slow to read: the hub's buffer fills


@functools.lru_cache(maxsize=4096)
def _event_json(data: bytes) -> tuple[str, int]:
    """(JSON, sequence) of a serialized JobEvent: the servicer hands every stream the same bytes,
    so each event is converted once, however many streams carry it."""
    event = jobwire_pb2.JobEvent.FromString(data)
    return json.dumps(message_json(event)), event.sequence


async def paced(items: AsyncIterator[T], interval: float, beat: Callable[[], Awaitable[None]], *,
                first: float | None = None) -> AsyncIterator[T]:
    """`items`, calling `beat` whenever `interval` seconds pass without one (`first`: the wait before
    the first beat, if shorter). The pending item is never cancelled for a heartbeat, only when the
    consumer goes away."""
    wait = interval if first is None else min(first, interval)
    while True:
        step: asyncio.Future[T] = asyncio.ensure_future(anext(items))
        try:
            while not (await asyncio.wait({step}, timeout=wait))[0]:
                await beat()
                wait = interval
        except BaseException:
            step.cancel()
            with contextlib.suppress(BaseException):
                await step
            raise
        try:
            item = step.result()
        except StopAsyncIteration:
            return
        yield item


async def close_stream(stream: AsyncIterator[Any]) -> None:
    """Run the servicer stream's cleanup (unsubscribe, free its admission slot) now, not at GC."""
    if isinstance(stream, AsyncGenerator):
        await stream.aclose()
