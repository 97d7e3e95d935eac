"""The queue methods of :class:`jobwire.Client` (mixed into it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from jobwire import _convert
from jobwire.models import Queue


class QueueCalls:
    """Pause, resume, read and limit queues. Changes need the ``queues:write`` scope, reads
    ``jobs:read``. Settings are kept by the server's database and hold on every replica."""

    if TYPE_CHECKING:  # provided by Client

        def _service(self) -> Any: ...

        async def _unary(self, method: Any, request: Any) -> Any: ...

    async def pause_queue(self, name: str) -> Queue:
        """Start nothing more from the queue until it is resumed (it still takes enqueues; running
        jobs finish)."""
        request = _convert.queue_name_request("PauseQueue", name)
        return _convert.queue_from_proto(await self._unary(self._service().PauseQueue, request))

    async def resume_queue(self, name: str) -> Queue:
        """Let a paused queue start jobs again."""
        request = _convert.queue_name_request("ResumeQueue", name)
        return _convert.queue_from_proto(await self._unary(self._service().ResumeQueue, request))

    async def get_queue(self, name: str) -> Queue:
        """The queue's settings and counts; :class:`~jobwire.QueueNotFound` when it has neither
        settings nor jobs."""
        request = _convert.queue_name_request("GetQueue", name)
        return _convert.queue_from_proto(await self._unary(self._service().GetQueue, request))

    async def list_queues_page(self, *, page_size: int = 0, page_token: str = "") -> tuple[list[Queue], str]:
        """One page of queues by name, and the token of the next page ("" on the last page)."""
        request = _convert.list_queues_request(page_size, page_token)
        response = await self._unary(self._service().ListQueues, request)
        return [_convert.queue_from_proto(q) for q in response.queues], str(response.next_page_token)

    async def list_queues(self, *, page_size: int = 0) -> AsyncIterator[Queue]:
        """Every queue with settings or jobs, by name, fetching pages as iteration goes."""
        token = ""
        while True:
            queues, token = await self.list_queues_page(page_size=page_size, page_token=token)
            for queue in queues:
                yield queue
            if not token:
                return

    async def update_queue(self, name: str, *, concurrency_limit: int | None = None, rate_limit: float | None = None,
                           rate_burst: int | None = None, key_limit: int | None = None,
                           default_priority: int | None = None, default_max_attempts: int | None = None) -> Queue:
        """Change the settings given (None keeps a setting; 0 removes a limit or a default).
        ``rate_limit`` is jobs started per second and ``rate_burst`` how many may start at once.
        Raises :class:`~jobwire.InvalidArgument` naming each bad field."""
        request = _convert.update_queue_request(name, {
            "concurrency_limit": concurrency_limit, "rate_limit": rate_limit, "rate_burst": rate_burst,
            "key_limit": key_limit, "default_priority": default_priority, "default_max_attempts": default_max_attempts})
        return _convert.queue_from_proto(await self._unary(self._service().UpdateQueue, request))
