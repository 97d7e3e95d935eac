"""The queue RPCs of `JobServicer`: validate, call the queue service, convert."""

from __future__ import annotations

from typing import Any

from jobwire.v1 import jobwire_pb2

from jobwire_server.api.errors import unary
from jobwire_server.api.queue_convert import queue_to_proto
from jobwire_server.api.queue_validation import (
    PAGE_TOKEN_KIND,
    page_from_proto,
    update_to_change,
    validate_queue_request,
)
from jobwire_server.api.validation import encode_page_token
from jobwire_server.domain.errors import ShuttingDown
from jobwire_server.domain.queues import QueueChange
from jobwire_server.engine.queues import QueueService, QueueView

Context = Any


class QueueMethods:
    """Mixed into `JobServicer`, which sets these attributes."""

    _queues: QueueService | None
    _secret: bytes

    @unary
    async def PauseQueue(self, request: jobwire_pb2.PauseQueueRequest, context: Context) -> jobwire_pb2.Queue:
        name = validate_queue_request(request)
        return self._queue_proto(await self._queue_service().change(name, QueueChange(paused=True)))

    @unary
    async def ResumeQueue(self, request: jobwire_pb2.ResumeQueueRequest, context: Context) -> jobwire_pb2.Queue:
        name = validate_queue_request(request)
        return self._queue_proto(await self._queue_service().change(name, QueueChange(paused=False)))

    @unary
    async def GetQueue(self, request: jobwire_pb2.GetQueueRequest, context: Context) -> jobwire_pb2.Queue:
        return self._queue_proto(await self._queue_service().get(validate_queue_request(request)))

    @unary
    async def ListQueues(self, request: jobwire_pb2.ListQueuesRequest,
                         context: Context) -> jobwire_pb2.ListQueuesResponse:
        after, size = page_from_proto(request, self._secret)
        found, last = await self._queue_service().list(after, size)
        token = encode_page_token(last, PAGE_TOKEN_KIND, self._secret) if last else ""
        return jobwire_pb2.ListQueuesResponse(queues=[self._queue_proto(view) for view in found],
                                              next_page_token=token)

    @unary
    async def UpdateQueue(self, request: jobwire_pb2.UpdateQueueRequest, context: Context) -> jobwire_pb2.Queue:
        name, change = update_to_change(request)
        return self._queue_proto(await self._queue_service().change(name, change))

    # ------------------------------------------------------------------ helpers

    def _queue_service(self) -> QueueService:
        if self._queues is None:
            raise ShuttingDown
        return self._queues

    def _queue_proto(self, view: QueueView) -> jobwire_pb2.Queue:
        service = self._queue_service()
        return queue_to_proto(view, service.process_limits.get(view.name, 0), service.limits_global)
